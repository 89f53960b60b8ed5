"""The app's own code beside ``pages/``: shared session state and the Plotly figures."""

"""The app's own code beside ``pages/``.

The shell: ``ui.runtime`` (once per process: pages served through app.py, the background
warm-up and heap freeze, the shared cache of loaded runs), ``ui.state`` (session state: the
session keys, the current run, the runs on disk, the method choices), ``ui.widgets`` (the
sidebar, the layer picker, charts, tables, small widgets) and ``ui.cached`` (every cached
analysis call: the convention is that a page never defines its own ``st.cache_data``
function, it calls one from ``ui.cached``; the few cached reads of files a helper module owns,
such as the run list, the pins and the quick evaluation's settings, sit beside their reader). Figures: one module per view (``ui.*_figures``),
the shared chart style in ``ui.charts``. ``ui.links`` holds the deep links.
"""

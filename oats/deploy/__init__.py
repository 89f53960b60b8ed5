"""Deployable exports of compressed runs: ``export_run_folder`` writes one, ``load_compressed`` reads it."""

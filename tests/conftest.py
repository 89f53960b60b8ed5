"""Shared fixtures. Markers are registered in pyproject.toml."""

import os

# What `import oats` sets, here before any test module imports torch (see oats/__init__.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest


@pytest.fixture(scope="session", autouse=True)
def preset_cache(tmp_path_factory):
    """One OATS_CACHE_DIR for the whole session: each preset conversion runs once, in a fresh
    folder, so the tests exercise the conversion and never depend on the user's cache."""
    from oats import zoo
    folder = tmp_path_factory.mktemp("oats-cache")
    old = os.environ.get(zoo.CACHE_ENV)
    os.environ[zoo.CACHE_ENV] = str(folder)
    yield folder
    if old is None:
        os.environ.pop(zoo.CACHE_ENV, None)
    else:
        os.environ[zoo.CACHE_ENV] = old


@pytest.fixture(scope="session", autouse=True)
def heavy_imports_done():
    """The app imports its heavy modules in a background thread (app_state.warm_up), and
    transformers' lazy imports are not safe to race from two threads: the app only loads
    models after that thread is done, and so does this test process (app tests run app.py
    in-process, then other tests load models directly)."""
    import app_state
    app_state._import_all()

"""Shared fixtures. Markers are registered in pyproject.toml."""

import os

# What `import oats` sets, here before any test module imports torch (see oats/__init__.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
from hypothesis import HealthCheck, settings

# Property tests: a fixed sequence of cases (derandomize), the same on every machine and in CI,
# no example database on disk, no per-example deadline (a loaded machine is not a failure).
settings.register_profile("oats", derandomize=True, database=None, deadline=None, max_examples=300,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("oats")


# What a full run writes under the temporary folder at its peak (model caches, runs, exports),
# with room to spare: measured at about 1.4 GB.
SUITE_DISK_BYTES = 2 * 1024**3


def pytest_sessionstart(session):
    """Refuse to start, in one line, when the temporary folder cannot hold what the suite
    writes: otherwise dozens of tests fail later with 'No space left on device' tracebacks."""
    import shutil
    import tempfile
    folder = tempfile.gettempdir()
    free = shutil.disk_usage(folder).free
    if free < SUITE_DISK_BYTES:
        pytest.exit(f"only {free / 1024**3:.1f} GB free in {folder}; the test suite writes up to "
                    f"{SUITE_DISK_BYTES / 1024**3:.0f} GB there: free some space (or point TMPDIR at a "
                    "larger disk) and run again", returncode=2)


def skip_or_fail(reason: str):
    """Skip a test that cannot run here (a missing Chromium, embedded model package, app
    page); in CI (CI=true) the same is a failure, so a green CI run means everything ran."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: a missing requirement is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def preset_cache(tmp_path_factory):
    """One OATS_CACHE_DIR for the whole session: each preset conversion runs once, in a fresh
    folder, so the tests exercise the conversion and never depend on the user's cache."""
    from oats.models import zoo
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
    """The app imports its heavy modules in a background thread (ui.runtime.warm_up), and
    transformers' lazy imports are not safe to race from two threads: the app only loads
    models after that thread is done, and so does this test process (app tests run app.py
    in-process, then other tests load models directly)."""
    from ui import runtime
    runtime._import_all()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny matrices: one intra-op thread for the module. With two OpenMP threads on a busy 2-core
    machine a batched SVD can take seconds instead of milliseconds (threads spin-waiting).
    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_llama_zoo(monkeypatch):
    """The zoo and the calibration data answer with tiny_models' Llama for the name "tiny" (no
    downloads); every model name passes the name check."""
    from tiny_models import batches, tiny_llama

    from oats import data
    from oats.models import zoo

    def load(name, **kw):
        if name != "tiny":
            raise zoo.ModelLoadError(f"unknown model {name!r}: use a preset")
        return zoo.LoadedModel(name="tiny", model=tiny_llama(), task="causal-lm", source="test")

    monkeypatch.setattr(zoo, "load_model", load)
    monkeypatch.setattr(zoo, "check_model_name", lambda name, **kw: "preset")
    monkeypatch.setattr(data, "calibration_batches", lambda loaded, **kw: batches())

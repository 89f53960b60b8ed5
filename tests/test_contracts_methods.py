"""Contract tests over the method registry: every registered method, on two tiny models, keeps
the budget, has valid variants, round-trips through a run folder and through a sparse export.

The parametrisation reads ``registry.names()`` when the module is collected, so a method
registered by the package (or a plug-in imported before the tests) is tested with no test
written for it. The checks live in tests/contracts.py, which says what they promise.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
from contracts import (CFG, MODELS, check_budget, check_export, check_record, check_save_load, check_variants,
                       compress_for_contract)

from oats import compress_model
from oats.compress.calibration import SecondMoments
from oats.methods import registry

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@functools.cache
def compressed(method: str, model: str) -> SimpleNamespace:
    """Once per (method, model) for the module's tests."""
    return compress_for_contract(method, model)


# ----------------------------------------------------------------------------- every registered method


METHODS = registry.names()
"""Read at collection: every method registered when the tests are collected."""


@pytest.mark.parametrize("method", METHODS)
def test_record_is_valid(method):
    check_record(method)


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("method", METHODS)
def test_budget_is_kept(method, model):
    check_budget(compressed(method, model))


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("method", METHODS)
def test_variants_run(method, model):
    check_variants(compressed(method, model))


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("method", METHODS)
def test_run_folder_round_trip(method, model, tmp_path):
    check_save_load(compressed(method, model), tmp_path / "run")


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("method", METHODS)
def test_sparse_export_round_trip(method, model, tmp_path):
    check_export(compressed(method, model), tmp_path / "export")


@pytest.mark.parametrize("method", METHODS)
def test_the_gram_is_collected_iff_the_record_asks_for_it(method, monkeypatch):
    """The statistics pass hooks every matrix for the full input Gram exactly when the method's
    record says "gram" (the Gram costs d_in^2 per matrix: no method pays for it unasked)."""
    seen = []
    original = SecondMoments.hook

    def spy(self, name, module, gram=False):
        seen.append(gram)
        return original(self, name, module, gram)

    monkeypatch.setattr(SecondMoments, "hook", spy)
    model, calibration, _ = MODELS["llama"]()
    compress_model(model, calibration, CFG, method=method)
    assert seen and set(seen) == {registry.get(method).statistics == "gram"}


def test_the_builtins_are_all_checked():
    """The parametrisation above is the registry, and the package's built-ins are in it."""
    from oats.methods import BUILTINS
    assert len(BUILTINS) >= 6 and all(m in METHODS for m in ("oats", "wanda", "sparsegpt", "magnitude",
                                                              "lowrank", "hassle"))

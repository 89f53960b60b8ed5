"""Contract tests over the adapter registry: every registered model family has a tiny model
(tests/tiny_models.py: CASES), whose adapter finds the family's blocks and linears, and which
compresses with one cheap method (magnitude: no statistics to collect), keeps the budget,
round-trips through a run folder and loads from a sparse export to the same outputs.

The family list is read from ``supported_families()`` when the module is collected: a family
registered without a tiny model fails here. The detailed per-family checks (records, fused
parts, modes per layer, GPT-2's Conv1D) are in tests/test_adapters.py, the export's layouts
and kernels in tests/test_export.py.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
from contracts import check_budget, check_export, check_save_load, check_variants, compress_for_contract, family_inputs
from tiny_models import CASES

from oats.models.adapters import get_adapter, supported_families

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAMILIES = supported_families()
"""Read at collection: every family registered when the tests are collected."""

METHOD = "magnitude"
"""The cheap method each family is compressed with (the method contracts cover the others)."""


@functools.cache
def compressed(name: str) -> SimpleNamespace:
    return compress_for_contract(METHOD, name)


def cases_of(family: str) -> list[str]:
    return [name for name, case in CASES.items() if case.family == family]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_has_a_tiny_model(family):
    assert cases_of(family), f"no tiny model of the family {family!r} in tests/tiny_models.py: CASES"


@pytest.mark.parametrize("name", list(CASES))
def test_linears_found(name):
    model, _, _ = family_inputs(name)
    adapter = get_adapter(model)
    assert adapter.family == CASES[name].family and adapter.family in FAMILIES
    blocks = adapter.blocks(model)
    assert blocks
    for _, block in blocks:
        refs = adapter.linears(model, block)
        assert tuple(r.name for r in refs) == CASES[name].names
        assert all(r.kind in ("attn", "mlp") for r in refs)
        assert len({r.path for r in refs}) == CASES[name].modules_per_block


@pytest.mark.parametrize("name", list(CASES))
def test_compress_round_trips(name, tmp_path):
    c = compressed(name)
    assert c.run.family == CASES[name].family
    check_budget(c)
    check_variants(c)
    check_save_load(c, tmp_path / "run")
    check_export(c, tmp_path / "export")

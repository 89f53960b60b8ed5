"""The contract every compression method and every model family keeps, as functions over any
method and any tiny model: tests/test_contracts_methods.py runs them for every registered
method, tests/test_contracts_adapters.py for every adapter family, and
tests/test_method_registry.py for a method registered from the test.

The checks are what every method promises (README, "Budget"; ``oats.methods.registry``);
what a method computes (Wanda's mask, SparseGPT's reconstruction, OATS's decomposition) stays
in its own tests (test_methods.py, test_baselines.py, test_hassle.py, test_algorithm.py).
"""

from __future__ import annotations

import copy
from fractions import Fraction
from types import SimpleNamespace

import torch
from tiny_models import CASES, batches, output, tiny_llama

from oats import OatsConfig, compress_model, load_run, save_run
from oats.core.linear import MODES
from oats.deploy.export import export_run, load_compressed
from oats.methods import registry
from oats.runs.folders import read_manifest

CFG = OatsConfig(compression=0.5, rank_ratio=0.25, iterations=3)


def _llama_inputs():
    return tiny_llama(layers=1), batches(1, 2), batches(2, 1)[0]


MODELS = {"llama": _llama_inputs,
          # GPT-2: a fused q/k/v matrix (three records on one module) and transposed Conv1D weights
          "gpt2": lambda: family_inputs("gpt2")}
"""Tiny models every method is checked on: (model, calibration batches, one evaluation batch)."""


def family_inputs(name: str):
    """A tiny model of tiny_models.CASES (every adapter family), as MODELS gives them."""
    case = CASES[name]
    torch.manual_seed(0)
    return case.build().eval(), case.batches(1, 2), case.batches(2, 1)[0]


def compress_for_contract(method: str, model: str) -> SimpleNamespace:
    """``model``'s tiny model (a key of MODELS or of tiny_models.CASES) compressed with ``method``
    at CFG, with what the checks compare to: the dense model (a copy taken before compressing),
    its output and the evaluation batch."""
    net, calibration, batch = MODELS[model]() if model in MODELS else family_inputs(model)
    dense = copy.deepcopy(net)
    with torch.no_grad():
        ref = output(net, batch)
    torch.manual_seed(0)
    run = compress_model(net, calibration, CFG, method=method, model_name=f"tiny-{model}")
    return SimpleNamespace(method=method, model=model, run=run, dense=dense, ref=ref, batch=batch)


def _outputs(run, batch) -> dict[str, torch.Tensor]:
    out = {}
    for mode in registry.variants(run.method, run.config):
        with torch.no_grad(), run.use_mode(mode):
            out[mode] = output(run.model, batch)
    return out


# ----------------------------------------------------------------------------- the checks


def check_record(name: str) -> None:
    """The record's variants are variant names: dense first, the compressed model ("both"),
    and the variants of any run of it among its run modes."""
    record = registry.get(name)
    assert set(record.run_modes) <= set(MODES), record.run_modes
    assert record.run_modes[0] == "dense" and "both" in record.run_modes
    assert registry.run_modes(name) == record.run_modes
    assert registry.check_modes(record.run_modes, need_dense=True) == record.run_modes
    # manifests hand the config as a namespace; kappa 1 is no config a user can write, but reads
    for config in (None, CFG, CFG.replace(rank_ratio=0.0), SimpleNamespace(rank_ratio=1.0)):
        v = registry.variants(name, config)
        assert v[:2] == ("dense", "both") and set(v) <= set(record.run_modes), (config, v)
    assert record.budget_note and record.description and "\n" not in record.description
    assert registry.METHODS[name] == record.description and registry.BUDGET_NOTES[name] == record.budget_note
    assert 0.0 <= record.rank_ratio(CFG) <= 1.0
    assert registry.title(name)


def check_budget(c: SimpleNamespace) -> None:
    """Each matrix keeps at most (1 - rho) d_out d_in parameters, counted from its factors, up to
    the rounding the README's Budget section allows (each row's count rounds up: less than one
    entry a row); the record says what the factors hold."""
    run, rho = c.run, Fraction(str(CFG.compression))
    assert run.method == c.method and run.layers
    for r in run.layers:
        d_out, d_in = r.shape
        f = run.factors(r.qualname)
        nnz, rank = int((f["sparse"] != 0).sum()), f["u"].shape[1]
        assert f["sparse"].shape == (d_out, d_in) and f["v"].shape == (rank, d_in), r.qualname
        assert (r.nnz, r.rank) == (nnz, rank), r.qualname
        assert r.params == nnz + rank * (d_out + d_in), r.qualname
        allowed = (1 - rho) * d_out * d_in
        assert r.budget == int(allowed), r.qualname
        assert r.params < allowed + d_out, (r.qualname, r.params, allowed)
    assert run.params_kept == sum(r.params for r in run.layers)
    assert run.params_kept <= sum(r.budget + r.shape[0] for r in run.layers)


def check_variants(c: SimpleNamespace) -> None:
    """Every variant of the run runs and is finite; dense is the dense model exactly, the
    compressed model ("both") is not."""
    out = _outputs(c.run, c.batch)
    assert tuple(out) == registry.variants(c.method, c.run.config)
    assert torch.equal(out["dense"], c.ref)
    assert all(torch.isfinite(y).all() for y in out.values())
    assert not torch.allclose(out["both"], c.ref)


def check_save_load(c: SimpleNamespace, folder) -> None:
    """A run folder holds the same tensors, records and statistics, and the manifest names the
    method and its budget note."""
    save_run(c.run, folder)
    m = read_manifest(folder)
    assert m["complete"] and m["method"] == c.method and m["budget_note"] == registry.get(c.method).budget_note
    again = load_run(folder, model=copy.deepcopy(c.dense))
    assert again.method == c.method
    assert [r.to_dict() for r in again.layers] == [r.to_dict() for r in c.run.layers]
    for r in c.run.layers:
        a, b = c.run.factors(r.qualname), again.factors(r.qualname)
        for key in ("weight", "sparse", "u", "v"):
            assert torch.equal(a[key], b[key]), (r.qualname, key)
    assert set(again.second_moments) == set(c.run.second_moments)
    assert all(torch.equal(again.second_moments[k], v) for k, v in c.run.second_moments.items())
    ours, theirs = _outputs(c.run, c.batch), _outputs(again, c.batch)
    assert all(torch.equal(ours[m], theirs[m]) for m in ours)


def check_export(c: SimpleNamespace, folder) -> None:
    """The sparse export loads to the run's compressed model ("both") within 1e-5."""
    model = load_compressed(export_run(c.run, folder, "sparse"))
    with torch.no_grad(), c.run.use_mode("both"):
        ref = output(c.run.model, c.batch)
        got = output(model, c.batch)
    assert float((got - ref).abs().max() / ref.abs().max()) <= 1e-5


def check_method_contract(method: str, tmp_path, models=tuple(MODELS)) -> None:
    """Every contract check on ``method`` (registered), for any method: a new one gets them all."""
    check_record(method)
    for model in models:
        c = compress_for_contract(method, model)
        check_budget(c)
        check_variants(c)
        check_save_load(c, tmp_path / f"{method}-{model}-run")
        check_export(c, tmp_path / f"{method}-{model}-export")

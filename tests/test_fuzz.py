"""Fuzzing the loaders of shared files (issue 21): tampered exports and run folders, generated
by hypothesis from valid tiny ones, loaded in a worker process so a crash is an outcome, not
the end of the test session.

Every load must end clean: the input refused with one line (an OatsError), or loaded to finite
outputs that are the same on two forward passes (and equal to the untampered ones where the
tampering left nothing the loader may accept differently). No crash, no hang, no traceback-
style error, no silent wrong load. The long campaign is ``benchmarks/fuzz.py``.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest
from hypothesis import Phase, given, settings

import fuzz_cases as fz

# A fixed sequence (the conftest profile derandomizes), sized for about a minute on two cores:
# each case is one to three loads of a one-block model through the one worker process.
CASES = 800


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return fz.build_seeds(tmp_path_factory.mktemp("fuzz-seeds"))


@pytest.fixture(scope="module")
def worker(seeds):
    w = fz.Worker(seeds, timeout=30)
    yield w
    w.close()


def test_the_seeds_load_to_their_reference_outputs(seeds, worker, tmp_path):
    """The harness itself: an untampered case loads everywhere, to the same outputs; a dropped
    factor is refused in one line; each kind of seed is covered."""
    for kind in fz.KINDS:
        results = fz.run_case(worker, seeds, {"kind": kind, "muts": []}, tmp_path / "w", 0)
        assert [r["outcome"] for r in results] == ["loaded"] * len(fz.OPS[kind]), results
        assert all(r["severity"] == "same" for r in results)
    case = {"kind": "sparse", "muts": [{"fam": "drop", "file": "sparse_lowrank.safetensors",
                                        "tensor": "model.layers.0.mlp.down_proj.v"}]}
    results = fz.run_case(worker, seeds, case, tmp_path / "w", 1)
    assert [(r["outcome"], r["severity"]) for r in results] == [("refused", "invalid")] * 3, results


def _failures(results) -> list[str]:
    return [f"{r['outcome']} ({r['op']}): {r['why']}\n    " + fz.reproduction(case, r["op"]).replace("\n", "\n    ")
            for case, r in results if r["outcome"] in fz.FAILURES]


def test_the_issues_own_cases_and_earlier_findings_end_clean(seeds, worker, tmp_path):
    """The reported ones (fz.KNOWN): CSR column 1e9 under kernel csr, int8 -1 and int16 300 CSR8
    offsets, NaN values, integer factors, a config naming its own code, hidden size 10^7, 100k
    brackets and Infinity in a manifest, a block linked from outside, a float mask, a short or
    missing factor, FIFOs, a link to /dev/zero; then what the campaigns found (fz.REGRESSIONS):
    integer weights in a folded export, half-precision values, a complete run of no blocks, a
    64 GiB block file."""
    cases = fz.KNOWN + fz.REGRESSIONS
    results = [(case, r) for n, case in enumerate(cases) for r in fz.run_case(worker, seeds, case, tmp_path / "w", n)]
    assert Counter(r["outcome"] for _, r in results)["refused"] >= len(fz.KNOWN)
    failed = _failures(results)
    assert not failed, "\n".join(failed)


def test_the_judge_tells_invalid_from_lenient(seeds, tmp_path):
    """Severities the outcomes depend on: an out-of-range CSR8 offset (stored in a wider type) and
    NaN in a factor are invalid; a float64 copy of a dense weight is lenient."""
    def sev(case):
        return fz.judge(seeds, case, fz.make_case(seeds, case, tmp_path / "j"))

    f = "sparse_lowrank.safetensors"
    down = "model.layers.0.mlp.down_proj"
    assert sev({"kind": "sparse", "muts": [{"fam": "index", "file": f, "tensor": f"{down}.col_offsets",
                                            "value": "300", "at": 0.5, "dtype": "int16"}]})[f] == "invalid"
    assert sev({"kind": "sparse", "muts": [{"fam": "nonfinite", "file": f, "tensor": f"{down}.u0",
                                            "value": "nan", "at": 0.1}]})[f] == "invalid"
    assert sev({"kind": "sparse", "muts": [{"fam": "dtype", "file": f, "tensor": "model.norm.weight",
                                            "dtype": "float64"}]})[f] == "lenient"
    assert sev({"kind": "run", "muts": [{"fam": "json", "file": "manifest.json", "op": "deep", "at": 0.0,
                                         "size": 1}]})["manifest.json"] == "invalid"


def test_fuzzed_exports_and_run_folders_end_clean(seeds, worker, tmp_path):
    inv = json.loads((seeds / "inventory.json").read_text())
    results = []

    @settings(max_examples=CASES, phases=[Phase.generate])  # no shrinking: each example is a subprocess round trip
    @given(case=fz.cases_strategy(inv))
    def one(case):
        for r in fz.run_case(worker, seeds, case, tmp_path / "w", len(results)):
            results.append((case, r))

    one()
    shutil.rmtree(tmp_path / "w", ignore_errors=True)
    counts = Counter(r["outcome"] for _, r in results)
    failed = _failures(results)
    assert counts["refused"] and counts["loaded"], counts  # the cases reach both ends
    assert not failed, f"{len(failed)} of {len(results)} loads failed ({dict(counts)}):\n" + "\n".join(failed[:15])

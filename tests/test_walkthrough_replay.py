"""A method registered from a test with a ``Replay`` record is replayed by the Walkthrough with
no other file touched: the registry hands its record to the explain view, which runs its step
function and names no method."""

from __future__ import annotations

import pytest
import torch

from oats import OatsConfig
from oats.explain.walkthrough import walkthrough
from oats.methods import registry
from oats.methods.registry import Method, Replay

STEPS = 3


def toy_walk(weight, second_moments, gram, config, trace):
    """Three rounds that move a growing share of W into the sparse term (no low-rank term)."""
    hist = {"error": [], "sparse_energy": [], "lowrank_energy": []}
    for t in range(1, STEPS + 1):
        s = weight * (t / STEPS)
        trace(t, torch.zeros_like(weight), s)
        hist["error"].append(1 - t / STEPS)
        hist["sparse_energy"].append((t / STEPS) ** 2)
        hist["lowrank_energy"].append(0.0)
    return hist, {"kept": 2}


@pytest.fixture
def toy():
    replay = Replay(walk=toy_walk, step="Round", intro="A toy replay.", rank_zero="Toy")

    @registry.register(Method(name="toyreplay", description="toy", budget_note="none", statistics="none",
                              replay=replay))
    def compress(weights, second_moments, grams, config, device=None):
        return []  # the Walkthrough replays from a run's weights; it never calls compress
    yield replay
    registry.unregister("toyreplay")


def test_a_registered_replay_is_what_the_walkthrough_runs(toy):
    assert registry.replay_for("toyreplay") == (toy, True)
    w = torch.randn(12, 10)
    wt = walkthrough(w, None, OatsConfig(compression=0.5, rank_ratio=0.0), registry.replay_for("toyreplay")[0],
                     max_size=4)
    assert wt.step == "Round" and wt.iterations == [1, 2, 3] and wt.kept == 2 and not wt.fallback
    assert wt.history["error"] == pytest.approx([2 / 3, 1 / 3, 0.0])
    # no statistics: D = 1, so the last residual W - S is zero and the first is 2/3 |W|, pooled by absmax
    assert wt.snapshots[-1].residual.z.max() == pytest.approx(0.0, abs=1e-6)
    assert wt.snapshots[0].residual.z.max() == pytest.approx(float(w.abs().max()) * 2 / 3, rel=1e-5)


def test_methods_without_a_replay_get_the_one_that_covers_or_stands_in_for_their_statistics():
    oats_replay = registry.get("oats").replay
    gram_replay = registry.get("hassle").replay
    assert oats_replay is not None and gram_replay is not None and gram_replay.gram and not oats_replay.gram
    assert registry.replay_for("oats") == (oats_replay, True)
    assert registry.replay_for("sparsegpt") == (gram_replay, True)      # a Gram-fitted method: its solver at rank 0
    assert registry.replay_for("wanda") == (oats_replay, False)         # a stand-in, with a note on the page
    assert registry.replay_for("magnitude") == (oats_replay, False)
    assert registry.replay_for("not-a-method") == (oats_replay, False)  # runs from elsewhere: diagonal statistics
    assert (gram_replay.step, oats_replay.step) == ("Alternation", "Iteration")


def test_a_replay_that_needs_a_gram_refuses_to_run_without_one():
    with pytest.raises(ValueError, match="Gram"):
        walkthrough(torch.randn(4, 4), None, OatsConfig(), registry.get("hassle").replay)

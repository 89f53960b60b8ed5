"""Massive activations and the channel intervention, on a tiny Llama with a tokenizer."""

import numpy as np
import pytest
import torch

from oats import OatsConfig, compress_model
from oats.errors import ConfigError, DataError
from oats.explain import activations as act
from oats.models.zoo import load_model
from tiny_models import tiny_llama_folder, tiny_text

TEXT = "the quick brown fox jumps over a lazy dog while python code runs fast"
PLANTED = 5  # a channel made huge in the embeddings of every token


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tiny_llama_folder(tmp_path_factory.mktemp("tiny-act") / "m", hidden=32, layers=3)
    loaded = load_model(str(folder))
    with torch.no_grad():
        loaded.model.get_input_embeddings().weight[:, PLANTED] = 40.0
    ids = loaded.tokenizer(tiny_text(200, seed=1), return_tensors="pt")["input_ids"][:, :96].reshape(4, 24)
    r = compress_model(loaded.model, [{"input_ids": ids}], OatsConfig(compression=0.6, rank_ratio=0.3, iterations=3))
    r.loaded = loaded
    return r


def logits(run, inp):
    with torch.no_grad():
        return run.model(**inp.kwargs).logits


def test_profile_reads_every_block_output(run):
    inp = act.make_input(run, text=TEXT)
    prof = act.massive_activations(run, inp)
    assert prof.n_tokens == inp.kwargs["input_ids"].shape[1] and prof.n_blocks == 3
    with run.use_mode("dense"), torch.no_grad():
        hs = run.model(**inp.kwargs, output_hidden_states=True).hidden_states
    d = prof.modes["dense"]
    for b in range(2):  # hidden_states[b + 1] is block b's output (the last one is normed)
        h = hs[b + 1][0].abs()
        np.testing.assert_allclose(d.magnitudes[b], h.numpy(), rtol=1e-6)
        assert d.top[b, 0] == pytest.approx(float(h.max()))
        t, c = d.top_token[b, 0], d.top_channel[b, 0]
        assert float(h[t, c]) == pytest.approx(d.top[b, 0])
        assert d.median[b] == pytest.approx(float(h.flatten().median()))
    assert (np.diff(d.top, axis=1) <= 0).all()
    # the planted channel is the largest of block 0's input and carries its top activations
    chans, means = prof.top_channels(0, 2)
    assert chans[0] == PLANTED and means[0] == pytest.approx(40.0)
    assert (d.top_channel[0] == PLANTED).all()
    # dense and compressed differ, and the run's modes are restored
    assert not np.allclose(prof.modes["both"].magnitudes, d.magnitudes)
    assert {m.mode for m in run.modules().values()} == {"both"}
    rows = prof.rows()
    assert len(rows) == 2 * 3 * act.TOP and rows[0]["token"] == prof.tokens[int(d.top_token[0, 0])]


def test_intervention_with_k_zero_changes_nothing_and_k_positive_does(run):
    inp = act.make_input(run, text=TEXT)
    prof = act.massive_activations(run, inp)
    blk = act.blocks(run)[1]
    base = logits(run, inp)
    with act.channel_intervention(blk, []):
        assert torch.equal(logits(run, inp), base)
    assert not blk._forward_pre_hooks
    chans, means = prof.top_channels(1, 3)
    for values in (None, means):
        with act.channel_intervention(blk, chans, values), act.record_blocks(act.blocks(run)) as seen:
            out = logits(run, inp)
        assert not torch.allclose(out, base)
        x = seen["inputs"][1]
        want = torch.zeros(len(chans)) if values is None else torch.tensor(means)
        torch.testing.assert_close(x[:, chans], want.expand(x.shape[0], -1))
        others = [c for c in range(x.shape[1]) if c not in chans]
        with act.record_blocks(act.blocks(run)) as plain:
            logits(run, inp)
        torch.testing.assert_close(x[:, others], plain["inputs"][1][:, others])
    assert not blk._forward_pre_hooks and torch.equal(logits(run, inp), base)


def test_intervention_rows_measure_both_models(run):
    inp = act.make_input(run, text=TEXT)
    prof = act.massive_activations(run, inp)

    def evaluate():
        return {"score": float(logits(run, inp).square().mean())}

    ref = act.intervention(run, 0, [], None, evaluate)
    with run.use_mode("dense"):
        dense = evaluate()["score"]
    assert [r["model"] for r in ref] == ["dense", "compressed"] and ref[0]["score"] == dense
    assert ref[0]["score"] != ref[1]["score"]
    chans, means = prof.top_channels(0, 1)
    hit = act.intervention(run, 0, chans, None, evaluate)
    assert all(h["score"] != r["score"] for h, r in zip(hit, ref)) and hit[0]["k"] == 1
    assert {m.mode for m in run.modules().values()} == {"both"}
    assert act.worsening(1.0, 0.8, True) == pytest.approx(0.2) and act.worsening(10.0, 12.0, False) == 2.0


def test_bad_requests_are_one_clear_error(run):
    inp = act.make_input(run, text=TEXT)
    prof = act.massive_activations(run, inp)
    with pytest.raises(ConfigError, match="k must be between 0 and"):
        prof.top_channels(0, 10_000)
    with pytest.raises(ConfigError, match="block must be between 0 and 2"):
        act.intervention(run, 7, [1], None, dict)
    with pytest.raises(DataError, match="the text is empty"):
        act.make_input(run, text="  ")
    with pytest.raises(DataError, match="give a text"):
        act.make_input(run, image=np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ConfigError, match="one value per channel"):
        with act.channel_intervention(act.blocks(run)[0], [1, 2], [0.0, 1.0, 2.0]):
            pass


def test_a_lazily_computed_reference_is_taken_before_the_intervention(run):
    """An evaluation that computes its dense reference on first use (as oats.evaluation does)
    must not take it from the intervened model: prepare() runs before the hook."""
    inp = act.make_input(run, text=TEXT)
    chans, _ = act.massive_activations(run, inp).top_channels(1, 2)

    def make():
        cache = {}

        def evaluate():
            if "ref" not in cache:
                with run.use_mode("dense"):
                    cache["ref"] = logits(run, inp)
            return {"diff": float((logits(run, inp) - cache["ref"]).abs().max())}
        return evaluate

    unprepared = make()
    assert act.intervention(run, 1, chans, None, unprepared)[0]["diff"] == 0.0  # compared with itself
    evaluate = make()
    rows = act.intervention(run, 1, chans, None, evaluate, prepare=evaluate)
    assert rows[0]["diff"] > 0 and rows[1]["diff"] > 0


def test_token_labels_read_as_words():
    """The token x channel map's labels carry no WordPiece '##' or byte-level 'Ġ' marks."""
    from types import SimpleNamespace

    class Tok:
        def __call__(self, text, **kw):
            return {"input_ids": torch.tensor([[0, 1, 2, 3]])}

        def convert_ids_to_tokens(self, ids):
            return ["[CLS]", "many", "##ing", "Ġword"][:len(ids)]

    inp = act.text_input(SimpleNamespace(loaded=SimpleNamespace(tokenizer=Tok())), "manying word")
    assert inp.tokens == ["0:[CLS]", "1:many", "2:ing", "3:word"]

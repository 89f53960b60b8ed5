"""Evaluation: perplexity, embedding and CLS fidelity, probe and top-1, modes, the CLI.
Tiny models and a character tokenizer built here; the embedded models under -m integration."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (BertConfig, BertModel, Dinov2Config, Dinov2Model, LlamaConfig, LlamaForCausalLM,
                          ViTConfig, ViTForImageClassification)

import oats
from oats import OatsConfig, compress_model, save_run
from oats.cli import main as cli_main
from oats.data import image_batches, sentence_batches
from oats.errors import DataError
from oats.evaluation import (PRIMARY_METRIC, EncoderEvaluator, Evaluation, Evaluator, evaluate_model, evaluate_run,
                             wikitext2_text)
from oats.runs.folders import RunWriter
from oats.models import hub
from oats.models.vision import IMAGENET_MEAN, IMAGENET_STD
from oats.models.zoo import LoadedModel

CFG = OatsConfig(compression=0.5, rank_ratio=0.25, iterations=5)


class CharTokenizer:
    """Enough of a Hugging Face tokenizer for the data and evaluation code: one id per character."""

    pad_token = "<pad>"
    pad_token_id = 0

    def __init__(self, vocab=64):
        self.vocab = vocab

    def ids(self, text):
        return [2 + ord(c) % (self.vocab - 2) for c in text]

    def __call__(self, text, add_special_tokens=False, verbose=False, padding=False, truncation=False,
                 max_length=None, return_tensors=None):
        if isinstance(text, str):
            return {"input_ids": self.ids(text)}
        seqs = [self.ids(t)[:max_length] if truncation and max_length else self.ids(t) for t in text]
        width = max(map(len, seqs))
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def tiny_lm(seed=0, layers=2):
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=512)).eval()
    return LoadedModel(name="tiny-lm", model=model, task="causal-lm", tokenizer=CharTokenizer())


def tiny_encoder(seed=0):
    torch.manual_seed(seed)
    model = BertModel(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64, max_position_embeddings=512)).eval()
    return LoadedModel(name="tiny-bert", model=model, task="encoder", tokenizer=CharTokenizer())


def tiny_vit(seed=0, head=False):
    torch.manual_seed(seed)
    if head:
        cfg = ViTConfig(image_size=8, patch_size=2, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, num_labels=3, id2label={0: "cat", 1: "dog", 2: "bird"},
                        label2id={"cat": 0, "dog": 1, "bird": 2})
        model = ViTForImageClassification(cfg).eval()
    else:
        model = Dinov2Model(Dinov2Config(image_size=8, patch_size=2, hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=4, mlp_ratio=2)).eval()
    return LoadedModel(name="tiny-vit", model=model, task="vision", image_size=8, image_mean=IMAGENET_MEAN,
                       image_std=IMAGENET_STD)


def text_batches_of(loaded, n=3, length=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(2, 64, (2, length), generator=g)} for _ in range(n)]


SENTENCES = [f"The {w} of the system was measured again at noon on day {i}." for i, w in
             enumerate(["speed", "size", "weight", "cost", "quality", "colour", "age", "depth", "height", "price"])]


# ----------------------------------------------------------------------------- causal LMs


def test_perplexity_is_exp_of_mean_next_token_nll():
    loaded = tiny_lm()
    text = "".join(chr(97 + (i * 7) % 26) for i in range(256))  # quick: 2 windows of 128 = the whole text
    got = evaluate_model(loaded.model, loaded, quick=True, text=text)
    ids = torch.tensor(CharTokenizer().ids(text)).view(2, 128)
    with torch.no_grad():
        logits = loaded.model(input_ids=ids).logits
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 64), ids[:, 1:].reshape(-1))
    assert got["nll"] == pytest.approx(float(nll), rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(float(nll)), rel=1e-5)


def test_default_text_is_each_domains_evaluation_part_never_calibration(monkeypatch):
    from oats import corpora
    real = corpora.text
    asked = []

    def text(domain, part):
        assert part == "evaluation", "evaluation read a calibration part"
        asked.append(domain)
        return real(domain, part)

    monkeypatch.setattr(corpora, "text", text)
    loaded = tiny_lm()
    ev = Evaluator(loaded, quick=False)
    assert list(ev._windows) == list(corpora.TEXT_DOMAINS) == ev.settings["domains"] == sorted(set(asked), key=asked.index)
    assert ev.settings["windows"] == 8 * len(corpora.TEXT_DOMAINS) and ev.settings["seq_len"] == 256
    for domain, windows in ev._windows.items():
        full = CharTokenizer().ids(real(domain, "evaluation"))
        at: dict[tuple, list[int]] = {}
        for i in range(len(full) - 256 + 1):
            at.setdefault(tuple(full[i:i + 16]), []).append(i)
        found = []
        for w in windows.tolist():
            hits = [i for i in at.get(tuple(w[:16]), []) if full[i:i + 256] == w]
            assert hits  # a window of this domain's evaluation text
            found.append(hits[0])
        assert len(set(map(tuple, windows.tolist()))) == 8
        assert max(found) > len(full) // 2  # spread over the text, not only its start


def test_perplexity_per_domain_and_its_mean():
    from oats import corpora
    loaded = tiny_lm()
    ev = Evaluator(loaded, quick=True)
    got = ev.metrics(loaded.model, None)
    nlls = []
    for domain, windows in ev._windows.items():
        with torch.no_grad():
            logits = loaded.model(input_ids=windows).logits
        nll = float(torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 64), windows[:, 1:].reshape(-1)))
        nlls.append(nll)
        assert got[f"nll@{domain}"] == pytest.approx(nll, rel=1e-5)
        assert got[f"perplexity@{domain}"] == pytest.approx(math.exp(nll), rel=1e-5)
    assert got["nll"] == pytest.approx(np.mean(nlls), rel=1e-6)
    assert got["perplexity"] == pytest.approx(math.exp(np.mean(nlls)), rel=1e-6)  # the geometric mean
    assert set(oats.evaluation.per_domain(got, "perplexity")) == set(corpora.TEXT_DOMAINS)
    assert oats.evaluation.split_key("perplexity@verse") == ("perplexity", "verse")
    assert oats.evaluation.split_key("perplexity") == ("perplexity", None)


def test_evaluate_run_modes_are_restored_and_per_layer_modes_respected():
    loaded = tiny_lm()
    dense = copy.deepcopy(loaded.model)
    run = compress_model(loaded.model, text_batches_of(loaded), CFG, model_name="tiny-lm")
    run.loaded = loaded
    first = next(iter(run.modules()))
    run.set_mode("both")
    run.set_mode("sparse", [first])
    res = evaluate_run(run, quick=True)
    assert set(res) == {"dense", "both", "sparse", "lowrank"}
    assert res["dense"] == pytest.approx(evaluate_model(dense, loaded, quick=True))
    assert res["both"]["perplexity"] != res["dense"]["perplexity"]
    assert res["lowrank"]["perplexity"] != res["sparse"]["perplexity"]
    # the model is back as it was, and evaluate_model sees the per-layer modes
    modes = {p: m.mode for p, m in run.modules().items()}
    assert modes[first] == "sparse" and all(m == "both" for p, m in modes.items() if p != first)
    mixed = evaluate_model(run.model, loaded, quick=True)["perplexity"]
    assert mixed != pytest.approx(res["both"]["perplexity"], rel=1e-9)
    run.set_mode("both")
    assert evaluate_model(run.model, loaded, quick=True)["perplexity"] == pytest.approx(res["both"]["perplexity"])


def test_wikitext2_without_network_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=0: False)
    with pytest.raises(DataError) as e:
        wikitext2_text()
    msg = str(e.value)
    assert "WikiText-2" in msg and "--text FILE" in msg and "\n" not in msg


# ----------------------------------------------------------------------------- encoders


def _manual_embeddings(model, sentences):
    out = []
    with torch.no_grad():
        for b in sentence_batches(CharTokenizer(), sentences, batch_size=16):
            h = model(**b).last_hidden_state
            m = b["attention_mask"].unsqueeze(-1).float()
            out.append((h * m).sum(1) / m.sum(1))
    return torch.cat(out)


def test_encoder_fidelity_against_dense(monkeypatch):
    loaded = tiny_encoder()
    text = " ".join(SENTENCES)
    dense = evaluate_model(loaded.model, loaded, quick=True, text=text)
    assert dense["cosine"] == pytest.approx(1.0) and dense["spearman"] == pytest.approx(1.0)
    ref = _manual_embeddings(copy.deepcopy(loaded.model), SENTENCES)
    calib = sentence_batches(CharTokenizer(), SENTENCES * 2, batch_size=4)
    run = compress_model(loaded.model, calib, CFG.replace(compression=0.8), model_name="tiny-bert")
    got = evaluate_model(run.model, loaded, quick=True, text=text)
    emb = _manual_embeddings(run.model, SENTENCES)
    cos = torch.nn.functional.cosine_similarity(emb.double(), ref.double(), dim=-1).mean()
    assert got["cosine"] == pytest.approx(float(cos), rel=1e-6) and got["cosine"] < 1 - 1e-6
    from scipy.stats import spearmanr
    iu = np.triu_indices(len(SENTENCES), 1)

    def sims(e):
        n = torch.nn.functional.normalize(e.double(), dim=-1)
        return (n @ n.T).numpy()[iu]
    assert got["spearman"] == pytest.approx(float(spearmanr(sims(emb), sims(ref)).statistic), rel=1e-6)


def test_dense_reference_is_cached_until_weights_change(monkeypatch):
    loaded = tiny_encoder()
    calls = []
    original = EncoderEvaluator.reference
    monkeypatch.setattr(EncoderEvaluator, "reference", lambda self, m: calls.append(1) or original(self, m))
    run = compress_model(loaded.model, sentence_batches(CharTokenizer(), SENTENCES, batch_size=4), CFG)
    text = " ".join(SENTENCES)
    a = evaluate_model(run.model, loaded, quick=True, text=text)
    b = evaluate_model(run.model, loaded, quick=True, text=text)
    assert len(calls) == 1 and a == b
    with torch.no_grad():
        next(iter(run.modules().values())).weight.mul_(1.5)  # the dense weights changed
    evaluate_model(run.model, loaded, quick=True, text=text)
    assert len(calls) == 2


# ----------------------------------------------------------------------------- ViTs


def test_vision_cls_fidelity_and_probe():
    loaded = tiny_vit()
    dense = evaluate_model(loaded.model, loaded, quick=True)
    domains = list(oats.corpora.IMAGE_DOMAINS)
    assert set(dense) == {"cls_cosine", "probe_acc"} | {f"cls_cosine@{d}" for d in domains}
    assert dense["cls_cosine"] == pytest.approx(1.0)
    assert dense["probe_acc"] > 0.3  # ten classes: chance is 0.1
    calib = image_batches(loaded, oats.data.bundled_images(), 8, seed=0)
    run = compress_model(loaded.model, calib, CFG.replace(compression=0.6), model_name="tiny-vit")
    run.loaded = loaded
    res = evaluate_run(run, quick=True)
    assert res["dense"] == pytest.approx(dense)
    assert res["both"]["cls_cosine"] < 0.9999
    per = oats.evaluation.per_domain(res["both"], "cls_cosine")
    assert list(per) == domains and res["both"]["cls_cosine"] == pytest.approx(np.mean(list(per.values())))
    assert res["both"]["cls_cosine"] > res["lowrank"]["cls_cosine"] or res["both"]["cls_cosine"] > res["sparse"]["cls_cosine"]


def _write_folder(root: Path, classes):
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for j in range(3):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / c / f"{j}.png")


def test_top1_on_a_labelled_folder(tmp_path):
    loaded = tiny_vit(head=True)
    _write_folder(tmp_path / "imgs", ["cat", "dog", "2"])
    got = evaluate_model(loaded.model, loaded, quick=True, image_folder=tmp_path / "imgs")
    from oats.data import load_image_folder
    images = load_image_folder(tmp_path / "imgs")
    labels = {"cat": 0, "dog": 1, "2": 2}
    correct = 0
    with torch.no_grad():
        for rel, img in images.items():
            px = image_batches(loaded, [img], 1, augment=False)[0]["pixel_values"]
            correct += int(loaded.model(pixel_values=px).logits.argmax(-1)) == labels[Path(rel).parts[0]]
    assert got["top1"] == pytest.approx(correct / len(images))
    assert got["cls_cosine"] == pytest.approx(1.0)
    _write_folder(tmp_path / "bad", ["zebra"])
    with pytest.raises(DataError, match="class folder 'zebra' matches no label"):
        evaluate_model(loaded.model, loaded, quick=True, image_folder=tmp_path / "bad")
    # no classification head: fidelity on the folder's images, no top-1
    plain = tiny_vit()
    assert "top1" not in evaluate_model(plain.model, plain, quick=True, image_folder=tmp_path / "imgs")


# ----------------------------------------------------------------------------- oats.evaluate and the CLI


def test_oats_evaluate_is_a_plain_function_that_returns_a_dataclass():
    from oats import evaluation
    assert oats.evaluate is evaluation.evaluate and callable(oats.evaluate)
    loaded = tiny_lm()
    run = compress_model(loaded.model, text_batches_of(loaded), CFG, model_name="tiny-lm")
    run.loaded = loaded
    ev = oats.evaluate(run, quick=True)
    assert isinstance(ev, Evaluation) and ev.task == "causal-lm"
    assert (ev.primary, ev.higher_is_better) == PRIMARY_METRIC["causal-lm"]
    assert list(ev.metrics) == ["dense", "both", "sparse", "lowrank"]
    assert ev.value("both") == ev.metrics["both"]["perplexity"]
    json.dumps(ev.to_dict())
    w = compress_model(tiny_lm().model, text_batches_of(loaded), CFG, method="wanda", model_name="tiny-lm")
    assert list(oats.evaluate(w, loaded, quick=True).metrics) == ["dense", "both"]
    assert list(oats.evaluate(tiny_lm(), quick=True).metrics) == ["dense"]


def _saved_run(tmp_path, complete=True):
    loaded = tiny_lm(layers=1)
    run = compress_model(loaded.model, text_batches_of(loaded), CFG, model_name="tiny-lm")
    folder = tmp_path / "run"
    if complete:
        save_run(run, folder)
    else:
        RunWriter(folder).block_done(run, 0)
    return folder


@pytest.mark.parametrize("extra,message", [
    (["--model", "minilm-l6"], "was made for 'tiny-lm', not 'minilm-l6'"),
    (["--modes", "both,foo"], "unknown variant 'foo': choose among dense, both, sparse, lowrank"),
    (["--text", "/no/such/file.txt"], "does not exist"),
])
def test_cli_evaluate_bad_inputs_exit_2_with_one_line(extra, message, tmp_path, capsys):
    folder = _saved_run(tmp_path)
    with pytest.raises(SystemExit) as e:
        sys.exit(cli_main(["evaluate", str(folder), *extra]))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_cli_evaluate_missing_or_unfinished_run(tmp_path, capsys):
    assert cli_main(["evaluate", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    folder = _saved_run(tmp_path, complete=False)
    assert cli_main(["evaluate", str(folder)]) == 2
    assert "unfinished" in capsys.readouterr().err


@pytest.mark.integration
def test_cli_evaluate_reports_dense_and_the_three_modes(tmp_path):
    from oats.models.zoo import preset_available
    ok, how = preset_available("minilm-l6")
    if not ok:
        pytest.fail(f"minilm-l6 is not installed: {how}")
    exe = Path(sys.executable).with_name("oats")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "oats.cli"]
    out = tmp_path / "run"
    p = subprocess.run(cmd + ["compress", "minilm-l6", "--calib-samples", "16", "--iterations", "10", "--out", str(out),
                              "--quiet"], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    p = subprocess.run(cmd + ["evaluate", str(out), "--quick", "--json"], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(p.stdout)
    m = res["metrics"]
    assert list(m) == ["dense", "both", "sparse", "lowrank"] and res["primary_metric"] == "cosine"
    # the mean beside each domain's held-out part, named
    assert res["domains"] == ["manual", "code", "verse", "speeches"] and res["measured_on"].startswith("held-out text")
    assert res["per_domain"]["both"] == {d: m["both"][f"cosine@{d}"] for d in res["domains"]}
    assert m["dense"]["cosine"] == pytest.approx(1.0)
    assert 0.5 < m["both"]["cosine"] < 0.9999
    assert m["both"]["cosine"] > m["sparse"]["cosine"] and m["both"]["cosine"] > m["lowrank"]["cosine"]

"""The calibration domain is a recorded setting of every run: part of the request's identity and
folder name, of the manifest (what was asked and what was measured), of the CLI and of sweeps.
A run recorded before domains existed was calibrated on the Python manual, and is never taken
for a run of the default mix."""

from __future__ import annotations

import json

import pytest
import torch
from test_sweep import CharTokenizer
from tiny_models import assert_cli_fails
from transformers import LlamaConfig, LlamaForCausalLM

from oats import OatsConfig, corpora, data
from oats.errors import ConfigError, RunError
from oats.models import zoo
from oats.models.zoo import LoadedModel
from oats.runner.execute import execute, folder_state
from oats.runner.request import CompressRequest, request_from_manifest
from oats.runner.sweep import _inspect, load_meta, sweep
from oats.runs.folders import read_manifest
from oats.runs.info import RunInfo

CFG = OatsConfig(compression=0.5, rank_ratio=0.25, iterations=3)
TEXT = corpora.domains("text")


def tiny_loaded(seed: int = 0) -> LoadedModel:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=512)).eval()
    return LoadedModel(name="tiny-lm", model=model, task="causal-lm", tokenizer=CharTokenizer(), source="test")


@pytest.fixture
def tiny_zoo(monkeypatch):
    """zoo.load_model answers 'tiny-lm' with a tiny Llama and a character tokenizer; the real
    ``data.calibration_batches`` runs, and each call's domain is recorded."""
    domains = []
    real = data.calibration_batches

    def spy(loaded, **kw):
        domains.append(kw.get("domain"))
        return real(loaded, **kw)

    monkeypatch.setattr(zoo, "load_model", lambda name, **kw: tiny_loaded())
    monkeypatch.setattr(data, "calibration_batches", spy)
    return domains


# ----------------------------------------------------------------------------- the request


def test_identity_and_folder_differ_per_domain():
    reqs = {d: CompressRequest("smollm2-135m", CFG, calib_domain=d) for d in (None, *TEXT)}
    assert len({r.identity() for r in reqs.values()}) == len(reqs)
    names = {r.folder_name() for r in reqs.values()}
    assert len(names) == len(reqs)
    assert reqs[None].folder_name() == "smollm2-135m-oats-c0.5-k0.25-row-it3-mix"
    assert reqs["verse"].folder_name() == "smollm2-135m-oats-c0.5-k0.25-row-it3-calverse"
    # "mix" is the default, spelt either way: the same request, the same run, the same folder
    mix = CompressRequest("smollm2-135m", CFG, calib_domain="mix")
    assert mix == reqs[None] and mix.identity() == reqs[None].identity() and mix.domain == "mix"
    # the user's own data ignores the domain
    own = [CompressRequest("smollm2-135m", CFG, calib_source="/x.txt", calib_domain=d) for d in (None, "code")]
    assert own[0].identity() == own[1].identity() and own[0].folder_name() == own[1].folder_name()
    assert own[0].domain is None and own[0].calibration_request()["domain"] is None
    # what the manifest records, and back
    for d, r in reqs.items():
        assert r.calibration_request()["domain"] == (d or "mix")
        m = {"model_name": r.model, "method": r.method, "config": r.config.to_dict(),
             "calibration_request": r.calibration_request()}
        assert request_from_manifest(m) == r and r.same_run(m)
        assert CompressRequest.from_json(r.to_json()) == r
        assert all(o.same_run(m) == (o is r) for o in reqs.values())


def test_no_new_folder_name_is_a_legacy_one():
    """Folders named before domains (no data tag) hold manual-calibrated runs: every built-in
    calibration now adds a tag, so no new run's folder is an old run's."""
    legacy = "minilm-l6-oats-c0.5-k0.25-row"
    for d in (None, *TEXT):
        name = CompressRequest("minilm-l6", OatsConfig(), calib_domain=d).folder_name()
        assert name != legacy and name.startswith(legacy + "-")


def test_check_validates_the_domain_against_the_model_kind():
    CompressRequest("minilm-l6", CFG, calib_domain="code").check()
    CompressRequest("dinov2-small", CFG, calib_domain="textures").check()
    CompressRequest("timm:vit_small_patch16_224", CFG, calib_domain="photos").check()
    with pytest.raises(ConfigError, match="'photos' is for vision models.*choose mix or one of manual, code, verse, "
                                          "speeches$"):
        CompressRequest("minilm-l6", CFG, calib_domain="photos").check()
    with pytest.raises(ConfigError, match="'verse' is for text models.*one of photos, drawings, textures$"):
        CompressRequest("dinov2-small", CFG, calib_domain="verse").check()
    # a hub id's kind is not known before it loads: any domain name passes, others do not
    CompressRequest("org/model", CFG, calib_domain="photos").check()
    with pytest.raises(ConfigError, match="unknown calibration domain 'poems': choose mix or one of manual, .*textures"):
        CompressRequest("org/model", CFG, calib_domain="poems").check()
    # the user's own data: the domain is not read
    CompressRequest("minilm-l6", CFG, calib_source="/x.txt", calib_domain="photos").check()


# ----------------------------------------------------------------------------- old manifests


def test_old_manifest_maps_to_manual_and_is_not_reused_for_a_mix_request(tmp_path, tiny_zoo):
    manual = CompressRequest("tiny-lm", CFG, calib_domain="manual", calib_samples=2, seq_len=16, evaluate=False)
    folder = tmp_path / "old-run"
    assert execute(manual, folder).status == "computed"
    assert tiny_zoo == ["manual"]
    # as a writer before domains left it: no domain anywhere
    m = read_manifest(folder)
    del m["calibration_request"]["domain"]
    for key in ("domain", "domains", "source", "samples", "kind"):
        m["calibration"].pop(key)
    (folder / "manifest.json").write_text(json.dumps(m))
    old = request_from_manifest(m)
    assert old.calib_domain == "manual" and old.domain == "manual"
    mix = CompressRequest("tiny-lm", CFG, calib_samples=2, seq_len=16, evaluate=False)
    assert not mix.same_run(m) and manual.same_run(m)
    # the one place a folder is judged refuses to reuse or resume it for the mix
    with pytest.raises(RunError, match="holds another compression"):
        folder_state(mix, folder)
    with pytest.raises(RunError, match="holds another compression"):
        execute(mix, folder)
    with pytest.raises(RunError, match="holds another compression .*: move it away or give another --root"):
        _inspect(mix, folder)
    assert folder_state(manual, folder).action == "reuse" and _inspect(manual, folder) == "reuse"
    info = RunInfo.read(folder)
    assert info.calibration_domain == "manual"
    assert info.calibrated_on() == f"manual (recorded before calibration domains), {2 * 16:,} tokens"
    # an old vision run was calibrated on the bundled photos, not on a text domain
    vit = {"model_name": "dinov2-small", "method": "oats", "config": CFG.to_dict(), "task": "vision",
           "calibration_request": {"samples": 4, "seq_len": None, "seed": 0, "source": None}}
    assert request_from_manifest(vit).calib_domain == "photos"
    # an old run on the user's own text keeps its source and no domain
    own = {**m, "calibration_request": {"samples": 2, "seq_len": 16, "seed": 0, "source": "/x.txt"}}
    assert request_from_manifest(own).domain is None
    assert CompressRequest("tiny-lm", CFG, calib_source="/x.txt", calib_samples=2, seq_len=16).same_run(own)


# ----------------------------------------------------------------------------- the manifest after a run


def test_manifest_records_the_mix_and_its_size(tmp_path, tiny_zoo):
    req = CompressRequest("tiny-lm", CFG, calib_samples=4, seq_len=32, evaluate=False)
    out = execute(req, tmp_path / req.folder_name())
    assert out.status == "computed" and tiny_zoo == [None]
    m = read_manifest(out.folder)
    assert m["calibration_request"]["domain"] == "mix"
    cal = m["calibration"]
    assert (cal["domain"], cal["domains"], cal["source"]) == ("mix", list(TEXT), None)
    assert cal["samples"] == 4 and cal["tokens"] == 4 * 32  # causal LM: every window token counts
    assert RunInfo.read(out.folder).calibrated_on() == "mix of manual, code, verse, speeches, 128 tokens"


def test_one_domain_run_is_calibrated_on_that_domain(tmp_path, tiny_zoo):
    """The domain reaches the data: the run's factors differ from the mix's, and a repeat reuses."""
    runs = {}
    for d in ("code", None):
        req = CompressRequest("tiny-lm", CFG, calib_domain=d, calib_samples=4, seq_len=32, evaluate=False)
        runs[d] = execute(req, tmp_path / req.folder_name()).run
    assert tiny_zoo == ["code", None]
    m = read_manifest(tmp_path / CompressRequest("tiny-lm", CFG, calib_domain="code", calib_samples=4,
                                                 seq_len=32).folder_name())
    assert (m["calibration"]["domain"], m["calibration"]["domains"]) == ("code", ["code"])
    assert m["calibration_request"]["domain"] == "code"
    a, b = runs["code"].model.state_dict(), runs[None].model.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a if torch.is_floating_point(a[k]))


def test_minilm_run_records_domain_and_tokens(tmp_path):
    """A real minilm-l6 run on the verse domain: the manifest names the domain, the sentences and
    the real (non-padding) tokens of exactly the batches calibration_batches gives."""
    ok, how = zoo.preset_available("minilm-l6")
    if not ok:
        pytest.fail(f"minilm-l6 is not installed: {how}")
    req = CompressRequest("minilm-l6", OatsConfig(iterations=2), calib_domain="verse", calib_samples=8,
                          evaluate=False)
    out = execute(req, tmp_path / req.folder_name())
    assert out.folder.name.endswith("-calverse")
    batches = data.calibration_batches(zoo.load_model("minilm-l6"), n_samples=8, domain="verse")
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    mix_tokens = sum(int(b["attention_mask"].sum()) for b in data.calibration_batches(out.run.loaded, n_samples=8))
    assert tokens != mix_tokens  # so the count below tells the domain's batches from the mix's
    cal = read_manifest(out.folder)["calibration"]
    assert (cal["domain"], cal["domains"], cal["samples"], cal["tokens"]) == ("verse", ["verse"], 8, tokens)
    assert RunInfo.read(out.folder).calibrated_on() == f"verse, {tokens:,} tokens"


# ----------------------------------------------------------------------------- sweep and CLI


def test_sweep_calibrates_every_run_on_its_domain(tmp_path, monkeypatch):
    seen = []
    real = data.calibration_batches
    monkeypatch.setattr(data, "calibration_batches", lambda loaded, **kw: seen.append(kw.get("domain")) or
                        real(loaded, **kw))
    res = sweep("tiny-lm", "wanda", [0.5], root=tmp_path, loaded=tiny_loaded(), calib_domain="speeches",
                calib_samples=4, seq_len=32, quick=True)
    assert seen == ["speeches"]
    assert res.computed == ["tiny-lm-wanda-c0.5-k0-row-cal4x32s0-calspeeches"]
    assert res.folder == tmp_path / "sweeps" / "tiny-lm-calspeeches"  # beside the mix table, not over it
    assert load_meta(res.folder)["calibration"]["domain"] == "speeches"
    m = read_manifest(tmp_path / res.computed[0])
    assert m["calibration"]["domain"] == m["calibration_request"]["domain"] == "speeches"
    with pytest.raises(ConfigError, match="'textures' is for vision models"):
        sweep("tiny-lm", "wanda", [0.5], root=tmp_path, loaded=tiny_loaded(), calib_domain="textures",
              calib_samples=4, seq_len=32, quick=True)


@pytest.mark.parametrize("argv, message", [
    (["compress", "minilm-l6", "--calib-domain", "photos"], "calibration domain 'photos' is for vision models"),
    (["compress", "smollm2-135m", "--calib-domain", "drawings"], "choose mix or one of manual, code, verse, speeches"),
    (["compress", "dinov2-small", "--calib-domain", "verse"], "calibration domain 'verse' is for text models"),
    (["sweep", "minilm-l6", "--calib-domain", "textures"], "calibration domain 'textures' is for vision models"),
    (["sweep", "dinov2-small", "--calib-domain", "code"], "choose mix or one of photos, drawings, textures"),
    (["compress", "minilm-l6", "--calib-domain", "poems"], "invalid choice: 'poems'"),
    (["compress", "minilm-l6", "--calib-domain", "code", "--calib-source", "/etc/hostname"],
     "give either --calib-domain (the built-in data) or --calib-source (your own), not both"),
])
def test_cli_rejects_a_wrong_domain_with_one_line(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OATS_RUNS_DIR", str(tmp_path))
    monkeypatch.setattr(zoo, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    assert_cli_fails(argv, message, capsys)
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- the app's Compress form


def test_compress_form_offers_the_domains_of_the_models_kind(tmp_path, monkeypatch):
    """The form's built-in data: the mix first, then the domains of the chosen model's kind; the
    choice reaches the request the job starts with."""
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from oats.runner.jobs import RUNNER
    started = []

    def start(request, *a, **k):
        started.append(request)
        raise RunError("stopped by the test")

    monkeypatch.setenv("OATS_RUNS_DIR", str(tmp_path))
    monkeypatch.setattr(RUNNER, "start", start)
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=300)
    at.run()

    def domain_box():
        (box,) = [s for s in at.selectbox if s.label == "Built-in calibration data"]
        return box

    [s for s in at.selectbox if s.label == "Model"][0].set_value("minilm-l6").run()
    assert domain_box().options == ["mix of every domain (default)", "manual: Python manual", "code: Python code",
                                    "verse: Shakespeare", "speeches: State of the Union"]
    assert domain_box().value == "mix"
    domain_box().set_value("verse").run()
    [b for b in at.button if b.label == "Compress"][0].click().run()
    assert [e.value for e in at.error] == ["stopped by the test"]
    assert started[-1].calib_domain == "verse" and started[-1].folder_name().endswith("-calverse")
    [s for s in at.selectbox if s.label == "Model"][0].set_value("dinov2-small").run()
    assert [o.split(":")[0] for o in domain_box().options] == ["mix of every domain (default)", *corpora.domains("images")]
    assert domain_box().value == "mix"  # the other kind's choice does not carry over
    [b for b in at.button if b.label == "Compress"][0].click().run()
    assert started[-1].model == "dinov2-small" and started[-1].calib_domain is None
    at.radio[0].set_value("text file").run()  # your own data: no built-in choice
    assert not [s for s in at.selectbox if s.label == "Built-in calibration data"]


def test_calibrated_on_names_images_for_a_vision_run():
    cfg = OatsConfig()
    mix = RunInfo(model_name="dinov2-small", method="oats", config=cfg, task="vision",
                  calibration={"batches": 2, "tokens": 16448, "samples": 64, "domain": "mix",
                               "domains": ["photos", "drawings", "textures"], "kind": "images"},
                  calibration_request={"samples": 64, "seq_len": None, "seed": 0, "source": None, "domain": "mix"})
    assert mix.calibrated_on() == "mix of photos, drawings, textures, 64 images (16,448 tokens)"
    old = RunInfo(model_name="dinov2-small", method="oats", config=cfg, task="vision", calibration={"tokens": 257})
    assert old.calibration_domain == "photos"
    assert old.calibrated_on() == "photos (recorded before calibration domains), 257 tokens"
    own = RunInfo(model_name="m", method="oats", config=cfg, calibration={"tokens": 100, "source": "/a/notes.txt"},
                  calibration_request={"samples": None, "seq_len": None, "seed": 0, "source": "/a/notes.txt",
                                       "domain": None})
    assert own.calibration_domain is None and own.calibrated_on() == "your data 'notes.txt', 100 tokens"

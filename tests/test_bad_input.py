"""Bad input, everywhere the same: one table of cases, each with the exact message it expects.

Every case is checked three ways where the surface allows it:
- library: the call raises the typed exception with exactly this message;
- CLI: ``oats ...`` exits with status 2, its only stderr line is ``oats: error: <message>``,
  no traceback, and the runs folder is left as it was;
- app: the Compress form shows exactly this message with ``st.error``, no exception, no job.
A few cases also run as real processes (no traceback anywhere) and in the browser test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from test_zoo_data import counting_text
from tiny_models import word_tokenizer

from oats import data, resources

from oats.models import hub, zoo
from oats.compress.allocation import Owl
from oats.config import OatsConfig
from oats.errors import ConfigError, DataError, ModelLoadError, ResourceError, RunError, UnsupportedModelError
from oats.runs import folders
from oats.runs.folders import load_run, read_manifest
from oats.compress.pipeline import compress_model, resolve_device

ROOT = Path(__file__).resolve().parents[1]
PRESETS = "smollm2-135m, minilm-l6, dinov2-small"
TYPES = ("llama, qwen2, mistral, qwen3, olmo, olmo2, phi3, gpt2, bert, roberta, xlm-roberta, electra, vit, dinov2 "
         "and timm VisionTransformer")
from tiny_models import CALIB, llm_folder as _llm_folder  # noqa: E402  (shared with other tests)


# ----------------------------------------------------------------------------- the files the cases use


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Paths by name: good and broken models, texts, image folders, run folders."""
    from safetensors.torch import load_file, save_file
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, ViTConfig, ViTModel
    t = tmp_path_factory.mktemp("bad-input")
    f: dict[str, Path] = {"tmp": t}
    f["llm"] = _llm_folder(t / "llm")
    tok = word_tokenizer()
    GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=64)).save_pretrained(t / "neox")
    tok.save_pretrained(t / "neox")
    f["neox"] = t / "neox"
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=8)).save_pretrained(t / "vit")
    f["vit"] = t / "vit"
    # NaN in one weight of block 1
    shutil.copytree(f["llm"], t / "nan")
    w = load_file(str(t / "nan" / "model.safetensors"))
    w["model.layers.1.mlp.up_proj.weight"][3, 5] = float("nan")
    save_file(w, str(t / "nan" / "model.safetensors"), metadata={"format": "pt"})
    f["nan"] = t / "nan"
    # weights that are not safetensors (a pickle renamed, here: text)
    shutil.copytree(f["llm"], t / "notsafe")
    (t / "notsafe" / "model.safetensors").write_bytes(b"PK\x03\x04 this is a zip archive, not safetensors")
    f["notsafe"] = t / "notsafe"
    (t / "empty").mkdir()
    f["empty"] = t / "empty"
    f["afile"] = t / "notes.txt"
    f["afile"].write_text(counting_text(200))
    f["empty_txt"] = t / "empty.txt"
    f["empty_txt"].write_text("  \n\n ")
    f["tiny_txt"] = t / "tiny.txt"
    f["tiny_txt"].write_text("the quick fox")
    f["binary_txt"] = t / "binary.txt"
    f["binary_txt"].write_bytes(b"\x00\x01\x02 not text")
    (t / "noimages").mkdir()
    (t / "noimages" / "readme.txt").write_text("no pictures here")
    f["noimages"] = t / "noimages"
    (t / "corrupt").mkdir()
    (t / "corrupt" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n but then garbage")
    f["corrupt"] = t / "corrupt"
    # a complete run of the tiny LM, and damaged copies of it
    runs = t / "runs"
    from oats.cli import main
    assert main(["compress", str(f["llm"]), "--out", str(runs / "run"), "--quiet", *CALIB]) == 0
    f["run"] = runs / "run"
    for name in ("damaged", "missing", "badfactor", "unfinished"):
        shutil.copytree(f["run"], runs / name)
        f[name] = runs / name
    (f["damaged"] / "manifest.json").write_text('{"format": 1, "model_name": ')
    (f["missing"] / "block_001.safetensors").unlink()
    (f["badfactor"] / "block_000.safetensors").write_bytes(b"not a safetensors file at all")
    m = json.loads((f["unfinished"] / "manifest.json").read_text())
    m["complete"] = False
    (f["unfinished"] / "manifest.json").write_text(json.dumps(m))
    return f


@pytest.fixture
def offline(monkeypatch):
    """The hub is unreachable and its local cache empty, whatever this machine's network."""
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(hub, "hub_cached", lambda name: False)


def _compress(path, sparsity="row", samples=2, seq_len=8, source=None, **cfg):
    """The library path of `oats compress`: load, calibration data, compress."""
    loaded = zoo.load_model(str(path))
    batches = data.calibration_batches(loaded, n_samples=samples, seq_len=seq_len, source=source)
    return compress_model(loaded.model, batches, OatsConfig(sparsity=sparsity, iterations=3, **cfg),
                          model_name=str(path))


def _load_into(run, model_folder, name):
    return load_run(run, model=zoo.load_model(str(model_folder)).model, model_name=name)


# ----------------------------------------------------------------------------- the table


@dataclass
class Case:
    id: str
    error: type
    message: str
    """Exact message; {name} fields are paths from the ``files`` fixture."""
    lib: Callable[[dict], object]
    cli: list[str] | None = None
    env: dict = field(default_factory=dict)


CASES = [
    Case("unknown preset", ModelLoadError,
         f"unknown model 'smolm2-135m': did you mean 'smollm2-135m'? presets are {PRESETS}",
         lambda f: zoo.load_model("smolm2-135m"), ["compress", "smolm2-135m"]),
    Case("misspelt hub id offline", ModelLoadError,
         f"could not download 'facebok/dinov2-smal' from the Hugging Face hub (no network?): use a preset "
         f"({PRESETS}) or a local directory",
         lambda f: zoo.load_model("facebok/dinov2-smal"), ["compress", "facebok/dinov2-smal"]),
    Case("malformed hub id", ModelLoadError,
         f"unknown model 'bad--name!': use a preset ({PRESETS}), a local folder, a hub id such as 'gpt2' or 'timm:NAME'",
         lambda f: zoo.load_model("bad--name!"), ["compress", "bad--name!"]),
    Case("misspelt timm model", ModelLoadError,
         "timm has no model 'vit_smal_patch16_224': did you mean 'timm:vit_small_patch16_224'? "
         "see timm.list_models() for names",
         lambda f: zoo.load_model("timm:vit_smal_patch16_224"), ["compress", "timm:vit_smal_patch16_224"]),
    Case("folder without a model", ModelLoadError,
         "folder '{empty}' has no config.json: give a folder saved with save_pretrained (config.json plus "
         "model.safetensors)",
         lambda f: zoo.load_model(str(f["empty"])), ["compress", "{empty}"]),
    Case("folder that does not exist", ModelLoadError,
         f"folder './no-such-model-folder' does not exist: check the path, or use a preset ({PRESETS})",
         lambda f: zoo.load_model("./no-such-model-folder"), ["compress", "./no-such-model-folder"]),
    Case("a file instead of a model folder", ModelLoadError,
         "'{afile}' is a file, not a model folder: give a folder saved with save_pretrained (config.json plus "
         "model.safetensors)",
         lambda f: zoo.load_model(str(f["afile"])), ["compress", "{afile}"]),
    Case("weights file that is not safetensors", ModelLoadError,
         "weights file 'model.safetensors' in folder '{notsafe}' is not a valid safetensors file (damaged, "
         "truncated or another format): replace it with the model's own .safetensors weights",
         lambda f: zoo.load_model(str(f["notsafe"])), ["compress", "{notsafe}"]),
    Case("unsupported architecture", UnsupportedModelError,
         f"unsupported architecture 'gpt_neox': supported model types are {TYPES} (or allow the generic adapter, "
         "--generic, which compresses the linears of repeated blocks)",
         lambda f: _compress(f["neox"]), ["compress", "{neox}", *CALIB]),
    Case("compression 0", ConfigError,
         "compression must be in (0, 1) (fraction of parameters removed), got '0'",
         lambda f: OatsConfig(compression="0"), ["compress", "{llm}", "--compression", "0"]),
    Case("compression 1", ConfigError,
         "compression must be in (0, 1) (fraction of parameters removed), got '1'",
         lambda f: OatsConfig(compression="1"), ["compress", "{llm}", "--compression", "1"]),
    Case("compression -0.1", ConfigError,
         "compression must be in (0, 1) (fraction of parameters removed), got '-0.1'",
         lambda f: OatsConfig(compression="-0.1"), ["compress", "{llm}", "--compression=-0.1"]),
    Case("compression abc", ConfigError,
         "compression must be a number in (0, 1), got 'abc'",
         lambda f: OatsConfig(compression="abc"), ["compress", "{llm}", "--compression", "abc"]),
    Case("rank ratio 1", ConfigError,
         "rank_ratio must be in [0, 1) (share of kept parameters in the low-rank term), got '1'",
         lambda f: OatsConfig(rank_ratio="1"), ["compress", "{llm}", "--rank-ratio", "1"]),
    Case("iterations 0", ConfigError,
         "iterations must be a whole number of at least 1, got '0'",
         lambda f: OatsConfig(iterations="0"), ["compress", "{llm}", "--iterations", "0"]),
    Case("pattern 3:2", ConfigError,
         "sparsity pattern '3:2' is invalid: N:M needs 0 < N < M (keep N of every M), e.g. '2:4'",
         lambda f: OatsConfig(sparsity="3:2"), ["compress", "{llm}", "--sparsity", "3:2"]),
    Case("pattern 2:0", ConfigError,
         "sparsity pattern '2:0' is invalid: N:M needs 0 < N < M (keep N of every M), e.g. '2:4'",
         lambda f: OatsConfig(sparsity="2:0"), ["compress", "{llm}", "--sparsity", "2:0"]),
    Case("pattern nonsense", ConfigError,
         "sparsity pattern 'diagonal' is not understood: use 'row', 'layer' or 'N:M' such as '2:4'",
         lambda f: OatsConfig(sparsity="diagonal"), ["compress", "{llm}", "--sparsity", "diagonal"]),
    Case("M does not divide d_in", ConfigError,
         "sparsity 1:3 needs each layer's input size to be a multiple of 3, but layer "
         "'model.layers.0.self_attn.q_proj' has d_in = 32: choose an M that divides it",
         lambda f: _compress(f["llm"], sparsity="1:3"), ["compress", "{llm}", "--sparsity", "1:3", *CALIB]),
    Case("unknown method", ConfigError,
         "unknown method 'oatz': choose one of oats, wanda, sparsegpt, magnitude, lowrank, hassle",
         lambda f: compress_model(torch.nn.Linear(2, 2), [{}], method="oatz"), ["compress", "{llm}", "--method", "oatz"]),
    Case("unknown solver", ConfigError,
         "solver must be one of fast, exact, got 'slow'",
         lambda f: OatsConfig(solver="slow"), ["compress", "{llm}", "--solver", "slow"]),
    Case("unknown device", ConfigError,
         "device 'tpu' is not understood: use cpu or cuda",
         lambda f: resolve_device("tpu"), ["compress", "{llm}", "--device", "tpu"]),
    Case("no calibration samples", ConfigError,
         "number of samples must be a whole number of at least 1, got 0",
         lambda f: _compress(f["llm"], samples=0), ["compress", "{llm}", "--calib-samples", "0"]),
    Case("empty calibration text", DataError,
         "'{empty_txt}' is empty: give a text file with some prose in it",
         lambda f: _compress(f["llm"], source=f["empty_txt"]), ["compress", "{llm}", "--calib-source", "{empty_txt}"]),
    Case("tiny calibration text", DataError,
         "the text has 3 tokens, fewer than the 9 one window of 8 needs: give a longer text or a shorter "
         "sequence length",
         lambda f: _compress(f["llm"], source=f["tiny_txt"]),
         ["compress", "{llm}", "--calib-source", "{tiny_txt}", *CALIB]),
    Case("binary calibration text", DataError,
         "'{binary_txt}' looks binary, not text: give a UTF-8 text file",
         lambda f: _compress(f["llm"], source=f["binary_txt"]),
         ["compress", "{llm}", "--calib-source", "{binary_txt}", *CALIB]),
    Case("image folder with no images", DataError,
         "folder '{noimages}' has no images (.png, .jpg, .jpeg, .bmp, .gif, .webp, .tif, .tiff): put some there, "
         "or use the bundled images",
         lambda f: _compress(f["vit"], source=f["noimages"]), ["compress", "{vit}", "--calib-source", "{noimages}"]),
    Case("corrupt image", DataError,
         "'{corrupt}/a.png' is not an image that can be read (corrupt or unknown format): give a PNG or JPEG file",
         lambda f: _compress(f["vit"], source=f["corrupt"]), ["compress", "{vit}", "--calib-source", "{corrupt}"]),
    Case("NaN in weights", ModelLoadError,
         "layer 'model.layers.1.mlp.up_proj' has NaN or inf weights: the model's weights are damaged; load them "
         "again from a clean copy",
         lambda f: _compress(f["nan"]), ["compress", "{nan}", *CALIB]),
    Case("larger than memory allows", ResourceError,
         "compressing '{llm}' on 128000 calibration tokens needs about 0.288 GB of memory (block activations "
         "0.164 GB) but 0.01 GB is available: use fewer calibration samples or shorter sequences "
         "(--calib-samples, --seq-len) (or raise OATS_MEMORY_LIMIT_GB)",
         lambda f: _compress(f["llm"], samples=2000, seq_len=64),
         ["compress", "{llm}", "--calib-samples", "2000", "--seq-len", "64"], env={resources.MEMORY_ENV: "0.01"}),
    Case("model larger than memory allows", ResourceError,
         "loading '{llm}' in fp32 needs about 0.000163 GB of memory (weights 0.000163 GB) but 1e-06 GB is "
         "available: use a smaller model or a machine with more memory (or raise OATS_MEMORY_LIMIT_GB)",
         lambda f: zoo.load_model(str(f["llm"])), ["compress", "{llm}"], env={resources.MEMORY_ENV: "0.000001"}),
    Case("run folder from another model", RunError,
         "run folder '{run}' was made for '{llm}', not '{neox}': use the run's own model, or another run folder",
         lambda f: _load_into(f["run"], f["neox"], str(f["neox"])), ["evaluate", "{run}", "--model", "{neox}"]),
    Case("damaged manifest", RunError,
         "run folder '{damaged}' has a damaged manifest (Expecting value: line 1 column 29 (char 28)): delete it "
         "and compress again",
         lambda f: load_run(f["damaged"]), ["evaluate", "{damaged}"]),
    Case("missing factors", RunError,
         "run folder '{missing}' is missing block_001.safetensors: the run is damaged, compress again",
         lambda f: _load_into(f["missing"], f["llm"], str(f["llm"])), ["evaluate", "{missing}"]),
    Case("factors that are not safetensors", RunError,
         "run folder '{badfactor}': block_000.safetensors is unreadable (SafetensorError): compress again",
         lambda f: _load_into(f["badfactor"], f["llm"], str(f["llm"])), ["evaluate", "{badfactor}"]),
    Case("unfinished run", RunError,
         "run 'unfinished' is unfinished (2 blocks done): resume it with 'oats compress --resume' or delete it",
         lambda f: load_run(f["unfinished"]), None),
    Case("not a run folder", RunError,
         "'{empty}' is not a run folder (no manifest.json): give the folder written by 'oats compress --out'",
         lambda f: read_manifest(f["empty"]), ["evaluate", "{empty}"]),
    Case("resume a complete run", RunError,
         "run '{run}' is already complete: nothing to resume",
         lambda f: folders.check_resumable(f["run"]), ["compress", "{llm}", "--out", "{run}", "--resume"]),
    Case("run name leaving the runs folder", RunError,
         "run name '../elsewhere' is not a plain folder name: use letters, digits, '-', '_' and '.' (not first), "
         "at most 200 characters",
         lambda f: folders.run_dir(f["tmp"], "../elsewhere"), None),
    Case("upload that is not an image", DataError,
         "upload 'cat.png' is not an image that can be read (corrupt or unknown format): give a PNG or JPEG file",
         lambda f: data.check_upload("cat.png", b"GIF89 not really", "image"), None),
    Case("upload of the wrong type", DataError,
         "upload 'model.pkl' is not a safetensors file: give a file ending in .safetensors",
         lambda f: data.check_upload("model.pkl", b"\x80\x04 pickle", "safetensors"), None),
    Case("upload too large", DataError,
         "upload 'big.jpg' is 21.0 MB, over the 20 MB limit: give a smaller file",
         lambda f: data.check_upload("big.jpg", b"\xff" * (21 * 2**20), "image"), None),
    Case("upload of a damaged safetensors file", ModelLoadError,
         "upload 'w.safetensors' is not a valid safetensors file (damaged, truncated or another format): replace "
         "it with the model's own .safetensors weights",
         lambda f: data.check_upload("w.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{}", "safetensors"),
         None),
    Case("OWL lambda too large", ConfigError,
         "OWL lambda 0.6 would push a block's compression rate outside (0, 1) at compression 0.5: use lambda < 0.5",
         lambda f: compress_model(zoo.load_model(str(f["llm"])).model, [{}], allocation=Owl(lam=0.6)),
         ["compress", "{llm}", "--allocation", "owl", "--owl-lambda", "0.6"]),
]


def _fmt(text: str, files: dict) -> str:
    return text.format(**{k: str(v) for k, v in files.items()})


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_library_raises_the_typed_error(case, files, offline, monkeypatch):
    for k, v in case.env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(case.error) as e:
        case.lib(files)
    assert str(e.value) == _fmt(case.message, files)
    assert "\n" not in str(e.value)


CLI_CASES = [c for c in CASES if c.cli]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli_prints_one_line_and_exits_2(case, files, offline, monkeypatch, capsys, tmp_path):
    from oats.cli import main
    for k, v in case.env.items():
        monkeypatch.setenv(k, v)
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "earlier-run").mkdir()
    monkeypatch.setenv("OATS_RUNS_DIR", str(runs))
    before = {p: p.stat().st_mtime for p in files["tmp"].rglob("*")}
    assert main([_fmt(a, files) for a in case.cli]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    # the error is the only output: nothing (no "loading ...") before it
    assert err.splitlines() == ["oats: error: " + _fmt(case.message, files)]
    # nothing lost, nothing half-made: the runs folder and every input are as they were
    assert sorted(p.name for p in runs.iterdir()) == ["earlier-run"]
    assert {p: p.stat().st_mtime for p in files["tmp"].rglob("*")} == before


def test_the_table_is_large_and_covers_every_surface():
    assert len(CASES) >= 25 and len(CLI_CASES) >= 25
    assert len({c.id for c in CASES}) == len(CASES)
    assert {c.error for c in CASES} == {ConfigError, DataError, ModelLoadError, ResourceError, RunError,
                                        UnsupportedModelError}


@pytest.mark.parametrize("case", [c for c in CLI_CASES if c.id in ("unknown preset", "compression abc",
                                                                     "damaged manifest", "NaN in weights")],
                         ids=lambda c: c.id)
def test_cli_as_a_real_process_shows_no_traceback(case, files, tmp_path):
    env = dict(os.environ, OATS_RUNS_DIR=str(tmp_path), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **case.env)
    p = subprocess.run([sys.executable, "-m", "oats.cli", *[_fmt(a, files) for a in case.cli]],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""
    assert p.stderr.splitlines() == ["oats: error: " + _fmt(case.message, files)]


def test_unexpected_errors_are_one_line_too(monkeypatch, capsys):
    from oats import cli

    def boom(args):
        raise KeyError("internal")
    monkeypatch.setattr(cli, "cmd_runs", boom)
    assert cli.main(["runs"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == ["oats: error: unexpected KeyError: 'internal' (a bug: rerun with OATS_DEBUG=1 for "
                                "the traceback and report it)"]
    monkeypatch.setenv("OATS_DEBUG", "1")
    with pytest.raises(KeyError):
        cli.main(["runs"])


# ----------------------------------------------------------------------------- the app's Compress form

APP_CASES = {
    # case id: how the form is filled (model typed under "other", pattern, calibration source)
    "unknown preset": {"model": "smolm2-135m"},
    "misspelt hub id offline": {"model": "facebok/dinov2-smal"},
    "folder without a model": {"model": "{empty}"},
    "folder that does not exist": {"model": "./no-such-model-folder"},
    "a file instead of a model folder": {"model": "{afile}"},
    "weights file that is not safetensors": {"model": "{notsafe}"},
    "pattern 3:2": {"nm": "3:2"},
    "pattern 2:0": {"nm": "2:0"},
    "empty calibration text": {"text": "{empty_txt}"},
    "binary calibration text": {"text": "{binary_txt}"},
    "image folder with no images": {"images": "{noimages}"},
    "corrupt image": {"images": "{corrupt}"},
}


@pytest.mark.parametrize("case_id", list(APP_CASES))
def test_app_compress_form_shows_the_same_message(case_id, files, offline, monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    from oats.runner.jobs import RUNNER
    case = next(c for c in CASES if c.id == case_id)
    form = APP_CASES[case_id]
    monkeypatch.setenv("OATS_RUNS_DIR", str(tmp_path))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    at.run()
    if "model" in form:
        [s for s in at.selectbox if s.label == "Model"][0].set_value("other: a hub id or a local folder").run()
        [t for t in at.text_input if t.label == "Hub id or local folder"][0].set_value(_fmt(form["model"], files)).run()
    if "nm" in form:
        [s for s in at.selectbox if s.label == "Sparsity pattern"][0].set_value("N:M").run()
        [t for t in at.text_input if t.label == "N:M"][0].set_value(form["nm"]).run()
    if "text" in form:
        at.radio[0].set_value("text file").run()
        [t for t in at.text_input if t.label.startswith("… or a path")][0].set_value(_fmt(form["text"], files)).run()
    if "images" in form:
        at.radio[0].set_value("image folder").run()
        [t for t in at.text_input if t.label.startswith("Path to a folder")][0].set_value(
            _fmt(form["images"], files)).run()
    jobs_before = len(RUNNER.jobs())
    [b for b in at.button if b.label == "Compress"][0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert [e.value for e in at.error] == [_fmt(case.message, files)]
    assert len(RUNNER.jobs()) == jobs_before  # refused before a job started
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- safe loading


def test_app_config_binds_localhost_and_caps_uploads():
    import tomllib
    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["address"] == "127.0.0.1"
    assert cfg["server"]["maxUploadSize"] == data.MAX_UPLOAD_MB
    assert "--server.address $(HOST)" in (ROOT / "Makefile").read_text()
    assert "HOST ?= 127.0.0.1" in (ROOT / "Makefile").read_text()


@pytest.mark.parametrize("model", ["../../etc/passwd", "/abs/path/model", "..", "./x/../../y", "~/m", "a\\..\\b"])
def test_run_folders_from_hostile_model_names_stay_in_the_runs_folder(model, tmp_path):
    from oats.runner.jobs import CompressRequest
    name = CompressRequest(model=model).folder_name()
    folder = folders.run_dir(tmp_path, name)
    assert folder.resolve().parent == tmp_path.resolve() and "/" not in name and not name.startswith(".")


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "a/b", "/etc", "", "x" * 201, "a\x00b"])
def test_run_dir_refuses_names_that_are_not_one_plain_folder(name, tmp_path):
    with pytest.raises(RunError, match="is not a plain folder name"):
        folders.run_dir(tmp_path, name)


def test_remote_code_never_runs_unless_asked(tmp_path):
    marker = tmp_path / "code-ran"
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evil", "architectures": ["EvilModel"],
        "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}}))
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    with pytest.raises(ModelLoadError) as e:
        zoo.load_model(str(folder))
    assert str(e.value).startswith(f"{str(folder)!r} needs custom code from its repository: pass trust_remote_code "
                                   "(--trust-remote-code) only if you trust that code")
    assert not marker.exists()


def test_pickled_weights_load_with_weights_only(tmp_path):
    """A .bin whose pickle would run a command is refused by torch.load(weights_only=True)."""
    import pickle
    marker = tmp_path / "pickle-ran"
    folder = tmp_path / "pickled"
    shutil.copytree(_llm_folder(tmp_path / "llm"), folder)
    (folder / "model.safetensors").unlink()

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    with open(folder / "pytorch_model.bin", "wb") as fh:
        pickle.dump({"model.embed_tokens.weight": Payload()}, fh)
    with pytest.raises(ModelLoadError) as e:
        zoo.load_model(str(folder))
    assert "\n" not in str(e.value) and str(folder) in str(e.value)
    assert not marker.exists()


def test_import_oats_makes_idle_openmp_threads_sleep():
    """Set before torch loads (a fresh process); a value the user chose is kept."""
    code = "import os, oats, torch; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert out.stdout.strip() == "PASSIVE", out.stderr
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600,
                         env={**env, "OMP_WAIT_POLICY": "ACTIVE"})
    assert out.stdout.strip() == "ACTIVE", out.stderr

"""Hostile inputs to the model loaders and the path readers (issue 21, classes 2, 4, 5 and 6).

Every case is a file, folder or name someone could hand oats: a model folder whose config runs
its own code, declares a model larger than any machine, holds no weights or a FIFO; a text
"file" that is /dev/zero or a pipe; /proc as an image folder; a 12000 x 12000 PNG. Each must
end in ONE line with the exact typed error, through the library and (for a subset) the CLI,
without running the folder's code, hanging, allocating what the input declares, or loading
random weights in silence.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from tiny_models import assert_cli_fails, tiny_llama_folder, tiny_text

from oats import data, resources
from oats.errors import DataError, ModelLoadError, ResourceError
from oats.models import hub, zoo

ROOT = Path(__file__).resolve().parents[1]
PRESETS = "smollm2-135m, minilm-l6, dinov2-small"
FREE = 16e9
"""The memory the cases see as available (``resources.available_memory`` patched), so the
refusals' numbers are the same on every machine."""
HANG_GUARD_S = 60
"""A call that has not returned after this long is hung (a FIFO opened for reading blocks
forever); generous, so that a loaded machine is never mistaken for a hang."""


# ----------------------------------------------------------------------------- building the inputs


def _config(folder: Path, **fields) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(fields))
    return folder


def _llama_config(**over) -> dict:
    cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 16,
           "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
           "vocab_size": 40, "max_position_embeddings": 64}
    cfg.update(over)
    return cfg


def _safetensors(path: Path, header: dict, payload: bytes = b"") -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + payload)
    return path


def _one_tensor(path: Path) -> Path:
    """A valid safetensors file with one small tensor (so a folder passes the weight checks)."""
    return _safetensors(path, {"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8)


def _copy_llm(src: Path, dst: Path) -> Path:
    import shutil
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def f(tmp_path_factory):
    """Hostile inputs by name (paths), built once; the marker files say whether code ran."""
    from safetensors.torch import load_file, save_file
    t = tmp_path_factory.mktemp("hostile")
    p: dict[str, Path] = {"tmp": t}
    p["llm"] = tiny_llama_folder(t / "llm")
    p["text"] = t / "calib.txt"
    p["text"].write_text(tiny_text(400))

    # a folder whose config asks for its own code; importing either file leaves a marker
    p["marker"] = t / "code-ran"
    evil = _config(t / "automap", model_type="evil", architectures=["EvilForCausalLM"],
                   auto_map={"AutoConfig": "configuration_evil.EvilConfig",
                             "AutoModel": "modeling_evil.EvilModel",
                             "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"})
    for mod in ("configuration_evil", "modeling_evil"):
        (evil / f"{mod}.py").write_text(f"open({str(p['marker'])!r}, 'w').write({mod!r})\n")
    _one_tensor(evil / "model.safetensors")
    p["automap"] = evil
    # the same request beside a model type transformers knows: its own code, not the folder's
    p["automap_llama"] = _copy_llm(p["llm"], t / "automap_llama")
    cfg = json.loads((p["automap_llama"] / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.X"}
    (p["automap_llama"] / "config.json").write_text(json.dumps(cfg))
    for mod in ("configuration_evil", "modeling_evil"):
        (p["automap_llama"] / f"{mod}.py").write_text(f"open({str(p['marker'])!r}, 'w').write({mod!r})\n")

    # configs that declare more than any machine holds, or sizes that are no sizes
    p["hidden_1e7"] = _config(t / "hidden_1e7", **_llama_config(hidden_size=10**7, intermediate_size=4 * 10**7))
    p["params_87g"] = _config(t / "params_87g", **_llama_config(hidden_size=8192, intermediate_size=28672,
                                                                num_hidden_layers=144, vocab_size=128256,
                                                                num_attention_heads=64, num_key_value_heads=8))
    for key, over in {"hidden_negative": {"hidden_size": -5}, "hidden_text": {"hidden_size": "4096"},
                      "layers_1e30": {"num_hidden_layers": 1e30}, "vocab_fraction": {"vocab_size": 40.5}}.items():
        p[key] = _config(t / key, **_llama_config(**over))
    # config.json files that are not what they claim
    p["config_infinity"] = t / "config_infinity"
    p["config_infinity"].mkdir()
    (p["config_infinity"] / "config.json").write_text('{"model_type": "llama", "hidden_size": Infinity}')
    p["config_nan"] = t / "config_nan"
    p["config_nan"].mkdir()
    (p["config_nan"] / "config.json").write_text('{"model_type": "llama", "rope_theta": NaN}')
    p["config_notjson"] = t / "config_notjson"
    p["config_notjson"].mkdir()
    (p["config_notjson"] / "config.json").write_text("model_type: llama\n")
    p["config_list"] = _config(t / "config_list")
    (p["config_list"] / "config.json").write_text("[1, 2, 3]")
    p["config_deep"] = _config(t / "config_deep")
    (p["config_deep"] / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    p["config_fifo"] = t / "config_fifo"
    p["config_fifo"].mkdir()
    os.mkfifo(p["config_fifo"] / "config.json")
    p["config_1gb"] = t / "config_1gb"
    p["config_1gb"].mkdir()
    with open(p["config_1gb"] / "config.json", "wb") as fh:
        fh.truncate(1024**3)  # sparse: 1 GB by its size, nothing on disk
    p["config_dir"] = t / "config_dir"
    (p["config_dir"] / "config.json").mkdir(parents=True)

    # weights that would leave the model (partly) random, or are no weights file
    p["no_tensors"] = _copy_llm(p["llm"], t / "no_tensors")
    save_file({}, str(p["no_tensors"] / "model.safetensors"), metadata={"format": "pt"})
    p["partial"] = _copy_llm(p["llm"], t / "partial")
    w = load_file(str(p["partial"] / "model.safetensors"))
    save_file({k: v for k, v in w.items() if "layers.1.mlp" not in k}, str(p["partial"] / "model.safetensors"),
              metadata={"format": "pt"})
    p["weights_fifo"] = _copy_llm(p["llm"], t / "weights_fifo")
    (p["weights_fifo"] / "model.safetensors").unlink()
    os.mkfifo(p["weights_fifo"] / "model.safetensors")
    p["weights_devzero"] = _copy_llm(p["llm"], t / "weights_devzero")
    (p["weights_devzero"] / "model.safetensors").unlink()
    (p["weights_devzero"] / "model.safetensors").symlink_to("/dev/zero")
    p["weights_dir"] = _copy_llm(p["llm"], t / "weights_dir")
    (p["weights_dir"] / "model.safetensors").unlink()
    (p["weights_dir"] / "model.safetensors").mkdir()
    p["weights_badshape"] = _copy_llm(p["llm"], t / "weights_badshape")
    _safetensors(p["weights_badshape"] / "model.safetensors",
                 {"x": {"dtype": "F32", "shape": [-1, 2], "data_offsets": [0, 8]}}, b"\0" * 8)

    # path inputs
    p["fifo"] = t / "pipe.txt"
    os.mkfifo(p["fifo"])
    p["big_text"] = t / "big.txt"
    with open(p["big_text"], "wb") as fh:
        fh.truncate(data.MAX_TEXT_BYTES + 1)
    p["latin1"] = t / "latin1.txt"
    p["latin1"].write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    p["socket"] = t / "s.sock"
    p["sock_obj"] = socket.socket(socket.AF_UNIX)
    p["sock_obj"].bind(str(p["socket"]))
    from PIL import Image
    p["huge_png"] = t / "huge.png"
    Image.new("L", (12000, 12000)).save(p["huge_png"], optimize=True)
    p["images"] = t / "images"
    p["images"].mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(p["images"] / "good.png")
    os.mkfifo(p["images"] / "pipe.png")  # skipped, never opened
    (p["images"] / "dangling.png").symlink_to(t / "no-such-file.png")
    (p["images"] / "zero.jpg").symlink_to("/dev/zero")
    outside = t / "outside"
    outside.mkdir()
    Image.new("RGB", (8, 8)).save(outside / "elsewhere.png")
    (p["images"] / "linked").symlink_to(outside, target_is_directory=True)  # not followed
    p["many"] = t / "many"
    p["many"].mkdir()
    for i in range(30):
        (p["many"] / f"n{i}.txt").write_text("")
    yield p
    p["sock_obj"].close()


@pytest.fixture(autouse=True)
def _machine(monkeypatch, tmp_path):
    """Offline, a fixed amount of free memory, runs written under the test's own folder."""
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(hub, "hub_cached", lambda name: False)
    monkeypatch.setattr(resources, "available_memory", lambda: FREE)
    monkeypatch.setenv("OATS_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv(resources.MEMORY_ENV, raising=False)


def no_hang(fn: Callable[[], object], release: Path | None = None):
    """``fn()`` in a thread when it reads the FIFO ``release``; fails the test when it is still
    blocked after HANG_GUARD_S (then opens the FIFO for writing, so the reader wakes up and the
    thread ends). Without a FIFO, ``fn()`` runs here: transformers' y/N prompt is only reached
    in the main thread (it sets a signal alarm), and the cases must be able to reach it."""
    if release is None:
        return fn()
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e
    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(HANG_GUARD_S)
    if th.is_alive():
        if release is not None:
            os.close(os.open(release, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"the call was still blocked after {HANG_GUARD_S} s (a FIFO opened for reading?)")
    if "error" in box:
        raise box["error"]
    return box.get("value")


# ----------------------------------------------------------------------------- the table


@dataclass
class Case:
    id: str
    error: type
    message: str
    """Exact message; {name} fields are paths from the ``f`` fixture."""
    lib: Callable[[dict], object]
    cli: list[str] | None = None
    fifo: str | None = None
    """The fixture's FIFO this case might block on (released if it does)."""


def _load(key: str, **kw) -> Callable[[dict], object]:
    return lambda f: zoo.load_model(str(f[key]), **kw)


TEXT_HINT = "give the path of a UTF-8 text file"
BAD_CONFIG = "fix it, or save the model again with save_pretrained"
NOT_PLAUSIBLE = "fix config.json or use the model's original files"
CUSTOM = ("'{automap}' needs custom code from its repository: pass trust_remote_code (--trust-remote-code) only if "
          "you trust that code")
NO_WEIGHTS = "replace it with the model's own .safetensors weights"
CALIB = ["--calib-samples", "2", "--seq-len", "8", "--iterations", "2"]

CASES = [
    # -- a folder's own code (class 2)
    Case("auto_map folder", ModelLoadError, CUSTOM, _load("automap"), ["compress", "{automap}"]),
    Case("auto_map folder from disk", ModelLoadError, CUSTOM, _load("automap", from_disk=True),
         ["compress", "{automap}", "--from-disk"]),
    # -- what config.json declares (class 6)
    Case("hidden size 10^7", ResourceError,
         "loading '{hidden_1e7}' in fp32 (as its config.json declares it) needs about 1.6e+07 GB of memory "
         "(weights 1.6e+07 GB) but 16 GB is available: use a smaller model or a machine with more memory",
         _load("hidden_1e7"), ["compress", "{hidden_1e7}"]),
    Case("hidden size 10^7 from disk", ResourceError,
         "compressing '{hidden_1e7}' from disk (one block and the embeddings in fp32, as its config.json declares "
         "them) needs about 8e+06 GB of memory (weights 8e+06 GB) but 16 GB is available: use a smaller model "
         "or a machine with more memory",
         _load("hidden_1e7", from_disk=True), ["compress", "{hidden_1e7}", "--from-disk"]),
    Case("87G parameters", ResourceError,
         "loading '{params_87g}' in fp32 (as its config.json declares it) needs about 704 GB of memory "
         "(weights 704 GB) but 16 GB is available: use a smaller model or a machine with more memory",
         _load("params_87g"), ["compress", "{params_87g}"]),
    Case("negative hidden size", ModelLoadError,
         f"config.json declares hidden_size = '-5', not a plausible width: {NOT_PLAUSIBLE}",
         _load("hidden_negative"), ["compress", "{hidden_negative}"]),
    Case("hidden size as text", ModelLoadError,
         f"config.json declares hidden_size = '4096', not a plausible width: {NOT_PLAUSIBLE}",
         _load("hidden_text")),
    Case("1e30 blocks", ModelLoadError,
         f"config.json declares num_hidden_layers = '1e+30', not a plausible number of blocks: {NOT_PLAUSIBLE}",
         _load("layers_1e30")),
    Case("1e30 blocks from disk", ModelLoadError,
         f"config.json declares num_hidden_layers = '1e+30', not a plausible number of blocks: {NOT_PLAUSIBLE}",
         _load("layers_1e30", from_disk=True)),
    Case("fractional vocabulary", ModelLoadError,
         f"config.json declares vocab_size = '40.5', not a plausible vocabulary size: {NOT_PLAUSIBLE}",
         _load("vocab_fraction")),
    Case("config with Infinity", ModelLoadError,
         "config.json in folder '{config_infinity}' cannot be used (it holds Infinity, which is not a JSON number): "
         f"{BAD_CONFIG}", _load("config_infinity"), ["compress", "{config_infinity}"]),
    Case("config with NaN", ModelLoadError,
         f"config.json in folder '{{config_nan}}' cannot be used (it holds NaN, which is not a JSON number): "
         f"{BAD_CONFIG}", _load("config_nan")),
    Case("config that is not JSON", ModelLoadError,
         "config.json in folder '{config_notjson}' cannot be used (it is not valid JSON (Expecting value: line 1 "
         f"column 1 (char 0))): {BAD_CONFIG}", _load("config_notjson"), ["compress", "{config_notjson}"]),
    Case("config that is a JSON list", ModelLoadError,
         f"config.json in folder '{{config_list}}' is not a JSON object: {BAD_CONFIG}", _load("config_list")),
    Case("config of 100k brackets", ModelLoadError,
         f"config.json in folder '{{config_deep}}' cannot be used (it nests deeper than 32 levels): {BAD_CONFIG}",
         _load("config_deep")),
    Case("config that is a FIFO", ModelLoadError,
         f"config.json in folder '{{config_fifo}}' cannot be used (it is a named pipe, not a file): {BAD_CONFIG}",
         _load("config_fifo"), ["compress", "{config_fifo}"], fifo="config_fifo/config.json"),
    Case("config of 1 GB", ModelLoadError,
         "config.json in folder '{config_1gb}' cannot be used (it is 1024 MB, over the 16 MB this reader "
         f"accepts): {BAD_CONFIG}", _load("config_1gb")),
    Case("config that is a folder", ModelLoadError,
         f"config.json in folder '{{config_dir}}' cannot be used (it is a folder, not a file): {BAD_CONFIG}",
         _load("config_dir")),
    # -- weights that would leave the model random (class 5)
    Case("safetensors with no tensors", ModelLoadError,
         f"weights file 'model.safetensors' in folder '{{no_tensors}}' holds no tensors: {NO_WEIGHTS}",
         _load("no_tensors"), ["compress", "{no_tensors}", *CALIB]),
    Case("safetensors with no tensors from disk", ModelLoadError,
         f"weights file 'model.safetensors' in folder '{{no_tensors}}' holds no tensors: {NO_WEIGHTS}",
         _load("no_tensors", from_disk=True)),
    Case("safetensors lacking three weights", ModelLoadError,
         "the weight files of '{partial}' lack 3 of the model's 21 weights (model.layers.1.mlp.down_proj.weight, "
         "model.layers.1.mlp.gate_proj.weight, model.layers.1.mlp.up_proj.weight), which would start random: use "
         "the model's complete weight files", _load("partial"), ["compress", "{partial}", *CALIB]),
    Case("weights file that is a FIFO", ModelLoadError,
         "weights file 'model.safetensors' in folder '{weights_fifo}' is not a weights file (it is a named pipe, "
         f"not a file): {NO_WEIGHTS}", _load("weights_fifo"), ["compress", "{weights_fifo}"],
         fifo="weights_fifo/model.safetensors"),
    Case("weights file linked to /dev/zero", ModelLoadError,
         "weights file 'model.safetensors' in folder '{weights_devzero}' is not a weights file (it is a device, "
         f"not a file): {NO_WEIGHTS}", _load("weights_devzero")),
    Case("weights file that is a folder", ModelLoadError,
         "weights file 'model.safetensors' in folder '{weights_dir}' is a folder, not a safetensors file: give a "
         ".safetensors file", _load("weights_dir")),
    Case("safetensors with a negative dimension", ModelLoadError,
         "weights file 'model.safetensors' in folder '{weights_badshape}' is not a valid safetensors file "
         f"(damaged, truncated or another format): {NO_WEIGHTS}", _load("weights_badshape")),
    # -- model names
    Case("a path to a file instead of a folder", ModelLoadError,
         "'{text}' is a file, not a model folder: give a folder saved with save_pretrained (config.json plus "
         "model.safetensors)", _load("text"), ["compress", "{text}"]),
    Case("a NUL byte in the name", ModelLoadError,
         f"unknown model 'a\\x00b': use a preset ({PRESETS}), a local folder, a hub id such as 'gpt2' or 'timm:NAME'",
         lambda f: zoo.load_model("a\x00b")),
    Case("a 5000-character name", ModelLoadError,
         "the model name is 5000 characters long, longer than any folder path or hub id: check what was typed or "
         "pasted", lambda f: zoo.load_model("m" * 5000)),
    Case("a home folder of no user", ModelLoadError,
         f"folder '~no-such-user-here/model' does not exist: check the path, or use a preset ({PRESETS})",
         lambda f: zoo.load_model("~no-such-user-here/model"), ["compress", "~no-such-user-here/model"]),
    Case("a hub id with accents", ModelLoadError,
         f"unknown model 'órg/mödel': use a preset ({PRESETS}), a local folder, a hub id such as 'gpt2' or "
         "'timm:NAME'", lambda f: zoo.load_model("órg/mödel")),
    Case("/dev/zero as a model", ModelLoadError,
         "'/dev/zero' is a file, not a model folder: give a folder saved with save_pretrained (config.json plus "
         "model.safetensors)", lambda f: zoo.load_model("/dev/zero")),
    # -- text paths (class 4)
    Case("--calib-source /dev/zero", DataError,
         f"'/dev/zero' is not a text file (it is a device, not a file): {TEXT_HINT}",
         lambda f: data.read_text_file("/dev/zero"), ["compress", "{llm}", "--calib-source", "/dev/zero", *CALIB]),
    Case("app text path /dev/zero", DataError,
         f"'/dev/zero' is not a text file (it is a device, not a file): {TEXT_HINT}",
         lambda f: data.check_calibration_source("text file", "/dev/zero")),
    Case("--calib-source a FIFO", DataError,
         f"'{{fifo}}' is not a text file (it is a named pipe, not a file): {TEXT_HINT}",
         lambda f: data.read_text_file(f["fifo"]), ["compress", "{llm}", "--calib-source", "{fifo}", *CALIB],
         fifo="fifo"),
    Case("--calib-source a socket", DataError,
         f"'{{socket}}' is not a text file (it is a socket, not a file): {TEXT_HINT}",
         lambda f: data.read_text_file(f["socket"])),
    Case("--calib-source a folder", DataError,
         f"'{{tmp}}' is a folder, not a text file: {TEXT_HINT}", lambda f: data.read_text_file(f["tmp"])),
    Case("--calib-source over the size cap", DataError,
         "'{big_text}' is too large (it is 32 MB, over the 32 MB this reader accepts): give a smaller file",
         lambda f: data.read_text_file(f["big_text"]), ["compress", "{llm}", "--calib-source", "{big_text}", *CALIB]),
    Case("--calib-source not UTF-8", DataError,
         "'{latin1}' is not UTF-8 text: convert it to UTF-8 or give another file",
         lambda f: data.read_text_file(f["latin1"])),
    Case("text upload not UTF-8", DataError,
         "upload 'notes.txt' is not UTF-8 text: convert it to UTF-8 or give another file",
         lambda f: data.check_upload("notes.txt", "caf\xe9".encode("latin-1"), "text")),
    # -- images (classes 4 and 6)
    Case("/proc as an image folder (scan cap)", DataError,
         "folder '/proc' holds more than 25 files and folders: give a smaller folder of images (a few hundred are "
         "plenty for calibration)", lambda f: data.check_calibration_source("image folder", "/proc")),
    Case("image folder over the scan cap", DataError,
         "folder '{many}' holds more than 25 files and folders: give a smaller folder of images (a few hundred "
         "are plenty for calibration)", lambda f: data.image_files(f["many"])),
    Case("12000x12000 PNG as a file", DataError,
         "'{huge_png}' is 12000 x 12000 pixels, over the limit of 36 megapixels: downscale it (2048 px on the long "
         "side is plenty) and try again", lambda f: data.load_image(f["huge_png"])),
    Case("12000x12000 PNG as an upload", DataError,
         "upload 'huge.png' is 12000 x 12000 pixels, over the limit of 36 megapixels: downscale it (2048 px on the "
         "long side is plenty) and try again",
         lambda f: data.check_upload("huge.png", f["huge_png"].read_bytes(), "image")),
    Case("/dev/zero as an image", DataError,
         "'/dev/zero' is not an image (it is a device, not a file): give a PNG or JPEG file",
         lambda f: data.load_image("/dev/zero")),
    Case("a FIFO as an image folder", DataError,
         "'{fifo}' is not a folder: give a folder of images (or use the bundled images)",
         lambda f: data.check_calibration_source("image folder", f["fifo"]), fifo="fifo"),
]


def _fmt(text: str, f: dict) -> str:
    return text.format(**{k: str(v) for k, v in f.items()})


@pytest.fixture
def small_scan(monkeypatch):
    monkeypatch.setattr(data, "MAX_FOLDER_ENTRIES", 25)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_library_raises_the_typed_error_in_one_line(case, f, small_scan, monkeypatch):
    asked = []
    monkeypatch.setattr("builtins.input", lambda *a: asked.append(a) or "y")  # a y/N prompt would say yes
    with pytest.raises(case.error) as e:
        no_hang(lambda: case.lib(f), release=f["tmp"] / case.fifo if case.fifo else None)
    assert str(e.value) == _fmt(case.message, f)
    assert not asked and not f["marker"].exists()


CLI_CASES = [c for c in CASES if c.cli]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli_prints_one_line_and_exits_2(case, f, capsys, tmp_path):
    no_hang(lambda: assert_cli_fails([_fmt(a, f) for a in case.cli], _fmt(case.message, f), capsys),
            release=f["tmp"] / case.fifo if case.fifo else None)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert not f["marker"].exists()


def test_the_table_covers_every_input():
    assert len(CASES) >= 30 and len(CLI_CASES) >= 12 and len({c.id for c in CASES}) == len(CASES)


# ----------------------------------------------------------------------------- beyond the table


def _cli(args: list[str], tmp_path: Path, stdin: str | None, **env) -> subprocess.CompletedProcess:
    env = dict(os.environ, OATS_RUNS_DIR=str(tmp_path / "runs"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **env)
    return subprocess.run([sys.executable, "-m", "oats.cli", *args], input=stdin, capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300, stdin=None if stdin is not None else subprocess.DEVNULL)


def test_auto_map_folder_with_yes_piped_runs_no_code(f, tmp_path):
    """A real process with "y" on stdin: transformers' y/N prompt would read it and run the code."""
    p = _cli(["compress", str(f["automap"])], tmp_path, "y\n")
    assert p.returncode == 2, p.stderr
    assert p.stderr.splitlines() == ["oats: error: " + _fmt(CUSTOM, f)] and p.stdout == ""
    assert not f["marker"].exists()


def test_auto_map_library_with_stdin_closed_runs_no_code(f, tmp_path):
    code = (f"from oats.models import zoo\ntry:\n    zoo.load_model({str(f['automap'])!r})\n"
            "except Exception as e:\n    print(type(e).__name__, e)\n")
    p = subprocess.run([sys.executable, "-c", code], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       cwd=ROOT, timeout=300, env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"))
    assert p.stdout.strip() == "ModelLoadError " + _fmt(CUSTOM, f), p.stderr
    assert "[y/N]" not in p.stdout + p.stderr and not f["marker"].exists()


def test_auto_map_beside_a_known_model_type_loads_the_builtin_class(f, monkeypatch):
    """transformers' own Llama code is used; the folder's files are never imported."""
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("asked y/N"))
    loaded = zoo.load_model(str(f["automap_llama"]))
    assert type(loaded.model).__name__ == "LlamaForCausalLM" and not f["marker"].exists()


def test_trust_remote_code_is_passed_explicitly_to_every_transformers_call(f, monkeypatch):
    """Unset, transformers prompts y/N; each Auto* call of a load is seen with False."""
    import transformers
    seen = []
    for cls in ("AutoConfig", "AutoModelForCausalLM", "AutoTokenizer"):
        orig = getattr(transformers, cls).from_pretrained.__func__
        owner = getattr(transformers, cls)

        def spy(klass, *a, _orig=orig, _name=cls, **kw):
            seen.append((_name, kw.get("trust_remote_code", "unset")))
            return _orig(klass, *a, **kw)
        monkeypatch.setattr(owner, "from_pretrained", classmethod(spy))
    zoo.load_model(str(f["llm"]))
    assert sorted(set(seen)) == [("AutoConfig", False), ("AutoModelForCausalLM", False), ("AutoTokenizer", False)]


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


@pytest.mark.parametrize("key", ["hidden_1e7", "params_87g"])
def test_oversized_configs_are_refused_before_anything_is_allocated(f, key):
    """The peak resident memory of the refusal (VmHWM, reset through clear_refs) stays small."""
    zoo.load_model(str(f["llm"]))  # transformers imported and warmed up before measuring
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak to the current RSS
        field = "VmHWM"
    except OSError:
        field = "VmRSS"
    before = _rss_kb("VmRSS")
    with pytest.raises(ResourceError):
        zoo.load_model(str(f[key]))
    with pytest.raises(ResourceError):
        zoo.load_model(str(f[key]), from_disk=(key == "hidden_1e7"))
    assert _rss_kb(field) - before < 200 * 1024


def test_the_cli_does_not_switch_an_oversized_config_to_from_disk(f, tmp_path):
    """87G declared, no weights: the automatic larger-than-memory switch must not take it either."""
    p = _cli(["compress", str(f["params_87g"])], tmp_path, None, OATS_MEMORY_LIMIT_GB="16")
    assert p.returncode == 2 and len(p.stderr.splitlines()) == 1, p.stderr
    assert p.stderr.startswith(f"oats: error: loading '{f['params_87g']}' in fp32 (as its config.json declares it)")


def test_image_folder_skips_what_is_no_regular_file_and_does_not_follow_links(f):
    files = no_hang(lambda: data.image_files(f["images"]), release=f["images"] / "pipe.png")
    assert [p.name for p in files] == ["good.png"]
    images = no_hang(lambda: data.load_image_folder(f["images"]), release=f["images"] / "pipe.png")
    assert list(images) == ["good.png"] and images["good.png"].shape == (30, 40, 3)


def test_proc_as_an_image_folder_is_one_line_at_the_default_cap(f):
    with pytest.raises(DataError) as e:
        data.load_image_folder("/proc")
    assert str(e.value) in (
        f"folder '/proc' has no images ({', '.join(data.IMAGE_SUFFIXES)}): put some there, or use the bundled images",
        "folder '/proc' holds more than 100,000 files and folders: give a smaller folder of images (a few hundred "
        "are plenty for calibration)")


def test_the_pixel_cap_refuses_before_decoding(f, monkeypatch):
    """Image.load is never reached for the 12000 x 12000 PNG; a normal photo still decodes."""
    from PIL import Image
    loads = []
    real = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: loads.append(self.size) or real(self))
    with pytest.raises(DataError):
        data.load_image(f["huge_png"])
    assert (12000, 12000) not in loads
    assert data.load_image(f["images"] / "good.png").shape == (30, 40, 3)
    assert data.MAX_IMAGE_PIXELS < 12000 * 12000 <= Image.MAX_IMAGE_PIXELS * 2


def test_a_sound_folder_still_loads_and_calibrates_from_a_text_file(f):
    loaded = zoo.load_model(str(f["llm"]))
    batches = data.calibration_batches(loaded, n_samples=2, seq_len=8, source=f["text"])
    assert len(batches) == 1 and tuple(batches[0]["input_ids"].shape) == (2, 8)


def test_an_image_that_vanishes_during_the_scan_is_skipped(f, monkeypatch):
    """Between listing a folder and looking at an entry, the entry may go (or stop being readable)."""
    real = os.stat

    def stat(path, *a, **kw):
        if Path(path).name == "gone.png":
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return real(path, *a, **kw)
    (f["images"] / "gone.png").write_bytes(b"")
    try:
        with monkeypatch.context() as m:
            m.setattr(os, "stat", stat)
            files = no_hang(lambda: data.image_files(f["images"]), release=f["images"] / "pipe.png")
    finally:
        (f["images"] / "gone.png").unlink()
    assert [p.name for p in files] == ["good.png"]

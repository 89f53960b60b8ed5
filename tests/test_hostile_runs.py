"""Hostile run folders (issue 21): every damaged, tampered or impossible run folder, --out and
full disk ends in ONE typed line through the library (``RunInfo.read``, ``load_run`` with a
model given, ``list_runs``) and, for a representative subset, through the CLI (``oats runs``,
``oats evaluate``, ``oats export``, ``oats compress --out/--resume``); nothing the user had is
changed by a refusal, and a full disk leaves a resumable run.

One tiny Llama run is compressed once for the module (``oats compress`` of a local folder, so
the CLI finds the run's model by name); each case damages its own copy.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from oats.cli import main as cli_main
from oats.config import OatsConfig
from oats.deploy import export as export_mod
from oats.errors import ConfigError, ResourceError, RunError
from oats.models import zoo
from oats.runner.execute import execute
from oats.runner.request import CompressRequest
from oats.runs import folders
from oats.runs.folders import MANIFEST, RunInfo, check_resumable, list_runs, load_run

from tiny_models import tiny_llama_folder

ROOT = Path(__file__).resolve().parents[1]
CALIB = ["--calib-samples", "2", "--seq-len", "8", "--iterations", "3"]
Q = "model.layers.0.self_attn.q_proj"
UP = "model.layers.1.mlp.up_proj"
LONG = "a" * 256
SPACE = 'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The tiny model folder and one complete run of it ("good")."""
    t = tmp_path_factory.mktemp("hostile-runs")
    model = tiny_llama_folder(t / "tiny-llama")
    assert cli_main(["compress", str(model), "--out", str(t / "good"), "--quiet", *CALIB]) == 0
    return {"tmp": t, "model": model, "good": t / "good"}


@pytest.fixture
def run(base, tmp_path):
    """A fresh copy of the good run at ``tmp_path/runs/r`` (beside it, nothing else)."""
    folder = tmp_path / "runs" / "r"
    shutil.copytree(base["good"], folder)
    return folder


def _manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text())


def _set(folder: Path, fn: Callable[[dict], None]) -> None:
    m = _manifest(folder)
    fn(m)
    (folder / MANIFEST).write_text(json.dumps(m))


def _text(folder: Path, old: str, new: str) -> None:
    """Replace a piece of the manifest's text (for what json.dumps would never write)."""
    text = json.dumps(_manifest(folder))  # one line, ", " and ": " as below
    assert old in text, old
    (folder / MANIFEST).write_text(text.replace(old, new, 1))


def _block(folder: Path, block: int, fn: Callable[[dict], None]) -> None:
    f = folder / f"block_{block:03d}.safetensors"
    t = load_file(str(f))
    fn(t)
    save_file(t, str(f))


def _rank(folder: Path, path: str) -> int:
    return _manifest(folder)["modules"][path]["rank"]


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() and not p.is_symlink() else os.readlink(p)
                                         if p.is_symlink() else None)
            for p in sorted(folder.rglob("*"))}


def _damaged(reason: str) -> str:
    return "run folder '{run}' has a damaged manifest (" + reason + "): delete it and compress again"


def _factor(factor: str, layer: str, why: str | None, block: int = 0) -> str:
    name = f"block_{block:03d}.safetensors"
    if why is None:
        return f"run folder '{{run}}': {name} has no {factor} for layer '{layer}': the run is damaged, compress again"
    return (f"run folder '{{run}}': {name} holds a damaged {factor} for layer '{layer}' ({why}): the run is "
            "damaged, compress again")


# ----------------------------------------------------------------------------- the table


@dataclass
class Case:
    id: str
    damage: Callable[[Path, dict], dict | None]
    """Damages the run copy; may return more {fields} for the message."""
    message: str
    """The exact one line; {run} is the run folder, {model} the model folder."""
    where: str = "manifest"
    """"manifest": RunInfo.read, list_runs and load_run all refuse it; "block": load_run refuses it."""
    error: type = RunError


def _fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _link(path: Path, target) -> None:
    path.unlink()
    path.symlink_to(target)


def _outside_block(folder: Path, base: dict) -> dict:
    elsewhere = folder.parent.parent / "elsewhere.safetensors"
    shutil.copy(folder / "block_000.safetensors", elsewhere)
    _link(folder / "block_000.safetensors", elsewhere)
    return {"target": str(elsewhere.resolve())}


def _outside_manifest(folder: Path, base: dict) -> dict:
    elsewhere = folder.parent.parent / "elsewhere.json"
    shutil.copy(folder / MANIFEST, elsewhere)
    _link(folder / MANIFEST, elsewhere)
    return {"target": str(elsewhere.resolve())}


def _short_u(folder: Path, base: dict) -> dict:
    r = _rank(folder, Q)
    _block(folder, 0, lambda t: t.update({f"{Q}.u": t[f"{Q}.u"][:-1].clone()}))
    return {"got": f"(15, {r})", "want": f"(16, {r})"}


def _one_value_less(folder: Path, base: dict) -> dict:
    n = load_file(str(folder / "block_000.safetensors"))[f"{Q}.sparse_values"].numel()
    _block(folder, 0, lambda t: t.update({f"{Q}.sparse_values": t[f"{Q}.sparse_values"][:-1].clone()}))
    return {"fewer": n - 1, "n": n}


def _nan_u(folder: Path, base: dict) -> None:
    def f(t):
        t[f"{UP}.u"][0, 0] = float("nan")
    _block(folder, 1, f)


def _inf_values(folder: Path, base: dict) -> None:
    def f(t):
        t[f"{Q}.sparse_values"][0] = float("inf")
    _block(folder, 0, f)


def _negative_m2(folder: Path, base: dict) -> None:
    def f(t):
        t["0.q.m2"][0] = -1.0
    _block(folder, 0, f)


def _rank_lie(folder: Path, base: dict) -> dict:
    r = _rank(folder, Q)
    _set(folder, lambda m: m["modules"][Q].update(rank=r + 1))
    return {"got": f"(16, {r})", "want": f"(16, {r + 1})"}


def _truncate(folder: Path, base: dict) -> None:
    f = folder / "block_001.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _huge_manifest(folder: Path, base: dict) -> None:
    with open(folder / MANIFEST, "r+b") as fh:  # sparse: 65 MB of nothing, on no disk
        fh.truncate(65 * 1024**2)


def _block_never_written(folder: Path, base: dict) -> None:
    def f(m):
        m["blocks_done"].append(7)
        m["blocks"].append(dict(m["blocks"][-1], index=7))
    _set(folder, f)


def _forget_layer(folder: Path, base: dict) -> None:
    def f(m):
        m["layers"] = [r for r in m["layers"] if r["path"] != Q]
        del m["modules"][Q]
    _set(folder, f)


CASES = [
    # --- the manifest: strict JSON of a sane size, a regular file inside the folder
    Case("100k nested brackets", lambda f, b: (f / MANIFEST).write_text("[" * 100_000),
         _damaged("it nests deeper than 32 levels")),
    Case("Infinity in a number", lambda f, b: _text(f, '"effective_compression": 0.5', '"effective_compression": Infinity'),
         _damaged("it holds Infinity, which is not a JSON number")),
    Case("NaN in a number", lambda f, b: _text(f, '"effective_compression": 0.5', '"effective_compression": NaN'),
         _damaged("it holds NaN, which is not a JSON number")),
    Case("1e400", lambda f, b: _text(f, '"effective_compression": 0.5', '"effective_compression": 1e400'),
         _damaged("it holds the number 1e400, too large for a float")),
    Case("a 5000-digit int", lambda f, b: _text(f, '"params": {"dense": ', '"params": {"dense": ' + "9" * 5000 + ", \"x\": "),
         _damaged("it holds a whole number of more than 4300 digits")),
    Case("manifest is a FIFO", lambda f, b: _fifo(f / MANIFEST), _damaged("it is a named pipe, not a file")),
    Case("manifest is /dev/zero via symlink", lambda f, b: _link(f / MANIFEST, "/dev/zero"),
         _damaged("it is a device, not a file")),
    Case("manifest links outside the folder", _outside_manifest,
         _damaged("'manifest.json' leads outside the folder (a link to {target})")),
    Case("manifest is a broken link", lambda f, b: _link(f / MANIFEST, f / "nowhere.json"),
         _damaged("manifest.json is a broken link")),
    Case("manifest is a folder", lambda f, b: ((f / MANIFEST).unlink(), (f / MANIFEST).mkdir()),
         _damaged("it is a folder, not a file")),
    Case("manifest over 64 MB", _huge_manifest, _damaged("it is 65 MB, over the 64 MB this reader accepts")),
    Case("manifest not UTF-8", lambda f, b: (f / MANIFEST).write_bytes(b'{"format": 1, "model_name": "\xff\xfe"}'),
         _damaged("it is not UTF-8 text")),
    Case("layers not a list", lambda f, b: _set(f, lambda m: m.update(layers="all of them")),
         _damaged("layers is not a list")),
    Case("a layer record that is a number", lambda f, b: _set(f, lambda m: m.update(layers=[5])),
         _damaged("layers[0] is not an object")),
    Case("layer shape of one number", lambda f, b: _set(f, lambda m: m["layers"][0].update(shape=[16])),
         _damaged("layers[0].shape is not two whole numbers in [1, 2147483647]")),
    Case("blocks_done negative", lambda f, b: _set(f, lambda m: m.update(blocks_done=[0, -1])),
         _damaged("blocks_done holds '-1', not a whole number in [0, 100000]")),
    Case("blocks_done 10^30", lambda f, b: _set(f, lambda m: m.update(blocks_done=[10**30])),
         _damaged("blocks_done holds '" + "1" + "0" * 26 + "...', not a whole number in [0, 100000]")),
    Case("blocks_done a float", lambda f, b: _set(f, lambda m: m.update(blocks_done=[0.5])),
         _damaged("blocks_done holds '0.5', not a whole number in [0, 100000]")),
    Case("module shape over the 32-bit range", lambda f, b: _set(f, lambda m: m["modules"][Q].update(shape=[2**40, 16])),
         _damaged(f"modules['{Q}'].shape is not two whole numbers in [1, 2147483647]")),
    Case("module shape negative", lambda f, b: _set(f, lambda m: m["modules"][Q].update(shape=[-16, 16])),
         _damaged(f"modules['{Q}'].shape is not two whole numbers in [1, 2147483647]")),
    Case("module rank over min(shape)", lambda f, b: _set(f, lambda m: m["modules"][Q].update(rank=17)),
         _damaged(f"modules['{Q}'].rank holds '17', not a whole number in [0, 16]")),
    Case("params a string", lambda f, b: _set(f, lambda m: m.update(params={"dense": "many"})),
         _damaged("params.dense holds 'many', not a whole number in [0, 4611686018427387904]")),
    Case("model_name a list", lambda f, b: _set(f, lambda m: m.update(model_name=["x"])),
         _damaged("model_name is not a text")),
    Case("config a list", lambda f, b: _set(f, lambda m: m.update(config=[1])), _damaged("config is not an object")),
    Case("config iterations of 4000 digits", lambda f, b: _text(f, '"iterations": 3,', '"iterations": 1' + "0" * 4000 + ","),
         _damaged("int too large to convert to float")),
    Case("complete is a string", lambda f, b: _set(f, lambda m: m.update(complete="yes")),
         _damaged("complete is not true or false")),
    # --- block files: regular, inside, sound header, every factor checked against the manifest
    Case("block is a symlink to a file outside the folder", _outside_block,
         "run folder '{run}': block_000.safetensors is refused ('block_000.safetensors' leads outside the folder "
         "(a link to {target})): the run is damaged or tampered with, compress again", "block"),
    Case("block is a FIFO", lambda f, b: _fifo(f / "block_001.safetensors"),
         "run folder '{run}': block_001.safetensors is refused (it is a named pipe, not a file): the run is damaged "
         "or tampered with, compress again", "block"),
    Case("missing block file", lambda f, b: (f / "block_001.safetensors").unlink(),
         "run folder '{run}' is missing block_001.safetensors: the run is damaged, compress again", "block"),
    Case("blocks_done names a block never written", lambda f, b: _set(f, lambda m: m.update(blocks_done=[0, 1, 7])),
         _damaged("blocks_done [0, 1, 7] does not match the block records [0, 1]")),
    Case("blocks_done and a block record name a block never written", _block_never_written,
         "run folder '{run}' is missing block_007.safetensors: the run is damaged, compress again", "block"),
    # --- the manifest's lists drive loading: one left short would leave layers dense, silently
    Case("a complete run whose blocks_done is empty", lambda f, b: _set(f, lambda m: m.update(blocks_done=[])),
         _damaged("blocks_done [] does not match the block records [0, 1]")),
    Case("a complete run without blocks_done or block records",
         lambda f, b: _set(f, lambda m: (m.pop("blocks_done"), m.update(blocks=[]))),
         _damaged(f"layer '{Q}' is in block 0, which blocks_done does not list")),
    Case("a layer record removed", lambda f, b: _set(f, lambda m: m.update(layers=[r for r in m["layers"]
                                                                                 if r["path"] != Q])),
         _damaged(f"the layer records and the modules disagree on '{Q}'")),
    Case("a layer record and its module removed", _forget_layer,
         "run folder '{run}': block_000.safetensors holds '0.q.m2', which the manifest does not name: the run is "
         "damaged, compress again", "block"),
    Case("block is a symlink to itself", lambda f, b: _link(f / "block_000.safetensors", "block_000.safetensors"),
         "run folder '{run}': block_000.safetensors is refused ('block_000.safetensors' is a loop of symbolic links): "
         "the run is damaged or tampered with, compress again", "block"),
    Case("truncated block file", lambda f, b: _truncate(f, b),
         "run folder '{run}': block_001.safetensors is unreadable (SafetensorError): compress again", "block"),
    Case("float mask", lambda f, b: _block(f, 0, lambda t: t.update({f"{Q}.sparse_mask": t[f"{Q}.sparse_mask"].float()})),
         _factor("sparse_mask", Q, "float32 values, not uint8 bits"), "block"),
    Case("short mask", lambda f, b: _block(f, 0, lambda t: t.update({f"{Q}.sparse_mask": t[f"{Q}.sparse_mask"][:-1].clone()})),
         _factor("sparse_mask", Q, "shape (31,), not (32,)"), "block"),
    Case("short factor", _short_u, _factor("u", Q, "shape {got}, not {want}"), "block"),
    Case("rank in the manifest is not the factor's", _rank_lie, _factor("u", Q, "shape {got}, not {want}"), "block"),
    Case("missing factor", lambda f, b: _block(f, 0, lambda t: t.pop(f"{Q}.v")), _factor("v", Q, None), "block"),
    Case("missing second moments", lambda f, b: _block(f, 0, lambda t: t.pop("0.q.m2")), _factor("m2 (0.q)", Q, None),
         "block"),
    Case("NaN in factors", _nan_u, _factor("u", UP, "NaN or infinite values", block=1), "block"),
    Case("infinite sparse value", _inf_values, _factor("sparse_values", Q, "NaN or infinite values"), "block"),
    Case("integer factor", lambda f, b: _block(f, 0, lambda t: t.update({f"{Q}.v": t[f"{Q}.v"].to(torch.int32)})),
         _factor("v", Q, "int32 values, not floats"), "block"),
    Case("values and mask disagree", _one_value_less, _factor("sparse_values", Q, "{fewer} values for the {n} the mask marks"),
         "block"),
    Case("negative second moments", _negative_m2, _factor("m2 (0.q)", Q, "negative values"), "block"),
]


def _message(case: Case, run: Path, base: dict, fields: dict | None) -> str:
    return case.message.format(run=run, model=base["model"], **(fields if isinstance(fields, dict) else {}))


def _model(base):
    return zoo.load_model(str(base["model"])).model


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_library_refuses_in_one_typed_line(case, base, run):
    fields = case.damage(run, base)
    message = _message(case, run, base, fields)
    if case.where == "manifest":
        for read in (RunInfo.read, lambda f: load_run(f, model=_model(base))):
            with pytest.raises(case.error) as e:
                read(run)
            assert str(e.value) == message
        # the damaged folder is one row; the good one beside it still lists
        shutil.copytree(base["good"], run.parent / "z-good")
        rows = {r["name"]: r for r in list_runs(run.parent)}
        assert rows["r"]["status"] == "damaged" and rows["r"]["problem"] == message and rows["r"]["info"] is None
        assert rows["z-good"]["status"] == "complete"
    else:
        assert list_runs(run.parent)[0]["status"] == "complete"  # the manifest itself is sound
        with pytest.raises(case.error) as e:
            load_run(run, model=_model(base))
        assert str(e.value) == message
    assert "\n" not in message


def test_the_table_covers_the_reported_cases():
    ids = {c.id for c in CASES}
    assert len(CASES) >= 30 and len(ids) == len(CASES)
    for required in ("100k nested brackets", "Infinity in a number", "1e400", "a 5000-digit int", "manifest is a FIFO",
                     "manifest is /dev/zero via symlink", "block is a symlink to a file outside the folder",
                     "float mask", "short factor", "missing factor", "NaN in factors", "truncated block file"):
        assert required in ids


def test_list_runs_survives_any_error_of_one_folder(base, run, monkeypatch):
    """Even an error no check foresaw is that folder's row, not the app's sidebar going down."""
    shutil.copytree(base["good"], run.parent / "z-good")
    real = RunInfo.read.__func__

    def read(cls, folder):
        if Path(folder).name == "r":
            raise RecursionError("maximum recursion depth exceeded")
        return real(cls, folder)

    monkeypatch.setattr(RunInfo, "read", classmethod(read))
    rows = {r["name"]: r for r in list_runs(run.parent)}
    assert rows["r"]["status"] == "damaged"
    assert rows["r"]["problem"] == f"run folder '{run}' cannot be read (RecursionError: maximum recursion depth exceeded)"
    assert rows["z-good"]["status"] == "complete"


# ----------------------------------------------------------------------------- the CLI


def _cli_line(argv, capsys, progress: bool = False) -> str:
    """The one line the CLI printed for its exit status 2 (``progress``: after the progress bar)."""
    code = cli_main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    if progress:  # the bar redraws with '\r' and ends with '\n'; the error is the line after it
        assert err.count("oats: error:") == 1
        return err.rstrip("\n").split("\n")[-1]
    (line,) = err.splitlines()
    return line


def _case(name: str) -> Case:
    return next(c for c in CASES if c.id == name)


@pytest.mark.parametrize("name,command", [
    ("100k nested brackets", "evaluate"),
    ("Infinity in a number", "export"),
    ("a 5000-digit int", "evaluate"),
    ("manifest is /dev/zero via symlink", "export"),
    ("block is a symlink to a file outside the folder", "export"),
    ("float mask", "evaluate"),
    ("short factor", "export"),
    ("missing factor", "evaluate"),
    ("NaN in factors", "export"),
    ("truncated block file", "evaluate"),
    ("Infinity in a number", "resume"),
    ("float mask", "resume"),
    ("missing factor", "resume"),
])
def test_cli_prints_the_same_line_and_writes_nothing(name, command, base, run, tmp_path, capsys):
    case = _case(name)
    fields = case.damage(run, base)
    if command == "resume":
        if (run / MANIFEST).is_file() and case.where == "block":
            _set(run, lambda m: m.update(complete=False))
        argv = ["compress", base["model"], "--out", run, "--resume", "--quiet"]
    elif command == "export":
        argv = ["export", run, "--out", tmp_path / "export"]
    else:
        argv = ["evaluate", run, "--quick"]
    before = _snapshot(run)
    assert _cli_line(argv, capsys) == "oats: error: " + _message(case, run, base, fields)
    assert _snapshot(run) == before and not (tmp_path / "export").exists()


def test_oats_runs_lists_damaged_rows_and_exits_0(base, tmp_path):
    """A real process (a FIFO manifest must not hang it, no traceback), the damaged folders
    listed by name with their problem, the good one as complete."""
    root = tmp_path / "runs"
    for name in ("100k nested brackets", "Infinity in a number", "a 5000-digit int", "manifest is a FIFO",
                 "manifest is /dev/zero via symlink", "1e400"):
        folder = root / name.replace(" ", "-").replace("/", "_")
        shutil.copytree(base["good"], folder)
        _case(name).damage(folder, base)
    shutil.copytree(base["good"], root / "good")
    p = subprocess.run([sys.executable, "-m", "oats.cli", "runs", "--root", str(root)], capture_output=True, text=True,
                       cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1 + 7
    rows = {line.split()[0]: line for line in lines[1:]}
    assert rows["good"].split()[1] == "complete"
    for name in ("100k-nested-brackets", "Infinity-in-a-number", "a-5000-digit-int", "manifest-is-a-FIFO",
                 "manifest-is-_dev_zero-via-symlink", "1e400"):
        assert rows[name].split()[1] == "damaged" and "has a damaged manifest" in rows[name]


# ----------------------------------------------------------------------------- --out, before any model loads


def _request(base) -> CompressRequest:
    return CompressRequest(str(base["model"]), OatsConfig(iterations=3), calib_samples=2, seq_len=8, evaluate=False)


@pytest.fixture
def no_loading(monkeypatch):
    """Loading a model fails the test: every --out refusal comes before it."""
    def boom(*a, **k):
        raise AssertionError("the model was loaded before --out was checked")
    monkeypatch.setattr(zoo, "load_model", boom)


OUT_CASES = [
    ("--out with a 256-character name", lambda t: t / LONG,
     f"run folder name '{LONG[:40]}...' in --out is 256 bytes long, over the 255 a file system allows: choose a "
     "shorter --out"),
    ("--out an existing file", lambda t: t / "notes.txt", "run folder '{out}' is a file: choose a folder for --out"),
    ("--out inside a file", lambda t: t / "notes.txt" / "run",
     "run folder '{out}' cannot be made: '{tmp}/notes.txt' is a file: choose another --out"),
    ("--out a folder of someone's files", lambda t: t / "mine",
     "run folder '{out}' holds other files ('thesis.tex', ...) and no run: choose a new or empty folder for --out"),
]


def _user_files(t: Path) -> None:
    (t / "notes.txt").write_text("my notes")
    (t / "mine").mkdir()
    (t / "mine" / "thesis.tex").write_text("my thesis")
    (t / "mine" / "block_000.safetensors").write_bytes(b"someone's file of that name")


@pytest.mark.parametrize("name,out,message", OUT_CASES, ids=[c[0] for c in OUT_CASES])
def test_out_is_refused_before_loading_and_nothing_changes(name, out, message, base, tmp_path, no_loading, capsys):
    _user_files(tmp_path)
    out = out(tmp_path)
    message = message.format(out=out, tmp=tmp_path)
    before = _snapshot(tmp_path)
    with pytest.raises(RunError) as e:
        execute(_request(base), out)
    assert str(e.value) == message
    for extra in ([], ["--overwrite"]):
        assert _cli_line(["compress", base["model"], "--out", out, *CALIB, *extra], capsys) == "oats: error: " + message
    assert _snapshot(tmp_path) == before


def test_out_holding_another_run_is_refused_and_kept(base, run, tmp_path, capsys):
    before = _snapshot(run)
    line = _cli_line(["compress", base["model"], "--out", run, "--compression", "0.6", *CALIB], capsys)
    assert line == (f"oats: error: run folder '{run}' already holds a run: use --resume to continue it, --overwrite "
                    "to replace it, or another --out")
    with pytest.raises(RunError, match="holds another compression"):
        execute(CompressRequest(str(base["model"]), OatsConfig(compression=0.6, iterations=3), evaluate=False), run)
    assert _snapshot(run) == before


def test_sweep_root_and_table_folder_are_checked_first(base, tmp_path, no_loading):
    from oats.runner.sweep import sweep
    _user_files(tmp_path)
    with pytest.raises(RunError) as e:
        sweep(str(base["model"]), ["oats"], [0.5], root=tmp_path / "notes.txt")
    assert str(e.value) == f"runs folder '{tmp_path / 'notes.txt'}' is a file: choose a folder for --root"
    with pytest.raises(RunError) as e:
        sweep(str(base["model"]), ["oats"], [0.5], root=tmp_path / "runs", out=tmp_path / LONG)
    assert str(e.value) == (f"table folder name '{LONG[:40]}...' in --out is 256 bytes long, over the 255 a file "
                            "system allows: choose a shorter --out")


EXPORT_OUT = [
    ("export --out with a 256-character name", lambda t, r: (t / LONG, []),
     f"export folder name '{LONG[:40]}...' in --out is 256 bytes long, over the 255 a file system allows: choose a "
     "shorter --out"),
    ("export --out an existing file", lambda t, r: (t / "notes.txt", ["--force"]),
     "export folder '{out}' is a file: choose a folder for --out"),
    ("export --force onto another run", lambda t, r: (t / "other-run", ["--force"]),
     "export folder '{out}' holds a run folder (manifest.json): choose another --out"),
    ("export --force onto someone's files", lambda t, r: (t / "mine", ["--force"]),
     "export folder '{out}' holds files but no oats export (oats_export.json): --force replaces only an earlier "
     "export; choose another --out"),
]


@pytest.mark.parametrize("name,out,message", EXPORT_OUT, ids=[c[0] for c in EXPORT_OUT])
def test_export_out_is_refused_and_nothing_changes(name, out, message, base, run, tmp_path, no_loading, capsys):
    _user_files(tmp_path)
    shutil.copytree(base["good"], tmp_path / "other-run")
    out, flags = out(tmp_path, run)
    message = message.format(out=out)
    before = _snapshot(tmp_path)
    with pytest.raises((ConfigError, RunError)) as e:
        export_mod.export_run_folder(run, out, force="--force" in flags)
    assert str(e.value) == message
    assert _cli_line(["export", run, "--out", out, *flags], capsys) == "oats: error: " + message
    assert _snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- a full disk


def _fail_on_call(n: int, exc: BaseException, real):
    calls = []

    def wrapped(*a, **k):
        calls.append(1)
        if len(calls) == n:
            raise exc
        return real(*a, **k)
    return wrapped


def _no_temporaries(folder: Path) -> None:
    assert not [p.name for p in folder.rglob(".*")], "a temporary file was left behind"


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"), SafetensorError(SPACE)],
                         ids=["OSError ENOSPC", "SafetensorError"])
def test_full_disk_while_compressing_leaves_a_resumable_run(error, base, tmp_path, monkeypatch, capsys):
    out = tmp_path / "full"
    monkeypatch.setattr(folders, "save_file", _fail_on_call(2, error, folders.save_file))  # block 1 of 2
    line = _cli_line(["compress", base["model"], "--out", out, "--quiet", *CALIB], capsys, progress=True)
    assert line == (f"oats: error: no space left on device while writing block_001.safetensors in '{out}': free some "
                    f"space, then resume with 'oats compress {base['model']} --out {out} --resume'")
    _no_temporaries(out)
    assert sorted(p.name for p in out.iterdir()) == ["block_000.safetensors", MANIFEST]
    m = check_resumable(out)
    assert m["blocks_done"] == [0] and m["complete"] is False
    monkeypatch.undo()
    assert cli_main(["compress", str(base["model"]), "--out", str(out), "--resume", "--quiet"]) == 0
    assert "resuming" in capsys.readouterr().err
    assert RunInfo.read(out).complete and RunInfo.read(out).blocks_done == (0, 1)


def test_full_disk_while_writing_the_manifest(base, tmp_path, monkeypatch):
    out = tmp_path / "full"
    # fsync is the manifest writer's last step: the first manifest goes, the second (after block 1) finds no space
    monkeypatch.setattr(folders.os, "fsync", _fail_on_call(2, OSError(errno.EDQUOT, "Disk quota exceeded"),
                                                           os.fsync))
    with pytest.raises(RunError) as e:
        execute(_request(base), out)
    assert str(e.value) == (f"no space left on device while writing {MANIFEST} in '{out}': free some space, then "
                            f"resume with 'oats compress {base['model']} --out {out} --resume'")
    _no_temporaries(out)
    assert check_resumable(out)["blocks_done"] == [0]


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"), SafetensorError(SPACE)],
                         ids=["OSError ENOSPC", "SafetensorError"])
def test_full_disk_while_exporting(error, base, run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "export"

    def full(*a, **k):
        raise error
    monkeypatch.setattr(export_mod, "save_file", full)
    before = _snapshot(run)
    line = _cli_line(["export", run, "--out", out], capsys)
    assert line == (f"oats: error: no space left on device while writing sparse_lowrank.safetensors in '{out}': free "
                    "some space, then export again")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    assert _snapshot(run) == before


def test_a_killed_writers_temporaries_go_but_nobody_elses(base, run):
    (run / ".block_001.safetensors.x1.tmp").write_bytes(b"half")
    (run / ".my-editor-swap.tmp").write_text("mine")
    folders.RunWriter(run)
    assert sorted(p.name for p in run.glob(".*")) == [".my-editor-swap.tmp"]


def test_a_block_file_declaring_more_than_memory_is_refused_before_it_is_read(base, run):
    """A block file whose header declares 64 GiB (a sparse file: no disk used) is refused from its size,
    not read whole until the machine runs out of memory."""
    import struct
    header = json.dumps({"x": {"dtype": "F32", "shape": [2**34], "data_offsets": [0, 2**36]}}).encode()
    header += b" " * (-len(header) % 8)
    f = run / "block_000.safetensors"
    with open(f, "wb") as fh:
        fh.write(struct.pack("<Q", len(header)) + header)
        fh.truncate(8 + len(header) + 2**36)
    with pytest.raises(ResourceError) as e:
        load_run(run, model=_model(base))
    text = str(e.value)
    assert text.startswith(f"reading block_000.safetensors of run folder '{run}' needs about 137 GB of memory")
    assert "\n" not in text


def test_a_folder_name_with_a_line_break_stays_one_line(base, run):
    """A name a shared archive can carry ("run\\nTraceback ...") cannot make an error two lines."""
    odd = run.parent / "r\nTraceback (most recent call last):"
    run.rename(odd)
    (odd / MANIFEST).write_text("[" * 1000)
    with pytest.raises(RunError) as e:
        RunInfo.read(odd)
    assert "\n" not in str(e.value) and "r\\nTraceback" in str(e.value)
    rows = list_runs(odd.parent)
    assert rows[0]["status"] == "damaged" and "\n" not in rows[0]["problem"]

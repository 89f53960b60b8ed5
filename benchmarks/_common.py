"""Helpers shared by the benchmarks that write synthetic models and watch a child process from
outside (benchmarks/from_disk.py, benchmarks/mid_size.py)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

WORDS = ("the of and to in is was for on that with as by at from his an were are which this be or has had not "
         "first one their its new after who they have her two been other when there all during into school time "
         "may years more most only over city some world would where later up such used many can state about "
         "national out known university united then made").split()


def write_tokenizer(folder: Path) -> None:
    """A word-level tokenizer over ``WORDS`` that loads offline (no download, no merges file):
    enough for the calibration and evaluation text of a synthetic model, whose token ids are
    then a small part of its vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab_map = {"[PAD]": 0, "[UNK]": 1}
    for w in WORDS:
        vocab_map.setdefault(w, len(vocab_map))
    tk = Tokenizer(models.WordLevel(vocab_map, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(folder)


def rss_mb(pid: int, key: str = "VmRSS") -> float | None:
    """A process's ``/proc/PID/status`` entry (VmRSS, VmHWM) in MB; None once it has gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024
    except (OSError, StopIteration):
        return None


def run_watched(cmd: list[str], cap_mb: float, every_s: float = 0.005, on_line=None) -> subprocess.CompletedProcess:
    """Run the child; watch its RSS from here every ``every_s`` seconds (nothing runs in the
    child for it); with cap_mb > 0, SIGKILL it once it is cap_mb above the baseline the child
    reports on its first line (JSON with ``base_mb``). The result's ``peak_polled_mb`` is the
    highest VmRSS seen from outside (the child's own VmHWM, read by the child, is the exact
    peak); ``on_line(line)`` sees every later line of the child's stdout as it comes (progress)."""
    import threading

    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    first = p.stdout.readline()
    lines, killed, peak = [], None, 0.0
    err_lines: list[str] = []
    err_reader = threading.Thread(target=lambda: err_lines.extend(p.stderr), daemon=True)
    err_reader.start()

    def read():
        for line in p.stdout:
            lines.append(line)
            if on_line is not None:
                on_line(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    base = json.loads(first)["base_mb"] if first.startswith("{") and "base_mb" in first else None
    while p.poll() is None:
        rss = rss_mb(p.pid)
        if rss is not None:
            peak = max(peak, rss)
            if cap_mb > 0 and base is not None and rss - base > cap_mb:
                p.kill()
                killed = json.dumps({"killed": True, "rss_mb": rss, "base_mb": base, "cap_mb": cap_mb})
                break
        time.sleep(every_s)
    p.wait()
    reader.join()
    err_reader.join()
    out = first + "".join(lines) + (killed + "\n" if killed else "")
    done = subprocess.CompletedProcess(cmd, p.returncode, out, "".join(err_lines))
    done.peak_polled_mb = peak
    return done

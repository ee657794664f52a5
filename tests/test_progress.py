"""Progress in a log file (a SLURM ``slurm-*.out``): plain lines from rank 0, no redraws; a
terminal keeps the bar."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from helpers import DISTILL_STEPS, STUDENTS, accelerate_cmd, distill_args, rank_env

from vlcd_dist.progress import Progress

VLCD = [sys.executable, "-c", "import sys; from vlcd_dist.cli import main; sys.exit(main())"]


def _run_into_file(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> str:
    """Run ``cmd`` with stdout and stderr both going to ``log``, as in a SLURM job."""
    with open(log, "wb") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=600)
    text = log.read_bytes().decode("utf-8", "replace")
    assert proc.returncode == 0, text[-6000:]
    return text


def test_shard_writing_in_a_log_file_writes_lines_not_redraws(tmp_path):
    shards = ["shards", "placenta", "--synthetic", "24", "--image-size", "64x48"]
    shards += ["--shard-size", "4", "--workers", "1"]
    # The defaults: no carriage return (a tqdm bar redraws with them), and a closing line.
    text = _run_into_file([*VLCD, *shards, "--out", tmp_path / "a"], tmp_path / "a.log")
    assert text.count("\r") == 0
    lines = [ln for ln in text.splitlines() if "placenta shards:" in ln]
    assert lines and re.search(r"placenta shards: 24/24 img \(100%\), .* elapsed$", lines[-1])

    # One line per interval: an interval of 0 gives one per shard written.
    text = _run_into_file(
        [*VLCD, *shards, "--out", tmp_path / "b", "--progress-every", "0"], tmp_path / "b.log"
    )
    assert text.count("\r") == 0
    lines = [ln for ln in text.splitlines() if "placenta shards:" in ln]
    sizes = json.loads((tmp_path / "b" / "sizes.json").read_text())
    assert len(lines) == len(sizes) == 7  # train 4+4+4+4+3, test 4+1
    done = [int(re.search(r"placenta shards: (\d+)/24 img", ln)[1]) for ln in lines]
    assert done == sorted(set(done)) and done[-1] == 24


def test_a_terminal_keeps_the_bar():
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 200, 0, 0))  # 200 columns
    with open(slave, "w", closefd=True) as tty:
        progress = Progress(3, "job", stream=tty, every_s=0)
        assert progress.bar is not None
        for _ in range(3):
            progress.update(1, {"student_with_a_long_name": "1.000"})
        progress.close()
    out = b""
    while select.select([master], [], [], 0.5)[0]:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the other end is closed
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    out = out.decode()
    assert "\r" in out and "3/3" in out
    assert "student_with_a_long_name=1.000" in out  # whole names, not cut to 12 characters


def test_other_ranks_show_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    log = tmp_path / "log"
    with open(log, "w") as fh:
        with Progress(3, "job", stream=fh, every_s=0) as progress:
            progress.update(3)
    assert log.read_text() == ""


@pytest.mark.multiproc
def test_training_log_gets_lines_from_rank_zero_only(tmp_path, tiny_recipe, distill_sets):
    out = tmp_path / "distill"
    sets = [*distill_sets, "logging.progress=true", "logging.progress_every_s=0"]
    cmd = accelerate_cmd(*distill_args(tiny_recipe, out, sets))
    text = _run_into_file(cmd, tmp_path / "slurm-1.out", env=rank_env())
    assert text.count("\r") == 0
    lines = [ln for ln in text.splitlines() if re.search(r" distill: \d+/\d+ step", ln)]
    # One line per step (interval 0), from rank 0 alone: 2 ranks would double them.
    steps = [int(re.search(r"distill: (\d+)/", ln)[1]) for ln in lines]
    assert steps == list(range(1, DISTILL_STEPS + 1))
    for ln in lines:
        # Every student under its whole name with its loss, then the throughput.
        for name in STUDENTS:
            assert re.search(rf"\b{name} \d+\.\d{{3}}\b", ln), ln
        assert re.search(r"img/s \d+\.\d", ln), ln


def test_loading_the_text_model_draws_no_bar_into_a_log(tmp_path):
    """transformers draws its own "Loading weights" bar; in a log file it must stay quiet."""
    log = tmp_path / "load.log"
    code = (
        "from vlcd_dist.models.teacher import packaged_minilm_path; "
        "from vlcd_dist.models.towers import _load_text_encoder; "
        "print(type(_load_text_encoder(packaged_minilm_path(), 'pretrained')).__name__)"
    )
    with log.open("w") as err:
        out = subprocess.run(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=err, text=True, check=True
        )
    assert out.stdout.strip() == "BertModel"
    text = log.read_text()
    assert "\r" not in text and "Loading weights" not in text, text

"""Two real gloo ranks under ``accelerate launch``: the multi-student distill step, the
independence of students, and evaluation gathering every sample once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, free_port
from safetensors.torch import load_file
from test_train_stages import STUDENTS, scalars

WORKER = REPO / "tests" / "workers" / "distill_fault_worker.py"
STEPS = 3


def accelerate(*args: object, timeout: int = 300) -> None:
    """Run ``accelerate launch`` with 2 CPU ranks (gloo); fail the test with its output."""
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        *[str(a) for a in args],
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"


@pytest.fixture(scope="module")
def sets(tiny_pipeline) -> list[str]:
    return [
        f"teacher.checkpoint={tiny_pipeline['teacher']}",
        f"distill.init_from={tiny_pipeline['predistill']}",
        f"distill.steps={STEPS}",
    ]


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, tiny_recipe, sets) -> Path:
    out = tmp_path_factory.mktemp("dist") / "distill"
    args = ["-m", "vlcd_dist", "distill", "--config", tiny_recipe, "--out", out]
    for s in sets:
        args += ["--set", s]
    accelerate(*args)
    return out


def test_two_rank_distill(clean_run, tiny_pipeline) -> None:
    summary = json.loads((clean_run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == STEPS
    assert summary["trainees"] == STUDENTS
    # One teacher forward per step, shared by both students (not one per student).
    assert summary["teacher_forwards"] == STEPS
    assert summary["teacher_hash_start"] == summary["teacher_hash_end"]
    assert all(c["skipped_steps"] == 0 for c in summary["counters"].values())
    for name in STUDENTS:
        before = load_file(str(tiny_pipeline["predistill"] / "export" / f"{name}.safetensors"))
        after = load_file(str(clean_run / "export" / f"{name}.safetensors"))
        changed = [k for k in before if not torch.equal(before[k], after[k])]
        assert changed, f"{name}: no weight changed"
    tags = scalars(clean_run / "tb")
    for name in STUDENTS:
        for part in (
            "loss",
            "loss_contrastive",
            "loss_dist",
            "loss_gnd",
            "lr",
            "grad_norm",
            "logit_scale",
            "skipped_steps",
        ):
            assert [s for s, _ in tags[f"{name}/{part}"]] == list(range(1, STEPS + 1)), (
                f"{name}/{part}"
            )
    for tag in ("perf/images_per_s", "perf/data_wait_fraction", "data/skipped_corrupt_image"):
        assert tag in tags
    # The final checkpoint holds every student and both ranks' RNG, and is complete.
    final = clean_run / "checkpoints" / f"step_{STEPS:06d}"
    assert (final / "COMPLETE").is_file()
    meta = json.loads((final / "meta.json").read_text())
    assert meta["trainees"] == STUDENTS and meta["world_size"] == 2
    for name in STUDENTS:
        for f in ("model.safetensors", "optimizer.safetensors", "optimizer.json", "scheduler.json"):
            assert (final / name / f).is_file(), f"{name}/{f}"
    assert sorted(p.name for p in (final / "rng").iterdir()) == [
        "rank00000.safetensors",
        "rank00001.safetensors",
    ]


def test_nan_in_one_student_leaves_the_other_untouched(
    clean_run, tiny_recipe, sets, tmp_path
) -> None:
    faulty, healthy = STUDENTS
    out = tmp_path / "fault"
    args = [WORKER, tiny_recipe, out, faulty, "1"]
    for s in sets:
        args += ["--set", s]
    accelerate(*args)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    # Both ranks skipped the same update (the NaN was on rank 0 only) and still agree.
    assert ranks[0] == ranks[1]
    assert ranks[0]["counters"][faulty]["skipped_steps"] == 1
    assert ranks[0]["counters"][healthy]["skipped_steps"] == 0
    clean = {n: load_file(str(clean_run / "export" / f"{n}.safetensors")) for n in STUDENTS}
    fault = {n: load_file(str(out / "export" / f"{n}.safetensors")) for n in STUDENTS}
    for key in clean[healthy]:
        torch.testing.assert_close(fault[healthy][key], clean[healthy][key], rtol=0, atol=0)
    assert any(not torch.equal(fault[faulty][k], clean[faulty][k]) for k in clean[faulty])


def test_two_rank_eval_sees_every_sample_once(
    clean_run, tiny_recipe, tiny_pipeline, placenta_shards, tmp_path
) -> None:
    out = tmp_path / "eval"
    accelerate(
        "-m", "vlcd_dist", "eval", "--config", tiny_recipe, "--out", out,
        "--set", f"teacher.checkpoint={tiny_pipeline['teacher']}",
        "--set", f"eval.students_from={clean_run}",
    )  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    splits = json.loads((placenta_shards / "info.json").read_text())["splits"]
    assert report["samples"] == {"train": splits["train"], "test": splits["test"]}
    assert list(report["models"]) == ["teacher", *STUDENTS]

"""Two real gloo ranks under ``accelerate launch``: the multi-student distill step, the
independence of students, and evaluation gathering every sample once."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import DISTILL_STEPS as STEPS
from helpers import REPO, STUDENTS, run_cli, scalars
from helpers import accelerate_launch as accelerate
from safetensors.torch import load_file

WORKER = REPO / "tests" / "workers" / "distill_fault_worker.py"

# Every test here launches 2 ranks (accelerate launch): not in `make test-fast`.
pytestmark = pytest.mark.multiproc


def test_two_rank_distill(accelerate_distill, tiny_pipeline) -> None:
    summary = json.loads((accelerate_distill / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == STEPS
    assert summary["trainees"] == STUDENTS
    # One teacher forward per step, shared by both students (not one per student).
    assert summary["teacher_forwards"] == STEPS
    assert summary["teacher_hash_start"] == summary["teacher_hash_end"]
    assert all(c["skipped_steps"] == 0 for c in summary["counters"].values())
    for name in STUDENTS:
        before = load_file(str(tiny_pipeline["predistill"] / "export" / f"{name}.safetensors"))
        after = load_file(str(accelerate_distill / "export" / f"{name}.safetensors"))
        changed = [k for k in before if not torch.equal(before[k], after[k])]
        assert changed, f"{name}: no weight changed"
    tags = scalars(accelerate_distill / "tb")
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
    final = accelerate_distill / "checkpoints" / f"step_{STEPS:06d}"
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
    accelerate_distill, tiny_recipe, distill_sets, tmp_path
) -> None:
    faulty, healthy = STUDENTS
    out = tmp_path / "fault"
    args = [WORKER, tiny_recipe, out, faulty, "1"]
    for s in distill_sets:
        args += ["--set", s]
    accelerate(*args)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    # Both ranks skipped the same update (the NaN was on rank 0 only) and still agree.
    assert ranks[0] == ranks[1]
    assert ranks[0]["counters"][faulty]["skipped_steps"] == 1
    assert ranks[0]["counters"][healthy]["skipped_steps"] == 0
    clean = {
        n: load_file(str(accelerate_distill / "export" / f"{n}.safetensors")) for n in STUDENTS
    }
    fault = {n: load_file(str(out / "export" / f"{n}.safetensors")) for n in STUDENTS}
    for key in clean[healthy]:
        torch.testing.assert_close(fault[healthy][key], clean[healthy][key], rtol=0, atol=0)
    assert any(not torch.equal(fault[faulty][k], clean[faulty][k]) for k in clean[faulty])


def test_two_rank_eval_sees_every_sample_once_and_matches_one_rank(
    accelerate_distill, tiny_recipe, tiny_pipeline, placenta_shards, tmp_path
) -> None:
    sets = [
        f"teacher.checkpoint={tiny_pipeline['teacher']}",
        f"eval.students_from={accelerate_distill}",
    ]
    out = tmp_path / "eval"
    accelerate(
        "-m", "vlcd_dist", "eval", "--config", tiny_recipe, "--out", out,
        *[arg for s in sets for arg in ("--set", s)],
    )  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    splits = json.loads((placenta_shards / "info.json").read_text())["splits"]
    # The probes' fit rows and the validation rows make up the train split.
    samples = report["samples"]
    assert samples["train"] + samples["val"] == splits["train"] and samples["val"] > 0
    assert samples["test"] == splits["test"]
    assert list(report["models"]) == ["teacher", *STUDENTS]

    # One rank, same models and data: the rows are put in key order after the gather, so the
    # probes' folds and the bootstrap see the same samples and give the same figures.
    single = tmp_path / "eval1"
    assert (
        run_cli(
            "eval",
            "--config",
            tiny_recipe,
            "--out",
            single,
            *[a for s in sets for a in ("--set", s)],
        )
        == 0
    )
    one = json.loads((single / "report.json").read_text())
    for name in report["models"]:
        two_rank, one_rank = report["models"][name], one["models"][name]
        assert two_rank["probe_c"] == one_rank["probe_c"], name
        # (a task without positives in the tiny test split has a NaN AUC on both)
        assert two_rank["auc"] == pytest.approx(one_rank["auc"], abs=1e-6, nan_ok=True), name
        for key, interval in two_rank["ci"].items():
            assert interval == pytest.approx(one_rank["ci"][key], abs=1e-6, nan_ok=True), key

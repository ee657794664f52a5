"""The stages in one process on tiny models: exports, counters, TensorBoard, exact resume, eval."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import STUDENTS, run_cli, scalars
from safetensors.torch import load_file

from vlcd_dist.anchors import AnchorCache
from vlcd_dist.config import load_config
from vlcd_dist.models import create_teacher, teacher_config
from vlcd_dist.models.exported import load_exported_student
from vlcd_dist.train.stages import create_stage


def test_train_teacher_exports_weights_and_anchors(tiny_pipeline) -> None:
    export = tiny_pipeline["teacher"].parent
    info = json.loads((export / "teacher.json").read_text())
    teacher = create_teacher(
        teacher_config("tiny_resnet18_minilm", checkpoint=str(export / "teacher.safetensors"))
    )
    assert info["teacher_config"]["name"] == "tiny_resnet18_minilm"
    # The anchor cache belongs to the trained teacher's text tower (a stale one is refused).
    cache = AnchorCache(export / "anchors.safetensors", expected_teacher_hash=teacher.text_hash())
    assert len(cache) == 48 and cache.dim == 64
    summary = json.loads((export.parent / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["trainees"] == ["teacher"]
    # The anchors' text: sentence means, at the text model's own limit, nothing cut.
    assert summary["text_feature"] == "sentence_mean"
    assert summary["text_max_length"] == 512 and summary["text_truncated"] == 0
    assert cache.recipe["truncated_sentences"] == 0
    tags = scalars(export.parent / "tb")
    for tag in (
        "teacher/loss",
        "teacher/lr",
        "teacher/grad_norm",
        "teacher/logit_scale",
        "perf/images_per_s",
    ):
        assert [s for s, _ in tags[tag]] == [1, 2], tag


def test_predistill_exports_every_student(tiny_pipeline) -> None:
    export = tiny_pipeline["predistill"] / "export"
    for name in STUDENTS:
        student, info = load_exported_student(export / f"{name}.safetensors")
        assert info["stage"] == "predistill" and info["build"]["embed_dim"] == 64
        assert student(torch.randn(2, 3, 32, 32)).shape == (2, 64)
    tags = scalars(tiny_pipeline["predistill"] / "tb")
    for name in STUDENTS:
        assert f"{name}/loss_dist" in tags and f"{name}/loss_contrastive" not in tags


class Stop(Exception):
    pass


def _distill_cfg(recipe: Path, pipeline, out: Path, steps: int = 4):
    cfg = load_config(
        recipe,
        [
            f"teacher.checkpoint={pipeline['teacher']}",
            f"distill.init_from={pipeline['predistill']}",
            f"distill.steps={steps}",
            "checkpoint.every_steps=2",
        ],
    )
    cfg.run.out = str(out)
    return cfg


def _run(cfg, hook=None):
    trainer = create_stage(cfg, "distill")
    trainer.loss_hook = hook
    try:
        return trainer.run()
    finally:
        trainer.backend.close()


def test_resume_continues_exactly(tiny_recipe, tiny_pipeline, tmp_path) -> None:
    straight = _distill_cfg(tiny_recipe, tiny_pipeline, tmp_path / "straight")
    _run(straight)

    def crash_after_step_2(name, step, loss):
        if step == 2:
            raise Stop
        return loss

    broken = _distill_cfg(tiny_recipe, tiny_pipeline, tmp_path / "broken")
    with pytest.raises(Stop):
        _run(broken, crash_after_step_2)
    assert sorted(p.name for p in (tmp_path / "broken" / "checkpoints").iterdir()) == [
        "step_000002"
    ]
    broken.checkpoint.resume = True
    state = _run(broken)
    assert state.step == 4
    for name in STUDENTS:
        a = load_file(str(tmp_path / "straight" / "export" / f"{name}.safetensors"))
        b = load_file(str(tmp_path / "broken" / "export" / f"{name}.safetensors"))
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=f"{name}.{key}")
    summary = json.loads((tmp_path / "broken" / "summary.json").read_text())
    # Carried through the checkpoint: still one teacher forward per step over the whole run.
    assert summary["teacher_forwards"] == state.step == 4
    assert summary["teacher_hash_start"] == summary["teacher_hash_end"]


def test_eval_writes_report_plots_and_tensorboard(tiny_recipe, tiny_pipeline, tmp_path) -> None:
    out = tmp_path / "eval"
    assert (
        run_cli(
            f"eval --config {tiny_recipe} --out {out} --set teacher.checkpoint={tiny_pipeline['teacher']} "  # noqa: E501
            f"--set eval.students_from={tiny_pipeline['predistill']}"
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert list(report["models"]) == ["teacher", *STUDENTS]
    assert report["tasks"] == ["meconium", "fir", "mir", "chorioamnionitis", "sepsis"]
    samples = report["samples"]
    assert samples["train"] + samples["val"] + samples["test"] == 48 and samples["val"] > 0
    for r in report["models"].values():
        finite = [v for v in r["auc"].values() if np.isfinite(v)]
        assert finite and all(0 <= v <= 1 for v in finite)
        assert r["params"] > 0 and r["resizes_to"] is None
        assert list(r["latency_ms"]) == list(r["speedup"]) == ["fp32"]
        assert r["latency_ms"]["fp32"] > 0 and r["speedup"]["fp32"] > 0
    assert report["latency"]["precisions"] == ["fp32"]
    assert report["models"]["teacher"]["speedup"]["fp32"] == pytest.approx(1.0)
    table = (out / "report.md").read_text()
    assert table.startswith("| model | meconium | fir | mir | chorioamnionitis | sepsis | mean AUC")
    assert all(f"| `{name}` |" in table for name in report["models"])
    for stem in ("auc", "roc"):
        assert (out / f"{stem}.png").stat().st_size > 1000
        assert all(name in (out / f"{stem}.svg").read_text() for name in report["models"])
    assert not (out / "robustness.png").exists()
    # The ROC points are in report.json, so figures can be drawn again from it alone.
    roc = report["models"]["teacher"]["roc"]["fir"]
    assert len(roc["fpr"]) == len(roc["tpr"]) >= 2 and roc["fpr"][-1] == roc["tpr"][-1] == 1.0
    tags = scalars(out / "tb")
    assert "eval/teacher/auc_mean" in tags and "eval/tiny_resnet/auc_fir" in tags
    # The figures and the Markdown table, written by the command after the stage.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    assert {"eval/auc_bars", "eval/roc_curves"} <= set(acc.Tags()["images"])
    assert {"eval/report/text_summary", "config/text_summary"} <= set(acc.Tags()["tensors"])


def test_demo_commands(tmp_path) -> None:
    from vlcd_dist.pipelines import demo, launch

    assert launch.launch_prefix(1)[1:] == ["-m", "vlcd_dist"]
    two = launch.launch_prefix(2)
    assert two[1:4] == ["-m", "accelerate.commands.launch", "--multi_gpu"]
    assert two[two.index("--num_processes") + 1] == "2" and two[-2:] == ["-m", "vlcd_dist"]
    stages = [s for s, _, _ in demo._stage_plan(tmp_path)]
    assert stages == ["train-teacher", "predistill", "distill", "eval"]
    folder = tmp_path / "distill"
    folder.mkdir()
    (folder / "config.yaml").write_text("a: 1\n")
    assert not launch._finished("distill", folder, "a: 1\n")  # no summary.json: not finished
    (folder / "summary.json").write_text("{}")
    assert launch._finished("distill", folder, "a: 1\n")
    assert not launch._finished("distill", folder, "a: 2\n")  # another recipe: rerun


def test_eval_writes_report_json_last(tiny_recipe, tiny_pipeline, tmp_path, monkeypatch) -> None:
    # report.json marks a finished eval (a pipeline skips the stage when it is there), so a
    # failure while report.md and the figures are written must leave none behind.
    from vlcd_dist.reporting import eval_files

    def broken(out, report, tensorboard=True) -> None:
        (Path(out) / "report.md").write_text("half")
        raise RuntimeError("disk full while drawing")

    monkeypatch.setattr(eval_files, "write_eval_outputs", broken)
    out = tmp_path / "eval"
    with pytest.raises(RuntimeError, match="disk full"):
        run_cli(
            f"eval --config {tiny_recipe} --out {out} --set teacher.checkpoint={tiny_pipeline['teacher']} "  # noqa: E501
            f"--set eval.students_from={tiny_pipeline['predistill']}"
        )
    assert (out / "config.yaml").is_file() and not (out / "report.json").exists()


def test_eval_times_every_model_in_each_precision_alike(tiny_recipe, tiny_pipeline) -> None:
    from vlcd_dist.train.eval_stage import Evaluator

    sets = [
        f"teacher.checkpoint={tiny_pipeline['teacher']}",
        f"eval.students_from={tiny_pipeline['predistill']}",
        "teacher.autocast_dtype=bfloat16",  # how the teacher makes features: not how it is timed
        "eval.latency_precisions=[fp32,bf16]",
        "eval.latency_iters=2",
        "eval.latency_batch=2",
    ]
    evaluator = Evaluator(load_config(tiny_recipe, sets))
    models = evaluator.models()
    calls: dict[str, list[tuple[object, tuple[int, ...]]]] = {m.name: [] for m in models}

    def record(name):
        def hook(module, args):
            on = torch.is_autocast_enabled("cpu")
            calls[name].append((torch.get_autocast_dtype("cpu") if on else None, args[0].shape))

        return hook

    # The backbone is what computes: it sees the precision and the size that are timed.
    for m in models:
        backbone = m.module.teacher.image.backbone if m.kind == "teacher" else m.module.backbone
        backbone.register_forward_pre_hook(record(m.name))
    latency = evaluator.latency(models)
    assert list(latency) == ["fp32", "bf16"]
    for precision in latency:
        assert set(latency[precision]) == {"teacher", *STUDENTS}
    for name, seen in calls.items():
        # 3 warm-up and 2 timed calls per precision, fp32 without autocast, then bf16.
        assert [dtype for dtype, _ in seen] == [None] * 5 + [torch.bfloat16] * 5, name
        assert {shape for _, shape in seen} == {(2, 3, 32, 32)}, name

"""Evaluation under tablet-camera degradations (``vlcd eval --degrade``) and zero-shot scoring
with the teacher's text tower: severity 0 is exactly the clean evaluation, a corrupted run
fills every field, and zero-shot prompts come from the recipe, keyed by the shards' task names
(made-up ones here: nothing may assume the placenta tasks)."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import STUDENTS, TINY_RECIPE, run_cli, scalars
from PIL import Image

from vlcd_dist.config import ConfigError
from vlcd_dist.data.stream import ShardLoader, StreamConfig
from vlcd_dist.data.synthetic_placenta import make_sample
from vlcd_dist.evaluation.metrics import auc_roc
from vlcd_dist.evaluation.robustness import DegradedShardLoader, image_seed
from vlcd_dist.evaluation.zeroshot import ensemble_prompts, prompt_tasks, zero_shot_scores

# Two synthetic findings under names no code knows.
RENAMED = {"meconium": "green_membranes", "chorioamnionitis": "cloudy_plate"}
PROMPTS = {
    # Several prompts a side (ensembled), and an earlier recipe's [positive, negative] pair.
    "green_membranes": {
        "positive": [
            "meconium staining of the membranes",
            "green discolouration, e.g. of the plate",
        ],
        "negative": ["membranes without discolouration", "membranes of normal colour"],
    },
    "cloudy_plate": ["acute chorioamnionitis", "a shiny, transparent fetal surface"],
}
AS_REPORTED = {
    "green_membranes": PROMPTS["green_membranes"],
    "cloudy_plate": {
        "positive": ["acute chorioamnionitis"],
        "negative": ["a shiny, transparent fetal surface"],
    },
}
MODELS = ["teacher", *STUDENTS]


# --- scoring on constructed features ---------------------------------------------------------


def test_zero_shot_score_is_cosine_difference_and_ranks_known_features() -> None:
    pos, neg = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    # Raw features of any norm: only their direction counts.
    feats = np.array([[5.0, 0.0, 0.0], [0.0, 0.2, 0.0], [3.0, 4.0, 0.0], [0.0, 0.0, 7.0]])
    assert zero_shot_scores(feats, pos, neg) == pytest.approx([1.0, -1.0, 0.6 - 0.8, 0.0])

    rng = np.random.default_rng(0)
    y = np.array([1] * 6 + [0] * 9)
    # Positives lean towards the positive prompt, negatives towards the negative one.
    lean = np.where(y[:, None] == 1, [[2.0, 0.5]], [[0.5, 2.0]])
    feats = np.concatenate([lean, rng.normal(0, 0.1, (15, 6))], axis=1)
    pos, neg = np.eye(8)[0], np.eye(8)[1]
    assert auc_roc(y, zero_shot_scores(feats, pos, neg)) == 1.0
    assert auc_roc(y, zero_shot_scores(feats, neg, pos)) == 0.0
    # Several tasks at once: one column per prompt pair, the same values.
    both = zero_shot_scores(feats, np.stack([pos, neg]), np.stack([neg, pos]))
    assert both.shape == (15, 2)
    np.testing.assert_allclose(both[:, 0], zero_shot_scores(feats, pos, neg))
    np.testing.assert_allclose(both[:, 1], -both[:, 0])


def test_prompt_ensemble_is_the_mean_direction_of_its_prompts() -> None:
    # Each prompt counts by its direction only, whatever its norm.
    np.testing.assert_allclose(
        ensemble_prompts(np.array([[2.0, 0.0, 0.0], [0.0, 5.0, 0.0]])),
        [2**-0.5, 2**-0.5, 0.0],
    )
    np.testing.assert_allclose(ensemble_prompts(np.array([[0.0, 3.0, 4.0]])), [0.0, 0.6, 0.8])
    # Scored against the ensemble: a feature along one of two negative wordings is cos 1/sqrt(2)
    # from the negative side.
    pos = np.array([1.0, 0.0, 0.0])
    negs = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    feats = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(
        zero_shot_scores(feats, pos, ensemble_prompts(negs)), [-(2**-0.5), 1.0]
    )


def test_prompt_tasks_skip_when_none_and_refuse_unknown_tasks(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="vlcd_dist.eval"):
        assert prompt_tasks({}, ["a", "b"], "shards/x") == []
    assert "zero-shot skipped" in caplog.text
    assert prompt_tasks({"b": ["p", "n"]}, ["a", "b"], "shards/x") == ["b"]
    with pytest.raises(ConfigError, match="'zz'.*their tasks are \\['a', 'b'\\]"):
        prompt_tasks({"b": ["p", "n"], "zz": ["p", "n"]}, ["a", "b"], "shards/x")


# --- the degraded stream ----------------------------------------------------------------------


def _images(loader: ShardLoader) -> dict[str, torch.Tensor]:
    out = {}
    for batch in loader:
        out.update(zip(batch["key"], batch["image"], strict=True))
    return out


def test_degraded_stream_is_the_clean_stream_at_severity_zero(placenta_shards) -> None:
    cfg = StreamConfig(
        shards=str(placenta_shards),
        split="test",
        batch_size=4,
        image_size=(32, 32),
        train=False,
        shuffle=False,
        num_workers=0,
        equal_batches=False,
    )
    clean = _images(ShardLoader(cfg, 0, 1))
    zero = _images(DegradedShardLoader(cfg, 0, 1, "tablet_camera", 0, seed=0))
    assert list(zero) == list(clean)
    assert all(torch.equal(zero[k], clean[k]) for k in clean)

    five = _images(DegradedShardLoader(cfg, 0, 1, "tablet_camera", 5, seed=0))
    assert list(five) == list(clean)
    assert all(not torch.equal(five[k], clean[k]) for k in clean)
    # Seeded per key: the same corrupted image whichever rank reads it.
    split = {}
    for rank in (0, 1):
        split.update(_images(DegradedShardLoader(cfg, rank, 2, "tablet_camera", 5, seed=0)))
    assert sorted(split) == sorted(five)
    assert all(torch.equal(split[k], five[k]) for k in five)
    assert image_seed("a", 0) == image_seed("a", 0) != image_seed("b", 0)


# --- vlcd eval --degrade with zero-shot prompts, on shards with made-up task names --------------


@pytest.fixture(scope="module")
def made_up_shards(tmp_path_factory) -> Path:
    """40 synthetic photographs whose two label columns have made-up names; the test split
    holds both classes of each."""
    root = tmp_path_factory.mktemp("made_up")
    images = root / "images"
    images.mkdir()
    rows = []
    for i in range(40):
        case, photo, report = make_sample(3, i, size=(128, 96))
        Image.fromarray(photo).save(images / f"{i}.jpg", quality=90)
        rows.append(
            {"image": f"{i}.jpg", "report": report}
            | {new: case.labels[old] for old, new in RENAMED.items()}
        )
    test = set()
    for task in RENAMED.values():
        test.update([i for i, r in enumerate(rows) if r[task]][:2])
        test.update([i for i, r in enumerate(rows) if not r[task]][:3])
    for i, row in enumerate(rows):
        row["split"] = "test" if i in test else "train"
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = root / "shards"
    assert (
        run_cli(
            f"shards placenta --manifest {manifest} --images {images} --out {out} --shard-size 4 --workers 1 --quiet"
        )
        == 0
    )
    return out


@pytest.fixture(scope="module")
def made_up_recipe(tmp_path_factory, made_up_shards, natural_shards) -> Path:
    recipe = yaml.safe_load(TINY_RECIPE.format(placenta=made_up_shards, natural=natural_shards))
    recipe["eval"]["zero_shot_prompts"] = PROMPTS
    path = tmp_path_factory.mktemp("recipe") / "made_up.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def robust_eval(tmp_path_factory, made_up_recipe, tiny_pipeline) -> Path:
    """One `vlcd eval --degrade` at severities 0 and 5, with zero-shot prompts."""
    out = tmp_path_factory.mktemp("robust") / "eval"
    assert (
        run_cli(
            f"eval --config {made_up_recipe} --out {out} --degrade "
            f"--set eval.degrade.severities=[0,5] "
            f"--set teacher.checkpoint={tiny_pipeline['teacher']} "
            f"--set eval.students_from={tiny_pipeline['predistill']}"
        )
        == 0
    )
    return out


def _report(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


def test_severity_zero_reproduces_the_clean_aucs_exactly(robust_eval) -> None:
    report = _report(robust_eval)
    assert report["tasks"] == list(RENAMED.values())
    for name in MODELS:
        clean = report["models"][name]
        zero = report["degrade"]["models"][name]["tablet_camera"]["0"]
        assert all(np.isfinite(v) for v in clean["auc"].values())
        assert zero["auc"] == clean["auc"]  # equality, not approx
        assert zero["auc_mean"] == clean["auc_mean"]
        assert zero["drop"] == 0.0
        assert zero["zero_shot"] == report["zero_shot"]["models"][name]


def test_severity_five_writes_every_field(robust_eval) -> None:
    report = _report(robust_eval)
    degrade = report["degrade"]
    assert degrade["corruptions"] == ["tablet_camera"]
    assert degrade["severities"] == [0, 5]
    assert list(degrade["models"]) == MODELS
    changed = False
    for name in MODELS:
        clean = report["models"][name]
        five = degrade["models"][name]["tablet_camera"]["5"]
        assert set(five["auc"]) == set(report["tasks"])
        assert all(np.isfinite(v) and 0 <= v <= 1 for v in five["auc"].values())
        assert five["auc_mean"] == pytest.approx(np.mean(list(five["auc"].values())))
        assert np.isfinite(five["drop"])
        assert five["drop"] == pytest.approx(five["auc_mean"] - clean["auc_mean"])
        assert set(five["zero_shot"]["auc"]) == set(PROMPTS)
        changed |= five["auc"] != clean["auc"]
    assert changed, "severity 5 left every AUC as it was"

    table = (robust_eval / "report.md").read_text()
    assert "### Robustness: tablet_camera" in table
    assert "| model | clean | severity 0 | severity 5 |" in table
    assert (robust_eval / "robustness.png").stat().st_size > 1000
    assert all(name in (robust_eval / "robustness.svg").read_text() for name in MODELS)
    tags = scalars(robust_eval / "tb")
    steps = [s for s, _ in tags["eval/teacher/tablet_camera/auc_mean"]]
    assert steps == [0, 5]
    assert "eval/tiny_resnet/tablet_camera/auc_mean" in tags


def test_zero_shot_uses_the_recipe_prompts_for_made_up_tasks(robust_eval) -> None:
    report = _report(robust_eval)
    zs = report["zero_shot"]
    assert zs["prompts"] == AS_REPORTED
    assert zs["tasks"] == list(RENAMED.values())
    assert list(zs["models"]) == MODELS
    for r in zs["models"].values():
        assert set(r["auc"]) == set(PROMPTS)
        assert all(0 <= v <= 1 for v in r["auc"].values())
        assert r["auc_mean"] == pytest.approx(np.mean(list(r["auc"].values())))
    table = (robust_eval / "report.md").read_text()
    assert "### Zero-shot" in table and "| model | green_membranes | cloudy_plate | mean |" in table
    teacher = report["models"]["teacher"]["auc"]["cloudy_plate"]
    assert f"{zs['models']['teacher']['auc']['cloudy_plate']:.3f} / {teacher:.3f}" in table
    # Every prompt of both sides is shown.
    assert (
        '| `green_membranes` | "meconium staining of the membranes"; "green discolouration, e.g. '
        'of the plate" | "membranes without discolouration"; "membranes of normal colour" |'
    ) in table
    tags = scalars(robust_eval / "tb")
    assert "eval/teacher/zero_shot_auc_green_membranes" in tags
    assert "eval/tiny_mobilenetv3/zero_shot_auc_mean" in tags


def test_eval_embeds_each_prompt_like_an_anchor_and_ensembles_each_side(
    made_up_recipe, tiny_pipeline, tmp_path
) -> None:
    from vlcd_dist.anchors import compute_text_anchors
    from vlcd_dist.config import load_config
    from vlcd_dist.train.eval_stage import Evaluator
    from vlcd_dist.train.stages import load_frozen_teacher

    cfg = load_config(
        made_up_recipe, [f"teacher.checkpoint={tiny_pipeline['teacher']}", f"run.out={tmp_path}"]
    )
    evaluator = Evaluator(cfg)
    prompts = evaluator.zero_shot_prompts(["green_membranes", "cloudy_plate"])
    teacher = load_frozen_teacher(cfg, evaluator.device)
    for row, task in enumerate(["green_membranes", "cloudy_plate"]):
        for side, got in (("positive", prompts.positive), ("negative", prompts.negative)):
            texts = AS_REPORTED[task][side]
            want = ensemble_prompts(compute_text_anchors(teacher, texts).numpy())
            np.testing.assert_allclose(got[row], want, atol=1e-6)
    assert prompts.texts["cloudy_plate"] == (
        ["acute chorioamnionitis"],
        ["a shiny, transparent fetal surface"],
    )


def test_prompt_for_a_task_not_in_the_shards_is_refused(
    made_up_recipe, tiny_pipeline, tmp_path, capsys
) -> None:
    code = run_cli(
        f"eval --config {made_up_recipe} --out {tmp_path / 'eval'} "
        f"--set teacher.checkpoint={tiny_pipeline['teacher']} "
        f"--set eval.students_from={tiny_pipeline['predistill']} "
        "--set eval.zero_shot_prompts.meconium=[stained,clean]"
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "'meconium'" in err and "green_membranes" in err
    assert not (tmp_path / "eval" / "report.json").exists()


def test_unknown_corruption_is_refused(made_up_recipe, tmp_path, capsys) -> None:
    code = run_cli(f"eval --config {made_up_recipe} --out {tmp_path} --degrade fog,jpeg")
    assert code == 2
    assert "unknown ['fog']" in capsys.readouterr().err

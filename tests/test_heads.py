"""The probes ``vlcd eval`` keeps (EVAL/heads/<model>.json + .safetensors): their logits are the
eval's scores, each task's operating point is chosen on out-of-fold train probabilities only,
and a bad heads file is refused with the file and field named."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import STUDENTS, TINY_RECIPE, run_cli

from vlcd_dist.config import ConfigError, load_config
from vlcd_dist.evaluation.heads import (
    CHOSEN_NONE,
    CHOSEN_ON,
    HEADS_FORMAT,
    HeadsError,
    TaskHeads,
    ZeroShotPrompts,
    sensitivity_threshold,
    sigmoid,
)
from vlcd_dist.evaluation.metrics import auc_roc, l2_normalize
from vlcd_dist.evaluation.probes import apply_probes, fit_probe

MODELS = ["teacher", *STUDENTS]
TASKS = ["a", "b", "one_class"]
FOLDS, SEED, CS = 3, 7, [0.1, 1.0]


# --- heads fitted on random features ----------------------------------------------------------


def _data(seed: int, n: int, d: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Raw features [n, d] (norms far from 1) and labels [n, 3]: tasks a and b lean on axes 0
    and 1 with noise; the third task is all negative (one class)."""
    rng = np.random.default_rng(seed)
    y = np.stack([rng.random(n) < 0.4, rng.random(n) < 0.3, np.zeros(n, bool)], 1).astype(int)
    z = rng.normal(0, 1, (n, d))
    z[:, 0] += 1.5 * y[:, 0]
    z[:, 1] -= 1.0 * y[:, 1]
    return z * rng.uniform(0.5, 20, (n, 1)), y


def _fit(train_z, train_y, test_y, test_z, prompts=None, target=0.9):
    """Fit like the eval does; (heads, probes, scaler, the eval's test scores [M, T])."""
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(l2_normalize(train_z))
    xtr = scaler.transform(l2_normalize(train_z))
    probes = [fit_probe(xtr, train_y[:, j], CS, FOLDS, SEED) for j in range(len(TASKS))]
    scores = apply_probes(probes, scaler, test_z)
    heads = TaskHeads.from_probes(
        "m",
        TASKS,
        scaler,
        probes,
        train_y,
        test_y,
        scores,
        cv_folds=FOLDS,
        seed=SEED,
        target_sensitivity=target,
        prompts=prompts,
    )
    return heads, probes, scaler, scores


@pytest.fixture(scope="module")
def fitted():
    train_z, train_y = _data(0, 90)
    test_z, test_y = _data(1, 40)
    rng = np.random.default_rng(2)
    pos, neg = l2_normalize(rng.normal(0, 1, (2, 6))), l2_normalize(rng.normal(0, 1, (2, 6)))
    prompts = ZeroShotPrompts(
        ["a", "b"], {"a": (["pa"], ["na1", "na2"]), "b": (["pb"], ["nb"])}, pos, neg
    )
    heads, probes, scaler, scores = _fit(train_z, train_y, test_y, test_z, prompts)
    return dict(
        train_z=train_z,
        train_y=train_y,
        test_z=test_z,
        test_y=test_y,
        heads=heads,
        probes=probes,
        scaler=scaler,
        scores=scores,
    )


def test_logits_are_the_eval_scores_before_and_after_a_round_trip(fitted, tmp_path) -> None:
    heads, z = fitted["heads"], fitted["test_z"]
    want = apply_probes(fitted["probes"], fitted["scaler"], z)
    np.testing.assert_allclose(heads.logits(z), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(heads.probabilities(z), 1 / (1 + np.exp(-want)), rtol=1e-12)
    # float32 embeddings (what the encoders give): sklearn standardises those in float32.
    z32 = z.astype(np.float32)
    want32 = apply_probes(fitted["probes"], fitted["scaler"], z32)
    np.testing.assert_allclose(heads.logits(z32), want32, rtol=1e-5, atol=1e-5)
    # The one-class task: weight 0, bias the logit of its clipped train rate (0 -> 1e-6).
    assert not heads.weight[2].any()
    assert heads.bias[2] == pytest.approx(math.log(1e-6 / (1 - 1e-6)))
    assert heads.c["one_class"] is None and heads.c["a"] in CS
    # Stored as float32: the same logits to float32 rounding, and the same AUCs.
    path = heads.save(tmp_path / "heads", "m")
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.json", "m.safetensors"]
    loaded = TaskHeads.load(path)
    assert loaded.weight.dtype == np.float32 and loaded.weight.shape == (3, 6)
    got = loaded.logits(z)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for j in range(2):
        y = fitted["test_y"][:, j]
        assert auc_roc(y, got[:, j]) == pytest.approx(auc_roc(y, want[:, j]), abs=1e-9)
    assert loaded.to_json() == heads.to_json()
    # Zero-shot: cosine to the positive prompt minus cosine to the negative one.
    u = l2_normalize(z)
    zs = u @ heads.prompts.positive.T - u @ heads.prompts.negative.T
    np.testing.assert_allclose(loaded.zero_shot(z), zs, atol=1e-6)
    assert loaded.prompts.texts["a"] == (["pa"], ["na1", "na2"])


def test_heads_json_has_the_spec_fields(fitted, tmp_path) -> None:
    data = json.loads(fitted["heads"].save(tmp_path, "m").read_text())
    assert data["format"] == HEADS_FORMAT and data["model"] == "m"
    assert data["embed_dim"] == 6 and data["tasks"] == TASKS
    assert data["probe"]["cv_folds"] == FOLDS and data["probe"]["seed"] == SEED
    assert data["samples"] == {"train": 90, "val": 0, "test": 40}
    assert data["zero_shot"] == {
        "tasks": ["a", "b"],
        "prompts": {
            "a": {"positive": ["pa"], "negative": ["na1", "na2"]},
            "b": {"positive": ["pb"], "negative": ["nb"]},
        },
    }
    op = data["operating_points"]["a"]
    assert set(op) == {"target_sensitivity", "threshold", "chosen_on", "train", "test"}
    assert op["chosen_on"] == CHOSEN_ON and op["target_sensitivity"] == 0.9
    assert set(op["train"]) == set(op["test"]) == {"sensitivity", "specificity"}
    none = data["operating_points"]["one_class"]
    assert none["threshold"] is None and none["chosen_on"] == CHOSEN_NONE
    from safetensors.numpy import load_file

    tensors = load_file(str(tmp_path / "m.safetensors"))
    assert {k: list(v.shape) for k, v in tensors.items()} == {
        "scaler_mean": [6],
        "scaler_scale": [6],
        "weight": [3, 6],
        "bias": [3],
        "zero_shot_positive": [2, 6],
        "zero_shot_negative": [2, 6],
    }
    assert all(v.dtype == np.float32 for v in tensors.values())


def test_sensitivity_threshold_is_the_largest_that_reaches_the_target() -> None:
    p = np.array([0.9, 0.1, 0.8, 0.95, 0.7, 0.6, 0.5])
    y = np.array([1, 0, 1, 0, 1, 1, 1])  # positives 0.9 0.8 0.7 0.6 0.5; negatives ignored
    assert sensitivity_threshold(p, y, 0.6) == 0.7  # 3 of 5
    assert sensitivity_threshold(p, y, 0.61) == 0.6  # 4 of 5
    assert sensitivity_threshold(p, y, 1.0) == 0.5
    assert sensitivity_threshold(p, y, 0.2) == 0.9
    # Ties: every positive at the threshold is flagged.
    assert sensitivity_threshold(np.array([0.8, 0.8, 0.8, 0.2]), np.ones(4), 0.5) == 0.8
    assert sensitivity_threshold(p, np.zeros(7), 0.9) is None


def test_operating_point_is_chosen_on_out_of_fold_train_probabilities(fitted) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    heads, probes, scaler = fitted["heads"], fitted["probes"], fitted["scaler"]
    train_y, test_y = fitted["train_y"], fitted["test_y"]
    xtr = scaler.transform(l2_normalize(fitted["train_z"]))
    for j, task in enumerate(TASKS[:2]):
        y = train_y[:, j]
        # Out-of-fold probabilities at the chosen C, on the folds of the C search.
        oof = np.empty(len(y))
        folds = StratifiedKFold(FOLDS, shuffle=True, random_state=SEED).split(xtr, y)
        for fit_idx, val_idx in folds:
            model = LogisticRegression(C=heads.c[task], max_iter=2000).fit(xtr[fit_idx], y[fit_idx])
            oof[val_idx] = model.predict_proba(xtr[val_idx])[:, 1]
        np.testing.assert_allclose(sigmoid(probes[j].train_scores), oof, rtol=1e-9)
        # The threshold is one of these values: the rates are taken on them, not on a copy
        # rounded otherwise (predict_proba's differ in the last bit).
        oof = sigmoid(probes[j].train_scores)
        op = heads.operating_points[task]
        t = op.threshold
        sens = np.mean(oof[y == 1] >= t)
        assert sens >= 0.9 and op.train.sensitivity == pytest.approx(sens, abs=1e-9)
        assert op.train.specificity == pytest.approx(np.mean(oof[y == 0] < t), abs=1e-9)
        # The largest such: just above it, the out-of-fold sensitivity is under the target.
        assert np.mean(oof[y == 1] >= np.nextafter(t, 1.0)) < 0.9
        # Test rates at that threshold, on the eval's test scores.
        test_p = sigmoid(fitted["scores"][:, j])
        ty = test_y[:, j] == 1
        assert op.test.sensitivity == pytest.approx(np.mean(test_p[ty] >= t))
        assert op.test.specificity == pytest.approx(np.mean(test_p[~ty] < t))
    # Another target moves the threshold: a lower target, a higher threshold.
    low, _, _, _ = _fit(fitted["train_z"], train_y, test_y, fitted["test_z"], target=0.5)
    assert low.operating_points["a"].threshold > heads.operating_points["a"].threshold


def test_one_c_still_gets_out_of_fold_scores_and_one_positive_in_sample_ones() -> None:
    from vlcd_dist.evaluation.heads import CHOSEN_IN_SAMPLE, operating_point
    from vlcd_dist.evaluation.probes import out_of_fold_scores, stratified_folds

    z, y = _data(4, 60)
    x, task = l2_normalize(z), y[:, 0]
    probe = fit_probe(x, task, [0.3], FOLDS, SEED)
    assert probe.train_folds == FOLDS and probe.c == 0.3
    splits = stratified_folds(task, FOLDS, SEED)
    np.testing.assert_array_equal(probe.train_scores, out_of_fold_scores(x, task, 0.3, splits))
    # One positive: no stratified folds, so the threshold is chosen on in-sample scores.
    one = np.zeros(60, int)
    one[5] = 1
    probe = fit_probe(x, one, CS, FOLDS, SEED)
    assert probe.train_folds == 0 and stratified_folds(one, FOLDS, SEED) == []
    np.testing.assert_array_equal(probe.train_scores, probe.scores(x))
    op = operating_point(probe, one, probe.scores(x[:10]), one[:10], 0.9)
    assert op.chosen_on == CHOSEN_IN_SAMPLE and op.threshold == sigmoid(probe.train_scores[5])
    assert op.train.sensitivity == 1.0


def test_heads_import_and_apply_without_torch_or_sklearn(fitted, tmp_path) -> None:
    path = fitted["heads"].save(tmp_path, "m")
    np.save(tmp_path / "z.npy", fitted["test_z"])
    code = (
        "import sys, json, numpy as np\n"
        "from vlcd_dist.evaluation.heads import TaskHeads\n"
        f"h = TaskHeads.load({str(path)!r})\n"
        f"z = np.load({str(tmp_path / 'z.npy')!r})\n"
        "out = [h.logits(z).tolist(), h.probabilities(z).tolist(), h.zero_shot(z).tolist()]\n"
        "print(json.dumps([sorted(m for m in ('torch', 'sklearn') if m in sys.modules), out]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=_env()
    )
    loaded, (logits, _, zero_shot) = json.loads(result.stdout)
    assert loaded == []
    np.testing.assert_allclose(logits, fitted["scores"], rtol=1e-5, atol=1e-5)
    assert np.shape(zero_shot) == (40, 2)


def _env() -> dict[str, str]:
    """This process's environment with the package under test first on the path."""
    root = str(Path(__file__).resolve().parents[1])
    return os.environ | {"PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}


def test_permuting_the_test_labels_leaves_threshold_and_c_unchanged(fitted) -> None:
    perm = np.random.default_rng(3).permutation(len(fitted["test_y"]))
    shuffled = fitted["test_y"][perm]
    other, _, _, _ = _fit(fitted["train_z"], fitted["train_y"], shuffled, fitted["test_z"])
    heads = fitted["heads"]
    assert other.c == heads.c
    np.testing.assert_array_equal(other.weight, heads.weight)
    for task in TASKS:
        a, b = heads.operating_points[task], other.operating_points[task]
        assert (a.threshold, a.train) == (b.threshold, b.train)
    # Only the test rates see the test labels.
    assert any(heads.operating_points[t].test != other.operating_points[t].test for t in TASKS[:2])


def test_a_bad_heads_file_is_refused_naming_the_file_and_field(fitted, tmp_path) -> None:
    path = fitted["heads"].save(tmp_path, "m")
    good = json.loads(path.read_text())

    def refused(data: object, match: str) -> None:
        path.write_text(data if isinstance(data, str) else json.dumps(data))
        with pytest.raises(HeadsError, match=re.escape(str(path)) + ".*" + match):
            TaskHeads.load(path)

    refused("{not json", "cannot read the heads JSON")
    refused(good | {"format": "vlcd-heads/2"}, "\"format\" is 'vlcd-heads/2'")
    refused([1, 2], '"format" is None')
    refused({k: v for k, v in good.items() if k != "embed_dim"}, '"embed_dim" is missing')
    refused(good | {"embed_dim": "6"}, "\"embed_dim\" is '6', expected a JSON integer")
    bad = json.loads(json.dumps(good))
    bad["operating_points"]["b"]["threshold"] = "high"
    refused(bad, "\"operating_points.b.threshold\" is 'high', expected a number or null")
    bad = json.loads(json.dumps(good))
    del bad["operating_points"]["a"]["train"]["sensitivity"]
    refused(bad, '"operating_points.a.train.sensitivity" is missing')
    bad = json.loads(json.dumps(good))
    bad["probe"]["c"] = {"a": 0.1}
    refused(bad, '"probe.c.b" is missing')
    # The tensors: their shapes must match the JSON, and the file must be whole.
    path.write_text(json.dumps(good | {"embed_dim": 5}))
    tensors = tmp_path / "m.safetensors"
    with pytest.raises(
        HeadsError,
        match=re.escape(f"{tensors}: tensor 'scaler_mean' is shape [6], expected [5] (from {path}"),
    ):
        TaskHeads.load(path)
    path.write_text(json.dumps(good))
    tensors.write_bytes(tensors.read_bytes()[:-8])
    with pytest.raises(HeadsError, match=re.escape(str(tensors)) + ".*truncated"):
        TaskHeads.load(path)
    tensors.unlink()
    with pytest.raises(HeadsError, match=re.escape(str(tensors)) + ": missing"):
        TaskHeads.load(path)


@pytest.mark.parametrize(
    ("bad", "expected"),
    [("0", "in (0, 1]"), ("1.5", "in (0, 1]"), ("-0.1", "in (0, 1]"), ("nan", "a number")],
)
def test_operating_sensitivity_must_be_in_zero_one(bad: str, expected: str) -> None:
    with pytest.raises(
        ConfigError, match=re.escape("eval.operating_sensitivity=") + ".*" + re.escape(expected)
    ):
        load_config(None, [f"eval.operating_sensitivity={bad}"])


def test_operating_sensitivity_defaults_to_0_9_and_accepts_one() -> None:
    assert load_config(None).eval.operating_sensitivity == 0.9
    assert load_config(None, ["eval.operating_sensitivity=1"]).eval.operating_sensitivity == 1.0


# --- a real tiny `vlcd eval` ------------------------------------------------------------------


@pytest.fixture(scope="module")
def prompted_recipe(tmp_path_factory, placenta_shards, natural_shards) -> Path:
    """The tiny recipe with zero-shot prompts for two of the placenta tasks."""
    recipe = yaml.safe_load(TINY_RECIPE.format(placenta=placenta_shards, natural=natural_shards))
    recipe["eval"]["zero_shot_prompts"] = {
        "meconium": ["green meconium staining", "membranes of normal colour"],
        "chorioamnionitis": ["a cloudy, opaque fetal surface", "a shiny, transparent surface"],
    }
    path = tmp_path_factory.mktemp("recipe") / "prompted.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def eval_sets(tiny_pipeline) -> list[str]:
    return [
        f"teacher.checkpoint={tiny_pipeline['teacher']}",
        f"eval.students_from={tiny_pipeline['predistill']}",
    ]


@pytest.fixture(scope="module")
def tiny_eval(tmp_path_factory, prompted_recipe, eval_sets) -> Path:
    out = tmp_path_factory.mktemp("heads") / "eval"
    sets = " ".join(f"--set {s}" for s in eval_sets)
    assert run_cli(f"eval --config {prompted_recipe} --out {out} {sets}") == 0
    return out


def test_eval_writes_heads_of_every_model_before_report_json(tiny_eval, placenta_shards) -> None:
    report = json.loads((tiny_eval / "report.json").read_text())
    names = sorted(p.name for p in (tiny_eval / "heads").iterdir())
    assert names == sorted(f"{m}.{ext}" for m in MODELS for ext in ("json", "safetensors"))
    # report.json stays the last file written, the marker of a finished eval.
    finished = (tiny_eval / "report.json").stat().st_mtime_ns
    assert all((tiny_eval / "heads" / n).stat().st_mtime_ns <= finished for n in names)
    # The validation rows come out of the train split; the probes never saw them.
    sizes = json.loads((Path(placenta_shards) / "sizes.json").read_text())
    train = sum(n for name, n in sizes.items() if name.startswith("placenta-train-"))
    assert report["samples"]["train"] + report["samples"]["val"] == train
    assert report["samples"]["val"] > 0 and report["samples"]["train"] > report["samples"]["val"]
    for m in MODELS:
        r = report["models"][m]
        assert sorted(r["val_auc"]) == sorted(report["tasks"])
        if m == "teacher":
            assert r["vs_teacher"] == {}
        else:
            assert sorted(r["vs_teacher"]) == sorted([*report["tasks"], "mean"])
            mean = r["vs_teacher"]["mean"]
            assert mean["delta"] == pytest.approx(
                r["auc_mean"] - report["models"]["teacher"]["auc_mean"], abs=1e-12
            )
            assert mean["ci"][0] <= mean["delta"] <= mean["ci"][1]
    assert "## Students vs teacher (paired)" in (tiny_eval / "report.md").read_text()
    for m in MODELS:
        heads = TaskHeads.load(tiny_eval / "heads" / f"{m}.json")
        assert heads.model == m and heads.tasks == report["tasks"]
        assert heads.samples == report["samples"]
        assert heads.embed_dim == heads.weight.shape[1]
        # The C the report shows (NaN there for a one-class task, null here).
        for t, c in report["models"][m]["probe_c"].items():
            assert (heads.c[t] is None and math.isnan(c)) or heads.c[t] == c
        assert heads.prompts is not None
        assert heads.prompts.tasks == ["meconium", "chorioamnionitis"]
        chosen = [op for op in heads.operating_points.values() if op.threshold is not None]
        assert len(chosen) >= 2  # the tiny train split has both classes of most tasks
        for op in chosen:
            assert op.chosen_on == CHOSEN_ON and op.target_sensitivity == 0.9
            assert op.train.sensitivity >= 0.9 and 0 < op.threshold < 1


def test_stored_heads_give_the_eval_aucs(tiny_eval, prompted_recipe, eval_sets, tmp_path) -> None:
    from vlcd_dist.train.eval_stage import Evaluator

    report = json.loads((tiny_eval / "report.json").read_text())
    cfg = load_config(prompted_recipe, [*eval_sets, f"run.out={tmp_path / 'again'}"])
    evaluator = Evaluator(cfg)
    models = evaluator.models()
    # The eval's own code path: the same loader, encoders and gathering.
    test = evaluator.extract(models, "test")
    test_f, test_y, tasks = test.features, test.labels, test.tasks
    assert tasks == report["tasks"]
    finite = 0
    for m in MODELS:
        heads = TaskHeads.load(tiny_eval / "heads" / f"{m}.json")
        logits = heads.logits(test_f[m])
        for j, t in enumerate(tasks):
            want = report["models"][m]["auc"][t]
            got = auc_roc(test_y[:, j], logits[:, j])
            assert (math.isnan(got) and math.isnan(want)) or abs(got - want) <= 1e-9, (m, t)
            finite += not math.isnan(want)
        zs = heads.zero_shot(test_f[m])
        for j, t in enumerate(heads.prompts.tasks):
            want = report["zero_shot"]["models"][m]["auc"][t]
            got = auc_roc(test_y[:, tasks.index(t)], zs[:, j])
            assert abs(got - want) <= 1e-9, (m, t)
    assert finite >= len(MODELS) * 2  # the comparison saw real AUCs


def test_eval_threshold_and_c_ignore_the_test_labels(
    tiny_eval, prompted_recipe, eval_sets, tmp_path, caplog
) -> None:
    from vlcd_dist.train.eval_stage import Evaluator

    cfg = load_config(prompted_recipe, [*eval_sets, f"run.out={tmp_path / 'permuted'}"])
    evaluator = Evaluator(cfg)
    models = evaluator.models()
    prompts = evaluator.zero_shot_prompts(["meconium", "chorioamnionitis"])
    train = evaluator.extract(models, "train")
    test = evaluator.extract(models, "test")
    tasks = test.tasks
    perm = np.random.default_rng(0).permutation(len(test.labels))
    permuted = dataclasses.replace(test, labels=test.labels[perm])
    with caplog.at_level(logging.INFO, logger="vlcd_dist.eval"):
        again = evaluator.report(models, train, permuted, prompts=prompts)
    assert f"of 3 models in {tmp_path / 'permuted' / 'heads'}" in caplog.text
    changed = 0
    for m in MODELS:
        kept = TaskHeads.load(tiny_eval / "heads" / f"{m}.json")
        other = TaskHeads.load(tmp_path / "permuted" / "heads" / f"{m}.json")
        assert other.c == kept.c
        np.testing.assert_array_equal(other.weight, kept.weight)
        for t in tasks:
            a, b = kept.operating_points[t], other.operating_points[t]
            assert (a.threshold, a.train) == (b.threshold, b.train), (m, t)
            changed += a.test != b.test
    assert changed  # the test rates did see the permuted labels
    # The validation AUCs (what runs are chosen on) and the probes' C ignore them too, while
    # the test AUCs do move.
    kept_report = json.loads((tiny_eval / "report.json").read_text())
    for m in MODELS:
        r, k = again.models[m], kept_report["models"][m]
        assert r.val_auc == pytest.approx(k["val_auc"], nan_ok=True) and r.val_auc
        assert r.probe_c == pytest.approx(k["probe_c"], nan_ok=True)
    assert any(again.models[m].auc_mean != kept_report["models"][m]["auc_mean"] for m in MODELS)

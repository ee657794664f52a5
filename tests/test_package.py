"""`vlcd package` on a real tiny eval: the timm folder rebuilds in plain timm, the fp32 ONNX
model reproduces the eval's AUCs through `vlcd predict`, the int8 model is scored, the files
and the deployment record say what they hold, and a failure leaves no half package."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import TINY_RECIPE, run_cli
from test_predict import run_without_torch

from vlcd_dist.evaluation.metrics import auc_roc

PROMPTS = {
    "meconium": {"positive": ["meconium staining"], "negative": ["membranes of normal colour"]},
    "fir": {"positive": ["acute funisitis"], "negative": ["a normal umbilical cord"]},
}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, placenta_shards, natural_shards, tiny_pipeline) -> Path:
    """A tiny `vlcd eval` of the session's teacher and predistilled students, with prompts."""
    recipe = yaml.safe_load(TINY_RECIPE.format(placenta=placenta_shards, natural=natural_shards))
    recipe["eval"]["zero_shot_prompts"] = PROMPTS
    root = tmp_path_factory.mktemp("package")
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = root / "eval"
    assert (
        run_cli(
            f"eval --config {path} --out {out} "
            f"--set teacher.checkpoint={tiny_pipeline['teacher']} "
            f"--set eval.students_from={tiny_pipeline['predistill']}"
        )
        == 0
    )
    return out


@pytest.fixture(scope="module")
def packaged(evaluated) -> Path:
    out = evaluated.parent / "package"
    assert (
        run_cli(
            f"package {evaluated} --out {out} --calibration-images 16 --latency-iters 2 "
            "--latency-threads 1 2"
        )
        == 0
    )
    return out


def test_every_model_folder_holds_what_the_issue_lists(evaluated, packaged) -> None:
    report = json.loads((evaluated / "report.json").read_text())
    assert sorted(p.name for p in packaged.iterdir() if p.is_dir()) == sorted(report["models"])
    assert not list(packaged.glob(".*.partial"))
    for name in report["models"]:
        folder = packaged / name
        files = {p.name for p in folder.iterdir()}
        assert files == {
            "model.safetensors",
            "config.json",
            "heads.json",
            "heads.safetensors",
            "model.onnx",
            "model.int8.onnx",
            "package.json",
            "README.md",
        }
        package = json.loads((folder / "package.json").read_text())
        assert package["format"] == "vlcd-package/1"
        assert package["tasks"] == report["tasks"]
        assert package["outputs"] == ["embedding", "logits", "probabilities", "zero_shot"]
        assert package["zero_shot_tasks"] == ["meconium", "fir"]
        assert (package["input"]["height"], package["input"]["width"]) == (32, 32)
        # The recorded hashes are of the files as they are.
        from vlcd_dist.deploy.export import file_sha256

        for fname, meta in package["files"].items():
            assert meta["sha256"] == file_sha256(folder / fname), fname
        # The heads are the eval's, byte for byte.
        for suffix in (".json", ".safetensors"):
            assert (folder / f"heads{suffix}").read_bytes() == (
                evaluated / "heads" / f"{name}{suffix}"
            ).read_bytes()
        card = (folder / "README.md").read_text()
        assert "Labels came from reports" in card
        assert f"{package['metrics']['auc']['fp32']['mean']:.3f}" in card
        assert f"{package['metrics']['auc']['int8']['mean']:.3f}" in card
        # 32x32 int8 is 3-4x smaller than fp32 on disk, whatever its accuracy.
        sizes = package["metrics"]["size_bytes"]
        assert sizes["onnx_int8"] < sizes["onnx_fp32"] / 2


def test_deployment_record_scores_fp32_like_the_eval_and_reports_int8(evaluated, packaged):
    report = json.loads((evaluated / "report.json").read_text())
    record = json.loads((packaged / "deployment.json").read_text())
    assert record["format"] == "vlcd-deployment/1"
    assert record["latency"]["threads"] == [1, 2]
    assert list(record["models"])[-1] == "teacher"  # students first, the reference last
    for name, entry in record["models"].items():
        for task, auc in report["models"][name]["auc"].items():
            if np.isfinite(auc):
                assert entry["auc"]["fp32"][task] == pytest.approx(auc, abs=1e-3), (name, task)
                assert 0.0 <= entry["auc"]["int8"][task] <= 1.0
        lo, hi = entry["ci"]["int8"]["mean"]
        assert lo <= hi
        assert set(entry["latency_ms"]) == {"1", "2"}
        for row in entry["latency_ms"].values():
            assert set(row) == {"eager", "onnx_fp32", "onnx_int8"}
            assert all(v > 0 for v in row.values())
        assert entry["verify"]["fp32_max_diff"] <= 1e-4
        assert entry["verify"]["int8_min_embedding_cosine"] > 0.5


def test_the_timm_folder_rebuilds_in_plain_timm_with_equal_features(evaluated, packaged):
    import timm

    from vlcd_dist.models.exported import load_exported_student

    report = json.loads((evaluated / "report.json").read_text())
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for name, r in report["models"].items():
        if r["kind"] != "student":
            continue
        folder = packaged / name
        config = json.loads((folder / "config.json").read_text())
        d = config["num_classes"]
        ours, _ = load_exported_student(r["weights"])
        with torch.inference_mode():
            expected = ours.eval()(x)
            by_folder = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()(x)
            by_file = timm.create_model(
                config["architecture"],
                pretrained=True,
                pretrained_cfg_overlay={
                    "file": str(folder / "model.safetensors"),
                    "num_classes": d,
                },
                num_classes=d,
            ).eval()(x)
        assert expected.shape == (3, d)
        torch.testing.assert_close(by_folder, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(by_file, expected, atol=1e-5, rtol=0)
        package = json.loads((folder / "package.json").read_text())
        assert package["timm"]["plain"] is True


def _test_images(shards: Path, folder: Path) -> dict[str, dict[str, int]]:
    """The test split's photographs as files (their bytes as stored) and their labels."""
    from vlcd_dist.data.stream import iter_tar, resolve_shards

    folder.mkdir(parents=True, exist_ok=True)
    labels = {}
    for url in resolve_shards(str(shards), "test").urls:
        for raw in iter_tar(url):
            name = f"{raw['__key__']}.jpg"
            (folder / name).write_bytes(raw["jpg"])
            labels[name] = json.loads(raw["json"])["labels"]
    return labels


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
def test_predict_on_the_test_photographs_reproduces_the_package_figures(
    evaluated, packaged, placenta_shards, tmp_path, int8
) -> None:
    report = json.loads((evaluated / "report.json").read_text())
    record = json.loads((packaged / "deployment.json").read_text())
    labels = _test_images(placenta_shards, tmp_path / "photos")
    name = "tiny_mobilenetv3"
    out = tmp_path / "predictions.csv"
    args = f"predict --model {packaged / name} {tmp_path / 'photos'} --out {out}"
    assert run_cli(args + (" --int8" if int8 else "")) == 0
    rows = _csv(out)
    assert len(rows) == len(labels) == report["samples"]["test"]
    heads = json.loads((packaged / name / "heads.json").read_text())
    for task in report["tasks"]:
        y = np.array([labels[Path(r["image"]).name][task] for r in rows])
        p = np.array([float(r[f"{task}_probability"]) for r in rows])
        flags = np.array([int(r[f"{task}_flag"]) for r in rows])
        threshold = heads["operating_points"][task]["threshold"]
        np.testing.assert_array_equal(flags, (p >= threshold).astype(int))
        reference = record["models"][name]["auc"]["int8" if int8 else "fp32"][task]
        if not int8:
            reference = report["models"][name]["auc"][task]  # the eval's own figure
        if np.isfinite(reference):
            assert auc_roc(y, p) == pytest.approx(reference, abs=1e-3), task
    assert {"zero_shot_meconium", "zero_shot_fir"} <= set(rows[0])
    if not int8:
        # The same package and photographs where torch (and timm, sklearn, ...) cannot be
        # imported: the same rows.
        code = f"""
        from vlcd_dist.cli import main
        print("rc", main(["predict", "--model", {str(packaged / name)!r},
                          {str(tmp_path / "photos")!r}, "--out", "no_torch.csv"]))
        print("loaded", sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
        """
        run = run_without_torch(code, tmp_path)
        assert run.returncode == 0, run.stderr
        assert "rc 0" in run.stdout and "loaded []" in run.stdout, run.stdout
        assert _csv(tmp_path / "no_torch.csv") == rows


def test_a_failed_model_leaves_no_half_package(evaluated, tmp_path, monkeypatch) -> None:
    from vlcd_dist.deploy import package

    def broken(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(package, "quantize_int8", broken)
    out = tmp_path / "pkg"
    with pytest.raises(OSError, match="No space"):
        package.package_run(
            evaluated, out, ["tiny_resnet"], package.PackageSettings(latency_iters=1)
        )
    assert not (out / "tiny_resnet").exists()
    assert not (out / "deployment.json").exists()


def test_package_refuses_a_folder_without_an_eval(tmp_path, capsys) -> None:
    assert run_cli(f"package {tmp_path}") == 2
    assert "holds no finished evaluation" in capsys.readouterr().err


def test_packaging_one_model_again_keeps_the_others_entries(evaluated, packaged) -> None:
    before = json.loads((packaged / "deployment.json").read_text())
    assert (
        run_cli(
            f"package {evaluated} --out {packaged} --models tiny_resnet --calibration-images 8 "
            "--latency-iters 1 --latency-threads 1 2"
        )
        == 0
    )
    after = json.loads((packaged / "deployment.json").read_text())
    assert list(after["models"]) == list(before["models"])
    assert after["models"]["teacher"] == before["models"]["teacher"]
    assert after["models"]["tiny_mobilenetv3"] == before["models"]["tiny_mobilenetv3"]


def test_a_student_at_its_own_size_from_relative_paths_without_a_bootstrap(
    tmp_path, monkeypatch, placenta_shards, natural_shards, tiny_pipeline
) -> None:
    """A student trained at 48x48 evaluated on 32x32 data (it resizes inside) is packaged at
    48x48; the eval ran elsewhere with relative paths; no bootstrap means no intervals."""
    from vlcd_dist.models import create_student
    from vlcd_dist.models.exported import export_student

    root = tmp_path / "where_eval_ran"
    root.mkdir()
    torch.manual_seed(0)
    student = create_student("tiny_mobilenetv3", embed_dim=64, image_size=(48, 48)).eval()
    export_student(student, root / "students", {"name": "tiny_mobilenetv3"}, {"stage": "test"})
    recipe = root / "recipe.yaml"
    recipe.write_text(TINY_RECIPE.format(placenta=placenta_shards, natural=natural_shards))
    monkeypatch.chdir(root)
    assert (
        run_cli(
            f"eval --config recipe.yaml --out eval --set teacher.checkpoint={tiny_pipeline['teacher']} "
            "--set eval.students_from=students --set students=[tiny_mobilenetv3] "
            "--set eval.bootstrap=0 --set eval.include_teacher=false"
        )
        == 0
    )
    report = json.loads((root / "eval" / "report.json").read_text())
    assert report["models"]["tiny_mobilenetv3"]["resizes_to"] == [48, 48]
    assert not Path(report["models"]["tiny_mobilenetv3"]["weights"]).is_absolute()
    monkeypatch.chdir(tmp_path)  # somewhere else: the eval's relative paths are found anyway
    out = tmp_path / "pkg"
    assert (
        run_cli(
            f"package {root / 'eval'} --out {out} --calibration-images 8 --latency-iters 1 "
            "--latency-threads 1"
        )
        == 0
    )
    package = json.loads((out / "tiny_mobilenetv3" / "package.json").read_text())
    assert (package["input"]["height"], package["input"]["width"]) == (48, 48)
    assert package["provenance"]["eval_image_size"] == [32, 32]
    assert (
        package["timm"]["load"]
        == 'timm.create_model("local-dir:tiny_mobilenetv3", pretrained=True)'
    )
    record = json.loads((out / "deployment.json").read_text())
    entry = record["models"]["tiny_mobilenetv3"]
    assert set(entry["ci"]["fp32"]) == {*report["tasks"], "mean"}
    assert all(v is None for v in entry["ci"]["fp32"].values())
    labels = _test_images(placenta_shards, tmp_path / "photos")
    csv_out = tmp_path / "p.csv"
    args = f"predict --model {out / 'tiny_mobilenetv3'} {tmp_path / 'photos'} --out {csv_out}"
    assert run_cli(args) == 0
    rows = _csv(csv_out)
    assert len(rows) == len(labels)
    assert all(0.0 <= float(r["fir_probability"]) <= 1.0 for r in rows)

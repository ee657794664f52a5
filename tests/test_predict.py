"""``vlcd predict``: a hand-made package folder (an ONNX model built with onnx.helper doing the
heads math of the spec on a linear "image tower"), predicted from folders, files and manifests,
checked against numpy on torchvision's eval preprocessing; bad images listed and skipped; and
the whole command run in a process where torch cannot be imported."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO
from PIL import Image

from vlcd_dist.cli import main as vlcd
from vlcd_dist.cli import predict as cli_predict
from vlcd_dist.cli.main import missing_module_message
from vlcd_dist.data.imaging import IMAGENET_MEAN, IMAGENET_STD, ResizeCover, normalised_array
from vlcd_dist.data.transforms import eval_transform
from vlcd_dist.deploy import predict as predict_mod
from vlcd_dist.errors import VlcdError

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

H, W, D = 12, 16, 6
TASKS = ["meconium", "chorioamnionitis", "infarct"]
ZS_TASKS = ["meconium", "infarct"]


# ---------------------------------------------------------------------------------------------
# A package folder made by hand


def heads_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights of the tower and heads: tower [3*H*W, D], scaler_mean/scale [D],
    weight [T, D], bias [T], zero_shot_positive/negative [T', D] (unit rows)."""
    rng = np.random.default_rng(seed)

    def unit(n: int) -> np.ndarray:
        v = rng.normal(size=(n, D))
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    return {
        "tower": rng.normal(0, 0.05, size=(3 * H * W, D)).astype(np.float32),
        "scaler_mean": rng.normal(0, 0.05, size=D).astype(np.float32),
        "scaler_scale": rng.uniform(0.2, 0.5, size=D).astype(np.float32),
        "weight": rng.normal(0, 0.6, size=(len(TASKS), D)).astype(np.float32),
        "bias": rng.normal(0, 0.5, size=len(TASKS)).astype(np.float32),
        "zero_shot_positive": unit(len(ZS_TASKS)).astype(np.float32),
        "zero_shot_negative": unit(len(ZS_TASKS)).astype(np.float32),
    }


def write_onnx(path: Path, a: dict[str, np.ndarray]) -> None:
    """images [B, 3, H, W] -> embedding z = flatten @ tower [B, D]; n = z / |z|;
    logits = ((n - mean) / scale) @ weight.T + bias [B, T]; probabilities = sigmoid(logits);
    zero_shot = n @ pos.T - n @ neg.T [B, T']."""
    inits = [
        numpy_helper.from_array(a["tower"], "tower"),
        numpy_helper.from_array(a["scaler_mean"], "scaler_mean"),
        numpy_helper.from_array(a["scaler_scale"], "scaler_scale"),
        numpy_helper.from_array(np.ascontiguousarray(a["weight"].T), "weight_t"),
        numpy_helper.from_array(a["bias"], "bias"),
        numpy_helper.from_array(np.ascontiguousarray(a["zero_shot_positive"].T), "pos_t"),
        numpy_helper.from_array(np.ascontiguousarray(a["zero_shot_negative"].T), "neg_t"),
    ]
    nodes = [
        helper.make_node("Flatten", ["images"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "tower"], ["embedding"]),
        helper.make_node("ReduceL2", ["embedding"], ["norm"], axes=[1], keepdims=1),
        helper.make_node("Div", ["embedding", "norm"], ["unit"]),
        helper.make_node("Sub", ["unit", "scaler_mean"], ["centred"]),
        helper.make_node("Div", ["centred", "scaler_scale"], ["scaled"]),
        helper.make_node("MatMul", ["scaled", "weight_t"], ["raw_logits"]),
        helper.make_node("Add", ["raw_logits", "bias"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["probabilities"]),
        helper.make_node("MatMul", ["unit", "pos_t"], ["cos_pos"]),
        helper.make_node("MatMul", ["unit", "neg_t"], ["cos_neg"]),
        helper.make_node("Sub", ["cos_pos", "cos_neg"], ["zero_shot"]),
    ]

    def out(name: str, width: int) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["B", width])

    graph = helper.make_graph(
        nodes,
        "tiny_package",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["B", 3, H, W])],
        [
            out("embedding", D),
            out("logits", len(TASKS)),
            out("probabilities", len(TASKS)),
            out("zero_shot", len(ZS_TASKS)),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def make_package(folder: Path, arrays: dict[str, np.ndarray], thresholds: dict[str, float]):
    """One model folder as spec14 describes it: package.json, heads.json, model.onnx and a
    model.int8.onnx (here the same fp32 graph, unless a test replaces it)."""
    folder.mkdir(parents=True, exist_ok=True)
    package = {
        "format": "vlcd-package/1",
        "name": "tiny_student",
        "kind": "student",
        "arch": "linear",
        "embed_dim": D,
        "tasks": TASKS,
        "input": {
            "name": "images",
            "height": H,
            "width": W,
            "layout": "NCHW",
            "dtype": "float32",
            "colour_order": "RGB",
            "value_range": [0, 1],
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "resize": "cover-then-centre-crop",
            "interpolation": "bilinear",
        },
        "outputs": ["embedding", "logits", "probabilities", "zero_shot"],
        "onnx": {"fp32": "model.onnx", "int8": "model.int8.onnx"},
        "provenance": {"ignored": True},
    }
    point = {"target_sensitivity": 0.9, "chosen_on": "out-of-fold train probabilities"}
    heads = {
        "format": "vlcd-heads/1",
        "model": "tiny_student",
        "embed_dim": D,
        "tasks": TASKS,
        "probe": {"c": dict.fromkeys(TASKS, 1.0), "cv_folds": 3, "seed": 0},
        "operating_points": {t: {**point, "threshold": thresholds[t]} for t in TASKS},
        "zero_shot": {
            "tasks": ZS_TASKS,
            "prompts": {t: {"positive": ["p"], "negative": ["n"]} for t in ZS_TASKS},
        },
        "samples": {"train": 10, "test": 5},
    }
    (folder / "package.json").write_text(json.dumps(package))
    (folder / "heads.json").write_text(json.dumps(heads))
    write_onnx(folder / "model.onnx", arrays)
    write_onnx(folder / "model.int8.onnx", arrays)
    return folder


_IMAGENET = (
    np.reshape(IMAGENET_MEAN, (3, 1, 1)).astype(np.float32),
    np.reshape(IMAGENET_STD, (3, 1, 1)).astype(np.float32),
)


def reference(paths: list[Path], a: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities [N, T] and zero-shot scores [N, T'] in float64 numpy, on the images as
    evaluation preprocesses them: PIL draft at (W, H), RGB, torchvision's eval_transform."""
    transform = eval_transform((H, W))
    xs = []
    for p in paths:
        img = Image.open(p)
        img.draft("RGB", (W, H))
        pixels = transform(img.convert("RGB")).numpy()  # [0, 1]; then the sidecar's mean/std
        xs.append((pixels - _IMAGENET[0]) / _IMAGENET[1])
    x = np.stack(xs).reshape(len(paths), -1).astype(np.float64)
    z = x @ a["tower"].astype(np.float64)
    n = z / np.linalg.norm(z, axis=1, keepdims=True)
    scaled = (n - a["scaler_mean"]) / a["scaler_scale"]
    logits = scaled @ a["weight"].T.astype(np.float64) + a["bias"]
    zero_shot = n @ a["zero_shot_positive"].T - n @ a["zero_shot_negative"].T
    return 1 / (1 + np.exp(-logits)), zero_shot


def photo(path: Path, seed: int, size: tuple[int, int] = (64, 48)) -> Path:
    """A smooth random colour photograph (W, H) = size, saved by suffix (JPEG or PNG)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    a, b, c = rng.uniform(-1, 1, size=(3, 3))
    img = np.stack([128 + 100 * np.sin(3 * (a[i] * xx + b[i] * yy) + c[i]) for i in range(3)], -1)
    img += rng.normal(0, 8, size=img.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=92)
    return path


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


COLUMNS = [
    "meconium_probability",
    "meconium_flag",
    "chorioamnionitis_probability",
    "chorioamnionitis_flag",
    "infarct_probability",
    "infarct_flag",
    "zero_shot_meconium",
    "zero_shot_infarct",
]


@pytest.fixture
def photos(tmp_path) -> list[Path]:
    """Seven photographs in a folder tree: JPEGs of two sizes (one a portrait), and a PNG."""
    root = tmp_path / "photos"
    paths = [photo(root / f"a_{i}.jpg", i) for i in range(3)]
    paths += [photo(root / "sub" / f"b_{i}.JPG", 10 + i, (40, 90)) for i in range(3)]
    paths.append(photo(root / "sub" / "deeper" / "c.png", 20, (33, 21)))
    return sorted(paths, key=lambda p: (len(p.relative_to(root).parts), str(p)))


def thresholds_between(probabilities: np.ndarray) -> dict[str, float]:
    """meconium: halfway between two middle probabilities (flags of both kinds); chorio: 0
    (all flagged); infarct: 1 (none)."""
    p = np.sort(probabilities[:, 0])
    k = len(p) // 2
    assert p[k] - p[k - 1] > 1e-4, "the test's images give tied probabilities"
    return {"meconium": float(p[k - 1] + p[k]) / 2, "chorioamnionitis": 0.0, "infarct": 1.0}


# ---------------------------------------------------------------------------------------------
# Preprocessing


@pytest.mark.parametrize("size", [(12, 16), (31, 17), (224, 224)])
def test_normalised_array_equals_torchvision_eval_transform(size):
    rng = np.random.default_rng(size[0])
    for shape in [(50, 70), (90, 40), (size[0], size[1])]:
        img = Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8))
        ours = normalised_array(ResizeCover(size)(img))
        # eval_transform gives [0, 1]; the model's normalisation (ImageNet's here) follows.
        theirs = (eval_transform(size)(img).numpy() - _IMAGENET[0]) / _IMAGENET[1]
        assert ours.dtype == np.float32 and ours.shape == (3, *size) == theirs.shape
        assert np.abs(ours - theirs).max() <= 1e-6
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.1, 2.0)
    ours = normalised_array(img, mean, std)
    expected = np.asarray(img, np.float64).transpose(2, 0, 1) / 255 - np.reshape(mean, (3, 1, 1))
    assert np.abs(ours - expected / np.reshape(std, (3, 1, 1))).max() <= 1e-5


def test_cli_help_states_the_numbers_predict_uses():
    assert cli_predict.MIN_SIDE == predict_mod.MIN_SIDE
    assert cli_predict.IMAGE_SUFFIXES == predict_mod.IMAGE_SUFFIXES
    assert f"smaller than {predict_mod.MIN_SIDE} px" in cli_predict.PREDICT_DESCRIPTION


# ---------------------------------------------------------------------------------------------
# Predicting


def test_predict_matches_numpy_on_eval_preprocessing(tmp_path, photos, capsys):
    arrays = heads_arrays()
    probabilities, zero_shot = reference(photos, arrays)
    thresholds = thresholds_between(probabilities)
    model = make_package(tmp_path / "pkg" / "tiny_student", arrays, thresholds)
    out = tmp_path / "out" / "predictions.csv"
    rc = vlcd(["predict", "--model", str(model), str(tmp_path / "photos"), "--out", str(out)])
    assert rc == 0
    stdout = capsys.readouterr().out
    skipped = tmp_path / "out" / "predictions.skipped.csv"
    assert f"predicted 7 images, skipped 0 (see {skipped})" in stdout
    header, rows = read_csv(out)
    assert header == ["image", *COLUMNS]
    assert [r["image"] for r in rows] == [str(p) for p in photos]
    got_p = np.array([[float(r[f"{t}_probability"]) for t in TASKS] for r in rows])
    got_z = np.array([[float(r[f"zero_shot_{t}"]) for t in ZS_TASKS] for r in rows])
    assert np.abs(got_p - probabilities).max() < 1e-5
    assert np.abs(got_z - zero_shot).max() < 1e-5
    flags = np.array([[int(r[f"{t}_flag"]) for t in TASKS] for r in rows])
    expected_flags = np.stack([probabilities[:, i] >= thresholds[t] for i, t in enumerate(TASKS)])
    assert (flags == expected_flags.T).all()
    assert 0 < flags[:, 0].sum() < len(rows) and flags[:, 1].all() and not flags[:, 2].any()
    # 9 significant digits, so probabilities that differ do not print as ties.
    assert all(len(r["meconium_probability"].lstrip("0.").replace("e-", "")) >= 8 for r in rows)
    assert read_csv(skipped) == (["image", "reason"], [])

    # Batches of 2 (a last one of 1) and files given one by one give the same rows.
    again = tmp_path / "again.csv"
    files = [str(p) for p in photos]
    argv = ["predict", "--model", str(model), *files, "--out", str(again), "--batch-size", "2"]
    assert vlcd([*argv, "--threads", "1", "--quiet"]) == 0
    assert read_csv(again) == read_csv(out)


def test_manifest_rows_keep_their_columns_and_resolve_against_their_folder(tmp_path, photos):
    arrays = heads_arrays()
    model = make_package(tmp_path / "m", arrays, thresholds_between(reference(photos, arrays)[0]))
    root = tmp_path / "photos"
    manifest = tmp_path / "lists" / "manifest.csv"
    manifest.parent.mkdir()
    chosen = [photos[4], photos[0], photos[6]]
    lines = ["study_id,image,site"]
    lines += [f"S{i},{Path('..') / p.relative_to(tmp_path)},north" for i, p in enumerate(chosen)]
    lines += ["S9,../photos/gone.jpg,south", "S10,,south"]
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "manifest_predictions.csv"
    assert (
        vlcd(["predict", "--model", str(model), str(manifest), "--out", str(out), "--quiet"]) == 0
    )
    header, rows = read_csv(out)
    assert header == ["image", "study_id", "site", *COLUMNS]
    assert [r["study_id"] for r in rows] == ["S0", "S1", "S2"]
    assert [Path(r["image"]).resolve() for r in rows] == [p.resolve() for p in chosen]
    probabilities, _ = reference(chosen, arrays)
    got = np.array([[float(r[f"{t}_probability"]) for t in TASKS] for r in rows])
    assert np.abs(got - probabilities).max() < 1e-5
    _, skipped = read_csv(tmp_path / "manifest_predictions.skipped.csv")
    assert [s["reason"] for s in skipped] == ["no such file", "empty 'image' field in the manifest"]
    assert skipped[0]["image"] == str(manifest.parent / "../photos/gone.jpg")

    # With --images ROOT the paths start from ROOT instead.
    manifest.write_text("image\n" + "\n".join(str(p.relative_to(root)) for p in chosen) + "\n")
    argv = ["predict", "--model", str(model), str(manifest), "--images", str(root)]
    assert vlcd([*argv, "--out", str(out), "--quiet"]) == 0
    header, rows2 = read_csv(out)
    assert header == ["image", *COLUMNS]
    assert [r["image"] for r in rows2] == [str(p) for p in chosen]
    assert [r["meconium_probability"] for r in rows2] == [r["meconium_probability"] for r in rows]

    manifest.write_text("path\nx.jpg\n")
    with pytest.raises(VlcdError, match=r"manifest.csv: no 'image' column \(columns: \['path'\]\)"):
        predict_mod.predict(model, [manifest], out)


def test_corrupt_text_and_one_pixel_images_are_listed_and_skipped(tmp_path, photos, capsys):
    arrays = heads_arrays()
    model = make_package(tmp_path / "m", arrays, thresholds_between(reference(photos, arrays)[0]))
    folder = tmp_path / "mixed"
    good = [photo(folder / "good_1.jpg", 1), photo(folder / "good_2.jpg", 2)]
    whole = io.BytesIO()
    Image.open(photos[0]).save(whole, format="JPEG", quality=95)
    (folder / "corrupt.jpg").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    (folder / "notes.jpg").write_text("a text file, whatever its name says\n")
    (folder / "notes.txt").write_text("a text file named as one\n")
    (folder / ".DS_Store").write_bytes(b"\0\1")  # hidden: passed over, not listed
    Image.new("RGB", (1, 1), (200, 10, 10)).save(folder / "pixel.png")
    Image.new("RGB", (40, 7)).save(folder / "thin.png")  # 7 px high: also too small
    out = tmp_path / "p.csv"
    assert vlcd(["predict", "--model", str(model), str(folder), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"predicted 2 images, skipped 5 (see {tmp_path / 'p.skipped.csv'})" in captured.out
    assert "predict: 7/7 images (100%)" in captured.err  # the progress line
    _, rows = read_csv(out)
    assert [r["image"] for r in rows] == [str(p) for p in good]
    _, skipped = read_csv(tmp_path / "p.skipped.csv")
    reasons = {Path(s["image"]).name: s["reason"] for s in skipped}
    assert sorted(reasons) == ["corrupt.jpg", "notes.jpg", "notes.txt", "pixel.png", "thin.png"]
    assert reasons["notes.txt"] == "not an image file (.txt)"
    assert reasons["corrupt.jpg"].startswith("corrupt or truncated image (")
    assert reasons["notes.jpg"] == "not an image (PIL recognises no image format in it)"
    assert reasons["pixel.png"] == "too small: 1x1 px, needs at least 8 px on each side"
    assert reasons["thin.png"] == "too small: 40x7 px, needs at least 8 px on each side"

    # Nothing readable: exit status 2, the reasons still listed, no predictions file.
    for p in good:
        p.unlink()
    (folder / "thin.png").unlink()
    none = tmp_path / "none.csv"
    assert vlcd(["predict", "--model", str(model), str(folder), "--out", str(none)]) == 2
    err = capsys.readouterr().err
    assert "no image could be predicted: all 4 were skipped" in err
    assert not none.exists() and len(read_csv(tmp_path / "none.skipped.csv")[1]) == 4


def test_a_task_without_an_operating_point_gets_an_empty_flag(tmp_path, photos):
    # The eval writes a null threshold for a task whose train split has one class.
    arrays = heads_arrays()
    probabilities, _ = reference(photos, arrays)
    thresholds = {**thresholds_between(probabilities), "infarct": None}
    model = make_package(tmp_path / "m", arrays, thresholds)
    out = tmp_path / "p.csv"
    argv = ["predict", "--model", str(model), str(tmp_path / "photos"), "--out", str(out)]
    assert vlcd([*argv, "--quiet"]) == 0
    _, rows = read_csv(out)
    assert rows and all(r["infarct_flag"] == "" for r in rows)
    assert all(r["infarct_probability"] != "" for r in rows)
    assert {r["meconium_flag"] for r in rows} == {"0", "1"}


def test_int8_uses_the_int8_file(tmp_path, photos):
    arrays = heads_arrays()
    probabilities, _ = reference(photos, arrays)
    model = make_package(tmp_path / "m", arrays, thresholds_between(probabilities))
    shifted = {**arrays, "bias": arrays["bias"] + np.float32(1.5)}
    write_onnx(model / "model.int8.onnx", shifted)
    out = tmp_path / "int8.csv"
    argv = ["predict", "--model", str(model), str(tmp_path / "photos"), "--quiet"]
    assert vlcd([*argv, "--int8", "--out", str(out)]) == 0
    _, rows = read_csv(out)
    got = np.array([[float(r[f"{t}_probability"]) for t in TASKS] for r in rows])
    assert np.abs(got - reference(photos, shifted)[0]).max() < 1e-5
    assert np.abs(got - probabilities).min() > 1e-3  # not the fp32 model's numbers
    (model / "model.int8.onnx").unlink()
    with pytest.raises(VlcdError, match=r"model.int8.onnx is missing; rerun vlcd package, or drop"):
        predict_mod.predict(model, [tmp_path / "photos"], out, int8=True, progress=None)


def test_bad_model_folders_name_the_missing_file(tmp_path, photos):
    arrays = heads_arrays()
    thresholds = {"meconium": 0.5, "chorioamnionitis": 0.5, "infarct": 0.5}
    package = tmp_path / "package"
    model = make_package(package / "tiny_student", arrays, thresholds)
    (package / "deployment.json").write_text("{}")
    inputs, out = [tmp_path / "photos"], tmp_path / "x.csv"

    def fails(match: str, folder: Path = model) -> None:
        with pytest.raises(VlcdError, match=match):
            predict_mod.predict(folder, inputs, out, progress=None)
        assert not out.exists()

    fails(r"whole package holding tiny_student: give one model folder, e\.g\. --model", package)
    fails(r"no such folder", tmp_path / "nowhere")
    (model / "model.onnx").rename(model / "moved.onnx")
    fails(r"model\.onnx is missing; rerun vlcd package")
    (model / "moved.onnx").rename(model / "model.onnx")
    heads = json.loads((model / "heads.json").read_text())
    heads["operating_points"]["infarct"]["threshold"] = 1.5
    (model / "heads.json").write_text(json.dumps(heads))
    fails(r"heads\.json: operating_points\['infarct'\]\.threshold is 1\.5; expected a probab")
    heads["operating_points"]["infarct"].pop("threshold")
    (model / "heads.json").write_text(json.dumps(heads))
    fails(r"heads\.json: operating_points\['infarct'\] has no threshold")
    (model / "heads.json").unlink()
    fails(r"heads\.json is missing")
    (model / "package.json").unlink()
    fails(r"tiny_student: no package\.json; give one model folder written by `vlcd package")
    with pytest.raises(VlcdError, match=r"input .*nope: no such file or folder"):
        predict_mod.collect_inputs([tmp_path / "nope"])


def test_a_failure_midway_leaves_no_partial_file(tmp_path, photos, monkeypatch):
    arrays = heads_arrays()
    model = make_package(tmp_path / "m", arrays, thresholds_between(reference(photos, arrays)[0]))
    out = tmp_path / "p.csv"
    out.write_text("the previous run's file\n")
    calls = []
    real = predict_mod._rows

    def second_batch_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(predict_mod, "_rows", second_batch_fails)
    with pytest.raises(RuntimeError, match="killed"):
        predict_mod.predict(model, [tmp_path / "photos"], out, batch_size=3, progress=None)
    assert out.read_text() == "the previous run's file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "p.csv", "photos"]


# ---------------------------------------------------------------------------------------------
# Without torch

# The import names of the train extra (and deepspeed, onnx): an infer-only machine has none.
BLOCKED = (
    "torch", "torchvision", "timm", "sklearn", "scipy", "transformers", "accelerate",
    "deepspeed", "webdataset", "braceexpand", "skimage", "albumentations", "tqdm", "yaml",
    "safetensors", "jinja2", "matplotlib", "tensorboard", "pysbd", "onnx",
)  # fmt: skip

# A prelude that makes every import of BLOCKED fail, as on a machine with only the infer extra.
PRELUDE = textwrap.dedent(
    f"""
    import importlib.abc, sys
    BLOCKED = {BLOCKED!r}
    attempts = []

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                attempts.append(name)
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, Block())
    try:
        import torch
    except ImportError:
        pass
    else:
        raise SystemExit("the blocker let torch through")
    attempts.clear()
    """
)


def run_without_torch(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


def test_predict_runs_where_torch_cannot_be_imported(tmp_path, photos):
    arrays = heads_arrays()
    model = make_package(tmp_path / "m", arrays, thresholds_between(reference(photos, arrays)[0]))
    inside = tmp_path / "with_torch.csv"
    assert (
        vlcd(["predict", "--model", str(model), str(tmp_path / "photos"), "--out", str(inside)])
        == 0
    )
    code = f"""
    from vlcd_dist.cli import main
    import contextlib, io
    help_text = io.StringIO()
    with contextlib.redirect_stdout(help_text), contextlib.suppress(SystemExit):
        main(["predict", "--help"])
    assert "--int8" in help_text.getvalue(), help_text.getvalue()
    rc = main(["predict", "--model", {str(model)!r}, {str(tmp_path / "photos")!r},
               "--out", "no_torch.csv"])
    print("rc", rc)
    print("attempts", sorted(set(attempts)))
    print("loaded", sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
    """
    run = run_without_torch(code, tmp_path)
    assert run.returncode == 0, run.stderr
    assert "rc 0" in run.stdout and "predicted 7 images, skipped 0" in run.stdout
    assert "attempts []" in run.stdout, run.stdout  # nothing even tried to import them
    assert "loaded []" in run.stdout
    assert read_csv(tmp_path / "no_torch.csv") == read_csv(inside)


def test_other_commands_without_the_train_extra_say_what_to_install(tmp_path):
    code = """
    from vlcd_dist.cli import main
    print("rc", main(["export", "--student", "tiny_resnet", "--out", "x"]))
    """
    run = run_without_torch(code, tmp_path)
    assert "rc 2" in run.stdout, run.stderr
    assert (
        "vlcd export needs the Python module 'torch', which is not installed here: " in run.stderr
    )
    assert "pip install 'vlcd-dist[train]'" in run.stderr
    assert "Traceback" not in run.stderr
    # predict's own missing module is the infer extra's.
    assert missing_module_message("predict", "onnxruntime").endswith(
        "pip install 'vlcd-dist[infer]'"
    )

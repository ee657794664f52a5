"""``vlcd export``: ONNX and TorchScript files that match eager PyTorch, with their sidecar."""
# ruff: noqa: E402 - the hub must be switched off before timm is imported.

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli
from PIL import Image
from safetensors.torch import save_file

from vlcd_dist.cli.export import add_parser as add_export_parser
from vlcd_dist.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from vlcd_dist.deploy.export import file_sha256, random_images
from vlcd_dist.errors import VlcdError
from vlcd_dist.models import ModelError, create_student, state_dict_hash
from vlcd_dist.models.exported import export_student, load_exported_student

STUDENT = "tiny_mobilenetv3"
D = 16
SIZE = 64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The test's own forwards on one thread too: tiny models gain nothing from more, and two
    threads on a loaded 2-core machine spin-wait for each other."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _run(argv: str) -> int:
    parser = argparse.ArgumentParser(prog="vlcd")
    add_export_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv.split())
    return args.func(args)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """What training leaves in OUT/export/ (written by training's own writer):
    {student}.safetensors + {student}.json, and the student itself."""
    folder = tmp_path_factory.mktemp("student")
    torch.manual_seed(3)
    student = create_student(STUDENT, embed_dim=D, image_size=(SIZE, SIZE)).eval()
    # Non-default BN statistics, so a file that ignored the weights could not match by chance.
    for m in student.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    export_student(student, folder, {"name": STUDENT}, {"stage": "distill", "step": 1})
    return folder, student


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two small RGB 'photographs' of different shapes."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(80, 60), (50, 90)]):
        pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"photo{i}.png")
    return folder


def test_onnx_export_from_config_matches_pytorch_in_onnxruntime(
    trained: tuple[Path, torch.nn.Module], photos: Path, tmp_path: Path
) -> None:
    folder, student = trained
    out = tmp_path / "export"
    cmd = f"--config {folder / STUDENT}.json --format onnx --out {out} --images {photos} --repeats 3 --threads 1 --quiet"
    assert _run(f"export {cmd}") == 0
    sidecar = json.loads((out / f"{STUDENT}.onnx.json").read_text())

    prep = sidecar["preprocessing"]
    assert (prep["height"], prep["width"]) == (SIZE, SIZE)
    # The student's own statistics (timm's pretrained_cfg; ImageNet's for this backbone).
    assert prep["mean"] == list(student.mean) == list(IMAGENET_MEAN)
    assert prep["std"] == list(student.std) == list(IMAGENET_STD)
    assert prep["colour_order"] == "RGB" and prep["layout"] == "NCHW"
    assert prep["value_range"] == [0.0, 1.0]
    assert sidecar["output"]["dim"] == D and sidecar["opset"] == 17
    # The sibling safetensors was picked up, and the hash is that of the trained student.
    assert sidecar["weights"]["random_init"] is False
    assert sidecar["weights"]["state_dict_sha256"] == state_dict_hash(student)
    assert sidecar["verification"]["max_abs_diff"] <= 1e-4
    assert sidecar["verification"]["images"]["real_images"] == 2
    timing = sidecar["timing"]
    assert len(timing["raw_s"]["eager"]) == len(timing["raw_s"]["exported"]) == 3
    assert timing["speedup"] == pytest.approx(timing["eager_ms"] / timing["exported_ms"])

    # Independently of the exporter's own check: load the file in onnxruntime, feed real images
    # preprocessed as the sidecar says, at a batch size not seen at export (dynamic batch axis).
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        str(out / sidecar["model_file"]), options, providers=["CPUExecutionProvider"]
    )
    transform = eval_transform((prep["height"], prep["width"]))
    images = torch.stack(
        [transform(Image.open(p).convert("RGB")) for p in sorted(photos.glob("*.png"))] * 2
    )
    mean = torch.tensor(prep["mean"]).view(1, 3, 1, 1)
    images = (images - mean) / torch.tensor(prep["std"]).view(1, 3, 1, 1)
    got = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
    with torch.inference_mode():
        want = student(images).numpy()
    assert got.shape == (4, D)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    meta = {
        p.key: p.value
        for p in __import__("onnx").load(str(out / sidecar["model_file"])).metadata_props
    }
    assert json.loads(meta["vlcd_preprocessing"])["height"] == SIZE


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_export_is_verified_too(
    trained: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    folder, student = trained
    cmd = f"--student {STUDENT} --embed-dim {D} --image-size {SIZE} --weights {folder / STUDENT}.safetensors --format torchscript --out {tmp_path} --repeats 2 --threads 1 --quiet"
    assert _run(f"export {cmd}") == 0
    sidecar = json.loads((tmp_path / f"{STUDENT}.torchscript.json").read_text())
    assert sidecar["model_file"] == f"{STUDENT}.torchscript.pt"
    assert sidecar["opset"] is None and sidecar["verification"]["max_abs_diff"] <= 1e-4
    assert sidecar["timing"]["exported_runtime"] == "torch.jit (CPU)"
    module = torch.jit.load(str(tmp_path / sidecar["model_file"]))
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        torch.testing.assert_close(module(x), student(x), atol=1e-4, rtol=0)


def test_missing_weights_unknown_student_and_bad_config_are_explained(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "nowhere.safetensors"
    with pytest.raises(
        VlcdError, match=rf"--weights {missing}: no such file; pass the {STUDENT}\.safetensors"
    ):
        _run(f"export --student {STUDENT} --weights {missing} --out {tmp_path}")
    with pytest.raises(
        VlcdError, match=r"--student 'tiny_mobilenet'.*did you mean.*Registered students"
    ):
        _run(f"export --student tiny_mobilenet --out {tmp_path}")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"embed_dim": 8}))
    with pytest.raises(VlcdError, match=r"bad\.json is not the JSON of an exported student"):
        _run(f"export --config {bad} --out {tmp_path}")
    with pytest.raises(VlcdError, match=r"--config .*missing\.json: no such file or folder"):
        _run(f"export --config {tmp_path / 'missing.json'} --out {tmp_path}")
    # A plain state dict carries no build info: its embed_dim must be given, not guessed.
    plain = tmp_path / "plain.safetensors"
    save_file(create_student(STUDENT, embed_dim=D).state_dict(), str(plain))
    with pytest.raises(VlcdError, match=r"plain state dict .* pass --embed-dim D"):
        _run(f"export --student {STUDENT} --weights {plain} --out {tmp_path}")
    # Weights that belong to another embed_dim: the load error says what the file must hold.
    other = tmp_path / "other.safetensors"
    save_file(create_student(STUDENT, embed_dim=D + 1).state_dict(), str(other))
    with pytest.raises(VlcdError, match=rf"of another shape.*embed_dim={D}"):
        _run(f"export --student {STUDENT} --embed-dim {D} --weights {other} --out {tmp_path}")


def test_random_init_is_logged_and_a_failed_check_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vlcd_dist.deploy import export

    real = export.onnx_runner

    def off_by_a_bit(path: Path, threads: int):
        run = real(path, threads)
        return lambda x: run(x) + 1e-3

    monkeypatch.setattr(export, "onnx_runner", off_by_a_bit)
    with (
        caplog.at_level(logging.WARNING),
        pytest.raises(
            VlcdError, match=r"differs from eager PyTorch by 0\.001.*tolerance 0\.0001.*no sidecar"
        ),
    ):
        _run(
            f"export --student {STUDENT} --embed-dim {D} --image-size 32 --out {tmp_path} --threads 1 --quiet"
        )
    assert any("randomly initialised" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / f"{STUDENT}.onnx.json").exists()


def test_onnx_refuses_a_size_a_fixed_size_student_must_resize_inside() -> None:
    from types import SimpleNamespace

    from vlcd_dist.deploy.export import check_onnx_input_size

    fixed = SimpleNamespace(image_size=(224, 224))  # as EfficientFormer-L1's Student has
    check_onnx_input_size("efficientformer_l1", fixed, (224, 224))
    check_onnx_input_size("tiny_mobilenetv3", SimpleNamespace(image_size=None), (96, 128))
    with pytest.raises(VlcdError, match=r"--image-size 224 224.*or use --format torchscript"):
        check_onnx_input_size("efficientformer_l1", fixed, (384, 512))


def test_the_parser_offers_what_the_exporter_supports() -> None:
    # cli/export.py spells the formats and the default opset out so that --help imports no
    # torch; they must stay those of the exporter.
    from vlcd_dist.deploy.export import DEFAULT_OPSET, FORMATS

    parser = argparse.ArgumentParser()
    export = add_export_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export", "--student", "s", "--out", "o"])
    assert args.opset == DEFAULT_OPSET
    (fmt,) = [a for a in export._actions if a.dest == "format"]
    assert tuple(fmt.choices) == FORMATS and fmt.default == FORMATS[0]


def _onnx_features(model: Path, images: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]


@pytest.fixture(scope="module")
def distilled(tiny_recipe: Path, distill_sets: list[str], tmp_path_factory) -> Path:
    """The files of a real (tiny, in-process) distill of one student at a non-square size."""
    out = tmp_path_factory.mktemp("distill") / "run"
    sets = [*distill_sets, "distill.steps=1", "data.image_size=[32,48]"]
    sets.append(f"students=[{STUDENT}]")
    args = ["distill", "--config", tiny_recipe, "--out", out]
    for s in sets:
        args += ["--set", s]
    assert run_cli(*args) == 0
    return out


def test_export_takes_what_a_distill_wrote(distilled: Path, tmp_path: Path) -> None:
    weights = distilled / "export" / f"{STUDENT}.safetensors"
    student, info = load_exported_student(weights)
    assert info["build"]["image_size"] == [32, 48] and info["build"]["embed_dim"] == 64
    images = random_images(3, (32, 48), seed=7)
    with torch.inference_mode():
        want = student.eval()(images).numpy()
    # The JSON as training wrote it, the .safetensors alone, the stage folder, and --student
    # with --weights: each exports the trained student at its stored size and embed_dim.
    sources = {
        "json": f"--config {distilled / 'export' / STUDENT}.json",
        "safetensors": f"--config {weights}",
        "folder": f"--config {distilled}",
        "weights": f"--student {STUDENT} --weights {weights}",
    }
    for label, source in sources.items():
        out = tmp_path / label
        assert _run(f"export {source} --out {out} --repeats 1 --threads 1 --quiet") == 0, label
        sidecar = json.loads((out / f"{STUDENT}.onnx.json").read_text())
        assert sidecar["input"]["shape"] == ["batch", 3, 32, 48], label
        assert sidecar["output"]["dim"] == 64, label
        assert sidecar["student"]["stored"]["stage"] == "distill", label
        assert sidecar["weights"]["file_sha256"] == file_sha256(weights), label
        got = _onnx_features(out / sidecar["model_file"], images)
        assert got.shape == (3, 64), label
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0, err_msg=label)


def test_options_that_contradict_the_stored_student_are_refused(
    distilled: Path, tiny_pipeline, tmp_path: Path
) -> None:
    weights = distilled / "export" / f"{STUDENT}.safetensors"
    # A stage folder with two students: which one is asked, not guessed.
    with pytest.raises(
        VlcdError, match=r"holds 2 exported students \(tiny_mobilenetv3, tiny_resnet\)"
    ):
        _run(f"export --config {tiny_pipeline['predistill']} --out {tmp_path}")
    base = f"export --student {STUDENT} --weights {weights} --out {tmp_path}"
    with pytest.raises(VlcdError, match=r"--embed-dim 512 does not match .*embed_dim=64"):
        _run(f"{base} --embed-dim 512")
    with pytest.raises(VlcdError, match=r"--image-size \(224, 224\) .*trained at 32x48"):
        _run(f"{base} --image-size 224")
    with pytest.raises(VlcdError, match=r"--student 'tiny_resnet' does not match"):
        _run(f"export --config {weights} --student tiny_resnet --out {tmp_path}")
    with pytest.raises(VlcdError, match=r"already names the weights"):
        _run(f"export --config {weights} --weights {weights} --out {tmp_path}")
    # A JSON whose weights beside it belong to another student (files of two runs mixed).
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    other = create_student(STUDENT, embed_dim=8, image_size=(32, 32))
    export_student(other, mixed, {"name": STUDENT}, {})
    (mixed / f"{STUDENT}.json").write_text((distilled / "export" / f"{STUDENT}.json").read_text())
    with pytest.raises(VlcdError, match=r"different runs"):
        _run(f"export --config {mixed / STUDENT}.json --out {tmp_path}")


def test_efficientformer_exports_to_onnx_at_its_trained_grid(tmp_path: Path) -> None:
    # Trained at 64x96, its attention biases are laid out for a 2x3 grid: export must rebuild
    # it so (not at 224x224) and the ONNX file must run at 64x96.
    torch.manual_seed(0)
    student = create_student("efficientformer_l1", embed_dim=D, image_size=(64, 96)).eval()
    export_student(student, tmp_path / "export", {"name": "efficientformer_l1"}, {})
    weights = tmp_path / "export" / "efficientformer_l1.safetensors"
    out = tmp_path / "onnx"
    assert _run(f"export --config {weights} --out {out} --repeats 1 --threads 1 --quiet") == 0
    sidecar = json.loads((out / "efficientformer_l1.onnx.json").read_text())
    assert sidecar["input"]["shape"] == ["batch", 3, 64, 96]
    images = random_images(2, (64, 96), seed=3)
    with torch.inference_mode():
        want = student(images).numpy()
    got = _onnx_features(out / sidecar["model_file"], images)
    assert got.shape == (2, D)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_the_tolerance_is_relative_to_a_large_output() -> None:
    """A trained student's embedding is not a unit vector (the demo's MobileNetV3 reaches 3e3
    per entry): float32 rounding there differs by 1e-3, which is not a failed export."""
    from vlcd_dist.deploy.export import verify

    big = torch.linspace(-3e4, 3e4, 8)

    def eager(x: torch.Tensor) -> torch.Tensor:
        return big.expand(x.shape[0], -1).clone()

    record = verify(eager, lambda x: eager(x) + 2e-3, (8, 8), real=(), tolerance=1e-4, what="x")
    assert record["max_abs_diff"] == pytest.approx(2e-3, rel=0.05)  # float32: 1 ulp at 3e4
    assert record["max_scaled_diff"] == pytest.approx(2e-3 / 3e4, rel=0.05)
    with pytest.raises(VlcdError, match=r"by 6[.\d]* \(0\.0002 of its largest output, 3e\+04\)"):
        verify(eager, lambda x: eager(x) * 1.0002, (8, 8), real=(), tolerance=1e-4, what="x")


def test_an_exported_student_normalises_with_its_stored_statistics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """vlcd-student/2 stores the mean/std/input size it was trained with; loading uses them even
    when timm's pretrained_cfg (the derivation) states others by then. A vlcd-student/1 file
    (stores none) still loads, by the derivation."""
    import vlcd_dist.models.student as student_module
    from vlcd_dist.models.exported import read_student_info

    student = create_student(STUDENT, embed_dim=D, image_size=(SIZE, SIZE))
    path = export_student(student, tmp_path, {"name": STUDENT}, {"stage": "distill"})
    info = read_student_info(path)
    assert info["format"] == "vlcd-student/2"
    assert info["input"] == {
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "input_size": [SIZE, SIZE],
    }
    assert json.loads((tmp_path / f"{STUDENT}.json").read_text())["input"] == info["input"]
    other = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    monkeypatch.setattr(student_module, "backbone_data_config", lambda _backbone: dict(other))
    assert create_student(STUDENT, embed_dim=D).mean == other["mean"]  # the derivation changed
    with caplog.at_level(logging.WARNING, logger="vlcd_dist.models.exported"):
        loaded, _ = load_exported_student(path)
    assert loaded.mean == tuple(IMAGENET_MEAN) and loaded.std == tuple(IMAGENET_STD)
    assert "using its stored mean" in caplog.text
    x = torch.rand(2, 3, SIZE, SIZE)
    torch.testing.assert_close(loaded.normalize(x), student.normalize(x), rtol=0, atol=0)
    # The same file as format /1 (no "input"): the derivation, as before.
    from safetensors.torch import load_file

    old = dict(info, format="vlcd-student/1")
    del old["input"]
    v1 = tmp_path / "v1" / f"{STUDENT}.safetensors"
    v1.parent.mkdir()
    save_file(
        load_file(str(path)),
        str(v1),
        metadata={"format": "vlcd-student/1", "info": json.dumps(old)},
    )
    loaded_v1, info_v1 = load_exported_student(v1)
    assert info_v1["format"] == "vlcd-student/1"
    assert loaded_v1.mean == other["mean"] and loaded_v1.std == other["std"]
    # A /2 file whose statistics are unusable is refused, naming the file.
    bad = tmp_path / "bad" / f"{STUDENT}.safetensors"
    bad.parent.mkdir()
    broken = dict(info, input={"mean": [0.5, 0.5], "std": [1, 1, 1]})
    save_file(
        load_file(str(path)),
        str(bad),
        metadata={"format": "vlcd-student/2", "info": json.dumps(broken)},
    )
    with pytest.raises(ModelError, match=r"bad/tiny_mobilenetv3\.safetensors: stored input mean"):
        load_exported_student(bad)

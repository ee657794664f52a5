"""The teacher (towers, weights, checkpoint), its frozen form, and the Distiller container."""
# ruff: noqa: E402 - the hub must be switched off before transformers/timm are imported.

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import dataclasses
import logging
import math
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from vlcd_dist.losses import vlcd_loss
from vlcd_dist.models import (
    Distiller,
    FrozenTeacher,
    ImageTower,
    ModelError,
    TeacherConfig,
    VisionLanguageTeacher,
    create_student,
    create_teacher,
    list_teachers,
    packaged_minilm_path,
    save_teacher,
    state_dict_hash,
    teacher_config,
)

REPORTS = [
    "Placenta with meconium-laden macrophages. Membranes are green.",
    "Acute chorioamnionitis. Funisitis present.",
    "Unremarkable placenta.",
    "Villous infarct, 1.5 cm. No inflammation!",
]


@pytest.fixture(scope="module")
def teacher() -> VisionLanguageTeacher:
    torch.manual_seed(0)
    return create_teacher("tiny_resnet18_minilm")


def _images(n: int = 4, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_teacher_registry_and_paper_config() -> None:
    assert {"resnet50_bert", "tiny_resnet18_minilm"} <= set(list_teachers())
    paper = teacher_config("resnet50_bert")
    assert paper.image_model == "resnet50"
    assert paper.text_model == "bert-base-uncased"
    assert paper.image_size == (384, 512)
    with pytest.raises(ValueError, match="did you mean"):
        teacher_config("tiny_resnet18_minilmm")


def test_tiny_teacher_shapes(teacher: VisionLanguageTeacher) -> None:
    # Stage 0 trains the teacher; another test may have frozen this shared instance.
    teacher.train().requires_grad_(True)
    d = teacher.embed_dim
    assert d == 64
    z = teacher.encode_image(_images())
    assert z.shape == (4, d)
    text = teacher.text.tokenize(REPORTS)
    out = teacher(_images(), text["input_ids"], text["attention_mask"])
    assert out["image_features"].shape == (4, d)
    assert out["text_features"].shape == (len(REPORTS), d)
    assert out["logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-5)
    # The pooler is dropped: every parameter must be reachable from the stage-0 loss for DDP.
    out["image_features"].sum().add(out["text_features"].sum()).add(out["logit_scale"]).backward()
    unused = [n for n, p in teacher.named_parameters() if p.grad is None]
    teacher.zero_grad(set_to_none=True)
    teacher.eval()
    assert unused == []


def test_text_tower_holds_the_packaged_minilm_weights(teacher: VisionLanguageTeacher) -> None:
    shipped = load_file(str(Path(packaged_minilm_path()) / "model.safetensors"))
    ours = teacher.text.encoder.state_dict()
    name = "encoder.layer.0.attention.self.query.weight"
    stored = shipped.get(name, shipped.get(f"bert.{name}"))
    assert stored is not None
    assert torch.equal(ours[name], stored)


def test_teacher_config_validation_says_how_to_fix() -> None:
    with pytest.raises(ValueError, match=r"image_size.*\[height, width\]"):
        TeacherConfig(image_size=(384,))
    with pytest.raises(ValueError, match="text_pooling"):
        TeacherConfig(text_pooling="max")
    with pytest.raises(ValueError, match="use one of"):
        TeacherConfig(autocast_dtype="int8")
    assert TeacherConfig(image_size=[224, 320]).image_size == (224, 320)


def test_random_init_is_explicit_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        ImageTower("resnet18", 8, weights="random")
    assert any("randomly initialised" in r.getMessage() for r in caplog.records)


def test_hub_failure_names_the_offline_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    real = timm.create_model

    def no_hub(name: str, pretrained: bool = False, **kw):
        if pretrained:
            raise OSError("hub unreachable")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", no_hub)
    with pytest.raises(ModelError, match="--image-weights"):
        ImageTower("resnet18", 8, weights="hub")


@pytest.mark.parametrize("layout", ["safetensors", "pth", "folder"])
def test_image_weights_from_local_file(tmp_path: Path, layout: str) -> None:
    torch.manual_seed(1)
    source = timm.create_model("resnet18", pretrained=False)  # with its fc classifier
    state = source.state_dict()
    if layout == "safetensors":
        path = tmp_path / "resnet18.safetensors"
        save_file(state, str(path))
    elif layout == "pth":
        path = tmp_path / "resnet18.pth"
        torch.save({"state_dict": state}, path)
    else:
        path = tmp_path / "resnet18"
        path.mkdir()
        save_file(state, str(path / "model.safetensors"))
    tower = ImageTower("resnet18", 8, weights=str(path))
    for name, value in tower.backbone.state_dict().items():
        assert torch.equal(value, state[name]), name


def test_wrong_weights_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file(timm.create_model("resnet10t", pretrained=False).state_dict(), str(path))
    with pytest.raises(ValueError, match="do not fit"):
        ImageTower("resnet18", 8, weights=str(path))


def test_teacher_checkpoint_round_trip(
    teacher: VisionLanguageTeacher, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with torch.no_grad():
        teacher.logit_scale.fill_(math.log(20.0))
    path = save_teacher(teacher, tmp_path / "teacher.safetensors")
    with caplog.at_level(logging.WARNING):
        again = create_teacher(dataclasses.replace(teacher.cfg, checkpoint=str(path)))
    assert state_dict_hash(again) == state_dict_hash(teacher)
    assert again.text_hash() == teacher.text_hash()
    # A checkpoint replaces the init, so no random-init warning is due.
    assert not any("randomly initialised" in r.getMessage() for r in caplog.records)
    with torch.no_grad():
        teacher.logit_scale.fill_(teacher.cfg.init_logit_scale)


def test_frozen_teacher_runs_no_grad_under_autocast(teacher: VisionLanguageTeacher) -> None:
    frozen = FrozenTeacher(teacher, autocast_dtype="bfloat16")
    seen: dict[str, object] = {}

    def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        seen["autocast"] = torch.is_autocast_enabled("cpu")
        seen["dtype"] = output.dtype
        seen["grad"] = torch.is_grad_enabled()

    handle = teacher.image.proj.register_forward_hook(hook)
    try:
        z = frozen(_images())
    finally:
        handle.remove()
    assert seen == {"autocast": True, "dtype": torch.bfloat16, "grad": False}
    assert z.dtype == torch.float32 and not z.requires_grad


def test_distiller_training_step_leaves_teacher_untouched(teacher: VisionLanguageTeacher) -> None:
    torch.manual_seed(0)
    d = teacher.embed_dim
    students = {
        "mnv3": create_student("tiny_mobilenetv3", embed_dim=d),
        "resnet": create_student("tiny_resnet", embed_dim=d),
    }
    distiller = Distiller(FrozenTeacher(teacher), students)
    before = {k: v.clone() for k, v in distiller.teacher.state_dict().items()}
    students_before = {k: v.clone() for k, v in distiller.students.state_dict().items()}

    distiller.train()
    assert all(not m.training for m in distiller.teacher.modules())
    assert all(m.training for m in distiller.students.modules())
    assert all(not p.requires_grad for p in distiller.teacher.parameters())

    # Deliberately hand the optimiser every parameter, teacher included: nothing may move it.
    optimizer = torch.optim.SGD(distiller.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    anchors = distiller.teacher.encode_text(REPORTS)
    for step in range(2):
        out = distiller(_images(seed=step))
        assert out["teacher"].dtype == torch.float32 and not out["teacher"].requires_grad
        scale = distiller.teacher.get_logit_scale()
        loss = sum(
            vlcd_loss(z, out["teacher"], anchors, scale)["loss"] for z in out["students"].values()
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    assert all(p.grad is None for p in distiller.teacher.parameters())
    after = distiller.teacher.state_dict()
    # Buffers too: batch-norm running statistics only stay fixed in eval mode.
    assert all(torch.equal(before[k], after[k]) for k in before), "teacher changed"
    changed = [k for k, v in distiller.students.state_dict().items()
               if not torch.equal(v, students_before[k])]  # fmt: skip
    assert any(k.startswith("mnv3.") for k in changed)
    assert any(k.startswith("resnet.") for k in changed)

    distiller.teacher.train(True)
    assert not distiller.teacher.training and not teacher.training
    assert list(distiller.student_parameters("mnv3")) == list(students["mnv3"].parameters())
    distiller.eval()


def test_distiller_refuses_mismatched_dimension(teacher: VisionLanguageTeacher) -> None:
    with pytest.raises(ValueError, match="embed_dim=64"):
        Distiller(teacher, {"s": create_student("tiny_mobilenetv3", embed_dim=32)})


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_image_input_statistics_stay_fp32_exact_when_the_module_is_cast(dtype):
    """DeepSpeed bf16 casts the whole model: the mean/std must not round with it (0.485 is
    0.484375 in bf16), and an fp32 batch is normalised exactly as by the fp32 module."""
    import copy

    from vlcd_dist.models.preprocess import ImageInput

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ref = ImageInput(mean, std, (8, 8))
    for cast in (
        lambda m: m.to(dtype),
        lambda m: m.half() if dtype == torch.float16 else m.bfloat16(),
    ):
        module = cast(copy.deepcopy(ref))
        assert module.stats() == {"mean": list(mean), "std": list(std), "input_size": [8, 8]}
        assert module.mean.dtype == module.std.dtype == torch.float32
        assert torch.equal(module.mean, ref.mean) and torch.equal(module.std, ref.std)
        x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
        assert torch.equal(module(x), ref(x))
        # A half-precision batch: computed in fp32, rounded once to its dtype.
        half = x.to(dtype)
        assert module(half).dtype == dtype
        assert torch.equal(module(half), ref(half.float()).to(dtype))
    # Inside a student cast as DeepSpeed casts it.
    student = create_student("tiny_mobilenetv3", embed_dim=8).to(dtype)
    assert student.input.mean.dtype == torch.float32
    assert student.input.mean.flatten().tolist() == [float(torch.tensor(v)) for v in student.mean]

"""The student registry: every registered student builds, projects to d, has the expected size."""
# ruff: noqa: E402 - the hub must be switched off before timm is imported.

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from vlcd_dist.models import (
    ImageTower,
    Student,
    StudentConfig,
    TeacherConfig,
    build_student,
    create_student,
    list_students,
    register_student,
    teacher_config,
    timm_student,
)
from vlcd_dist.models import student as student_module

PAPER_STUDENTS = ("mobilenetv3_large_100", "efficientnet_b0", "efficientformer_l1")
TINY_STUDENTS = ("tiny_mobilenetv3", "tiny_resnet")

# Backbone parameters without classifier or projection (timm 1.0, num_classes=0), measured:
# mobilenetv3_large_100 4,202,032; efficientnet_b0 4,007,548; efficientformer_l1 11,391,928;
# resnet50 23,508,032. Ranges are +-2.5% around those.
BACKBONE_PARAMS = {
    "mobilenetv3_large_100": (4.10e6, 4.31e6),
    "efficientnet_b0": (3.91e6, 4.11e6),
    "efficientformer_l1": (11.11e6, 11.68e6),
    "resnet50": (22.9e6, 24.1e6),
}


def test_registry_lists_paper_and_tiny_students() -> None:
    assert set(PAPER_STUDENTS + TINY_STUDENTS) <= set(list_students())
    assert list_students("tiny_*") == sorted(TINY_STUDENTS)


@pytest.mark.parametrize("name", list_students())
def test_every_registered_student_projects_to_teacher_dim(
    name: str, record_property: pytest.RecordProperty
) -> None:
    torch.manual_seed(0)
    paper = name in PAPER_STUDENTS
    # Paper students at the paper teacher's d and 224 px; tiny ones at the tiny teacher's d.
    d = TeacherConfig().embed_dim if paper else teacher_config("tiny_resnet18_minilm").embed_dim
    size = 224 if paper else 64
    student = create_student(name, embed_dim=d)
    assert isinstance(student, Student) and student.embed_dim == d
    student.eval()
    with torch.no_grad():
        z = student(torch.randn(2, 3, size, size))
    assert z.shape == (2, d) and torch.isfinite(z).all()
    assert len(student.data_config["mean"]) == 3
    counts = student.num_params()
    assert counts["projection"] == student.num_features * d + d
    record_property("params", counts)
    print(f"{name}: {counts}")
    if name in BACKBONE_PARAMS:
        low, high = BACKBONE_PARAMS[name]
        assert low <= counts["backbone"] <= high, counts


def test_teacher_image_tower_size_at_224() -> None:
    tower = ImageTower("resnet50", TeacherConfig().embed_dim, weights="random")
    backbone = sum(p.numel() for p in tower.backbone.parameters())
    low, high = BACKBONE_PARAMS["resnet50"]
    assert low <= backbone <= high
    assert sum(p.numel() for p in tower.proj.parameters()) == 2048 * 512
    with torch.no_grad():
        assert tower.eval()(torch.randn(1, 3, 224, 224)).shape == (1, 512)


def test_any_timm_name_works() -> None:
    student = create_student("mobilenetv3_small_075", embed_dim=16)
    assert student.name == "mobilenetv3_small_075"
    assert student(torch.randn(2, 3, 32, 32)).shape == (2, 16)


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(ValueError, match="did you mean"):
        create_student("tiny_mobilenet_v3")
    with pytest.raises(ValueError, match="unknown student"):
        StudentConfig(name="no_such_backbone_at_all")


def test_register_student_decorator() -> None:
    saved = dict(student_module._STUDENTS)
    try:

        @register_student
        def my_test_student(**kwargs) -> Student:
            return timm_student("resnet10t", name="my_test_student", **kwargs)

        assert "my_test_student" in list_students()
        assert create_student("my_test_student", embed_dim=8).name == "my_test_student"
        with pytest.raises(ValueError, match="already registered"):
            register_student(my_test_student)
    finally:
        student_module._STUDENTS.clear()
        student_module._STUDENTS.update(saved)


def test_fixed_size_backbone_resizes_its_input() -> None:
    student = create_student("efficientformer_l1", embed_dim=8)
    assert student.image_size == (224, 224)
    with torch.no_grad():
        # A paper-sized image is resized to the 224x224 the attention biases expect.
        assert student.eval()(torch.randn(1, 3, 384, 512)).shape == (1, 8)
    # Another size re-lays the attention grid instead (multiples of 32 only).
    assert create_student("efficientformer_l1", embed_dim=8, image_size=(96, 128)).image_size == (
        96,
        128,
    )
    with pytest.raises(ValueError, match="multiples of 32"):
        create_student("efficientformer_l1", embed_dim=8, image_size=(100, 128))


def test_build_student_from_config_with_local_weights(tmp_path: Path) -> None:
    torch.manual_seed(3)
    source = timm.create_model("mobilenetv3_small_050", pretrained=False)
    path = tmp_path / "mnv3.safetensors"
    save_file(source.state_dict(), str(path))
    cfg = StudentConfig(
        name="tiny_mobilenetv3", embed_dim=12, weights=str(path), image_size=[48, 48]
    )
    student = build_student(cfg)
    assert student.image_size == (48, 48)
    state = source.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in student.backbone.state_dict().items())
    assert student(torch.randn(2, 3, 64, 64)).shape == (2, 12)


def test_student_config_validation_says_how_to_fix() -> None:
    with pytest.raises(ValueError, match="teacher's embed_dim"):
        StudentConfig(embed_dim=0)
    with pytest.raises(ValueError, match=r"\[height, width\]"):
        StudentConfig(image_size=(0, 5))

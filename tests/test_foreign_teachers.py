"""open_clip and Hugging Face CLIP models as the frozen teacher (teacher.source), and each
model's own input normalisation. Tiny random models in local folders (tests/tiny_clip.py)."""

from __future__ import annotations

import pytest
import torch
from helpers import STUDENTS, accelerate_launch, distill_args, run_cli
from tiny_clip import (
    HF_DIM,
    HF_MEAN,
    HF_STD,
    OPEN_CLIP_CFG,
    OPEN_CLIP_DIM,
    OPEN_CLIP_MEAN,
    OPEN_CLIP_STD,
    write_hf_clip,
    write_open_clip,
)

from vlcd_dist.anchors import compute_text_anchors, split_sentences
from vlcd_dist.config import ConfigError, load_config
from vlcd_dist.evaluation.results import EvalReport
from vlcd_dist.models import (
    FrozenTeacher,
    HFClipTeacher,
    ModelError,
    OpenClipTeacher,
    create_student,
    create_teacher,
)
from vlcd_dist.models.exported import read_student_info

REPORTS = [
    "The trimmed placenta weighs 480 g. The membranes are green. Dr. Smith notes 2.5 cm.",
    "Three-vessel cord.",
    "",
]


@pytest.fixture(scope="module")
def open_clip_folder(tmp_path_factory):
    return write_open_clip(tmp_path_factory.mktemp("open_clip") / "tiny")


@pytest.fixture(scope="module")
def hf_clip_folder(tmp_path_factory):
    return write_hf_clip(tmp_path_factory.mktemp("hf_clip") / "tiny")


def _normalised(images, mean, std):
    return (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _sentence_mean(encode, reports):
    return torch.stack(
        [encode(split_sentences(r)).mean(dim=0) for r in reports]  # noqa: PLW0108
    )


def test_open_clip_teacher_equals_the_library(open_clip_folder):
    import open_clip

    frozen = FrozenTeacher(OpenClipTeacher(str(open_clip_folder)), autocast_dtype="float32")
    # The library's own model, loaded by open_clip itself from the same folder.
    ref = open_clip.create_model(f"local-dir:{open_clip_folder}").eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{open_clip_folder}")
    assert frozen.embed_dim == OPEN_CLIP_DIM and frozen.source == "open_clip"
    # The normalisation its config states (not ImageNet's), at its input size.
    assert list(frozen.input.mean_values) == OPEN_CLIP_MEAN
    assert list(frozen.input.std_values) == OPEN_CLIP_STD
    assert frozen.input.size == (32, 32) and frozen.text.max_length == 32
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ref.encode_image(_normalised(images, OPEN_CLIP_MEAN, OPEN_CLIP_STD))
        anchors_want = _sentence_mean(lambda s: ref.encode_text(tokenizer(s)), REPORTS)
    torch.testing.assert_close(frozen.encode_image(images), want, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        compute_text_anchors(frozen, REPORTS), anchors_want, atol=1e-5, rtol=0
    )
    # Another input size is resized to the model's own.
    assert frozen.encode_image(torch.rand(2, 3, 48, 40)).shape == (2, OPEN_CLIP_DIM)
    # Frozen: no gradients, eval mode even after .train().
    frozen.train()
    assert not frozen.teacher.model.training
    assert not any(p.requires_grad for p in frozen.parameters())


def test_hf_clip_teacher_equals_the_library(hf_clip_folder):
    from transformers import AutoTokenizer, CLIPModel

    frozen = FrozenTeacher(HFClipTeacher(str(hf_clip_folder)), autocast_dtype="float32")
    ref = CLIPModel.from_pretrained(str(hf_clip_folder)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(hf_clip_folder))
    assert frozen.embed_dim == HF_DIM and frozen.source == "hf_clip"
    assert list(frozen.input.mean_values) == HF_MEAN
    assert list(frozen.input.std_values) == HF_STD
    assert frozen.text.max_length == 24

    def features(out):
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def text(sentences):
        batch = tokenizer(sentences, padding=True, truncation=True, return_tensors="pt")
        return features(ref.get_text_features(**batch))

    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pixels = _normalised(images, HF_MEAN, HF_STD)
        want = features(ref.get_image_features(pixel_values=pixels))
        anchors_want = _sentence_mean(text, REPORTS)
    torch.testing.assert_close(frozen.encode_image(images), want, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        compute_text_anchors(frozen, REPORTS), anchors_want, atol=1e-5, rtol=0
    )
    # A sentence longer than the context length is cut, and counted.
    compute_text_anchors(frozen, [" ".join(["placenta"] * 40)])
    assert frozen.text.truncated == 1


def test_each_teacher_source_counts_its_image_tower_parameters(hf_clip_folder, open_clip_folder):
    from transformers import CLIPModel

    ref = CLIPModel.from_pretrained(str(hf_clip_folder))
    want = sum(p.numel() for p in ref.vision_model.parameters()) + sum(
        p.numel() for p in ref.visual_projection.parameters()
    )
    hf = FrozenTeacher(HFClipTeacher(str(hf_clip_folder)))
    assert want > 0 and hf.num_image_params() == want
    # The text tower is not counted.
    assert hf.num_image_params() < sum(p.numel() for p in ref.parameters())
    oc = FrozenTeacher(OpenClipTeacher(str(open_clip_folder)))
    assert oc.num_image_params() == sum(p.numel() for p in oc.teacher.model.visual.parameters())
    vlcd = FrozenTeacher(create_teacher("tiny_resnet18_minilm"))
    assert vlcd.num_image_params() == sum(p.numel() for p in vlcd.teacher.image.parameters())


def test_students_and_the_vlcd_teacher_normalise_with_their_own_statistics():
    import timm

    student = create_student("tiny_mobilenetv3", embed_dim=8)
    cfg = timm.data.resolve_model_data_config(student.backbone)
    assert student.mean == tuple(cfg["mean"]) and student.std == tuple(cfg["std"])
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(student.normalize(x), _normalised(x, cfg["mean"], cfg["std"]))
    # The statistics live outside the state_dict (exported students are unchanged).
    assert not any(k.startswith("input.") for k in student.state_dict())
    # A ViT student of CLIP statistics gets those, not ImageNet's.
    vit = create_student("vit_tiny_patch16_224.augreg_in21k", embed_dim=8)
    assert vit.mean == tuple(timm.get_pretrained_cfg("vit_tiny_patch16_224.augreg_in21k").mean)
    teacher = create_teacher("tiny_resnet18_minilm")
    tcfg = timm.data.resolve_model_data_config(teacher.image.backbone)
    assert teacher.input.mean_values == tuple(tcfg["mean"])
    with torch.no_grad():
        want = teacher.image(_normalised(x, tcfg["mean"], tcfg["std"]))
        torch.testing.assert_close(teacher.encode_image(x), want)


def test_open_clip_statistics_and_input_size_from_the_recipe(open_clip_folder, tiny_recipe):
    """A config name with a local checkpoint gets open_clip's default (OpenAI) statistics;
    teacher.open_clip.mean/std/image_size override them, and the features are the library's
    on that view."""
    import json

    import open_clip

    from vlcd_dist.train.stages import foreign_teacher

    config = open_clip_folder.parent / "tiny-vit-recipe-stats.json"
    config.write_text(json.dumps(OPEN_CLIP_CFG))
    checkpoint = open_clip_folder / "open_clip_model.safetensors"
    plain = OpenClipTeacher(str(config), str(checkpoint))
    assert list(plain.input.mean_values) == list(open_clip.OPENAI_DATASET_MEAN)
    assert plain.input.size == (32, 32)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    sets = [
        "teacher.source=open_clip",
        f"teacher.open_clip.model={config}",
        f"teacher.open_clip.pretrained={checkpoint}",
        f"teacher.open_clip.mean={mean}",
        f"teacher.open_clip.std={std}",
        "teacher.open_clip.image_size=[48,48]",
    ]
    teacher = FrozenTeacher(foreign_teacher(load_config(tiny_recipe, sets)), "float32")
    assert teacher.input.stats() == {"mean": mean, "std": std, "input_size": [48, 48]}
    # The library's model at that size: its position embeddings resized from the checkpoint.
    ref = open_clip.create_model("tiny-vit-recipe-stats", force_image_size=48).eval()
    open_clip.load_checkpoint(ref, str(checkpoint))
    images = torch.rand(3, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = ref.encode_image(_normalised(images, mean, std))
    torch.testing.assert_close(teacher.encode_image(images), want, atol=1e-5, rtol=0)
    # Only the statistics given are overridden.
    half = OpenClipTeacher(str(config), str(checkpoint), std=std)
    assert list(half.input.mean_values) == list(open_clip.OPENAI_DATASET_MEAN)
    assert list(half.input.std_values) == std


def test_open_clip_recipe_statistics_are_validated(tiny_recipe):
    with pytest.raises(ConfigError, match=r"teacher\.open_clip\.std"):
        load_config(tiny_recipe, ["teacher.open_clip.std=[0.2,0,0.3]"])
    with pytest.raises(ConfigError, match=r"teacher\.open_clip\.mean"):
        load_config(tiny_recipe, ["teacher.open_clip.mean=[0.5,0.5]"])
    with pytest.raises(ConfigError, match=r"teacher\.open_clip\.image_size"):
        load_config(tiny_recipe, ["teacher.open_clip.image_size=[0,32]"])


def test_open_clip_refuses_a_pretrained_it_would_ignore(open_clip_folder):
    for model in (str(open_clip_folder), "hf-hub:some-org/some-model"):
        with pytest.raises(
            ModelError, match=r"pretrained='openai' would be ignored.*brings its own"
        ):
            OpenClipTeacher(model, "openai")
    # Its own weights (None) and "random" are what such a model takes.
    OpenClipTeacher(str(open_clip_folder), None)
    OpenClipTeacher(str(open_clip_folder), "random")


def test_unknown_open_clip_model_lists_close_names():
    with pytest.raises(ModelError, match=r"close ones: \[.*'ViT-B-32'"):
        OpenClipTeacher("ViT-B-23", "random")


def test_open_clip_checkpoint_of_another_config_names_the_first_mismatched_key(
    open_clip_folder, tmp_path
):
    from safetensors.torch import load_file, save_file

    state = load_file(str(open_clip_folder / "open_clip_model.safetensors"))
    state["visual.conv1.weight"] = torch.zeros(1, 3, 8, 8)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "open_clip_config.json").write_bytes(
        (open_clip_folder / "open_clip_config.json").read_bytes()
    )
    save_file(state, str(bad / "open_clip_model.safetensors"))
    with pytest.raises(ModelError, match=r"'visual\.conv1\.weight' has shape \(1, 3, 8, 8\)"):
        OpenClipTeacher(str(bad))
    del state["visual.conv1.weight"]
    save_file(state, str(bad / "open_clip_model.safetensors"))
    with pytest.raises(ModelError, match=r"'visual\.conv1\.weight' is missing"):
        OpenClipTeacher(str(bad))


def test_hf_clip_weights_of_another_config_name_the_first_mismatched_key(hf_clip_folder, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(hf_clip_folder, bad)
    state = load_file(str(bad / "model.safetensors"))
    del state["text_projection.weight"]
    save_file(state, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(
        ModelError, match=r"first mismatched key: missing 'text_projection\.weight'"
    ):
        HFClipTeacher(str(bad))


def test_recipe_needs_the_model_of_its_source(tiny_recipe):
    with pytest.raises(ConfigError, match="teacher.open_clip.model"):
        load_config(tiny_recipe, ["teacher.source=open_clip"])
    with pytest.raises(ConfigError, match="teacher.source"):
        load_config(tiny_recipe, ["teacher.source=timm"])


def test_train_teacher_is_skipped_for_a_foundation_model(
    tiny_recipe, hf_clip_folder, tmp_path, capsys
):
    out = tmp_path / "teacher"
    sets = f"--set teacher.source=hf_clip --set teacher.hf_clip.model={hf_clip_folder}"
    assert run_cli(f"train-teacher --config {tiny_recipe} --out {out} {sets}") == 0
    assert "skipped" in capsys.readouterr().out
    assert not (out / "export").exists()


@pytest.mark.multiproc
@pytest.mark.parametrize("source", ["vlcd", "open_clip", "hf_clip"])
def test_one_recipe_with_each_teacher_source(source, tiny_recipe, request, tmp_path):
    """The same tiny recipe with each teacher.source, swapped by recipe keys only: predistill,
    distill on 2 gloo ranks, eval (the vlcd teacher from the session's train-teacher)."""
    if source == "vlcd":
        teacher = [f"teacher.checkpoint={request.getfixturevalue('tiny_pipeline')['teacher']}"]
        dim = 64  # tiny_resnet18_minilm's embed_dim
    else:
        folder = request.getfixturevalue(f"{source}_folder")
        dim = OPEN_CLIP_DIM if source == "open_clip" else HF_DIM
        teacher = [f"teacher.source={source}", f"teacher.{source}.model={folder}"]
    sets = " ".join(f"--set {s}" for s in teacher)
    pre = tmp_path / "predistill"
    assert run_cli(f"predistill --config {tiny_recipe} --out {pre} {sets}") == 0
    distill = tmp_path / "distill"
    accelerate_launch(*distill_args(tiny_recipe, distill, [*teacher, f"distill.init_from={pre}"]))
    # A foundation model's anchors are built by distill (no train-teacher stage).
    assert (distill / "anchors.safetensors").is_file() == (source != "vlcd")
    for name in STUDENTS:
        info = read_student_info(distill / "export" / f"{name}.safetensors")
        assert info["build"]["embed_dim"] == dim
        assert info["teacher"].startswith(f"{source}:") or source == "vlcd"
    ev = tmp_path / "eval"
    assert (
        run_cli(f"eval --config {tiny_recipe} --out {ev} {sets} --set eval.students_from={distill}")
        == 0
    )
    report = EvalReport.load(ev / "report.json")
    assert set(report.models) == {"teacher", *STUDENTS}
    assert report.models["teacher"].params > 0
    assert all(0.0 <= r.auc_mean <= 1.0 for r in report.models.values())

"""EfficientFormer-L1 at the recipe's input size: attention biases re-laid for the new token
grid, so no model resizes its input to 224x224 inside (training, eval and benchmarks alike)."""

from __future__ import annotations

import pytest
import torch
from helpers import REPO
from timm.models.efficientformer import Attention

from vlcd_dist.config import load_config
from vlcd_dist.evaluation.efficiency import build_models, run_benchmark
from vlcd_dist.models import ModelError, create_student
from vlcd_dist.models.student import set_attention_grid
from vlcd_dist.train.stages import build_student


def test_any_multiple_of_32_builds_and_runs() -> None:
    student = create_student("efficientformer_l1", embed_dim=16, image_size=(64, 96))
    assert student.image_size == (64, 96)
    attn = next(m for m in student.modules() if isinstance(m, Attention))
    assert attn.attention_biases.shape[1] == 2 * 3  # a 2 x 3 grid of stride-32 tokens
    out = student(torch.randn(2, 3, 64, 96))  # no resize to 224 happens
    assert out.shape == (2, 16)
    out.sum().backward()
    assert attn.attention_biases.grad is not None


def test_native_size_is_untouched_and_biases_keep_their_offsets() -> None:
    native = create_student("efficientformer_l1", embed_dim=16)
    assert native.image_size == (224, 224)
    attn = next(m for m in native.modules() if isinstance(m, Attention))
    heads = attn.attention_biases.shape[0]
    table = torch.arange(heads * 49, dtype=torch.float32).reshape(heads, 49)
    attn.attention_biases.data.copy_(table)
    set_attention_grid(native.backbone, (96, 128), "test")
    # Offset (dy, dx) kept its value: old index dy * 7 + dx, new index dy * 4 + dx.
    new = attn.attention_biases.data.reshape(heads, 3, 4)
    torch.testing.assert_close(new, table.reshape(heads, 7, 7)[:, :3, :4])
    assert attn.attention_bias_idxs.shape == (12, 12)


def test_sizes_off_the_grid_are_refused() -> None:
    with pytest.raises(ModelError, match="multiples of 32"):
        create_student("efficientformer_l1", embed_dim=16, image_size=(100, 128))


def test_the_paper_recipe_runs_efficientformer_at_the_recipe_size() -> None:
    # No squash to 224x224: built for data.image_size (its grid re-laid), it receives batches
    # of that size unchanged, in training, eval and timing alike.
    def student_of(sets: list[str]):
        cfg = load_config(
            REPO / "vlcd_dist" / "configs" / "paper.yaml", ["students.2.pretrained=false", *sets]
        )
        (spec,) = [s for s in cfg.students if s.name == "efficientformer_l1"]
        return build_student(cfg, spec, embed_dim=16)

    full = student_of([])
    assert full.image_size == (384, 512)
    attn = next(m for m in full.modules() if isinstance(m, Attention))
    assert attn.attention_biases.shape[1] == 12 * 16
    small = student_of(["data.image_size=[64,96]"]).eval()
    seen = []
    small.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    with torch.no_grad():
        assert small(torch.randn(1, 3, 64, 96)).shape == (1, 16)
    assert seen == [(1, 3, 64, 96)]


def test_bench_models_times_efficientformer_at_the_bench_size() -> None:
    models = build_models("tiny_resnet18_minilm", ["efficientformer_l1"], 16, (64, 96))
    seen = []
    models[1].module.backbone.register_forward_pre_hook(
        lambda module, args: seen.append(tuple(args[0].shape[-2:]))
    )
    report = run_benchmark(
        models,
        image_size=(64, 96),
        batch_size=2,
        repeats=1,
        warmup=0,
        precisions=["fp32"],
        devices=["cpu"],
        threads=1,
    )
    # MAC count, batch-1 and batch-2 calls: every one at 64x96, none resized to 224x224.
    assert seen == [(64, 96)] * 3
    assert report["models"][1]["name"] == "efficientformer_l1"

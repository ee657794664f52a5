"""EfficientFormer-L1 at a CPU-sized input: attention biases re-laid for the new token grid."""

from __future__ import annotations

import pytest
import torch
from timm.models.efficientformer import Attention

from vlcd_dist.models import ModelError, create_student
from vlcd_dist.models.student import set_attention_grid


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

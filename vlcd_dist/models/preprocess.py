"""Each model's own view of a batch: resize to its input size, then normalise with its mean/std.

The data loader decodes and augments a batch once, into float images in [0, 1] at
data.image_size (:mod:`vlcd_dist.data.transforms`); the teacher and every student then take
their own view of that same batch right before their forward: an open_clip or CLIP teacher its
CLIP statistics and input size, a timm student timm's ``pretrained_cfg`` mean and std.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlcd_dist.models.weights import ModelError


def _triple(value: object, what: str) -> tuple[float, float, float]:
    try:
        a, b, c = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError) as exn:
        raise ModelError(f"{what}={value!r}: give three numbers, one per RGB channel") from exn
    return a, b, c


class ImageInput(nn.Module):
    """images [B, 3, H, W] in [0, 1] -> the model's input: resized (bilinear, antialiased) to
    ``size`` when that is set and differs, then ``(x - mean) / std`` per channel.

    mean and std are non-persistent buffers: they follow the module's device but stay out of
    its state_dict, so checkpoints and weight fingerprints do not change. They stay fp32 when
    the module is cast (``.half()``, ``.to(torch.bfloat16)``, DeepSpeed's bf16): 0.485 is not
    a bf16 number. The forward computes in fp32 and returns the input's dtype.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        size: Sequence[int] | None = None,
        *,
        what: str = "model input",
    ) -> None:
        super().__init__()
        self.mean_values = _triple(mean, f"{what} mean")
        self.std_values = _triple(std, f"{what} std")
        if min(self.std_values) <= 0:
            raise ModelError(f"{what} std={list(self.std_values)}: every value must be > 0")
        self.size: tuple[int, int] | None = None if size is None else (int(size[0]), int(size[1]))
        self.register_buffer("mean", self._constant(self.mean_values, None), persistent=False)
        self.register_buffer("std", self._constant(self.std_values, None), persistent=False)

    @staticmethod
    def _constant(values: tuple[float, ...], device: torch.device | None) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def _apply(self, fn: Any, recurse: bool = True) -> ImageInput:  # type: ignore[override]
        # Casts and moves reach the buffers through here: keep the move, rebuild the values in
        # fp32 from the exact floats (a cast to bf16 would round 0.485 to 0.484375).
        super()._apply(fn, recurse)
        device = self.mean.device
        self.mean = self._constant(self.mean_values, device)
        self.std = self._constant(self.std_values, device)
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [0, 1] -> [B, 3, h, w], normalised."""
        if self.size is not None and tuple(images.shape[-2:]) != self.size:
            images = F.interpolate(
                images, size=self.size, mode="bilinear", align_corners=False, antialias=True
            )
        if images.dtype in (torch.float16, torch.bfloat16):
            return ((images.float() - self.mean) / self.std).to(images.dtype)
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def stats(self) -> dict[str, Any]:
        """{"mean": [3], "std": [3], "input_size": [H, W] or None}, plain lists."""
        return {
            "mean": list(self.mean_values),
            "std": list(self.std_values),
            "input_size": list(self.size) if self.size else None,
        }

    def extra_repr(self) -> str:
        return f"mean={list(self.mean_values)}, std={list(self.std_values)}, size={self.size}"


def image_input(
    data_config: Mapping[str, Any], size: Sequence[int] | None = None, *, what: str
) -> ImageInput:
    """An :class:`ImageInput` from a timm-style data config ({"mean", "std", ...})."""
    for key in ("mean", "std"):
        if key not in data_config:
            raise ModelError(f"{what}: its data config has no {key!r} ({dict(data_config)})")
    return ImageInput(data_config["mean"], data_config["std"], size, what=what)

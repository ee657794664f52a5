"""The training backends by name: what ``run.backend`` selects."""

from __future__ import annotations

from typing import Any

from vlcd_dist.errors import VlcdError
from vlcd_dist.train.backend import AccelerateBackend, Backend
from vlcd_dist.train.deepspeed_backend import DeepSpeedBackend


def create_backend(name: str = "accelerate", **kwargs: Any) -> Backend:
    """The backend called ``name``: "accelerate" or "deepspeed" (see deepspeed_backend)."""
    if name == "accelerate":
        kwargs.pop("deepspeed_settings", None)
        return AccelerateBackend(**kwargs)
    if name == "deepspeed":
        return DeepSpeedBackend(**kwargs)
    raise VlcdError(f"unknown backend {name!r}: use 'accelerate' or 'deepspeed'")

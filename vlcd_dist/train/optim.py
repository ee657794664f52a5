"""AdamW with decoupled weight decay on matrices only, and a warm-up + cosine schedule."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: weights of rank >= 2 decay; biases, norms and scalars do not.

    Decaying a norm's gain or the logit scale would pull them towards 0 for no benefit
    (open_clip and timm exclude them the same way).
    """
    decay, no_decay = [], []
    for _, param in module.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def create_optimizer(
    module: nn.Module,
    lr: float,
    weight_decay: float,
    betas: Iterable[float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW over ``module``'s trainable parameters (see :func:`param_groups`)."""
    b1, b2 = tuple(betas)
    # foreach=False: the per-tensor loop is as fast on CPU and keeps state layout predictable.
    return torch.optim.AdamW(
        param_groups(module, weight_decay), lr=lr, betas=(b1, b2), eps=eps, foreach=False
    )


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float = 0.0) -> float:
    """LR multiplier at optimizer step ``step`` (0-based): linear 1/warmup .. 1 over ``warmup``
    steps, then cosine from 1 to ``min_ratio`` at step ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def create_scheduler(
    optimizer: torch.optim.Optimizer, total: int, warmup: int, min_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR following :func:`warmup_cosine`; step it once per optimizer step (also when
    the update is skipped, so every model stays on the run's global schedule)."""
    warmup = min(warmup, max(0, total - 1))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, total, warmup, min_ratio)
    )

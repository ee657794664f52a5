"""Seeded views: augmentations that can be drawn again, exactly, from a seed.

With ``data.views: A`` (:attr:`StreamConfig.views`) a training sample no longer takes its
augmentation from the DataLoader worker's random stream. It has A views, numbered 0..A-1; view
v of sample ``key`` is the training transform run with the torch RNG seeded by
:func:`view_seed` (run seed, key, v). Each epoch, a sample shows one of its views, picked by
:func:`pick_view` (run seed, epoch, key). So any process can regenerate the pixels any other
saw: ``vlcd cache-teacher`` stores the teacher's embedding of every view, and a run with
``teacher.cache`` regenerates, for the students, the very view whose embedding it reads.

The seeds come from BLAKE2b over the decimal text of the inputs (never Python's ``hash()``,
which changes between processes).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import torch


def _hash63(*parts: object) -> int:
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def view_seed(seed: int, key: str, view: int) -> int:
    """The torch seed of view ``view`` of sample ``key`` in a run seeded ``seed``."""
    return _hash63("vlcd-view", int(seed), key, int(view))


def pick_view(seed: int, epoch: int, key: str, views: int) -> int:
    """Which of its ``views`` views sample ``key`` shows in ``epoch``."""
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    return _hash63("vlcd-pick", int(seed), int(epoch), key) % int(views)


def seeded_view(transform: Callable[[Any], torch.Tensor], image: Any, seed: int) -> torch.Tensor:
    """``transform(image)`` with the torch RNG seeded by ``seed``; the caller's RNG state is
    left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transform(image)

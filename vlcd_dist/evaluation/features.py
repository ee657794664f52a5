"""Features of frozen image encoders over one split, spread over the ranks and gathered in the
order of the sample keys, so that whatever follows (probes, bootstrap) sees the same rows on any
number of ranks. Takes rank, world size and device, not a training backend."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch

from vlcd_dist import distributed as vdist

FeatureFn = Callable[[torch.Tensor], torch.Tensor]
"""An image encoder: images [B, 3, H, W] -> features [B, d]."""


def key_order(key: str) -> int:
    """A sample key as a signed 64-bit number to sort by (a hash: rows of one split come in
    the same order from any number of ranks; a tensor, unlike strings, can be gathered)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


@torch.no_grad()
def extract_features(
    encoders: Mapping[str, tuple[FeatureFn, int]],
    batches: Iterable[dict[str, Any]],
    num_tasks: int,
    device: torch.device | str,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Features of every encoder, the labels and the study of every sample of one split,
    gathered from every rank.

    encoders: {name: (images [B, 3, H, W] -> features [B, d], d)}. batches: this rank's
    batches, each with "image" [B, 3, H, W], "labels" [B, T], "key" (B sample keys) and
    optionally "study" (B study ids; a sample without one is its own study); under
    several ranks each rank passes its own share and every rank calls this (collective).
    prepare: what each image batch goes through before the encoders (e.g. moving it to
    ``device`` in channels-last); by default it is moved to ``device``.

    Returns ({name: [N, d] float32}, labels [N, T], studies [N] int64) over all ranks, rows in
    key order; a study is :func:`key_order` of its id (equal ids, equal numbers).
    """
    device = torch.device(device)
    prepare = prepare or (lambda images: images.to(device))
    feats: dict[str, list[torch.Tensor]] = {name: [] for name in encoders}
    labels: list[torch.Tensor] = []
    keys: list[int] = []
    studies: list[int] = []
    for batch in batches:
        images = prepare(batch["image"])
        for name, (fn, _) in encoders.items():
            feats[name].append(fn(images).float())
        labels.append(batch["labels"].to(device))
        keys.extend(key_order(k) for k in batch["key"])
        studies.extend(key_order(s) for s in batch.get("study", batch["key"]))
    local = {
        name: torch.cat(v) if v else torch.zeros(0, encoders[name][1], device=device)
        for name, v in feats.items()
    }
    y = torch.cat(labels) if labels else torch.zeros(0, num_tasks, device=device)
    sizes = vdist.gather_sizes(y.shape[0], like=y)
    key_rows = torch.tensor(keys, dtype=torch.long, device=device)
    order = vdist.gather_no_grad(key_rows, sizes).cpu().numpy().argsort(kind="stable")
    gathered = {n: vdist.gather_no_grad(f, sizes).cpu().numpy()[order] for n, f in local.items()}
    study_rows = torch.tensor(studies, dtype=torch.long, device=device)
    return (
        gathered,
        vdist.gather_no_grad(y, sizes).cpu().numpy()[order],
        vdist.gather_no_grad(study_rows, sizes).cpu().numpy()[order],
    )

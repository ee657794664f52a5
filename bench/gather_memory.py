"""Bytes of contrastive logits held per rank: local loss (n x N) versus full matrix (N x N).

Prints two tables. Figures are analytic (from shapes, fp32 logits, both directions: the
image->text and text->image matrices are each materialised). Where the global batch is small
enough, the local figure is confirmed by building the logits with vlcd_dist.losses.clip_loss on
one simulated rank (the collectives are patched to return a global batch of the right size).

1. Fixed world size W, global batch N growing: local = 2 * (N/W) * N * 4 bytes, a W-fold
   saving over 2 * N * N * 4 but still quadratic in N at fixed W.
2. Fixed per-rank batch n, N growing with the number of ranks (how data parallelism scales):
   local = 2 * n * N * 4 bytes grows linearly in N; the full matrix grows as N^2.

Usage: python bench/gather_memory.py [--dim 512] [--confirm-up-to 4096]
"""

from __future__ import annotations

import argparse
from unittest import mock

import torch
import torch.nn.functional as F

from vlcd_dist import distributed as vdist
from vlcd_dist.losses import clip_loss

FP32 = 4
GLOBAL_BATCHES = (256, 512, 1024, 2048, 4096, 8192, 16384)
WORLDS = (8, 32, 64)
PER_RANK = 256


def local_bytes(n_local: int, n_global: int) -> int:
    """Logits of the local loss on one rank: two [n_local, N] fp32 matrices."""
    return 2 * n_local * n_global * FP32


def full_bytes(n_global: int) -> int:
    """Logits when every rank builds the whole [N, N] matrices (both directions)."""
    return 2 * n_global * n_global * FP32


def measured_local_bytes(n_local: int, n_global: int, world: int, dim: int) -> int:
    """Build the logits of rank 0 of a simulated world with clip_loss; bytes they hold."""
    g = torch.Generator().manual_seed(0)
    others_image = F.normalize(torch.randn(n_global - n_local, dim, generator=g), dim=1)
    others_text = F.normalize(torch.randn(n_global - n_local, dim, generator=g), dim=1)
    sizes = [n_local] * world  # the tables only use N divisible by W
    with (
        mock.patch.object(vdist, "rank_and_world", lambda: (0, world)),
        mock.patch.object(vdist, "gather_sizes", lambda n, like=None: sizes),
        mock.patch.object(
            vdist, "gather_with_grad", lambda x, s=None: torch.cat([x, others_image])
        ),
        mock.patch.object(vdist, "gather_no_grad", lambda x, s=None: torch.cat([x, others_text])),
    ):
        parts = clip_loss(
            torch.randn(n_local, dim, generator=g),
            torch.randn(n_local, dim, generator=g),
            10.0,
            return_logits=True,
        )
    logits = (parts["logits_per_image"], parts["logits_per_text"])
    assert all(t.shape == (n_local, n_global) for t in logits)
    return sum(t.numel() * t.element_size() for t in logits)


def human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def row(world: int, n_global: int, dim: int, confirm_up_to: int) -> str:
    n_local = n_global // world
    loc, full = local_bytes(n_local, n_global), full_bytes(n_global)
    if n_global <= confirm_up_to:
        measured = measured_local_bytes(n_local, n_global, world, dim)
        check = "yes" if measured == loc else f"NO ({measured})"
    else:
        check = "-"
    feats = 2 * n_global * dim * FP32
    return (
        f"{world:>5} {n_global:>7} {n_local:>7} {human(loc):>12} {human(full):>12} "
        f"{full / loc:>7.0f}x {human(feats):>11} {check:>9}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=512, help="feature dimension d")
    parser.add_argument(
        "--confirm-up-to", type=int, default=4096, help="build real logits up to this N"
    )
    args = parser.parse_args()
    header = (
        f"{'W':>5} {'N':>7} {'n/rank':>7} {'local n*N':>12} {'full N*N':>12} {'saving':>8} "
        f"{'gathered':>11} {'measured':>9}"
    )
    print(f"Logit bytes per rank, fp32, both directions; gathered = 2*N*d features (d={args.dim})")
    print("\n1. Fixed world size, global batch growing")
    print(header)
    for world in WORLDS:
        for n_global in GLOBAL_BATCHES:
            if n_global >= world:
                print(row(world, n_global, args.dim, args.confirm_up_to))
        print()
    print(f"2. Fixed per-rank batch n={PER_RANK}, ranks added: N = n * W")
    print(header)
    for n_global in GLOBAL_BATCHES:
        world = n_global // PER_RANK
        print(row(world, n_global, args.dim, args.confirm_up_to))
    print("\nTable 2: the local figure doubles with N (linear), the full matrix quadruples.")


if __name__ == "__main__":
    main()

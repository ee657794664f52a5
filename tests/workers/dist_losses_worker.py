"""Worker for tests/test_losses_distributed.py, started by torchrun with 2 gloo processes.

Every rank builds the same global batches from a fixed seed, keeps its own slice, runs the
losses with real collectives and backward, and writes what it saw to OUT/rank{r}.safetensors.
The test compares those files against one process computing the full batch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.nn.parallel import DistributedDataParallel

from vlcd_dist.distributed import gather_no_grad, gather_sizes, gather_with_grad
from vlcd_dist.losses import LossConfig, clip_loss, vlcd_loss

# Shared with the test: the global batches every case is cut from.
CASES = {"even": [4, 4], "uneven": [5, 3]}
DIM = 16
IN_DIM = 12
LOSS_CFG = LossConfig(contrastive_weight=1.0, distill_lambda=0.5, dist_weight=1.0, gnd_weight=2.0)


def global_batch(case: str) -> dict[str, torch.Tensor]:
    """Identical on every process (seeded): features of the whole global batch."""
    n = sum(CASES[case])
    g = torch.Generator().manual_seed(1234 + n + len(case))
    return {
        "image": torch.randn(n, DIM, generator=g),
        "text": torch.randn(n, DIM, generator=g),
        "teacher": torch.randn(n, DIM, generator=g) * 2.0,
        "anchor": torch.randn(n, DIM, generator=g),
        "x": torch.randn(n, IN_DIM, generator=g),
        "scale": torch.tensor(3.0),
    }


def linear_student() -> torch.nn.Linear:
    """The same initial student on every process."""
    torch.manual_seed(7)
    return torch.nn.Linear(IN_DIM, DIM)


def run_case(case: str, rank: int, world: int) -> dict[str, torch.Tensor]:
    sizes = CASES[case]
    start, stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
    data = {k: (v[start:stop] if v.ndim else v) for k, v in global_batch(case).items()}
    out: dict[str, torch.Tensor] = {}

    # Collectives on their own: sizes, gather without and with gradient.
    out["sizes"] = torch.tensor(gather_sizes(stop - start))
    out["gathered_no_grad"] = gather_no_grad(data["image"])
    img = data["image"].clone().requires_grad_(True)
    gathered = gather_with_grad(img)
    weights = torch.arange(gathered.numel(), dtype=torch.float32).reshape(gathered.shape)
    (gathered * weights).sum().backward()
    out["gather_grad"] = img.grad

    # Student-side contrastive: text anchors gathered without gradient.
    img = data["image"].clone().requires_grad_(True)
    scale = data["scale"].clone().requires_grad_(True)
    parts = clip_loss(img, data["text"], scale, return_logits=True)
    parts["loss"].backward()
    out["clip_loss"] = parts["loss"].detach()
    out["clip_logits_per_image"] = parts["logits_per_image"].detach()
    out["clip_logits_per_text"] = parts["logits_per_text"].detach()
    out["clip_labels"] = parts["labels"]
    out["clip_grad_image"] = img.grad
    out["clip_grad_scale"] = scale.grad

    # Teacher pretraining: both towers train, both gathered with gradient.
    img = data["image"].clone().requires_grad_(True)
    txt = data["text"].clone().requires_grad_(True)
    parts = clip_loss(img, txt, data["scale"])
    parts["loss"].backward()
    out["clip2_loss"] = parts["loss"].detach()
    out["clip2_grad_image"] = img.grad
    out["clip2_grad_text"] = txt.grad

    # VLCD on features.
    stu = data["image"].clone().requires_grad_(True)
    parts = vlcd_loss(stu, data["teacher"], data["anchor"], data["scale"], LOSS_CFG)
    parts["loss"].backward()
    for name in ("loss", "contrastive", "dist", "gnd"):
        out[f"vlcd_{name}"] = parts[name].detach()
    out["vlcd_grad_student"] = stu.grad

    # VLCD through a DDP-wrapped student: DDP averages parameter gradients over ranks.
    model = DistributedDataParallel(linear_student())
    z = model(data["x"])
    vlcd_loss(z, data["teacher"], data["anchor"], data["scale"], LOSS_CFG)["loss"].backward()
    for name, p in model.module.named_parameters():
        out[f"ddp_grad_{name}"] = p.grad
    return {f"{case}/{k}": v.detach().contiguous() for k, v in out.items()}


def main() -> None:
    out_dir = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    results: dict[str, torch.Tensor] = {}
    for case in CASES:
        results.update(run_case(case, rank, world))
    save_file(results, str(out_dir / f"rank{rank}.safetensors"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

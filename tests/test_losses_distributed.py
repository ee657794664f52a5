"""Two real gloo processes (torchrun) against one process computing the whole global batch.

Convention under test (vlcd_dist/losses.py docstring): rank r returns
L_r = W/N * (sum of its local terms), so mean_r L_r equals the full-batch loss L, the gradient
reaching rank r's own features is W * dL/d(features_r), and DDP's averaged parameter gradient
equals dL/d(theta).
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from helpers import REPO, torchrun_worker
from safetensors.torch import load_file

from vlcd_dist.losses import clip_loss, vlcd_loss

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# torchrun with 2 ranks (the module fixture below): not in `make test-fast`.
pytestmark = pytest.mark.multiproc

WORKER = REPO / "tests" / "workers" / "dist_losses_worker.py"
WORLD = 2
ATOL = 1e-5


def _load_worker():
    spec = importlib.util.spec_from_file_location("dist_losses_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


worker = _load_worker()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, torch.Tensor]]:
    """Run the worker under torchrun (2 processes, gloo) once; the results of each rank."""
    out = tmp_path_factory.mktemp("dist_losses")
    torchrun_worker(WORLD, WORKER, out)
    return [load_file(str(out / f"rank{r}.safetensors")) for r in range(WORLD)]


def _slices(sizes: list[int]) -> list[slice]:
    starts = [sum(sizes[:r]) for r in range(len(sizes))]
    return [slice(a, a + n) for a, n in zip(starts, sizes, strict=True)]


def _naive_clip(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Full N x N symmetric InfoNCE, float64."""
    i = image / image.norm(dim=1, keepdim=True)
    t = text / text.norm(dim=1, keepdim=True)
    logits = scale * i @ t.T
    n = logits.shape[0]
    diag = logits[range(n), range(n)]
    return 0.5 * ((logits.logsumexp(1) - diag).mean() + (logits.logsumexp(0) - diag).mean())


@pytest.mark.parametrize("case", list(worker.CASES))
def test_collectives(ranks: list[dict[str, torch.Tensor]], case: str) -> None:
    sizes = worker.CASES[case]
    data = worker.global_batch(case)
    n = sum(sizes)
    weights = torch.arange(n * worker.DIM, dtype=torch.float32).reshape(n, worker.DIM)
    for rank, (res, rows) in enumerate(zip(ranks, _slices(sizes), strict=True)):
        assert res[f"{case}/sizes"].tolist() == sizes, rank
        torch.testing.assert_close(res[f"{case}/gathered_no_grad"], data["image"])
        # d/dx_r of sum_q sum(gathered * w) = W * w[rows of r]: every rank's loss sees x_r.
        torch.testing.assert_close(res[f"{case}/gather_grad"], WORLD * weights[rows])


@pytest.mark.parametrize("case", list(worker.CASES))
def test_clip_loss_matches_full_batch(ranks: list[dict[str, torch.Tensor]], case: str) -> None:
    sizes = worker.CASES[case]
    data = worker.global_batch(case)
    n = sum(sizes)

    image = data["image"].clone().requires_grad_(True)
    scale = data["scale"].clone().requires_grad_(True)
    ref = clip_loss(image, data["text"], scale)["loss"]
    ref.backward()
    naive = _naive_clip(data["image"].double(), data["text"].double(), data["scale"].double())
    assert abs(ref.item() - naive.item()) < ATOL

    losses = torch.stack([r[f"{case}/clip_loss"] for r in ranks])
    assert abs(losses.mean().item() - ref.item()) < ATOL
    # Replicated parameter (logit scale): the DDP average of the per-rank gradients.
    scale_grad = torch.stack([r[f"{case}/clip_grad_scale"] for r in ranks]).mean()
    assert abs(scale_grad.item() - scale.grad.item()) < ATOL
    for rank, (res, rows) in enumerate(zip(ranks, _slices(sizes), strict=True)):
        # Local logits only: B_local x B_global, labels offset by the lower ranks' samples.
        assert res[f"{case}/clip_logits_per_image"].shape == (sizes[rank], n)
        assert res[f"{case}/clip_logits_per_text"].shape == (sizes[rank], n)
        assert res[f"{case}/clip_labels"].tolist() == list(range(rows.start, rows.stop))
        full_logits = data["scale"] * torch.nn.functional.normalize(data["image"], dim=1)
        full_logits = full_logits @ torch.nn.functional.normalize(data["text"], dim=1).T
        torch.testing.assert_close(
            res[f"{case}/clip_logits_per_image"], full_logits[rows], atol=ATOL, rtol=0
        )
        torch.testing.assert_close(
            res[f"{case}/clip_logits_per_text"], full_logits.T[rows], atol=ATOL, rtol=0
        )
        torch.testing.assert_close(
            res[f"{case}/clip_grad_image"] / WORLD, image.grad[rows], atol=ATOL, rtol=0
        )


@pytest.mark.parametrize("case", list(worker.CASES))
def test_clip_loss_both_towers_training(ranks: list[dict[str, torch.Tensor]], case: str) -> None:
    sizes = worker.CASES[case]
    data = worker.global_batch(case)
    image = data["image"].clone().requires_grad_(True)
    text = data["text"].clone().requires_grad_(True)
    ref = clip_loss(image, text, data["scale"])["loss"]
    ref.backward()
    losses = torch.stack([r[f"{case}/clip2_loss"] for r in ranks])
    assert abs(losses.mean().item() - ref.item()) < ATOL
    for res, rows in zip(ranks, _slices(sizes), strict=True):
        torch.testing.assert_close(
            res[f"{case}/clip2_grad_image"] / WORLD, image.grad[rows], atol=ATOL, rtol=0
        )
        torch.testing.assert_close(
            res[f"{case}/clip2_grad_text"] / WORLD, text.grad[rows], atol=ATOL, rtol=0
        )


@pytest.mark.parametrize("case", list(worker.CASES))
def test_vlcd_loss_matches_full_batch(ranks: list[dict[str, torch.Tensor]], case: str) -> None:
    sizes = worker.CASES[case]
    data = worker.global_batch(case)
    student = data["image"].clone().requires_grad_(True)
    ref = vlcd_loss(student, data["teacher"], data["anchor"], data["scale"], worker.LOSS_CFG)
    ref["loss"].backward()
    for name in ("loss", "contrastive", "dist", "gnd"):
        mean = torch.stack([r[f"{case}/vlcd_{name}"] for r in ranks]).mean()
        assert abs(mean.item() - ref[name].item()) < ATOL, name
    for res, rows in zip(ranks, _slices(sizes), strict=True):
        torch.testing.assert_close(
            res[f"{case}/vlcd_grad_student"] / WORLD, student.grad[rows], atol=ATOL, rtol=0
        )


@pytest.mark.parametrize("case", list(worker.CASES))
def test_ddp_parameter_gradients_equal_full_batch(
    ranks: list[dict[str, torch.Tensor]], case: str
) -> None:
    data = worker.global_batch(case)
    model = worker.linear_student()
    z = model(data["x"])
    vlcd_loss(z, data["teacher"], data["anchor"], data["scale"], worker.LOSS_CFG)["loss"].backward()
    for name, p in model.named_parameters():
        for res in ranks:
            torch.testing.assert_close(res[f"{case}/ddp_grad_{name}"], p.grad, atol=ATOL, rtol=0)

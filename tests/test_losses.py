"""Each loss against a hand-written per-element formula: values and input gradients."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

from vlcd_dist import distributed as vdist
from vlcd_dist.losses import (
    LossConfig,
    clip_loss,
    cosine_distance,
    feature_distill_loss,
    gnd_loss,
    gnd_per_sample,
    predistill_loss,
    vlcd_loss,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ATOL = 1e-5
B, D = 6, 5


def _fixed(seed: int, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def _leaf(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return x.detach().to(dtype).clone().requires_grad_(True)


# ----- naive references, written element by element, computed in float64 --------------------


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return sum(a[k] * b[k] for k in range(a.shape[0]))


def _norm(a: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(_dot(a, a))


def naive_clip(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean_i CE(row i -> text i) + mean_j CE(column j -> image j)), explicit N x N."""
    n = image.shape[0]
    sim = [[scale * _dot(image[i], text[j]) / (_norm(image[i]) * _norm(text[j])) for j in range(n)]
           for i in range(n)]  # fmt: skip
    i2t = sum(-torch.log(torch.exp(sim[i][i]) / sum(torch.exp(sim[i][j]) for j in range(n)))
              for i in range(n)) / n  # fmt: skip
    t2i = sum(-torch.log(torch.exp(sim[j][j]) / sum(torch.exp(sim[i][j]) for i in range(n)))
              for j in range(n)) / n  # fmt: skip
    return 0.5 * (i2t + t2i)


def naive_dist(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    n = student.shape[0]
    return (
        sum(
            1 - _dot(student[i], teacher[i]) / (_norm(student[i]) * _norm(teacher[i]))
            for i in range(n)
        )
        / n
    )


def naive_gnd(student: torch.Tensor, teacher: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    n = student.shape[0]
    total = 0
    for i in range(n):
        u_hat = anchor[i] / _norm(anchor[i])
        total = (
            total
            + 1
            - _dot(student[i], u_hat) / torch.maximum(_norm(student[i]), _norm(teacher[i]))
        )
    return total / n


def _grads(loss: torch.Tensor, *inputs: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, inputs))


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a.double(), b.double(), atol=ATOL, rtol=1e-5)


# ----- contrastive ---------------------------------------------------------------------------


def test_clip_loss_value_and_gradients_match_naive() -> None:
    image, text = _fixed(0, B, D), _fixed(1, B, D)
    scale = torch.tensor(4.0)
    args = (_leaf(image), _leaf(text), _leaf(scale))
    parts = clip_loss(*args)
    ref_args = (
        _leaf(image, torch.float64),
        _leaf(text, torch.float64),
        _leaf(scale, torch.float64),
    )
    ref = naive_clip(*ref_args)
    assert set(parts) == {"loss", "contrastive"}
    assert parts["loss"].dtype == torch.float32
    _close(parts["loss"], ref)
    _close(parts["contrastive"], ref)
    for got, want in zip(_grads(parts["loss"], *args), _grads(ref, *ref_args), strict=True):
        _close(got, want)


def test_clip_loss_frozen_text_gets_no_gradient() -> None:
    image, text = _fixed(2, B, D), _fixed(3, B, D)
    img = _leaf(image)
    loss = clip_loss(img, text, 2.5)["loss"]
    (got,) = _grads(loss, img)
    ref_img = _leaf(image, torch.float64)
    (want,) = _grads(naive_clip(ref_img, text.double(), torch.tensor(2.5).double()), ref_img)
    _close(got, want)
    assert not text.requires_grad


def test_clip_loss_exposes_local_logits_in_one_process() -> None:
    image, text = _fixed(4, B, D), _fixed(5, B, D)
    parts = clip_loss(image, text, 3.0, return_logits=True)
    assert parts["logits_per_image"].shape == (B, B)
    assert parts["labels"].tolist() == list(range(B))
    torch.testing.assert_close(parts["logits_per_text"], parts["logits_per_image"].T)


def test_losses_run_in_fp32_under_bf16_autocast() -> None:
    image, text = _fixed(6, B, D).bfloat16(), _fixed(7, B, D).bfloat16()
    teacher = _fixed(8, B, D).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        parts = vlcd_loss(image, teacher, text, 5.0)
    ref = vlcd_loss(image.float(), teacher.float(), text.float(), 5.0)
    for name in ("loss", "contrastive", "dist", "gnd"):
        assert parts[name].dtype == torch.float32, name
        # Same fp32 inputs, same fp32 arithmetic: autocast must not have lowered the matmuls.
        assert parts[name].item() == pytest.approx(ref[name].item(), abs=1e-6), name


def test_simulated_ranks_reproduce_full_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-rank values with patched collectives (4 simulated ranks, uneven sizes)."""
    sizes = [3, 1, 2, 2]
    image, text, teacher = _fixed(9, 8, D), _fixed(10, 8, D), _fixed(11, 8, D)
    full = vlcd_loss(image, teacher, text, 3.0)
    per_rank = []
    for rank in range(len(sizes)):
        rows = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
        monkeypatch.setattr(vdist, "rank_and_world", lambda r=rank: (r, len(sizes)))
        monkeypatch.setattr(vdist, "gather_sizes", lambda n, like=None: list(sizes))

        # A rank's gather returns the global batch with its own input as its slice; the loss
        # gathers unit vectors, so the other ranks' rows are normalised like the local ones.
        unit_image, unit_text = F.normalize(image, dim=1), F.normalize(text, dim=1)
        monkeypatch.setattr(
            vdist,
            "gather_with_grad",
            lambda x, s=None, r=rows, g=unit_image: torch.cat([g[: r.start], x, g[r.stop :]]),
        )
        monkeypatch.setattr(
            vdist,
            "gather_no_grad",
            lambda x, s=None, r=rows, g=unit_text: torch.cat([g[: r.start], x, g[r.stop :]]),
        )
        parts = vlcd_loss(image[rows], teacher[rows], text[rows], 3.0, return_logits=True)
        assert parts["logits_per_image"].shape == (sizes[rank], 8)
        per_rank.append(parts)
    for name in ("loss", "contrastive", "dist", "gnd"):
        mean = torch.stack([p[name] for p in per_rank]).mean()
        assert mean.item() == pytest.approx(full[name].item(), abs=ATOL), name


# ----- distillation terms --------------------------------------------------------------------


@pytest.mark.parametrize("fn", [feature_distill_loss, predistill_loss])
def test_feature_distill_value_and_gradient(fn) -> None:
    student, teacher = _fixed(12, B, D), _fixed(13, B, D, scale=3.0)
    s = _leaf(student)
    parts = fn(s, teacher)
    assert set(parts) == {"loss", "dist"}
    s64 = _leaf(student, torch.float64)
    ref = naive_dist(s64, teacher.double())
    _close(parts["loss"], ref)
    _close(_grads(parts["loss"], s)[0], _grads(ref, s64)[0])


def test_feature_distill_never_backpropagates_into_teacher() -> None:
    student, teacher = _leaf(_fixed(14, B, D)), _leaf(_fixed(15, B, D))
    feature_distill_loss(student, teacher)["loss"].backward()
    assert teacher.grad is None and student.grad is not None


@pytest.mark.parametrize("regime", ["student_larger", "student_smaller", "mixed"])
def test_gnd_value_and_gradient(regime: str) -> None:
    direction = _fixed(16, B, D)
    direction = direction / direction.norm(dim=1, keepdim=True)
    teacher_dir = _fixed(17, B, D)
    teacher_dir = teacher_dir / teacher_dir.norm(dim=1, keepdim=True)
    student_norm = {
        "student_larger": torch.full((B, 1), 5.0),
        "student_smaller": torch.full((B, 1), 0.5),
        "mixed": torch.tensor([[5.0], [0.5], [3.0], [1.5], [0.2], [4.0]]),
    }[regime]
    student = direction * student_norm
    teacher = teacher_dir * 2.0
    anchor = _fixed(18, B, D, scale=7.0)
    s = _leaf(student)
    parts = gnd_loss(s, teacher, anchor)
    assert set(parts) == {"loss", "gnd"}
    s64 = _leaf(student, torch.float64)
    ref = naive_gnd(s64, teacher.double(), anchor.double())
    _close(parts["loss"], ref)
    got, want = _grads(parts["loss"], s)[0], _grads(ref, s64)[0]
    _close(got, want)
    if regime == "student_smaller":
        # Denominator is ||z_T||, a constant: the gradient is -u_hat / (B ||z_T||) exactly.
        u_hat = anchor / anchor.norm(dim=1, keepdim=True)
        _close(got, -u_hat / (B * 2.0))
    if regime == "student_larger":
        # Denominator is ||z_k||: the term is 1 - cos(z_k, u), invariant to the student's scale.
        _close(gnd_per_sample(student, teacher, anchor), cosine_distance(student, anchor))


def test_gnd_per_sample_is_vectorised_formula() -> None:
    s, t, u = _fixed(19, 64, 32), _fixed(20, 64, 32), _fixed(21, 64, 32)
    per = gnd_per_sample(s, t, u)
    assert per.shape == (64,)
    _close(per.mean(), naive_gnd(s.double(), t.double(), u.double()))


def test_zero_vectors_give_finite_losses() -> None:
    zeros = torch.zeros(2, D, requires_grad=True)
    other = _fixed(22, 2, D)
    parts = vlcd_loss(zeros, other, other, 2.0)
    parts["loss"].backward()
    assert all(torch.isfinite(v).all() for v in parts.values())
    assert torch.isfinite(zeros.grad).all()


def test_shape_mismatch_is_explained() -> None:
    with pytest.raises(ValueError, match="teacher's d"):
        feature_distill_loss(torch.zeros(2, 3), torch.zeros(2, 4))


# ----- the combined objective ----------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg",
    [
        LossConfig(),
        LossConfig(contrastive_weight=0.5, distill_lambda=2.0, dist_weight=0.3, gnd_weight=1.7),
        LossConfig(distill_lambda=0.0),
    ],
)
def test_vlcd_loss_value_and_gradient(cfg: LossConfig) -> None:
    student, teacher, anchor = _fixed(23, B, D), _fixed(24, B, D, scale=2.0), _fixed(25, B, D)
    scale = torch.tensor(1 / 0.07)
    s = _leaf(student)
    parts = vlcd_loss(s, teacher, anchor, scale, cfg)
    assert set(parts) == {"loss", "contrastive", "dist", "gnd"}
    s64 = _leaf(student, torch.float64)
    t64, u64 = teacher.double(), anchor.double()
    contrastive = naive_clip(s64, u64, scale.double())
    dist, gnd = naive_dist(s64, t64), naive_gnd(s64, t64, u64)
    ref = cfg.contrastive_weight * contrastive + cfg.distill_lambda * (
        cfg.dist_weight * dist + cfg.gnd_weight * gnd
    )
    _close(parts["contrastive"], contrastive)
    _close(parts["dist"], dist)
    _close(parts["gnd"], gnd)
    _close(parts["loss"], ref)
    _close(_grads(parts["loss"], s)[0], _grads(ref, s64)[0])


def test_default_lambda_is_paper_value() -> None:
    assert LossConfig().distill_lambda == 0.1


@pytest.mark.parametrize(
    "field,value",
    [("distill_lambda", -1.0), ("gnd_weight", math.nan), ("contrastive_weight", math.inf)],
)
def test_loss_config_validation_says_how_to_fix(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=rf"LossConfig\.{field}=.*finite number >= 0"):
        LossConfig(**{field: value})


def test_collectives_are_identity_in_one_process() -> None:
    x = _leaf(_fixed(26, 3, D))
    assert vdist.gather_sizes(3) == [3]
    assert vdist.gather_with_grad(x) is x
    gathered = vdist.gather_no_grad(x)
    assert torch.equal(gathered, x) and not gathered.requires_grad
    assert vdist.rank_and_world() == (0, 1)

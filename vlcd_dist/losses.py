"""VLCD losses: CLIP-style contrastive loss over the global batch and the distillation terms.

Every loss returns a dict of named parts ({"loss", "contrastive", "dist", "gnd"}, only the parts
that apply) so the trainer can log them without extra plumbing. ``"loss"`` is the tensor to call
``backward()`` on; the other parts are the unweighted terms, still attached to the graph.

Arithmetic is fp32 with autocast disabled, whatever dtype the features arrive in: bf16 logits
lose the small differences InfoNCE depends on, and cosines near 1 would round to exactly 1.

Normalisation under data parallelism (the convention every loss here follows)
------------------------------------------------------------------------------
Let W be the world size, n_r the local batch of rank r, N = sum_r n_r the global batch, and
L the loss of a single process that sees the whole global batch (a mean over N samples).
Each rank returns

    L_r = W / N * (sum of the per-sample terms of its n_r local samples)

so that

* ``mean_r L_r == L`` exactly, also when the n_r differ (the last step of an epoch). Log the
  mean over ranks of a part and you get the global-batch value.
* DDP, Accelerate and DeepSpeed *average* parameter gradients over ranks. With
  :func:`vlcd_dist.distributed.gather_with_grad` (whose backward sums every rank's gradient
  into the owner of the rows), the gradient that reaches rank r's own features is
  ``d(sum_q L_q)/d(features_r) = W * dL/d(features_r)``; averaging parameter gradients over
  the W ranks then yields exactly ``dL/d(theta)``, the full-batch gradient. Replicated
  parameters used inside the loss (the logit scale) get ``dL_r/ds`` on each rank, whose mean
  is again ``dL/ds``.
* For W = 1 this is the ordinary mean over the batch.

The per-sample terms (``dist``, ``gnd``) use the same convention when given ``sizes`` (as
:func:`vlcd_loss` does), so that all parts are weighted consistently on an uneven last step;
without ``sizes`` they are a plain local mean, which equals the convention whenever the ranks
hold equal batches, and needs no collective (safe to call on one rank only, e.g. in eval).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlcd_dist import distributed as vdist
from vlcd_dist.errors import VlcdError

Tensor = torch.Tensor


class LossConfigError(VlcdError, ValueError):
    """A LossConfig field has a value the losses cannot use."""


@dataclass
class LossConfig:
    """Weights of the VLCD objective L = w_t L_t + lambda (w_dist L_dist + w_gnd L_gnd)."""

    contrastive_weight: float = 1.0
    """w_t: weight of the student-to-text-anchor contrastive loss L_t."""
    distill_lambda: float = 0.1
    """lambda: weight of (L_dist + L_gnd); the paper finds 0.01 under-distils, 10 over-distils."""
    dist_weight: float = 1.0
    """w_dist: weight of L_dist = 1 - cos(z_k, z_T) inside the lambda bracket."""
    gnd_weight: float = 1.0
    """w_gnd: weight of the norm-and-direction term L_gnd inside the lambda bracket."""
    eps: float = 1e-8
    """Floor applied to vector norms so that zero vectors give finite losses."""

    def __post_init__(self) -> None:
        for name in ("contrastive_weight", "distill_lambda", "dist_weight", "gnd_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise LossConfigError(
                    f"LossConfig.{name}={value!r}: use a finite number >= 0 "
                    "(0 switches the term off)"
                )
        if not (isinstance(self.eps, (int, float)) and 0 < self.eps < 1e-2):
            raise LossConfigError(
                f"LossConfig.eps={self.eps!r}: use a small positive number, e.g. 1e-8"
            )


def _fp32(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float32 else x.float()


def _no_autocast(x: Tensor) -> torch.autocast:
    return torch.autocast(device_type=x.device.type, enabled=False)


def _reduce(per_sample: Tensor, sizes: Sequence[int] | None) -> Tensor:
    """Per-rank share of a global-batch mean (module docstring); plain mean without sizes."""
    if sizes is None:
        return per_sample.mean()
    total = sum(sizes)
    if total == 0:
        return per_sample.sum() * 0.0
    return per_sample.sum() * (len(sizes) / total)


def _check_pair(a: Tensor, b: Tensor, what: str) -> None:
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"{what}: expected two [B, d] tensors of the same shape, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}; the student projection must output the teacher's d"
        )


def cosine_distance(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """1 - cos(a_i, b_i) per row.

    a, b: [B, d]. Returns [B] in fp32. Norms are floored at ``eps``.
    """
    _check_pair(a, b, "cosine_distance")
    with _no_autocast(a):
        a, b = _fp32(a), _fp32(b)
        na = a.norm(dim=-1).clamp_min(eps)
        nb = b.norm(dim=-1).clamp_min(eps)
        return 1.0 - (a * b).sum(dim=-1) / (na * nb)


def gnd_per_sample(student: Tensor, teacher: Tensor, anchor: Tensor, eps: float = 1e-8) -> Tensor:
    """L_gnd = 1 - <z_k, u/||u||> / max(||z_k||, ||z_T||) per row.

    student z_k, teacher z_T, anchor u: [B, d] (unnormalised). Returns [B] in fp32. The max in
    the denominator is what pushes a student whose norm is below the teacher's to grow (the
    term then reads 1 - ||z_k|| cos(z_k, u) / ||z_T||), while a student already larger than
    the teacher is only steered in direction (1 - cos(z_k, u)).
    """
    _check_pair(student, teacher, "gnd_loss")
    _check_pair(student, anchor, "gnd_loss")
    with _no_autocast(student):
        s, t, u = _fp32(student), _fp32(teacher), _fp32(anchor)
        u_dir = u / u.norm(dim=-1, keepdim=True).clamp_min(eps)
        denom = torch.maximum(s.norm(dim=-1), t.norm(dim=-1)).clamp_min(eps)
        return 1.0 - (s * u_dir).sum(dim=-1) / denom


def feature_distill_loss(
    student: Tensor, teacher: Tensor, *, sizes: Sequence[int] | None = None, eps: float = 1e-8
) -> dict[str, Tensor]:
    """L_dist = 1 - cos(z_k, z_T), averaged over the batch.

    student z_k, teacher z_T: [B, d]. The teacher is a target and is detached. ``sizes``
    (every rank's batch size, from :func:`vlcd_dist.distributed.gather_sizes`) switches to the
    global-batch convention of the module docstring. Returns {"loss", "dist"} (fp32 scalars).
    """
    dist = _reduce(cosine_distance(student, teacher.detach(), eps), sizes)
    return {"loss": dist, "dist": dist}


def predistill_loss(
    student: Tensor, teacher: Tensor, *, sizes: Sequence[int] | None = None, eps: float = 1e-8
) -> dict[str, Tensor]:
    """Stage 1 (natural images, no labels): L_pre = 1 - cos(z_k, z_T), mean over the batch.

    Same shapes and convention as :func:`feature_distill_loss`. Returns {"loss", "dist"}.
    """
    return feature_distill_loss(student, teacher, sizes=sizes, eps=eps)


def gnd_loss(
    student: Tensor,
    teacher: Tensor,
    anchor: Tensor,
    *,
    sizes: Sequence[int] | None = None,
    eps: float = 1e-8,
) -> dict[str, Tensor]:
    """L_gnd averaged over the batch (see :func:`gnd_per_sample`).

    student, teacher, anchor: [B, d]; teacher and anchor are targets and are detached.
    Returns {"loss", "gnd"} (fp32 scalars).
    """
    gnd = _reduce(gnd_per_sample(student, teacher.detach(), anchor.detach(), eps), sizes)
    return {"loss": gnd, "gnd": gnd}


def _contrastive(
    image: Tensor,
    text: Tensor,
    logit_scale: Tensor | float,
    sizes: Sequence[int],
    text_with_grad: bool,
    return_logits: bool,
) -> dict[str, Tensor]:
    rank, world = vdist.rank_and_world()
    n = image.shape[0]
    offset = sum(sizes[:rank])
    total = sum(sizes)
    with _no_autocast(image):
        image = F.normalize(_fp32(image), dim=-1)
        text = F.normalize(_fp32(text), dim=-1)
        scale = torch.as_tensor(logit_scale, dtype=torch.float32, device=image.device)
        all_image = vdist.gather_with_grad(image, list(sizes))
        gather_text = vdist.gather_with_grad if text_with_grad else vdist.gather_no_grad
        all_text = gather_text(text, list(sizes))
        # Rows are this rank's samples, columns the whole global batch: n x N, never N x N.
        logits_per_image = scale * image @ all_text.T
        logits_per_text = scale * text @ all_image.T
        labels = torch.arange(n, device=image.device) + offset
        ce_image = F.cross_entropy(logits_per_image, labels, reduction="sum")
        ce_text = F.cross_entropy(logits_per_text, labels, reduction="sum")
        loss = (ce_image + ce_text) * (0.5 * world / total) if total else (ce_image + ce_text) * 0
    out = {"loss": loss, "contrastive": loss}
    if return_logits:
        out.update(
            logits_per_image=logits_per_image, logits_per_text=logits_per_text, labels=labels
        )
    return out


def _sizes_for(x: Tensor, sizes: Sequence[int] | None) -> list[int]:
    return vdist.gather_sizes(x.shape[0], like=x) if sizes is None else list(sizes)


def clip_loss(
    image: Tensor,
    text: Tensor,
    logit_scale: Tensor | float,
    *,
    sizes: Sequence[int] | None = None,
    gather_text_with_grad: bool | None = None,
    return_logits: bool = False,
) -> dict[str, Tensor]:
    """Symmetric InfoNCE over the global batch, computed locally on each rank.

    image: [n, d] image (teacher) or student features of this rank, unnormalised.
    text: [n, d] text features or text anchors of the same samples, unnormalised.
    logit_scale: scalar multiplier of the cosine logits (exp of the learnt log-scale).
    sizes: every rank's n (from :func:`vlcd_dist.distributed.gather_sizes`); gathered when
        left out. Ranks may hold different n.
    gather_text_with_grad: gather text features with autograd (stage 0, both towers train)
        or without (frozen text anchors). ``None`` decides by ``text.requires_grad``.
    return_logits: also return "logits_per_image" and "logits_per_text" ([n, N] each, fp32) and
        "labels" ([n], the global column of each local row's positive).

    Image features are gathered with gradient. Each rank scores its n images against all N
    texts and its n texts against all N images, labels offset by the samples of lower ranks;
    memory is O(n N) per rank. The returned loss follows the module's convention: the mean over
    ranks equals the loss of one process on the global batch, and DDP's gradient averaging
    yields that process's gradient. Collective: every rank must call it. Returns
    {"loss", "contrastive"} (fp32 scalars, equal).
    """
    _check_pair(image, text, "clip_loss")
    with_grad = text.requires_grad if gather_text_with_grad is None else gather_text_with_grad
    return _contrastive(
        image, text, logit_scale, _sizes_for(image, sizes), with_grad, return_logits
    )


def vlcd_loss(
    student: Tensor,
    teacher: Tensor,
    anchor: Tensor,
    logit_scale: Tensor | float,
    cfg: LossConfig | None = None,
    *,
    sizes: Sequence[int] | None = None,
    return_logits: bool = False,
) -> dict[str, Tensor]:
    """Stage 2: L = w_t L_t + lambda (w_dist L_dist + w_gnd L_gnd).

    student: [n, d] student features z_k of this rank (with gradient).
    teacher: [n, d] frozen teacher image features z_T (detached here).
    anchor: [n, d] cached text anchors u of the same samples (detached here).
    logit_scale: scalar multiplier of the cosine logits of L_t.
    cfg: the weights; defaults to ``LossConfig()`` (lambda = 0.1).
    sizes: every rank's n; gathered once when left out and shared by all three terms, so they
        follow the same global-batch convention (module docstring). Collective.
    Returns {"loss", "contrastive", "dist", "gnd"} (fp32 scalars; the parts unweighted), plus
    the logits of :func:`clip_loss` when ``return_logits``.
    """
    cfg = LossConfig() if cfg is None else cfg
    _check_pair(student, teacher, "vlcd_loss")
    _check_pair(student, anchor, "vlcd_loss")
    teacher, anchor = teacher.detach(), anchor.detach()
    sizes = _sizes_for(student, sizes)
    parts = _contrastive(student, anchor, logit_scale, sizes, False, return_logits)
    dist = _reduce(cosine_distance(student, teacher, cfg.eps), sizes)
    gnd = _reduce(gnd_per_sample(student, teacher, anchor, cfg.eps), sizes)
    contrastive = parts["contrastive"]
    loss = cfg.contrastive_weight * contrastive + cfg.distill_lambda * (
        cfg.dist_weight * dist + cfg.gnd_weight * gnd
    )
    parts.update(loss=loss, dist=dist, gnd=gnd)
    return parts

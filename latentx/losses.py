"""GAN losses from discriminator logits, and the MSGAN mode-seeking term (SPEC C1).

Every loss takes D's raw output ``s`` (a logit, or a critic value for WGAN) and never a
probability: ``log D = −softplus(−s)`` and ``log(1 − D) = −softplus(s)`` are exact for any
``s`` where ``log(sigmoid(s))`` underflows to ``−inf``.

Kinds (``GAN_LOSSES``), for D and for G (seed 002; seed 001 eq. 4):

==============  ==========================================  ==============================
kind            D minimises                                 G minimises
==============  ==========================================  ==============================
minimax         −log D(x) − log(1 − D(G(z)))                log(1 − D(G(z)))  (eq. 5)
nonsaturating   same as minimax                             −log D(G(z))
hinge           relu(1 − s_real) + relu(1 + s_fake)         −s_fake
lsgan           ½(s_real − 1)² + ½ s_fake²                  ½(s_fake − 1)²
wgan            s_fake − s_real  (+ :func:`gradient_penalty`) −s_fake
==============  ==========================================  ==============================
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

GAN_LOSSES = ("minimax", "nonsaturating", "hinge", "lsgan", "wgan")


def _check_kind(kind: str) -> None:
    if kind not in GAN_LOSSES:
        raise ValueError(f"kind must be one of {GAN_LOSSES}, got {kind!r}")


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def discriminator_loss(real: Tensor, fake: Tensor, kind: str, reduction: str = "mean") -> Tensor:
    """D's loss on real and generated samples.

    Args:
        real: D's logits on real data [B] (or [B, 1]).
        fake: D's logits on generated data, real's shape.
        kind: one of ``GAN_LOSSES``; for ``"wgan"`` add :func:`gradient_penalty` yourself.
        reduction: ``"mean"`` (a scalar), ``"sum"`` or ``"none"`` (per pair, [B]).

    Returns:
        The loss; per pair it is the real term plus the fake term.
    """
    _check_kind(kind)
    if real.shape != fake.shape:
        raise ValueError(f"real and fake must have the same shape, got {list(real.shape)} and {list(fake.shape)}")
    if kind in ("minimax", "nonsaturating"):
        loss = F.softplus(-real) + F.softplus(fake)  # −log σ(s_r) − log(1 − σ(s_f))
    elif kind == "hinge":
        loss = F.relu(1 - real) + F.relu(1 + fake)
    elif kind == "lsgan":
        loss = 0.5 * (real - 1) ** 2 + 0.5 * fake**2
    else:
        loss = fake - real
    return _reduce(loss, reduction)


def generator_loss(fake: Tensor, kind: str, reduction: str = "mean") -> Tensor:
    """G's loss on D's logits for generated samples ``fake`` [B] (see the module table)."""
    _check_kind(kind)
    if kind == "minimax":
        loss = -F.softplus(fake)  # log(1 − σ(s))
    elif kind == "nonsaturating":
        loss = F.softplus(-fake)  # −log σ(s)
    elif kind == "lsgan":
        loss = 0.5 * (fake - 1) ** 2
    else:
        loss = -fake
    return _reduce(loss, reduction)


def gradient_penalty(D: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor, weight: float = 10.0) -> Tensor:
    """WGAN-GP's penalty ``weight · E[(‖∇ D(x̂)‖₂ − 1)²]`` on random interpolates x̂.

    Args:
        D: the critic, [B, ...] → [B] or [B, 1].
        real, fake: samples [B, ...] of the same shape; fake is detached here.
        weight: λ (Gulrajani et al. use 10).

    Returns:
        A scalar that keeps the graph to D's parameters (add it to D's loss).
    """
    if real.shape != fake.shape:
        raise ValueError(f"real and fake must have the same shape, got {list(real.shape)} and {list(fake.shape)}")
    alpha = torch.rand((real.shape[0],) + (1,) * (real.dim() - 1), device=real.device, dtype=real.dtype)
    mixed = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(D(mixed).sum(), mixed, create_graph=True)
    return weight * ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def mode_seeking_ratio(x1: Tensor, x2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """MSGAN's ratio (seed 001 eq. 3): ``d_I(x1, x2) / d_z(z1, z2)`` per pair.

    Both distances are mean absolute differences over a sample's elements, as in MSGAN.

    Args:
        x1, x2: generations [B, ...] of z1 and z2.
        z1, z2: latents [B, ...].

    Returns:
        [B] ratios; large means the pair's generations stay apart (diverse).
    """
    if x1.shape != x2.shape or z1.shape != z2.shape:
        raise ValueError("x1/x2 and z1/z2 must have matching shapes")
    return (x1 - x2).abs().flatten(1).mean(1) / (z1 - z2).abs().flatten(1).mean(1)


def mode_seeking_loss(x1: Tensor, x2: Tensor, z1: Tensor, z2: Tensor, eps: float = 1e-5) -> Tensor:
    """MSGAN's regulariser to minimise: ``1 / (mean_d_I / mean_d_z + eps)`` (a scalar).

    Eq. 3 is to be maximised; MSGAN's code minimises its reciprocal with a positive λ_ms,
    which stays bounded where the ratio grows. Distances are averaged over the batch before
    the ratio, as there. ``eps`` > 0 bounds the loss where the two generations coincide.
    """
    if x1.shape != x2.shape or z1.shape != z2.shape:
        raise ValueError("x1/x2 and z1/z2 must have matching shapes")
    # Written as not (in range) so that NaN fails too; eps <= 0 lets the loss reach ±inf.
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0 < eps < math.inf):
        raise ValueError(f"mode_seeking_loss: eps must be a positive finite number, got {eps!r}")
    ratio = (x1 - x2).abs().mean() / (z1 - z2).abs().mean()
    return 1.0 / (ratio + eps)

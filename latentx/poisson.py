"""Poisson image blending (Pérez, Gangnet & Blake 2003), solved with batched conjugate gradients.

Inside a region Ω the result f keeps the *gradients* of the source g and meets the target t
on Ω's boundary: for every pixel p ∈ Ω (4-neighbourhood N(p))

    4 f_p − Σ_{q ∈ N(p) ∩ Ω} f_q = Σ_{q ∈ N(p)} (g_p − g_q) + Σ_{q ∈ N(p) \\ Ω} t_q,

the discrete Poisson equation Δf = Δg with Dirichlet boundary f = t. Its matrix (4 on the
diagonal, −1 for neighbours inside Ω) is symmetric positive definite, so conjugate gradients
solve it; the matrix is never formed (a 5-point stencil on the masked image), every image and
channel is solved at once as one batched CG, and the work is cropped to Ω's bounding box.
Pixels on the image border are kept out of Ω (they have no full neighbourhood).
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["poisson_blend", "laplacian"]


def _neighbour_sum(x: Tensor) -> Tensor:
    """Σ of the 4 neighbours of every pixel, zeros outside the image. x [N, C, H, W]."""
    p = F.pad(x, (1, 1, 1, 1))
    return p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]


def laplacian(x: Tensor) -> Tensor:
    """4 x_p − Σ_{q∈N(p)} x_q, with edge replication at the image border. x [N, C, H, W]."""
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    return 4 * x - (p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:])


@torch.no_grad()
def poisson_blend(source: Tensor, target: Tensor, region: Tensor, *, tol: float = 1e-5,
                  max_iter: Optional[int] = None, return_info: bool = False):
    """Blend ``source`` into ``target`` inside ``region`` by solving the Poisson equation.

    Args:
        source: g [N, C, H, W], the image whose gradients are pasted (e.g. a projection
            inverse-transformed into the photo's frame).
        target: t [N, C, H, W], the photo (same shape, dtype and device).
        region: Ω [N, 1, H, W] (or [H, W]), bool or values > 0.5: where to blend.
        tol: stop when ‖r‖ ≤ tol·‖b‖ for every image and channel.
        max_iter: CG iterations at most; default 4·(height + width of Ω's bounding box) + 50.
        return_info: also return ``{"iterations": k, "residual": max relative residual}``.

    Returns:
        [N, C, H, W]: f inside Ω, t elsewhere (and the info dict with ``return_info``).

    Raises:
        TypeError, ValueError: a bad argument, named in the message (NaN or infinite pixels
            in ``source`` or ``target`` included: they would spread through the whole solve).
        FloatingPointError: the solve produced NaN or infinite pixels.

    Warns:
        RuntimeWarning: CG stopped at ``max_iter`` with a relative residual above ``tol``
        (the result is the unconverged iterate); raise ``max_iter`` or ``tol``.
    """
    for name, x in (("source", source), ("target", target), ("region", region)):
        if not isinstance(x, Tensor):
            raise TypeError(f"poisson_blend: {name} must be a tensor, got {type(x).__name__}")
    for name, x in (("source", source), ("target", target)):
        if not x.is_floating_point():
            raise TypeError(f"poisson_blend: {name} must be a floating-point image, got {x.dtype}")
    if source.dim() != 4 or source.shape != target.shape:
        raise ValueError(f"poisson_blend: source and target must be [N, C, H, W] of one shape, got "
                         f"{list(source.shape)} and {list(target.shape)}")
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not (math.isfinite(tol) and tol > 0):
        raise ValueError(f"poisson_blend: tol must be a finite number > 0, got {tol!r}")
    if max_iter is not None and (isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral)
                                 or max_iter < 1):
        raise ValueError(f"poisson_blend: max_iter must be an integer >= 1 or None, got {max_iter!r}")
    if region.dtype != torch.bool and not bool(torch.isfinite(region).all()):
        raise ValueError("poisson_blend: region holds NaN or infinite values")
    n, c, h, w = source.shape
    if region.dim() == 2 and tuple(region.shape) == (h, w):
        region = region[None, None].expand(n, 1, h, w)
    if region.dim() != 4 or region.shape[1] != 1 or region.shape[0] not in (1, n) or tuple(region.shape[2:]) != (h, w):
        raise ValueError(f"poisson_blend: region must be [N, 1, {h}, {w}] or [{h}, {w}], got {list(region.shape)}")
    omega = (region > 0.5) if region.dtype != torch.bool else region.clone()
    omega = omega.expand(n, 1, h, w).clone()
    omega[..., 0, :] = False
    omega[..., -1, :] = False
    omega[..., :, 0] = False
    omega[..., :, -1] = False
    result = target.clone()
    if not bool(omega.any()):
        return (result, {"iterations": 0, "residual": 0.0}) if return_info else result

    # Crop to Ω's bounding box plus one pixel of boundary.
    rows = omega.any(dim=3).any(dim=0).flatten().nonzero().flatten()
    cols = omega.any(dim=2).any(dim=0).flatten().nonzero().flatten()
    r0, r1 = int(rows[0]) - 1, int(rows[-1]) + 2
    c0, c1 = int(cols[0]) - 1, int(cols[-1]) + 2
    dtype = torch.float64 if source.dtype == torch.float64 else torch.float32
    g = source[..., r0:r1, c0:c1].to(dtype)
    t = target[..., r0:r1, c0:c1].to(dtype)
    m = omega[..., r0:r1, c0:c1].to(dtype)
    # Only the crop enters the solve (Ω and its one-pixel boundary): NaN elsewhere is kept as is.
    for name, x in (("source", g), ("target", t)):
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"poisson_blend: {name} holds NaN or infinite values inside the region "
                             "or on its boundary")

    # Guidance Δg (full 4-neighbourhood: Ω has no border pixels) and the boundary term.
    lap_g = 4 * g - _neighbour_sum(g)
    b = m * (lap_g + _neighbour_sum(t * (1 - m)))

    def apply_a(x: Tensor) -> Tensor:
        return m * (4 * x - _neighbour_sum(m * x))

    x = m * g
    r = b - apply_a(x)
    p = r.clone()
    rr = (r * r).sum(dim=(2, 3), keepdim=True)
    bb = (b * b).sum(dim=(2, 3), keepdim=True).clamp_min(1e-30)
    if max_iter is None:
        max_iter = 4 * ((r1 - r0) + (c1 - c0)) + 50
    k = 0
    rel = float((rr / bb).sqrt().max())
    while k < max_iter and rel > tol:
        ap = apply_a(p)
        pap = (p * ap).sum(dim=(2, 3), keepdim=True)
        alpha = rr / pap.clamp_min(1e-30)
        alpha = torch.where(rr > 0, alpha, torch.zeros_like(alpha))
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = (r * r).sum(dim=(2, 3), keepdim=True)
        beta = torch.where(rr > 0, rr_new / rr.clamp_min(1e-30), torch.zeros_like(rr))
        p = r + beta * p
        rr = rr_new
        k += 1
        if k % 10 == 0 or k == max_iter:
            rel = float((rr / bb).sqrt().max())
    rel = float((rr / bb).sqrt().max())
    if not (math.isfinite(rel) and bool(torch.isfinite(x).all())):
        raise FloatingPointError(f"poisson_blend: the solve diverged after {k} CG iterations "
                                 "(non-finite values; are the images' magnitudes within float range?)")
    if rel > tol:
        warnings.warn(f"poisson_blend: CG did not converge: relative residual {rel:.2e} > tol={tol:g} "
                      f"after max_iter={k} iterations; the result is the unconverged iterate "
                      "(raise max_iter, or tol)", RuntimeWarning, stacklevel=2)
    inner = torch.where(m > 0, x, t).to(target.dtype)
    result[..., r0:r1, c0:c1] = inner
    if return_info:
        return result, {"iterations": k, "residual": rel}
    return result

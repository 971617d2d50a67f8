"""Pure-PyTorch references of every latentx op.

Each is the oracle the native kernels are tested against and the fallback when the compiled
library is absent. They check their arguments exactly as the native ops do (same argument
names, same exception types) and compute in the same precision: float32 for float16 /
bfloat16 / float32 inputs, float64 for float64, rounding once at the end.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Optional, Union

import torch
from torch import Tensor

Scalar = Union[float, int]
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype arithmetic runs in for tensors of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# --- argument checks (mirroring csrc/common/checks.h) -------------------------------------


def check_float(op: str, name: str, t: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{op}: {name} must be float16, bfloat16, float32 or float64, got {t.dtype}"
        )


def check_like(op: str, name: str, t: Tensor, ref_name: str, ref: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a tensor, got {type(t).__name__}")
    if t.device != ref.device:
        raise ValueError(
            f"{op}: {name} must be on the same device as {ref_name} ({ref.device}), got {t.device}"
        )
    if t.dtype != ref.dtype:
        raise TypeError(
            f"{op}: {name} must have the same dtype as {ref_name} ({ref.dtype}), got {t.dtype}"
        )
    if t.shape != ref.shape:
        raise ValueError(
            f"{op}: {name} must have the same shape as {ref_name} {list(ref.shape)}, "
            f"got {list(t.shape)}"
        )


def check_number_or_tensor(op: str, name: str, value: object, tensor_ok: bool = True) -> None:
    """A real number (not a bool), or, where ``tensor_ok``, a tensor."""
    if tensor_ok and isinstance(value, Tensor):
        return
    if isinstance(value, bool) or not isinstance(value, Real):
        what = "a number or a tensor" if tensor_ok else "a number"
        raise TypeError(f"{op}: {name} must be {what}, got {type(value).__name__}")


def check_per_sample(op: str, name: str, t: Tensor, ref: Tensor) -> None:
    """``t`` holds one value, or one per sample of ``ref`` (shape [B] or [B,1,...,1])."""
    if t.device != ref.device:
        raise ValueError(f"{op}: {name} must be on the same device as z ({ref.device}), got {t.device}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be a floating tensor, got {t.dtype}")
    rows = 1 if ref.dim() == 0 else ref.shape[0]
    per_row = t.dim() >= 1 and t.shape[0] == rows and t.numel() == rows
    if not (t.numel() == 1 or per_row):
        raise ValueError(
            f"{op}: {name} must hold one value or one per sample (shape [{rows}]), "
            f"got shape {list(t.shape)}"
        )


def check_nonnegative(op: str, name: str, value: Union[Tensor, Scalar], allow_inf: bool) -> None:
    """Values >= 0 (and finite unless ``allow_inf``); NaN always fails."""
    what = "non-negative" if allow_inf else "finite and non-negative"
    if isinstance(value, Tensor):
        ok = value.ge(0) if allow_inf else value.ge(0) & value.isfinite()
        if value.numel() and not bool(ok.all()):
            raise ValueError(f"{op}: {name} must be {what} everywhere (NaN is not allowed)")
    elif not (value >= 0) or (not allow_inf and math.isinf(value)):
        raise ValueError(f"{op}: {name} must be {what}, got {value}")


def per_sample(value: Union[Tensor, Scalar], ref: Tensor, dtype: torch.dtype) -> Union[Tensor, float]:
    """A scalar, or a per-sample tensor shaped to broadcast over ``ref``'s sample dims."""
    if not isinstance(value, Tensor):
        return float(value)
    value = value.reshape(-1).to(dtype)
    if value.numel() == 1:
        return value.reshape(())
    return value.reshape((-1,) + (1,) * (ref.dim() - 1))


# --- ops ----------------------------------------------------------------------------------


def check_ifgsm_step(
    z: Tensor,
    grad: Tensor,
    step_size: Union[Tensor, Scalar],
    anchor: Optional[Tensor],
    radius: Union[Tensor, Scalar, None],
    lower: Optional[Scalar],
    upper: Optional[Scalar],
) -> None:
    op = "ifgsm_step"
    check_float(op, "z", z)
    check_like(op, "grad", grad, "z", z)
    check_number_or_tensor(op, "step_size", step_size)
    if isinstance(step_size, Tensor):
        check_per_sample(op, "step_size", step_size, z)
    check_nonnegative(op, "step_size", step_size, allow_inf=False)
    if (anchor is None) != (radius is None):
        got = "an anchor without a radius" if anchor is not None else "a radius without an anchor"
        raise ValueError(
            f"{op}: anchor and radius go together (the l-inf ball of radius r around the "
            f"anchor); got {got}"
        )
    if anchor is not None:
        check_like(op, "anchor", anchor, "z", z)
        check_number_or_tensor(op, "radius", radius)
        if isinstance(radius, Tensor):
            check_per_sample(op, "radius", radius, z)
        check_nonnegative(op, "radius", radius, allow_inf=True)
    for name, bound in (("lower", lower), ("upper", upper)):
        if bound is not None:
            check_number_or_tensor(op, name, bound, tensor_ok=False)
        if bound is not None and math.isnan(bound):
            raise ValueError(f"{op}: {name} must not be NaN")
    if lower is not None and upper is not None and not lower <= upper:
        raise ValueError(f"{op}: lower must be <= upper, got lower={lower} > upper={upper}")


def ifgsm_step(
    z: Tensor,
    grad: Tensor,
    step_size: Union[Tensor, Scalar],
    anchor: Optional[Tensor] = None,
    radius: Union[Tensor, Scalar, None] = None,
    lower: Optional[Scalar] = None,
    upper: Optional[Scalar] = None,
    ascend: bool = False,
) -> Tensor:
    """I-FGSM sign step with ℓ∞-ball and box clamping (SPEC A2), eagerly.

    Args:
        z: latents [B, ...] (or any shape when no parameter is per-sample).
        grad: ∂L/∂z, z's shape and dtype.
        step_size: s, a number or a tensor of one value per sample [B].
        anchor: z₀, z's shape; the centre of the ℓ∞ ball.
        radius: r, a number or [B]; required with ``anchor``.
        lower, upper: the box, numbers.
        ascend: step up the gradient instead of down.

    Returns:
        z' (z's shape and dtype), never requiring grad:
        clamp(clamp(z ∓ s·sign(g), z₀ − r, z₀ + r), lower, upper), where sign keeps NaN.
    """
    check_ifgsm_step(z, grad, step_size, anchor, radius, lower, upper)
    with torch.no_grad():
        dtype = opmath_dtype(z.dtype)
        g = grad.to(dtype)
        # torch.sign(nan) is 0; the step must keep NaN so a broken gradient shows.
        sign = torch.where(torch.isnan(g), g, torch.sign(g))
        step = per_sample(step_size, z, dtype)
        out = z.to(dtype) + step * sign if ascend else z.to(dtype) - step * sign
        if anchor is not None:
            a = anchor.to(dtype)
            r = per_sample(radius, z, dtype)
            out = torch.minimum(torch.maximum(out, a - r), a + r)
        if lower is not None or upper is not None:
            out = out.clamp(min=lower, max=upper)
        return out.to(z.dtype)


def check_cma_sample(noise, mean, sigma, eigvecs, sqrt_eigvals, lower, upper) -> None:
    op = "cma_sample"
    check_float(op, "noise", noise)
    if noise.dim() != 3:
        raise ValueError(f"{op}: noise must be [B, popsize, d], got shape {list(noise.shape)}")
    b, _, d = noise.shape
    for name, t, shape in (("mean", mean, [b, d]), ("sigma", sigma, [b]),
                           ("sqrt_eigvals", sqrt_eigvals, [b, d]),
                           ("eigvecs", eigvecs, [b, d, d])):
        if t is None:
            continue
        check_float(op, name, t)
        if t.device != noise.device or t.dtype != noise.dtype:
            raise ValueError(f"{op}: {name} must match noise's device and dtype "
                             f"({noise.device}, {noise.dtype}), got ({t.device}, {t.dtype})")
        if list(t.shape) != shape:
            raise ValueError(f"{op}: {name} must have shape {shape}, got {list(t.shape)}")
    for name, bound in (("lower", lower), ("upper", upper)):
        if bound is not None:
            check_number_or_tensor(op, name, bound, tensor_ok=False)
            if math.isnan(bound):
                raise ValueError(f"{op}: {name} must not be NaN")
    if lower is not None and upper is not None and not lower <= upper:
        raise ValueError(f"{op}: lower must be <= upper, got lower={lower} > upper={upper}")


def cma_sample(
    noise: Tensor,
    mean: Tensor,
    sigma: Tensor,
    eigvecs: Optional[Tensor],
    sqrt_eigvals: Tensor,
    lower: Optional[Scalar] = None,
    upper: Optional[Scalar] = None,
) -> tuple[Tensor, Tensor]:
    """CMA-ES sampling for B instances (SPEC A1 step 1), eagerly.

    Args:
        noise: N [B, λ, d], standard normal.
        mean: m [B, d].
        sigma: σ [B] (> 0).
        eigvecs: E [B, d, d], eigenvectors of C in columns; None for diagonal CMA (E = I).
        sqrt_eigvals: D [B, d], square roots of C's eigenvalues.
        lower, upper: optional box (numbers).

    Returns:
        (x, y), both [B, λ, d]: y_k = E (D ⊙ N_k), x_k = m + σ y_k; with a box, x is clamped
        into it and y recomputed as (x − m) / σ.
    """
    check_cma_sample(noise, mean, sigma, eigvecs, sqrt_eigvals, lower, upper)
    y = noise * sqrt_eigvals[:, None, :]
    if eigvecs is not None:
        y = y @ eigvecs.transpose(-1, -2)
    x = torch.addcmul(mean[:, None, :], sigma[:, None, None], y)
    if lower is not None or upper is not None:
        x = x.clamp(min=lower, max=upper)
        y = (x - mean[:, None, :]) / sigma[:, None, None]
    return x, y


def check_cma_covariance_update(cov, pc, y, weights, decay) -> None:
    op = "cma_covariance_update"
    check_float(op, "cov", cov)
    if cov.dim() != 3 or cov.shape[1] != cov.shape[2]:
        raise ValueError(f"{op}: cov must be [B, d, d], got shape {list(cov.shape)}")
    if y.dim() != 3:
        raise ValueError(f"{op}: y must be [B, k, d], got shape {list(y.shape)}")
    b, d, k = cov.shape[0], cov.shape[1], y.shape[1]
    for name, t, shapes in (("pc", pc, ([b, d],)), ("y", y, ([b, k, d],)),
                            ("weights", weights, ([b, k], [k])), ("decay", decay, ([b],))):
        check_float(op, name, t)
        if t.device != cov.device or t.dtype != cov.dtype:
            raise ValueError(f"{op}: {name} must match cov's device and dtype "
                             f"({cov.device}, {cov.dtype}), got ({t.device}, {t.dtype})")
        if list(t.shape) not in [list(s) for s in shapes]:
            raise ValueError(f"{op}: {name} must have shape {' or '.join(map(str, shapes))}, "
                             f"got {list(t.shape)}")


def cma_covariance_update(
    cov: Tensor, pc: Tensor, y: Tensor, weights: Tensor, decay: Tensor, c1: float, cmu: float
) -> Tensor:
    """The CMA-ES covariance update for B instances (SPEC A1 step 3), eagerly.

    Args:
        cov: C [B, d, d].
        pc: the evolution path p_c [B, d].
        y: steps y_{i:λ} [B, k, d] of the selected (or, with active CMA, all) points.
        weights: w_i [B, k] or [k] (negative ones allowed: active CMA).
        decay: a [B], the factor on the old C (1 − c₁ − c_μΣw + (1 − h_σ) c₁ c_c (2 − c_c)).
        c1, cmu: rank-one and rank-μ learning rates.

    Returns:
        a·C + c₁ p_c p_cᵀ + c_μ Σ_i w_i y_i y_iᵀ, [B, d, d].
    """
    check_cma_covariance_update(cov, pc, y, weights, decay)
    weights = weights.expand(y.shape[0], -1)
    rank_mu = (y * weights[:, :, None]).transpose(-1, -2) @ y
    rank_one = pc[:, :, None] * pc[:, None, :]
    return decay[:, None, None] * cov + c1 * rank_one + cmu * rank_mu


LPIPS_EPS = 1e-10  # lpips.normalize_tensor: F / (|F| + eps)


def check_lpips_head(feat0, feat1, weight, mask, spatial) -> None:
    op = "lpips_head"
    check_float(op, "feat0", feat0)
    if feat0.dim() != 4:
        raise ValueError(f"{op}: feat0 must be [N, C, H, W], got shape {list(feat0.shape)}")
    n, c, h, w = feat0.shape
    check_float(op, "feat1", feat1)
    if feat1.device != feat0.device or feat1.dtype != feat0.dtype:
        raise ValueError(f"{op}: feat1 must match feat0's device and dtype ({feat0.device}, "
                         f"{feat0.dtype}), got ({feat1.device}, {feat1.dtype})")
    if feat1.dim() != 4 or feat1.shape[0] not in (n, 1) or tuple(feat1.shape[1:]) != (c, h, w):
        raise ValueError(f"{op}: feat1 must be [{n} or 1, {c}, {h}, {w}], got {list(feat1.shape)}")
    check_float(op, "weight", weight)
    if weight.device != feat0.device:
        raise ValueError(f"{op}: weight must be on feat0's device ({feat0.device}), got {weight.device}")
    if list(weight.shape) != [c]:
        raise ValueError(f"{op}: weight must be [{c}], got {list(weight.shape)}")
    if mask is not None:
        if spatial:
            raise ValueError(f"{op}: mask weights the spatial reduction; with spatial=True "
                             "there is none (multiply the returned map instead)")
        check_float(op, "mask", mask)
        if mask.device != feat0.device:
            raise ValueError(f"{op}: mask must be on feat0's device ({feat0.device}), got {mask.device}")
        if mask.dim() != 4 or mask.shape[0] not in (n, 1) or tuple(mask.shape[1:]) != (1, h, w):
            raise ValueError(f"{op}: mask must be [{n} or 1, 1, {h}, {w}] (resized to the layer), "
                             f"got {list(mask.shape)}")


def lpips_head(feat0: Tensor, feat1: Tensor, weight: Tensor, mask: Optional[Tensor] = None,
               spatial: bool = False) -> Tensor:
    """The LPIPS per-layer distance (SPEC A3), eagerly, as the `lpips` package computes it.

    Args:
        feat0: backbone features of the candidates [N, C, H, W].
        feat1: features of the target(s) [N or 1, C, H, W] (1 broadcasts over N).
        weight: the layer's non-negative linear weights w_c [C].
        mask: m ∈ [0, 1] at the layer's resolution [N or 1, 1, H, W], or None.
        spatial: return the distance map instead of its (masked) mean.

    Returns:
        [N]: Σ_hw m·d / Σ_hw m (the plain mean without a mask), or the map d [N, 1, H, W],
        where d = Σ_c w_c (f̂0 − f̂1)² and f̂ = F / (‖F‖_c + 1e−10). Computed in float32 for
        half inputs, returned in the features' dtype.
    """
    check_lpips_head(feat0, feat1, weight, mask, spatial)
    dtype = opmath_dtype(feat0.dtype)
    f0, f1 = feat0.to(dtype), feat1.to(dtype)
    u = f0 / (f0.square().sum(1, keepdim=True).sqrt() + LPIPS_EPS)
    v = f1 / (f1.square().sum(1, keepdim=True).sqrt() + LPIPS_EPS)
    d = ((u - v).square() * weight.to(dtype)[None, :, None, None]).sum(1, keepdim=True)
    if spatial:
        return d.to(feat0.dtype)
    if mask is None:
        return d.mean((1, 2, 3)).to(feat0.dtype)
    m = mask.to(dtype)
    return ((d * m).sum((1, 2, 3)) / m.sum((1, 2, 3))).to(feat0.dtype)

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
import torch.nn.functional as F
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


def check_float32_or_64(op: str, name: str, t: Tensor) -> None:
    """The CMA-ES ops (matrix products, not elementwise): float32 and float64 only (SPEC A1)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a tensor, got {type(t).__name__}")
    if t.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{op}: {name} must be float32 or float64 (float16 / bfloat16 are not "
                        f"supported by the CMA-ES ops), got {t.dtype}")


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


def check_box(op: str, lower: Optional[Scalar], upper: Optional[Scalar]) -> None:
    """Optional box bounds: numbers, neither NaN, and lower <= upper when both are given."""
    for name, bound in (("lower", lower), ("upper", upper)):
        if bound is not None:
            check_number_or_tensor(op, name, bound, tensor_ok=False)
            if math.isnan(bound):
                raise ValueError(f"{op}: {name} must not be NaN")
    if lower is not None and upper is not None and not lower <= upper:
        raise ValueError(f"{op}: lower must be <= upper, got lower={lower} > upper={upper}")


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
    check_box(op, lower, upper)


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


def check_cma_sample(noise, mean, sigma, eigvecs, sqrt_eigvals, lower, upper, values=True) -> None:
    """Argument checks of cma_sample; ``values`` also checks sigma > 0 and D >= 0 (finite) on
    the host (not under tracing: fake tensors have no values)."""
    op = "cma_sample"
    check_float32_or_64(op, "noise", noise)
    if noise.dim() != 3:
        raise ValueError(f"{op}: noise must be [B, popsize, d], got shape {list(noise.shape)}")
    b, _, d = noise.shape
    for name, t, shape in (("mean", mean, [b, d]), ("sigma", sigma, [b]),
                           ("sqrt_eigvals", sqrt_eigvals, [b, d]),
                           ("eigvecs", eigvecs, [b, d, d])):
        if t is None:
            continue
        check_float32_or_64(op, name, t)
        if t.device != noise.device or t.dtype != noise.dtype:
            raise ValueError(f"{op}: {name} must match noise's device and dtype "
                             f"({noise.device}, {noise.dtype}), got ({t.device}, {t.dtype})")
        if list(t.shape) != shape:
            raise ValueError(f"{op}: {name} must have shape {shape}, got {list(t.shape)}")
    check_box(op, lower, upper)
    if values:
        if not bool((sigma.gt(0) & sigma.isfinite()).all()):
            raise ValueError(f"{op}: sigma must be finite and > 0 everywhere (NaN is not allowed)")
        if not bool((sqrt_eigvals.ge(0) & sqrt_eigvals.isfinite()).all()):
            raise ValueError(f"{op}: sqrt_eigvals (D) must be finite and >= 0 everywhere (NaN is not allowed)")


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
    check_float32_or_64(op, "cov", cov)
    if cov.dim() != 3 or cov.shape[1] != cov.shape[2]:
        raise ValueError(f"{op}: cov must be [B, d, d], got shape {list(cov.shape)}")
    if y.dim() != 3:
        raise ValueError(f"{op}: y must be [B, k, d], got shape {list(y.shape)}")
    b, d, k = cov.shape[0], cov.shape[1], y.shape[1]
    for name, t, shapes in (("pc", pc, ([b, d],)), ("y", y, ([b, k, d],)),
                            ("weights", weights, ([b, k], [k])), ("decay", decay, ([b],))):
        check_float32_or_64(op, name, t)
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


def check_lpips_head(feat0, feat1, weight, mask, spatial, values=True) -> None:
    """Argument checks of lpips_head; ``values`` also checks the mask's values on the host
    (in [0, 1], no NaN, a positive value per sample; not under tracing: fake tensors have no
    values)."""
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
        if values:
            m = mask.detach().reshape(mask.shape[0], h * w)
            if not bool(((m >= 0) & (m <= 1)).all()):
                raise ValueError(f"{op}: mask values must lie in [0, 1] (NaN is not allowed)")
            if not bool((m.sum(1) > 0).all()):
                raise ValueError(f"{op}: mask must have a positive value for every sample at the "
                                 "layer's resolution (an all-zero mask gives 0/0)")


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


# --- filtered_grid_sample (SPEC A4) ---------------------------------------------------------

# The integer codes of the native op's padding_mode and filter arguments (the order of
# torch's own GridSamplerPadding for the padding modes).
GRID_PADDING_MODES = {"zeros": 0, "border": 1, "reflection": 2}
GRID_FILTERS = {"none": 0, "tent": 1, "gaussian": 2}
GAUSSIAN_SIGMA_PER_STRETCH = 0.5  # σ = s / 2: the tent's and the Gaussian's variances are close
GAUSSIAN_RADIUS_SIGMAS = 3.0      # taps within 3σ (weights beyond are below 1.2 %)
# exp(-3² / 2): the Gaussian less the quadratic matching its value and slope at 3σ reaches 0
# there with slope 0; truncated as it is, it jumps at the edge, and a last-bit change of the
# footprint that moved a tap across it changed the output by ~1 % (filtered_grid_sample_math.h).
GAUSSIAN_TAIL = math.exp(-GAUSSIAN_RADIUS_SIGMAS ** 2 / 2)


def check_filtered_grid_sample(input, grid, stretch, padding_mode, align_corners, filter) -> None:
    """Argument checks of filtered_grid_sample; ``stretch`` may be None (not yet computed)."""
    op = "filtered_grid_sample"
    check_float(op, "input", input)
    if input.dim() != 4:
        raise ValueError(f"{op}: input must be [N, C, H, W], got shape {list(input.shape)}")
    n, _, h, w = input.shape
    if h < 1 or w < 1:
        raise ValueError(f"{op}: input must have H >= 1 and W >= 1, got shape {list(input.shape)}")
    check_float(op, "grid", grid)
    if grid.device != input.device:
        raise ValueError(f"{op}: grid must be on the same device as input ({input.device}), got {grid.device}")
    if grid.dtype != input.dtype:
        raise TypeError(f"{op}: grid must have the same dtype as input ({input.dtype}), got {grid.dtype}")
    if grid.dim() != 4 or grid.shape[0] != n or grid.shape[3] != 2:
        raise ValueError(f"{op}: grid must be [{n}, Ho, Wo, 2] (x, y in [-1, 1]), got shape {list(grid.shape)}")
    if stretch is not None:
        check_float(op, "stretch", stretch)
        if stretch.device != input.device:
            raise ValueError(f"{op}: stretch must be on the same device as input ({input.device}), "
                             f"got {stretch.device}")
        broadcasts = stretch.dim() == 4 and stretch.shape[3] == 2 and all(
            stretch.shape[d] in (grid.shape[d], 1) for d in range(3))
        if not broadcasts:
            raise ValueError(f"{op}: stretch must have grid's shape {list(grid.shape)} or broadcast to it "
                             f"(size 1 in N, Ho or Wo), got {list(stretch.shape)}")
    if isinstance(padding_mode, bool) or padding_mode not in GRID_PADDING_MODES.values():
        raise ValueError(f"{op}: padding_mode must be one of {GRID_PADDING_MODES} (name: code), got {padding_mode!r}")
    if isinstance(filter, bool) or filter not in GRID_FILTERS.values():
        raise ValueError(f"{op}: filter must be one of {GRID_FILTERS} (name: code), got {filter!r}")
    if not isinstance(align_corners, bool):
        raise TypeError(f"{op}: align_corners must be a bool, got {type(align_corners).__name__}")


def grid_unnormalize(coord: Tensor, size: int, align_corners: bool) -> Tensor:
    """Normalised coordinates in [-1, 1] → input pixel coordinates, as F.grid_sample maps them:
    -1 and 1 are the centres of the corner pixels with align_corners, their outer edges without."""
    if align_corners:
        return (coord + 1) / 2 * (size - 1)
    return ((coord + 1) * size - 1) / 2


def grid_stretch(grid: Tensor, height: int, width: int, align_corners: bool) -> Tensor:
    """The footprint of every output pixel in input pixels, from the grid's local Jacobian.

    Args:
        grid: [N, Ho, Wo, 2] normalised sampling locations (x, y), as for F.grid_sample.
        height, width: the input's H and W.

    Returns:
        stretch [N, Ho, Wo, 2] = (s_x, s_y), detached, in the grid's opmath dtype:
        s_x = ‖(∂ix/∂u, ∂ix/∂v)‖₂ with ix the input pixel column and (u, v) the output column
        and row (central differences, one-sided at the edges; an output axis of length 1
        contributes 0), which is invariant to rotations of the output; s_y likewise from iy.
        Values ≤ 1 (no shrinking) and NaN become 1, and so do values within rounding of 1
        (1e-9 for float64 grids, 1e-4 otherwise: an identity grid's differences are not
        exactly 1, and the Gaussian filter is not continuous at s = 1); values within
        rounding of another integer become it; values are capped at max(H, W)
        (``clamp_stretch``). The native op computes the same per pixel
        (grid_stretch_at in csrc/ops/filtered_grid_sample_math.h) when given no stretch.
    """
    # Both coordinates at once ([N, Ho, Wo, 2]: (ix, iy) per pixel), in few whole-tensor ops.
    # Same operations as per coordinate, elementwise, so the same values (up to hypot's
    # last-bit rounding, which differs between torch's vectorised and scalar loops).
    g = grid.detach().to(opmath_dtype(grid.dtype))
    sizes = torch.tensor([width, height], dtype=g.dtype, device=g.device)
    ixy = grid_unnormalize(g, sizes, align_corners)

    def derivative(t: Tensor, dim: int) -> Tensor:
        """torch.gradient(t, dim=dim)[0] (unit spacing, edge_order=1): central differences
        (t[i+1] - t[i-1]) / 2 inside, one-sided ones at the ends; 0 along an axis of length 1."""
        n = t.shape[dim]
        if n < 2:
            return torch.zeros_like(t)
        inner = (t.narrow(dim, 2, n - 2) - t.narrow(dim, 0, n - 2)) / 2
        first = t.narrow(dim, 1, 1) - t.narrow(dim, 0, 1)
        last = t.narrow(dim, n - 1, 1) - t.narrow(dim, n - 2, 1)
        return torch.cat([first, inner, last], dim)

    # (s_x, s_y) = (hypot(dix/du, dix/dv), hypot(diy/du, diy/dv)): u is dim 2, v dim 1.
    s = torch.hypot(derivative(ixy, 2), derivative(ixy, 1))
    return clamp_stretch(s, height, width, grid.dtype)


def clamp_stretch(s: Tensor, height: int, width: int, dtype: torch.dtype) -> Tensor:
    """Footprints ≤ 1 (within rounding, see ``grid_stretch``) and NaN → 1, footprints within
    rounding of an integer → that integer, capped at max(H, W). Rounding: a relative 1e-9 for
    float64 grids, 1e-4 otherwise. (A footprint of 4 computed as 4 + 5e-7 would add a tap of
    weight ~1e-7 at each end of the filter: 10 taps a side instead of 8.)"""
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    # where(s > 1 + tol, s, 1) as threshold (x <= 1 + tol -> 1; NaN passes) then NaN -> 1:
    # several times faster than a boolean mask and where() on CPU. nan_to_num also turns
    # +-inf into the largest finite values, which the cap and the threshold map as before.
    s = F.threshold(s, 1 + tol, 1.0).nan_to_num_(nan=1.0)
    nearest = s.round()
    s = torch.where((s - nearest).abs() <= tol * nearest, nearest, s)
    return s.clamp_(max=float(max(height, width)))


def _grid_pad_index(t: Tensor, size: int, padding_mode: int, align_corners: bool):
    """Tap indices → (in-range index, value mask or None) under the padding rule, per tap:
    zeros reads 0 outside (the tap's weight still counts), border clamps the index,
    reflection mirrors it about the image edges (-0.5 and size-0.5; 0 and size-1 with
    align_corners)."""
    if padding_mode == GRID_PADDING_MODES["zeros"]:
        inside = (t >= 0) & (t < size)
        return t.clamp(0, size - 1), inside
    if padding_mode == GRID_PADDING_MODES["border"]:
        return t.clamp(0, size - 1), None
    if align_corners:
        if size == 1:
            return torch.zeros_like(t), None
        period = 2 * (size - 1)
        m = torch.remainder(t, period)
        return torch.where(m >= size, period - m, m), None
    period = 2 * size
    m = torch.remainder(t, period)
    return torch.where(m >= size, period - 1 - m, m), None


def _grid_axis(coord: Tensor, s: Tensor, size: int, cap: int, padding_mode: int, align_corners: bool,
               filter: int):
    """One axis of the separable filter: the effective stretch (≥ 1, NaN → 1, ≤ cap), the
    support radius, the coordinate reduced to a safe range (results unchanged), and whether
    the Gaussian applies. coord, s: [N, Ho, Wo] in opmath dtype."""
    s = torch.where(s > 1, s, 1.0).clamp(max=float(cap))
    if filter == GRID_FILTERS["none"]:
        s = torch.ones_like(s)
    gaussian = (s > 1) & (filter == GRID_FILTERS["gaussian"])
    radius = torch.where(gaussian, s * (GAUSSIAN_SIGMA_PER_STRETCH * GAUSSIAN_RADIUS_SIGMAS), s)
    if padding_mode == GRID_PADDING_MODES["reflection"] and (size > 1 or not align_corners):
        # Reflection is periodic: an exact fmod by the period changes neither the taps'
        # reflected indices nor their distances, and keeps huge coordinates in int64 range.
        coord = torch.fmod(coord, float(2 * (size - 1) if align_corners else 2 * size))
    else:
        # Beyond these bounds every tap is outside the image (zeros: all 0; border: all the
        # edge pixel; size-1 reflection: all pixel 0): the result does not change.
        reach = torch.ceil(radius) + 2
        coord = torch.maximum(torch.minimum(coord, size - 1 + reach), -reach)
    return coord, s, radius, gaussian


def _grid_axis_weights(coord, s, radius, gaussian, k: int):
    """Tap k (an offset from floor(coord)) of one axis: its integer position and weight.
    Tent: w(d) = max(0, 1 - |d|/s), written so autograd takes grid_sample's one-sided
    derivative at the kinks (d = 0: the left branch; the support is (-r, r]). Gaussian:
    e(d) − e(3σ)(1 + 9/2 − d²/(2σ²)) with e(d) = exp(-d²/(2σ²)) (0 with slope 0 at the edge:
    continuously differentiable), σ = s/2, on the support
    (-3σ, 3σ]. d = tap − coord."""
    tap = torch.floor(coord).detach() + k
    d = tap - coord
    inside = (d > -radius) & (d <= radius)
    tent = torch.where(d <= 0, 1 + d / s, 1 - d / s)
    sigma = s * GAUSSIAN_SIGMA_PER_STRETCH
    q = (d * d) / (2 * sigma * sigma)
    gauss = torch.exp(-q) - GAUSSIAN_TAIL * (1 + GAUSSIAN_RADIUS_SIGMAS ** 2 / 2 - q)
    w = torch.where(inside, torch.where(gaussian, gauss, tent), 0.0)
    # The pixel's own window, k in (-ceil(r), ceil(r)] (the native kernels' taps): its taps
    # read their pixels whatever their weight; the batch's wider window beyond reads nothing.
    reach = torch.ceil(radius)
    window = (k > -reach) & (k <= reach)
    return tap.long(), w, window


def filtered_grid_sample(input: Tensor, grid: Tensor, stretch: Optional[Tensor], padding_mode: int,
                         align_corners: bool, filter: int) -> Tensor:
    """Grid sampling with a low-pass filter stretched by each output pixel's footprint (SPEC A4).

    Args:
        input: [N, C, H, W].
        grid: [N, Ho, Wo, 2] normalised sampling locations (x, y) as for F.grid_sample.
        stretch: [N, Ho, Wo, 2] footprint (s_x, s_y) in input pixels (or a shape that
            broadcasts to it), or None for ``grid_stretch`` of the grid; held constant (no
            gradient flows into it).
        padding_mode: 0 zeros, 1 border, 2 reflection (``GRID_PADDING_MODES``).
        filter: 0 none (bilinear everywhere), 1 tent, 2 gaussian (``GRID_FILTERS``).

    Returns:
        [N, C, Ho, Wo] in input's dtype: out = Σ_ij wx_i wy_j v_ij / (Σwx Σwy), separable
        weights over integer taps around (ix, iy), values v read with the padding rule per
        tap. Along an axis with s ≤ 1 the weights are the bilinear ones, not normalised (so
        the result is F.grid_sample's bilinear one); a non-finite location gives 0.
        Computed in float32 for half inputs (float64 for float64), gradients by autograd.
    """
    check_filtered_grid_sample(input, grid, stretch, padding_mode, align_corners, filter)
    dtype = opmath_dtype(input.dtype)
    n, c, h, w = input.shape
    _, ho, wo, _ = grid.shape
    if input.numel() == 0 or grid.numel() == 0:
        return input.new_zeros((n, c, ho, wo)) + 0 * grid.sum() + 0 * input.sum()
    x = input.to(dtype)
    g = grid.to(dtype)
    if stretch is None:
        stretch = grid_stretch(grid, h, w, align_corners)
    s = stretch.detach().to(dtype).expand(grid.shape)
    ix = grid_unnormalize(g[..., 0], w, align_corners)
    iy = grid_unnormalize(g[..., 1], h, align_corners)
    valid = torch.isfinite(ix) & torch.isfinite(iy)
    # Invalid locations read a harmless place; their output is zeroed at the end and the
    # where() sends them no gradient.
    ix = torch.where(valid, ix, 0.0)
    iy = torch.where(valid, iy, 0.0)
    cap = max(h, w)
    ix, sx, rx, gx = _grid_axis(ix, s[..., 0], w, cap, padding_mode, align_corners, filter)
    iy, sy, ry, gy = _grid_axis(iy, s[..., 1], h, cap, padding_mode, align_corners, filter)
    taps_x = int(math.ceil(float(rx.max())))
    taps_y = int(math.ceil(float(ry.max())))
    x_taps = [_grid_axis_weights(ix, sx, rx, gx, k) for k in range(-taps_x + 1, taps_x + 1)]
    y_taps = [_grid_axis_weights(iy, sy, ry, gy, k) for k in range(-taps_y + 1, taps_y + 1)]
    # Normalise only where the filter is stretched: with s = 1 the weights already sum to 1.
    norm_x = torch.where(sx > 1, sum(wk for _, wk, _ in x_taps), 1.0)
    norm_y = torch.where(sy > 1, sum(wk for _, wk, _ in y_taps), 1.0)
    flat = x.reshape(n, c, h * w)
    acc = None
    for ty, wy, win_y in y_taps:
        row, row_in = _grid_pad_index(ty, h, padding_mode, align_corners)
        for tx, wx, win_x in x_taps:
            col, col_in = _grid_pad_index(tx, w, padding_mode, align_corners)
            index = (row * w + col).reshape(n, 1, ho * wo).expand(n, c, ho * wo)
            v = torch.gather(flat, 2, index).reshape(n, c, ho, wo)
            # Every tap of the pixel's window that reads a pixel multiplies it by its weight,
            # 0 or not: NaN / inf propagate as in F.grid_sample. Taps reading nothing (zero
            # padding, or beyond the window) are left out with where(), not multiplied by 0.
            reads = win_y & win_x
            if row_in is not None:
                reads = reads & row_in & col_in
            term = torch.where(reads[:, None], v * (wy * wx)[:, None], 0.0)
            acc = term if acc is None else acc + term
    out = acc / (norm_x * norm_y)[:, None]
    return torch.where(valid[:, None], out, 0.0).to(input.dtype)


def check_cma_eigh(cov, values=True) -> None:
    """Argument checks of cma_eigh; ``values`` also checks that cov is finite (on the host)."""
    op = "cma_eigh"
    check_float32_or_64(op, "cov", cov)
    if cov.dim() != 3 or cov.shape[1] != cov.shape[2]:
        raise ValueError(f"{op}: cov must be [B, d, d], got shape {list(cov.shape)}")
    if values and cov.numel() and not bool(cov.isfinite().all()):
        raise ValueError(f"{op}: cov must be finite everywhere (NaN / inf is not allowed)")


def cma_eigh(cov: Tensor) -> tuple[Tensor, Tensor]:
    """The eigendecompositions of B symmetric matrices (SPEC A1's lazy decomposition).

    Args:
        cov: C [B, d, d], symmetric (the lower triangle is read).

    Returns:
        (eigvals [B, d] ascending, eigvecs [B, d, d] with the eigenvectors in columns).
    """
    check_cma_eigh(cov)
    return tuple(torch.linalg.eigh(cov))

"""Batched CMA-ES kernels (SPEC A1): fused sampling, the fused covariance update and the batch's
eigendecompositions."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from latentx.ops import _native, reference


def cma_sample(
    noise: Tensor,
    mean: Tensor,
    sigma: Tensor,
    eigvecs: Optional[Tensor],
    sqrt_eigvals: Tensor,
    *,
    lower: Optional[float] = None,
    upper: Optional[float] = None,
    impl: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Sample λ points for each of B CMA-ES instances: y = E (D ⊙ noise), x = m + σ y.

    Shapes: noise [B, λ, d], mean [B, d], sigma [B], eigvecs [B, d, d] (columns are C's
    eigenvectors; None for diagonal CMA), sqrt_eigvals [B, d]. Returns (x, y), [B, λ, d]
    each; with bounds, x is clamped to [lower, upper] and y = (x − m)/σ. Not differentiable.
    ``impl`` as for every op (see :func:`latentx.ops.backend`).

    Odd inputs (the same in every implementation): float32 / float64 only — float16 /
    bfloat16 are refused up front (TypeError naming the argument: a matrix product, not an
    elementwise op, SPEC A1); sigma must be finite and > 0 and D finite and >= 0 (ValueError,
    checked on the host: on CUDA one wait for the device); NaN / inf in noise, mean or E
    propagate through the arithmetic (a box clamps ±inf); B = 0 or λ = 0 give empty results;
    any strides and expanded inputs are accepted; results never require grad.
    """
    if not _native.use_native(impl, noise.device):
        with torch.no_grad():
            return reference.cma_sample(noise, mean, sigma, eigvecs, sqrt_eigvals, lower, upper)
    return tuple(torch.ops.latentx.cma_sample(noise, mean, sigma, eigvecs, sqrt_eigvals, lower, upper))


def cma_covariance_update(
    cov: Tensor, pc: Tensor, y: Tensor, weights: Tensor, decay: Tensor, c1: float, cmu: float,
    *, impl: str = "auto",
) -> Tensor:
    """a·C + c₁ p_c p_cᵀ + c_μ Σ_i w_i y_i y_iᵀ for B instances, reading C once.

    Shapes: cov [B, d, d], pc [B, d], y [B, k, d], weights [B, k] or [k], decay (a) [B].
    Returns a new [B, d, d]. Not differentiable.

    Odd inputs (the same in every implementation): float32 / float64 only (float16 / bfloat16:
    TypeError up front); NaN / inf anywhere propagate through the arithmetic; k = 0 gives
    a·C + c₁ p_c p_cᵀ, B = 0 an empty result; any strides and expanded inputs are accepted
    (the in-place variant needs a cov that does not overlap itself); never requires grad.
    """
    if not _native.use_native(impl, cov.device):
        with torch.no_grad():
            return reference.cma_covariance_update(cov, pc, y, weights, decay, c1, cmu)
    return torch.ops.latentx.cma_covariance_update(cov, pc, y, weights, decay, float(c1), float(cmu))


def cma_covariance_update_(
    cov: Tensor, pc: Tensor, y: Tensor, weights: Tensor, decay: Tensor, c1: float, cmu: float,
    *, impl: str = "auto",
) -> Tensor:
    """In-place :func:`cma_covariance_update`: C is read and written once; returns ``cov``."""
    if not _native.use_native(impl, cov.device):
        with torch.no_grad():
            return cov.copy_(reference.cma_covariance_update(cov, pc, y, weights, decay, c1, cmu))
    torch.ops.latentx.cma_covariance_update_(cov, pc, y, weights, decay, float(c1), float(cmu))
    return cov


def cma_eigh(cov: Tensor, *, impl: str = "auto") -> tuple[Tensor, Tensor]:
    """Eigendecompositions of B symmetric matrices (the lazy decomposition, SPEC A1):
    cov [B, d, d] → (eigvals [B, d] ascending, eigvecs [B, d, d], eigenvectors in columns), as
    ``torch.linalg.eigh`` (only the lower triangle is read). Eigenvectors are defined up to
    sign (and, for repeated eigenvalues, up to a rotation of their space), so implementations
    agree on eigenvalues and on E diag(w) Eᵀ, not on E's entries. Not differentiable.

    The native CPU kernel solves the batch's matrices in parallel, one thread each, where
    ``torch.linalg.eigh`` threads inside each matrix's LAPACK call in turn (see
    benchmarks/RESULTS.md); on CUDA both are cuSOLVER.

    Odd inputs (the same in every implementation): float32 / float64 only (float16 / bfloat16:
    TypeError); NaN / inf anywhere: ValueError naming cov (LAPACK would fail or return
    garbage); B = 0 or d = 0 give empty results; any strides are accepted.
    """
    if not _native.use_native(impl, cov.device):
        with torch.no_grad():
            return reference.cma_eigh(cov)
    return tuple(torch.ops.latentx.cma_eigh(cov))


if _native._C is not None:

    @torch.library.register_fake("latentx::cma_sample")
    def _(noise, mean, sigma, eigvecs, sqrt_eigvals, lower, upper):
        reference.check_cma_sample(noise, mean, sigma, eigvecs, sqrt_eigvals, lower, upper, values=False)
        return torch.empty_like(noise), torch.empty_like(noise)

    @torch.library.register_fake("latentx::cma_covariance_update")
    def _(cov, pc, y, weights, decay, c1, cmu):
        reference.check_cma_covariance_update(cov, pc, y, weights, decay)
        return torch.empty_like(cov)

    @torch.library.register_fake("latentx::cma_covariance_update_")
    def _(cov, pc, y, weights, decay, c1, cmu):
        reference.check_cma_covariance_update(cov, pc, y, weights, decay)
        return None

    @torch.library.register_fake("latentx::cma_eigh")
    def _(cov):
        reference.check_cma_eigh(cov, values=False)
        b, d = cov.shape[0], cov.shape[1]
        return cov.new_empty(b, d), cov.new_empty(b, d, d)

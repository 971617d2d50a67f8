"""Sample-quality metrics over any feature extractor: FID, density and coverage.

FID (Heusel et al. 2017) is the Fréchet distance between Gaussians fitted to real and
generated features; density and coverage (Naeem et al. 2020) are k-nearest-neighbour
measures of fidelity and diversity. Pass features from any extractor (an Inception net, a
digit classifier's penultimate layer, ...); :func:`extract_features` runs one in chunks.
"""

from __future__ import annotations

import numbers
from typing import Callable, Optional

import torch
from torch import Tensor


@torch.no_grad()
def extract_features(extractor: Callable[[Tensor], Tensor], x: Tensor, batch_size: int = 512,
                     device: Optional[torch.device] = None) -> Tensor:
    """``extractor`` over ``x`` [N, ...] in chunks, without gradients → features [N, F] on x's device."""
    if not callable(extractor):
        raise TypeError(f"extractor must be callable, got {type(extractor).__name__}")
    if not isinstance(x, Tensor) or x.dim() < 1:
        raise TypeError(f"x must be a tensor [N, ...], got {getattr(x, 'shape', type(x).__name__)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    chunks = []
    for lo in range(0, len(x), batch_size):
        part = x[lo:lo + batch_size]
        chunks.append(extractor(part if device is None else part.to(device)).flatten(1).to(x.device))
    return torch.cat(chunks)


def _check_features(name: str, f: Tensor) -> None:
    if not isinstance(f, Tensor) or f.dim() != 2 or f.shape[0] < 2 or f.shape[1] < 1:
        raise ValueError(f"{name} must be features [N >= 2, F >= 1], got {getattr(f, 'shape', type(f))}")
    if f.is_complex() or f.dtype == torch.bool:
        raise TypeError(f"{name} must be real-valued features, got {f.dtype}")
    # NaN would reach eigh as a LinAlgError (FID) or quietly count as "outside" (coverage).
    bad = ~torch.isfinite(f).all(dim=1) if f.is_floating_point() else None
    if bad is not None and bool(bad.any()):
        rows = bad.nonzero().flatten()
        raise ValueError(f"{name} holds NaN or infinite values in {len(rows)} of {len(f)} rows "
                         f"(first: row {int(rows[0])})")


def feature_stats(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean [F] and unbiased covariance [F, F] of ``features`` [N, F], in float64."""
    _check_features("features", features)
    f = features.double()
    return f.mean(0), torch.cov(f.T).reshape(f.shape[1], f.shape[1])


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^½).

    Tr (Σ₁Σ₂)^½ is the sum of the square roots of the eigenvalues of Σ₁^½ Σ₂ Σ₁^½, a
    symmetric PSD matrix with the same spectrum as Σ₁Σ₂: an eigendecomposition in float64,
    no scipy, and no complex parts from round-off.

    Args:
        mu1, mu2: means [F]. cov1, cov2: covariances [F, F]. All finite.
    """
    names = ("mu1", "cov1", "mu2", "cov2")
    for name, t in zip(names, (mu1, cov1, mu2, cov2)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    f = mu1.shape[-1] if mu1.dim() == 1 else -1
    for name, t, shape in zip(names, (mu1, cov1, mu2, cov2), ((f,), (f, f), (f,), (f, f))):
        if tuple(t.shape) != shape or f < 1:
            raise ValueError(f"{name} must have shape {list(shape) if f >= 1 else '[F]'} (mu1 [F], cov [F, F]), "
                             f"got {list(t.shape)}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} holds NaN or infinite values")
    mu1, cov1, mu2, cov2 = (t.double() for t in (mu1, cov1, mu2, cov2))
    vals, vecs = torch.linalg.eigh(cov1)
    sqrt1 = (vecs * vals.clamp_min(0).sqrt()) @ vecs.T
    middle = sqrt1 @ cov2 @ sqrt1
    tr_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    return ((mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * tr_sqrt).item()


def fid(real: Tensor, fake: Tensor) -> float:
    """Fréchet distance between real features [N, F] and generated features [M, F]."""
    _check_features("real", real)
    _check_features("fake", fake)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and fake must have the same feature size, got {real.shape[1]} and {fake.shape[1]}")
    return frechet_distance(*feature_stats(real), *feature_stats(fake))


def density_coverage(real: Tensor, fake: Tensor, k: int = 5) -> dict[str, float]:
    """Density and coverage (Naeem et al. 2020, eqs. 3-4) of fake features against real ones.

    With B(xᵢ) the ball around real xᵢ reaching its k-th nearest real neighbour:
    density = (1/kM) Σⱼ Σᵢ 1[yⱼ ∈ B(xᵢ)] (≈ 1 when fakes look like reals; can exceed 1);
    coverage = (1/N) Σᵢ 1[∃ j: yⱼ ∈ B(xᵢ)] (share of real neighbourhoods that a fake reaches).

    Args:
        real: [N, F] features (N > k). fake: [M, F] features.
        k: neighbours (the paper uses 5).
    """
    _check_features("real", real)
    _check_features("fake", fake)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and fake must have the same feature size, got {real.shape[1]} and {fake.shape[1]}")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an integer, got {type(k).__name__} {k!r}")
    if not 1 <= k < len(real):
        raise ValueError(f"k must be in [1, N) with N={len(real)} real samples, got {k}")
    real, fake = real.double(), fake.double()
    # k+1: each real point is its own nearest neighbour at distance 0.
    radii = torch.cdist(real, real).kthvalue(k + 1, dim=1).values
    inside = torch.cdist(fake, real) <= radii.unsqueeze(0)  # [M, N]
    density = inside.sum().item() / (k * len(fake))
    coverage = inside.any(0).double().mean().item()
    return {"density": density, "coverage": coverage}

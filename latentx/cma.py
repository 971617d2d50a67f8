"""Batched CMA-ES (SPEC A1): B independent instances in one object, and a pycma-style front.

:class:`BatchedCMAES` keeps every instance's state as batched tensors and runs one generation
for all instances with a few batched tensor ops, the fused sampling kernel
(:func:`latentx.ops.cma_sample`), the fused covariance update
(:func:`latentx.ops.cma_covariance_update_`) and the batch's eigendecompositions
(:func:`latentx.ops.cma_eigh`). Its defaults are pycma's (package ``cma``,
version 4), so a run behaves, statistically, like pycma on the same problem.

Where this differs from pycma, on purpose:

* Box bounds clamp the sampled points (SPEC A1) instead of pycma's smooth boundary
  transformation, so the points handed out are always inside the box.
* Stopping knows four reasons (``tolfun``, ``tolx``, ``maxiter``, ``nonfinite``); pycma has
  more (``tolflatfitness``, ``tolstagnation``, ``tolconditioncov``, ``tolfacupx``, ...).
* A NaN or infinite fitness (or point) stops that instance with reason ``nonfinite`` and
  leaves its state as it was; pycma replaces NaN by the median and goes on. So does a
  covariance that overflowed to inf by the time it is decomposed.
* C starts as the identity (pycma perturbs its diagonal by a factor up to e^1e-4 to help its
  eigensolver). Eigenvalues below ``eps·λ_max`` are raised to that floor, and C is then
  rebuilt from the floored decomposition.
* With ``diagonal=True`` and d > 299, pycma switches step-size control to TPA; here CSA is
  always used. pycma's mirrored sampling (its default only when λ < 6, i.e. d = 1) is not
  done.

:class:`CMAEvolutionStrategy` is a drop-in for pycma's class of the same name on the common
path (``ask``, ``tell``, ``stop``, ``result``, ``optimize``), one instance in float64.
"""

from __future__ import annotations

import math
import warnings
from collections import namedtuple
from numbers import Integral, Real
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from latentx.ops import cma_covariance_update_, cma_eigh, cma_sample

__all__ = ["BatchedCMAES", "CMAEvolutionStrategy", "CMAEvolutionStrategyResult", "STOP_REASONS"]

STOP_REASONS = ("tolfun", "tolx", "maxiter", "nonfinite")

# pycma's Mh.chiN table for small d; above it, its series with 1/(26 d²) (SPEC A1 has 21).
_CHI_TABLE = {1: 0.7978845608028654, 2: 1.2533141373156, 3: 1.59576912160573,
              4: 1.87997120597325, 5: 2.1276921621409746, 6: 2.3499640074665633}


def _chi(d: int) -> float:
    """E‖N(0, I_d)‖ as pycma approximates it (utilities/math.py, Mh.chiN)."""
    return _CHI_TABLE.get(d, math.sqrt(d) * (1 - 1 / (4 * d) + 1 / (26 * d * d)))


def _check_positive_number(name: str, value: object, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"BatchedCMAES: {name} must be a number, got {type(value).__name__}")
    ok = value >= 0 if allow_zero else value > 0
    if not (ok and math.isfinite(value)):
        what = "finite and >= 0" if allow_zero else "finite and > 0"
        raise ValueError(f"BatchedCMAES: {name} must be {what}, got {value}")
    return float(value)


def _check_mean0(mean0: object) -> None:
    if not isinstance(mean0, Tensor):
        raise TypeError(f"BatchedCMAES: mean0 must be a tensor [B, d], got {type(mean0).__name__}")
    if mean0.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"BatchedCMAES: mean0 must be float32 or float64, got {mean0.dtype}")
    if mean0.dim() != 2 or mean0.shape[0] < 1 or mean0.shape[1] < 1:
        raise ValueError(f"BatchedCMAES: mean0 must be [B, d] with B, d >= 1, "
                         f"got shape {list(mean0.shape)}")
    if not bool(mean0.isfinite().all()):
        raise ValueError("BatchedCMAES: mean0 must be finite (it holds NaN or inf)")


def _sigma0_tensor(sigma0: Union[float, Tensor], b: int, dtype: torch.dtype,
                   device: torch.device) -> Tensor:
    if not isinstance(sigma0, Tensor):
        value = _check_positive_number("sigma0", sigma0)
        return torch.full((b,), value, dtype=dtype, device=device)
    if sigma0.shape != (b,):
        raise ValueError(f"BatchedCMAES: sigma0 must be a number or a tensor [{b}], "
                         f"got shape {list(sigma0.shape)}")
    if not bool((sigma0 > 0).all() & sigma0.isfinite().all()):
        raise ValueError("BatchedCMAES: sigma0 must be finite and > 0 everywhere")
    return sigma0.detach().to(device=device, dtype=dtype).clone()


def _popsize_and_raw_weights(popsize: Optional[int], weights: Union[str, Sequence[float], Tensor],
                             d: int) -> tuple[int, list[float]]:
    """λ and the raw recombination weights (pycma's default or the caller's)."""
    if isinstance(weights, str):
        if weights != "default":
            raise ValueError(f"BatchedCMAES: weights must be 'default' or a sequence of numbers, "
                             f"got {weights!r}")
        if popsize is None:
            popsize = 4 + int(3 * math.log(d))
        raw = None
    else:
        raw = [float(v) for v in (weights.tolist() if isinstance(weights, Tensor) else weights)]
        if popsize is None:
            popsize = len(raw)
    if isinstance(popsize, bool) or not isinstance(popsize, Integral) or popsize < 2:
        raise ValueError(f"BatchedCMAES: popsize must be an integer >= 2, got {popsize!r}")
    if raw is None:
        # w'_i = ln((λ+1)/2) − ln i (SPEC A1, pycma RecombinationWeights)
        return int(popsize), [math.log((popsize + 1) / 2) - math.log(i)
                              for i in range(1, popsize + 1)]
    if len(raw) != popsize:
        raise ValueError(f"BatchedCMAES: weights must hold popsize={popsize} values, "
                         f"got {len(raw)}")
    if not (raw[0] > 0 and raw[-1] <= 0 and all(u >= v for u, v in zip(raw, raw[1:]))):
        raise ValueError("BatchedCMAES: weights must be non-increasing, the first > 0 and the "
                         "last <= 0")
    return int(popsize), raw


def _check_bounds(bounds: Optional[tuple[Optional[float], Optional[float]]],
                  mean0: Tensor) -> tuple[Optional[float], Optional[float]]:
    lower, upper = (None, None) if bounds is None else tuple(bounds)
    for name, bound in (("bounds[0]", lower), ("bounds[1]", upper)):
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, Real)
                                  or math.isnan(bound)):
            raise ValueError(f"BatchedCMAES: {name} must be a number or None, got {bound!r}")
    if lower is not None and upper is not None and not lower < upper:
        raise ValueError(f"BatchedCMAES: bounds must have lower < upper, got {bounds}")
    outside = ((lower is not None and bool((mean0 < lower).any()))
               or (upper is not None and bool((mean0 > upper).any())))
    if outside:
        raise ValueError(f"BatchedCMAES: mean0 must lie inside bounds {bounds}")
    return (None if lower is None else float(lower)), (None if upper is None else float(upper))


class _Parameters:
    """Strategy parameters for dimension d and population λ, as pycma sets them.

    Sources: options_parameters.py (CMAParameters.set), interfaces.py
    (StatisticalModelSamplerWithZeroMeanBaseClass.parameters), recombination_weights.py and
    sigma_adaptation.py (CMAAdaptSigmaCSA.initialize) of pycma 4.4.
    """

    def __init__(self, d: int, popsize: int, raw_weights: Sequence[float], active: bool,
                 diagonal: bool) -> None:
        lam = popsize
        w = [float(v) for v in raw_weights]
        mu = sum(v > 0 for v in w)
        # RecombinationWeights.__init__: positive weights sum to 1, negative ones to −1.
        pos_sum = sum(w[:mu])
        w = [v / pos_sum for v in w]
        neg_sum = sum(w[mu:])
        if neg_sum != 0:
            w = w[:mu] + [v / -neg_sum for v in w[mu:]]
        mueff = 1 / sum(v * v for v in w[:mu])

        if diagonal:
            # CMAParameters.set: c1_sep = conedf(N, mueff, N), cmu_sep = cmudf(N, mueff, 0.25).
            c1 = 1 / (d + 2 * math.sqrt(d) + mueff / d)
            cmu = min(1 - c1, (0.25 + mueff + 1 / mueff - 2) / (d + 4 * math.sqrt(d) + mueff / 2))
            cc = (1 + 1 / d + mueff / d) / (math.sqrt(d) + 1 / d + 2 * mueff / d)
        else:
            # interfaces.py parameters(): c1 = min(1, λ/6)·2/((d+1.3)² + μ_eff),
            # c_μ = min(1 − c1, 2(0.25 + μ_eff + 1/μ_eff − 2)/((d+2)² + μ_eff)).
            c1 = min(1, lam / 6) * 2 / ((d + 1.3) ** 2 + mueff)
            cmu = min(1 - c1, 2 * (0.25 + mueff + 1 / mueff - 2) / ((d + 2) ** 2 + mueff))
            cc = (4 + mueff / d) / (d + 4 + 2 * mueff / d)

        if active and w[-1] < 0 and cmu > 0:
            w = self._finalize_negative(w, mu, mueff, d, c1, cmu, pos_def=not diagonal)
        else:
            # zero_negative_weights (CMA_active=False); also when c_μ = 0 pycma keeps them
            # out of the update, which zero weights do too.
            w = [max(v, 0.0) for v in w]

        cs = (mueff + 2) / (d + mueff + 3)
        # CMAAdaptSigmaCSA.initialize without mirrors:
        # d_σ = 0.5 + 1/2 + 2 max(0, √((μ_eff−1)/(d+1)) − 1) + c_σ.
        damps = 1 + 2 * max(0.0, math.sqrt((mueff - 1) / (d + 1)) - 1) + cs

        self.d, self.popsize, self.mu = d, lam, mu
        self.weights = w
        self.mueff, self.c1, self.cmu, self.cc, self.cs, self.damps = mueff, c1, cmu, cc, cs, damps
        self.chi = _chi(d)
        # GaussFullSampler lazy_update_gap: decompose once count − last ≥ 1/((c1+cμ)·d·10).
        self.eigen_gap = 1 / (c1 + cmu + 1e-23) / d / 10
        # pycma's hsig test ‖p_σ‖²/(1 − (1−c_σ)^{2g})/d − 1 < 1 + 4/(d+1) (SPEC A1: a norm form).
        self.hsig_threshold = 1 + 4 / (d + 1)
        # repair_genotype: points pycma did not hand out are clipped to this Mahalanobis length.
        self.repair_length = math.sqrt(d) + 2 * d / (d + 2)
        # _CMAStopDict 'tolfun' keeps the best f of the last ⌊10 + 30 d/λ⌋ generations.
        self.history = int(math.floor(10 + 30 * d / lam))

    @staticmethod
    def _finalize_negative(w: list[float], mu: int, mueff: float, d: int, c1: float, cmu: float,
                           pos_def: bool) -> list[float]:
        """RecombinationWeights.finalize_negative_weights: rescale the negative weights."""
        def neg_sum(ws: list[float]) -> float:
            return sum(ws[mu:])

        def scale_to(ws: list[float], value: float) -> list[float]:
            return ws[:mu] + [v * abs(value / neg_sum(ws)) for v in ws[mu:]]

        def limit(ws: list[float], value: float) -> list[float]:
            return scale_to(ws, value) if neg_sum(ws) < -value else ws

        # 1. zero decay: c1 + c_μ Σw = 0, i.e. Σw⁻ = −(1 + c1/c_μ).
        w = scale_to(w, 1 + c1 / cmu)
        # 2. positive definiteness for Mahalanobis-rescaled vectors (not with CMA_diagonal).
        if pos_def:
            w = limit(w, (1 - c1 - cmu) / cmu / d)
        # 3. learning rate respecting μ_eff⁻: Σ|w⁻| ≤ 1 + 2 μ_eff⁻/(μ_eff + 2).
        mueff_minus = neg_sum(w) ** 2 / sum(v * v for v in w[mu:])
        return limit(w, 1 + 2 * mueff_minus / (mueff + 2))


class BatchedCMAES:
    """B independent CMA-ES instances of dimension d, stepped together (SPEC A1).

    Args:
        mean0: initial means m₀ [B, d], float32 or float64; finite, inside ``bounds``. Every
            state tensor has its dtype and device.
        sigma0: initial step sizes σ₀ > 0: a number, or a tensor [B].
        popsize: λ ≥ 2, the same for every instance; default pycma's 4 + ⌊3 ln d⌋.
        bounds: ``(lower, upper)`` numbers (either may be None): sampled points are clamped
            into the box and y recomputed as (x − m)/σ (SPEC A1; pycma transforms instead).
        weights: ``"default"`` (pycma's ln((λ+1)/2) − ln i), or λ raw weights, non-increasing,
            first > 0, last ≤ 0 (pycma's CMA_recombination_weights). Positive weights are
            normalised to sum 1; negative ones are finalised as pycma does.
        active: active CMA: the worst points get negative weights (pycma's default).
        diagonal: separable CMA (pycma's ``CMA_diagonal=True``): only the coordinate-wise
            scales D [B, d] are learned, with pycma's separable learning rates and its
            exponential update; C and E are then None.
        generator: a ``torch.Generator`` on mean0's device for the sampling noise; default a
            new one seeded from torch's default generator.
        tolfun: stop when the f range of this generation and of the recent best values is
            below it (pycma's ``tolfun``).
        tolx: stop when σ·√diag(C) and σ·|p_c| are below it in every coordinate.
        maxiter: stop after this many generations; default pycma's 100 + ⌊150 (d+3)²/√λ⌋.
        decomposition: how C's square root is refreshed on SPEC A1's lazy schedule:
            ``"eigh"`` (pycma's: C = E D² Eᵀ by batched ``torch.linalg.eigh``) or
            ``"cholesky"``: C = A Aᵀ by batched ``torch.linalg.cholesky``, about 8× cheaper
            at d = 512. Points are sampled as m + σ A z and the σ-path uses A⁻¹ y_w instead of
            C^{-1/2} y_w, as in the Cholesky-CMA-ES (Suttorp, Hansen & Igel, Machine
            Learning 2009; Krause, Arbonès & Igel, NeurIPS 2016): the same search
            distribution N(m, σ²C). (Those papers update A incrementally; here it is
            refactored from C on the same schedule as the eigenbasis.)

    State (tensors on mean0's device, dtype; B leading): ``mean`` [B, d], ``sigma`` [B],
    ``C`` [B, d, d], ``E`` [B, d, d] (eigenvectors of C in columns), ``D`` [B, d] (square
    roots of its eigenvalues; with ``decomposition="cholesky"``, E is the lower factor A and
    D is ones), ``ps``, ``pc`` [B, d] (with ``diagonal``, p_c is kept in the
    coordinates scaled by D, as pycma does), ``generation``, ``evaluations`` [B] int64, and
    ``best_x`` [B, d], ``best_f`` [B], ``best_evaluations`` [B]: the best point ever told
    per instance, its f, and its evaluation number.

    Stopping: after each :meth:`tell`, every running instance is checked; an instance that
    meets a criterion is *stopped* and frozen: no later :meth:`tell` changes any of its
    state. :meth:`stop` returns one dict per instance, ``{reason: value}``, empty while it
    runs (like pycma's ``stop()``); :attr:`stopped` is the same as a bool tensor [B].
    Reasons: ``tolfun``, ``tolx``, ``maxiter`` (value: the threshold) and ``nonfinite``
    (value True): a NaN or ±inf in that instance's f or x in a :meth:`tell`; that whole
    tell is then ignored for the instance.
    """

    def __init__(
        self,
        mean0: Tensor,
        sigma0: Union[float, Tensor],
        popsize: Optional[int] = None,
        bounds: Optional[tuple[Optional[float], Optional[float]]] = None,
        weights: Union[str, Sequence[float], Tensor] = "default",
        active: bool = True,
        diagonal: bool = False,
        generator: Optional[torch.Generator] = None,
        tolfun: float = 1e-11,
        tolx: float = 1e-11,
        maxiter: Optional[int] = None,
        decomposition: str = "eigh",
    ) -> None:
        popsize_given = popsize
        if decomposition not in ("eigh", "cholesky"):
            raise ValueError(f"BatchedCMAES: decomposition must be 'eigh' or 'cholesky', got {decomposition!r}")
        if diagonal and decomposition != "eigh":
            raise ValueError("BatchedCMAES: decomposition='cholesky' applies to full CMA; "
                             "diagonal CMA decomposes nothing")
        _check_mean0(mean0)
        b, d = mean0.shape
        dtype, device = mean0.dtype, mean0.device
        sigma = _sigma0_tensor(sigma0, b, dtype, device)
        popsize, raw = _popsize_and_raw_weights(popsize, weights, d)
        lower, upper = _check_bounds(bounds, mean0)
        if generator is None:
            generator = torch.Generator(device=device)
            generator.manual_seed(int(torch.randint(0, 2**62, ())))
        elif not isinstance(generator, torch.Generator) or generator.device.type != device.type:
            raise ValueError(f"BatchedCMAES: generator must be a torch.Generator on "
                             f"{device.type}, got {generator!r}")

        self.params = _Parameters(d, popsize, raw, bool(active), bool(diagonal))
        self.lower, self.upper = lower, upper
        self.active, self.diagonal = bool(active), bool(diagonal)
        self.decomposition = decomposition
        self.generator = generator
        self.tolfun = _check_positive_number("tolfun", tolfun, allow_zero=True)
        self.tolx = _check_positive_number("tolx", tolx, allow_zero=True)
        if maxiter is None:
            # pycma: 100 + 150 (d+3)² // √popsize, read with the unrounded default popsize
            # 4 + 3 ln d when popsize and weights are left to their defaults.
            defaults = popsize_given is None and isinstance(weights, str)
            lam = 4 + 3 * math.log(d) if defaults else popsize
            maxiter = 100 + int(150 * (d + 3) ** 2 // math.sqrt(lam))
        if isinstance(maxiter, bool) or not isinstance(maxiter, Integral) or maxiter < 1:
            raise ValueError(f"BatchedCMAES: maxiter must be an integer >= 1, got {maxiter!r}")
        self.maxiter = int(maxiter)

        def zeros(*shape: int) -> Tensor:
            return torch.zeros(shape, dtype=dtype, device=device)

        def counter() -> Tensor:
            return torch.zeros(b, dtype=torch.int64, device=device)

        self.mean = mean0.detach().clone()
        self.sigma = sigma
        eye = torch.eye(d, dtype=dtype, device=device).expand(b, d, d)
        self.C: Optional[Tensor] = None if diagonal else eye.clone()
        self.E: Optional[Tensor] = None if diagonal else eye.clone()
        self.D = torch.ones(b, d, dtype=dtype, device=device)
        self.ps = zeros(b, d)
        self.pc = zeros(b, d)
        self.generation = counter()
        self.evaluations = counter()
        self.last_eigen = counter()
        self.best_x = self.mean.clone()
        self.best_f = torch.full((b,), math.inf, dtype=dtype, device=device)
        self.best_evaluations = counter()
        # best f of the last generations, newest first; the first min(generation, H) are filled.
        self.f_history = zeros(b, self.params.history)
        self.stop_flags = torch.zeros(b, len(STOP_REASONS), dtype=torch.bool, device=device)
        # the points last handed out by ask(); told points that differ are repaired as pycma does.
        self.asked: Optional[Tensor] = None
        self._weights = torch.tensor(self.params.weights, dtype=dtype, device=device)

    # --- shape facts ---------------------------------------------------------------------

    @property
    def batch_size(self) -> int:
        return self.mean.shape[0]

    @property
    def dim(self) -> int:
        return self.mean.shape[1]

    @property
    def popsize(self) -> int:
        return self.params.popsize

    @property
    def stds(self) -> Tensor:
        """Coordinate-wise standard deviations σ·√diag(C) (σ·D with ``diagonal``), [B, d]."""
        if self.diagonal:
            return self.sigma[:, None] * self.D
        return self.sigma[:, None] * torch.diagonal(self.C, dim1=-2, dim2=-1).sqrt()

    @property
    def stopped(self) -> Tensor:
        """Bool [B]: the instance has stopped (see :meth:`stop`) and is frozen."""
        return self.stop_flags.any(dim=1)

    def stop(self) -> list[dict[str, Union[float, int, bool]]]:
        """One dict per instance: ``{reason: value}`` for each criterion met; empty: running."""
        values = {"tolfun": self.tolfun, "tolx": self.tolx, "maxiter": self.maxiter,
                  "nonfinite": True}
        flags = self.stop_flags.tolist()
        return [{r: values[r] for r, hit in zip(STOP_REASONS, row) if hit} for row in flags]

    # --- one generation ------------------------------------------------------------------

    def ask(self, noise: Optional[Tensor] = None) -> Tensor:
        """Sample λ points per instance: x [B, λ, d] = m + σ E (D ⊙ N), clamped into bounds.

        ``noise`` N [B, λ, d] is standard normal, drawn from ``generator`` unless given
        (pass it to replay or compare runs). Stopped instances still get points; their tell
        is ignored.
        """
        b, lam, d = self.batch_size, self.popsize, self.dim
        if noise is None:
            noise = torch.randn((b, lam, d), generator=self.generator, dtype=self.mean.dtype,
                                device=self.mean.device)
        else:
            self._check_tensor("noise", noise, [b, lam, d])
        x, _ = cma_sample(noise, self.mean, self.sigma, self.E, self.D,
                          lower=self.lower, upper=self.upper)
        self.asked = x.clone()
        return x

    def tell(self, x: Tensor, f: Tensor) -> None:
        """Update every running instance from its λ points and their fitness (lower is better).

        Args:
            x: points [B, λ, d] (mean's dtype and device): the asked ones, or ones the caller
                moved (BasinCMA). y = (x − m)/σ is recomputed from x (x clamped into the
                bounds first); points that differ from the asked ones are shortened to
                Mahalanobis length √d + 2d/(d+2) when longer, as pycma repairs solutions it
                did not hand out. ``best_x`` records x as given.
            f: fitness [B, λ], any floating dtype, on mean's device.

        Stopped instances ignore their rows; see :meth:`stop` for what stops an instance.
        """
        p = self.params
        b, lam, d = self.batch_size, p.popsize, p.d
        self._check_tensor("x", x, [b, lam, d])
        if not isinstance(f, Tensor) or not f.is_floating_point():
            raise TypeError(f"BatchedCMAES.tell: f must be a floating tensor [{b}, {lam}], got "
                            f"{f.dtype if isinstance(f, Tensor) else type(f).__name__}")
        if list(f.shape) != [b, lam] or f.device != self.mean.device:
            raise ValueError(f"BatchedCMAES.tell: f must be [{b}, {lam}] on {self.mean.device}, "
                             f"got {list(f.shape)} on {f.device}")
        with torch.no_grad():
            self._tell(x.detach(), f.detach().to(self.mean.dtype))
        # pycma forgets the solutions it sent once they are told; told again, they are repaired.
        self.asked = None

    def _tell(self, x: Tensor, f: Tensor) -> None:
        p = self.params
        lam, d = p.popsize, p.d
        running = ~self.stopped
        finite = f.isfinite().all(dim=1) & x.isfinite().all(dim=2).all(dim=1)
        self.stop_flags[:, STOP_REASONS.index("nonfinite")] |= running & ~finite
        live = running & finite
        if not bool(live.any()):
            return
        # Frozen rows are computed on harmless stand-ins and dropped by `keep` at the end.
        x = torch.where(live[:, None, None], x, self.mean[:, None, :])
        f = torch.where(live[:, None], f, torch.zeros_like(f))

        # best ever (pycma BestSolution.update: evaluation number of the best in the batch)
        f_best, i_best = f.min(dim=1)
        improved = live & (f_best < self.best_f)
        x_best = x.gather(1, i_best[:, None, None].expand(-1, 1, d))[:, 0]
        generation = self.generation + live.long()
        evaluations = self.evaluations + lam * live.long()

        order = f.argsort(dim=1, stable=True)
        x_sorted = x.gather(1, order[:, :, None].expand(-1, -1, d))
        if self.lower is not None or self.upper is not None:
            x_sorted = x_sorted.clamp(min=self.lower, max=self.upper)
        sigma = self.sigma[:, None, None]
        y = (x_sorted - self.mean[:, None, :]) / sigma
        maha = self._whiten(y).norm(dim=-1)  # ‖y‖ in C⁻¹, with the E, D used for sampling
        if self.asked is None:
            modified = torch.ones_like(f, dtype=torch.bool)
        else:
            modified = (x != self.asked).any(dim=-1).gather(1, order)
        too_long = modified & (maha > p.repair_length)
        shrink = torch.where(too_long, p.repair_length / maha, torch.ones_like(maha))
        y = y * shrink[:, :, None]
        maha = maha * shrink

        w = self._weights
        y_w = (w[: p.mu, None] * y[:, : p.mu]).sum(dim=1)  # Σ_{i≤μ} w_i y_{i:λ}
        mean = self.mean + self.sigma[:, None] * y_w
        if self.lower is not None or self.upper is not None:
            # a convex combination of points in the box: the clamp only removes round-off
            mean = mean.clamp(min=self.lower, max=self.upper)
        # p_σ ← (1−c_σ) p_σ + √(c_σ(2−c_σ)μ_eff) C^{-1/2} y_w  (CMAAdaptSigmaCSA._update_ps)
        # (Cholesky-CMA-ES: A⁻¹ y_w in place of C^{-1/2} y_w; the same N(0, I) under neutral
        # selection, so the step-size control is unchanged.)
        z_w = self._whiten(y_w[:, None])[:, 0]
        if not self.diagonal and self.decomposition == "eigh":
            z_w = (z_w[:, None, :] @ self.E.transpose(-1, -2))[:, 0]
        ps = (1 - p.cs) * self.ps + math.sqrt(p.cs * (2 - p.cs) * p.mueff) * z_w
        # h_σ (pycma CMAAdaptSigmaBase.hsig), g counted after this generation
        bias = 1 - (1 - p.cs) ** (2 * generation.to(ps.dtype))
        hsig = ((ps * ps).sum(dim=1) / bias / d - 1 < p.hsig_threshold).to(ps.dtype)
        # p_c ← (1−c_c) p_c + h_σ √(c_c(2−c_c)μ_eff) y_w  (diagonal: y_w/D, pycma's scaled path)
        path_step = y_w / self.D if self.diagonal else y_w
        pc_gain = math.sqrt(p.cc * (2 - p.cc) * p.mueff)
        pc = (1 - p.cc) * self.pc + hsig[:, None] * pc_gain * path_step
        # c1a = c1 (1 − (1 − h_σ²) c_c (2 − c_c)): the variance lost when h_σ stalls p_c
        c1a = p.c1 * (1 - (1 - hsig) * p.cc * (2 - p.cc))
        # σ ← σ exp(clip((c_σ/d_σ)(‖p_σ‖/χ_d − 1), −1, 1))  (CMAAdaptSigmaCSA.update2)
        log_step = (p.cs / p.damps) * (ps.norm(dim=1) / p.chi - 1)
        sigma_new = self.sigma * log_step.clamp(-1.0, 1.0).exp()

        keep = live[:, None]
        if self.diagonal:
            # DiagonalDecoding.update with weights log(2)·[c1a, c_μ w_1..λ] on vectors
            # [p_c, y_k/D]: D ← D exp((Σ_k W_k z_k² − Σ_k W_k)/2). No Mahalanobis rescaling.
            z2 = (y / self.D[:, None, :]) ** 2
            w_cmu = math.log(2) * p.cmu * w
            w_one = math.log(2) * c1a
            z2_avg = w_one[:, None] * pc * pc + (w_cmu[None, :, None] * z2).sum(dim=1)
            facs = ((z2_avg - (w_one + w_cmu.sum())[:, None]) / 2).exp()
            self.D = torch.where(keep, self.D * facs, self.D)
        else:
            # GaussFullSampler.update:
            #   C ← (1 − c1a − c_μ Σw) C + c1 p_c p_cᵀ + c_μ Σ w'_k y_k y_kᵀ,
            # with the negative weights rescaled by d/(‖y_k‖_C⁻¹ + 1e−9)².
            w_eff = torch.where(w < 0, w * d / (maha + 1e-9) ** 2, w)
            decay = 1 - c1a - p.cmu * w.sum()
            live_f = live.to(decay.dtype)
            # Frozen instances: a = 1 and no rank-one / rank-μ terms, so C is left exactly.
            cma_covariance_update_(
                self.C, pc * live_f[:, None], y * live_f[:, None, None], w_eff * live_f[:, None],
                torch.where(live, decay, torch.ones_like(decay)), p.c1, p.cmu,
            )

        self.mean = torch.where(keep, mean, self.mean)
        self.sigma = torch.where(live, sigma_new, self.sigma)
        self.ps = torch.where(keep, ps, self.ps)
        self.pc = torch.where(keep, pc, self.pc)
        self.generation, self.evaluations = generation, evaluations
        self.best_x = torch.where(improved[:, None], x_best, self.best_x)
        found_at = self.evaluations - lam + i_best + 1
        self.best_evaluations = torch.where(improved, found_at, self.best_evaluations)
        self.best_f = torch.where(improved, f_best, self.best_f)
        shifted = torch.cat([f_best[:, None], self.f_history[:, :-1]], dim=1)
        self.f_history = torch.where(keep, shifted, self.f_history)
        if not self.diagonal:
            self._decompose(live & (self.generation - self.last_eigen >= p.eigen_gap))
        self._check_stop(live, f)

    def _whiten(self, y: Tensor) -> Tensor:
        """Whitened steps for y [B, k, d] (row vectors): D⁻¹ Eᵀ y (y in C's eigenbasis, unit
        variance), or A⁻¹ y with the Cholesky factor. Either way ‖·‖ is y's length in C⁻¹."""
        if self.diagonal:
            return y / self.D[:, None, :]
        if self.decomposition == "cholesky":
            # rows: z = y A⁻ᵀ, i.e. solve z Aᵀ = y with Aᵀ upper triangular
            return torch.linalg.solve_triangular(self.E.transpose(-1, -2), y, upper=True, left=False)
        return (y @ self.E) / self.D[:, None, :]

    def _decompose(self, due: Tensor) -> None:
        """C = E D² Eᵀ for the instances in ``due`` [B] (pycma GaussFullSampler._decompose_C),
        or C = A Aᵀ with ``decomposition="cholesky"``. An instance whose C is no longer finite
        stops (``nonfinite``) instead of being decomposed."""
        if not bool(due.any()):
            return
        idx = due.nonzero()[:, 0]
        c = self.C[idx]
        finite = c.isfinite().flatten(1).all(dim=1)
        if not bool(finite.all()):
            self.stop_flags[idx[~finite], STOP_REASONS.index("nonfinite")] = True
            idx, c = idx[finite], c[finite]
            if idx.numel() == 0:
                return
        c = (c + c.transpose(-1, -2)) / 2
        if self.decomposition == "cholesky":
            factor, info = torch.linalg.cholesky_ex(c)
            if not bool((info != 0).any()):
                self.C[idx], self.E[idx] = c, factor
                self.last_eigen[idx] = self.generation[idx]
                return
            # Not numerically positive definite: floor the spectrum below, then factor.
        evals, evecs = cma_eigh(c)
        floor = torch.finfo(c.dtype).eps * evals[:, -1:].clamp(min=torch.finfo(c.dtype).tiny)
        floored = (evals < floor).any(dim=1)
        evals = torch.maximum(evals, floor)
        if bool(floored.any()):  # rebuilt only where needed: a batched d³ product otherwise
            rows = floored.nonzero()[:, 0]
            v = evecs[rows]
            c[rows] = (v * evals[rows, None, :]) @ v.transpose(-1, -2)
        self.C[idx] = c
        if self.decomposition == "cholesky":
            self.E[idx] = torch.linalg.cholesky(c)
        else:
            self.E[idx] = evecs
            self.D[idx] = evals.sqrt()
        self.last_eigen[idx] = self.generation[idx]

    def _check_stop(self, live: Tensor, f: Tensor) -> None:
        """pycma's _CMAStopDict tolfun, tolx and maxiter, for the instances just updated."""
        h = self.params.history
        filled = torch.arange(h, device=f.device) < self.generation.clamp(max=h)[:, None]
        hist_max = torch.where(filled, self.f_history, -math.inf).amax(dim=1)
        hist_min = torch.where(filled, self.f_history, math.inf).amin(dim=1)
        f_range = f.amax(dim=1) - f.amin(dim=1)
        tolfun = (f_range < self.tolfun) & (hist_max - hist_min < self.tolfun)
        pc_x = self.pc * self.D if self.diagonal else self.pc
        # pycma compares σ·p_c without abs (so negative entries always pass); |p_c| is meant.
        tolx = ((self.stds < self.tolx).all(dim=1)
                & ((self.sigma[:, None] * pc_x).abs() < self.tolx).all(dim=1))
        maxiter = self.generation >= self.maxiter
        met = torch.stack([tolfun, tolx, maxiter], dim=1) & live[:, None]
        self.stop_flags[:, :3] |= met

    def _check_tensor(self, name: str, t: object, shape: list[int]) -> None:
        if not isinstance(t, Tensor):
            raise TypeError(f"BatchedCMAES: {name} must be a tensor {shape}, "
                            f"got {type(t).__name__}")
        if t.device != self.mean.device:
            raise ValueError(f"BatchedCMAES: {name} must be on {self.mean.device} like mean0, "
                             f"got {t.device}")
        if t.dtype != self.mean.dtype:
            raise TypeError(f"BatchedCMAES: {name} must be {self.mean.dtype} like mean0, "
                            f"got {t.dtype}")
        if list(t.shape) != shape:
            raise ValueError(f"BatchedCMAES: {name} must have shape {shape} [B, popsize, d], "
                             f"got {list(t.shape)}")

    # --- checkpoints ---------------------------------------------------------------------

    _STATE = ("mean", "sigma", "C", "E", "D", "ps", "pc", "generation", "evaluations", "last_eigen",
              "best_x", "best_f", "best_evaluations", "f_history", "stop_flags", "asked")

    def _config(self) -> dict:
        return {"batch_size": self.batch_size, "dim": self.dim, "popsize": self.popsize,
                "weights": list(self.params.weights), "active": self.active,
                "diagonal": self.diagonal, "bounds": (self.lower, self.upper),
                "tolfun": self.tolfun, "tolx": self.tolx, "maxiter": self.maxiter,
                "decomposition": self.decomposition}

    def state_dict(self) -> dict:
        """Everything a run needs to resume exactly: the state tensors (copies), the
        generator's state and the configuration it was built with (checked on load)."""
        state = {}
        for key in self._STATE:
            value = getattr(self, key)
            state[key] = None if value is None else value.clone()
        state["generator"] = self.generator.get_state()
        state["config"] = self._config()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output into an instance built with the same arguments."""
        config = self._config()
        for key, value in state["config"].items():
            if config[key] != value:
                raise ValueError(f"BatchedCMAES.load_state_dict: {key} is {config[key]!r} here "
                                 f"but {value!r} in the state; build the optimizer with the "
                                 f"same arguments")
        device = self.mean.device
        for key in self._STATE:
            value = state[key]
            setattr(self, key, None if value is None else value.to(device).clone())
        self.generator.set_state(state["generator"])


# --- pycma-compatible front --------------------------------------------------------------

CMAEvolutionStrategyResult = namedtuple(
    "CMAEvolutionStrategyResult",
    ["xbest", "fbest", "evals_best", "evaluations", "iterations", "xfavorite", "stds", "stop"],
)
CMAEvolutionStrategyResult.__doc__ = """pycma's result tuple: best point and f, the evaluation
that found it, evaluations and iterations so far, the mean, the stds, the stop dict."""

_FRONT_OPTIONS = ("popsize", "bounds", "seed", "maxiter", "tolfun", "tolx", "CMA_active",
                  "CMA_diagonal", "verbose")


class CMAEvolutionStrategy:
    """pycma's ``CMAEvolutionStrategy`` on the common path, over :class:`BatchedCMAES` (B = 1,
    float64, CPU).

    Args:
        x0: the initial mean, a sequence of d numbers (1-D; a [1, d] or [d, 1] array is
            flattened with a warning, as pycma does; other shapes raise).
        sigma0: the initial step size, a number > 0.
        inopts: pycma options; supported: ``popsize``, ``bounds`` (``[lower, upper]``,
            numbers or None), ``seed`` (int; None or 0 draws one), ``maxiter``, ``tolfun``,
            ``tolx``, ``CMA_active``, ``CMA_diagonal`` (bool), ``verbose`` (> 0 prints a line
            every 100 iterations of :meth:`optimize`; default 3 as pycma). Others raise.

    NaN or infinite fitness stops the run (``stop()`` has ``nonfinite``); pycma instead
    replaces NaN by the median.
    """

    def __init__(self, x0: Sequence[float], sigma0: float, inopts: Optional[dict] = None) -> None:
        opts = dict(inopts or {})
        unknown = sorted(set(opts) - set(_FRONT_OPTIONS))
        if unknown:
            raise ValueError(f"CMAEvolutionStrategy: unsupported option(s) {unknown}; "
                             f"supported: {', '.join(_FRONT_OPTIONS)}")
        try:
            x0_array = np.array(x0, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"CMAEvolutionStrategy: x0 must be a sequence of d numbers, got {x0!r}") from err
        if x0_array.ndim == 2 and 1 in x0_array.shape:
            # pycma flattens a row or column vector with a warning, and so do we.
            warnings.warn(f"CMAEvolutionStrategy: x0 should be 1-D, flattening shape {x0_array.shape}",
                          UserWarning, stacklevel=2)
            x0_array = x0_array.reshape(-1)
        if x0_array.ndim != 1 or x0_array.size < 1:
            raise ValueError(f"CMAEvolutionStrategy: x0 must be a 1-D sequence of d >= 1 numbers, "
                             f"got shape {x0_array.shape}")
        if not np.isfinite(x0_array).all():
            raise ValueError("CMAEvolutionStrategy: x0 holds NaN or infinite values")
        mean0 = torch.as_tensor(x0_array.reshape(1, -1))
        bounds = opts.get("bounds")
        if bounds is not None:
            if len(bounds) != 2 or any(v is not None and np.ndim(v) != 0 for v in bounds):
                raise ValueError(f"CMAEvolutionStrategy: bounds must be [lower, upper] with "
                                 f"numbers or None (per-coordinate bounds are not supported), "
                                 f"got {bounds!r}")
            bounds = tuple(None if v is None else float(v) for v in bounds)
        if opts.get("CMA_diagonal", False) not in (True, False):
            raise ValueError(f"CMAEvolutionStrategy: CMA_diagonal must be True or False, "
                             f"got {opts['CMA_diagonal']!r}")
        seed = opts.get("seed")
        generator = torch.Generator()
        if seed:
            generator.manual_seed(int(seed))
        else:
            generator.seed()
        self.verbose = int(opts.get("verbose", 3))
        self.inopts = opts
        self.es = BatchedCMAES(
            mean0, float(sigma0), popsize=opts.get("popsize"), bounds=bounds,
            active=bool(opts.get("CMA_active", True)),
            diagonal=bool(opts.get("CMA_diagonal", False)), generator=generator,
            tolfun=opts.get("tolfun", 1e-11), tolx=opts.get("tolx", 1e-11),
            maxiter=opts.get("maxiter"),
        )

    @property
    def popsize(self) -> int:
        return self.es.popsize

    @property
    def mean(self) -> np.ndarray:
        return self.es.mean[0].numpy().copy()

    @property
    def sigma(self) -> float:
        return float(self.es.sigma[0])

    @property
    def countiter(self) -> int:
        return int(self.es.generation[0])

    @property
    def countevals(self) -> int:
        return int(self.es.evaluations[0])

    def ask(self) -> list[np.ndarray]:
        """λ new points, each a float64 array [d]."""
        return [row.copy() for row in self.es.ask()[0].numpy()]

    def tell(self, solutions: Sequence[Sequence[float]], function_values: Sequence[float]) -> None:
        """Update from λ points (arrays or lists, the asked ones or modified) and their f."""
        x = np.asarray(solutions, dtype=np.float64)
        f = np.asarray(function_values, dtype=np.float64)
        lam, d = self.popsize, self.es.dim
        if x.shape != (lam, d):
            raise ValueError(f"CMAEvolutionStrategy.tell: solutions must be {lam} points of "
                             f"dimension {d}, got an array of shape {x.shape}")
        if f.shape != (lam,):
            raise ValueError(f"CMAEvolutionStrategy.tell: function_values must be {lam} numbers, "
                             f"got shape {f.shape}")
        self.es.tell(torch.from_numpy(x)[None], torch.from_numpy(f)[None])

    def stop(self) -> dict:
        """pycma's termination dict: ``{reason: value}``, empty while running."""
        return self.es.stop()[0]

    @property
    def result(self) -> CMAEvolutionStrategyResult:
        es = self.es
        return CMAEvolutionStrategyResult(
            es.best_x[0].numpy().copy(), float(es.best_f[0]), int(es.best_evaluations[0]),
            self.countevals, self.countiter, self.mean, es.stds[0].numpy().copy(), self.stop(),
        )

    def optimize(self, objective_fct: Callable[[np.ndarray], float],
                 iterations: Optional[int] = None) -> "CMAEvolutionStrategy":
        """Ask, evaluate ``objective_fct`` on each point, tell, until :meth:`stop` or
        ``iterations`` more iterations; returns self (as pycma)."""
        done = 0
        while not self.stop() and (iterations is None or done < iterations):
            xs = self.ask()
            self.tell(xs, [float(objective_fct(x)) for x in xs])
            done += 1
            if self.verbose > 0 and (self.countiter % 100 == 0 or self.stop()):
                print(f"iteration {self.countiter:6d}  evals {self.countevals:8d}  "
                      f"best f {float(self.es.best_f[0]):.6e}  sigma {self.sigma:.3e}  "
                      f"stop {self.stop()}")
        return self

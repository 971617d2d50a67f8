"""Batched L-BFGS over independent problems, with a per-problem strong-Wolfe line search.

N problems min_x f_i(x), x ∈ R^D, are solved at once: every row has its own curvature history,
its own line search, its own step count and its own budget, and the batched arithmetic is
row-wise, so solving the rows together gives what solving each alone gives (up to the
floating-point differences of batched kernels in ``func``). Only the rows that still need an
evaluation are passed to ``func``, so a row's evaluation count is its own.

What it follows (written here on torch ops):

* the two-loop recursion for the search direction d = −H∇f and the initial scaling
  H₀ = (sᵀy / yᵀy)·I of the newest pair: Nocedal & Wright, *Numerical Optimization* (2nd
  ed.), Algorithm 7.4 and eq. 7.20; pairs with sᵀy ≤ 1e−10 are skipped (curvature condition);
* the line search: N&W Algorithm 3.5 (bracketing) and 3.6 (zoom) for the strong Wolfe
  conditions f(x + td) ≤ f(x) + c₁t∇fᵀd and |∇f(x + td)ᵀd| ≤ c₂|∇fᵀd| (c₁ = 1e−4,
  c₂ = 0.9), trial steps from the cubic interpolating f and f' at two points (N&W eq. 3.59),
  extrapolating within [t + 0.01(t − t_prev), 10t] and bisecting when the zoom's cubic falls
  within 10 % of either end of the bracket;
* the defaults of ``torch.optim.LBFGS`` (first step min(1, 1/‖∇f‖₁)·lr, later steps lr;
  history 100; stop when ‖∇f‖∞ ≤ 1e−7, or the step or the change in f is ≤ 1e−9), so that
  a row solved here takes the steps torch's L-BFGS with ``line_search_fn="strong_wolfe"``
  would take up to the details of the line search.

Box bounds (``lower`` ≤ x ≤ ``upper`` per coordinate, ±inf for none), as the projected
quasi-Newton method of Kim, Sra & Dhillon (SIAM J. Sci. Comput. 2010) handles them: the
coordinates on a bound whose gradient pushes out of the box are held, and the two-loop
recursion runs on the other (free) coordinates of the gradient and of the stored pairs; every
evaluated point is P(x + td), the projection onto the box, so the line search runs along the
projected path φ(t) = f(P(x + td)), whose derivative is ∇f(P(x + td))ᵀ(d ⊙ free(t)) with
free(t) the coordinates not at a bound there (exact: P is piecewise linear in t). Components
of d that point out of the box at a coordinate on its bound are zeroed; a direction that is
then not a descent direction is replaced by the projected steepest descent, and the row's
history is cleared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
from torch import Tensor

__all__ = ["LBFGSResult", "batched_lbfgs", "STATUS"]

STATUS = ("running", "converged", "budget", "nonfinite")
_RUNNING, _CONVERGED, _BUDGET, _NONFINITE = range(4)
_BRACKET, _ZOOM, _DONE = range(3)


@dataclass
class LBFGSResult:
    """``x`` [N, D] the final iterates, ``f`` [N] and ``g`` [N, D] there; ``evaluations`` [N]
    int64: calls of f and ∇f per problem (the start point included); ``iterations`` [N];
    ``status`` [N] int64 indexing :data:`STATUS` (``nonfinite``: the row met a NaN / inf and
    stopped at its last finite iterate)."""

    x: Tensor
    f: Tensor
    g: Tensor
    evaluations: Tensor
    iterations: Tensor
    status: Tensor


def _cubic_min(t1: Tensor, f1: Tensor, g1: Tensor, t2: Tensor, f2: Tensor, g2: Tensor,
               lo: Tensor, hi: Tensor) -> Tensor:
    """The minimiser of the cubic through (t1, f1, f'=g1) and (t2, f2, f'=g2), clamped into
    [lo, hi]; the midpoint of [lo, hi] where the cubic has no minimiser (N&W eq. 3.59)."""
    d1 = g1 + g2 - 3 * (f1 - f2) / (t1 - t2)
    disc = d1 * d1 - g1 * g2
    d2 = torch.sign(t2 - t1) * disc.clamp_min(0).sqrt()
    denom = g2 - g1 + 2 * d2
    t = t2 - (t2 - t1) * (g2 + d2 - d1) / denom
    mid = (lo + hi) / 2
    usable = (disc >= 0) & (denom != 0) & t.isfinite()
    return torch.where(usable, torch.minimum(torch.maximum(t, lo), hi), mid)


def batched_lbfgs(
    func: Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]],
    x0: Tensor,
    *,
    max_evals: int,
    max_iter: Optional[int] = None,
    lr: float = 1.0,
    history_size: int = 100,
    lower: Union[float, Tensor, None] = None,
    upper: Union[float, Tensor, None] = None,
    tolerance_grad: float = 1e-7,
    tolerance_change: float = 1e-9,
    c1: float = 1e-4,
    c2: float = 0.9,
    max_ls: int = 25,
    callback: Optional[Callable[[Tensor, Tensor], None]] = None,
) -> LBFGSResult:
    """Minimise N independent problems by L-BFGS (see the module docstring).

    Args:
        func: ``func(x [n, D], rows [n] int64, iterations [n] int64) → (f [n], ∇f [n, D])``:
            the objectives of problems ``rows`` at x (``iterations``: each row's iteration, for
            messages). Non-finite values stop that row (``status`` ``nonfinite``); a caller
            that wants an error raises inside ``func``.
        x0: [N, D] start points (projected into the box).
        max_evals: the most calls of (f, ∇f) per problem, the start point included (≥ 1).
        max_iter: the most iterations per problem (default: no limit but ``max_evals``).
        lr: the step length tried first in each line search (the first iteration tries
            min(1, 1/‖∇f‖₁)·lr).
        history_size: curvature pairs kept per problem.
        lower, upper: box bounds, numbers or [D] tensors (±inf: none).
        callback: ``callback(f [N], running [N] bool)`` at the start of every iteration (f of
            every row's current iterate; rows that stopped repeat theirs).

    Returns:
        :class:`LBFGSResult`.
    """
    if x0.dim() != 2:
        raise ValueError(f"batched_lbfgs: x0 must be [N, D], got {list(x0.shape)}")
    if isinstance(max_evals, bool) or not isinstance(max_evals, int) or max_evals < 1:
        raise ValueError(f"batched_lbfgs: max_evals must be an integer >= 1, got {max_evals!r}")
    if history_size < 1:
        raise ValueError(f"batched_lbfgs: history_size must be >= 1, got {history_size!r}")
    n, dim = x0.shape
    dtype, device = x0.dtype, x0.device
    lo_b = torch.as_tensor(-math.inf if lower is None else lower, dtype=dtype, device=device).expand(dim)
    hi_b = torch.as_tensor(math.inf if upper is None else upper, dtype=dtype, device=device).expand(dim)
    max_iter = math.inf if max_iter is None else max_iter
    ar = torch.arange(n, device=device)

    def project(x: Tensor) -> Tensor:
        return torch.minimum(torch.maximum(x, lo_b), hi_b)

    evaluations = torch.zeros(n, dtype=torch.long, device=device)
    iterations = torch.zeros(n, dtype=torch.long, device=device)
    status = torch.full((n,), _RUNNING, dtype=torch.long, device=device)

    def evaluate(x: Tensor, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(f, g, finite) at x [len(rows), D] for problems ``rows``."""
        f, g = func(x, rows, iterations[rows])
        f, g = f.detach().to(dtype), g.detach().to(dtype)
        evaluations.index_add_(0, rows, torch.ones_like(rows))
        finite = f.isfinite() & g.isfinite().all(1)
        return f, g, finite

    x = project(x0.detach().clone())
    f, g, finite = evaluate(x, ar)
    status = torch.where(finite, status, torch.full_like(status, _NONFINITE))
    f = torch.where(finite, f, torch.full_like(f, math.nan))

    m = int(history_size)
    s_hist = torch.zeros(n, m, dim, dtype=dtype, device=device)
    y_hist = torch.zeros(n, m, dim, dtype=dtype, device=device)
    rho = torch.zeros(n, m, dtype=dtype, device=device)
    pairs = torch.zeros(n, dtype=torch.long, device=device)      # valid pairs per row
    head = torch.zeros(n, dtype=torch.long, device=device)       # next slot to write
    h_diag = torch.ones(n, dtype=dtype, device=device)

    def projected_gradient(x: Tensor, g: Tensor) -> Tensor:
        # the components that could move x inside the box (KKT: zero at a bound's minimum)
        blocked = ((x <= lo_b) & (g > 0)) | ((x >= hi_b) & (g < 0))
        return torch.where(blocked, torch.zeros_like(g), g)

    def feasible(x: Tensor, d: Tensor) -> Tensor:
        blocked = ((x <= lo_b) & (d < 0)) | ((x >= hi_b) & (d > 0))
        return torch.where(blocked, torch.zeros_like(d), d)

    running = status == _RUNNING
    done_now = running & (projected_gradient(x, g).abs().amax(1) <= tolerance_grad)
    status = torch.where(done_now, torch.full_like(status, _CONVERGED), status)
    running = status == _RUNNING
    if max_evals <= 1:
        status = torch.where(running, torch.full_like(status, _BUDGET), status)

    while True:
        running = status == _RUNNING
        if callback is not None:
            callback(f.clone(), running.clone())
        if not bool(running.any()):
            break

        # --- direction: the two-loop recursion (N&W Algorithm 7.4), every row at once, in
        # the free subspace: coordinates on a bound whose gradient pushes out of the box are
        # held (with no bounds this is the plain recursion)
        free = (projected_gradient(x, g) != 0) | ((x > lo_b) & (x < hi_b))
        bounded = not bool(free.all())
        q = g * free if bounded else g.clone()
        n_pairs = int(pairs[running].max()) if bool(running.any()) else 0
        alphas, pair_rho = [], []
        for j in range(n_pairs):  # newest to oldest
            slot = (head - 1 - j) % m
            s_j, y_j, r_j = s_hist[ar, slot], y_hist[ar, slot], rho[ar, slot]
            valid = j < pairs
            if bounded:  # the pair restricted to the free coordinates
                s_j, y_j = s_j * free, y_j * free
                ys_j = (s_j * y_j).sum(1)
                valid = valid & (ys_j > 1e-10)
                r_j = 1.0 / torch.where(valid, ys_j, torch.ones_like(ys_j))
            a = torch.where(valid, r_j * (s_j * q).sum(1), torch.zeros_like(r_j))
            q = q - a[:, None] * y_j
            alphas.append(a)
            pair_rho.append((valid, r_j))
        r = q * h_diag[:, None]
        for j in reversed(range(n_pairs)):  # oldest to newest
            slot = (head - 1 - j) % m
            s_j, y_j = s_hist[ar, slot], y_hist[ar, slot]
            if bounded:
                s_j, y_j = s_j * free, y_j * free
            valid, r_j = pair_rho[j]
            b = r_j * (y_j * r).sum(1)
            r = r + s_j * torch.where(valid, alphas[j] - b, torch.zeros_like(b))[:, None]
        d = feasible(x, -r * free if bounded else -r)
        gtd = (g * d).sum(1)
        # not a descent direction (possible once bounds cut d): projected steepest descent,
        # and the history starts again
        restart = running & ~(gtd < -tolerance_change)
        if bool(restart.any()):
            d = torch.where(restart[:, None], feasible(x, -g), d)
            gtd = (g * d).sum(1)
            pairs = torch.where(restart, torch.zeros_like(pairs), pairs)
            h_diag = torch.where(restart, torch.ones_like(h_diag), h_diag)
        stuck = running & ~(gtd < -tolerance_change)
        status = torch.where(stuck, torch.full_like(status, _CONVERGED), status)
        searching = running & ~stuck
        first = (pairs == 0) & (iterations == 0)
        t0 = torch.where(first, torch.clamp(1.0 / g.abs().sum(1), max=1.0) * lr, torch.full_like(f, lr))

        # --- line search (N&W Algorithms 3.5 and 3.6), every row its own -------------------
        phase = torch.where(searching, torch.full_like(status, _BRACKET), torch.full_like(status, _DONE))
        t = t0
        t_prev, f_prev, gtd_prev, g_prev = torch.zeros_like(f), f.clone(), gtd.clone(), g.clone()
        lo_t, lo_f, lo_gtd, lo_g = torch.zeros_like(f), f.clone(), gtd.clone(), g.clone()
        hi_t, hi_f, hi_gtd = torch.zeros_like(f), f.clone(), gtd.clone()
        ls_evals = torch.zeros_like(evaluations)
        d_norm = d.abs().amax(1)
        while True:
            active = phase != _DONE
            if not bool(active.any()):
                break
            rows = active.nonzero().flatten()
            x_try_full = x[rows] + t[rows, None] * d[rows]
            x_try = project(x_try_full)
            f_t, g_t, ok = evaluate(x_try, rows)
            free = (x_try_full > lo_b) & (x_try_full < hi_b)
            gtd_t = (g_t * d[rows] * free).sum(1)
            ls_evals[rows] += 1

            def full(v: Tensor, fill: float = 0.0) -> Tensor:
                out = torch.full((n,) + tuple(v.shape[1:]), fill, dtype=v.dtype, device=device)
                out[rows] = v
                return out

            f_t, gtd_t, g_t = full(f_t, math.nan), full(gtd_t, math.nan), full(g_t, math.nan)
            ok = full(ok.to(torch.long)).bool()
            bad = active & ~ok
            if bool(bad.any()):
                status = torch.where(bad, torch.full_like(status, _NONFINITE), status)
                phase = torch.where(bad, torch.full_like(phase, _DONE), phase)
                lo_t = torch.where(bad, torch.zeros_like(lo_t), lo_t)
            act = active & ok
            armijo_fail = f_t > f + c1 * t * gtd
            curvature = gtd_t.abs() <= -c2 * gtd

            # bracketing (Algorithm 3.5)
            br = act & (phase == _BRACKET)
            case_a = br & (armijo_fail | ((ls_evals > 1) & (f_t >= f_prev)))
            case_b = br & ~case_a & curvature
            case_c = br & ~case_a & ~case_b & (gtd_t >= 0)
            case_d = br & ~case_a & ~case_b & ~case_c
            # A: zoom(prev, t); C: zoom(t, prev); B: accept t; D: extrapolate from t
            new_lo = case_b | case_c | case_d
            lo_from_prev = case_a
            hi_from_t, hi_from_prev = case_a, case_c
            # zoom (Algorithm 3.6)
            zm = act & (phase == _ZOOM)
            z_hi = zm & (armijo_fail | (f_t >= lo_f))
            z_accept = zm & ~z_hi & curvature
            z_flip = zm & ~z_hi & ~z_accept & (gtd_t * (hi_t - lo_t) >= 0)
            z_lo = zm & ~z_hi
            # the old lo becomes hi where the derivative points past it (before lo moves)
            hi_t = torch.where(z_flip, lo_t, hi_t)
            hi_f = torch.where(z_flip, lo_f, hi_f)
            hi_gtd = torch.where(z_flip, lo_gtd, hi_gtd)
            hi_t = torch.where(z_hi | hi_from_t, t, hi_t)
            hi_f = torch.where(z_hi | hi_from_t, f_t, hi_f)
            hi_gtd = torch.where(z_hi | hi_from_t, gtd_t, hi_gtd)
            hi_t = torch.where(hi_from_prev, t_prev, hi_t)
            hi_f = torch.where(hi_from_prev, f_prev, hi_f)
            hi_gtd = torch.where(hi_from_prev, gtd_prev, hi_gtd)
            take_t = new_lo | z_lo
            lo_t = torch.where(take_t, t, torch.where(lo_from_prev, t_prev, lo_t))
            lo_f = torch.where(take_t, f_t, torch.where(lo_from_prev, f_prev, lo_f))
            lo_gtd = torch.where(take_t, gtd_t, torch.where(lo_from_prev, gtd_prev, lo_gtd))
            lo_g = torch.where(take_t[:, None], g_t, torch.where(lo_from_prev[:, None], g_prev, lo_g))

            # next trial: extrapolation (D) within [t + 0.01(t − t_prev), 10t] ...
            t_ext = _cubic_min(t_prev, f_prev, gtd_prev, t, f_t, gtd_t,
                               t + 0.01 * (t - t_prev), 10 * t)
            t_prev = torch.where(case_d, t, t_prev)
            f_prev = torch.where(case_d, f_t, f_prev)
            gtd_prev = torch.where(case_d, gtd_t, gtd_prev)
            g_prev = torch.where(case_d[:, None], g_t, g_prev)
            # ... or inside the bracket, bisecting when the cubic hugs an end
            a_end, b_end = torch.minimum(lo_t, hi_t), torch.maximum(lo_t, hi_t)
            width = b_end - a_end
            t_zoom = _cubic_min(lo_t, lo_f, lo_gtd, hi_t, hi_f, hi_gtd, a_end, b_end)
            hugging = (t_zoom < a_end + 0.1 * width) | (t_zoom > b_end - 0.1 * width)
            t_zoom = torch.where(hugging, (a_end + b_end) / 2, t_zoom)

            phase = torch.where(case_a | case_c, torch.full_like(phase, _ZOOM), phase)
            phase = torch.where(case_b | z_accept, torch.full_like(phase, _DONE), phase)
            in_zoom = phase == _ZOOM
            tiny = in_zoom & (width * d_norm < tolerance_change)
            out_of_budget = (phase != _DONE) & ((ls_evals >= max_ls) | (evaluations >= max_evals))
            phase = torch.where(tiny | out_of_budget, torch.full_like(phase, _DONE), phase)
            t = torch.where(phase == _ZOOM, t_zoom, torch.where(case_d, t_ext, t))

        # --- the step, the curvature pair and the stopping tests ---------------------------
        moved = searching & (status == _RUNNING)
        x_new = torch.where(moved[:, None], project(x + lo_t[:, None] * d), x)
        f_new = torch.where(moved, lo_f, f)
        g_new = torch.where(moved[:, None], lo_g, g)
        s = x_new - x
        y = g_new - g
        ys = (s * y).sum(1)
        store = moved & (ys > 1e-10)
        slot = head
        s_hist[ar, slot] = torch.where(store[:, None], s, s_hist[ar, slot])
        y_hist[ar, slot] = torch.where(store[:, None], y, y_hist[ar, slot])
        rho[ar, slot] = torch.where(store, 1.0 / torch.where(store, ys, torch.ones_like(ys)), rho[ar, slot])
        head = torch.where(store, (head + 1) % m, head)
        pairs = torch.where(store, torch.clamp(pairs + 1, max=m), pairs)
        yy = (y * y).sum(1)
        h_diag = torch.where(store, ys / torch.where(store, yy, torch.ones_like(yy)), h_diag)
        iterations = iterations + moved.long()
        spent = (status == _RUNNING) & ((evaluations >= max_evals) | (iterations >= max_iter))
        converged = moved & ~spent & ((projected_gradient(x_new, g_new).abs().amax(1) <= tolerance_grad)
                                      | (s.abs().amax(1) <= tolerance_change)
                                      | ((f_new - f).abs() < tolerance_change))
        x, f, g = x_new, f_new, g_new
        status = torch.where(spent, torch.full_like(status, _BUDGET), status)
        status = torch.where(converged, torch.full_like(status, _CONVERGED), status)

    return LBFGSResult(x=x, f=f, g=g, evaluations=evaluations, iterations=iterations, status=status)

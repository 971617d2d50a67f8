"""The batched projection problem: B images × S seeds, one row per (image, seed), and the
optimizers that move its latents (Adam, and the batched L-BFGS of :mod:`.lbfgs`).

Every row is its own problem: the loss of a row depends only on its own latent (the generator
runs in eval mode, LPIPS is per sample), Adam is elementwise, and the L-BFGS keeps a history
and a line search per row. The :class:`Problem` counts, per row and per stage, the generator
forward passes and the back-propagations through it (``evaluations``), and checks every
generator output, loss and gradient for NaN / inf (:class:`NonFiniteError`).
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from latentx.lpips import LPIPS, TargetFeatures
from latentx.projection.fast import GeneratorPrecision
from latentx.projection.lbfgs import batched_lbfgs
from latentx.projection.objective import (masked_losses, phi_transform, quiet_encode,
                                          take_features)

__all__ = ["NonFiniteError", "STAGES", "Problem", "Progress", "SeedSchedule", "Targets"]

STAGES = ("transform", "latent", "refine", "score")
STAGE_NAMES = {"transform": "transform search", "latent": "latent search", "refine": "refinement",
               "score": "scoring",
               "finetune": "finetune"}


class NonFiniteError(FloatingPointError):
    """A NaN or inf in a generator output, a loss or a gradient.

    Attributes: ``stage`` (``"transform search"``, ``"latent search"``, ``"scoring"`` or
    ``"finetune"``), ``image`` (index in the batch; None where it cannot be told), ``seed``
    (the seed / CMA sample; None where not applicable), ``step`` (the Adam step, L-BFGS
    iteration or CMA generation where it happened), ``generation`` (the CMA generation
    around an Adam run, or None), ``what`` (``"generator output"``, ``"loss"``,
    ``"gradient"``, ...).
    """

    def __init__(self, message: str, *, stage: str, image: Optional[int], seed: Optional[int],
                 step: Optional[int], what: str, generation: Optional[int] = None) -> None:
        super().__init__(message)
        self.stage, self.image, self.seed, self.step = stage, image, seed, step
        self.what, self.generation = what, generation


def _where(image: Optional[int], seed: Optional[int], step: Optional[int], generation: Optional[int],
           step_name: str = "step", unit: str = "seed") -> str:
    parts = []
    if image is not None:
        parts.append(f"image {image}")
    if seed is not None:
        parts.append(f"{unit} {seed}")
    if generation is not None:
        parts.append(f"generation {generation}")
    if step is not None:
        parts.append(f"{step_name} {step}")
    return ", ".join(parts)


class Progress:
    """A tqdm bar, or nothing (``enabled`` False; None: only on a terminal)."""

    def __init__(self, total: int, enabled: Optional[bool], desc: str):
        self.bar = None
        if enabled is False:
            return
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="step", disable=None if enabled is None else False,
                        dynamic_ncols=True, leave=True)

    def update(self, n: int = 1, **postfix) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def set_description(self, desc: str) -> None:
        if self.bar is not None:
            self.bar.set_description(desc)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Targets:
    """One target per row, in the generator frame: ``image`` T_φ(y) [n, 3, h, w], ``mask``
    T_φ(m) [n, 1, h, w] and ``feats`` its LPIPS features (None when β = 0)."""

    def __init__(self, *, image: Tensor, mask: Tensor, feats: Optional[TargetFeatures]) -> None:
        self.image, self.mask, self.feats = image, mask, feats

    @classmethod
    def build(cls, problem: "Problem", phi_rows: Tensor, rows: Tensor) -> "Targets":
        """T_φ of the images ``rows`` with one φ per row (φ_rows [n, 5])."""
        p = problem
        t = phi_transform(phi_rows.to(p.dtype))
        image = t.apply(p.images[rows], p.gen_size)
        # A transform that moves the frame off the photo leaves no mask; keep a floor so the
        # loss stays defined (it is then bad, and CMA moves away). The filtered warp may
        # overshoot 1 by rounding.
        mask = t.apply_mask(p.masks[rows], p.gen_size).clamp(1e-4, 1.0)
        feats = quiet_encode(p.lp, image) if p.beta > 0 else None
        return cls(image=image, mask=mask, feats=feats)

    def take(self, idx: Optional[Tensor]) -> "Targets":
        """The rows ``idx`` (None: all)."""
        if idx is None:
            return self
        return Targets(image=self.image[idx], mask=self.mask[idx], feats=take_features(self.feats, idx))


class Problem:
    """B images × S seeds (N = B·S rows, row r = image r // S, seed r % S) against one
    generator, with the photo-frame and generator-frame losses, per-image random streams,
    evaluation counts and non-finite checks. Keyword-only.

    Args:
        generator: a :class:`latentx.models.Generator`.
        images: [B, 3, H, W] photos in [−1, 1]; ``masks``: [B, 1, H, W] in [0, 1].
        perceptual: the LPIPS module; ``beta``: its weight β.
        seeds: S.
        streams: one ``torch.Generator`` per image (the random draws of image b come only from
            ``streams[b]``, so batching does not change them).
        lr, lr_c: Adam's learning rates for z and c.
        c0: [B, c_dim] class embeddings, or None.
        progress: a :class:`Progress` (or None: none).
        on_nonfinite: ``"raise"`` or ``"drop"`` (see :meth:`nonfinite`).
        precision: ``"float32"`` or ``"bfloat16"``: the generator's forward pass while
            searching (:class:`~latentx.projection.fast.GeneratorPrecision`); ``render(...,
            exact=True)`` (target checks, scoring) always runs in the generator's own dtype.
        who: the function name in messages.
    """

    def __init__(self, *, generator, images: Tensor, masks: Tensor, perceptual: LPIPS, beta: float,
                 seeds: int = 1, streams: Sequence[torch.Generator] = (), lr: float = 0.05,
                 lr_c: float = 1e-4, c0: Optional[Tensor] = None, progress: Optional[Progress] = None,
                 on_nonfinite: str = "raise", precision: str = "float32", who: str = "project") -> None:
        self.G = generator
        self.search_G = GeneratorPrecision(generator, precision)
        self.images, self.masks = images, masks
        self.B, _, self.H, self.W = images.shape
        self.S = seeds
        self.N = self.B * seeds
        self.rows = torch.arange(self.B, device=images.device).repeat_interleave(seeds)
        self.streams = list(streams)
        self.lp, self.beta = perceptual, beta
        self.lr, self.lr_c = lr, lr_c
        self.c0 = c0
        self.dtype, self.device = images.dtype, images.device
        self.gen_size = generator.resolution
        self.T = generator.truncation
        self.d = generator.z_dim
        self.progress = progress if progress is not None else Progress(0, False, "")
        self.on_nonfinite = on_nonfinite
        self.who = who
        self.photo_feats = quiet_encode(perceptual, images)
        self.stage = "latent"
        self.evaluations = {s: {"forward": torch.zeros(self.N, dtype=torch.long, device=self.device),
                                "backward": torch.zeros(self.N, dtype=torch.long, device=self.device)}
                            for s in STAGES}

    # --- random draws, one stream per image (so batching does not change them) -------------
    def randn(self, *shape: int) -> Tensor:
        """[B, *shape] standard normal float64, image b from its own stream."""
        return torch.stack([torch.randn(*shape, generator=g, dtype=torch.float64) for g in self.streams]
                           ).to(device=self.device)

    def c_rows(self) -> Optional[Tensor]:
        return None if self.c0 is None else self.c0[self.rows].clone()

    # --- evaluation ------------------------------------------------------------------------
    def render(self, z: Tensor, c: Optional[Tensor], *, exact: bool = False) -> Tensor:
        """G(z, c) [n, 3, h, w]: in the search precision, or (``exact``) in the generator's own."""
        if exact:
            return self.G(z, c) if c is not None else self.G(z)
        return self.search_G(z, c)

    def count(self, idx: Optional[Tensor], kind: str) -> None:
        """One ``kind`` ("forward" / "backward") evaluation for rows ``idx`` (None: all) in
        the current stage."""
        counts = self.evaluations[self.stage][kind]
        if idx is None:
            counts += 1
        else:
            counts.index_add_(0, idx, torch.ones_like(idx))

    def gen_loss(self, out: Tensor, tg: Targets) -> dict[str, Tensor]:
        """The generator-frame L_mask(G(z), T_φ(y), T_φ(m)) per row."""
        return masked_losses(out, tg.image, tg.mask, self.lp if self.beta > 0 else None, tg.feats, self.beta)

    def photo_loss(self, out: Tensor, phi_rows: Tensor, rows: Optional[Tensor] = None, with_images: bool = False):
        """The photo-frame L_mask(T_φ⁻¹(G(z)), y, m') per row (rows: which images; default
        every row of the problem), m' = m where the generated frame lands or the object is."""
        rows = self.rows if rows is None else rows
        t = phi_transform(phi_rows.to(out.dtype))
        inv = t.invert(out, (self.H, self.W))
        valid = t.spatial.inverse().valid_region((self.H, self.W))
        m = self.masks[rows]
        m_eff = torch.where(valid | (m >= 0.5), m, torch.zeros_like(m))
        empty = m_eff.flatten(1).sum(1) <= 0
        if bool(empty.any()):
            m_eff = torch.where(empty[:, None, None, None], torch.full_like(m_eff, 1e-6), m_eff)
        feats = take_features(self.photo_feats, rows)
        losses = masked_losses(inv, self.images[rows], m_eff, self.lp, feats, self.beta)
        return (losses, inv, valid) if with_images else losses

    def clamp_(self, z: Tensor) -> Tensor:
        return z.clamp_(-self.T, self.T)

    # --- non-finite values -----------------------------------------------------------------
    def nonfinite(self, rows: Tensor, what: str, step: Union[int, Tensor, None], generation: Optional[int] = None,
                  *, step_name: str = "step", sample: bool = False) -> None:
        """Rows ``rows`` (global row indices) met a NaN / inf ``what``. ``on_nonfinite="raise"``:
        :class:`NonFiniteError` naming the stage, image, seed and step of the first; ``"drop"``:
        one warning per row saying it is dropped (the caller drops it). ``step``: one for all
        rows, or a tensor with one per row."""
        stage = STAGE_NAMES[self.stage]
        steps = step.tolist() if isinstance(step, Tensor) else [step] * rows.numel()
        rows = rows.tolist()
        if not rows:
            return
        unit = "sample" if sample else "seed"
        if self.on_nonfinite == "raise":
            r, step = rows[0], steps[0]
            b, s = r // self.S, r % self.S
            loc = _where(b, s, step, generation, step_name, unit)
            more = f" (and {len(rows) - 1} more rows)" if len(rows) > 1 else ""
            raise NonFiniteError(
                f"{self.who}: non-finite {what} in the {stage} ({loc}){more}; pass "
                f"on_nonfinite='drop' to drop such {unit}s and go on",
                stage=stage, image=b, seed=s, step=step, what=what, generation=generation)
        for r, step in zip(rows, steps):
            b, s = r // self.S, r % self.S
            loc = _where(b, s, step, generation, step_name, unit)
            warnings.warn(f"{self.who}: dropping {unit} {s} of image {b} in the {stage} at "
                          f"{_where(None, None, step, generation, step_name)}: non-finite {what} "
                          f"({loc}; on_nonfinite='drop')", RuntimeWarning, stacklevel=4)

    def check(self, out: Optional[Tensor], f: Optional[Tensor], idx: Optional[Tensor], step: Union[int, Tensor, None],
              generation: Optional[int] = None, *, step_name: str = "step", sample: bool = False) -> Tensor:
        """[n] bool: rows (``idx``, None: all) whose generator output and loss are finite;
        the others are reported by :meth:`nonfinite`."""
        n = (out if out is not None else f).shape[0]
        ok = torch.ones(n, dtype=torch.bool, device=self.device)
        rows = torch.arange(n, device=self.device) if idx is None else idx

        def at(mask: Tensor):
            return step[mask] if isinstance(step, Tensor) else step

        if out is not None:
            good = out.detach().flatten(1).isfinite().all(1)
            if not bool(good.all()):
                self.nonfinite(rows[~good], "generator output", at(~good), generation, step_name=step_name,
                               sample=sample)
            ok &= good
        if f is not None:
            good = f.detach().isfinite()
            if not bool((good | ~ok).all()):
                self.nonfinite(rows[ok & ~good], "loss", at(ok & ~good), generation, step_name=step_name,
                               sample=sample)
            ok &= good
        return ok

    # --- Adam on (z, c), every row independent (Adam is elementwise; the loss sums rows) ----
    def adam(self, z0: Tensor, c0: Optional[Tensor], tg: Targets, steps: int, history: list, *,
             generation: Optional[int] = None, keep_images: bool = False, sample: bool = False,
             schedule: Optional["SeedSchedule"] = None):
        """``steps`` Adam steps from (z0, c0) [N, ·] against ``tg``, then one evaluation of
        the last point; the best evaluated point per row is returned.

        ``schedule`` (a :class:`SeedSchedule`; the rows must be the problem's N rows) stops
        rows early: successive halving of each image's seeds, and each image's seeds once its
        target loss is reached (its returned point is then the one that reached it). A stopped
        row is not evaluated again and keeps its best point.

        Returns (z [N, d], c or None, f [N] (inf for a row with no finite evaluation), died [N]
        bool (rows stopped by a non-finite value), out [N, 3, h, w] (G at the best point, when
        ``keep_images``; else None)). ``history`` gets one [N] loss per step (NaN for rows not
        evaluated at that step). Counts, per row, one forward per step it is evaluated at and
        one backward per step it is evaluated at and then stepped: N·(steps + 1) forwards and
        N·steps backwards when nothing stops early."""
        n = z0.shape[0]
        if schedule is not None and n != self.N:
            raise ValueError(f"{self.who}: a seed schedule needs the problem's {self.N} rows, got {n}")
        z = self.clamp_(z0.detach().clone()).requires_grad_(True)
        groups = [{"params": [z], "lr": self.lr}]
        c = None
        if c0 is not None:
            c = c0.detach().clone().requires_grad_(True)
            groups.append({"params": [c], "lr": self.lr_c})
        opt = torch.optim.Adam(groups)
        best_f = torch.full((n,), math.inf, dtype=self.dtype, device=self.device)
        best_z = z.detach().clone()
        best_c = None if c is None else c.detach().clone()
        best_out = None
        live = torch.ones(n, dtype=torch.bool, device=self.device)      # False: non-finite, dropped
        stopped = torch.zeros(n, dtype=torch.bool, device=self.device)  # True: stopped by the schedule
        step_name = "Adam step" if generation is not None else "step"

        pending = None  # the last check's evaluation, scored before the next step's forward

        def reach(pending) -> None:
            # an image whose best row in ``pending`` reaches its target stops; that row returns
            # the point that reached it
            p_rows, p_f, p_z, p_c, p_out = pending
            hit = schedule.check_target(self, p_rows, p_f, p_z, p_c, p_out)
            if hit is not None:
                where = torch.searchsorted(p_rows, hit)
                best_z[hit] = p_z[where]
                if c is not None:
                    best_c[hit] = p_c[where]
                best_f[hit] = p_f[where].to(best_f.dtype)
                stopped.copy_(stopped | schedule.reached[self.rows])

        for step in range(steps + 1):
            last = step == steps
            if pending is not None:
                # Checked here, before this step's forward, rather than right after the
                # evaluation: that evaluation's backward ran for the whole batch anyway, and
                # stopping before the next forward makes what an image spends independent of
                # the other images in the batch.
                with torch.no_grad():
                    reach(pending)
                pending = None
            if schedule is not None and step in schedule.halving:
                stopped |= schedule.halve(best_f, live & ~stopped)
            active = live & ~stopped
            idx = None if bool(active.all()) else active.nonzero().flatten()
            if idx is not None and idx.numel() == 0:
                if not last:
                    history.append(torch.full((n,), math.nan, dtype=self.dtype, device=self.device))
                    self.progress.update(1)
                continue
            opt.zero_grad(set_to_none=True)
            with torch.set_grad_enabled(not last):
                zz = z if idx is None else z[idx]
                cc = c if (c is None or idx is None) else c[idx]
                out = self.render(zz, cc)
                f = self.gen_loss(out, tg.take(idx))["total"]
            self.count(idx, "forward")
            ok = self.check(out, f, idx, step, generation, step_name=step_name, sample=sample)
            rows = torch.arange(n, device=self.device) if idx is None else idx
            with torch.no_grad():
                fd = torch.where(ok, f.detach(), torch.full_like(f.detach(), math.nan))
                full_f = torch.full((n,), math.nan, dtype=self.dtype, device=self.device)
                full_f[rows] = fd
                better = torch.zeros(n, dtype=torch.bool, device=self.device)
                better[rows] = ok & (fd < best_f[rows])
                best_f.copy_(torch.where(better, full_f, best_f))
                zfull = z.detach()
                best_z.copy_(torch.where(better[:, None], zfull, best_z))
                if c is not None:
                    best_c.copy_(torch.where(better[:, None], c.detach(), best_c))
                if keep_images:
                    o = out.detach()
                    if best_out is None:
                        best_out = torch.zeros((n,) + tuple(o.shape[1:]), dtype=o.dtype, device=o.device)
                    ofull = best_out.clone()
                    ofull[rows] = o
                    best_out.copy_(torch.where(better[:, None, None, None], ofull, best_out))
                live[rows[~ok]] = False
                if schedule is not None and schedule.checks(step, last):
                    pending = (rows[ok], fd[ok], zz.detach()[ok].clone(),
                               None if cc is None else cc.detach()[ok].clone(), out.detach()[ok])
                    if last:
                        reach(pending)
                        pending = None
            if last:
                break
            history.append(full_f)
            train = ok & live[rows] & ~stopped[rows]
            if bool(train.any()):
                torch.where(train, f, torch.zeros_like(f)).sum().backward()
                self.count(rows[ok], "backward")
            with torch.no_grad():
                if z.grad is None:  # nothing in this batch takes a step
                    self.progress.update(1)
                    continue
                gz = z.grad[rows]
                gbad = ~gz.flatten(1).isfinite().all(1)
                if c is not None:
                    gbad |= ~c.grad[rows].isfinite().all(1)
                gbad &= train
                if bool(gbad.any()):
                    self.nonfinite(rows[gbad], "gradient", step, generation, step_name=step_name, sample=sample)
                    live[rows[gbad]] = False
                # rows that stopped take no step (their gradient may hold NaN)
                moving = live & ~stopped
                z.grad.copy_(torch.where(moving[:, None], z.grad, torch.zeros_like(z.grad)))
                if c is not None:
                    c.grad.copy_(torch.where(moving[:, None], c.grad, torch.zeros_like(c.grad)))
                opt.step()
                self.clamp_(z)
            self.progress.update(1, loss=f"{float(fd[ok].min()) if bool(ok.any()) else math.nan:.4f}")
        return best_z, best_c, best_f, ~live, best_out

    # --- batched L-BFGS on (z, c), every row its own problem ----------------------------------
    def lbfgs(self, z0: Tensor, c0: Optional[Tensor], tg: Targets, max_evals: int, lr: float, history: list):
        """L-BFGS per row (:func:`~latentx.projection.lbfgs.batched_lbfgs`, strong-Wolfe line
        search, |z|∞ ≤ truncation as box bounds; c unbounded) with at most ``max_evals``
        generator forward+backward evaluations per row.

        Returns (z [N, d], c or None, f [N] (inf for a row with no finite evaluation), died [N]
        bool). ``history`` gets f of every row at the start of each iteration."""
        d = self.d
        x0 = z0 if c0 is None else torch.cat([z0, c0.to(z0.dtype)], 1)
        width = x0.shape[1]
        lower = torch.full((width,), -math.inf, dtype=self.dtype, device=self.device)
        upper = torch.full((width,), math.inf, dtype=self.dtype, device=self.device)
        lower[:d], upper[:d] = -self.T, self.T
        has_c = c0 is not None

        def func(x: Tensor, rows: Tensor, iterations: Tensor):
            every = rows.numel() == self.N
            idx = None if every else rows
            with torch.enable_grad():
                z = x[:, :d].detach().requires_grad_(True)
                c = x[:, d:].detach().requires_grad_(True) if has_c else None
                out = self.render(z, c)
                f = self.gen_loss(out, tg.take(idx))["total"]
                self.count(idx, "forward")
                ok = self.check(out, f, rows, iterations, step_name="iteration")
                torch.where(ok, f, torch.zeros_like(f)).sum().backward()
            self.count(rows[ok], "backward")
            g = z.grad if c is None else torch.cat([z.grad, c.grad], 1)
            gok = g.isfinite().all(1)
            if not bool((gok | ~ok).all()):
                self.nonfinite(rows[ok & ~gok], "gradient", iterations[ok & ~gok], step_name="iteration")
            ok &= gok
            self.progress.update(1, loss=f"{float(f.detach()[ok].min()) if bool(ok.any()) else math.nan:.4f}")
            f = torch.where(ok, f.detach(), torch.full_like(f.detach(), math.nan))
            return f, torch.where(ok[:, None], g, torch.full_like(g, math.nan))

        def record(f: Tensor, running: Tensor) -> None:
            history.append(f.to(self.dtype))

        res = batched_lbfgs(func, x0.detach(), max_evals=max_evals, lr=lr, lower=lower, upper=upper,
                            callback=record)
        z = res.x[:, :d].contiguous()
        c = res.x[:, d:].contiguous() if has_c else None
        died = res.status == 3  # "nonfinite"
        f = torch.where(res.f.isfinite(), res.f, torch.full_like(res.f, math.inf))
        return z, c, f, died


class SeedSchedule:
    """Stops seeds inside an Adam run (:meth:`Problem.adam`), per image, so that batching
    images does not change what any one of them does:

    * successive halving: at each Adam step in ``halving`` (steps taken so far), the worse
      half of each image's running seeds — by their best generator-frame loss so far — stop
      (the better ⌈n/2⌉ go on), so the budget goes to the basins that can still win;
    * a target: every ``every`` steps (and at the last evaluation), each running image's
      best current seed (lowest generator-frame loss at this step) is scored with the
      photo-frame loss the result reports (in float32, re-rendered when searching in lower
      precision, one forward counted for that row); at or below ``target[b]`` image b stops.

    Args (keyword-only):
        problem: the :class:`Problem`. phi: [B, 5] φ of each image's latent search.
        halving: Adam steps at which to halve (each ≥ 1). target: [B] photo-frame total loss
            per image (NaN or inf: none for that image), or None. every: steps between checks.
        clock: ``time.perf_counter()`` at the start of the projection (``seconds`` counts from it).

    State: ``reached`` [B] bool, ``seconds`` [B] float64 (wall seconds from ``clock`` to the
    check that reached the target; NaN where not reached), ``loss`` [B] the checked loss
    that reached it (NaN where not reached).
    """

    def __init__(self, *, problem: "Problem", phi: Tensor, halving: Sequence[int] = (),
                 target: Optional[Tensor] = None, every: int = 5, clock: Optional[float] = None) -> None:
        P = problem
        self.phi = phi
        self.halving = frozenset(int(k) for k in halving)
        self.target = None if target is None else target.to(device=P.device, dtype=torch.float64)
        self.every = int(every)
        self.clock = time.perf_counter() if clock is None else clock
        self.reached = torch.zeros(P.B, dtype=torch.bool, device=P.device)
        self.seconds = torch.full((P.B,), math.nan, dtype=torch.float64)
        self.loss = torch.full((P.B,), math.nan, dtype=torch.float64)
        self.S = P.S

    def halve(self, best_f: Tensor, running: Tensor) -> Tensor:
        """[N] bool: the rows to stop now — per image, the running rows ranked below the
        better ⌈n/2⌉ of its n running rows by ``best_f`` (ties: the lower seed index goes on)."""
        B, S = running.numel() // self.S, self.S
        key = torch.where(running, best_f.to(torch.float64),
                          torch.full_like(best_f, math.inf, dtype=torch.float64)).reshape(B, S)
        # rank within each image: 0 for the best running row
        order = key.argsort(dim=1, stable=True)
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(S, device=order.device).expand(B, S).contiguous())
        keep = (running.reshape(B, S).sum(1, keepdim=True) + 1) // 2
        return (running.reshape(B, S) & (rank >= keep)).reshape(-1)

    def checks(self, step: int, last: bool) -> bool:
        return self.target is not None and (last or step % self.every == 0)

    def check_target(self, P: "Problem", rows: Tensor, f: Tensor, z: Tensor, c: Optional[Tensor],
                     out: Tensor) -> Optional[Tensor]:
        """Score each image's best row among ``rows`` (global indices, finite losses ``f``, at
        latents ``z`` / ``c`` with images ``out``) in the photo frame; images at or below their
        target are marked reached. Returns the reached rows' global indices, or None."""
        if rows.numel() == 0:
            return None
        images = P.rows[rows]
        # per image, the position (in rows) of its lowest f: sort by (image, f)
        order = torch.argsort(f.to(torch.float64), stable=True)
        order = order[torch.argsort(images[order], stable=True)]
        first = torch.ones_like(order, dtype=torch.bool)
        first[1:] = images[order][1:] != images[order][:-1]
        pick = order[first]
        b = images[pick]
        todo = ~self.reached[b] & self.target[b].isfinite()
        pick, b = pick[todo], b[todo]
        if pick.numel() == 0:
            return None
        o = out[pick]
        if P.search_G.precision != "float32":
            o = P.render(z[pick], None if c is None else c[pick], exact=True)
            P.count(rows[pick], "forward")
        loss = P.photo_loss(o, self.phi[b], rows=b)["total"].to(torch.float64)
        hit = loss.isfinite() & (loss <= self.target[b])
        if not bool(hit.any()):
            return None
        self.mark_reached(b[hit], loss[hit])
        return rows[pick[hit]]

    def mark_reached(self, images: Tensor, loss: Tensor) -> None:
        """Images ``images`` reached their targets now, with losses ``loss``."""
        now = time.perf_counter() - self.clock
        self.reached[images] = True
        self.seconds[images.cpu()] = now
        self.loss[images.cpu()] = loss.detach().to(torch.float64).cpu()

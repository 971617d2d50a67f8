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
import warnings
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from latentx.lpips import LPIPS, TargetFeatures
from latentx.projection.lbfgs import batched_lbfgs
from latentx.projection.objective import (masked_losses, phi_transform, quiet_encode,
                                          take_features)

__all__ = ["NonFiniteError", "STAGES", "Problem", "Progress", "Targets"]

STAGES = ("transform", "latent", "score")
STAGE_NAMES = {"transform": "transform search", "latent": "latent search", "score": "scoring",
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
        who: the function name in messages.
    """

    def __init__(self, *, generator, images: Tensor, masks: Tensor, perceptual: LPIPS, beta: float,
                 seeds: int = 1, streams: Sequence[torch.Generator] = (), lr: float = 0.05,
                 lr_c: float = 1e-4, c0: Optional[Tensor] = None, progress: Optional[Progress] = None,
                 on_nonfinite: str = "raise", who: str = "project") -> None:
        self.G = generator
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
    def render(self, z: Tensor, c: Optional[Tensor]) -> Tensor:
        return self.G(z, c) if c is not None else self.G(z)

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
             generation: Optional[int] = None, keep_images: bool = False, sample: bool = False):
        """``steps`` Adam steps from (z0, c0) [N, ·] against ``tg``, then one evaluation of
        the last point; the best evaluated point per row is returned.

        Returns (z [N, d], c or None, f [N] (inf for a row with no finite evaluation), died [N]
        bool (rows stopped by a non-finite value), out [N, 3, h, w] (G at the best point, when
        ``keep_images``; else None)). ``history`` gets one [N] loss per step (NaN for stopped
        rows). Counts N·(steps + 1) forwards and N·steps backwards (fewer for stopped rows)."""
        n = z0.shape[0]
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
        live = torch.ones(n, dtype=torch.bool, device=self.device)
        step_name = "Adam step" if generation is not None else "step"

        for step in range(steps + 1):
            last = step == steps
            idx = None if bool(live.all()) else live.nonzero().flatten()
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
            if last:
                break
            history.append(full_f)
            torch.where(ok, f, torch.zeros_like(f)).sum().backward()
            self.count(rows[ok], "backward")
            with torch.no_grad():
                gz = z.grad[rows]
                gbad = ~gz.flatten(1).isfinite().all(1)
                if c is not None:
                    gbad |= ~c.grad[rows].isfinite().all(1)
                gbad &= ok
                if bool(gbad.any()):
                    self.nonfinite(rows[gbad], "gradient", step, generation, step_name=step_name, sample=sample)
                    live[rows[gbad]] = False
                # rows that stopped take no step (their gradient may hold NaN)
                z.grad.copy_(torch.where(live[:, None], z.grad, torch.zeros_like(z.grad)))
                if c is not None:
                    c.grad.copy_(torch.where(live[:, None], c.grad, torch.zeros_like(c.grad)))
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

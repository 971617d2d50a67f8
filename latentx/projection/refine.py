"""Photo-frame refinement: after the latent search, each image's best seed descends the loss
the result reports — the photo-frame L_mask(T_φ⁻¹(G(z)), y, m') — by Adam, jointly in z (and
c) and φ.

Why: stage 2 descends the generator-frame loss L_mask(G(z), T_φ(y), T_φ(m)) with φ fixed at
φ*; the photo-frame loss differs from it (another resolution, the photo's own pixels, the
region the generated frame covers), and φ* is only as good as the CMA search that found it.
Descending the reported loss itself, φ included, is a local polish: the warp T_φ⁻¹ enlarges
the generator's frame into the photo, so its gradient with respect to φ and to the generated
pixels is that of a plain bilinear upsampling (no anti-aliasing filter to back-propagate
through — the reason the seed keeps gradient steps in the generator frame). The mask m' (the
photo pixels the generated frame covers, plus the object pixels) is held fixed within a step:
it is a set, with no gradient.

Each step costs one generator forward and backward for one row per image plus an LPIPS pass
at the photo's resolution; a few hundred such steps on one seed cost less than one step of
the 18-seed search per image.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from latentx.projection.problem import Problem, SeedSchedule

__all__ = ["refine_best_seeds"]


def _clamp_phi_(phi: Tensor, phi_start: Tensor) -> None:
    # the bounds of stage 1's CMA: scales within a factor 10 of the start and positive,
    # shifts within a few frames, brightness within ±1
    s0 = phi_start[:, :2].abs()
    phi[:, :2] = torch.maximum(torch.minimum(phi[:, :2], s0 * 10), s0 * 0.1)
    phi[:, 2:4].clamp_(-3.0, 3.0)
    phi[:, 4].clamp_(-1.0, 1.0)


def refine_best_seeds(P: Problem, z: Tensor, c: Optional[Tensor], phi: Tensor, rows: Tensor, *, steps: int,
                      lr: float, lr_phi: float, spatial: bool, brightness: bool,
                      schedule: Optional[SeedSchedule] = None
                      ) -> tuple[Tensor, Optional[Tensor], Tensor, Tensor, Tensor]:
    """Adam on the photo-frame loss of the rows ``rows`` [M] (global row indices; row r belongs
    to image ``P.rows[r]``), jointly in z (lr ``lr``), c (the problem's lr_c) and a copy of its
    image's φ per row (lr ``lr_phi``; the spatial part when ``spatial``, γ when
    ``brightness``), for ``steps`` steps; the best evaluated point per row is kept.

    z [N, d], c [N, c_dim] or None: every row's latents (only ``rows`` change); φ [B, 5] per
    image. With ``schedule.target``, each step's loss is checked against the row's image's
    target (it is the reported loss: no extra evaluation); an image one of whose rows reaches
    it stops before its next forward, that row returning the point that reached it.

    Returns (z [N, d], c or None, φ [M, 5] each row's best φ, f [M] float64 each row's best
    loss (inf if none was finite), history [M, steps + 1]: the photo-frame loss at each
    evaluation, NaN where the row did not run). Counts, per refined row, one forward per
    evaluation (steps + 1 at most) and one backward per step, in stage ``"refine"``.
    """
    P.stage = "refine"
    M = rows.numel()
    images = P.rows[rows]                                               # [M] image of each row
    zr = z[rows].detach().clone().requires_grad_(True)
    groups = [{"params": [zr], "lr": lr}]
    cr = None
    if c is not None:
        cr = c[rows].detach().clone().requires_grad_(True)
        groups.append({"params": [cr], "lr": P.lr_c})
    phi_start = phi[images].detach().to(P.dtype)
    phir = phi_start.clone().requires_grad_(True)
    groups.append({"params": [phir], "lr": lr_phi})
    move = torch.zeros(5, dtype=P.dtype, device=P.device)
    if spatial:
        move[:4] = 1
    if brightness:
        move[4] = 1
    opt = torch.optim.Adam(groups)
    best_f = torch.full((M,), math.inf, dtype=torch.float64, device=P.device)
    best_z, best_phi = zr.detach().clone(), phi_start.clone()
    best_c = None if cr is None else cr.detach().clone()
    # images that already reached their target in the latent search are done
    running = torch.ones(M, dtype=torch.bool, device=P.device)
    if schedule is not None:
        running &= ~schedule.reached[images]
    hist = torch.full((M, steps + 1), math.nan, dtype=torch.float64)
    pending: Optional[Tensor] = None   # images that reached their target at the last evaluation

    for step in range(steps + 1):
        last = step == steps
        if pending is not None:
            # stop before this step's forward (see Problem.adam: what an image spends must not
            # depend on the other images in the batch)
            running &= ~pending[images]
            pending = None
        idx = running.nonzero().flatten()
        if idx.numel() == 0:
            break
        every = idx.numel() == M
        opt.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(not last):
            zz = zr if every else zr[idx]
            cc = None if cr is None else (cr if every else cr[idx])
            pp = phir if every else phir[idx]
            out = P.render(zz, cc, exact=True)
            f = P.photo_loss(out, pp, rows=images[idx])["total"]
        grows = rows[idx]
        P.count(grows, "forward")
        ok = P.check(out, f, grows, step, step_name="refinement step")
        with torch.no_grad():
            fd = torch.where(ok, f.detach(), torch.full_like(f.detach(), math.nan)).to(torch.float64)
            hist[idx.cpu(), step] = fd.cpu()
            better = ok & (fd < best_f[idx])
            if schedule is not None and schedule.target is not None:
                img = images[idx]
                hit = ok & ~schedule.reached[img] & (fd <= schedule.target[img])
                if bool(hit.any()):
                    # per image, its best row among those that reached the target now
                    order = torch.argsort(fd.masked_fill(~hit, math.inf), stable=True)
                    order = order[torch.argsort(img[order], stable=True)]
                    first = torch.ones_like(order, dtype=torch.bool)
                    first[1:] = img[order][1:] != img[order][:-1]
                    win = order[first & hit[order]]
                    schedule.mark_reached(img[win], fd[win])
                    pending = torch.zeros(P.B, dtype=torch.bool, device=P.device)
                    pending[img[win]] = True
                    # the point that reached the target is the one returned (it is at least
                    # as good as that row's best so far, which was above the target)
                    better = better | hit
            bi = idx[better]
            best_f[bi] = fd[better]
            best_z[bi] = zz.detach()[better]
            best_phi[bi] = pp.detach()[better]
            if cr is not None:
                best_c[bi] = cc.detach()[better]
            running[idx[~ok]] = False
        if last:
            break
        if bool(ok.any()):
            torch.where(ok, f, torch.zeros_like(f)).sum().backward()
            P.count(grows[ok], "backward")
        with torch.no_grad():
            if zr.grad is None:
                continue
            gbad = ~zr.grad[idx].isfinite().all(1) | ~phir.grad[idx].isfinite().all(1)
            if cr is not None:
                gbad |= ~cr.grad[idx].isfinite().all(1)
            gbad &= ok
            if bool(gbad.any()):
                P.nonfinite(grows[gbad], "gradient", step, step_name="refinement step")
                running[idx[gbad]] = False
            keep = running[:, None]
            zr.grad.copy_(torch.where(keep, zr.grad, torch.zeros_like(zr.grad)))
            phir.grad.copy_(torch.where(keep, phir.grad * move, torch.zeros_like(phir.grad)))
            if cr is not None:
                cr.grad.copy_(torch.where(keep, cr.grad, torch.zeros_like(cr.grad)))
            opt.step()
            zr.clamp_(-P.T, P.T)
            _clamp_phi_(phir, phi_start)
        P.progress.update(1, loss=f"{float(fd[ok].min()) if bool(ok.any()) else math.nan:.4f}")

    z = z.detach().clone()
    z[rows] = best_z.to(z.dtype)
    if c is not None:
        c = c.detach().clone()
        c[rows] = best_c.to(c.dtype)
    return z, c, best_phi.to(phi.dtype), best_f, hist

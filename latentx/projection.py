"""Transformation-aware projection (SPEC C1–C2; seed 003, Algorithm 1): find the transform φ and
the latent z (and class embedding c) with which a generator reproduces the object in a photo.

    result = latentx.projection.project(G, images, boxes=[[x0, y0, x1, y1]], method="basincma")

Frames. ``images`` [B, 3, H, W] are the *photo frame*; the generator draws in its own frame
(h × w). φ = [s_x, s_y, t_x, t_y, γ] holds a spatial transform ψ (``latentx.transforms``:
output → input, normalised coordinates) from the generator's frame into the photo, and an
additive brightness γ: T_φ(y) = T_ψ(y + γ) is the target as the generator should draw it
(h × w), and T_φ⁻¹(G(z)) = T_ψ⁻¹(G(z)) − γ puts a generated image back into the photo (H × W).
Both warps are low-pass filtered where they shrink (``latentx.ops.warp_affine``, SPEC A4).

Loss (SPEC C1, seed 003 eq. 4): L_mask(ŷ, y, m) = Σ m⊙|ŷ − y| / (C·Σm) + β·mLPIPS(ŷ, y, m),
β = 10, m = 1 inside the object box and 0.3 outside. Gradient steps use the generator-frame
form L_mask(G(z), T_φ(y), T_φ(m)) (the seed's choice: no back-propagation through a shrinking
warp); CMA over φ is told the photo-frame form L_mask(T_φ⁻¹(G(z)), y, m'), where m' is m on
the photo pixels the generated image covers plus the object pixels (m ≥ 0.5) everywhere, so a
transform cannot hide the object outside the generated frame. Reported losses (masked L1,
masked L2, masked LPIPS, total) are the photo-frame ones, comparable across methods and with
or without the transform.

Algorithm (batched over images × seeds; every CMA instance is one row of
``latentx.cma.BatchedCMAES``, B = images, popsize = seeds):

* Stage 1, transform search (``transform=True``): CMA over φ per image, mean φ₀ (ψ₀ from
  the object's box against the generator's typical object box, γ₀ = 0), step size
  ``transform_sigma``; per CMA sample z is drawn around an exponential moving average (decay
  0.5) of the best latents so far (seed 003 Appendix D; pix2latent's noise schedule and
  per-sample standardisation), c ← c₀, ``transform_grad_steps`` Adam steps on (z, c) against
  T_φ(y); CMA is told the photo-frame loss. φ* = the CMA mean.
* Stage 2, latent search with φ* fixed, by ``method``:
  ``adam`` (``adam_steps`` = 500 Adam steps per seed), ``lbfgs`` (``lbfgs_steps`` = 500
  L-BFGS steps, strong-Wolfe line search, lr 0.1; all seeds of a call share one L-BFGS on the
  summed loss, as ``torch.optim.LBFGS`` on a batch does), ``cma`` (``cma_steps`` = 300
  generations), ``cma+adam`` (100 generations, then 500 Adam steps from CMA's final
  distribution), ``basincma`` (``meta_steps`` = 30 CMA generations, each sample descended by
  ``grad_steps`` = 30 Adam steps, CMA told the sampled points with their post-descent losses
  — pix2latent's default; ``tell="descended"`` tells the descended points as Algorithm 1
  writes it — and the last generation descended by ``last_grad_steps`` = 300 steps).
  With an ``encoder``, Adam / L-BFGS start from z ~ N(E(T_φ(y)), 0.5·I) and the CMA methods
  from the mean E(T_φ(y)) (seed 002's hybrid family; seed 003 Appendix A).

Everywhere |z|∞ ≤ the generator's truncation bound (2) after every step; Adam's lr is 0.05
for z and 1e−4 for c. Randomness comes from one ``torch.Generator`` per image (``seed``), so
projecting images together or one at a time with the same seeds gives the same result (up to
floating-point differences of batched kernels).

The perceptual metric: AlexNet-LPIPS (v0.1) with its ImageNet backbone when torchvision's
checkpoint is in the torch hub cache; otherwise — said in a warning and in
``ProjectionResult.perceptual`` — the same LPIPS linear weights over a fixed *random* AlexNet
backbone, a multi-scale random-feature distance, not the pretrained metric.

Fine-tuning (seed 003 eq. 6, :func:`finetune`): after projection, Adam (lr 1e−4) on a copy
of the generator's weights θ (and z, c, optionally φ) of the photo-frame L_mask plus
λ‖θ − θ₀‖² (λ = 1e3), batch-norm statistics frozen, until L_mask < 0.1 or a step budget.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from latentx.cma import BatchedCMAES
from latentx.lpips import LPIPS, TargetFeatures, backbone_checkpoint_paths
from latentx.models import Generator
from latentx.transforms import SpatialTransform

__all__ = ["METHODS", "ProjectionResult", "project", "FinetuneResult", "finetune", "default_lpips",
           "masks_from_boxes", "masked_losses", "transform_images", "invert_images"]

METHODS = ("adam", "lbfgs", "cma", "cma+adam", "basincma")

# --- perceptual metric ----------------------------------------------------------------------

_LPIPS_CACHE: dict = {}
_WARNED: set = set()


def default_lpips(net: str = "alex", device: Union[str, torch.device] = "cpu") -> tuple[LPIPS, str]:
    """The LPIPS projection uses by default, and a description of which one it is.

    AlexNet-LPIPS v0.1 with the ImageNet backbone when its torchvision checkpoint is in the torch
    hub cache. Otherwise (warned once): the lpips linear weights over a random backbone fixed by
    seed 0 (``pnet_rand=True``) — a multi-scale random-feature distance, NOT the pretrained
    metric; without the ``lpips`` package (no linear weights) the channels are averaged.
    Nothing is downloaded.
    """
    device = torch.device(device)
    key = (net, str(device))
    if key in _LPIPS_CACHE:
        return _LPIPS_CACHE[key]
    import importlib.util
    import os

    paths = backbone_checkpoint_paths(net)
    have_backbone = any(os.path.isfile(p) for p in paths)
    have_linear = importlib.util.find_spec("lpips") is not None
    if have_backbone and have_linear:
        module = LPIPS(net=net)
        desc = f"LPIPS v0.1 ({net}, ImageNet backbone)"
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            module = LPIPS(net=net, pnet_rand=True, pretrained=have_linear, lpips=have_linear)
        what = "lpips linear weights" if have_linear else "channel-averaged features (lpips package not installed)"
        desc = (f"LPIPS v0.1 ({net}) with a RANDOM backbone (seed 0) and {what}: the ImageNet "
                f"checkpoint was not found at {', '.join(paths)} — a random-feature distance, "
                f"not the pretrained metric")
        if desc not in _WARNED:
            _WARNED.add(desc)
            warnings.warn(f"latentx.projection: {desc}. Put torchvision's ImageNet checkpoint there "
                          "for the real metric.", stacklevel=3)
    module = module.to(device).eval()
    _LPIPS_CACHE[key] = (module, desc)
    return module, desc


# --- masks, transforms, losses --------------------------------------------------------------

def masks_from_boxes(boxes: Any, size: Sequence[int], *, background: float = 0.3,
                     dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """Masks [B, 1, H, W] from boxes [B, 4] (x0, y0, x1, y1) in pixel coordinates of an
    H × W image (x right, y down, edges: the box [0, 0, W, H] is the whole image): 1 on pixels
    whose centre lies inside the box, ``background`` elsewhere. Empty boxes and boxes outside
    the image are errors."""
    h, w = int(size[0]), int(size[1])
    b = torch.as_tensor(boxes, dtype=torch.float64)
    if b.dim() == 1:
        b = b[None]
    if b.dim() != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must be [B, 4] (x0, y0, x1, y1 in pixels), got shape {list(b.shape)}")
    if not bool(b.isfinite().all()):
        raise ValueError("boxes must be finite numbers")
    ys = torch.arange(h, dtype=torch.float64) + 0.5
    xs = torch.arange(w, dtype=torch.float64) + 0.5
    masks = []
    for i, (x0, y0, x1, y1) in enumerate(b.tolist()):
        if not (x1 > x0 and y1 > y0):
            raise ValueError(f"boxes[{i}] = {[x0, y0, x1, y1]} is empty (need x0 < x1 and y0 < y1)")
        if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
            raise ValueError(f"boxes[{i}] = {[x0, y0, x1, y1]} lies outside the {w}×{h} image "
                             f"(need 0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h})")
        inside = ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]
        if not bool(inside.any()):
            raise ValueError(f"boxes[{i}] = {[x0, y0, x1, y1]} covers no pixel centre (empty box)")
        masks.append(torch.where(inside, 1.0, float(background)))
    return torch.stack(masks)[:, None].to(dtype=dtype, device=device)


def _transform_parts(phi: Tensor) -> tuple[SpatialTransform, Tensor]:
    return SpatialTransform(phi[:, :4]), phi[:, 4]


def transform_images(images: Tensor, phi: Tensor, size: Sequence[int]) -> Tensor:
    """T_φ(images) = T_ψ(images + γ) at ``size`` (the generator's frame). φ [N, 5]."""
    psi, gamma = _transform_parts(phi)
    return psi.apply(images + gamma.to(images.dtype)[:, None, None, None], size)


def invert_images(generated: Tensor, phi: Tensor, size: Sequence[int]) -> tuple[Tensor, Tensor]:
    """T_φ⁻¹(generated) = T_ψ⁻¹(generated) − γ at ``size`` (the photo's frame), and the
    [N, 1, H, W] bool region the generated frame covers there."""
    psi, gamma = _transform_parts(phi)
    inv = psi.inverse()
    out = inv.apply(generated, size) - gamma.to(generated.dtype)[:, None, None, None]
    return out, inv.valid_region(size)


def _quiet_lpips_distance(lp: LPIPS, x: Tensor, feats: TargetFeatures, mask: Tensor) -> Tensor:
    # Brightness-shifted targets and inverse-transformed images may leave [-1, 1] slightly;
    # that is intended here, so LPIPS's range warning is silenced for these calls only.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LPIPS: .* outside \\[-1, 1\\]")
        return lp.distance(x, feats, mask=mask).flatten()


def _quiet_encode(lp: LPIPS, x: Tensor) -> TargetFeatures:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LPIPS: .* outside \\[-1, 1\\]")
        return lp.encode(x)


def masked_losses(generated: Tensor, target: Tensor, mask: Tensor, lp: Optional[LPIPS],
                  feats: Optional[TargetFeatures] = None, beta: float = 10.0) -> dict[str, Tensor]:
    """SPEC C1 per sample: ``l1`` = Σ m⊙|ŷ − y|/(C·Σm), ``l2`` = Σ m⊙(ŷ − y)²/(C·Σm),
    ``lpips`` = masked LPIPS (0 when ``lp`` is None), ``total`` = l1 + β·lpips. All [N]."""
    c = generated.shape[1]
    msum = mask.flatten(1).sum(1) * c
    diff = generated - target
    l1 = (mask * diff.abs()).flatten(1).sum(1) / msum
    l2 = (mask * diff * diff).flatten(1).sum(1) / msum
    if lp is None:
        lpv = torch.zeros_like(l1)
    else:
        if feats is None:
            feats = _quiet_encode(lp, target)
        lpv = _quiet_lpips_distance(lp, generated, feats, mask)
    return {"l1": l1, "l2": l2, "lpips": lpv, "total": l1 + beta * lpv}


# --- result ---------------------------------------------------------------------------------

@dataclass
class ProjectionResult:
    """Per image b and seed s (B images, S seeds; photo frame H × W, generator frame h × w).

    Attributes:
        z: [B, S, z_dim] final latents; ``c``: [B, S, c_dim] or None.
        phi: [B, 5] φ* = (s_x, s_y, t_x, t_y, γ) used for the latent search (identity without
            the transform); ``phi0``: [B, 5] the initial φ₀ from the boxes.
        generated: [B, S, 3, h, w] G(z, c).
        inverted: [B, S, 3, H, W] T_φ⁻¹(G(z, c)) in the photo frame; ``coverage`` [B, 1, H, W]
            bool: where the generated frame lands in the photo.
        target: [B, 3, H, W]; ``mask``: [B, 1, H, W] the masks used.
        losses: photo-frame ``l1``, ``l2``, ``lpips`` (masked, unweighted) and ``total``
            (l1 + β·lpips), each [B, S].
        best_seed: [B] argmin over seeds of ``losses["total"]``.
        history: ``"latent"`` [B, S, T]: the generator-frame loss of each sample at each
            evaluation of the latent stage (T = Adam/L-BFGS steps, or CMA generations);
            ``"transform"`` / ``"transform_mean"`` [B, n]: best / mean photo-frame loss told
            to the transform CMA per generation (absent without the search).
        method, transform, perceptual (which LPIPS ran), settings, seconds (wall time).
    """

    method: str
    transform: Union[bool, str]
    z: Tensor
    c: Optional[Tensor]
    phi: Tensor
    phi0: Tensor
    generated: Tensor
    inverted: Tensor
    coverage: Tensor
    target: Tensor
    mask: Tensor
    losses: dict
    best_seed: Tensor
    history: dict
    perceptual: str
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0

    def best(self) -> dict:
        """Best-of-seeds per image: z [B, z_dim], c, generated [B, 3, h, w], inverted
        [B, 3, H, W], and losses [B]."""
        idx = torch.arange(self.z.shape[0], device=self.z.device)
        s = self.best_seed.to(self.z.device)
        return {
            "z": self.z[idx, s], "c": None if self.c is None else self.c[idx, s],
            "generated": self.generated[idx, s], "inverted": self.inverted[idx, s],
            "losses": {k: v[idx, s] for k, v in self.losses.items()},
        }

    def summary(self) -> list[dict]:
        """Per image: best-of-seeds and mean-of-seeds of every loss (seed 003 Table 1's columns)."""
        out = []
        best = self.best()["losses"]
        for b in range(self.z.shape[0]):
            out.append({
                "best_seed": int(self.best_seed[b]),
                "best": {k: float(v[b]) for k, v in best.items()},
                "mean": {k: float(v[b].mean()) for k, v in self.losses.items()},
            })
        return out

    def to_dict(self) -> dict:
        """JSON-ready: settings, φ₀, φ*, every latent, the losses and the summary."""
        return {
            "method": self.method, "transform": self.transform, "perceptual": self.perceptual,
            "seconds": self.seconds, "settings": self.settings,
            "phi_names": ["s_x", "s_y", "t_x", "t_y", "gamma"],
            "phi0": self.phi0.tolist(), "phi": self.phi.tolist(),
            "z": self.z.tolist(), "c": None if self.c is None else self.c.tolist(),
            "losses": {k: v.tolist() for k, v in self.losses.items()},
            "summary": self.summary(),
        }


# --- the optimisers -------------------------------------------------------------------------

class _Progress:
    def __init__(self, total: int, enabled: Optional[bool], desc: str):
        self.bar = None
        if enabled is False:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover - tqdm is a dependency
            return
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


class _Targets:
    """One target per row, in the generator frame: T_φ(y), T_φ(m) and its LPIPS features."""

    def __init__(self, problem: "_Problem", phi_rows: Tensor, rows: Tensor):
        p = problem
        self.image = transform_images(p.images[rows], phi_rows.to(p.dtype), p.gen_size)
        psi, _ = _transform_parts(phi_rows.to(p.dtype))
        mask = psi.apply_mask(p.masks[rows], p.gen_size)
        # A transform that moves the frame off the photo leaves no mask; keep a floor so the
        # loss stays defined (it is then bad, and CMA moves away).
        self.mask = mask.clamp(1e-4, 1.0)  # the filtered warp may overshoot 1 by rounding
        self.feats = _quiet_encode(p.lp, self.image) if p.beta > 0 else None


class _Problem:
    def __init__(self, generator, images, masks, lp, beta, seeds, gens, lr, lr_c, c0, progress):
        self.G = generator
        self.images, self.masks = images, masks
        self.B, _, self.H, self.W = images.shape
        self.S = seeds
        self.N = self.B * seeds
        self.rows = torch.arange(self.B, device=images.device).repeat_interleave(seeds)
        self.gens = gens
        self.lp, self.beta = lp, beta
        self.lr, self.lr_c = lr, lr_c
        self.c0 = c0  # [B, c_dim] or None
        self.dtype, self.device = images.dtype, images.device
        self.gen_size = generator.resolution
        self.T = generator.truncation
        self.d = generator.z_dim
        self.progress = progress
        self.photo_feats = _quiet_encode(lp, images)

    # random draws, one stream per image (so batching does not change them)
    def randn(self, *shape: int) -> Tensor:
        """[B, *shape] standard normal, image b from its own generator."""
        return torch.stack([torch.randn(*shape, generator=g, dtype=torch.float64) for g in self.gens]
                           ).to(device=self.device)

    def c_rows(self) -> Optional[Tensor]:
        return None if self.c0 is None else self.c0[self.rows].clone()

    def render(self, z: Tensor, c: Optional[Tensor]) -> Tensor:
        return self.G(z, c) if c is not None else self.G(z)

    def gen_loss(self, out: Tensor, tg: _Targets) -> dict[str, Tensor]:
        return masked_losses(out, tg.image, tg.mask, self.lp if self.beta > 0 else None, tg.feats, self.beta)

    def photo_loss(self, out: Tensor, phi_rows: Tensor, with_images: bool = False):
        inv, valid = invert_images(out, phi_rows.to(out.dtype), (self.H, self.W))
        m = self.masks[self.rows]
        m_eff = torch.where(valid | (m >= 0.5), m, torch.zeros_like(m))
        empty = m_eff.flatten(1).sum(1) <= 0
        if bool(empty.any()):
            m_eff = torch.where(empty[:, None, None, None], torch.full_like(m_eff, 1e-6), m_eff)
        feats = TargetFeatures([f[self.rows] for f in self.photo_feats.layers], self.photo_feats.size)
        losses = masked_losses(inv, self.images[self.rows], m_eff, self.lp, feats, self.beta)
        return (losses, inv, valid) if with_images else losses

    def clamp_(self, z: Tensor) -> Tensor:
        return z.clamp_(-self.T, self.T)

    # Adam on (z, c), every row independent (Adam is elementwise; the loss is a sum over rows).
    def adam(self, z0: Tensor, c0: Optional[Tensor], tg: _Targets, steps: int, history: list):
        z = self.clamp_(z0.detach().clone()).requires_grad_(True)
        groups = [{"params": [z], "lr": self.lr}]
        c = None
        if c0 is not None:
            c = c0.detach().clone().requires_grad_(True)
            groups.append({"params": [c], "lr": self.lr_c})
        opt = torch.optim.Adam(groups)
        best_f = torch.full((z.shape[0],), math.inf, dtype=self.dtype, device=self.device)
        best_z = z.detach().clone()
        best_c = None if c is None else c.detach().clone()

        def keep(f: Tensor) -> None:
            better = f < best_f
            best_f.copy_(torch.where(better, f, best_f))
            best_z.copy_(torch.where(better[:, None], z.detach(), best_z))
            if c is not None:
                best_c.copy_(torch.where(better[:, None], c.detach(), best_c))

        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            f = self.gen_loss(self.render(z, c), tg)["total"]
            f.sum().backward()
            with torch.no_grad():
                fd = f.detach()
                history.append(fd.clone())
                keep(fd)
                opt.step()
                self.clamp_(z)
            self.progress.update(1, loss=f"{float(fd.min()):.4f}")
        with torch.no_grad():
            keep(self.gen_loss(self.render(z, c), tg)["total"])
        return best_z, best_c, best_f

    def lbfgs(self, z0: Tensor, c0: Optional[Tensor], tg: _Targets, steps: int, lr: float, history: list):
        z = self.clamp_(z0.detach().clone()).requires_grad_(True)
        params = [z]
        c = None
        if c0 is not None:
            c = c0.detach().clone().requires_grad_(True)
            params.append(c)
        opt = torch.optim.LBFGS(params, lr=lr, max_iter=1, line_search_fn="strong_wolfe")
        last: dict = {}

        def closure():
            opt.zero_grad(set_to_none=True)
            f = self.gen_loss(self.render(z, c), tg)["total"]
            last.setdefault("f", f.detach())  # the loss where the step starts
            total = f.sum()
            total.backward()
            return total

        for _ in range(steps):
            last.clear()
            opt.step(closure)
            with torch.no_grad():
                self.clamp_(z)
                history.append(last["f"].clone())
            self.progress.update(1, loss=f"{float(last['f'].min()):.4f}")
        with torch.no_grad():
            f = self.gen_loss(self.render(z, c), tg)["total"]
        return z.detach(), None if c is None else c.detach(), f


def _check_images(images: Any, gen_size: Sequence[int]) -> Tensor:
    if not isinstance(images, Tensor):
        raise TypeError(f"project: images must be a tensor [B, 3, H, W] in [-1, 1], got {type(images).__name__}")
    if images.dim() == 3:
        images = images[None]
    if images.dim() != 4 or images.shape[1] != 3 or images.shape[0] < 1:
        raise ValueError(f"project: images must be [B, 3, H, W] (RGB), got shape {list(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"project: images must be floating point in [-1, 1], got {images.dtype} "
                        "(convert uint8 photos with x / 127.5 - 1)")
    if not bool(images.isfinite().all()):
        raise ValueError("project: images contain NaN or inf")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1 - 1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"project: images must lie in [-1, 1], got values in [{lo:.4g}, {hi:.4g}] "
                         "(map [0, 1] images with 2 * x - 1 and [0, 255] ones with x / 127.5 - 1)")
    h, w = images.shape[2:]
    gh, gw = gen_size
    if h < gh or w < gw:
        raise ValueError(f"project: images are {h}×{w}, smaller than the generator's {gh}×{gw} output; "
                         f"pass images of at least {gh}×{gw} pixels")
    return images.clamp(-1, 1)


def _check_lpips_size(who: str, lp: LPIPS, photo_size: Sequence[int], gen_size: Sequence[int], beta: float) -> None:
    # LPIPS sees the photo always (the photo-frame loss) and the generator's frame when β > 0;
    # an image below its backbone's smallest input would stop inside the backbone mid-run.
    side = getattr(lp, "min_size", 0)
    net = getattr(lp, "pnet_type", "?")
    if beta > 0 and min(gen_size) < side:
        raise ValueError(f"{who}: the generator's {gen_size[0]}×{gen_size[1]} output is smaller than the "
                         f"{side}×{side} that LPIPS ({net}) needs in its frame; pass beta=0, or "
                         "perceptual= an LPIPS with another net")
    if min(photo_size) < side:
        raise ValueError(f"{who}: images are {photo_size[0]}×{photo_size[1]}, smaller than the {side}×{side} "
                         f"that LPIPS ({net}) needs; upsample them, or pass perceptual= an LPIPS with another net")


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"project: {name} must be an integer >= {minimum}, got {value!r}")
    return value


def project(
    generator,
    images: Tensor,
    masks: Optional[Tensor] = None,
    *,
    boxes: Any = None,
    method: str = "basincma",
    transform: Union[bool, str] = True,
    seeds: int = 18,
    meta_steps: int = 30,
    grad_steps: int = 30,
    last_grad_steps: int = 300,
    lr: float = 0.05,
    lr_c: float = 1e-4,
    beta: float = 10.0,
    background: float = 0.3,
    transform_meta_steps: Optional[int] = None,
    transform_grad_steps: Optional[int] = None,
    transform_sigma: float = 0.1,
    brightness: bool = True,
    propagate: bool = True,
    tell: str = "sampled",
    adam_steps: int = 500,
    lbfgs_steps: int = 500,
    lbfgs_lr: float = 0.1,
    cma_steps: Optional[int] = None,
    classes: Any = None,
    c0: Optional[Tensor] = None,
    encoder: Optional[Callable[[Tensor], Tensor]] = None,
    encoder_noise: float = math.sqrt(0.5),
    perceptual: Optional[LPIPS] = None,
    seed: Union[int, Sequence[int], None] = None,
    progress: Optional[bool] = None,
) -> ProjectionResult:
    """Project ``images`` into ``generator`` (see the module docstring for the algorithm).

    Args:
        generator: a :class:`latentx.models.Generator` (z_dim, truncation, object box, class
            embedding), e.g. ``latentx.models.load("face-dcgan")``.
        images: [B, 3, H, W] in [−1, 1], at least the generator's resolution.
        masks: [B, 1, H, W] in [0, 1] object weights; or ``boxes`` [B, 4] (x0, y0, x1, y1)
            in pixels → 1 inside, ``background`` (0.3) outside. Neither: the whole image.
        method: ``"adam"``, ``"lbfgs"``, ``"cma"``, ``"cma+adam"`` or ``"basincma"``.
        transform: True: search φ (stage 1); ``"init"``: use φ₀ from the boxes without
            searching; False: the identity (the whole image resized to the generator frame).
        seeds: samples per image: the Adam / L-BFGS seeds, or the CMA population.
        meta_steps, grad_steps, last_grad_steps: BasinCMA's CMA generations, Adam steps per
            generation, and Adam steps in the last generation (pix2latent's names).
        lr, lr_c: Adam learning rates for z and c. beta: the LPIPS weight β.
        transform_meta_steps, transform_grad_steps: stage 1's budget (default meta_steps and
            grad_steps). transform_sigma: stage 1 CMA's initial step size σ₀ (per coordinate;
            the seed writes Σ = 0.1·I). brightness: search γ too. propagate: draw stage 1's z
            around the EMA of the best latents (Appendix D) instead of N(0, I) each time.
        tell: ``"sampled"`` (pix2latent) or ``"descended"`` (Algorithm 1) points for BasinCMA.
        adam_steps, lbfgs_steps, lbfgs_lr, cma_steps: the baselines' budgets (cma_steps
            default: 300 for ``cma``, 100 for ``cma+adam``).
        classes / c0: class labels [B] (c₀ = W[label]) or embeddings [B, c_dim], required
            when the generator has a class embedding.
        encoder: optional E(images [N, 3, h, w]) → z [N, z_dim] for initialisation.
        perceptual: an LPIPS module; default :func:`default_lpips` (see its fallback).
        seed: an int (image b uses seed + b) or one int per image; None draws one.
        progress: show a tqdm bar (None: only on a terminal).

    Returns:
        :class:`ProjectionResult`.
    """
    t_start = time.perf_counter()
    if not isinstance(generator, Generator):
        raise TypeError("project: generator must be a latentx.models.Generator (wrap a network with "
                        "latentx.models.Generator(net, z_dim, ...) or use latentx.models.load(...)), "
                        f"got {type(generator).__name__}")
    if not isinstance(method, str) or method.lower() not in METHODS:
        raise ValueError(f"project: method must be one of {', '.join(METHODS)}; got {method!r}")
    method = method.lower()
    if transform not in (True, False, "init", "search", "none"):
        raise ValueError(f"project: transform must be True, False or 'init', got {transform!r}")
    transform = {"search": True, "none": False}.get(transform, transform)
    if tell not in ("sampled", "descended"):
        raise ValueError(f"project: tell must be 'sampled' or 'descended', got {tell!r}")
    seeds = _check_int("seeds", seeds, 2 if (method != "adam" and method != "lbfgs") or transform is True else 1)
    meta_steps = _check_int("meta_steps", meta_steps, 1)
    grad_steps = _check_int("grad_steps", grad_steps, 0)
    last_grad_steps = _check_int("last_grad_steps", last_grad_steps, 0)
    adam_steps = _check_int("adam_steps", adam_steps, 0)
    lbfgs_steps = _check_int("lbfgs_steps", lbfgs_steps, 0)
    if cma_steps is None:
        cma_steps = 300 if method == "cma" else 100
    cma_steps = _check_int("cma_steps", cma_steps, 1)
    t_meta = _check_int("transform_meta_steps", meta_steps if transform_meta_steps is None else transform_meta_steps, 1)
    t_grad = _check_int("transform_grad_steps", grad_steps if transform_grad_steps is None else transform_grad_steps, 0)
    for name, v in (("lr", lr), ("lr_c", lr_c), ("transform_sigma", transform_sigma), ("lbfgs_lr", lbfgs_lr)):
        if not (isinstance(v, (int, float)) and v > 0 and math.isfinite(v)):
            raise ValueError(f"project: {name} must be a positive number, got {v!r}")
    if not (isinstance(beta, (int, float)) and beta >= 0):
        raise ValueError(f"project: beta must be a number >= 0, got {beta!r}")
    if not (0 <= background <= 1):
        raise ValueError(f"project: background must lie in [0, 1], got {background!r}")

    like = generator.parameter_like()
    device = like.device
    dtype = like.dtype if like.is_floating_point() else torch.float32
    gen_size = generator.resolution
    images = _check_images(images, gen_size).to(device=device, dtype=dtype)
    B, _, H, W = images.shape

    if masks is not None and boxes is not None:
        raise ValueError("project: pass masks or boxes, not both")
    if boxes is not None:
        bx = torch.as_tensor(boxes, dtype=torch.float64)
        if bx.dim() == 1:
            bx = bx[None]
        if bx.dim() != 2 or bx.shape[0] != B:
            raise ValueError(f"project: boxes must be [{B}, 4] (one box per image), got shape {list(bx.shape)}")
        masks = masks_from_boxes(bx, (H, W), background=background, dtype=dtype, device=device)
    elif masks is not None:
        if not isinstance(masks, Tensor) or masks.dim() != 4 or masks.shape[1] != 1 \
                or masks.shape[0] != B or tuple(masks.shape[2:]) != (H, W):
            shape = list(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
            raise ValueError(f"project: masks must be [{B}, 1, {H}, {W}], got {shape}")
        masks = masks.to(device=device, dtype=dtype)
        if not bool(masks.isfinite().all()) or float(masks.min()) < 0 or float(masks.max()) > 1:
            raise ValueError("project: masks must lie in [0, 1]")
        if bool((masks.flatten(1).amax(1) < 0.5).any()):
            raise ValueError("project: every mask needs object pixels (values >= 0.5); a mask has none")
    else:
        masks = torch.ones(B, 1, H, W, dtype=dtype, device=device)

    # class embedding
    if generator.class_dim:
        if c0 is None and classes is None:
            raise ValueError("project: this generator has a class embedding: pass classes= (labels) or c0=")
        if c0 is None:
            c0 = generator.embed(classes)
        c0 = torch.as_tensor(c0, dtype=dtype, device=device)
        if c0.dim() == 1:
            c0 = c0[None].expand(B, -1)
        if c0.shape != (B, generator.class_dim):
            raise ValueError(f"project: c0 must be [{B}, {generator.class_dim}], got {list(c0.shape)}")
    elif c0 is not None or classes is not None:
        raise ValueError("project: classes/c0 given but the generator has no class embedding")

    # seeds → one generator per image
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()))
    seed_list = [int(seed) + b for b in range(B)] if isinstance(seed, int) else [int(s) for s in seed]
    if len(seed_list) != B:
        raise ValueError(f"project: seed must be an int or {B} ints (one per image), got {len(seed_list)}")
    gens = [torch.Generator().manual_seed(s) for s in seed_list]

    if perceptual is None:
        lp, perceptual_desc = default_lpips("alex", device)
    else:
        lp, perceptual_desc = perceptual, getattr(perceptual, "description", "user-supplied LPIPS")
    lp = lp.to(device=device, dtype=dtype)
    _check_lpips_size("project", lp, (H, W), gen_size, float(beta))

    # budget (progress units: one generator evaluation step)
    if method == "adam":
        latent_units = adam_steps
    elif method == "lbfgs":
        latent_units = lbfgs_steps
    elif method == "cma":
        latent_units = cma_steps
    elif method == "cma+adam":
        latent_units = cma_steps + adam_steps
    else:
        latent_units = (meta_steps - 1) * grad_steps + last_grad_steps
    total_units = latent_units + (t_meta * t_grad if transform is True else 0)
    bar = _Progress(total_units, progress, f"project[{method}]")
    P = _Problem(generator, images, masks, lp, float(beta), seeds, gens, lr, lr_c, c0, bar)
    history: dict[str, Tensor] = {}

    # φ₀
    psi0 = SpatialTransform.from_boxes(masks, generator.object_box).params.to(torch.float64)
    phi0 = torch.cat([psi0, torch.zeros(B, 1, dtype=torch.float64, device=device)], 1)
    identity = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0], dtype=torch.float64, device=device).repeat(B, 1)

    try:
        if transform is True:
            bar.set_description(f"project[{method}] transform")
            phi_star, t_hist, t_mean = _search_transform(P, phi0, t_meta, t_grad, transform_sigma,
                                                         brightness, propagate)
            history["transform"], history["transform_mean"] = t_hist, t_mean
        elif transform == "init":
            phi_star = phi0
        else:
            phi_star = identity
        bar.set_description(f"project[{method}] latent")
        z, c, lat_hist = _search_latent(P, method, phi_star, meta_steps=meta_steps, grad_steps=grad_steps,
                                        last_grad_steps=last_grad_steps, adam_steps=adam_steps,
                                        lbfgs_steps=lbfgs_steps, lbfgs_lr=lbfgs_lr, cma_steps=cma_steps,
                                        tell=tell, encoder=encoder, encoder_noise=encoder_noise)
        history["latent"] = lat_hist
    finally:
        bar.close()

    with torch.no_grad():
        phi_rows = phi_star[P.rows]
        out = P.render(z, c)
        losses, inv, valid = P.photo_loss(out, phi_rows, with_images=True)
    S = seeds
    losses = {k: v.reshape(B, S).detach() for k, v in losses.items()}
    best_seed = losses["total"].argmin(1)
    h, w = gen_size
    settings = dict(method=method, transform=transform, seeds=seeds, meta_steps=meta_steps,
                    grad_steps=grad_steps, last_grad_steps=last_grad_steps, lr=lr, lr_c=lr_c, beta=beta,
                    background=background, transform_meta_steps=t_meta if transform is True else 0,
                    transform_grad_steps=t_grad if transform is True else 0,
                    transform_sigma=transform_sigma, brightness=brightness, propagate=propagate, tell=tell,
                    adam_steps=adam_steps, lbfgs_steps=lbfgs_steps, lbfgs_lr=lbfgs_lr, cma_steps=cma_steps,
                    seed=seed_list, truncation=generator.truncation, object_box=list(generator.object_box),
                    generator=getattr(generator, "name", "generator"), encoder=encoder is not None,
                    photo_size=[H, W], generator_size=[h, w])
    return ProjectionResult(
        method=method, transform=transform,
        z=z.detach().reshape(B, S, -1), c=None if c is None else c.detach().reshape(B, S, -1),
        phi=phi_star.to(dtype), phi0=phi0.to(dtype),
        generated=out.detach().reshape(B, S, 3, h, w), inverted=inv.detach().reshape(B, S, 3, H, W),
        coverage=valid.reshape(B, S, 1, H, W)[:, 0], target=images, mask=masks,
        losses=losses, best_seed=best_seed, history=history, perceptual=perceptual_desc,
        settings=settings, seconds=time.perf_counter() - t_start)


def _standardise(z: Tensor) -> Tensor:
    return (z - z.mean(-1, keepdim=True)) / z.std(-1, keepdim=True).clamp_min(1e-8)


def _search_transform(P: _Problem, phi0: Tensor, n_meta: int, n_grad: int, sigma: float,
                      brightness: bool, propagate: bool):
    """Stage 1: CMA over φ (one row per image), Adam on z per sample, CMA told the
    photo-frame loss. Returns φ* (the CMA mean) [B, 5] and the per-generation best / mean."""
    B, S, d = P.B, P.S, P.d
    k = 5 if brightness else 4
    cma = BatchedCMAES(phi0[:, :k].clone(), sigma, popsize=S,
                       generator=torch.Generator(device=phi0.device).manual_seed(0))
    scale0 = phi0[:, :2]
    ema: Optional[Tensor] = None
    best_hist, mean_hist = [], []
    for it in range(n_meta):
        noise = P.randn(S, k)
        phi = cma.ask(noise=noise)                                  # [B, S, k]
        # keep the samples usable: scales positive and within a factor 10 of φ₀'s, shifts
        # within a few frames, brightness within ±1
        lo = torch.cat([scale0 * 0.1, torch.full_like(scale0, -3.0)], 1)
        hi = torch.cat([scale0 * 10.0, torch.full_like(scale0, 3.0)], 1)
        if k == 5:
            lo = torch.cat([lo, torch.full_like(lo[:, :1], -1.0)], 1)
            hi = torch.cat([hi, torch.full_like(hi[:, :1], 1.0)], 1)
        phi = torch.maximum(torch.minimum(phi, hi[:, None]), lo[:, None])
        phi_full = phi if k == 5 else torch.cat([phi, torch.zeros_like(phi[..., :1])], -1)
        phi_rows = phi_full.reshape(B * S, 5)
        znoise = P.randn(S, d).reshape(B * S, d).to(P.dtype)
        if ema is None or not propagate:
            z0 = znoise
        else:
            z_sigma = 1.0 - it / n_meta
            z0 = _standardise(ema[P.rows] + z_sigma * znoise)
        tg = _Targets(P, phi_rows, P.rows)
        z, c, _ = P.adam(z0, P.c_rows(), tg, n_grad, [])
        with torch.no_grad():
            g_inv = P.photo_loss(P.render(z, c), phi_rows)["total"].reshape(B, S)
        cma.tell(phi, g_inv.to(torch.float64))
        best_hist.append(g_inv.min(1).values)
        mean_hist.append(g_inv.mean(1))
        # EMA (decay 0.5) of the best latent per image (seed 003 Appendix D)
        zb = z.reshape(B, S, d)
        best = zb[torch.arange(B, device=zb.device), g_inv.argmin(1)]
        ema = (zb.mean(1) if ema is None else ema) * 0.5 + best * 0.5
    mean = cma.mean
    mean = torch.maximum(torch.minimum(mean, hi), lo)
    phi_star = mean if k == 5 else torch.cat([mean, torch.zeros_like(mean[:, :1])], 1)
    return phi_star, torch.stack(best_hist, 1), torch.stack(mean_hist, 1)


def _search_latent(P: _Problem, method: str, phi_star: Tensor, *, meta_steps, grad_steps, last_grad_steps,
                   adam_steps, lbfgs_steps, lbfgs_lr, cma_steps, tell, encoder, encoder_noise):
    """Stage 2 with φ* fixed. Returns z [N, d], c [N, c_dim] or None, history [B, S, T]."""
    B, S, d, T = P.B, P.S, P.d, P.T
    phi_rows = phi_star[P.rows]
    tg = _Targets(P, phi_rows, P.rows)
    hist: list = []
    enc_mean = None
    if encoder is not None:
        with torch.no_grad():
            per_image = transform_images(P.images, phi_star.to(P.dtype), P.gen_size)
            enc_mean = encoder(per_image).reshape(B, d).to(torch.float64).clamp(-T, T)

    def start_points() -> Tensor:
        noise = P.randn(S, d)
        if enc_mean is not None:
            z = enc_mean[:, None] + encoder_noise * noise
        else:
            z = noise
        return z.reshape(B * S, d).to(P.dtype).clamp(-T, T)

    def make_cma() -> BatchedCMAES:
        mean0 = torch.zeros(B, d, dtype=torch.float64, device=P.device) if enc_mean is None else enc_mean
        return BatchedCMAES(mean0, 1.0, popsize=S, bounds=(-T, T),
                            generator=torch.Generator(device=P.device).manual_seed(0))

    def cma_generations(cma: BatchedCMAES, n: int) -> None:
        for _ in range(n):
            x = cma.ask(noise=P.randn(S, d))
            with torch.no_grad():
                f = P.gen_loss(P.render(x.reshape(B * S, d).to(P.dtype), P.c_rows()), tg)["total"]
            hist.append(f.clone())
            cma.tell(x, f.reshape(B, S).to(torch.float64))
            P.progress.update(1, loss=f"{float(f.min()):.4f}")

    if method == "adam":
        z, c, _ = P.adam(start_points(), P.c_rows(), tg, adam_steps, hist)
    elif method == "lbfgs":
        z, c, _ = P.lbfgs(start_points(), P.c_rows(), tg, lbfgs_steps, lbfgs_lr, hist)
    elif method == "cma":
        cma = make_cma()
        cma_generations(cma, cma_steps)
        # the final population, evaluated (one last ask, no tell)
        z = cma.ask(noise=P.randn(S, d)).reshape(B * S, d).to(P.dtype)
        c = P.c_rows()
    elif method == "cma+adam":
        cma = make_cma()
        cma_generations(cma, cma_steps)
        z0 = cma.ask(noise=P.randn(S, d)).reshape(B * S, d).to(P.dtype)
        z, c, _ = P.adam(z0, P.c_rows(), tg, adam_steps, hist)
    else:  # basincma
        cma = make_cma()
        for it in range(meta_steps):
            last = it == meta_steps - 1
            x = cma.ask(noise=P.randn(S, d))                               # [B, S, d]
            z, c, f = P.adam(x.reshape(B * S, d).to(P.dtype), P.c_rows(), tg,
                             last_grad_steps if last else grad_steps, hist)
            if not last:
                told = x if tell == "sampled" else z.reshape(B, S, d).to(torch.float64)
                cma.tell(told, f.reshape(B, S).to(torch.float64))
    history = torch.stack(hist, 1).reshape(B, S, -1) if hist else torch.zeros(B, S, 0)
    return z, c, history


# --- fine-tuning the generator (seed 003 eq. 6) ---------------------------------------------

@dataclass
class FinetuneResult:
    """The outcome of :func:`finetune` (B images, photo frame H × W, generator frame h × w).

    Attributes:
        generator: the tuned :class:`latentx.models.Generator` — a deep copy; the caller's
            generator is not modified. Its network is in eval mode with frozen parameters,
            like any ``Generator``.
        z: [B, z_dim] latents after tuning; ``c``: [B, c_dim] or None; ``phi``: [B, 5].
        generated: [B, 3, h, w] G_θ(z, c); ``inverted``: [B, 3, H, W] T_φ⁻¹(G_θ(z, c)).
        losses_before / losses: photo-frame ``l1``, ``l2``, ``lpips`` and ``total`` (= l1 +
            β·lpips, L_mask of eq. 4) per image [B], before and after tuning.
        history: ``"loss"`` [T]: the largest per-image L_mask at each step (what
            ``target_loss`` is checked against); ``"penalty"`` [T]: λ‖θ − θ₀‖² there.
        theta_distance: ‖θ − θ₀‖ (Euclidean norm over every trainable parameter) at the end.
        steps: Adam steps taken; ``stopped``: ``"target"`` (every image's L_mask fell below
            ``target_loss``) or ``"steps"`` (the budget ran out).
        settings, seconds (wall time).
    """

    generator: Any
    z: Tensor
    c: Optional[Tensor]
    phi: Tensor
    generated: Tensor
    inverted: Tensor
    losses_before: dict
    losses: dict
    history: dict
    theta_distance: float
    steps: int
    stopped: str
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """JSON-ready: settings, the tuned z / c / φ, losses before and after, the history."""
        return {
            "settings": self.settings, "steps": self.steps, "stopped": self.stopped,
            "theta_distance": self.theta_distance, "seconds": self.seconds,
            "phi": self.phi.tolist(), "z": self.z.tolist(),
            "c": None if self.c is None else self.c.tolist(),
            "losses_before": {k: v.tolist() for k, v in self.losses_before.items()},
            "losses": {k: v.tolist() for k, v in self.losses.items()},
            "history": {k: v.tolist() for k, v in self.history.items()},
        }


def finetune(
    generator,
    result: ProjectionResult,
    images: Optional[Tensor] = None,
    masks: Optional[Tensor] = None,
    *,
    steps: int = 1000,
    lr: float = 1e-4,
    weight_decay_to_init: float = 1e3,
    target_loss: float = 0.1,
    tune_latent: bool = True,
    tune_transform: bool = False,
    beta: Optional[float] = None,
    perceptual: Optional[LPIPS] = None,
    progress: Optional[bool] = None,
) -> FinetuneResult:
    """Fine-tune the generator's weights θ to the projected images (SPEC C2, seed 003 eq. 6).

    Starting from the best seed of ``result`` per image, Adam (lr 1e−4) minimises

        Σ_b L_mask(T_φ_b⁻¹(G_θ(z_b, c_b)), y_b, m_b) + λ‖θ − θ₀‖²,   λ = ``weight_decay_to_init``

    over θ (every floating-point parameter of the network), and with ``tune_latent`` over z
    (kept in |z|∞ ≤ truncation) and c, with ``tune_transform`` over φ. L_mask is the
    photo-frame loss of :func:`project` (masked L1 + β·masked LPIPS on the pixels the
    generated frame covers plus the object pixels). The penalty keeps G_θ near the trained
    generator, so it does not simply memorise the photo. Batch-norm statistics are frozen:
    the copy runs in eval mode throughout (running means / variances are used, never updated;
    the affine BN parameters are trained like any other θ). Tuning stops when every image's
    L_mask is below ``target_loss`` (the seed's 0.1) or after ``steps`` Adam steps.

    One θ is shared by the images of ``result``; pass a one-image result for the paper's
    per-image fine-tuning.

    Scale of λ: the penalty sums over every weight, so Adam's first steps (about ``lr`` per
    weight) already cost λ·n·lr² — ≈ 36 for the face DCGAN's n = 3.6M weights at the seed's
    λ = 1e3, lr = 1e−4, against an L_mask near 1. With those settings θ stays within ~1e−2 of
    θ₀ (measured: ‖θ − θ₀‖ ≈ 5e−3 after 30 steps) and L_mask falls only a little, oscillating
    while the penalty pulls back; a smaller λ lets the weights fit the photo more closely.

    Args:
        generator: the :class:`latentx.models.Generator` ``result`` was projected with. Not
            modified: a deep copy is tuned and returned.
        result: a :class:`ProjectionResult` (its best seed per image, φ*, target and mask).
        images: [B, 3, H, W] in [−1, 1]; default ``result.target``.
        masks: [B, 1, H, W] in [0, 1]; default ``result.mask``.
        steps: the most Adam steps (≥ 0; 0 only evaluates).
        lr: Adam's learning rate for θ, z, c and φ (1e−4).
        weight_decay_to_init: λ ≥ 0 of the ‖θ − θ₀‖² penalty (1e3).
        target_loss: stop once every image's L_mask is below this (0.1).
        tune_latent, tune_transform: also optimise (z, c) / φ.
        beta: LPIPS weight β; default the one ``result`` used.
        perceptual: an LPIPS module; default :func:`default_lpips` (as ``project``).
        progress: show a tqdm bar (None: only on a terminal).

    Returns:
        :class:`FinetuneResult`.
    """
    t_start = time.perf_counter()
    if not isinstance(generator, Generator):
        raise TypeError("finetune: generator must be a latentx.models.Generator (the one result was "
                        f"projected with), got {type(generator).__name__}")
    if not isinstance(result, ProjectionResult):
        raise TypeError(f"finetune: result must be a ProjectionResult from project(), got {type(result).__name__}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"finetune: steps must be an integer >= 0, got {steps!r}")
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"finetune: lr must be a positive number, got {lr!r}")
    if not (isinstance(weight_decay_to_init, (int, float)) and weight_decay_to_init >= 0
            and math.isfinite(weight_decay_to_init)):
        raise ValueError(f"finetune: weight_decay_to_init must be a number >= 0, got {weight_decay_to_init!r}")
    if not (isinstance(target_loss, (int, float)) and not isinstance(target_loss, bool)):
        raise ValueError(f"finetune: target_loss must be a number, got {target_loss!r}")
    beta = float(result.settings.get("beta", 10.0) if beta is None else beta)
    if not beta >= 0:
        raise ValueError(f"finetune: beta must be >= 0, got {beta!r}")

    tuned = copy.deepcopy(generator)
    like = tuned.parameter_like()
    device = like.device
    dtype = like.dtype if like.is_floating_point() else torch.float32
    B = result.z.shape[0]
    images = result.target if images is None else images
    masks = result.mask if masks is None else masks
    images = _check_images(images, tuned.resolution).to(device=device, dtype=dtype)
    if images.shape[0] != B:
        raise ValueError(f"finetune: images must hold the {B} images of result, got {images.shape[0]}")
    H, W = images.shape[2:]
    if not isinstance(masks, Tensor) or tuple(masks.shape) != (B, 1, H, W):
        shape = list(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
        raise ValueError(f"finetune: masks must be [{B}, 1, {H}, {W}], got {shape}")
    masks = masks.to(device=device, dtype=dtype)

    if perceptual is None:
        lp, _ = default_lpips("alex", device)
    else:
        lp = perceptual
    lp = lp.to(device=device, dtype=dtype)
    _check_lpips_size("finetune", lp, (H, W), tuned.resolution, beta)

    # θ: the copy's floating-point parameters, made trainable again (the adapter froze them).
    # eval() on the whole copy freezes batch-norm running statistics (and disables dropout):
    # eq. 6 tunes the weights to one photo, and a one-image batch's statistics would replace
    # the generator's.
    tuned.eval()
    theta = [p for p in tuned.net.parameters() if p.is_floating_point()] \
        if isinstance(tuned.net, torch.nn.Module) else []
    if not theta:
        raise ValueError("finetune: the generator's network has no floating-point parameters to tune")
    for p in theta:
        p.requires_grad_(True)
    theta0 = [p.detach().clone() for p in theta]

    best = result.best()
    z = best["z"].detach().to(device=device, dtype=dtype).clone().requires_grad_(tune_latent)
    c = None if best["c"] is None else best["c"].detach().to(device=device, dtype=dtype).clone().requires_grad_(tune_latent)
    phi = result.phi.detach().to(device=device, dtype=dtype).clone().requires_grad_(tune_transform)
    params = list(theta) + ([z] + ([c] if c is not None else []) if tune_latent else []) \
        + ([phi] if tune_transform else [])
    opt = torch.optim.Adam(params, lr=lr)

    bar = _Progress(steps, progress, "finetune")
    P = _Problem(tuned, images, masks, lp, beta, 1, [], lr, lr, None, bar)

    def data_loss() -> dict[str, Tensor]:
        # photo-frame L_mask(T_φ⁻¹(G_θ(z, c)), y, m) per image [B] (eq. 6's data term)
        return P.photo_loss(P.render(z, c), phi)

    def penalty() -> Tensor:
        return sum(((p - p0) ** 2).sum() for p, p0 in zip(theta, theta0))

    loss_hist, pen_hist = [], []
    with torch.no_grad():
        before = {k: v.detach().clone() for k, v in data_loss().items()}
    stopped, taken = "steps", 0
    try:
        if float(before["total"].max()) < target_loss:
            stopped = "target"
        for _ in range(steps if stopped == "steps" else 0):
            opt.zero_grad(set_to_none=True)
            f = data_loss()["total"]
            pen = penalty()
            (f.sum() + weight_decay_to_init * pen).backward()
            opt.step()
            taken += 1
            if tune_latent:
                with torch.no_grad():
                    z.clamp_(-tuned.truncation, tuned.truncation)
            worst = float(f.detach().max())
            loss_hist.append(worst)
            pen_hist.append(float(weight_decay_to_init * pen.detach()))
            bar.update(1, loss=f"{worst:.4f}")
            if worst < target_loss:
                stopped = "target"
                break
    finally:
        bar.close()

    for p in theta:
        p.requires_grad_(False)
    with torch.no_grad():
        out = P.render(z, c)
        after, inv, _ = P.photo_loss(out, phi, with_images=True)
        dist = math.sqrt(float(penalty()))
    settings = dict(steps=steps, lr=lr, weight_decay_to_init=weight_decay_to_init, target_loss=target_loss,
                    tune_latent=tune_latent, tune_transform=tune_transform, beta=beta,
                    best_seed=result.best_seed.tolist(), parameters=sum(p.numel() for p in theta))
    return FinetuneResult(
        generator=tuned, z=z.detach(), c=None if c is None else c.detach(), phi=phi.detach(),
        generated=out.detach(), inverted=inv.detach(),
        losses_before=before, losses={k: v.detach() for k, v in after.items()},
        history={"loss": torch.tensor(loss_hist), "penalty": torch.tensor(pen_hist)},
        theta_distance=dist, steps=taken, stopped=stopped, settings=settings,
        seconds=time.perf_counter() - t_start)

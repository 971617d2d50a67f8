"""Projection throughput (SPEC C1–C2; seed 003 Algorithm 1): images per hour at the paper's
budget, ``latentx.projection.project`` against a pix2latent-style baseline written here.

Budget (``latentx.cli.project.PAPER_BUDGET``): 18 seeds; the transform search, 30 CMA
generations over φ = [s_x, s_y, t_x, t_y, γ] of 30 Adam steps each; BasinCMA over z, 30 CMA
generations of 30 Adam steps, the last one 300.

Same generator and targets for both: ``latentx.models.load("face-dcgan")`` (64 × 64, z_dim 100)
and crops of ``skimage.data.astronaut()`` around ``ASTRONAUT_FACE_BOX`` (context 2, resized to a
128 × 128 working frame, exactly as ``latentx demo`` prepares its target); extra images for the
batched rows use the same box moved by a few pixels.

The baseline, :class:`Pix2LatentStyle`, projects one image at a time the way pix2latent
(github.com/minyoungg/pix2latent, ``TransformBasinCMAOptimizer`` then BasinCMA) structures
it: one pycma ``CMAEvolutionStrategy`` per search, ``ask()`` → a Python list of φ (or z) per
seed, a Python list of latents per seed stacked for the generator, each seed's target
warped by ``F.affine_grid`` + plain bilinear ``F.grid_sample`` (unfiltered), the ``lpips``
package's modules called on (candidates, target expanded to the batch) at every step — the
target's backbone features recomputed on every call — per-seed losses gathered into a
Python list of floats for ``tell``. Stage 1 draws z around the EMA of the best latents with
pix2latent's shrinking noise and per-sample standardisation, Adam on z, and tells CMA the
photo-frame loss of the inverse-warped generation; stage 2 tells the sampled z with their
post-descent losses (pix2latent's default); |z|∞ ≤ 2 after every step; β = 10, lr 0.05,
masks 1 inside the box and 0.3 outside — latentx's defaults.

It does the same generator work per generation as ``project()``, at the same image sizes:
per Adam step one generator forward + backward and one LPIPS pass on the candidates at
64 × 64 over the 18 seeds; per generation one more evaluation at the descended latents
(best-so-far tracking) and, in stage 1, one more generator forward and an LPIPS at 128 × 128
in the photo frame. What it does differently is what is measured: pycma per image instead of
one batched CMA for all images; the targets' LPIPS features recomputed on every call (latentx
encodes them once per generation, and the photo once per call); per-seed Python lists
instead of batched tensors; one image per call. Where it differs from
pix2latent's code, on purpose, so that both compute the same loss:
  * the masked L1 is divided by C·Σm (latentx's SPEC C1), not Σm;
  * the mask weights each LPIPS layer's spatial mean at that layer's resolution (seed 003
    eq. 7, resized by area as latentx does), instead of pix2latent's mask on the ``spatial=True`` map upsampled
    to the input: the lpips package's own modules (``scaling_layer``, ``net``,
    ``normalize_tensor``, ``lins``) run as its ``forward`` runs them, with the mask in the
    spatial mean; the cost is that of ``lpips.LPIPS.forward``;
  * the LPIPS linear weights are frozen (pix2latent leaves them requiring grad, which adds
    their tiny weight gradients to every backward);
  * φ samples are clamped to latentx's bounds, and the photo-frame mask is latentx's m'
    (m on the pixels the generated frame covers, plus the object pixels everywhere).
Differences that remain: the baseline's warps are unfiltered (latentx low-pass filters
shrinking warps, once per generation); its CMA is pycma's (float64 numpy, converted to
float32 tensors every generation) with its own random streams, so the two projections are
not numerically identical — only their losses on the same inputs are.

Before timing, :func:`check_agreement` compares the two losses on the same inputs (a fixed z
batch and a φ batch that does not shrink, so the filtered warp equals the bilinear one):
the generator-frame loss and the photo-frame loss agree to 1e-4 relative or nothing is timed.
The LPIPS weights are made identical by loading latentx's default random-backbone module's
state dict (``default_lpips("alex")``: no ImageNet backbone offline) into the lpips module.

Measurement (default): images/hour is COMPUTED from measured per-generation times times the
budget's counts, not from one projection run end to end:

    images/hour = B · 3600 / (30 · t_transform + 29 · t_latent + t_last)

Each implementation (latentx with B = 1 and B = 4 images per ``project()`` call; the
baseline, one image per call) is run end to end on the full-size problem (18 seeds, 30 Adam
steps per generation) with few generations — base (1 transform generation, 2 latent
generations, the last of 30 steps), then base plus ``gens`` transform generations, plus
``gens`` latent generations, plus ``steps`` Adam steps in the last generation — and the
per-generation costs are the differences of the wall times over the increments (each
configuration's fastest of ``repeats`` runs, the configurations interleaved; on a shared
machine other jobs only add time): everything outside the generations (setup, the final
evaluation) cancels out. t_last = t_latent + 270 · t_step (the last generation is a latent
generation with 300 Adam steps instead of 30). That fixed per-call cost is shown as
"s other/call", not counted.

Threads: ``--threads 1`` on a loaded machine. With torch's 2 OpenMP threads on 2 cores
shared with other jobs, a thread that waits on a descheduled sibling made one small run
~40× slower (8 s instead of 0.2 s) and erratic; the rows say which thread count ran. ``--full`` instead runs the
paper's whole budget once per implementation and reports images/hour from the wall time.

    python -m latentx.benchmarks.bench_projection [--quick] [--full] [--repeats N] [--device cuda]
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from latentx import models
from latentx.benchmarks.bench_lpips import _lpips_package
from latentx.benchmarks.timing import assert_agree, format_table, synchronize
from latentx.cli.project import ASTRONAUT_FACE_BOX, PAPER_BUDGET, array_to_tensor, crop_transform
from latentx.lpips import resize_mask
from latentx.projection import default_lpips, invert_images, masked_losses, masks_from_boxes, \
    project, transform_images
from latentx.transforms import SpatialTransform

BETA = 10.0
LR = 0.05
BACKGROUND = 0.3
TRANSFORM_SIGMA = 0.1
WORK_SIZE = 128
CONTEXT = 2.0
BATCH = 4
# --quick and the test: the paper's generation counts with 2 seeds and 1 Adam step per
# generation (10 in the last), 2 images per latentx call; seconds in all.
TINY_BUDGET = dict(seeds=2, meta_steps=30, grad_steps=1, last_grad_steps=10,
                   transform_meta_steps=30, transform_grad_steps=1)
# Box offsets (pixels) for the images after the first: the face box moved a little.
OFFSETS = [(0, 0), (8, 0), (0, 8), (-8, -8), (8, 8), (-8, 0), (0, -8), (8, -8)]


# --- targets --------------------------------------------------------------------------------

def astronaut_targets(n: int, device: torch.device, work_size: int = WORK_SIZE,
                      context: float = CONTEXT) -> tuple[Tensor, list[list[float]]]:
    """``n`` working crops [n, 3, ws, ws] in [−1, 1] of skimage's astronaut around
    ASTRONAUT_FACE_BOX (moved by OFFSETS) and each crop's box (x0, y0, x1, y1) in crop pixels,
    prepared as ``latentx.cli.project.run_projection`` prepares its target."""
    from skimage import data

    if not 1 <= n <= len(OFFSETS):
        raise ValueError(f"astronaut_targets: n must be in [1, {len(OFFSETS)}], got {n}")
    photo = array_to_tensor(data.astronaut(), "skimage.data.astronaut()").to(device)
    H, W = photo.shape[1:]
    crops, boxes = [], []
    for dx, dy in OFFSETS[:n]:
        x0, y0, x1, y1 = (float(v) for v in ASTRONAUT_FACE_BOX)
        x0, x1, y0, y1 = x0 + dx, x1 + dx, y0 + dy, y1 + dy
        kappa, (left, top, side) = crop_transform((x0, y0, x1, y1), (H, W), context)
        crops.append(kappa.apply(photo[None], (work_size, work_size), padding_mode="border").clamp(-1, 1))
        sc = work_size / side
        boxes.append([max(0.0, (x0 - left) * sc), max(0.0, (y0 - top) * sc),
                      min(float(work_size), (x1 - left) * sc), min(float(work_size), (y1 - top) * sc)])
    return torch.cat(crops), boxes


# --- the baseline ---------------------------------------------------------------------------

def lpips_package_module(device: torch.device):
    """An ``lpips.LPIPS(net='alex', pnet_rand=True)`` holding latentx's default LPIPS weights
    (the random backbone fixed by seed 0 and the package's linear weights), frozen, eval."""
    lpips = _lpips_package()
    if lpips is None:
        raise ImportError("bench_projection needs the `lpips` package (pip install --no-deps lpips)")
    ours, _ = quiet(lambda: default_lpips("alex", device))
    # (torchvision warns that lpips passes its deprecated `pretrained` argument)
    lp = quiet(lambda: lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False))
    lp.load_state_dict(ours.state_dict())
    return lp.to(device).eval().requires_grad_(False)


def masked_lpips(lp, x: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """[N] masked LPIPS with the lpips package's modules, both inputs through the backbone on
    every call (as ``lpips.LPIPS.forward``); each layer's spatial mean weighted by the mask
    resized to the layer (seed 003 eq. 7) by area, as latentx does (``latentx.lpips.resize_mask``:
    bilinear resizing loses small masks at deep layers). x, y [N, 3, H, W], mask [N, 1, H, W]."""
    import lpips

    f0, f1 = lp.net.forward(lp.scaling_layer(x)), lp.net.forward(lp.scaling_layer(y))
    total = 0
    for k in range(lp.L):
        d = lp.lins[k]((lpips.normalize_tensor(f0[k]) - lpips.normalize_tensor(f1[k])) ** 2)
        m = resize_mask(mask, d.shape[2:])
        total = total + (d * m).sum((1, 2, 3)) / m.sum((1, 2, 3))
    return total


def baseline_loss(lp, generated: Tensor, target: Tensor, mask: Tensor, beta: float = BETA) -> Tensor:
    """[N] Σ m⊙|ŷ − y| / (C·Σm) + β·masked LPIPS, target and mask already one per row."""
    c = generated.shape[1]
    l1 = (mask * (generated - target).abs()).sum((1, 2, 3)) / (mask.sum((1, 2, 3)) * c)
    return l1 + beta * masked_lpips(lp, generated, target, mask)


def _theta(phi: Sequence[float], device: torch.device) -> Tensor:
    sx, sy, tx, ty = (float(v) for v in phi[:4])
    return torch.tensor([[[sx, 0.0, tx], [0.0, sy, ty]]], device=device)


def _warp(image: Tensor, phi: Sequence[float], size: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Plain bilinear F.grid_sample of image [1, C, H, W] by ψ = φ[:4] at ``size``, and the
    sampling grid [1, h, w, 2]."""
    grid = F.affine_grid(_theta(phi, image.device), [1, image.shape[1], *size], align_corners=False)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False), grid


def _inverse(phi: Sequence[float]) -> list[float]:
    sx, sy, tx, ty, g = (float(v) for v in phi)
    return [1 / sx, 1 / sy, -tx / sx, -ty / sy, -g]


class Pix2LatentStyle:
    """BasinCMA with the transform search, one image at a time, pix2latent's way (see the
    module docstring): pycma, per-seed Python lists, the lpips package, F.grid_sample."""

    def __init__(self, generator, lp, *, beta: float = BETA, lr: float = LR,
                 background: float = BACKGROUND, transform_sigma: float = TRANSFORM_SIGMA):
        self.G, self.lp = generator, lp
        self.beta, self.lr, self.background, self.sigma = beta, lr, background, transform_sigma
        self.T = generator.truncation
        self.d = generator.z_dim
        self.gen_size = tuple(generator.resolution)
        self.device = generator.parameter_like().device

    def loss(self, z: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        return baseline_loss(self.lp, self.G(z), target, mask, self.beta)

    def descend(self, zs: list, target: Tensor, mask: Tensor, steps: int) -> tuple[list, list]:
        """Adam from the per-seed latents ``zs``; the best latent and loss per seed (lists)."""
        z = torch.stack(zs).clamp(-self.T, self.T).requires_grad_(True)
        opt = torch.optim.Adam([z], lr=self.lr)
        best_f = [math.inf] * len(zs)
        best_z = [zi.detach().clone() for zi in z]

        def keep(f: Tensor) -> None:
            for i, fi in enumerate(f.tolist()):
                if fi < best_f[i]:
                    best_f[i], best_z[i] = fi, z[i].detach().clone()

        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            f = self.loss(z, target, mask)
            f.sum().backward()
            keep(f.detach())
            opt.step()
            with torch.no_grad():
                z.clamp_(-self.T, self.T)
        with torch.no_grad():
            keep(self.loss(z, target, mask))
        return best_z, best_f

    def photo_loss(self, zs: list, phis: list, image: Tensor, mask: Tensor) -> list:
        """The photo-frame loss per seed: T_φ⁻¹(G(z)) against the photo (expanded), with m'."""
        H, W = image.shape[2:]
        with torch.no_grad():
            out = self.G(torch.stack(zs))
            inv, valid = [], []
            for i, phi in enumerate(phis):
                inv_phi = _inverse(phi)
                x, grid = _warp(out[i:i + 1], inv_phi, (H, W))
                inv.append(x + inv_phi[4])
                valid.append((grid.abs() <= 1).all(-1)[:, None])
            inv, valid = torch.cat(inv), torch.cat(valid)
            m = mask.expand(len(zs), -1, -1, -1)
            m_eff = torch.where(valid | (m >= 0.5), m, torch.zeros_like(m))
            f = baseline_loss(self.lp, inv, image.expand(len(zs), -1, -1, -1), m_eff, self.beta)
        return f.tolist()

    def project(self, image: Tensor, box: Sequence[float], *, seeds: int, meta_steps: int, grad_steps: int,
                last_grad_steps: int, transform_meta_steps: int, transform_grad_steps: int,
                seed: int = 0) -> dict:
        """Project ``image`` [3, H, W] (object in ``box``): φ*, the latents and losses per seed."""
        import cma

        S, d, dev = seeds, self.d, self.device
        image = image[None].to(dev)
        H, W = image.shape[2:]
        mask = masks_from_boxes([box], (H, W), background=self.background, device=dev)
        rng = torch.Generator().manual_seed(seed)
        randn = lambda *shape: torch.randn(*shape, generator=rng).to(dev)  # noqa: E731

        # stage 1: CMA over φ, from ψ₀ (the box against the generator's object box), γ₀ = 0
        phi0 = SpatialTransform.from_boxes(mask, self.G.object_box).params[0].tolist() + [0.0]
        lo = [0.1 * phi0[0], 0.1 * phi0[1], -3.0, -3.0, -1.0]
        hi = [10.0 * phi0[0], 10.0 * phi0[1], 3.0, 3.0, 1.0]
        es = cma.CMAEvolutionStrategy(phi0, self.sigma, {"popsize": S, "seed": seed + 1, "verbose": -9})
        vp_mean = None
        for it in range(transform_meta_steps):
            phis = [np.clip(p, lo, hi) for p in es.ask()]
            if vp_mean is None:
                zs = [randn(d) for _ in range(S)]
            else:
                z_sigma = 1.0 - it / transform_meta_steps
                zs = [vp_mean + z_sigma * randn(d) for _ in range(S)]
                zs = [(z - z.mean()) / z.std() for z in zs]
            targets, masks = [], []
            with torch.no_grad():
                for phi in phis:
                    targets.append(_warp(image + float(phi[4]), phi, self.gen_size)[0])
                    masks.append(_warp(mask, phi, self.gen_size)[0].clamp(1e-4, 1.0))
            zs, _ = self.descend(zs, torch.cat(targets), torch.cat(masks), transform_grad_steps)
            losses = self.photo_loss(zs, phis, image, mask)
            es.tell(phis, losses)
            best = zs[int(np.argmin(losses))]
            vp_mean = (torch.stack(zs).mean(0) if vp_mean is None else vp_mean) * 0.5 + best * 0.5
        phi_star = np.clip(es.mean, lo, hi).tolist()

        # stage 2: BasinCMA over z with φ* fixed; CMA told the sampled z, post-descent losses
        with torch.no_grad():
            target = _warp(image + phi_star[4], phi_star, self.gen_size)[0].expand(S, -1, -1, -1)
            tmask = _warp(mask, phi_star, self.gen_size)[0].clamp(1e-4, 1.0).expand(S, -1, -1, -1)
        es = cma.CMAEvolutionStrategy(np.zeros(d), 1.0, {"popsize": S, "seed": seed + 2, "verbose": -9,
                                                         "bounds": [-self.T, self.T]})
        for it in range(meta_steps):
            last = it == meta_steps - 1
            xs = es.ask()
            zs = [torch.tensor(x, dtype=torch.float32, device=dev) for x in xs]
            zs, losses = self.descend(zs, target, tmask, last_grad_steps if last else grad_steps)
            if not last:
                es.tell(xs, losses)
        return {"phi": phi_star, "z": torch.stack(zs), "losses": losses}


# --- agreement ------------------------------------------------------------------------------

def check_agreement(generator, lp_package, images: Tensor, boxes: list, *, seeds: int = 6,
                    rtol: float = 1e-4) -> float:
    """The baseline's loss against latentx's on the same inputs; raises when they disagree.

    A fixed z batch and φ batch with s_x, s_y ∈ [0.3, 0.5] (the 128 → 64 warp does not shrink,
    so latentx's filtered warp is bilinear) for the generator-frame loss (``_Targets`` +
    ``gen_loss`` of ``project()``), and s = 0.5 exactly (neither direction shrinks) for the
    photo-frame loss (``photo_loss``). Returns the largest relative difference."""
    lp, _ = quiet(lambda: default_lpips("alex", images.device))
    g = torch.Generator().manual_seed(0)
    dev = images.device
    image = images[:1]
    H, W = image.shape[2:]
    mask = masks_from_boxes(boxes[:1], (H, W), background=BACKGROUND, device=dev)
    z = (torch.rand(seeds, generator.z_dim, generator=g) * 4 - 2).to(dev)
    scale = torch.rand(seeds, 2, generator=g) * 0.2 + 0.3
    phi = torch.cat([scale, torch.rand(seeds, 2, generator=g) * 0.6 - 0.3,
                     torch.rand(seeds, 1, generator=g) * 0.4 - 0.2], 1).to(dev)
    size = tuple(generator.resolution)
    base = Pix2LatentStyle(generator, lp_package)
    worst = 0.0
    with torch.no_grad():
        out = generator(z)
        # generator frame: L_mask(G(z), T_φ(y), T_φ(m))
        t_ours = transform_images(image.expand(seeds, -1, -1, -1), phi, size)
        m_ours = SpatialTransform(phi[:, :4]).apply_mask(mask.expand(seeds, -1, -1, -1), size).clamp(1e-4, 1.0)
        ours = quiet(lambda: masked_losses(out, t_ours, m_ours, lp, lp.encode(t_ours), BETA)["total"])
        phis = phi.tolist()
        t_base = torch.cat([_warp(image + p[4], p, size)[0] for p in phis])
        m_base = torch.cat([_warp(mask, p, size)[0].clamp(1e-4, 1.0) for p in phis])
        theirs = baseline_loss(lp_package, out, t_base, m_base)
        assert_agree(theirs, ours, "baseline generator-frame loss", rtol=rtol, atol=1e-6)
        worst = max(worst, float(((theirs - ours).abs() / ours.abs()).max()))
        # photo frame: L_mask(T_φ⁻¹(G(z)), y, m')
        phi[:, :2] = 0.5
        inv, valid = invert_images(out, phi, (H, W))
        m = mask.expand(seeds, -1, -1, -1)
        m_eff = torch.where(valid | (m >= 0.5), m, torch.zeros_like(m))
        ours = quiet(lambda: masked_losses(inv, image.expand(seeds, -1, -1, -1), m_eff, lp, None, BETA)["total"])
        theirs = torch.tensor(base.photo_loss(list(z), phi.tolist(), image, mask), device=dev)
        assert_agree(theirs, ours, "baseline photo-frame loss", rtol=rtol, atol=1e-6)
        worst = max(worst, float(((theirs - ours).abs() / ours.abs()).max()))
    return worst


# --- timing ---------------------------------------------------------------------------------

def quiet(fn: Callable):
    # latentx warns once that its LPIPS backbone is random (no ImageNet checkpoint offline),
    # LPIPS that brightness-shifted images leave [-1, 1], pycma about its options,
    # torchvision about lpips' use of `pretrained`.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


def describe_budget(budget: dict) -> str:
    """'18 seeds, 30x30 + 30x30 (last 300)': seeds, the transform search's generations x
    steps, BasinCMA's generations x steps and its last generation's steps."""
    return (f"{budget['seeds']} seeds, {budget['transform_meta_steps']}x{budget['transform_grad_steps']} + "
            f"{budget['meta_steps']}x{budget['grad_steps']} (last {budget['last_grad_steps']})")


def _runners(generator, lp_package, images: Tensor, boxes: list) -> list[tuple[str, int, Callable[[dict], object]]]:
    """(variant, images per call, run(budget)) for the baseline and latentx at B = 1 and B = all."""
    base = Pix2LatentStyle(generator, lp_package)

    def latentx(b: int):
        return ("latentx project()", b,
                lambda budget: quiet(lambda: project(generator, images[:b], boxes=boxes[:b], method="basincma",
                                                     transform=True, seed=0, progress=False, **budget)))

    runners = [("pix2latent-style (pycma, lpips, grid_sample)", 1,
                lambda budget: quiet(lambda: base.project(images[0], boxes[0], seed=0, **budget))),
               latentx(1)]
    return runners + ([latentx(images.shape[0])] if images.shape[0] > 1 else [])


def _wall(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def generation_costs(run_budget: Callable[[dict], object], budget: dict, device: torch.device, *,
                     gens: int, steps: int, repeats: int) -> dict[str, float]:
    """Seconds per call of: one transform generation, one latent generation, the last
    generation at ``budget["last_grad_steps"]`` steps, and the rest of the call, from wall-time
    differences of short runs (see the module docstring)."""
    g = budget["grad_steps"]
    base = dict(budget, transform_meta_steps=1, meta_steps=2, last_grad_steps=g)
    configs = {"base": base, "transform": dict(base, transform_meta_steps=1 + gens),
               "latent": dict(base, meta_steps=2 + gens), "steps": dict(base, last_grad_steps=g + steps)}
    run_budget(base)  # warm-up: first-call allocations, pycma / LPIPS set-up
    times: dict[str, list] = {k: [] for k in configs}
    for _ in range(repeats):
        for name, cfg in configs.items():
            times[name].append(_wall(lambda: run_budget(cfg), device))
    # The least-disturbed run of each configuration: on a shared machine other jobs only
    # ever add time.
    t = {k: min(v) for k, v in times.items()}
    t_transform = (t["transform"] - t["base"]) / gens
    t_latent = (t["latent"] - t["base"]) / gens
    t_step = (t["steps"] - t["base"]) / steps
    return {"transform": t_transform, "latent": t_latent,
            "last": t_latent + (budget["last_grad_steps"] - g) * t_step,
            "other": t["base"] - t_transform - 2 * t_latent}


def run(device: torch.device, quick: bool, repeats: int, *, full: bool = False, batch: Optional[int] = None,
        gens: Optional[int] = None, steps: Optional[int] = None, threads: Optional[int] = None) -> list[dict]:
    """Rows: each implementation × images per call. ``quick``: TINY_BUDGET, 2 images, one run
    per configuration (seconds); otherwise PAPER_BUDGET, at most 3 runs per configuration (a
    repeat is minutes on a CPU). ``full``: whole runs end to end instead. ``threads``: torch's
    CPU threads for the run (restored after); default unchanged, but 1 for ``quick``, whose
    runs are a smoke test and ran ~5× slower on 2 threads on the loaded 2-core machine."""
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads or (1 if quick else old_threads))
    try:
        return _run(device, quick, repeats, full, batch, gens, steps)
    finally:
        torch.set_num_threads(old_threads)


def _run(device, quick, repeats, full, batch, gens, steps) -> list[dict]:
    budget = TINY_BUDGET if quick else PAPER_BUDGET
    repeats = 1 if quick else max(1, min(repeats, 3))
    batch = batch or (2 if quick else BATCH)
    gens = gens or (1 if quick else 2)
    steps = steps or (2 if quick else 60)
    generator = models.load("face-dcgan", device=device)
    lp_package = lpips_package_module(device)
    images, boxes = astronaut_targets(batch, device)
    rel = check_agreement(generator, lp_package, images, boxes)
    name = "tiny (quick)" if quick else "paper"
    case = (f"face-dcgan 64x64, {WORK_SIZE}x{WORK_SIZE} astronaut crops, {name} budget: {describe_budget(budget)}, "
            f"{device.type} {torch.get_num_threads()} thread(s)")
    rows = []
    for variant, b, run_budget in _runners(generator, lp_package, images, boxes):
        row = {"benchmark": "projection", "case": case, "variant": variant, "images/call": b}
        if full:
            wall = _wall(lambda: run_budget(budget), device)
            row.update({"s/image": wall / b, "images/hour": 3600 * b / wall,
                        "note": "whole budget end to end, wall time"})
        else:
            c = generation_costs(run_budget, budget, device, gens=gens, steps=steps, repeats=repeats)
            per_call = (budget["transform_meta_steps"] * c["transform"]
                        + (budget["meta_steps"] - 1) * c["latent"] + c["last"])
            row.update({"s/transform gen": c["transform"], "s/latent gen": c["latent"],
                        "s last gen": c["last"], "s other/call": c["other"],
                        "s/image": per_call / b,
                        "images/hour": 3600 * b / per_call if per_call > 0 else float("nan"),
                        "note": "computed: measured per-generation times x the budget's counts"})
        rows.append(row)
    base_rate = rows[0]["images/hour"]
    for row in rows:
        row["x baseline"] = row["images/hour"] / base_rate
    rows[0]["note"] += f"; loss agrees with latentx's to {rel:.1e} rel (checked before timing)"
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse
    import json

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="a tiny budget, seconds in all")
    p.add_argument("--full", action="store_true",
                   help="run the whole budget end to end per implementation (CPU: tens of minutes)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per configuration (median)")
    p.add_argument("--batch", type=int, default=None, help=f"images per latentx call (default {BATCH}; quick 2)")
    p.add_argument("--gens", type=int, default=None, help="generations added per difference (default 2)")
    p.add_argument("--steps", type=int, default=None, help="last-generation steps added (default 60)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default torch's; on a loaded machine 1 avoids OpenMP "
                        "threads waiting on descheduled siblings)")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    threads = args.threads or torch.get_num_threads()
    print(f"torch {torch.__version__} | {device} ({name}) | {threads} threads")
    rows = run(device, args.quick, args.repeats, full=args.full, batch=args.batch, gens=args.gens,
               steps=args.steps, threads=args.threads)
    print(format_table(rows))
    if args.full:
        print("images/hour: from the wall time of the whole budget, run end to end.")
    else:
        print("images/hour: COMPUTED from measured per-generation times x the budget's counts "
              "(transform gens x s/transform gen + (latent gens - 1) x s/latent gen + s last gen), "
              "not a whole run; s other/call (setup, final evaluation) is not counted.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

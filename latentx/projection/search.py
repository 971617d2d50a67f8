"""The two search stages of transformation-aware projection (SPEC C2; seed 003, Algorithm 1)
and :func:`project`, which runs them: stage 1 searches the transform φ, stage 2 the latent.
The algorithm, the frames and the losses are described in :mod:`latentx.projection`.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from latentx.cma import BatchedCMAES
from latentx.lpips import LPIPS
from latentx.models import Generator
from latentx.projection.objective import (check_lpips_size, default_lpips, masks_from_boxes,
                                          phi_transform, transform_images)
from latentx.projection.fast import PRECISIONS, fast_generator as make_fast_generator
from latentx.projection.problem import NonFiniteError, Problem, Progress, SeedSchedule, Targets
from latentx.projection.refine import refine_best_seeds
from latentx.projection.results import ProjectionResult
from latentx.transforms import SpatialTransform

__all__ = ["METHODS", "project"]

METHODS = ("adam", "lbfgs", "cma", "cma+adam", "basincma", "encoder", "hybrid")
_NEEDS_ENCODER = ("encoder", "hybrid")
# methods whose latent stage ends in one Adam run from S points: target_loss and halving act on it
_SCHEDULED = ("adam", "hybrid", "cma+adam", "basincma")


# --- argument checks ------------------------------------------------------------------------

def check_images(images: Any, gen_size: Sequence[int], who: str = "project") -> Tensor:
    """images [B, 3, H, W] (or [3, H, W]) floating point in [−1, 1], at least the generator's
    h × w; returned clamped to [−1, 1]."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{who}: images must be a tensor [B, 3, H, W] in [-1, 1], got {type(images).__name__}")
    if images.dim() == 3:
        images = images[None]
    if images.dim() != 4 or images.shape[1] != 3 or images.shape[0] < 1:
        raise ValueError(f"{who}: images must be [B, 3, H, W] (RGB), got shape {list(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"{who}: images must be floating point in [-1, 1], got {images.dtype} "
                        "(convert uint8 photos with x / 127.5 - 1)")
    if not bool(images.isfinite().all()):
        raise ValueError(f"{who}: images contain NaN or inf")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1 - 1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"{who}: images must lie in [-1, 1], got values in [{lo:.4g}, {hi:.4g}] "
                         "(map [0, 1] images with 2 * x - 1 and [0, 255] ones with x / 127.5 - 1)")
    h, w = images.shape[2:]
    gh, gw = gen_size
    if h < gh or w < gw:
        raise ValueError(f"{who}: images are {h}×{w}, smaller than the generator's {gh}×{gw} output; "
                         f"pass images of at least {gh}×{gw} pixels")
    return images.clamp(-1, 1)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"project: {name} must be an integer >= {minimum}, got {value!r}")
    return value


def _rank_last(P: Problem, f: Tensor, step: int, *, step_name: str = "generation") -> Tensor:
    """f [B, S] with its non-finite entries (samples already reported and dropped) made worse
    than every finite one of their image, so CMA ranks them last; an image with no finite
    sample is an error."""
    finite = f.isfinite()
    none = ~finite.any(1)
    if bool(none.any()):
        b = int(none.nonzero()[0])
        from latentx.projection.problem import STAGE_NAMES

        stage = STAGE_NAMES[P.stage]
        raise NonFiniteError(f"project: every one of the {P.S} samples of image {b} was non-finite in the "
                             f"{stage} at {step_name} {step}; nothing left to rank",
                             stage=stage, image=b, seed=None, step=step, what="every sample")
    worst = torch.where(finite, f, torch.full_like(f, -math.inf)).amax(1, keepdim=True)
    return torch.where(finite, f, worst + worst.abs() + 1.0)


def _standardise(z: Tensor) -> Tensor:
    return (z - z.mean(-1, keepdim=True)) / z.std(-1, keepdim=True).clamp_min(1e-8)


# --- stage 1: the transform -----------------------------------------------------------------

def search_transform(P: Problem, phi0: Tensor, *, meta_steps: int, grad_steps: int, sigma: float,
                     brightness: bool, propagate: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Stage 1: CMA over φ (one instance per image, popsize S), ``grad_steps`` Adam steps on
    z per sample against T_φ(y), CMA told the photo-frame loss. Returns φ* (the CMA mean)
    [B, 5], the per-generation best / mean loss told, [B, meta_steps] each, and the last
    generation's descended latents [N, d] (row b·S + s: image b's sample s)."""
    P.stage = "transform"
    B, S, d = P.B, P.S, P.d
    k = 5 if brightness else 4
    cma = BatchedCMAES(phi0[:, :k].clone(), sigma, popsize=S,
                       generator=torch.Generator(device=phi0.device).manual_seed(0))
    scale0 = phi0[:, :2]
    # keep the samples usable: scales positive and within a factor 10 of φ₀'s, shifts within
    # a few frames, brightness within ±1
    lo = torch.cat([scale0 * 0.1, torch.full_like(scale0, -3.0)], 1)
    hi = torch.cat([scale0 * 10.0, torch.full_like(scale0, 3.0)], 1)
    if k == 5:
        lo = torch.cat([lo, torch.full_like(lo[:, :1], -1.0)], 1)
        hi = torch.cat([hi, torch.full_like(hi[:, :1], 1.0)], 1)
    ema: Optional[Tensor] = None
    best_hist, mean_hist = [], []
    for it in range(meta_steps):
        phi = cma.ask(noise=P.randn(S, k))                               # [B, S, k]
        phi = torch.maximum(torch.minimum(phi, hi[:, None]), lo[:, None])
        phi_full = phi if k == 5 else torch.cat([phi, torch.zeros_like(phi[..., :1])], -1)
        phi_rows = phi_full.reshape(B * S, 5)
        znoise = P.randn(S, d).reshape(B * S, d).to(P.dtype)
        if ema is None or not propagate:
            z0 = znoise
        else:
            z_sigma = 1.0 - it / meta_steps
            z0 = _standardise(ema[P.rows] + z_sigma * znoise)
        tg = Targets.build(P, phi_rows, P.rows)
        z, c, f, died, out = P.adam(z0, P.c_rows(), tg, grad_steps, [], generation=it, keep_images=True,
                                    sample=True)
        with torch.no_grad():
            g_inv = P.photo_loss(out, phi_rows)["total"]
        ok = ~died & f.isfinite()
        bad = ok & ~g_inv.isfinite()
        if bool(bad.any()):
            P.nonfinite(bad.nonzero().flatten(), "photo-frame loss", it, step_name="generation", sample=True)
        ok &= g_inv.isfinite()
        g_inv = torch.where(ok, g_inv, torch.full_like(g_inv, math.inf)).reshape(B, S)
        told = _rank_last(P, g_inv.to(torch.float64), it)
        cma.tell(phi, told)
        shown = torch.where(g_inv.isfinite(), g_inv, torch.full_like(g_inv, math.nan))
        best_hist.append(torch.where(g_inv.isfinite(), g_inv, torch.full_like(g_inv, math.inf)).min(1).values)
        mean_hist.append(shown.nanmean(1))
        # EMA (decay 0.5) of the best latent per image (seed 003 Appendix D)
        zb = z.reshape(B, S, d)
        best = zb[torch.arange(B, device=zb.device), told.argmin(1)]
        ema = (zb.mean(1) if ema is None else ema) * 0.5 + best * 0.5
    if bool(cma.stopped.any()):
        stops = cma.stop()
        b = int(cma.stopped.nonzero()[0])
        if "nonfinite" in stops[b]:  # cannot happen after _rank_last; a guard against silent φ₀
            raise NonFiniteError(f"project: the transform CMA of image {b} stopped on a non-finite value",
                                 stage="transform search", image=b, seed=None, step=None, what="CMA state")
    mean = torch.maximum(torch.minimum(cma.mean, hi), lo)
    phi_star = mean if k == 5 else torch.cat([mean, torch.zeros_like(mean[:, :1])], 1)
    return phi_star, torch.stack(best_hist, 1), torch.stack(mean_hist, 1), z.detach()


# --- stage 2: the latent --------------------------------------------------------------------

def search_latent(P: Problem, method: str, phi_star: Tensor, *, meta_steps: int, grad_steps: int,
                  last_grad_steps: int, adam_steps: int, lbfgs_steps: int, lbfgs_lr: float, cma_steps: int,
                  tell: str, encoder: Optional[Callable[[Tensor], Tensor]], encoder_noise: float,
                  z_init: Optional[Tensor], schedule: Optional[SeedSchedule] = None,
                  encoder_seeds: Optional[int] = None) -> tuple[Tensor, Optional[Tensor], Tensor, Tensor]:
    """Stage 2 with φ* fixed. Returns z [N, d], c [N, c_dim] or None, history [B, S, T] and
    dropped [N] bool (rows stopped by a non-finite value, ``on_nonfinite="drop"``).
    ``schedule`` (halving, target) acts on the method's final Adam run: all of ``adam`` /
    ``hybrid``, the Adam part of ``cma+adam``, BasinCMA's last generation."""
    P.stage = "latent"
    B, S, d, T, N = P.B, P.S, P.d, P.T, P.N
    phi_rows = phi_star[P.rows]
    tg = Targets.build(P, phi_rows, P.rows)
    hist: list = []
    dropped = torch.zeros(N, dtype=torch.bool, device=P.device)
    enc_mean = None
    if encoder is not None:
        with torch.no_grad():
            per_image = transform_images(P.images, phi_star.to(P.dtype), P.gen_size)
            e = encoder(per_image)
        if not isinstance(e, Tensor) or e.shape[0] != B or e[0].numel() != d:
            shape = list(e.shape) if isinstance(e, Tensor) else type(e).__name__
            raise ValueError(f"project: encoder must map images [{B}, 3, h, w] to latents [{B}, {d}], got {shape}")
        e = e.reshape(B, d).to(device=P.device, dtype=torch.float64)
        bad = ~e.isfinite().all(1)
        if bool(bad.any()):
            b = int(bad.nonzero()[0])
            raise NonFiniteError(f"project: non-finite encoder output in the latent search (image {b})",
                                 stage="latent search", image=b, seed=None, step=0, what="encoder output")
        enc_mean = e.clamp(-T, T)

    def start_points() -> Tensor:
        if z_init is not None:
            return z_init.reshape(N, d).to(P.dtype).clamp(-T, T)
        noise = P.randn(S, d)
        if enc_mean is not None:
            # z ~ N(E(T_φ(y)), 0.5·I) (SPEC C2); seed 0 starts at E's guess itself, so the
            # hybrid never ends worse than the encoder alone
            z = enc_mean[:, None] + encoder_noise * noise
            z[:, 0] = enc_mean
            if encoder_seeds is not None:
                # a mixed population: seeds from encoder_seeds on start from N(0, I) as
                # plain Adam's do, so a poor guess of E does not decide the basin
                z[:, encoder_seeds:] = noise[:, encoder_seeds:]
        else:
            z = noise
        return z.reshape(N, d).to(P.dtype).clamp(-T, T)

    def make_cma() -> BatchedCMAES:
        mean0 = torch.zeros(B, d, dtype=torch.float64, device=P.device) if enc_mean is None else enc_mean
        return BatchedCMAES(mean0, 1.0, popsize=S, bounds=(-T, T),
                            generator=torch.Generator(device=P.device).manual_seed(0))

    def cma_generations(cma: BatchedCMAES, n: int) -> tuple[Tensor, Tensor]:
        """n generations; returns the S best points evaluated per image [B, S, d] (best first)
        and their losses [B, S] (inf where fewer than S finite points were seen)."""
        top_x = cma.mean[:, None].expand(B, S, d).clone()
        top_f = torch.full((B, S), math.inf, dtype=torch.float64, device=P.device)
        for g in range(n):
            x = cma.ask(noise=P.randn(S, d))
            with torch.no_grad():
                out = P.render(x.reshape(N, d).to(P.dtype), P.c_rows())
                f = P.gen_loss(out, tg)["total"]
            P.count(None, "forward")
            ok = P.check(out, f, None, g, step_name="generation", sample=True)
            f = torch.where(ok, f, torch.full_like(f, math.inf)).reshape(B, S).to(torch.float64)
            hist.append(torch.where(f.isfinite(), f, torch.full_like(f, math.nan)).reshape(N).to(P.dtype))
            cma.tell(x, _rank_last(P, f, g))
            all_x, all_f = torch.cat([top_x, x], 1), torch.cat([top_f, f], 1)
            order = all_f.argsort(dim=1, stable=True)[:, :S]
            top_x = all_x.gather(1, order[:, :, None].expand(-1, -1, d))
            top_f = all_f.gather(1, order)
            P.progress.update(1, loss=f"{float(top_f[:, 0].min()):.4f}")
        return top_x, top_f

    if method in ("adam", "hybrid"):
        z, c, _, died, _ = P.adam(start_points(), P.c_rows(), tg, adam_steps, hist, schedule=schedule)
        dropped |= died
    elif method == "lbfgs":
        z, c, _, died = P.lbfgs(start_points(), P.c_rows(), tg, lbfgs_steps, lbfgs_lr, hist)
        dropped |= died
    elif method == "encoder":
        z = enc_mean[:, None].expand(B, S, d).reshape(N, d).to(P.dtype)
        c = P.c_rows()
    elif method == "cma":
        top_x, top_f = cma_generations(make_cma(), cma_steps)
        z = top_x.reshape(N, d).to(P.dtype)     # the best points found, not a fresh sample
        c = P.c_rows()
        dropped |= ~top_f.reshape(N).isfinite()
    elif method == "cma+adam":
        top_x, _ = cma_generations(make_cma(), cma_steps)
        z, c, _, died, _ = P.adam(top_x.reshape(N, d).to(P.dtype), P.c_rows(), tg, adam_steps, hist,
                                  schedule=schedule)
        dropped |= died
    else:  # basincma
        cma = make_cma()
        for it in range(meta_steps):
            last = it == meta_steps - 1
            x = cma.ask(noise=P.randn(S, d))                               # [B, S, d]
            z, c, f, died, _ = P.adam(x.reshape(N, d).to(P.dtype), P.c_rows(), tg,
                                      last_grad_steps if last else grad_steps, hist,
                                      generation=it, sample=not last, schedule=schedule if last else None)
            if last:
                dropped |= died | ~f.isfinite()
            else:
                f = torch.where(died, torch.full_like(f, math.inf), f).reshape(B, S).to(torch.float64)
                told = x if tell == "sampled" else z.reshape(B, S, d).to(torch.float64)
                cma.tell(told, _rank_last(P, f, it))
    history = torch.stack(hist, 1).reshape(B, S, -1) if hist else torch.zeros(B, S, 0, dtype=P.dtype)
    return z, c, history, dropped


# --- project() ------------------------------------------------------------------------------

def _load_encoder(encoder: Any, device: torch.device) -> Optional[Callable[[Tensor], Tensor]]:
    if encoder is None or callable(encoder):
        return encoder
    if isinstance(encoder, (str, os.PathLike)):
        from latentx.projection.encoder import load_encoder

        return load_encoder(encoder, map_location=device)
    raise TypeError(f"project: encoder must be a callable E(images) -> z or a checkpoint path from "
                    f"train_encoder, got {type(encoder).__name__}")


_RESTART_STRIDE = 1_000_003  # seed offset of restart k: far from the seeds of other images


def _take_image_fields(into, src, b: int, j: int) -> None:
    """Image b of ``into`` (a ProjectionResult) becomes image j of ``src``."""
    for name in ("z", "c", "phi", "phi0", "generated", "inverted", "coverage", "best_seed", "dropped",
                 "reached"):
        a, v = getattr(into, name), getattr(src, name)
        if a is not None:
            a[b] = v[j]
    for key in into.losses:
        into.losses[key][b] = src.losses[key][j]
    for key in into.history:
        if key in src.history and into.history[key].shape[1:] == src.history[key].shape[1:]:
            into.history[key][b] = src.history[key][j]


def _with_restarts(args: dict) -> ProjectionResult:
    """project() with ``restarts``: the images that miss their target are projected again."""
    restarts = args.pop("restarts")
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 0:
        raise ValueError(f"project: restarts must be an integer >= 0, got {restarts!r}")
    if args["target_loss"] is None:
        raise ValueError("project: restarts repeat the images that miss target_loss; pass target_loss=")
    if isinstance(args["z_init"], Tensor):
        raise ValueError("project: restarts would start again from the same z_init; pass one or the other")
    images = args["images"]
    if isinstance(images, Tensor) and images.dim() == 3:
        images = args["images"] = images[None]
    B = images.shape[0] if isinstance(images, Tensor) and images.dim() == 4 else 1
    seed = args["seed"]
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()))
    seeds = [int(seed) + b for b in range(B)] if isinstance(seed, int) else [int(v) for v in seed]
    t0 = time.perf_counter()
    result = project(**dict(args, seed=seeds))
    tl = torch.as_tensor(args["target_loss"], dtype=torch.float64).flatten()
    targets = tl.expand(B) if tl.numel() == 1 else tl
    attempts = torch.ones(B, dtype=torch.long)
    for k in range(1, restarts + 1):
        todo = (~result.reached).nonzero().flatten().tolist()
        if not todo:
            break
        sub = dict(args, images=images[todo], seed=[seeds[b] + _RESTART_STRIDE * k for b in todo],
                   target_loss=targets[todo])
        for name in ("masks", "boxes", "classes", "c0"):
            v = args[name]
            if v is not None and not (name == "c0" and torch.as_tensor(v).dim() == 1):
                sub[name] = torch.as_tensor(v)[todo] if not isinstance(v, Tensor) else v[todo]
        offset = time.perf_counter() - t0
        again = project(**sub)
        best_then = result.losses["total"].nan_to_num(math.inf).amin(1)
        best_now = again.losses["total"].nan_to_num(math.inf).amin(1)
        for j, b in enumerate(todo):
            attempts[b] += 1
            for stage, counts in again.evaluations.items():
                mine = result.evaluations.setdefault(
                    stage, {kind: torch.zeros_like(v) for kind, v in result.evaluations["score"].items()})
                for kind, v in counts.items():
                    mine[kind][b] += v[j].to(mine[kind].device)
            if bool(again.reached[j]) or float(best_now[j]) < float(best_then[b]):
                _take_image_fields(result, again, b, j)
                result.reached_seconds[b] = offset + float(again.reached_seconds[j]) if bool(again.reached[j]) \
                    else math.nan
    result.attempts = attempts
    result.seconds = time.perf_counter() - t0
    result.settings["restarts"] = restarts
    return result


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
    encoder: Union[Callable[[Tensor], Tensor], str, os.PathLike, None] = None,
    encoder_noise: float = math.sqrt(0.5),
    encoder_seeds: Optional[int] = None,
    z_init: Union[Tensor, str, None] = None,
    target_loss: Union[float, Sequence[float], Tensor, None] = None,
    target_every: int = 5,
    halving: Optional[Sequence[int]] = None,
    fast_generator: bool = False,
    precision: str = "float32",
    refine_steps: int = 0,
    refine_seeds: int = 1,
    refine_lr: float = 0.02,
    refine_lr_phi: float = 0.003,
    refine_transform: bool = True,
    restarts: int = 0,
    on_nonfinite: str = "raise",
    perceptual: Optional[LPIPS] = None,
    seed: Union[int, Sequence[int], None] = None,
    progress: Optional[bool] = None,
) -> ProjectionResult:
    """Project ``images`` into ``generator`` (see :mod:`latentx.projection` for the algorithm).

    Args:
        generator: a :class:`latentx.models.Generator` (z_dim, truncation, object box, class
            embedding), e.g. ``latentx.models.load("face-dcgan")``.
        images: [B, 3, H, W] in [−1, 1], at least the generator's resolution.
        masks: [B, 1, H, W] in [0, 1] object weights; or ``boxes`` [B, 4] (x0, y0, x1, y1)
            in pixels → 1 inside, ``background`` (0.3) outside. Neither: the whole image.
        method: one of :data:`METHODS`: ``"adam"``, ``"lbfgs"``, ``"cma"``, ``"cma+adam"``,
            ``"basincma"`` (optimisation), ``"encoder"`` (E alone: z = E(T_φ(y)) for every
            seed, no optimisation; needs ``encoder``), ``"hybrid"`` (``adam_steps`` Adam steps
            from the encoder's guess, seed 002's hybrid family; needs ``encoder``).
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
        adam_steps: Adam steps of ``adam``, ``cma+adam`` and ``hybrid``.
        lbfgs_steps: the L-BFGS budget in generator forward+backward evaluations per problem
            (each iteration spends one or more in its line search; 500 = Adam's 500 steps).
        lbfgs_lr: the step L-BFGS's line search tries first.
        cma_steps: CMA generations (default 300 for ``cma``, 100 for ``cma+adam``).
        classes / c0: class labels [B] (c₀ = W[label]) or embeddings [B, c_dim], required
            when the generator has a class embedding.
        encoder: E(images [N, 3, h, w]) → z [N, z_dim], or the path of a checkpoint written
            by :func:`~latentx.projection.train_encoder`. With it, the gradient methods start
            from z ~ N(E(T_φ(y)), ``encoder_noise``²·I) (seed 0 at E(T_φ(y)) itself) and the
            CMA methods from the mean E(T_φ(y)).
        encoder_seeds: with ``encoder`` and a gradient method, only the first this many seeds
            start around E's guess; the others from N(0, I) like plain Adam's (a mixed
            population; None: all of them).
        z_init: [B, S, z_dim] starting latents for ``adam`` / ``lbfgs`` / ``hybrid`` (instead
            of the random or encoder draws); or ``"transform"`` (with ``transform=True``): the
            latents stage 1's last generation descended to, seed s from CMA sample s — the
            transform search's work is carried on instead of thrown away.
        target_loss: stop an image as soon as one of its seeds reaches this photo-frame
            total loss (the ``losses["total"]`` the result reports): a number, or one per
            image. Checked every ``target_every`` Adam steps of the latent stage's final Adam
            run (``adam``, ``hybrid``, ``cma+adam``'s Adam, BasinCMA's last generation) on
            each image's best current seed, and at every refinement step; the seed that
            reaches it returns the point that did, the image's other seeds their best so far.
            ``result.reached`` / ``result.reached_seconds`` say which images got there and when.
        halving: successive halving over seeds in that same Adam run: at each listed Adam
            step (e.g. ``(25, 50, 100, 200)``) each image keeps the better half (⌈n/2⌉) of its
            running seeds, by their best loss so far; the others stop and return their best
            point. Seeds stopped early are not evaluated again (``evaluations`` counts only
            what ran).
        fast_generator: run a copy of the generator with its batch norms folded into the
            convolutions and channels-last weights (:func:`~latentx.projection.fast.fast_generator`):
            the same images up to float rounding, a cheaper step.
        precision: ``"float32"`` (default) or ``"bfloat16"``: the generator's forward pass
            while searching (stage 1, stage 2) under autocast; target checks, the refinement
            and the reported losses are computed in float32.
        refine_steps: after the latent search, descend each image's ``refine_seeds`` best
            seeds (by the photo-frame loss) for this many Adam steps on the photo-frame loss
            itself, jointly in z (lr ``refine_lr``), c (``lr_c``) and — with
            ``refine_transform`` and a transform — φ (lr ``refine_lr_phi``; γ only with
            ``brightness``), each seed with its own copy of the image's φ
            (:mod:`latentx.projection.refine`). ``result.phi`` is then the φ of the image's
            best refined seed, and every seed is scored with it. 0 (default): no refinement.
        restarts: with ``target_loss``: an image still short of its target at the end is
            projected again from scratch (the same settings, seed + 1000003·k for restart k:
            new seeds, a new transform search), at most this many times; it keeps its best
            attempt — the first that reaches its target. ``result.attempts`` [B] counts the
            attempts, ``evaluations`` add up over them, ``reached_seconds`` and ``seconds``
            count from the start of the first.
        on_nonfinite: ``"raise"`` (default): a NaN / inf in a generator output, loss or
            gradient raises :class:`~latentx.projection.NonFiniteError` naming the stage,
            image, seed and step; ``"drop"``: that seed (or CMA sample) is dropped with a
            warning and the rest go on (``result.dropped``); an image that loses every seed
            still raises.
        perceptual: an LPIPS module; default :func:`default_lpips` (see its fallback).
        seed: an int (image b uses seed + b) or one int per image; None draws one.
        progress: show a tqdm bar (None: only on a terminal).

    Returns:
        :class:`ProjectionResult` (its ``evaluations`` count the generator passes per problem).
    """
    if restarts:
        return _with_restarts(dict(locals()))
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
    if on_nonfinite not in ("raise", "drop"):
        raise ValueError(f"project: on_nonfinite must be 'raise' or 'drop', got {on_nonfinite!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"project: precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if not isinstance(fast_generator, bool):
        raise TypeError(f"project: fast_generator must be True or False, got {fast_generator!r}")
    target_every = _check_int("target_every", target_every, 1)
    refine_steps = _check_int("refine_steps", refine_steps, 0)
    refine_seeds = _check_int("refine_seeds", refine_seeds, 1)
    if not isinstance(refine_transform, bool):
        raise TypeError(f"project: refine_transform must be True or False, got {refine_transform!r}")
    if target_loss is not None and method not in _SCHEDULED and not refine_steps:
        raise ValueError(f"project: target_loss acts on the final Adam run of {', '.join(_SCHEDULED)} "
                         f"and on the refinement; method {method!r} has neither (pass refine_steps=)")
    if halving is not None and method not in _SCHEDULED:
        raise ValueError(f"project: halving acts on the final Adam run of {', '.join(_SCHEDULED)}; "
                         f"method {method!r} has none")
    if halving is not None:
        if isinstance(halving, (str, bytes)) or not hasattr(halving, "__iter__"):
            raise TypeError(f"project: halving must be a sequence of Adam steps, got {halving!r}")
        halving = [_check_int("halving step", k, 1) for k in halving]
        if any(b <= a for a, b in zip(halving, halving[1:])):
            raise ValueError(f"project: halving steps must increase, got {halving}")
    one_seed_ok = method in ("adam", "lbfgs", "encoder", "hybrid") and transform is not True
    seeds = _check_int("seeds", seeds, 1 if one_seed_ok else 2)
    meta_steps = _check_int("meta_steps", meta_steps, 1)
    grad_steps = _check_int("grad_steps", grad_steps, 0)
    last_grad_steps = _check_int("last_grad_steps", last_grad_steps, 0)
    adam_steps = _check_int("adam_steps", adam_steps, 0)
    lbfgs_steps = _check_int("lbfgs_steps", lbfgs_steps, 1)
    if cma_steps is None:
        cma_steps = 300 if method == "cma" else 100
    cma_steps = _check_int("cma_steps", cma_steps, 1)
    t_meta = _check_int("transform_meta_steps", meta_steps if transform_meta_steps is None else transform_meta_steps, 1)
    t_grad = _check_int("transform_grad_steps", grad_steps if transform_grad_steps is None else transform_grad_steps, 0)
    for name, v in (("lr", lr), ("lr_c", lr_c), ("transform_sigma", transform_sigma), ("lbfgs_lr", lbfgs_lr),
                    ("refine_lr", refine_lr), ("refine_lr_phi", refine_lr_phi)):
        if not (isinstance(v, (int, float)) and v > 0 and math.isfinite(v)):
            raise ValueError(f"project: {name} must be a positive number, got {v!r}")
    if not (isinstance(beta, (int, float)) and beta >= 0):
        raise ValueError(f"project: beta must be a number >= 0, got {beta!r}")
    if not (0 <= background <= 1):
        raise ValueError(f"project: background must lie in [0, 1], got {background!r}")
    if not (isinstance(encoder_noise, (int, float)) and encoder_noise >= 0 and math.isfinite(encoder_noise)):
        raise ValueError(f"project: encoder_noise must be a number >= 0, got {encoder_noise!r}")
    if encoder_seeds is not None:
        encoder_seeds = _check_int("encoder_seeds", encoder_seeds, 1)
        if encoder is None:
            raise ValueError("project: encoder_seeds needs encoder=")

    like = generator.parameter_like()
    device = like.device
    dtype = like.dtype if like.is_floating_point() else torch.float32
    gen_size = generator.resolution
    images = check_images(images, gen_size).to(device=device, dtype=dtype)
    B, _, H, W = images.shape
    if target_loss is not None:
        try:
            tl = torch.as_tensor(target_loss, dtype=torch.float64).flatten().cpu()
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"project: target_loss must be a number or {B} numbers (one per image), "
                            f"got {type(target_loss).__name__}") from None
        if tl.numel() == 1:
            tl = tl.expand(B).clone()
        if tl.numel() != B:
            raise ValueError(f"project: target_loss must be a number or {B} numbers (one per image), "
                             f"got {tl.numel()}")
        if not bool(tl.isfinite().all()) or bool((tl < 0).any()):
            raise ValueError(f"project: target_loss must be finite numbers >= 0, got {tl.tolist()}")
        target_loss = tl
    if fast_generator:
        generator = make_fast_generator(generator)

    settings_z_init = z_init if isinstance(z_init, str) else None
    encoder = _load_encoder(encoder, device)
    if method in _NEEDS_ENCODER and encoder is None:
        raise ValueError(f"project: method={method!r} needs encoder= (a callable or a checkpoint from "
                         "latentx.projection.train_encoder / `latentx train-encoder`)")
    if isinstance(z_init, str):
        if z_init != "transform":
            raise ValueError(f"project: z_init must be a tensor [B, S, z_dim] or 'transform', got {z_init!r}")
        if method not in ("adam", "lbfgs", "hybrid") or transform is not True:
            raise ValueError("project: z_init='transform' starts adam, lbfgs or hybrid from the transform "
                             f"search's latents: it needs transform=True (got method={method!r}, "
                             f"transform={transform!r})")
    elif z_init is not None:
        if method not in ("adam", "lbfgs", "hybrid"):
            raise ValueError(f"project: z_init applies to adam, lbfgs and hybrid, not {method!r}")
        if not isinstance(z_init, Tensor) or tuple(z_init.shape) != (B, seeds, generator.z_dim):
            shape = list(z_init.shape) if isinstance(z_init, Tensor) else type(z_init).__name__
            raise ValueError(f"project: z_init must be [{B}, {seeds}, {generator.z_dim}], got {shape}")
        if not bool(z_init.isfinite().all()):
            raise ValueError("project: z_init must be finite")
        z_init = z_init.to(device=device, dtype=dtype)

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

    # seeds → one random stream per image
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()))
    seed_list = [int(seed) + b for b in range(B)] if isinstance(seed, int) else [int(s) for s in seed]
    if len(seed_list) != B:
        raise ValueError(f"project: seed must be an int or {B} ints (one per image), got {len(seed_list)}")
    streams = [torch.Generator().manual_seed(s) for s in seed_list]

    if perceptual is None:
        lp, perceptual_desc = default_lpips("alex", device)
    else:
        lp, perceptual_desc = perceptual, getattr(perceptual, "description", "user-supplied LPIPS")
    lp = lp.to(device=device, dtype=dtype)
    check_lpips_size("project", lp, (H, W), gen_size, float(beta))

    # progress units: one batched generator step
    latent_units = {"adam": adam_steps, "hybrid": adam_steps, "lbfgs": lbfgs_steps, "cma": cma_steps,
                    "cma+adam": cma_steps + adam_steps, "encoder": 0,
                    "basincma": (meta_steps - 1) * grad_steps + last_grad_steps}[method]
    total_units = latent_units + (t_meta * t_grad if transform is True else 0) + refine_steps
    bar = Progress(total_units, progress, f"project[{method}]")
    P = Problem(generator=generator, images=images, masks=masks, perceptual=lp, beta=float(beta), seeds=seeds,
                streams=streams, lr=lr, lr_c=lr_c, c0=c0, progress=bar, on_nonfinite=on_nonfinite,
                precision=precision)
    history: dict[str, Tensor] = {}

    # φ₀
    psi0 = SpatialTransform.from_boxes(masks, generator.object_box).params.to(torch.float64)
    phi0 = torch.cat([psi0, torch.zeros(B, 1, dtype=torch.float64, device=device)], 1)
    identity = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0], dtype=torch.float64, device=device).repeat(B, 1)

    try:
        if transform is True:
            bar.set_description(f"project[{method}] transform")
            phi_star, t_hist, t_mean, t_latents = search_transform(
                P, phi0, meta_steps=t_meta, grad_steps=t_grad, sigma=transform_sigma, brightness=brightness,
                propagate=propagate)
            history["transform"], history["transform_mean"] = t_hist, t_mean
            if isinstance(z_init, str):  # "transform": carry stage 1's latents on
                z_init = t_latents
        elif transform == "init":
            phi_star = phi0
        else:
            phi_star = identity
        bar.set_description(f"project[{method}] latent")
        schedule = None
        if target_loss is not None or halving or refine_steps:
            schedule = SeedSchedule(problem=P, phi=phi_star, halving=halving or (), target=target_loss,
                                    every=target_every, clock=t_start)
        z, c, lat_hist, dropped = search_latent(
            P, method, phi_star, meta_steps=meta_steps, grad_steps=grad_steps, last_grad_steps=last_grad_steps,
            adam_steps=adam_steps, lbfgs_steps=lbfgs_steps, lbfgs_lr=lbfgs_lr, cma_steps=cma_steps, tell=tell,
            encoder=encoder, encoder_noise=encoder_noise, z_init=z_init, schedule=schedule,
            encoder_seeds=encoder_seeds)
        history["latent"] = lat_hist
        if refine_steps:
            bar.set_description(f"project[{method}] refine")
            P.stage = "refine"
            # each image's best seed by the photo-frame loss (one forward per kept row)
            kept = (~dropped).nonzero().flatten()
            photo = torch.full((P.N,), math.inf, dtype=torch.float64, device=device)
            with torch.no_grad():
                o = P.render(z[kept], None if c is None else c[kept], exact=True)
                P.count(kept, "forward")
                lk = P.photo_loss(o, phi_star[P.rows[kept]], rows=P.rows[kept])["total"].to(torch.float64)
            ok = P.check(o, lk, kept, None, step_name="refinement step")
            dropped[kept[~ok]] = True
            photo[kept] = torch.where(ok, lk, torch.full_like(lk, math.inf))
            per_image = photo.reshape(B, seeds)
            if bool((~per_image.isfinite().any(1)).any()):
                b = int((~per_image.isfinite().any(1)).nonzero()[0])
                raise NonFiniteError(f"project: every seed of image {b} was dropped for non-finite values before "
                                     "the refinement; nothing to refine", stage="refinement", image=b, seed=None,
                                     step=None, what="every seed")
            k = min(refine_seeds, seeds)
            order = per_image.argsort(dim=1, stable=True)[:, :k]              # [B, k] best seeds first
            usable = per_image.gather(1, order).isfinite()
            best_rows = (order + torch.arange(B, device=device)[:, None] * seeds)[usable]
            if schedule.target is not None:
                # an image whose best seed already meets its target needs no refinement
                met = ~schedule.reached & (per_image.min(1).values <= schedule.target)
                if bool(met.any()):
                    schedule.mark_reached(met.nonzero().flatten(), per_image.min(1).values[met])
            z, c, phi_rows, f_rows, r_hist = refine_best_seeds(
                P, z, c, phi_star, best_rows, steps=refine_steps, lr=refine_lr, lr_phi=refine_lr_phi,
                spatial=refine_transform and transform is not False,
                brightness=refine_transform and transform is not False and brightness, schedule=schedule)
            # each image keeps the φ of its best refined seed; history [B, k, steps + 1]
            img = P.rows[best_rows]
            history["refine"] = torch.full((B, k, refine_steps + 1), math.nan, dtype=torch.float64)
            phi_star = phi_star.clone()
            for b in range(B):
                mine = (img == b).nonzero().flatten()
                if mine.numel() == 0:
                    continue
                history["refine"][b, :mine.numel()] = r_hist[mine.cpu()]
                j = mine[f_rows[mine].argmin()]
                if bool(f_rows[j].isfinite()):
                    phi_star[b] = phi_rows[j].to(phi_star.dtype)
    finally:
        bar.close()

    # scoring: one forward pass per kept row, photo-frame losses
    P.stage = "score"
    S, N = seeds, P.N
    h, w = gen_size
    kept = (~dropped).nonzero().flatten()
    out = torch.full((N, 3, h, w), math.nan, dtype=dtype, device=device)
    inv = torch.full((N, 3, H, W), math.nan, dtype=dtype, device=device)
    losses = {k: torch.full((N,), math.nan, dtype=dtype, device=device) for k in ("l1", "l2", "lpips", "total")}
    if kept.numel():
        with torch.no_grad():
            o = P.render(z[kept], None if c is None else c[kept], exact=True)
            P.count(kept, "forward")
            lk, ik, _ = P.photo_loss(o, phi_star[P.rows[kept]], rows=P.rows[kept], with_images=True)
            ok = P.check(o, lk["total"], kept, None)
        dropped[kept[~ok]] = True
        out[kept], inv[kept] = o.detach(), ik.detach()
        for k in losses:
            losses[k][kept] = torch.where(ok, lk[k].detach(), torch.full_like(lk[k], math.nan))
    dropped = dropped.reshape(B, S)
    for b in range(B):
        if bool(dropped[b].all()):
            raise NonFiniteError(f"project: every one of the {S} seeds of image {b} was dropped for non-finite "
                                 "values (see the warnings above); nothing to return for it",
                                 stage="latent search", image=b, seed=None, step=None, what="every seed")
    losses = {k: v.reshape(B, S) for k, v in losses.items()}
    best_seed = torch.where(dropped, torch.full_like(losses["total"], math.inf), losses["total"]).argmin(1)
    coverage = phi_transform(phi_star.to(dtype)).spatial.inverse().valid_region((H, W))
    evaluations = {stage: {k: v.reshape(B, S).clone() for k, v in counts.items()}
                   for stage, counts in P.evaluations.items() if stage != "refine" or refine_steps}
    settings = dict(method=method, transform=transform, seeds=seeds, meta_steps=meta_steps,
                    grad_steps=grad_steps, last_grad_steps=last_grad_steps, lr=lr, lr_c=lr_c, beta=beta,
                    background=background, transform_meta_steps=t_meta if transform is True else 0,
                    transform_grad_steps=t_grad if transform is True else 0,
                    transform_sigma=transform_sigma, brightness=brightness, propagate=propagate, tell=tell,
                    adam_steps=adam_steps, lbfgs_steps=lbfgs_steps, lbfgs_lr=lbfgs_lr, cma_steps=cma_steps,
                    seed=seed_list, truncation=generator.truncation, object_box=list(generator.object_box),
                    generator=getattr(generator, "name", "generator"), encoder=encoder is not None,
                    encoder_noise=encoder_noise, encoder_seeds=encoder_seeds,
                    z_init="transform" if settings_z_init == "transform" else z_init is not None,
                    on_nonfinite=on_nonfinite,
                    target_loss=None if target_loss is None else target_loss.tolist(), target_every=target_every,
                    halving=list(halving or []), fast_generator=fast_generator, precision=precision,
                    refine_steps=refine_steps, refine_seeds=refine_seeds, refine_lr=refine_lr,
                    refine_lr_phi=refine_lr_phi,
                    refine_transform=refine_transform,
                    photo_size=[H, W], generator_size=[h, w])
    return ProjectionResult(
        method=method, transform=transform,
        z=z.detach().reshape(B, S, -1), c=None if c is None else c.detach().reshape(B, S, -1),
        phi=phi_star.to(dtype), phi0=phi0.to(dtype),
        generated=out.reshape(B, S, 3, h, w), inverted=inv.reshape(B, S, 3, H, W),
        coverage=coverage, target=images, mask=masks,
        losses=losses, best_seed=best_seed, history=history, perceptual=perceptual_desc,
        settings=settings, seconds=time.perf_counter() - t_start, evaluations=evaluations,
        dropped=dropped,
        reached=None if target_loss is None else schedule.reached.clone(),
        reached_seconds=None if target_loss is None else schedule.seconds.clone())

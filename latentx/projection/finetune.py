"""Fine-tuning the generator to the projected photos (SPEC C2; seed 003 eq. 6)."""

from __future__ import annotations

import copy
import math
import time
from typing import Optional

import torch
from torch import Tensor

from latentx.lpips import LPIPS
from latentx.models import Generator
from latentx.projection.objective import check_lpips_size, default_lpips
from latentx.projection.problem import NonFiniteError, Problem, Progress
from latentx.projection.results import FinetuneResult, ProjectionResult
from latentx.projection.search import check_images

__all__ = ["finetune"]


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
    images = check_images(images, tuned.resolution, "finetune").to(device=device, dtype=dtype)
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
    check_lpips_size("finetune", lp, (H, W), tuned.resolution, beta)

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

    bar = Progress(steps, progress, "finetune")
    P = Problem(generator=tuned, images=images, masks=masks, perceptual=lp, beta=beta, lr=lr, lr_c=lr,
                progress=bar, who="finetune")

    def penalty() -> Tensor:
        return sum(((p - p0) ** 2).sum() for p, p0 in zip(theta, theta0))

    loss_hist, pen_hist = [], []
    def _check_finite(out: Tensor, f: Tensor, step: int) -> None:
        # one θ serves every image, so a NaN anywhere stops the tuning: always an error
        for what, bad in (("generator output", ~out.detach().flatten(1).isfinite().all(1)),
                          ("loss", ~f.detach().isfinite())):
            if bool(bad.any()):
                b = int(bad.nonzero()[0])
                raise NonFiniteError(f"finetune: non-finite {what} in the finetune (image {b}, step {step})",
                                     stage="finetune", image=b, seed=None, step=step, what=what)

    def _check_gradients(step: int) -> None:
        if tune_latent:
            bad = ~z.grad.isfinite().all(1)
            if c is not None:
                bad |= ~c.grad.isfinite().all(1)
            if bool(bad.any()):
                b = int(bad.nonzero()[0])
                raise NonFiniteError(f"finetune: non-finite gradient in the finetune (image {b}, step {step})",
                                     stage="finetune", image=b, seed=None, step=step, what="gradient")
        for p in params:
            if p.grad is not None and not bool(p.grad.isfinite().all()):
                raise NonFiniteError(f"finetune: non-finite gradient of the generator's weights θ in the finetune "
                                     f"(step {step}; θ is shared by the {B} images, so no one image is named)",
                                     stage="finetune", image=None, seed=None, step=step, what="gradient")

    with torch.no_grad():
        out0 = P.render(z, c)
        before = {k: v.detach().clone() for k, v in P.photo_loss(out0, phi).items()}
        _check_finite(out0, before["total"], 0)
    stopped, taken = "steps", 0
    try:
        if float(before["total"].max()) < target_loss:
            stopped = "target"
        for step in range(steps if stopped == "steps" else 0):
            opt.zero_grad(set_to_none=True)
            out = P.render(z, c)
            f = P.photo_loss(out, phi)["total"]
            _check_finite(out, f, step)
            pen = penalty()
            (f.sum() + weight_decay_to_init * pen).backward()
            _check_gradients(step)
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

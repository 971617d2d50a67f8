"""Transformation-aware projection (SPEC C1–C2; seed 003, Algorithm 1): find the transform φ and
the latent z (and class embedding c) with which a generator reproduces the object in a photo.

    result = latentx.projection.project(G, images, boxes=[[x0, y0, x1, y1]], method="basincma")

The package, by concern:

* :mod:`.objective` — the perceptual metric (:func:`default_lpips`), object masks
  (:func:`masks_from_boxes`), φ as a :class:`latentx.transforms.Transform`
  (:func:`phi_transform`, :func:`transform_images`, :func:`invert_images`) and the masked
  losses (:func:`masked_losses`);
* :mod:`.problem` — the batched problem (B images × S seeds, one row each), its evaluation
  counts and non-finite checks, Adam; :mod:`.lbfgs` — the batched L-BFGS of independent
  problems;
* :mod:`.search` — stage 1 (the transform), stage 2 (the latent) and :func:`project`;
* :mod:`.finetune` — :func:`finetune`, tuning the generator's weights (seed 003 eq. 6);
* :mod:`.encoder` — the learning-based family (seed 002): :class:`LatentEncoder`,
  :func:`train_encoder`, :func:`load_encoder`;
* :mod:`.results` — :class:`ProjectionResult`, :class:`FinetuneResult`;
* :mod:`.fast` — a faster generator step: :func:`fast_generator` (batch norms folded into the
  convolutions, channels-last weights) and the bfloat16 search precision;
* :mod:`.refine` — the photo-frame refinement (``refine_steps``): the best seeds descend the
  reported loss itself, jointly in z and φ.

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

Algorithm (batched over images × seeds; every (image, seed) row is its own problem; every
CMA instance is one row of ``latentx.cma.BatchedCMAES``, B = images, popsize = seeds):

* Stage 1, transform search (``transform=True``): CMA over φ per image, mean φ₀ (ψ₀ from
  the object's box against the generator's typical object box, γ₀ = 0), step size
  ``transform_sigma``; per CMA sample z is drawn around an exponential moving average (decay
  0.5) of the best latents so far (seed 003 Appendix D; pix2latent's noise schedule and
  per-sample standardisation), c ← c₀, ``transform_grad_steps`` Adam steps on (z, c) against
  T_φ(y); CMA is told the photo-frame loss of each sample's best latent. φ* = the CMA mean.
* Stage 2, latent search with φ* fixed, by ``method``:
  ``adam`` (``adam_steps`` = 500 Adam steps per seed); ``lbfgs`` (L-BFGS per seed with its
  own curvature history and strong-Wolfe line search, lr 0.1, at most ``lbfgs_steps`` = 500
  generator evaluations per seed); ``cma`` (``cma_steps`` = 300 generations; the S best points
  evaluated are returned); ``cma+adam`` (100 generations, then 500 Adam steps from the S best
  points CMA found); ``basincma`` (``meta_steps`` = 30 CMA generations, each sample descended
  by ``grad_steps`` = 30 Adam steps, CMA told the sampled points with their post-descent
  losses — pix2latent's default; ``tell="descended"`` tells the descended points as
  Algorithm 1 writes it — and the last generation descended by ``last_grad_steps`` = 300
  steps); ``encoder`` (z = E(T_φ(y)), no optimisation) and ``hybrid`` (Adam from z ~
  N(E(T_φ(y)), 0.5·I), seed 0 at E(T_φ(y)) itself) — seed 002's learning-based and hybrid
  families, with an encoder from :func:`train_encoder`.

Budget: ``ProjectionResult.evaluations`` counts, per (image, seed) problem and stage, the
generator forward passes and back-propagations. Per problem: Adam n steps = n + 1 forwards
(the last point is evaluated too) and n backwards; L-BFGS = its evaluations (forward and
backward each, ≤ ``lbfgs_steps``); CMA = one forward per generation; BasinCMA = its Adam runs;
the transform search = ``transform_meta_steps`` × (``transform_grad_steps`` + 1) forwards and
× ``transform_grad_steps`` backwards; scoring the returned latents = one forward.

Time to quality (options of :func:`project`, all per image, so batching images does not
change what any one of them does, and counted in ``evaluations``): ``target_loss`` stops an
image once a seed reaches that photo-frame loss (``result.reached`` / ``reached_seconds``);
``halving`` stops the worse half of each image's seeds at the listed Adam steps of the final
Adam run; ``refine_steps`` / ``refine_seeds`` polish the best seeds on the photo-frame loss in
(z, φ); ``restarts`` projects again, with new seeds, an image that missed its target;
``fast_generator`` folds batch norms and uses channels-last weights; ``precision="bfloat16"``
runs the generator in bfloat16 while searching; ``z_init="transform"`` carries stage 1's
latents into stage 2; ``encoder_seeds`` mixes encoder-started and random seeds.

Failures are loud: a NaN / inf in a generator output, a loss or a gradient raises
:class:`NonFiniteError` naming the stage, image, seed and step; ``on_nonfinite="drop"`` drops
that seed (or CMA sample) with a warning instead, and still raises when an image loses all.

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

from latentx.projection.encoder import LatentEncoder, load_encoder, train_encoder, EncoderTraining
from latentx.projection.fast import fast_generator
from latentx.projection.finetune import finetune
from latentx.projection.lbfgs import batched_lbfgs
from latentx.projection.objective import (PHI_NAMES, default_lpips, invert_images, masked_losses,
                                          masks_from_boxes, phi_transform, transform_images)
from latentx.projection.problem import NonFiniteError
from latentx.projection.results import FinetuneResult, ProjectionResult
from latentx.projection.search import METHODS, project

__all__ = ["METHODS", "PHI_NAMES", "ProjectionResult", "project", "FinetuneResult", "finetune",
           "NonFiniteError", "default_lpips", "masks_from_boxes", "masked_losses", "phi_transform",
           "transform_images", "invert_images", "batched_lbfgs", "LatentEncoder", "EncoderTraining",
           "train_encoder", "load_encoder", "fast_generator"]

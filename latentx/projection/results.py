"""What :func:`~latentx.projection.project` and :func:`~latentx.projection.finetune` return."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from torch import Tensor

from latentx.projection.objective import PHI_NAMES, phi_transform
from latentx.transforms import Transform

__all__ = ["ProjectionResult", "FinetuneResult"]


@dataclass
class ProjectionResult:
    """Per image b and seed s (B images, S seeds; photo frame H × W, generator frame h × w).
    Every (image, seed) row is its own problem.

    Attributes:
        z: [B, S, z_dim] final latents; ``c``: [B, S, c_dim] or None.
        phi: [B, 5] φ* = (s_x, s_y, t_x, t_y, γ) used for the latent search (identity without
            the transform); ``phi0``: [B, 5] the initial φ₀ from the boxes. :attr:`transform_object`
            gives φ* as a :class:`latentx.transforms.Transform`.
        generated: [B, S, 3, h, w] G(z, c).
        inverted: [B, S, 3, H, W] T_φ⁻¹(G(z, c)) in the photo frame; ``coverage`` [B, 1, H, W]
            bool: where the generated frame lands in the photo.
        target: [B, 3, H, W]; ``mask``: [B, 1, H, W] the masks used.
        losses: photo-frame ``l1``, ``l2``, ``lpips`` (masked, unweighted) and ``total``
            (l1 + β·lpips), each [B, S]; NaN for dropped seeds.
        best_seed: [B] argmin over the kept seeds of ``losses["total"]``.
        history: ``"latent"`` [B, S, T]: the generator-frame loss of each sample at each
            evaluation of the latent stage (T = Adam steps, L-BFGS iterations, or CMA
            generations; a row that stopped early repeats its last value, a dropped row is NaN
            from where it was dropped); ``"transform"`` / ``"transform_mean"`` [B, n]: best /
            mean photo-frame loss told to the transform CMA per generation (absent without
            the search).
        evaluations: the budget spent, in generator evaluations per problem (per (image, seed)
            row): ``{stage: {"forward": [B, S], "backward": [B, S]}}`` (int64) for the stages
            ``"transform"`` (stage 1), ``"latent"`` (stage 2) and ``"score"`` (the one forward
            pass that scores the returned latents). A forward is one G(z, c) of one row; a
            backward is one back-propagation through it.
        dropped: [B, S] bool: seeds dropped for non-finite values (``on_nonfinite="drop"``).
        reached: [B] bool, with ``target_loss``: the images stopped because a seed reached
            their target (None without a target); ``reached_seconds``: [B] float64 wall
            seconds from the start of the call to the check that reached it (NaN where not
            reached) — for images projected together, each image's own time to its target.
        attempts: [B] int64 with ``restarts``: how many times each image was projected.
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
    evaluations: dict = field(default_factory=dict)
    dropped: Optional[Tensor] = None
    reached: Optional[Tensor] = None
    reached_seconds: Optional[Tensor] = None
    attempts: Optional[Tensor] = None

    @property
    def transform_object(self) -> Transform:
        """φ* as a :class:`latentx.transforms.Transform` (one row per image)."""
        return phi_transform(self.phi)

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

    def evaluations_per_problem(self) -> dict:
        """Per image, the mean over its kept seeds of each stage's forward / backward counts:
        ``{stage: {"forward": [B], "backward": [B]}}`` (float64)."""
        B, S = self.z.shape[:2]
        kept = torch.ones(B, S, dtype=torch.bool) if self.dropped is None else ~self.dropped.cpu()
        n = kept.sum(1).clamp_min(1).to(torch.float64)
        out = {}
        for stage, counts in self.evaluations.items():
            out[stage] = {k: (v.cpu().to(torch.float64) * kept).sum(1) / n for k, v in counts.items()}
        return out

    def summary(self) -> list[dict]:
        """Per image: best-of-seeds and mean-of-seeds of every loss (seed 003 Table 1's
        columns; the mean is over the kept seeds), the generator evaluations per problem
        spent in each stage (mean over the kept seeds), and how many seeds were dropped."""
        out = []
        best = self.best()["losses"]
        evals = self.evaluations_per_problem()
        for b in range(self.z.shape[0]):
            out.append({
                "best_seed": int(self.best_seed[b]),
                "best": {k: float(v[b]) for k, v in best.items()},
                "mean": {k: float(v[b].nanmean()) for k, v in self.losses.items()},
                "evaluations": {stage: {k: float(v[b]) for k, v in counts.items()}
                                for stage, counts in evals.items()},
                "dropped": 0 if self.dropped is None else int(self.dropped[b].sum()),
            })
            if self.reached is not None:
                sec = float(self.reached_seconds[b])
                out[-1].update(reached=bool(self.reached[b]), reached_seconds=None if sec != sec else sec)
            if self.attempts is not None:
                out[-1]["attempts"] = int(self.attempts[b])
        return out

    def to_dict(self) -> dict:
        """JSON-ready: settings, φ₀, φ*, every latent, the losses, the evaluation counts per
        problem, the dropped seeds and the summary (non-finite losses of dropped seeds become
        None)."""
        def finite_list(v: Tensor) -> list:
            return [[None if x != x else x for x in row] for row in v.tolist()]

        return {
            "method": self.method, "transform": self.transform, "perceptual": self.perceptual,
            "seconds": self.seconds, "settings": self.settings,
            "phi_names": list(PHI_NAMES),
            "phi0": self.phi0.tolist(), "phi": self.phi.tolist(),
            "z": self.z.tolist(), "c": None if self.c is None else self.c.tolist(),
            "losses": {k: finite_list(v) for k, v in self.losses.items()},
            "evaluations": {stage: {k: v.tolist() for k, v in counts.items()}
                            for stage, counts in self.evaluations.items()},
            "dropped": None if self.dropped is None else self.dropped.tolist(),
            "reached": None if self.reached is None else self.reached.tolist(),
            "reached_seconds": None if self.reached_seconds is None else
            [None if x != x else x for x in self.reached_seconds.tolist()],
            "summary": self.summary(),
        }


@dataclass
class FinetuneResult:
    """The outcome of :func:`~latentx.projection.finetune` (B images, photo frame H × W,
    generator frame h × w).

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

"""Small, CPU-sized test beds for AdvLatGAN (seed 001 appendix E; SPEC C3).

* Ring and Grid: mixtures of 2-D Gaussians, the paper's MLP G and D, and the mode metrics
  (share of high-quality samples, modes covered, KL of the mode histogram to uniform).
* Digits: ``sklearn.datasets.load_digits()`` (1,797 real 8×8 digits, in [−1, 1]), a small
  DCGAN pair and a digit classifier whose penultimate layer is the feature space for FID.
* Conditional digits: a class-conditional version of that pair, G(z, c) and D(x, c) with c
  the digit class (integer [B]), for AdvLatGAN's conditional use (seed 001 Sec. 3.3).

Factories without arguments (``ring_generator``, ``digits_generator``, ...) are the
``module:factory`` entry points ``latentx refine`` loads checkpoints into.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

RING_Z_DIM = 2
DIGITS_Z_DIM = 32
DIGITS_CLASSES = 10


# --- Ring and Grid (appendix E.1) ---------------------------------------------------------


def ring_centers(modes: int = 8, radius: float = 2.0) -> Tensor:
    """[modes, 2] means (r cos(2πi/modes), r sin(2πi/modes)) — for 8 modes, angles iπ/4."""
    angle = 2 * math.pi * torch.arange(modes, dtype=torch.float64) / modes
    return torch.stack([radius * angle.cos(), radius * angle.sin()], 1).float()


def grid_centers(side: int = 5, spacing: float = 2.0) -> Tensor:
    """[side², 2] means (spacing·i, spacing·j), i, j ∈ {−(side−1)/2 … (side−1)/2}."""
    ticks = spacing * (torch.arange(side, dtype=torch.float32) - (side - 1) / 2)
    return torch.cartesian_prod(ticks, ticks)


def sample_mixture(centers: Tensor, n: int, std: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """n points [n, 2] from the equal-weight isotropic Gaussian mixture at ``centers`` [K, 2]."""
    k = torch.randint(len(centers), (n,), generator=generator)
    return centers[k] + std * torch.randn(n, 2, generator=generator)


def ring(n: int, std: float = 0.001, generator: Optional[torch.Generator] = None) -> Tensor:
    """Ring data [n, 2]: 8 Gaussians of std 0.001 on the circle of radius 2 (appendix E.1)."""
    return sample_mixture(ring_centers(), n, std, generator)


def grid(n: int, std: float = 0.0025, generator: Optional[torch.Generator] = None) -> Tensor:
    """Grid data [n, 2]: 25 Gaussians of std 0.0025 at (2i, 2j), i, j ∈ {−2..2} (appendix E.1)."""
    return sample_mixture(grid_centers(), n, std, generator)


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class MLPGenerator(nn.Module):
    """The paper's G (Table 13): z [B, z_dim] → Linear 100, 200, 100 (ReLU) → 2 → x [B, 2]."""

    def __init__(self, z_dim: int = RING_Z_DIM):
        super().__init__()
        self.net = _mlp([z_dim, 100, 200, 100, 2])

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class MLPDiscriminator(nn.Module):
    """The paper's D (Table 14): x [B, 2] → Linear 100, 200, 100 (ReLU) → logit [B]."""

    def __init__(self):
        super().__init__()
        self.net = _mlp([2, 100, 200, 100, 1])

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(1)


def ring_generator() -> MLPGenerator:
    """Entry point: the ring/grid G with a 2-D latent (the paper samples z in 2-D)."""
    return MLPGenerator(RING_Z_DIM)


def ring_discriminator() -> MLPDiscriminator:
    """Entry point: the ring/grid D."""
    return MLPDiscriminator()


def mode_metrics(x: Tensor, centers: Tensor, threshold: float, min_count: int = 1) -> dict[str, float]:
    """Mode metrics of generated points (the protocol of Metz et al. and appendix E).

    A point is high quality when its nearest mode centre is within ``threshold``; a mode is
    covered when at least ``min_count`` high-quality points belong to it.

    Args:
        x: generated points [N, 2]. centers: mode means [K, 2].
        threshold: distance (data units) that makes a point high quality.

    Returns:
        ``high_quality`` (share of N), ``modes`` (covered, of K), ``kl`` (KL of the
        high-quality points' mode histogram to uniform over K, in nats; NaN when no point is
        high quality).
    """
    if x.dim() != 2 or x.shape[1] != centers.shape[1]:
        raise ValueError(f"x must be [N, {centers.shape[1]}], got {list(x.shape)}")
    dist, mode = torch.cdist(x.double(), centers.double()).min(1)
    good = dist <= threshold
    counts = torch.bincount(mode[good], minlength=len(centers)).double()
    total = counts.sum()
    if total > 0:
        p = counts / total
        kl = (p[p > 0] * (p[p > 0] * len(centers)).log()).sum().item()
    else:
        kl = float("nan")
    return {"high_quality": good.double().mean().item() if len(x) else float("nan"),
            "modes": int((counts >= min_count).sum().item()), "kl": kl}


# --- Digits (sklearn's 8×8 digits) ----------------------------------------------------------


def load_digits_tensor() -> tuple[Tensor, Tensor]:
    """sklearn's digits as images [1797, 1, 8, 8] in [−1, 1] and labels [1797] (int64).

    Needs scikit-learn (the data ship inside its wheel; nothing is downloaded).
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0 * 2 - 1
    return images, torch.tensor(data.target, dtype=torch.int64)


class DigitsGenerator(nn.Module):
    """DCGAN G for 8×8 digits: z [B, z_dim] → Linear → 64×2×2 → ConvT 32×4×4 → ConvT 1×8×8, tanh."""

    def __init__(self, z_dim: int = DIGITS_Z_DIM):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(z_dim, 64 * 2 * 2), nn.BatchNorm1d(64 * 2 * 2), nn.ReLU())
        self.net = nn.Sequential(
            nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.ConvTranspose2d(32, 1, 4, 2, 1), nn.Tanh(),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(self.fc(z).view(-1, 64, 2, 2))


class DigitsDiscriminator(nn.Module):
    """DCGAN D for 8×8 digits: x [B, 1, 8, 8] → Conv 32×4×4 → Conv 64×2×2 (LeakyReLU) → logit [B]."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 32, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(32, 64, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Flatten(), nn.Linear(64 * 2 * 2, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(1)


class DigitsClassifier(nn.Module):
    """Digit classifier: x [B, 1, 8, 8] → logits [B, 10]; :meth:`features` gives [B, 64]."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, 1, 1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),  # 4×4
            nn.Flatten(), nn.Linear(64 * 4 * 4, 64), nn.ReLU(),
        )
        self.head = nn.Linear(64, 10)

    def features(self, x: Tensor) -> Tensor:
        """The penultimate layer [B, 64]: the feature space FID and density/coverage use."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class ConditionalDigitsGenerator(nn.Module):
    """Class-conditional DCGAN G for 8×8 digits: z [B, z_dim] and classes c [B] (int64 in
    [0, classes)) → x [B, 1, 8, 8] in [−1, 1].

    The class enters as a learnt embedding [embed_dim] concatenated to z (the conditional
    GAN of Mirza & Osindero 2014); the rest is :class:`DigitsGenerator`.
    """

    def __init__(self, z_dim: int = DIGITS_Z_DIM, classes: int = DIGITS_CLASSES, embed_dim: int = 8):
        super().__init__()
        self.embed = nn.Embedding(classes, embed_dim)
        self.body = DigitsGenerator(z_dim + embed_dim)

    def forward(self, z: Tensor, c: Tensor) -> Tensor:
        return self.body(torch.cat([z, self.embed(c)], 1))


class ConditionalDigitsDiscriminator(nn.Module):
    """Class-conditional D for 8×8 digits, a projection discriminator (Miyato & Koyama 2018):
    h = φ(x) [B, 256] from :class:`DigitsDiscriminator`'s convolutions; logit
    = ψ(h) + ⟨V[c], h⟩ [B], with V a learnt class embedding [classes, 256]."""

    def __init__(self, classes: int = DIGITS_CLASSES):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(32, 64, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Flatten(),
        )
        self.head = nn.Linear(64 * 2 * 2, 1)
        self.embed = nn.Embedding(classes, 64 * 2 * 2)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        h = self.features(x)
        return self.head(h).squeeze(1) + (self.embed(c) * h).sum(1)


def digits_generator() -> DigitsGenerator:
    """Entry point: the digits G (z_dim 32)."""
    return DigitsGenerator(DIGITS_Z_DIM)


def digits_discriminator() -> DigitsDiscriminator:
    """Entry point: the digits D."""
    return DigitsDiscriminator()


def digits_classifier() -> DigitsClassifier:
    """Entry point: the digits classifier."""
    return DigitsClassifier()


def conditional_digits_generator() -> ConditionalDigitsGenerator:
    """Entry point: the class-conditional digits G (z_dim 32, 10 classes), called G(z, c)."""
    return ConditionalDigitsGenerator(DIGITS_Z_DIM, DIGITS_CLASSES)


def conditional_digits_discriminator() -> ConditionalDigitsDiscriminator:
    """Entry point: the class-conditional digits D (10 classes), called D(x, c)."""
    return ConditionalDigitsDiscriminator(DIGITS_CLASSES)

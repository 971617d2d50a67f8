"""A trained class-conditional generator that ships with latentx: a small conditional GAN on
sklearn's ``load_digits()`` (1,797 real 8×8 digits, 10 classes), for measuring seed 003's class
search offline (``latentx.models.load("digits-cgan")``).

The network follows BigGAN's interface (SPEC Part B): a class-embedding table W [10, c_dim]
(c = W·onehot), and G(z, c) with c continuous, so projection can optimise c next to z.

* G draws at the data's native 8×8 (``forward_native``) and its output layer upsamples that
  ×4 to 32×32 with bilinear interpolation (``F.interpolate(..., mode="bilinear",
  align_corners=False)``: no parameters, values stay in [−1, 1]) and repeats the grey channel
  to RGB: [N, 3, 32, 32]. 32×32 is the smallest frame AlexNet-LPIPS takes (31×31), so the
  projection loss runs unchanged; :func:`digits_frame` upsamples real digits the same way.
* Architecture: concat(z [32], c [16]) → Linear → 64×2×2 → BN → ReLU → ConvT 32×4×4 → BN →
  ReLU → ConvT 1×8×8 → tanh (the shape of ``latentx.synthetic.DigitsGenerator``; 55k parameters); c also modulates both BN layers (conditional BN, BigGAN-style:
  gain 1 + Linear(c), bias Linear(c)), so the class enters at every scale.
* D: a projection discriminator (Miyato & Koyama 2018): conv features h(x) → ψ(h) + ⟨V[y], h⟩,
  spectral-normalised; only used for training.
* Training (``experiments/train_digits_cgan.py``): the 1,400 digits of the split the project's
  digit classifier (``experiments/digits.py``) trained on; the other 397 are held out for
  projection experiments (:func:`digits_split`).
* Typical object box: the whole frame. The generator draws a digit the way ``load_digits``
  frames them (each digit scaled into its 8×8 box), so a user's box around a digit maps onto
  the full generator frame.
"""

from __future__ import annotations

import os
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DIGITS_CGAN_Z_DIM", "DIGITS_CGAN_C_DIM", "DIGITS_CGAN_SIZE", "DIGITS_CGAN_CHECKPOINT",
           "DigitsCGANGenerator", "DigitsCGANDiscriminator", "digits_frame", "digits_split", "load_digits_cgan"]

DIGITS_CGAN_Z_DIM = 32
DIGITS_CGAN_C_DIM = 16
DIGITS_CGAN_CLASSES = 10
DIGITS_CGAN_SIZE = 32  # output side in pixels (native 8 × 4)
DIGITS_CGAN_CHECKPOINT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "digits_cgan.pt")


def digits_frame(images: Tensor, size: int = DIGITS_CGAN_SIZE) -> Tensor:
    """Real or generated 8×8 digits [N, 1, 8, 8] in [−1, 1] → [N, 3, size, size]: bilinear
    upsampling (align_corners=False, the generator's own output layer at size 32) and the grey
    channel repeated to RGB."""
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 1:
        shape = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"digits_frame: images must be [N, 1, h, w] grey digits, got {shape}")
    up = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return up.expand(-1, 3, -1, -1)


class _ConditionalBN(nn.Module):
    """BatchNorm without its own affine; gain 1 + A·c and bias B·c from the class embedding c
    (BigGAN's conditional batch norm, which is how BigGAN's c enters every block)."""

    def __init__(self, channels: int, c_dim: int, spatial: bool):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False) if spatial else nn.BatchNorm1d(channels, affine=False)
        self.gain = nn.Linear(c_dim, channels, bias=False)
        self.bias = nn.Linear(c_dim, channels, bias=False)
        self.spatial = spatial
        nn.init.zeros_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        g, b = 1 + self.gain(c), self.bias(c)
        if self.spatial:
            g, b = g[:, :, None, None], b[:, :, None, None]
        return self.bn(x) * g + b


class DigitsCGANGenerator(nn.Module):
    """G(z [N, 32], c [N, 16]) → [N, 3, 32, 32] in [−1, 1]; ``embedding`` is the class table
    W [10, 16] (c₀ = W[label])."""

    def __init__(self, z_dim: int = DIGITS_CGAN_Z_DIM, c_dim: int = DIGITS_CGAN_C_DIM,
                 num_classes: int = DIGITS_CGAN_CLASSES, size: int = DIGITS_CGAN_SIZE):
        super().__init__()
        self.z_dim, self.c_dim, self.num_classes, self.size = z_dim, c_dim, num_classes, size
        self.embedding = nn.Embedding(num_classes, c_dim)
        self.fc = nn.Linear(z_dim + c_dim, 64 * 2 * 2)
        self.bn0 = _ConditionalBN(64 * 2 * 2, c_dim, spatial=False)
        self.up1 = nn.ConvTranspose2d(64, 32, 4, 2, 1)  # 2 → 4
        self.bn1 = _ConditionalBN(32, c_dim, spatial=True)
        self.up2 = nn.ConvTranspose2d(32, 1, 4, 2, 1)  # 4 → 8

    def forward_native(self, z: Tensor, c: Tensor) -> Tensor:
        """The 8×8 digit [N, 1, 8, 8] in [−1, 1] (before the output upsampling)."""
        h = F.relu(self.bn0(self.fc(torch.cat([z, c], 1)), c)).view(-1, 64, 2, 2)
        h = F.relu(self.bn1(self.up1(h), c))
        return torch.tanh(self.up2(h))

    def forward(self, z: Tensor, c: Tensor) -> Tensor:
        return digits_frame(self.forward_native(z, c), self.size)


class DigitsCGANDiscriminator(nn.Module):
    """Projection discriminator on 8×8 digits: D(x [N, 1, 8, 8], y [N]) → logits [N]."""

    def __init__(self, num_classes: int = DIGITS_CGAN_CLASSES):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        self.body = nn.Sequential(
            sn(nn.Conv2d(1, 64, 3, 1, 1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(64, 128, 4, 2, 1)), nn.LeakyReLU(0.2),  # 4×4
            sn(nn.Conv2d(128, 128, 4, 2, 1)), nn.LeakyReLU(0.2),  # 2×2
            nn.Flatten(), sn(nn.Linear(128 * 2 * 2, 128)), nn.LeakyReLU(0.2),
        )
        self.out = sn(nn.Linear(128, 1))
        self.embed = sn(nn.Embedding(num_classes, 128))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        h = self.body(x)
        return self.out(h).squeeze(1) + (self.embed(y) * h).sum(1)


def digits_split(seed: int = 0) -> tuple[Tensor, Tensor]:
    """(train [1400], held-out [397]) indices into ``load_digits()``: the split the project's
    digit classifier uses (``experiments/digits.py``: ``torch.randperm(1797)`` from a
    ``torch.Generator`` seeded 0), so neither the classifier nor the conditional GAN has seen
    the held-out digits."""
    order = torch.randperm(1797, generator=torch.Generator().manual_seed(seed))
    return order[:1400], order[1400:]


def load_digits_cgan(checkpoint: Union[str, os.PathLike, None] = None, *,
                     device: Union[str, torch.device] = "cpu", **overrides):
    """The shipped conditional digits GAN as a :class:`latentx.models.Generator`: z_dim 32,
    class table W [10, 16], truncation |z|∞ ≤ 2, object box the whole frame, output
    [N, 3, 32, 32]. ``checkpoint`` defaults to the file shipped in ``latentx/data``
    (a state dict under ``"generator"``, read with ``torch.load(weights_only=True)``)."""
    from latentx.models import Generator

    path = os.fspath(DIGITS_CGAN_CHECKPOINT if checkpoint is None else checkpoint)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load('digits-cgan'): checkpoint {path!r} does not exist "
                                "(train it with experiments/train_digits_cgan.py)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "generator" not in state:
        raise KeyError(f"load('digits-cgan'): {path} has no 'generator' entry")
    net = DigitsCGANGenerator()
    try:
        net.load_state_dict(state["generator"])
    except RuntimeError as e:
        raise ValueError(f"load('digits-cgan'): {path} does not hold a DigitsCGANGenerator state dict: {e}") from e
    kwargs = dict(class_embedding=net.embedding.weight.detach(), truncation=2.0,
                  object_box=(-1.0, -1.0, 1.0, 1.0), name="digits-cgan")
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    gen = Generator(net, DIGITS_CGAN_Z_DIM, **kwargs).to(device)
    return gen

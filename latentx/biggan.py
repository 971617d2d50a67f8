"""BigGAN-deep (Brock et al. 2019), the generator seed 003 projects into, as a latentx
:class:`~latentx.models.Generator` built from a user's local weight file:

    G = latentx.models.load("biggan-deep-256", checkpoint="~/biggan/pytorch_model.bin")
    result = latentx.projection.project(G, photo, boxes=[box], classes=[207])

The architecture is the PyPI package ``pytorch-pretrained-biggan`` 0.1.1 (Hugging Face's op-for-op
port of DeepMind's TF-Hub BigGAN-deep; ``pip install --no-deps pytorch-pretrained-biggan==0.1.1``).
Its package ``__init__`` imports ``file_utils``, which needs boto3 and requests to download
weights. latentx never downloads and does not run that ``__init__``: :func:`_package` registers
a private package object whose ``__path__`` is the installed package folder, puts a stub
``file_utils`` (no network, a ``cached_path`` that refuses) into ``sys.modules`` under it, and
imports only ``config.py``, ``model.py`` and ``convert_tf_to_pytorch.py`` (whose module level
needs numpy and torch; TensorFlow only inside its conversion functions). The three real
configurations come from the latter (``BigGAN128`` / ``BigGAN256`` / ``BigGAN512``).

The adapter (SPEC Part B):

* z_dim 128; the class table W [1000, 128] is the transpose of BigGAN's ``embeddings``
  (``nn.Linear(1000, 128, bias=False)``: c = W·onehot); ``net(z, c)`` is BigGAN's generator on
  concat(z, c), so projection optimises the continuous c as seed 003 does.
* BigGAN's ``truncation`` ψ ∈ (0, 1] picks precomputed batch-norm statistics; samples at ψ are
  ψ × a normal truncated at ±2. Default ψ = 1 (pix2latent's choice), so the latent bound is
  |z|∞ ≤ 2 (seed 003's C_max); in general the bound defaults to 2ψ. Note: the package's
  interpolation between its 51 statistics grid points weights the two neighbours the wrong way
  round, so a ψ off the grid k/50 uses (nearly) the upper neighbour's statistics; ψ on the grid
  (1.0, 0.5, 0.4, ...) is exact.
* Typical object box: pix2latent's precomputed BigGAN statistic (``get_biggan_stats`` in its
  ``transform_utils.py``): object centre at (row, col) = (137, 127)/255 of the frame and size
  (213, 210)/255, i.e. (x0, y0, x1, y1) = (22, 30.5, 232, 243.5)/255 → :data:`BIGGAN_OBJECT_BOX`
  in normalised coordinates. It was measured on BigGAN-deep-256 and is used for all three.
* Spectral normalisation is folded into the weights after loading (W = W_orig / σ with the
  stored u, v, exactly what the eval-mode forward computes; ``remove_spectral_norm``), as
  pix2latent does: one fewer matrix product per layer and forward, and fine-tuning then moves
  the effective weights directly.

Where a user's weights usually are (:func:`checkpoint_locations`): the package's own download
cache (``$PYTORCH_PRETRAINED_BIGGAN_CACHE`` or ``~/.pytorch_pretrained_biggan/``; the file is
named by the SHA-256 of its S3 URL, with a ``.json`` sidecar naming the URL), a
``from_pretrained`` folder holding ``pytorch_model.bin`` and ``config.json`` (pass the folder or
the file), or for 128 the Hugging Face Hub repository ``osanseviero/BigGAN-deep-128``
(``pytorch_model.bin``). All hold the state dict of the package's ``BigGAN`` module.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib
import importlib.util
import json
import os
import sys
import types
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor, nn

__all__ = ["BIGGAN_NAMES", "BIGGAN_OBJECT_BOX", "BIGGAN_PACKAGE", "BIGGAN_VERSION", "BigGANNet",
           "biggan_config", "build_biggan", "checkpoint_locations", "load_biggan"]

BIGGAN_PACKAGE = "pytorch_pretrained_biggan"
BIGGAN_VERSION = "0.1.1"
BIGGAN_NAMES = ("biggan-deep-128", "biggan-deep-256", "biggan-deep-512")
# pix2latent's BigGAN statistic (see the module docstring), (x0, y0, x1, y1) normalised.
BIGGAN_OBJECT_BOX = (2 * 22 / 255 - 1, 2 * 30.5 / 255 - 1, 2 * 232 / 255 - 1, 2 * 243.5 / 255 - 1)

_PRIVATE = "_latentx_pytorch_pretrained_biggan"
_CONFIG_NAMES = {"biggan-deep-128": "BigGAN128", "biggan-deep-256": "BigGAN256", "biggan-deep-512": "BigGAN512"}
_HUB_REPOS = {"biggan-deep-128": "osanseviero/BigGAN-deep-128"}


def _check_name(name: Any) -> str:
    if name not in BIGGAN_NAMES:
        raise ValueError(f"BigGAN: name must be one of {', '.join(BIGGAN_NAMES)}, got {name!r}")
    return name


def _package() -> types.ModuleType:
    """The installed package's config / model / convert modules, imported without its
    ``__init__`` and without ``file_utils`` (see the module docstring). Returns the private
    package object; its attributes ``config``, ``model`` and ``convert_tf_to_pytorch`` are
    the modules."""
    pkg = sys.modules.get(_PRIVATE)
    if pkg is not None and hasattr(pkg, "convert_tf_to_pytorch"):
        return pkg
    spec = importlib.util.find_spec(BIGGAN_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"BigGAN: the package `{BIGGAN_PACKAGE}` that defines BigGAN-deep's architecture is not installed. "
            f"Install it without its dependencies (boto3/requests are only for downloads, which latentx "
            f"never does): pip install --no-deps {BIGGAN_PACKAGE}=={BIGGAN_VERSION}")
    root = list(spec.submodule_search_locations)[0]
    for needed in ("config.py", "model.py", "convert_tf_to_pytorch.py"):
        if not os.path.isfile(os.path.join(root, needed)):
            raise FileNotFoundError(f"BigGAN: {os.path.join(root, needed)} is missing from the installed "
                                    f"`{BIGGAN_PACKAGE}`; reinstall it (pip install --no-deps --force-reinstall "
                                    f"{BIGGAN_PACKAGE}=={BIGGAN_VERSION})")
    pkg = types.ModuleType(_PRIVATE, f"{BIGGAN_PACKAGE}'s modules without its __init__ (latentx.biggan)")
    pkg.__path__ = [root]
    stub = types.ModuleType(f"{_PRIVATE}.file_utils", "latentx's stand-in for the package's downloader")
    stub.PYTORCH_PRETRAINED_BIGGAN_CACHE = _cache_dir()

    def cached_path(url_or_filename, cache_dir=None):
        raise OSError(f"latentx never downloads: pass a local weight file ({url_or_filename!r} requested)")

    stub.cached_path = cached_path
    sys.modules[_PRIVATE] = pkg
    sys.modules[stub.__name__] = stub
    try:
        for name in ("config", "model", "convert_tf_to_pytorch"):
            setattr(pkg, name, importlib.import_module(f"{_PRIVATE}.{name}"))
    except BaseException:
        for key in [k for k in sys.modules if k == _PRIVATE or k.startswith(_PRIVATE + ".")]:
            del sys.modules[key]
        raise
    return pkg


def biggan_config(name: str):
    """A copy of the package's ``BigGANConfig`` for ``name`` (output_dim, z_dim 128,
    class_embed_dim 128, channel_width 128, 1000 classes, the layer list, attention at 8)."""
    return copy.deepcopy(getattr(_package().convert_tf_to_pytorch, _CONFIG_NAMES[_check_name(name)]))


def build_biggan(name: str, *, device: Union[str, torch.device, None] = None) -> nn.Module:
    """The package's ``BigGAN`` module for ``name``, randomly initialised (PyTorch's default
    init; the final batch norm's gain 1 and bias 0; spectral norm's u, v converged by power
    iteration). ``device="meta"`` gives the shapes without allocating (≈56 M parameters, 225 MB in
    float32 otherwise)."""
    cfg = biggan_config(name)
    pkg = _package()
    if device is None:
        model = pkg.model.BigGAN(cfg)
    else:
        with torch.device(device):
            model = pkg.model.BigGAN(cfg)
    # The package creates the final (unconditional) batch norm's weight and bias with
    # torch.Tensor(n): uninitialised memory, harmless when a checkpoint overwrites them and NaN
    # otherwise. A fresh model gets the usual 1 and 0.
    # Spectral norm starts from random u, v, so its σ = uᵀ W v is a random projection, not W's
    # top singular value, and W / σ blows activations up (to NaN after a few blocks). A trained
    # checkpoint carries converged u, v; a fresh model gets 15 power iterations here.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, pkg.model.BigGANBatchNorm) and not module.conditional:
                module.weight.fill_(1.0)
                module.bias.zero_()
            if hasattr(module, "weight_u") and hasattr(module, "weight_orig") and module.weight_u.device.type != "meta":
                w = module.weight_orig.reshape(module.weight_orig.shape[0], -1)
                u, v = module.weight_u, module.weight_v
                for _ in range(15):
                    v.copy_(torch.nn.functional.normalize(w.t() @ u, dim=0, eps=1e-12))
                    u.copy_(torch.nn.functional.normalize(w @ v, dim=0, eps=1e-12))
    return model


def _cache_dir() -> str:
    return os.environ.get("PYTORCH_PRETRAINED_BIGGAN_CACHE",
                          os.path.join(os.path.expanduser("~"), ".pytorch_pretrained_biggan"))


def checkpoint_locations(name: str) -> list[tuple[str, str, bool]]:
    """Where a copy of ``name``'s weights usually lives: (what, path or pattern, exists) rows.
    Looks only at the local disk."""
    _check_name(name)
    rows: list[tuple[str, str, bool]] = []
    cache = _cache_dir()
    try:
        url = _package().model.PRETRAINED_MODEL_ARCHIVE_MAP[name]
    except (ModuleNotFoundError, FileNotFoundError):
        url = None
    if url is not None:
        # file_utils.url_to_filename: sha256(url) [+ "." + sha256(etag)]
        stem = hashlib.sha256(url.encode("utf-8")).hexdigest()
        found = sorted(str(p) for p in Path(cache).glob(stem + "*") if not p.name.endswith(".json")) \
            if os.path.isdir(cache) else []
        for path in found:
            rows.append((f"pytorch-pretrained-biggan's download cache ({url})", path, True))
        if not found:
            rows.append((f"pytorch-pretrained-biggan's download cache ({url}), named sha256(url)[.sha256(etag)]",
                         os.path.join(cache, stem + "*"), False))
    hub = _HUB_REPOS.get(name)
    if hub is not None:
        hub_root = os.environ.get("HF_HUB_CACHE") or os.path.join(
            os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface")), "hub")
        folder = Path(hub_root) / ("models--" + hub.replace("/", "--")) / "snapshots"
        found = sorted(str(p) for p in folder.glob("*/pytorch_model.bin")) if folder.is_dir() else []
        for path in found:
            rows.append((f"Hugging Face Hub cache ({hub})", path, True))
        if not found:
            rows.append((f"Hugging Face Hub repository {hub}", str(folder / "<revision>" / "pytorch_model.bin"), False))
    rows.append(("a BigGAN.from_pretrained folder (pytorch_model.bin + config.json)",
                 f"<folder>/pytorch_model.bin", False))
    return rows


def _missing_checkpoint_message(name: str, checkpoint: Optional[str]) -> str:
    rows = checkpoint_locations(name)
    found = [path for _, path, exists in rows if exists]
    lines = [f"load({name!r}): " + ("no checkpoint given" if checkpoint is None else
                                    f"checkpoint {checkpoint!r} does not exist") +
             ". latentx never downloads BigGAN's weights (~210-225 MB); pass the state dict of "
             f"{BIGGAN_PACKAGE}'s BigGAN module: latentx.models.load({name!r}, checkpoint=PATH), or "
             f"`latentx project --generator {name} --checkpoint PATH`. A copy usually lives in:"]
    lines += [f"  - {what}: {path}{'  (found)' if exists else ''}" for what, path, exists in rows]
    if found:
        lines.append(f"Found on this machine: {found[0]}")
    return "\n".join(lines)


class BigGANNet(nn.Module):
    """BigGAN's generator as ``net(z [N, 128], c [N, 128]) → [N, 3, R, R]`` in [−1, 1]:
    the package's ``Generator`` applied to concat(z, c) with batch-norm statistics for
    ``bn_truncation`` ψ (a float in (0, 1])."""

    def __init__(self, generator: nn.Module, bn_truncation: float = 1.0):
        super().__init__()
        if not (isinstance(bn_truncation, (int, float)) and 0 < bn_truncation <= 1):
            raise ValueError(f"BigGAN: bn_truncation must be a number in (0, 1], got {bn_truncation!r}")
        self.generator = generator
        self.bn_truncation = float(bn_truncation)

    def forward(self, z: Tensor, c: Tensor) -> Tensor:
        return self.generator(torch.cat([z, c], 1), self.bn_truncation)

    def extra_repr(self) -> str:
        return f"bn_truncation={self.bn_truncation}"


def _resolve_checkpoint(name: str, checkpoint: Union[str, os.PathLike, None]) -> tuple[str, Optional[str]]:
    """(weights file, config.json or None) for a file or a from_pretrained folder."""
    if checkpoint is None:
        raise FileNotFoundError(_missing_checkpoint_message(name, None))
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"load({name!r}): checkpoint must be a path, got {type(checkpoint).__name__}")
    path = os.path.expanduser(os.fspath(checkpoint))
    if os.path.isdir(path):
        weights = os.path.join(path, "pytorch_model.bin")
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"load({name!r}): the folder {path!r} holds no pytorch_model.bin "
                                    "(a from_pretrained folder has pytorch_model.bin and config.json); "
                                    "pass the weight file itself")
        config = os.path.join(path, "config.json")
        return weights, config if os.path.isfile(config) else None
    if not os.path.isfile(path):
        raise FileNotFoundError(_missing_checkpoint_message(name, path))
    config = os.path.join(os.path.dirname(path), "config.json")
    return path, config if os.path.isfile(config) and os.path.basename(path) == "pytorch_model.bin" else None


def _check_config_file(name: str, path: str) -> None:
    try:
        with open(path, encoding="utf-8") as f:
            found = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"load({name!r}): cannot read {path} as JSON: {e}") from e
    if not isinstance(found, dict):
        raise ValueError(f"load({name!r}): {path} is not a BigGAN config (a JSON object)")
    expected = biggan_config(name).to_dict()
    for key in ("output_dim", "z_dim", "class_embed_dim", "channel_width", "num_classes", "layers",
                "attention_layer_position", "n_stats"):
        if key in found:
            a = json.loads(json.dumps(found[key]))
            b = json.loads(json.dumps(expected[key]))
            if a != b:
                raise ValueError(f"load({name!r}): {path} describes another model ({key} = {a!r}, "
                                 f"{name} has {b!r}); pick the name that matches the checkpoint")


@functools.lru_cache(maxsize=None)
def _shapes(name: str) -> dict[str, tuple]:
    """{state-dict key: shape} of ``name`` (built once per process on the meta device)."""
    model = build_biggan(name, device="meta")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _compare(state: dict, shapes: dict[str, tuple]) -> tuple[list, list, list]:
    missing = sorted(k for k in shapes if k not in state)
    unexpected = sorted(k for k in state if k not in shapes)
    wrong = sorted((k, tuple(state[k].shape), shapes[k]) for k in shapes
                   if k in state and isinstance(state[k], Tensor) and tuple(state[k].shape) != shapes[k])
    return missing, unexpected, wrong


def _check_state(name: str, state: dict, path: str) -> None:
    if not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"load({name!r}): {path} is not a state dict of tensors")
    missing, unexpected, wrong = _compare(state, dict(_shapes(name)))
    if not (missing or unexpected or wrong):
        return
    other = [n for n in BIGGAN_NAMES if n != name and not any(_compare(state, _shapes(n)))]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if wrong:
        k, got, want = wrong[0]
        parts.append(f"{len(wrong)} with other shapes (e.g. {k}: {list(got)} in the file, {list(want)} in {name})")
    hint = (f" It fits {other[0]}: load it with that name." if other else
            f" Is it the state dict of {BIGGAN_PACKAGE}'s BigGAN module (keys 'embeddings.weight', "
            "'generator.gen_z.weight_orig', ...)?")
    raise ValueError(f"load({name!r}): {path} does not match {name}'s architecture: keys "
                     + "; ".join(parts) + "." + hint)


def load_biggan(name: str, checkpoint: Union[str, os.PathLike, None] = None, *, key: Optional[str] = None,
                bn_truncation: float = 1.0, truncation: Optional[float] = None,
                object_box: Optional[Sequence[float]] = None, device: Union[str, torch.device] = "cpu"):
    """BigGAN-deep ``name`` with the weights in ``checkpoint`` as a
    :class:`latentx.models.Generator` (z [N, 128], class table [1000, 128], output
    [N, 3, R, R] with R = 128 / 256 / 512).

    Args:
        name: ``"biggan-deep-128"``, ``"biggan-deep-256"`` or ``"biggan-deep-512"``.
        checkpoint: the state dict of ``pytorch_pretrained_biggan.BigGAN`` (the package's
            ``pytorch_model.bin``), or a ``from_pretrained`` folder holding it (its
            ``config.json``, when present, is checked against ``name``). Read with
            ``torch.load(weights_only=True)``; nothing is downloaded. Missing: a
            FileNotFoundError that lists where copies usually are.
        key: the entry of a dict checkpoint that holds the state dict, if it is wrapped.
        bn_truncation: BigGAN's truncation ψ ∈ (0, 1] (which batch-norm statistics).
        truncation: the latent bound |z|∞ (default 2ψ).
        object_box: the typical object box (default :data:`BIGGAN_OBJECT_BOX`).
        device: where the generator lives.
    """
    from latentx.models import Generator, _state_dict_from

    _check_name(name)
    weights, config = _resolve_checkpoint(name, checkpoint)
    if config is not None:
        _check_config_file(name, config)
    try:
        obj = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle / zip errors: say what was expected
        raise ValueError(f"load({name!r}): cannot read {weights} as a torch state dict with "
                         f"torch.load(weights_only=True): {type(e).__name__}: {e}") from e
    try:
        state = _state_dict_from(obj, key, weights)
    except KeyError as e:
        raise ValueError(str(e.args[0]) if e.args else str(e)) from e
    _check_state(name, state, weights)
    if not (isinstance(bn_truncation, (int, float)) and 0 < bn_truncation <= 1):
        raise ValueError(f"load({name!r}): bn_truncation must be a number in (0, 1], got {bn_truncation!r}")

    # Build on the meta device and take the file's tensors as they are (assign=True): no
    # random init of 56 M parameters, no second copy in memory.
    model = build_biggan(name, device="meta")
    model.load_state_dict(state, strict=True, assign=True)
    generator = model.generator
    for module in generator.modules():
        if hasattr(module, "weight_orig"):
            torch.nn.utils.remove_spectral_norm(module)
    table = model.embeddings.weight.detach().t().contiguous()  # [1000, 128]: row k = W·onehot(k)
    net = BigGANNet(generator, bn_truncation)
    gen = Generator(net, int(model.config.z_dim), class_embedding=table,
                    truncation=2.0 * float(bn_truncation) if truncation is None else truncation,
                    object_box=BIGGAN_OBJECT_BOX if object_box is None else object_box, name=name)
    r = int(model.config.output_dim)
    gen._resolution = (r, r)  # known from the config: no probe forward at 512×512
    return gen.to(device)

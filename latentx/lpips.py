"""LPIPS (Zhang et al. 2018) as a drop-in for ``lpips.LPIPS``, with masks and a cached target.

The backbones (AlexNet, VGG16, SqueezeNet 1.1 feature stacks) are defined here, laid out as
the ``lpips`` package lays them out (``net.slice1.0.weight``, …, whose indices are
torchvision's ``features.N``), so that ``latentx.LPIPS(...).load_state_dict(lpips_model.
state_dict())`` works and torchvision's ImageNet checkpoints load through that index map.
The per-layer head runs in the fused :func:`latentx.ops.lpips_head` op (SPEC A3): with a mask
(seed 003, Appendix B, eq. 7) each layer's spatial mean becomes Σ m·d / Σ m with the mask
resized to the layer by area averaging (``resize_mask``).
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentx.ops.lpips_head import lpips_head

__all__ = ["LPIPS", "TargetFeatures", "backbone_checkpoint_paths", "resize_mask"]


def resize_mask(mask: Tensor, size: Sequence[int]) -> Tensor:
    """A mask [N, 1, H, W] resized to a layer's (H_l, W_l) by area averaging
    (``F.adaptive_avg_pool2d``): each layer cell is the mean of the input pixels it covers.

    Seed 003 (and SPEC A3) say "bilinearly resized"; plain bilinear interpolation reads only
    the 4 pixels nearest each cell centre, so a small box vanishes at a deep layer (a 12×12 box
    on a 64×64 AlexNet input gives an all-zero 3×3 mask: 0/0 = NaN). The cells of the area
    average cover every input pixel, so a mask with a positive pixel keeps a positive cell at
    every layer; an all-ones mask stays all ones (the plain ``lpips`` value), and values stay
    in [0, 1]."""
    return F.adaptive_avg_pool2d(mask, tuple(int(v) for v in size))


class Fire(nn.Module):
    """SqueezeNet's fire module (squeeze 1×1, then expand 1×1 and 3×3, concatenated)."""

    def __init__(self, inplanes: int, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(inplanes, squeeze, kernel_size=1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, kernel_size=1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, kernel_size=3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], 1)


def _alexnet_features() -> list[nn.Module]:
    relu = lambda: nn.ReLU(inplace=True)  # noqa: E731
    return [nn.Conv2d(3, 64, 11, stride=4, padding=2), relu(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), relu(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), relu(),
            nn.Conv2d(384, 256, 3, padding=1), relu(),
            nn.Conv2d(256, 256, 3, padding=1), relu(), nn.MaxPool2d(3, 2)]


def _vgg16_features() -> list[nn.Module]:
    layers: list[nn.Module] = []
    channels = 3
    for width in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if width == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
            channels = width
    return layers


def _squeezenet1_1_features() -> list[nn.Module]:
    pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
    return [nn.Conv2d(3, 64, 3, stride=2), nn.ReLU(inplace=True), pool(),
            Fire(64, 16, 64, 64), Fire(128, 16, 64, 64), pool(),
            Fire(128, 32, 128, 128), Fire(256, 32, 128, 128), pool(),
            Fire(256, 48, 192, 192), Fire(384, 48, 192, 192),
            Fire(384, 64, 256, 256), Fire(512, 64, 256, 256)]


@dataclass(frozen=True)
class _BackboneSpec:
    features: object  # () -> list of torchvision-indexed layers
    slice_ends: tuple[int, ...]  # lpips' slices: features[prev_end:end]
    channels: tuple[int, ...]
    checkpoint: str  # torchvision's ImageNet checkpoint file name


BACKBONES = {
    "alex": _BackboneSpec(_alexnet_features, (2, 5, 8, 10, 12), (64, 192, 384, 256, 256),
                          "alexnet-owt-7be5be79.pth"),
    "vgg": _BackboneSpec(_vgg16_features, (4, 9, 16, 23, 30), (64, 128, 256, 512, 512),
                         "vgg16-397923af.pth"),
    "squeeze": _BackboneSpec(_squeezenet1_1_features, (2, 5, 8, 10, 11, 12, 13),
                             (64, 128, 256, 384, 384, 512, 512), "squeezenet1_1-b8a52dc0.pth"),
}
NET_ALIASES = {"alex": "alex", "vgg": "vgg", "vgg16": "vgg", "squeeze": "squeeze"}


class Backbone(nn.Module):
    """A torchvision feature stack cut into lpips' slices; forward returns each slice's output."""

    def __init__(self, spec: _BackboneSpec) -> None:
        super().__init__()
        layers = spec.features()
        start = 0
        for k, end in enumerate(spec.slice_ends, start=1):
            block = nn.Sequential()
            for index in range(start, end):
                block.add_module(str(index), layers[index])
            self.add_module(f"slice{k}", block)
            start = end
        self.n_slices = len(spec.slice_ends)

    def forward(self, x: Tensor) -> list[Tensor]:
        outputs = []
        for k in range(1, self.n_slices + 1):
            x = getattr(self, f"slice{k}")(x)
            outputs.append(x)
        return outputs

    def load_torchvision_state_dict(self, state_dict: dict[str, Tensor]) -> None:
        """Load a torchvision model's ``features.N.*`` weights (the classifier is ignored)."""
        mapped = {}
        slice_of = {}
        for k in range(1, self.n_slices + 1):
            for index in getattr(self, f"slice{k}")._modules:
                slice_of[index] = k
        for key, value in state_dict.items():
            if key.startswith("features."):
                index, rest = key[len("features."):].split(".", 1)
                mapped[f"slice{slice_of[index]}.{index}.{rest}"] = value
        self.load_state_dict(mapped, strict=True)


def backbone_checkpoint_paths(net: str) -> list[str]:
    """Where a torchvision ImageNet checkpoint for ``net`` is looked for, in order."""
    name = BACKBONES[NET_ALIASES[net]].checkpoint
    return [os.path.join(torch.hub.get_dir(), "checkpoints", name)]


def _lpips_weights_path(net: str, version: str) -> str:
    """The linear-layer weights the installed ``lpips`` package ships (found, not imported:
    importing lpips imports torchvision)."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "LPIPS linear weights: the `lpips` package is not installed, so its weights files "
            "cannot be found. Install it without its dependencies (`pip install --no-deps "
            "lpips`), or pass model_path= to a file with lin0..linK weights.")
    return os.path.join(os.path.dirname(spec.origin), "weights", f"v{version}", f"{net}.pth")


def _min_input_size(net: nn.Module) -> int:
    """The smallest square input side for which every convolution and pooling of ``net`` has
    an output (31 for AlexNet, 16 for VGG16, 17 for SqueezeNet 1.1): a smaller image would stop
    deep inside with a RuntimeError from the backbone."""
    layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.MaxPool2d))]

    def pair(v):
        return v if isinstance(v, tuple) else (v, v)

    def fits(side: int) -> bool:
        h = side
        for m in layers:
            (k, _), (s, _), (p, _), (d, _) = (pair(m.kernel_size), pair(m.stride), pair(m.padding),
                                              pair(m.dilation))
            span = h + 2 * p - d * (k - 1) - 1
            if isinstance(m, nn.Conv2d) and span < 0:
                return False
            # PyTorch's pooling_output_shape: a ceil-mode window may overhang the input, but a
            # last window that would start in the right padding is dropped.
            ceil = isinstance(m, nn.MaxPool2d) and m.ceil_mode
            out = (span + (s - 1 if ceil else 0)) // s + 1
            if ceil and (out - 1) * s >= h + p:
                out -= 1
            if out < 1:
                return False
            h = out
        return True

    return next(side for side in range(1, 4097) if fits(side))


class ScalingLayer(nn.Module):
    """lpips' input scaling: (x − shift) / scale, with ImageNet-like constants for [−1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.shift) / self.scale


class NetLinLayer(nn.Module):
    """lpips' per-layer 1×1 linear weights (dropout first, as lpips lays out its keys)."""

    def __init__(self, channels: int, use_dropout: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout()] if use_dropout else []
        layers.append(nn.Conv2d(channels, 1, 1, bias=False))
        self.model = nn.Sequential(*layers)

    @property
    def weight(self) -> Tensor:
        """The layer's weights w_c as a [C] vector."""
        return self.model[-1].weight.view(-1)


@dataclass
class TargetFeatures:
    """A target's backbone features, computed once by :meth:`LPIPS.encode`.

    ``layers[k]`` is [T, C_k, H_k, W_k] with T = 1 (one target for every candidate) or the
    candidates' batch size; ``size`` is the input's (H, W).
    """

    layers: list[Tensor]
    size: tuple[int, int]


class LPIPS(nn.Module):
    """Learned perceptual image patch similarity, a drop-in for ``lpips.LPIPS``.

    The constructor takes ``lpips.LPIPS``'s arguments and the state dict has its keys.
    ``forward(in0, in1)`` gives the same numbers; latentx adds ``mask=`` and a cached-target
    path (:meth:`encode` once, :meth:`distance` many times).

    Args:
        pretrained: load the linear-layer weights (from the installed ``lpips`` package, or
            ``model_path``).
        net: ``"alex"``, ``"vgg"`` (or ``"vgg16"``) or ``"squeeze"``.
        version: ``"0.1"`` (inputs scaled as lpips v0.1) or ``"0.0"`` (unscaled).
        lpips: weight channels with the linear layers; False averages them (the baseline).
        spatial: return per-pixel distance maps [N, 1, H, W] instead of [N, 1, 1, 1].
        pnet_rand: leave the backbone randomly initialised instead of loading ImageNet weights.
        pnet_tune: let the backbone's parameters require grad.
        use_dropout, eval_mode: as in lpips (dropout is inactive in eval mode).
        model_path: a file of linear weights to load instead of the package's.
        backbone_path: a torchvision ImageNet checkpoint to load instead of looking in the
            torch hub cache (see :func:`backbone_checkpoint_paths`).
        verbose: print what is loaded, as lpips does.
    """

    def __init__(
        self,
        pretrained: bool = True,
        net: str = "alex",
        version: str = "0.1",
        lpips: bool = True,
        spatial: bool = False,
        pnet_rand: bool = False,
        pnet_tune: bool = False,
        use_dropout: bool = True,
        model_path: Optional[str] = None,
        eval_mode: bool = True,
        verbose: bool = False,
        backbone_path: Optional[str] = None,
    ) -> None:
        super().__init__()
        if net not in NET_ALIASES:
            raise ValueError(f"LPIPS: net must be one of {sorted(NET_ALIASES)}, got {net!r}")
        if version not in ("0.1", "0.0"):
            raise ValueError(f"LPIPS: version must be '0.1' or '0.0', got {version!r}")
        self.pnet_type = NET_ALIASES[net]
        self.version, self.lpips, self.spatial = version, lpips, spatial
        spec = BACKBONES[self.pnet_type]
        self.chns = list(spec.channels)
        self.L = len(self.chns)
        self.scaling_layer = ScalingLayer()
        self.net = Backbone(spec)
        if not pnet_rand:
            self._load_backbone(backbone_path, verbose)
        self.net.requires_grad_(pnet_tune)
        if lpips:
            for k, channels in enumerate(self.chns):
                setattr(self, f"lin{k}", NetLinLayer(channels, use_dropout))
            self.lins = nn.ModuleList([getattr(self, f"lin{k}") for k in range(self.L)])
            if pretrained:
                if model_path is not None and not os.path.isfile(model_path):
                    raise FileNotFoundError(
                        f"LPIPS: model_path {model_path!r} is not a file. Pass the path of a file of "
                        f"lin0..lin{self.L - 1} weights (as lpips ships in lpips/weights/v{version}/"
                        f"{self.pnet_type}.pth), or leave model_path=None to use the installed lpips "
                        "package's weights.")
                path = model_path or _lpips_weights_path(self.pnet_type, version)
                if verbose:
                    print(f"LPIPS: loading linear weights from {path}")
                self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=False)
            # A metric: the linear weights are fixed unless the user asks otherwise
            # (requires_grad_ on them makes the head fall back to the autograd reference).
            self.lins.requires_grad_(False)
        if eval_mode:
            self.eval()
        self.min_size = _min_input_size(self.net)

    def _load_backbone(self, backbone_path: Optional[str], verbose: bool) -> None:
        candidates = [backbone_path] if backbone_path else backbone_checkpoint_paths(self.pnet_type)
        for path in candidates:
            if os.path.isfile(path):
                if verbose:
                    print(f"LPIPS: loading backbone weights from {path}")
                self.net.load_torchvision_state_dict(torch.load(path, map_location="cpu", weights_only=True))
                return
        raise FileNotFoundError(
            f"LPIPS: pretrained {self.pnet_type} backbone weights not found; looked in: "
            f"{', '.join(candidates)}. Put torchvision's ImageNet checkpoint "
            f"({BACKBONES[self.pnet_type].checkpoint}) there, pass backbone_path=, or use "
            "pnet_rand=True for a random backbone.")

    # --- the two halves: target features once, distances many times ------------------------

    def encode(self, images: Tensor, normalize: bool = False) -> TargetFeatures:
        """Backbone features of ``images`` [T, 3, H, W] (in [−1, 1], or [0, 1] with
        ``normalize``), to compare many candidates against with :meth:`distance`."""
        images = self._check_images("images", images, normalize)
        if self.version == "0.1":
            images = self.scaling_layer(images)
        return TargetFeatures(self.net(images), tuple(images.shape[2:]))

    def distance(
        self,
        in0: Tensor,
        target: TargetFeatures,
        *,
        mask: Optional[Tensor] = None,
        normalize: bool = False,
        retPerLayer: bool = False,  # noqa: N803 (lpips' name)
    ) -> Union[Tensor, tuple[Tensor, list[Tensor]]]:
        """LPIPS between candidates ``in0`` [N, 3, H, W] and encoded target(s).

        ``mask`` [N or 1, 1, H, W] (or [H, W]) in [0, 1] weights each layer's spatial mean
        (seed 003 eq. 7), resized to the layer by area averaging (:func:`resize_mask`; a mask
        with any positive pixel stays non-empty at every layer). A mask with NaN, values
        outside [0, 1] or no positive value for some sample is refused (ValueError). Returns [N, 1, 1, 1] (or the
        [N, 1, H, W] maps when ``spatial``), and the per-layer terms with ``retPerLayer``.
        """
        in0 = self._check_images("in0", in0, normalize)
        n = in0.shape[0]
        if tuple(in0.shape[2:]) != target.size:
            raise ValueError(f"LPIPS: in0 is {tuple(in0.shape[2:])} but the target was encoded "
                             f"at {target.size}; images must have the same size")
        if target.layers[0].shape[0] not in (1, n):
            raise ValueError(f"LPIPS: the target batch ({target.layers[0].shape[0]}) must be 1 "
                             f"or in0's ({n})")
        if mask is not None:
            if self.spatial:
                raise ValueError("LPIPS: mask weights each layer's spatial mean; with spatial=True "
                                 "there is none (multiply the returned map by the mask instead)")
            mask = self._check_mask(mask, n, target.size, in0)
        if self.version == "0.1":
            in0 = self.scaling_layer(in0)
        feats0 = self.net(in0)
        per_layer = []
        for k, (f0, f1) in enumerate(zip(feats0, target.layers)):
            weight = self.lins[k].weight if self.lpips else torch.ones(f0.shape[1], dtype=f0.dtype, device=f0.device)
            layer_mask = None if mask is None else resize_mask(mask, f0.shape[2:])
            # Trainable linear weights need autograd through the head: the reference has it.
            impl = "reference" if weight.requires_grad else "auto"
            if self.spatial:
                d = lpips_head(f0, f1, weight, spatial=True, impl=impl)
                per_layer.append(F.interpolate(d, size=target.size, mode="bilinear", align_corners=False))
            else:
                per_layer.append(lpips_head(f0, f1, weight, layer_mask, impl=impl).view(n, 1, 1, 1))
        total = per_layer[0]
        for term in per_layer[1:]:
            total = total + term
        return (total, per_layer) if retPerLayer else total

    def forward(
        self,
        in0: Tensor,
        in1: Tensor,
        retPerLayer: bool = False,  # noqa: N803 (lpips' name)
        normalize: bool = False,
        mask: Optional[Tensor] = None,
    ) -> Union[Tensor, tuple[Tensor, list[Tensor]]]:
        """LPIPS between ``in0`` [N, 3, H, W] and ``in1`` [N or 1, 3, H, W], as lpips.LPIPS."""
        # Checked before in1 is encoded: a mismatch or a too-small image would otherwise stop
        # inside the backbone.
        if isinstance(in0, Tensor) and isinstance(in1, Tensor) and in0.dim() == 4 and in1.dim() == 4:
            if in0.shape[2:] != in1.shape[2:] or in1.shape[0] not in (1, in0.shape[0]):
                raise ValueError(f"LPIPS: in0 {list(in0.shape)} and in1 {list(in1.shape)} must have the "
                                 "same size (H, W), and in1 one image or in0's batch size")
            self._check_size("in1", in1)
        return self.distance(in0, self.encode(in1, normalize), mask=mask, normalize=normalize,
                             retPerLayer=retPerLayer)

    # --- argument checks ----------------------------------------------------------------------

    def _check_images(self, name: str, images: Tensor, normalize: bool) -> Tensor:
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"LPIPS: {name} must be [N, 3, H, W] images, got {shape}")
        self._check_size(name, images)
        if not images.is_floating_point():
            raise TypeError(f"LPIPS: {name} must be a floating tensor, got {images.dtype}")
        if normalize:
            return 2 * images - 1
        if images.numel():
            lo, hi = torch.aminmax(images.detach())
            if lo < -1 or hi > 1:
                warnings.warn(f"LPIPS: {name} has values in [{lo.item():.3g}, {hi.item():.3g}], "
                              "outside [-1, 1]; pass normalize=True for [0, 1] images",
                              stacklevel=4)
        return images

    def _check_size(self, name: str, images: Tensor) -> None:
        if min(images.shape[2:]) < self.min_size:
            raise ValueError(f"LPIPS: {name} is {images.shape[2]}×{images.shape[3]}, smaller than the "
                             f"{self.min_size}×{self.min_size} the {self.pnet_type} backbone needs "
                             "(upsample the images, or use another net)")

    @staticmethod
    def _check_mask(mask: Tensor, n: int, size: Sequence[int], like: Tensor) -> Tensor:
        if mask.dim() == 2:
            mask = mask[None, None]
        if mask.dim() != 4 or mask.shape[0] not in (1, n) or mask.shape[1] != 1 or tuple(mask.shape[2:]) != tuple(size):
            raise ValueError(f"LPIPS: mask must be [{n} or 1, 1, {size[0]}, {size[1]}] or "
                             f"[{size[0]}, {size[1]}], got {list(mask.shape)}")
        if not isinstance(mask, Tensor) or not mask.is_floating_point():
            raise TypeError(f"LPIPS: mask must be a floating tensor, got "
                            f"{mask.dtype if isinstance(mask, Tensor) else type(mask).__name__}")
        mask = mask.to(dtype=like.dtype, device=like.device)
        m = mask.detach()
        # Written as not (in range) so that NaN fails too.
        if m.numel() and not bool(((m >= 0) & (m <= 1)).all()):
            bad = m[~((m >= 0) & (m <= 1))].reshape(-1)[:3].tolist()
            raise ValueError(f"LPIPS: mask values must lie in [0, 1] (no NaN), got e.g. {bad}")
        if not bool((m.flatten(1).sum(1) > 0).all()):
            raise ValueError("LPIPS: mask must have a positive value for every sample (an all-zero "
                             "mask leaves nothing to compare)")
        return mask

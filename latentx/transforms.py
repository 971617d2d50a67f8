"""Spatial and colour transforms of seed 003 §3.3 (SPEC A5), batched, with exact inverses.

Coordinates are normalised as in ``F.affine_grid`` / ``F.grid_sample`` with
``align_corners=False``: x (columns) and y (rows) run over [-1, 1] from the outer edge of
the first pixel to the outer edge of the last one.

Direction. A spatial transform ψ = [s_x, s_y, t_x, t_y] maps OUTPUT coordinates to INPUT
coordinates (output → input sampling, like F.affine_grid's theta):

    T_ψ(x)(u, v) = x(s_x·u + t_x, s_y·v + t_y).

So s > 1 shows a larger part of the input (the content shrinks; the warp is low-pass
filtered by ``latentx.ops.warp_affine``, SPEC A4) and s < 1 zooms in; t_x > 0 shows content
further right (the content moves left). The inverse is ψ⁻¹ = [1/s_x, 1/s_y, −t_x/s_x,
−t_y/s_y]. In pix2latent's use ψ maps the generator's frame (output) into the target
photograph (input): T_ψ(target) puts the object where the generator draws objects, and
T_ψ⁻¹(G(z)) puts a generated image back into the photograph's frame.

Colour: brightness γ is added in [-1, 1] image space (SPEC A5: latentx's additive
parameterisation, identity γ = 0; no clamping, so the inverse −γ is exact). The composition
T_φ = T_ψ ∘ T_γ (brightness first) has the inverse T_φ⁻¹ = T_γ⁻¹ ∘ T_ψ⁻¹. Masks take the
spatial part only.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from latentx.ops import warp_affine


def _per_sample(params: Tensor, n: Optional[int], width: int, name: str) -> Tensor:
    if params.dim() == 1:
        params = params[None]
    if params.dim() != 2 or params.shape[1] != width:
        raise ValueError(f"{name} must be [{width}] or [N, {width}], got shape {list(params.shape)}")
    if n is not None and params.shape[0] not in (1, n):
        raise ValueError(f"{name} holds {params.shape[0]} samples but the batch has {n}")
    # A NaN / inf row would silently poison its image (and its inverse).
    finite = params.detach().isfinite().all(1)
    if not bool(finite.all()):
        raise ValueError(f"{name} must be finite, got rows {params.detach()[~finite][:3].tolist()}")
    return params if n is None else params.expand(n, width)


@dataclass
class SpatialTransform:
    """ψ = [s_x, s_y, t_x, t_y] per sample: ``params`` [N, 4] (or [4], one for all), output →
    input in normalised coordinates (see the module docstring). Differentiable w.r.t. params."""

    params: Tensor

    def __post_init__(self):
        self.params = _per_sample(self.params, None, 4, "SpatialTransform params")

    @classmethod
    def identity(cls, n: int = 1, *, dtype=torch.float32, device=None) -> "SpatialTransform":
        return cls(torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=dtype, device=device).repeat(n, 1))

    @property
    def scale(self) -> Tensor:
        """[N, 2] (s_x, s_y)."""
        return self.params[:, :2]

    @property
    def shift(self) -> Tensor:
        """[N, 2] (t_x, t_y)."""
        return self.params[:, 2:]

    def inverse(self) -> "SpatialTransform":
        """ψ⁻¹ = [1/s_x, 1/s_y, −t_x/s_x, −t_y/s_y]: T_ψ⁻¹(T_ψ(x)) = x where defined. A zero
        scale (the whole output from one input line) has no inverse: ValueError."""
        if bool((self.scale.detach() == 0).any()):
            raise ValueError(f"SpatialTransform.inverse: params scales (s_x, s_y) must be non-zero, got "
                             f"{self.scale.detach()[(self.scale.detach() == 0).any(1)][:3].tolist()}")
        return SpatialTransform(torch.cat([1 / self.scale, -self.shift / self.scale], dim=1))

    def then(self, other: "SpatialTransform") -> "SpatialTransform":
        """The transform T_other ∘ T_self (self applied first): output p → other's input
        s_o·p + t_o, which is self's output → self's input: ψ = [s_s s_o, s_s t_o + t_s]."""
        scale = self.scale * other.scale
        shift = self.scale * other.shift + self.shift
        return SpatialTransform(torch.cat([scale, shift], dim=1))

    def theta(self) -> Tensor:
        """[N, 2, 3] for F.affine_grid / warp_affine."""
        zero = torch.zeros_like(self.params[:, 0])
        sx, sy, tx, ty = self.params.unbind(1)
        return torch.stack([torch.stack([sx, zero, tx], 1), torch.stack([zero, sy, ty], 1)], 1)

    def apply(self, image: Tensor, size: Optional[Sequence[int]] = None, *, padding_mode: str = "zeros",
              filter: str = "tent", antialias: bool = True, impl: str = "auto") -> Tensor:
        """T_ψ(image): image [N, C, H, W] → [N, C, Ho, Wo] (``size`` = (Ho, Wo), default (H, W)),
        low-pass filtered where it shrinks. ψ holds one row per image, or one for all."""
        if not isinstance(image, Tensor) or image.dim() != 4:
            shape = list(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(f"SpatialTransform.apply: image must be [N, C, H, W], got {shape}")
        n = image.shape[0]
        theta = _per_sample(self.params, n, 4, "SpatialTransform params")
        theta = SpatialTransform(theta).theta().to(image.dtype)
        size = tuple(image.shape[2:]) if size is None else tuple(size)
        return warp_affine(image, theta, size, antialias=antialias, align_corners=False,
                           padding_mode=padding_mode, filter=filter, impl=impl)

    def apply_mask(self, mask: Tensor, size: Optional[Sequence[int]] = None, **kwargs) -> Tensor:
        """T_ψ(mask) for a mask in [0, 1] [N, 1, H, W]: outside the image counts as not-object
        (zeros padding); antialiased edges stay in [0, 1]."""
        if not isinstance(mask, Tensor) or mask.dim() != 4:
            shape = list(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(f"SpatialTransform.apply_mask: mask must be [N, 1, H, W], got {shape}")
        return self.apply(mask, size, padding_mode="zeros", **kwargs)

    def valid_region(self, size: Sequence[int]) -> Tensor:
        """[N, 1, Ho, Wo] bool: output pixels whose sampling location lies inside the input
        (|s·p + t| ≤ 1 on both axes, p the output pixel centre). ``size`` = (Ho, Wo)."""
        if (not isinstance(size, Sequence) or len(size) != 2
                or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 0 for v in size)):
            raise ValueError(f"valid_region: size must be (Ho, Wo), two integers >= 0, got {size!r}")
        ho, wo = size
        xs = (torch.arange(wo, dtype=self.params.dtype, device=self.params.device) * 2 + 1) / wo - 1
        ys = (torch.arange(ho, dtype=self.params.dtype, device=self.params.device) * 2 + 1) / ho - 1
        qx = self.scale[:, 0, None] * xs + self.shift[:, 0, None]  # [N, Wo]
        qy = self.scale[:, 1, None] * ys + self.shift[:, 1, None]  # [N, Ho]
        inside = (qy.abs() <= 1)[:, :, None] & (qx.abs() <= 1)[:, None, :]
        return inside[:, None]

    @classmethod
    def from_boxes(cls, mask: Tensor, generator_box: Union[Tensor, Sequence[float]], *,
                   keep_aspect: bool = True, threshold: float = 0.5) -> "SpatialTransform":
        """ψ₀ that maps the generator's typical object box onto each mask's bounding box.

        Args:
            mask: [N, 1, H, W] object masks of the targets (> threshold is object).
            generator_box: (x0, y0, x1, y1) in normalised coordinates, [4] or [N, 4]: where
                the generator typically draws its object (a per-generator statistic, e.g. the
                mean box of a detector over samples).
            keep_aspect: one scale for both axes, the larger of the two ratios, so the whole
                object fits in the generator's box (centres are matched).

        Returns:
            ψ₀ [N, 4] with T_ψ₀(target) showing the object inside the generator's box. An
            empty mask gives the identity.
        """
        if mask.dim() != 4 or mask.shape[1] != 1:
            raise ValueError(f"from_boxes: mask must be [N, 1, H, W], got shape {list(mask.shape)}")
        n, _, h, w = mask.shape
        dtype = mask.dtype if mask.dtype.is_floating_point else torch.float32
        gbox = _per_sample(torch.as_tensor(generator_box, dtype=dtype, device=mask.device), n, 4, "generator_box")
        # An empty box would give an infinite scale.
        if not bool(((gbox[:, 2] > gbox[:, 0]) & (gbox[:, 3] > gbox[:, 1])).all()):
            raise ValueError(f"from_boxes: generator_box (x0, y0, x1, y1) needs x1 > x0 and y1 > y0, "
                             f"got {gbox[:3].tolist()}")
        obj = mask > threshold
        cols, rows = obj.any(dim=2)[:, 0], obj.any(dim=3)[:, 0]  # [N, W], [N, H]

        def extent(present: Tensor, size: int):
            idx = torch.arange(size, device=mask.device, dtype=dtype)
            first = torch.where(present, idx, float(size)).amin(1)
            last = torch.where(present, idx, -1.0).amax(1)
            # Pixel edges in normalised coordinates (align_corners=False).
            return 2 * first / size - 1, 2 * (last + 1) / size - 1

        mx0, mx1 = extent(cols, w)
        my0, my1 = extent(rows, h)
        sx = (mx1 - mx0) / (gbox[:, 2] - gbox[:, 0])
        sy = (my1 - my0) / (gbox[:, 3] - gbox[:, 1])
        if keep_aspect:
            sx = sy = torch.maximum(sx, sy)
        tx = (mx0 + mx1) / 2 - sx * (gbox[:, 0] + gbox[:, 2]) / 2
        ty = (my0 + my1) / 2 - sy * (gbox[:, 1] + gbox[:, 3]) / 2
        params = torch.stack([sx, sy, tx, ty], dim=1)
        empty = ~cols.any(1)
        identity = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=dtype, device=mask.device)
        return cls(torch.where(empty[:, None], identity, params))


@dataclass
class BrightnessTransform:
    """Additive brightness γ in [-1, 1] image space: ``gamma`` [N] (one per image) or [N, C]
    (per channel); a single value applies to all. T_γ(x) = x + γ, T_γ⁻¹ = T_{−γ}; no clamping."""

    gamma: Tensor

    @classmethod
    def identity(cls, n: int = 1, *, dtype=torch.float32, device=None) -> "BrightnessTransform":
        return cls(torch.zeros(n, dtype=dtype, device=device))

    def inverse(self) -> "BrightnessTransform":
        return BrightnessTransform(-self.gamma)

    def apply(self, image: Tensor) -> Tensor:
        """image [N, C, H, W] + γ broadcast per sample (and channel)."""
        g = torch.as_tensor(self.gamma, dtype=image.dtype, device=image.device)
        if g.dim() == 0:
            g = g.reshape(1)
        if g.dim() == 1:
            g = g[:, None]
        if g.dim() != 2 or g.shape[0] not in (1, image.shape[0]) or g.shape[1] not in (1, image.shape[1]):
            raise ValueError(f"BrightnessTransform gamma must be [N], [N, C] or a scalar for images "
                             f"{list(image.shape)}, got shape {list(torch.as_tensor(self.gamma).shape)}")
        return image + g[:, :, None, None]


@dataclass
class Transform:
    """T_φ = T_ψ ∘ T_γ: brightness, then the spatial warp (seed 003 §3.3)."""

    spatial: SpatialTransform
    brightness: BrightnessTransform

    @classmethod
    def identity(cls, n: int = 1, *, dtype=torch.float32, device=None) -> "Transform":
        return cls(SpatialTransform.identity(n, dtype=dtype, device=device),
                   BrightnessTransform.identity(n, dtype=dtype, device=device))

    def apply(self, image: Tensor, size: Optional[Sequence[int]] = None, **kwargs) -> Tensor:
        """T_ψ(image + γ); kwargs go to ``SpatialTransform.apply``."""
        return self.spatial.apply(self.brightness.apply(image), size, **kwargs)

    def apply_mask(self, mask: Tensor, size: Optional[Sequence[int]] = None, **kwargs) -> Tensor:
        """Masks take the spatial part only."""
        return self.spatial.apply_mask(mask, size, **kwargs)

    def invert(self, image: Tensor, size: Optional[Sequence[int]] = None, **kwargs) -> Tensor:
        """T_φ⁻¹(image) = T_ψ⁻¹(image) − γ: the exact inverse order of ``apply``."""
        return self.brightness.inverse().apply(self.spatial.inverse().apply(image, size, **kwargs))

    def invert_mask(self, mask: Tensor, size: Optional[Sequence[int]] = None, **kwargs) -> Tensor:
        return self.spatial.inverse().apply_mask(mask, size, **kwargs)

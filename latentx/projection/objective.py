"""The projection objective (SPEC C1): the perceptual metric, object masks, the transform φ
and the masked losses.

φ = [s_x, s_y, t_x, t_y, γ] per image is carried as a :class:`latentx.transforms.Transform`
(spatial ψ = φ[:4], additive brightness γ = φ[4]); ψ maps the generator's frame (output) into
the photo (input). T_φ(y) = T_ψ(y + γ) is the target as the generator should draw it, and
T_φ⁻¹(G(z)) = T_ψ⁻¹(G(z)) − γ puts a generated image back into the photo.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor

from latentx.lpips import LPIPS, TargetFeatures, backbone_checkpoint_paths
from latentx.transforms import BrightnessTransform, SpatialTransform, Transform

__all__ = ["PHI_NAMES", "default_lpips", "masks_from_boxes", "phi_transform", "transform_images",
           "invert_images", "masked_losses"]

PHI_NAMES = ("s_x", "s_y", "t_x", "t_y", "gamma")

# --- perceptual metric ----------------------------------------------------------------------

_LPIPS_CACHE: dict = {}
_WARNED: set = set()


def default_lpips(net: str = "alex", device: Union[str, torch.device] = "cpu") -> tuple[LPIPS, str]:
    """The LPIPS projection uses by default, and a description of which one it is.

    AlexNet-LPIPS v0.1 with the ImageNet backbone when its torchvision checkpoint is in the torch
    hub cache. Otherwise (warned once): the lpips linear weights over a random backbone fixed by
    seed 0 (``pnet_rand=True``) — a multi-scale random-feature distance, NOT the pretrained
    metric; without the ``lpips`` package (no linear weights) the channels are averaged.
    Nothing is downloaded.
    """
    device = torch.device(device)
    key = (net, str(device))
    if key in _LPIPS_CACHE:
        return _LPIPS_CACHE[key]
    paths = backbone_checkpoint_paths(net)
    have_backbone = any(os.path.isfile(p) for p in paths)
    have_linear = importlib.util.find_spec("lpips") is not None
    if have_backbone and have_linear:
        module = LPIPS(net=net)
        desc = f"LPIPS v0.1 ({net}, ImageNet backbone)"
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            module = LPIPS(net=net, pnet_rand=True, pretrained=have_linear, lpips=have_linear)
        what = "lpips linear weights" if have_linear else "channel-averaged features (lpips package not installed)"
        desc = (f"LPIPS v0.1 ({net}) with a RANDOM backbone (seed 0) and {what}: the ImageNet "
                f"checkpoint was not found at {', '.join(paths)} — a random-feature distance, "
                f"not the pretrained metric")
        if desc not in _WARNED:
            _WARNED.add(desc)
            warnings.warn(f"latentx.projection: {desc}. Put torchvision's ImageNet checkpoint there "
                          "for the real metric.", stacklevel=3)
    module = module.to(device).eval()
    _LPIPS_CACHE[key] = (module, desc)
    return module, desc


def check_lpips_size(who: str, lp: LPIPS, photo_size: Sequence[int], gen_size: Sequence[int],
                     beta: float) -> None:
    """Refuse frames below the LPIPS backbone's smallest input up front (it would otherwise stop
    inside the backbone mid-run). LPIPS sees the photo always (the photo-frame loss) and the
    generator's frame when β > 0."""
    side = getattr(lp, "min_size", 0)
    net = getattr(lp, "pnet_type", "?")
    if beta > 0 and min(gen_size) < side:
        raise ValueError(f"{who}: the generator's {gen_size[0]}×{gen_size[1]} output is smaller than the "
                         f"{side}×{side} that LPIPS ({net}) needs in its frame; pass beta=0, or "
                         "perceptual= an LPIPS with another net")
    if min(photo_size) < side:
        raise ValueError(f"{who}: images are {photo_size[0]}×{photo_size[1]}, smaller than the {side}×{side} "
                         f"that LPIPS ({net}) needs; upsample them, or pass perceptual= an LPIPS with another net")


# --- masks ----------------------------------------------------------------------------------

def masks_from_boxes(boxes: Any, size: Sequence[int], *, background: float = 0.3,
                     dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """Masks [B, 1, H, W] from boxes [B, 4] (x0, y0, x1, y1) in pixel coordinates of an
    H × W image (x right, y down, edges: the box [0, 0, W, H] is the whole image): 1 on pixels
    whose centre lies inside the box, ``background`` elsewhere. Empty boxes and boxes outside
    the image are errors."""
    h, w = int(size[0]), int(size[1])
    b = torch.as_tensor(boxes, dtype=torch.float64)
    if b.dim() == 1:
        b = b[None]
    if b.dim() != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must be [B, 4] (x0, y0, x1, y1 in pixels), got shape {list(b.shape)}")
    if not bool(b.isfinite().all()):
        raise ValueError("boxes must be finite numbers")
    ys = torch.arange(h, dtype=torch.float64) + 0.5
    xs = torch.arange(w, dtype=torch.float64) + 0.5
    masks = []
    for i, (x0, y0, x1, y1) in enumerate(b.tolist()):
        if not (x1 > x0 and y1 > y0):
            raise ValueError(f"boxes[{i}] = {[x0, y0, x1, y1]} is empty (need x0 < x1 and y0 < y1)")
        if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
            raise ValueError(f"boxes[{i}] = {[x0, y0, x1, y1]} lies outside the {w}×{h} image "
                             f"(need 0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h})")
        inside = ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]
        if not bool(inside.any()):
            raise ValueError(f"boxes[{i}] = {[x0, y0, x1, y1]} covers no pixel centre (empty box)")
        masks.append(torch.where(inside, 1.0, float(background)))
    return torch.stack(masks)[:, None].to(dtype=dtype, device=device)


# --- the transform φ ------------------------------------------------------------------------

def phi_transform(phi: Tensor, dtype: Optional[torch.dtype] = None) -> Transform:
    """φ [N, 5] = (s_x, s_y, t_x, t_y, γ) → the :class:`~latentx.transforms.Transform`
    T_φ = T_ψ ∘ T_γ (ψ: generator frame → photo, output → input; γ additive brightness)."""
    if not isinstance(phi, Tensor) or phi.dim() != 2 or phi.shape[1] != 5:
        shape = list(phi.shape) if isinstance(phi, Tensor) else type(phi).__name__
        raise ValueError(f"phi must be [N, 5] (s_x, s_y, t_x, t_y, gamma), got {shape}")
    if dtype is not None:
        phi = phi.to(dtype)
    return Transform(SpatialTransform(phi[:, :4]), BrightnessTransform(phi[:, 4]))


def transform_images(images: Tensor, phi: Tensor, size: Sequence[int]) -> Tensor:
    """T_φ(images) = T_ψ(images + γ) at ``size`` (the generator's frame). φ [N, 5]."""
    return phi_transform(phi).apply(images, size)


def invert_images(generated: Tensor, phi: Tensor, size: Sequence[int]) -> tuple[Tensor, Tensor]:
    """T_φ⁻¹(generated) = T_ψ⁻¹(generated) − γ at ``size`` (the photo's frame), and the
    [N, 1, H, W] bool region the generated frame covers there."""
    t = phi_transform(phi)
    return t.invert(generated, size), t.spatial.inverse().valid_region(size)


# --- losses ---------------------------------------------------------------------------------

def quiet_lpips_distance(lp: LPIPS, x: Tensor, feats: TargetFeatures, mask: Tensor) -> Tensor:
    """``lp.distance`` [N]. Brightness-shifted targets and inverse-transformed images may leave
    [−1, 1] slightly; that is intended here, so LPIPS's range warning is silenced for these
    calls only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LPIPS: .* outside \\[-1, 1\\]")
        return lp.distance(x, feats, mask=mask).flatten()


def quiet_encode(lp: LPIPS, x: Tensor) -> TargetFeatures:
    """``lp.encode`` without the range warning (see :func:`quiet_lpips_distance`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LPIPS: .* outside \\[-1, 1\\]")
        return lp.encode(x)


def take_features(feats: Optional[TargetFeatures], idx: Tensor) -> Optional[TargetFeatures]:
    """The rows ``idx`` of precomputed LPIPS target features."""
    if feats is None:
        return None
    return TargetFeatures([f[idx] for f in feats.layers], feats.size)


def masked_losses(generated: Tensor, target: Tensor, mask: Tensor, lp: Optional[LPIPS],
                  feats: Optional[TargetFeatures] = None, beta: float = 10.0) -> dict[str, Tensor]:
    """SPEC C1 per sample: ``l1`` = Σ m⊙|ŷ − y|/(C·Σm), ``l2`` = Σ m⊙(ŷ − y)²/(C·Σm),
    ``lpips`` = masked LPIPS (0 when ``lp`` is None), ``total`` = l1 + β·lpips. All [N]."""
    c = generated.shape[1]
    msum = mask.flatten(1).sum(1) * c
    diff = generated - target
    l1 = (mask * diff.abs()).flatten(1).sum(1) / msum
    l2 = (mask * diff * diff).flatten(1).sum(1) / msum
    if lp is None:
        lpv = torch.zeros_like(l1)
    else:
        if feats is None:
            feats = quiet_encode(lp, target)
        lpv = quiet_lpips_distance(lp, generated, feats, mask)
    return {"l1": l1, "l2": l2, "lpips": lpv, "total": l1 + beta * lpv}

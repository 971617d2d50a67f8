"""The fused LPIPS per-layer head (SPEC A3) — public wrapper, autograd and fake kernels."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from latentx.ops import _native, reference


def lpips_head(
    feat0: Tensor,
    feat1: Tensor,
    weight: Tensor,
    mask: Optional[Tensor] = None,
    *,
    spatial: bool = False,
    impl: str = "auto",
) -> Tensor:
    """One LPIPS layer's distance between candidates and target(s), in one fused pass.

    Shapes: feat0 [N, C, H, W]; feat1 [N or 1, C, H, W] (1: one target for all candidates);
    weight [C] (the layer's linear weights); mask [N or 1, 1, H, W] at the layer's
    resolution (seed 003 eq. 7), or None. Returns [N] — Σ m·d / Σ m, the plain spatial mean
    without a mask — or, with ``spatial``, the map d [N, 1, H, W] (no mask allowed).

    Odd inputs (native = reference): a NaN or ±inf feature makes the distance at its position
    NaN (inf / inf), so that sample's mean; the mask must lie in [0, 1] with no NaN and have a
    positive value for every sample (else ValueError, checked on the host: on CUDA one wait for
    the device); N = 0 gives an empty result; float16 / bfloat16 are computed in float32 and
    returned in the features' dtype; any strides (channels-last too) and feat1 / mask
    broadcast or expanded over N are accepted.

    Differentiable w.r.t. feat0 and feat1 (finite where a feature vector is all zeros, unlike
    lpips' autograd); not w.r.t. weight or mask. The native op's gradient is not itself
    differentiable: with ``create_graph=True`` differentiating it raises RuntimeError (the
    reference supports double backward).
    """
    if not _native.use_native(impl, feat0.device):
        return reference.lpips_head(feat0, feat1, weight, mask, spatial)
    for name, t in (("weight", weight), ("mask", mask)):
        if t is not None and t.requires_grad:
            raise ValueError(f"lpips_head: no gradient w.r.t. {name}; detach it, or use impl='reference'")
    return torch.ops.latentx.lpips_head(feat0, feat1, weight, mask, spatial)


if _native._C is not None:

    @torch.library.register_fake("latentx::lpips_head")
    def _(feat0, feat1, weight, mask, spatial):
        reference.check_lpips_head(feat0, feat1, weight, mask, spatial, values=False)
        n, _, h, w = feat0.shape
        return feat0.new_empty((n, 1, h, w) if spatial else (n,))

    @torch.library.register_fake("latentx::lpips_head_backward")
    def _(grad, feat0, feat1, weight, mask, spatial, needs_grad0, needs_grad1):
        return (torch.empty_like(feat0) if needs_grad0 else feat0.new_empty(0),
                torch.empty_like(feat1) if needs_grad1 else feat0.new_empty(0))

    def _setup_context(ctx, inputs, output):
        feat0, feat1, weight, mask, spatial = inputs
        ctx.save_for_backward(feat0, feat1, weight, mask)
        ctx.spatial = spatial

    def _backward(ctx, grad):
        feat0, feat1, weight, mask = ctx.saved_tensors
        need0, need1 = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad0, grad1 = torch.ops.latentx.lpips_head_backward(
            grad, feat0, feat1, weight, mask, ctx.spatial, need0, need1)
        return (grad0 if need0 else None), (grad1 if need1 else None), None, None, None

    torch.library.register_autograd("latentx::lpips_head", _backward, setup_context=_setup_context)

    _native.forbid_double_backward("lpips_head", "a gradient penalty through LPIPS")

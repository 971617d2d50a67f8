"""The fused I-FGSM sign step (SPEC A2; AdvLatGAN eq. 6) — public wrappers and fake kernels."""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from latentx.ops import _native, reference

Scalar = Union[float, int]


def _native_args(step_size, radius, lower, upper):
    """Numbers go to the op's float arguments, tensors to its per-sample ones."""
    for name, value, tensor_ok in (("step_size", step_size, True), ("radius", radius, True),
                                   ("lower", lower, False), ("upper", upper, False)):
        if value is not None:
            reference.check_number_or_tensor("ifgsm_step", name, value, tensor_ok)

    def split(value):
        return (None, value) if value is None or isinstance(value, Tensor) else (float(value), None)

    step, steps = split(step_size)
    rad, radii = split(radius)
    lo, hi = (None if b is None else float(b) for b in (lower, upper))
    return (0.0 if step is None else step), steps, rad, radii, lo, hi


def ifgsm_step(
    z: Tensor,
    grad: Tensor,
    *,
    step_size: Union[Tensor, Scalar],
    anchor: Optional[Tensor] = None,
    radius: Union[Tensor, Scalar, None] = None,
    lower: Optional[Scalar] = None,
    upper: Optional[Scalar] = None,
    ascend: bool = False,
    impl: str = "auto",
) -> Tensor:
    """One I-FGSM step, clamped to the ℓ∞ ball around ``anchor`` and to ``[lower, upper]``.

    ``z' = clamp(clamp(z − s·sign(grad), anchor − r, anchor + r), lower, upper)`` (``+`` when
    ``ascend``), in one pass over memory. Not differentiable: it is an optimizer update, and
    the result never requires grad.

    Args:
        z: latents [B, ...], float16 / bfloat16 / float32 / float64.
        grad: ∂L/∂z, z's shape, dtype and device.
        step_size: s ≥ 0: a number, or a tensor of one value per sample [B].
        anchor: z₀ [B, ...], the centre of the ℓ∞ ball (AdvLatGAN's starting latents).
        radius: r ≥ 0: a number or [B]; given exactly when ``anchor`` is.
        lower, upper: box bounds (numbers); pix2latent truncates at ±2.
        ascend: ascend the loss instead of descending it.
        impl: ``"auto"`` (native when available, else the reference; ``LATENTX_IMPL``
            changes the default), ``"native"`` or ``"reference"``.

    Per-sample tensors are checked (non-negative, not NaN) on the host, which on CUDA waits
    for the device once per call; pass numbers where the values are the same for every
    sample.

    Returns:
        z', a new tensor like ``z``. Arithmetic runs in float32 (float64 for float64 inputs)
        and rounds once; sign(0) = 0 and a NaN in ``grad`` gives NaN in that element.

    Odd inputs (native = reference, bit for bit): NaN in z, grad or anchor gives NaN in that
    element; ±inf in z steps and is then clamped by the ball and the box; empty tensors give
    an empty result; float16 / bfloat16 are computed in float32 and rounded once; any strides
    and expanded (overlapping) inputs are read as they are; a z that requires grad gives a
    result that does not (no autograd through the step).
    """
    if not _native.use_native(impl, z.device):
        return reference.ifgsm_step(z, grad, step_size, anchor, radius, lower, upper, ascend)
    step, steps, rad, radii, lo, hi = _native_args(step_size, radius, lower, upper)
    return torch.ops.latentx.ifgsm_step(z, grad, step, steps, anchor, rad, radii, lo, hi, ascend)


def ifgsm_step_(
    z: Tensor,
    grad: Tensor,
    *,
    step_size: Union[Tensor, Scalar],
    anchor: Optional[Tensor] = None,
    radius: Union[Tensor, Scalar, None] = None,
    lower: Optional[Scalar] = None,
    upper: Optional[Scalar] = None,
    ascend: bool = False,
    impl: str = "auto",
) -> Tensor:
    """In-place :func:`ifgsm_step`: writes z' into ``z`` and returns ``z``.

    Like torch's own in-place ops, it refuses a ``z`` that requires grad while grad mode is on
    (RuntimeError): the step is not recorded by autograd, so a leaf would be changed behind
    its back and a non-leaf's graph would silently see the new values. Update under
    ``torch.no_grad()`` (as an optimizer does) or step ``z.detach()``.
    """
    if isinstance(z, Tensor) and z.requires_grad and torch.is_grad_enabled():
        what = "a leaf Variable that requires grad" if z.is_leaf else "a tensor that requires grad"
        raise RuntimeError(
            f"ifgsm_step_: z is {what} and is being used in an in-place operation that autograd "
            "does not record; run the step under torch.no_grad() or pass z.detach()")
    if not _native.use_native(impl, z.device):
        with torch.no_grad():
            return z.copy_(reference.ifgsm_step(z, grad, step_size, anchor, radius, lower, upper, ascend))
    step, steps, rad, radii, lo, hi = _native_args(step_size, radius, lower, upper)
    torch.ops.latentx.ifgsm_step_(z, grad, step, steps, anchor, rad, radii, lo, hi, ascend)
    return z


if _native._C is not None:

    def _check_fake(z: Tensor, grad: Tensor, anchor: Optional[Tensor]) -> None:
        # Device, dtype and shape are static under tracing: the same checks as the kernels.
        reference.check_float("ifgsm_step", "z", z)
        reference.check_like("ifgsm_step", "grad", grad, "z", z)
        if anchor is not None:
            reference.check_like("ifgsm_step", "anchor", anchor, "z", z)

    @torch.library.register_fake("latentx::ifgsm_step")
    def _(z, grad, step_size, step_sizes, anchor, radius, radii, lower, upper, ascend):
        _check_fake(z, grad, anchor)
        return torch.empty_like(z, memory_format=torch.contiguous_format)

    @torch.library.register_fake("latentx::ifgsm_step_")
    def _(z, grad, step_size, step_sizes, anchor, radius, radii, lower, upper, ascend):
        _check_fake(z, grad, anchor)
        return None

"""Loading the compiled library and choosing an implementation per call.

The compiled module ``latentx._C`` registers every op under ``torch.ops.latentx`` when it is
imported. When it is missing (a source checkout that was never built, or a build for another
torch), latentx still works on the pure-PyTorch references and says so once.

``LATENTX_IMPL`` sets the default of every op's ``impl="auto"``: ``auto`` (native where the
library supports the tensor's device, else the reference), ``native`` or ``reference``.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Optional

import torch

IMPLS = ("auto", "native", "reference")

_C: Optional[Any] = None
_LOAD_ERROR: Optional[str] = None
try:
    from latentx import _C  # noqa: F811  (runs the TORCH_LIBRARY registrations)
except ImportError as exc:  # not built, or built for another torch
    _LOAD_ERROR = f"{type(exc).__name__}: {exc}"
    warnings.warn(
        "latentx: the compiled library latentx._C could not be loaded "
        f"({_LOAD_ERROR}); every op runs its pure-PyTorch reference. Build it with "
        "`pip install --no-build-isolation -e .` (see README.md).",
        RuntimeWarning,
        stacklevel=2,
    )


def env_impl() -> str:
    """The default implementation named by ``LATENTX_IMPL`` (``auto`` when unset)."""
    value = os.environ.get("LATENTX_IMPL", "auto").strip().lower() or "auto"
    if value not in IMPLS:
        raise ValueError(f"LATENTX_IMPL must be one of {IMPLS}, got {value!r}")
    return value


def build_info() -> dict:
    """Facts about the compiled library, or ``{}`` when it is not loaded."""
    return dict(_C.build_info()) if _C is not None else {}


def native_supports(device: torch.device) -> bool:
    """Whether the compiled library has kernels for tensors on ``device``."""
    if _C is None:
        return False
    if device.type == "cpu":
        return True
    return device.type == "cuda" and bool(build_info().get("cuda"))


def use_native(impl: str, device: torch.device) -> bool:
    """Resolve an op's ``impl`` argument for tensors on ``device``."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        impl = env_impl()
    if impl == "reference":
        return False
    supported = native_supports(device)
    if impl == "native" and not supported:
        reason = _LOAD_ERROR or f"this build has no kernels for device type {device.type!r}"
        raise RuntimeError(f"impl='native' was asked for but cannot run: {reason}")
    return supported


def backend(device: str | torch.device = "cpu") -> dict:
    """Which implementation ``impl="auto"`` runs on ``device``, and why, with the build's facts.

    Returns a dict: ``impl`` ('native' or 'reference'), ``reason``, ``device``, and the
    compiled library's facts (``torch_version`` it was built against, ``cuda``,
    ``cuda_version``, ``cuda_archs``, ``openmp``, ``num_threads``) when it is loaded.
    """
    device = torch.device(device)
    choice = env_impl()
    if choice == "reference":
        impl, reason = "reference", "LATENTX_IMPL=reference"
    elif native_supports(device):
        impl, reason = "native", f"compiled library loaded from {_C.__file__}"
    elif _C is None:
        impl, reason = "reference", f"compiled library not loaded ({_LOAD_ERROR})"
    else:
        impl, reason = "reference", f"compiled library has no {device.type} kernels"
    return {"impl": impl, "reason": reason, "device": str(device), **build_info()}


def forbid_double_backward(op: str, example: str = "") -> None:
    """Register autograd for ``latentx::{op}_backward`` that raises when differentiated.

    The native backward ops have no derivative of their own. Under ``create_graph=True`` the
    gradient carries this node, so differentiating it (a second derivative) fails loudly instead
    of silently returning a gradient without the second-order term. ``example`` names a use."""

    def _no_double_backward(ctx, *grads):
        raise RuntimeError(
            f"{op}: the native op has no double backward (its gradient was taken with "
            f"create_graph=True and is now differentiated{', e.g. ' + example if example else ''}); "
            "use impl='reference' (or LATENTX_IMPL=reference), whose autograd has it")

    torch.library.register_autograd(f"latentx::{op}_backward", _no_double_backward,
                                    setup_context=lambda ctx, inputs, output: None)

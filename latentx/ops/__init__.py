"""latentx ops: each a native kernel (CPU, CUDA) with a pure-PyTorch reference.

Every op takes ``impl="auto" | "native" | "reference"``; :func:`backend` says what ``auto``
resolves to and why. The native ops are also reachable as ``torch.ops.latentx.<name>``.
"""

from latentx.ops._native import backend, build_info
from latentx.ops.cma import cma_covariance_update, cma_covariance_update_, cma_eigh, cma_sample
from latentx.ops.filtered_grid_sample import affine_stretch, filtered_grid_sample, warp_affine
from latentx.ops.ifgsm import ifgsm_step, ifgsm_step_
from latentx.ops.lpips_head import lpips_head

__all__ = [
    "affine_stretch",
    "backend",
    "build_info",
    "cma_covariance_update",
    "cma_covariance_update_",
    "cma_eigh",
    "cma_sample",
    "filtered_grid_sample",
    "ifgsm_step",
    "ifgsm_step_",
    "lpips_head",
    "warp_affine",
]

"""latentx: fast latent-space optimisation for generative networks.

C++ and CUDA kernels under a PyTorch API, each with a pure-PyTorch reference that is the
test oracle and the fallback when the compiled library is absent. ``latentx.ops.backend()``
says which implementation runs.
"""

from latentx import advlat, attributes, cma, edit, ifcvae, models, ops, projection
from latentx.lpips import LPIPS
from latentx.ops import backend
from latentx.projection import ProjectionResult, project

__version__ = "0.1.0"
__all__ = ["LPIPS", "ProjectionResult", "advlat", "attributes", "backend", "cma", "edit", "ifcvae", "models",
           "ops", "project", "projection", "__version__"]

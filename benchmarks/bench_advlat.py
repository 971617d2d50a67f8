"""AdvLatGAN-z refinement throughput (latents/s): the fused step against the eager step.

Both variants run :func:`latentx.advlat.refine` — forward and backward through G and D,
then the I-FGSM step — with the step either the eager five-op reference
(``impl="reference"``) or the fused native op ``ifgsm_step_`` (``impl="native"``). Models:
the ring MLPs of seed 001 appendix E (z_dim 2) and the 8×8 digits DCGAN (z_dim 32), random
weights (throughput does not depend on them). The step is a small share of a refinement
step; the ratio says how much of the whole the fusion saves.
"""

from __future__ import annotations

import torch

from latentx import advlat, synthetic
from latentx.benchmarks.timing import assert_agree, is_oom, measure
from latentx.ops import _native

REFINE = dict(step_size=0.01, radius=0.1, bounds=(-2.0, 2.0), progress=False)


def _models(case: str, device: torch.device):
    torch.manual_seed(0)
    if case == "ring MLP":
        return synthetic.ring_generator().to(device), synthetic.ring_discriminator().to(device), synthetic.RING_Z_DIM
    return synthetic.digits_generator().to(device), synthetic.digits_discriminator().to(device), synthetic.DIGITS_Z_DIM


def run(device: torch.device, quick: bool, repeats: int) -> list[dict]:
    sizes = {"ring MLP": (2_000, 3), "digits DCGAN": (512, 3)} if quick else \
            {"ring MLP": (20_000, 10), "digits DCGAN": (4_096, 10)}
    rows = []
    for case, (n, steps) in sizes.items():
        try:
            rows += _run_case(device, case, n, steps, repeats)
        except RuntimeError as err:
            if not is_oom(err):
                raise
            rows.append({"benchmark": "advlat", "case": f"{case} N={n}", "variant": "OOM"})
    return rows


def _run_case(device: torch.device, case: str, n: int, steps: int, repeats: int) -> list[dict]:
    G, D, z_dim = _models(case, device)
    z0 = torch.randn(n, z_dim, device=device)
    label = f"{case} N={n} x {steps} steps"

    def refine(impl: str):
        return advlat.refine(G, D, z0, steps=steps, impl=impl, **REFINE).z

    variants = {"eager step (reference)": lambda: refine("reference")}
    if _native.native_supports(device):
        assert_agree(refine("native"), refine("reference"), "fused step", exact=True)
        variants["fused step (ifgsm_step_)"] = lambda: refine("native")
    timings = {name: measure(fn, device, warmup=1, repeats=repeats, max_seconds=5.0) for name, fn in variants.items()}
    eager_s = timings["eager step (reference)"].median
    return [{"benchmark": "advlat", "case": label, "variant": name, "median ms": t.ms,
             "IQR ms": (t.q3 - t.q1) * 1e3, "latents/s": n / t.median, "latent-steps/s": n * steps / t.median,
             "x eager ref": eager_s / t.median} for name, t in timings.items()]

"""ifgsm_step: N latents x 128 dims, a step with an l-inf ball and a box (SPEC A2).

Variants: the eager reference (the five-op step), torch.compile of it, the native op out of
place and in place, and a preallocated tensor copy — the memory-bandwidth ceiling. Bytes
moved by a step: z, grad and anchor read, z' written (4 tensors); by a copy: 2 tensors.
"""

from __future__ import annotations

import torch

from latentx import ops
from latentx.benchmarks.timing import assert_agree, is_oom, measure
from latentx.ops import _native, reference

DIM = 128
STEP = dict(step_size=0.01, radius=0.05, lower=-2.0, upper=2.0)


def _reference_step(z, grad, anchor):
    return reference.ifgsm_step(z, grad, STEP["step_size"], anchor, STEP["radius"], STEP["lower"], STEP["upper"])


def run(device: torch.device, quick: bool, repeats: int) -> list[dict]:
    rows = []
    for n in [10_000] if quick else [10_000, 1_000_000]:
        try:
            rows += _run_size(device, n, repeats)
        except RuntimeError as err:
            if not is_oom(err):
                raise
            rows.append({"benchmark": "ifgsm_step", "case": f"N={n:.0e} x {DIM}", "variant": "OOM"})
    return rows


def _run_size(device: torch.device, n: int, repeats: int) -> list[dict]:
    case = f"N={n:.0e} x {DIM} fp32"
    z = torch.randn(n, DIM, device=device)
    grad = torch.randn(n, DIM, device=device)
    anchor = z + 0.01 * torch.randn(n, DIM, device=device)
    tensor_bytes = z.numel() * z.element_size()
    max_seconds = 3.0

    compiled = torch.compile(_reference_step, fullgraph=True, dynamic=False)
    expected = _reference_step(z, grad, anchor)
    variants = {"reference (eager)": lambda: _reference_step(z, grad, anchor),
                "torch.compile(reference)": lambda: compiled(z, grad, anchor)}
    assert_agree(compiled(z, grad, anchor), expected, "torch.compile(reference)")
    if _native.native_supports(device):
        assert_agree(ops.ifgsm_step(z, grad, anchor=anchor, **STEP, impl="native"), expected,
                     "native", exact=True)
        inplace = z.clone()
        ops.ifgsm_step_(inplace, grad, anchor=anchor, **STEP, impl="native")
        assert_agree(inplace, expected, "native in-place", exact=True)
        variants["native"] = lambda: ops.ifgsm_step(z, grad, anchor=anchor, **STEP, impl="native")
        # Steps from the same z each time (a copy would add traffic); the result varies, the
        # work does not.
        variants["native in-place"] = lambda: ops.ifgsm_step_(inplace, grad, anchor=anchor, **STEP, impl="native")
    dst = torch.empty_like(z)
    copy = measure(lambda: dst.copy_(z), device, repeats=repeats, max_seconds=max_seconds)
    copy_gbps = 2 * tensor_bytes / copy.median / 1e9

    timings = {name: measure(fn, device, repeats=repeats, max_seconds=max_seconds) for name, fn in variants.items()}
    ref_s = timings["reference (eager)"].median
    compile_s = timings["torch.compile(reference)"].median
    rows = [{"benchmark": "ifgsm_step", "case": case, "variant": "copy (bandwidth ceiling)",
             "median ms": copy.ms, "IQR ms": (copy.q3 - copy.q1) * 1e3, "GB/s": copy_gbps}]
    for name, t in timings.items():
        gbps = 4 * tensor_bytes / t.median / 1e9
        rows.append({"benchmark": "ifgsm_step", "case": case, "variant": name, "median ms": t.ms,
                     "IQR ms": (t.q3 - t.q1) * 1e3, "GB/s": gbps,
                     "x eager ref": ref_s / t.median, "x compile": compile_s / t.median,
                     "of copy GB/s": f"{gbps / copy_gbps:.0%}"})
    return rows

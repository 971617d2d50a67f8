"""Masked LPIPS (SPEC A3): one optimisation step of 18 candidates against one target.

Variants: the `lpips` package with the target expanded to 18 (what pix2latent does: the
target's backbone pass is repeated every step), latentx.LPIPS with the target encoded once
(`distance`), and the per-layer head alone (eager reference vs the fused op). Random
backbone weights (no download here) with the real linear weights: the cost does not depend
on the weights' values.
"""

from __future__ import annotations

import sys
import types

import torch

from latentx import ops
from latentx.benchmarks.timing import assert_agree, measure
from latentx.lpips import LPIPS
from latentx.ops import _native

CANDIDATES = 18


def _lpips_package():
    """The `lpips` package if installed (its torchvision import needs a shim on CPU torch)."""
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    try:
        import lpips
    except ImportError:
        return None
    return lpips


def run(device: torch.device, quick: bool, repeats: int) -> list[dict]:
    cases = [("alex", 64)] if quick else [("alex", 64), ("alex", 256), ("vgg", 64), ("vgg", 256)]
    rows = []
    for net, size in cases:
        rows += _case(device, net, size, repeats)
    return rows


def _step(model_call, cand: torch.Tensor) -> None:
    cand.grad = None
    model_call(cand).sum().backward()


def _case(device: torch.device, net: str, size: int, repeats: int) -> list[dict]:
    case = f"{net} {size}x{size}, {CANDIDATES} vs 1"
    ours = LPIPS(net=net, pnet_rand=True).to(device)
    cand = (torch.rand(CANDIDATES, 3, size, size, device=device) * 2 - 1).requires_grad_()
    target = torch.rand(1, 3, size, size, device=device) * 2 - 1
    max_seconds = 3.0 if size <= 64 else 8.0
    rows = []

    def add(variant, timing, baseline=None):
        row = {"benchmark": "lpips", "case": case, "variant": variant, "median ms": timing.ms,
               "IQR ms": (timing.q3 - timing.q1) * 1e3}
        if baseline is not None:
            row["x lpips"] = baseline.median / timing.median
        rows.append(row)

    lpips = _lpips_package()
    base_fwd = base_step = None
    if lpips is not None:
        ref = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False).to(device)
        ours.load_state_dict(ref.state_dict())
        expanded = target.expand(CANDIDATES, -1, -1, -1)
        assert_agree(ours(cand, target).detach(), ref(cand, expanded).detach(), "latentx.LPIPS",
                     rtol=1e-4, atol=1e-6)
        with torch.no_grad():
            base_fwd = measure(lambda: ref(cand, expanded), device, repeats=repeats, max_seconds=max_seconds)
        add("lpips package, forward", base_fwd)
        base_step = measure(lambda: _step(lambda c: ref(c, expanded), cand), device, repeats=repeats,
                            max_seconds=max_seconds)
        add("lpips package, forward+backward", base_step)

    cached = ours.encode(target)
    with torch.no_grad():
        add("latentx cached target, forward",
            measure(lambda: ours.distance(cand, cached), device, repeats=repeats, max_seconds=max_seconds), base_fwd)
    add("latentx cached target, forward+backward",
        measure(lambda: _step(lambda c: ours.distance(c, cached), cand), device, repeats=repeats,
                max_seconds=max_seconds), base_step)

    # The head alone, every layer, forward + backward w.r.t. the candidates' features.
    with torch.no_grad():
        feats = [f.detach().requires_grad_() for f in ours.net(ours.scaling_layer(cand))]
    weights = [lin.weight for lin in ours.lins]

    def heads(impl):
        return lambda: torch.autograd.grad(
            sum(ops.lpips_head(f0, f1, w, impl=impl).sum() for f0, f1, w in zip(feats, cached.layers, weights)),
            feats)

    eager = measure(heads("reference"), device, repeats=repeats, max_seconds=max_seconds)
    rows.append({"benchmark": "lpips", "case": case, "variant": "head only fwd+bwd: eager reference",
                 "median ms": eager.ms, "IQR ms": (eager.q3 - eager.q1) * 1e3})
    if _native.native_supports(device):
        for got, want in zip(heads("native")(), heads("reference")()):
            assert_agree(got, want, "fused head gradient", rtol=1e-3, atol=1e-7)
        fused = measure(heads("native"), device, repeats=repeats, max_seconds=max_seconds)
        rows.append({"benchmark": "lpips", "case": case, "variant": "head only fwd+bwd: fused op",
                     "median ms": fused.ms, "IQR ms": (fused.q3 - fused.q1) * 1e3,
                     "x eager ref": eager.median / fused.median})
    return rows

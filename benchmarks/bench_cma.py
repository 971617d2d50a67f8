"""Batched CMA-ES (SPEC A1): the two kernels, the decompositions, and whole generations.

Kernel rows: the fused covariance update (in place, C read and written once) and the fused
sampling against the eager batched reference, B instances of dimension d, λ = 18, float64.
Decomposition rows: batched torch.linalg.eigh (the SPEC's lazy eigenbasis) and batched
torch.linalg.cholesky (the Cholesky option), both per call.
"""

from __future__ import annotations

import math

import torch

from latentx import ops
from latentx.benchmarks.timing import assert_agree, is_oom, measure
from latentx.ops import _native

POPSIZE = 18
DTYPE = torch.float64


def _sizes(quick: bool) -> list[tuple[int, int]]:
    return [(8, 32)] if quick else [(1, 128), (64, 128), (1024, 128), (1, 512), (64, 512), (1024, 512)]


def run(device: torch.device, quick: bool, repeats: int) -> list[dict]:
    rows = []
    for b, d in _sizes(quick):
        try:
            rows += _kernel_rows(device, b, d, repeats)
        except RuntimeError as err:
            if not is_oom(err):
                raise
            rows.append({"benchmark": "cma", "case": f"B={b} d={d}", "variant": "OOM"})
    return rows


def _state(device: torch.device, b: int, d: int) -> dict:
    f = dict(dtype=DTYPE, device=device)
    mu = POPSIZE // 2
    a = torch.randn(b, d, d, **f)
    cov = a @ a.transpose(1, 2) / d + torch.eye(d, **f)
    return dict(noise=torch.randn(b, POPSIZE, d, **f), mean=torch.randn(b, d, **f),
                sigma=torch.rand(b, **f) + 0.1, eigvecs=torch.linalg.qr(torch.randn(b, d, d, **f))[0],
                sqrt_eigvals=torch.rand(b, d, **f) + 0.5, cov=cov, pc=torch.randn(b, d, **f),
                y=torch.randn(b, POPSIZE, d, **f),
                weights=torch.linspace(1, -0.5, POPSIZE, **f) / mu, decay=torch.rand(b, **f))


def _kernel_rows(device: torch.device, b: int, d: int, repeats: int) -> list[dict]:
    case = f"B={b} d={d}"
    s = _state(device, b, d)
    # Large cases are slow on 2 cores: a few calls suffice for a stable median.
    max_seconds = 2.0 if b * d * d < 2**24 else 6.0
    native = _native.native_supports(device)
    rows = []

    def add(kernel, variant, timing, baseline=None, note=""):
        row = {"benchmark": "cma", "case": case, "variant": f"{kernel}: {variant}",
               "median ms": timing.ms, "IQR ms": (timing.q3 - timing.q1) * 1e3}
        if baseline is not None:
            row["x eager ref"] = baseline.median / timing.median
        if note:
            row["note"] = note
        rows.append(row)
        return timing

    cov_args = (s["pc"], s["y"], s["weights"], s["decay"], 0.01, 0.05)
    ref = add("covariance update", "reference (eager)", measure(
        lambda: ops.cma_covariance_update(s["cov"], *cov_args, impl="reference"), device,
        repeats=repeats, max_seconds=max_seconds))
    if native:
        expected = ops.cma_covariance_update(s["cov"], *cov_args, impl="reference")
        assert_agree(ops.cma_covariance_update(s["cov"], *cov_args, impl="native"), expected,
                     "native covariance update", rtol=1e-12, atol=1e-12)
        work = s["cov"].clone()
        timing = measure(lambda: ops.cma_covariance_update_(work, *cov_args, impl="native"),
                         device, repeats=repeats, max_seconds=max_seconds)
        gbps = 2 * work.numel() * work.element_size() / timing.median / 1e9
        add("covariance update", "native in-place", timing, ref, f"{gbps:.1f} GB/s of C traffic")

    sample_args = (s["noise"], s["mean"], s["sigma"], s["eigvecs"], s["sqrt_eigvals"])
    ref = add("sample", "reference (eager)", measure(
        lambda: ops.cma_sample(*sample_args, lower=-2.0, upper=2.0, impl="reference"), device,
        repeats=repeats, max_seconds=max_seconds))
    if native:
        for got, want in zip(ops.cma_sample(*sample_args, lower=-2.0, upper=2.0, impl="native"),
                             ops.cma_sample(*sample_args, lower=-2.0, upper=2.0, impl="reference")):
            assert_agree(got, want, "native sample", rtol=1e-12, atol=1e-12)
        add("sample", "native", measure(
            lambda: ops.cma_sample(*sample_args, lower=-2.0, upper=2.0, impl="native"), device,
            repeats=repeats, max_seconds=max_seconds), ref)

    eigh = measure(lambda: torch.linalg.eigh(s["cov"]), device, warmup=1, repeats=repeats,
                   max_seconds=max_seconds)
    every = _eigh_interval(d)
    add("decomposition", "torch.linalg.eigh", eigh,
        note=f"lazy: every {every} generations -> {eigh.ms / every:.3g} ms/generation")
    add("decomposition", "torch.linalg.cholesky", measure(
        lambda: torch.linalg.cholesky(s["cov"]), device, warmup=1, repeats=repeats,
        max_seconds=max_seconds))
    return rows


def _eigh_interval(d: int) -> int:
    """SPEC A1's lazy schedule with pycma's default (positive) weights at λ = 18."""
    mu = POPSIZE // 2
    w = [math.log((POPSIZE + 1) / 2) - math.log(i + 1) for i in range(mu)]
    mueff = sum(w) ** 2 / sum(x * x for x in w)
    c1 = 2 / ((d + 1.3) ** 2 + mueff)
    cmu = min(1 - c1, 2 * (mueff - 2 + 1 / mueff) / ((d + 2) ** 2 + mueff))
    return math.ceil(1 / ((c1 + cmu) * d * 10))

"""One tiny call of every latentx op, forward and backward, on CUDA, checked against the
reference: the program compute-sanitizer's memcheck runs in benchmarks/gpu_check.sh.

Sizes are small (memcheck slows kernels ~100x) but reach every kernel path: the CMA
covariance kernel at d = 5 (8 threads a row) and d = 300 (a block a row); filtered_grid_sample's
cached-weight loops (2, 4 and 8 taps an axis) and its recomputing loop (more than 8); both
LPIPS head layouts (one target per sample, one broadcast target); I-FGSM with and without an
anchor and per-sample steps, in float32 and float16. Run it under
PYTORCH_NO_CUDA_MEMORY_CACHING=1 so that every tensor is its own allocation: with torch's caching
allocator an access past a tensor's end lands in its neighbour and memcheck cannot see it.

    python benchmarks/gpu_smoke.py [--device cuda]   exit 0: every call ran and matched the reference
    (--device cpu runs the same calls on the CPU kernels: a dry run of the script itself)
"""

from __future__ import annotations

import argparse
import sys

import torch

from latentx import ops
from latentx.benchmarks.timing import native_unavailable


def _close(name: str, got: torch.Tensor, want: torch.Tensor, failures: list[str], tol: float = 1e-4) -> None:
    got, want = got.double().cpu(), want.double().cpu()
    scale = float(want.abs().max()) if want.numel() else 0.0
    err = float((got - want).abs().max()) if want.numel() else 0.0
    ok = got.shape == want.shape and bool(torch.isfinite(got).all()) and err <= tol * max(scale, 1.0)
    print(f"  {name:<48} max|err| {err:.2e}  {'ok' if ok else 'MISMATCH'}", flush=True)
    if not ok:
        failures.append(name)


def check_cma(dev: str, failures: list[str]) -> None:
    for b, lam, d in [(3, 6, 5), (2, 4, 300)]:
        f64 = dict(dtype=torch.float64, device=dev)
        noise, mean = torch.randn(b, lam, d, **f64), torch.randn(b, d, **f64)
        sigma, sq = torch.rand(b, **f64) + 0.1, torch.rand(b, d, **f64) + 0.05
        eig = torch.linalg.qr(torch.randn(b, d, d, **f64))[0]
        for dt in (torch.float32, torch.float64):
            args = [t.to(dt) for t in (noise, mean, sigma, eig, sq)]
            x, y = ops.cma_sample(*args, lower=-1.0, upper=1.0, impl="native")
            xr, yr = ops.cma_sample(*args, lower=-1.0, upper=1.0, impl="reference")
            _close(f"cma_sample b={b} L={lam} d={d} {dt}", x, xr, failures)
            _close(f"cma_sample y b={b} L={lam} d={d} {dt}", y, yr, failures)
            k = 4
            a = torch.randn(b, d, d, **f64)
            cov = (a @ a.transpose(1, 2) / d + torch.eye(d, **f64)).to(dt)
            rest = [t.to(dt) for t in (torch.randn(b, d, **f64), torch.randn(b, k, d, **f64),
                                       torch.randn(b, k, **f64), torch.rand(b, **f64))]
            got = ops.cma_covariance_update(cov, *rest, 0.05, 0.2, impl="native")
            want = ops.cma_covariance_update(cov, *rest, 0.05, 0.2, impl="reference")
            _close(f"cma_covariance_update b={b} k={k} d={d} {dt}", got, want, failures)
            w, v = ops.cma_eigh(cov, impl="native")  # eigenvectors up to sign: compare E w Eᵀ
            _close(f"cma_eigh eigenvalues b={b} d={d} {dt}", w, torch.linalg.eigvalsh(cov), failures)
            _close(f"cma_eigh E diag(w) Eᵀ b={b} d={d} {dt}", (v * w[:, None]) @ v.mT, cov, failures)


def check_filtered_grid_sample(dev: str, failures: list[str]) -> None:
    # scale: 0.7 bilinear (2 taps), 1.6 tent (4), 3.5 tent (8), 3.5 Gaussian (> 8: recomputing loop).
    for scale, filt in [(0.7, "tent"), (1.6, "tent"), (3.5, "tent"), (3.5, "gaussian")]:
        x = torch.randn(2, 3, 17, 19, device=dev, requires_grad=True)
        theta = torch.tensor([[scale, 0.1, 0.05], [-0.1, scale, -0.02]], device=dev).expand(2, 2, 3)
        grid = torch.nn.functional.affine_grid(theta, [2, 3, 7, 8], align_corners=False)
        grid = (grid + 0.01 * torch.randn_like(grid)).requires_grad_()
        for padding in ("zeros", "reflection"):
            kw = dict(filter=filt, padding_mode=padding)
            out = ops.filtered_grid_sample(x, grid, **kw, impl="native")
            ref = ops.filtered_grid_sample(x, grid, **kw, impl="reference")
            up = torch.randn_like(out)
            g = torch.autograd.grad(out, (x, grid), up)
            gr = torch.autograd.grad(ref, (x, grid), up)
            name = f"filtered_grid_sample {filt} scale={scale} {padding}"
            _close(name, out, ref, failures)
            _close(name + " d/input", g[0], gr[0], failures)
            _close(name + " d/grid", g[1], gr[1], failures, tol=1e-3)


def check_lpips_head(dev: str, failures: list[str]) -> None:
    for n1 in (3, 1):
        f0 = torch.randn(3, 16, 5, 7, device=dev, requires_grad=True)
        f1 = torch.randn(n1, 16, 5, 7, device=dev, requires_grad=True)
        w = torch.rand(16, device=dev)
        out = ops.lpips_head(f0, f1, w, impl="native")
        ref = ops.lpips_head(f0, f1, w, impl="reference")
        up = torch.randn_like(out)
        g = torch.autograd.grad(out, (f0, f1), up)
        gr = torch.autograd.grad(ref, (f0, f1), up)
        _close(f"lpips_head target batch {n1}", out, ref, failures)
        _close(f"lpips_head target batch {n1} d/feat0", g[0], gr[0], failures)
        _close(f"lpips_head target batch {n1} d/feat1", g[1], gr[1], failures)


def check_ifgsm_step(dev: str, failures: list[str]) -> None:
    for dt in (torch.float32, torch.float16):
        z, g, z0 = (torch.randn(5, 37, device=dev, dtype=dt) for _ in range(3))
        steps = torch.rand(5, device=dev) * 0.1
        for kw in (dict(step_size=0.05), dict(step_size=steps, anchor=z0, radius=0.2, lower=-2, upper=2)):
            got = ops.ifgsm_step(z, g, **kw, impl="native")
            want = ops.ifgsm_step(z, g, **kw, impl="reference")
            _close(f"ifgsm_step {dt} {'anchor' if 'anchor' in kw else 'plain'}", got, want, failures, tol=1e-3)
            zi = z.clone()
            ops.ifgsm_step_(zi, g, **kw, impl="native")
            _close(f"ifgsm_step_ {dt} {'anchor' if 'anchor' in kw else 'plain'}", zi, want, failures, tol=1e-3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu for a dry run")
    dev = parser.parse_args().device
    why = native_unavailable(dev)
    if why is not None:
        print(f"gpu_smoke: {why}", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    failures: list[str] = []
    for check in (check_cma, check_filtered_grid_sample, check_lpips_head, check_ifgsm_step):
        print(check.__name__, flush=True)
        check(dev, failures)
    if dev == "cuda":
        torch.cuda.synchronize()
    print(f"gpu_smoke: {'ok' if not failures else 'FAILED: ' + ', '.join(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

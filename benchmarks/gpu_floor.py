"""Each latentx CUDA op against its floor: the fewest bytes it must move (each input read once,
each output written once, counted from the op's definition) over the device's measured copy
bandwidth, or its FLOPs over the measured float32 matrix-product rate, whichever is larger.
Prints "% of floor" (floor / measured time) per op; run by benchmarks/gpu_check.sh.

    python benchmarks/gpu_floor.py [--json FILE] [--reps 20] [--device cuda]

Time per op: the median of `--reps` calls, each between two CUDA events, after 3 warm-up calls.
Sizes: each op's real per-instance shape (an I-FGSM latent batch, the CMA latent and transform
searches at d = 512 and d = 5, an AlexNet-sized LPIPS layer, a 2x image shrink) with a batch
large enough that its data outgrows the H200's 60 MB L2, so the floor is a DRAM floor. Before
timing, the native op is checked against the reference on a slice of the same inputs.
`--device cpu --small` runs every row at a tiny size on the CPU kernels: a dry run of the script.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from latentx import ops
from latentx.benchmarks.timing import native_unavailable

MB = 1e6


@dataclass
class Row:
    op: str
    shape: str
    bytes: float                       # fewest bytes moved through device memory
    flops: float                       # arithmetic the op's definition needs
    run: Callable[[], object]          # one native call
    check: Callable[[], float] = field(default=lambda: 0.0)  # max relative error on a slice


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double(), want.double()
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


def time_op(fn: Callable[[], object], dev: str, reps: int, warmup: int = 3) -> float:
    """Median seconds of one call."""
    for _ in range(warmup):
        fn()
    if dev != "cuda":
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    torch.cuda.synchronize()
    events = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events) / 1e3


def ceilings(dev: str, small: bool, reps: int) -> tuple[float, float]:
    """Measured copy bandwidth (bytes read + written per second) and float32 matmul FLOP/s."""
    n = (1 << 16) if small else (1 << 28)  # 1 GiB of float32 each way
    src = torch.rand(n, device=dev)
    dst = torch.empty_like(src)
    t = time_op(lambda: dst.copy_(src), dev, reps)
    bw = 2 * n * 4 / t
    del src, dst
    m = 256 if small else 8192
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the FP32 (FFMA) rate, not tf32's
    a, b = torch.randn(m, m, device=dev), torch.randn(m, m, device=dev)
    t = time_op(lambda: a @ b, dev, max(3, reps // 4))
    torch.backends.cuda.matmul.allow_tf32 = prev
    return bw, 2 * m**3 / t


def rows(dev: str, small: bool) -> list[Row]:
    out: list[Row] = []
    f32 = dict(device=dev, dtype=torch.float32)

    # --- ifgsm_step: read z, grad, anchor; write z' ----------------------------------------
    for dt in (torch.float32, torch.bfloat16):
        b, d = (8, 512) if small else (1 << 17, 512)  # 64 M latents' elements
        z, g, z0 = (torch.randn(b, d, device=dev, dtype=dt) for _ in range(3))
        kw = dict(step_size=0.01, anchor=z0, radius=0.1, lower=-2.0, upper=2.0)
        es = z.element_size()

        def check(z=z, g=g, kw=kw):
            return rel_err(ops.ifgsm_step(z[:64], g[:64], **{**kw, "anchor": kw["anchor"][:64]}, impl="native"),
                           ops.ifgsm_step(z[:64], g[:64], **{**kw, "anchor": kw["anchor"][:64]}, impl="reference"))

        out.append(Row(f"ifgsm_step {str(dt)[6:]}", f"[{b}, {d}] + anchor, box", 4 * b * d * es, 8 * b * d,
                       lambda z=z, g=g, kw=kw: ops.ifgsm_step(z, g, **kw, impl="native"), check))

    # --- cma_sample: read noise, E, D, m, sigma; write x, y. FLOPs: y = (D noise) E^T ----------
    for b, lam, d, what in [(16, 4, 8, "small"), (4, 4, 16, "latent search")] if small else \
            [(1 << 20, 8, 5, "transform search"), (256, 16, 512, "latent search")]:
        f64 = dict(device=dev, dtype=torch.float64)
        noise = torch.randn(b, lam, d, **f32)
        mean = torch.randn(b, d, **f32)
        sigma = torch.rand(b, **f32) + 0.1
        sq = torch.rand(b, d, **f32) + 0.05
        eig = torch.linalg.qr(torch.randn(min(b, 64), d, d, **f64))[0].float().repeat(-(-b // 64), 1, 1)[:b]
        args = (noise, mean, sigma, eig, sq)

        def check(args=args):
            sl = [t[:4] for t in args]
            return rel_err(ops.cma_sample(*sl, lower=-3.0, upper=3.0, impl="native")[0],
                           ops.cma_sample(*sl, lower=-3.0, upper=3.0, impl="reference")[0])

        out.append(Row(f"cma_sample ({what})", f"B={b} L={lam} d={d}",
                       4 * (3 * b * lam * d + b * d * d + 2 * b * d + b), 2 * b * lam * d * d + 5 * b * lam * d,
                       lambda args=args: ops.cma_sample(*args, lower=-3.0, upper=3.0, impl="native"), check))

    # --- cma_covariance_update_: read and write C, read pc, y, weights, decay ----------------
    for b, k, d, what in [(16, 4, 5, "small")] if small else \
            [(1 << 20, 4, 5, "transform search"), (256, 16, 512, "latent search")]:
        a = torch.randn(b, d, d, **f32) * 0.1
        cov = a @ a.transpose(1, 2) + torch.eye(d, **f32)
        pc, y = torch.randn(b, d, **f32), torch.randn(b, k, d, **f32)
        w, decay = torch.rand(b, k, **f32) / k, torch.full((b,), 0.9, **f32)

        def check(cov=cov, pc=pc, y=y, w=w, decay=decay):
            sl = [t[:4] for t in (cov, pc, y, w, decay)]
            return rel_err(ops.cma_covariance_update(*sl, 0.05, 0.2, impl="native"),
                           ops.cma_covariance_update(*sl, 0.05, 0.2, impl="reference"))

        out.append(Row(f"cma_covariance_update_ ({what})", f"B={b} k={k} d={d}",
                       4 * (2 * b * d * d + b * k * d + b * d + b * k + b), 2 * b * d * d * (k + 2),
                       lambda cov=cov, pc=pc, y=y, w=w, decay=decay:
                       ops.cma_covariance_update_(cov, pc, y, w, decay, 0.05, 0.2, impl="native"), check))

    # --- lpips_head: forward reads f0, f1, writes [N]; backward reads f0, f1, writes g0, g1 ----
    n, c, h, w = (2, 8, 6, 7) if small else (32, 128, 63, 63)  # AlexNet conv1-sized features
    f0, f1 = torch.randn(n, c, h, w, **f32), torch.randn(n, c, h, w, **f32)
    lw = torch.rand(c, **f32)
    el = n * c * h * w
    up = torch.randn(n, **f32)

    def lp_check():
        return rel_err(ops.lpips_head(f0[:2], f1[:2], lw, impl="native"),
                       ops.lpips_head(f0[:2], f1[:2], lw, impl="reference"))

    def lp_bwd_check():
        a, b_ = f0[:2].clone().requires_grad_(), f1[:2].clone().requires_grad_()
        g = torch.autograd.grad(ops.lpips_head(a, b_, lw, impl="native"), (a, b_), up[:2])
        gr = torch.autograd.grad(ops.lpips_head(a, b_, lw, impl="reference"), (a, b_), up[:2])
        return max(rel_err(g[0], gr[0]), rel_err(g[1], gr[1]))

    shape = f"[{n}, {c}, {h}, {w}] x 2"
    out.append(Row("lpips_head", shape, 2 * el * 4 + n * 4, 8 * el,
                   lambda: ops.lpips_head(f0, f1, lw, impl="native"), lp_check))
    out.append(Row("lpips_head_backward", shape, 4 * el * 4 + n * 4, 14 * el,
                   lambda: torch.ops.latentx.lpips_head_backward(up, f0, f1, lw, None, False, True, True),
                   lp_bwd_check))

    # --- filtered_grid_sample: a 2x shrink (footprint 2: 4 tent taps an axis, 6 Gaussian) ----
    n, c, h, w = (2, 3, 16, 16) if small else (32, 3, 1024, 1024)
    ho, wo = h // 2, w // 2
    img = torch.rand(n, c, h, w, **f32)
    theta = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], **f32).expand(n, 2, 3)
    grid = F.affine_grid(theta, [n, c, ho, wo], align_corners=False).contiguous()
    gup = torch.randn(n, c, ho, wo, **f32)
    in_b, grid_b, out_b = n * c * h * w * 4, n * ho * wo * 2 * 4, n * c * ho * wo * 4
    for filt, code, taps in (("tent", 1, 16), ("gaussian", 2, 36)):
        def check(filt=filt):
            return rel_err(ops.filtered_grid_sample(img[:1], grid[:1], filter=filt, impl="native"),
                           ops.filtered_grid_sample(img[:1], grid[:1], filter=filt, impl="reference"))

        out.append(Row(f"filtered_grid_sample {filt}", f"[{n}, {c}, {h}, {w}] -> {ho}x{wo}",
                       in_b + grid_b + out_b, 2 * taps * n * c * ho * wo,
                       lambda filt=filt: ops.filtered_grid_sample(img, grid, filter=filt, impl="native"), check))

    def fgs_bwd_check():
        x, g = img[:1].clone().requires_grad_(), grid[:1].clone().requires_grad_()
        a = torch.autograd.grad(ops.filtered_grid_sample(x, g, impl="native"), (x, g), gup[:1])
        b_ = torch.autograd.grad(ops.filtered_grid_sample(x, g, impl="reference"), (x, g), gup[:1])
        return max(rel_err(a[0], b_[0]), rel_err(a[1], b_[1]))

    # reads grad, input, grid; writes grad_input and grad_grid
    out.append(Row("filtered_grid_sample_backward tent", f"[{n}, {c}, {h}, {w}] -> {ho}x{wo}",
                   out_b + in_b + grid_b + in_b + grid_b, 4 * 16 * n * c * ho * wo,
                   lambda: torch.ops.latentx.filtered_grid_sample_backward(gup, img, grid, None, 0, False, 1,
                                                                           True, True),
                   fgs_bwd_check))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--small", action="store_true", help="tiny sizes (a dry run)")
    parser.add_argument("--json", help="write the rows and the ceilings here")
    args = parser.parse_args()
    dev = args.device
    why = native_unavailable(dev)
    if why is not None:
        print(f"gpu_floor: {why}", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    bw, rate = ceilings(dev, args.small, args.reps)
    print(f"{name}: copy {bw / 1e9:.0f} GB/s (read + write), float32 matmul {rate / 1e12:.1f} TFLOP/s",
          flush=True)
    results, failed = [], False
    try:
        table = rows(dev, args.small)
    except torch.cuda.OutOfMemoryError as e:  # report, not crash
        print(f"gpu_floor: out of memory building the inputs: {e}")
        return 1
    for r in table:
        rec = dict(op=r.op, shape=r.shape, bytes=r.bytes, flops=r.flops)
        try:
            err = r.check()
            rec["rel_err"] = err
            rec["check"] = "ok" if err < 1e-3 else "MISMATCH"
            t = time_op(r.run, dev, args.reps)
            floor = max(r.bytes / bw, r.flops / rate)
            rec.update(seconds=t, floor_seconds=floor, bound="memory" if r.bytes / bw >= r.flops / rate else "compute",
                       pct_of_floor=100 * floor / t)
        except torch.cuda.OutOfMemoryError:
            rec["check"] = "out of memory"
        except Exception as e:  # one broken row must not hide the others
            rec["check"] = f"error: {type(e).__name__}: {e}"[:160]
        failed |= rec["check"] != "ok"
        results.append(rec)
        if dev == "cuda":
            torch.cuda.empty_cache()
    head = f"{'op':<40} {'size':<30} {'MB':>8} {'GFLOP':>7} {'floor us':>9} {'median us':>10} {'% floor':>8}  check"
    print(head)
    for rec in results:
        if "seconds" in rec:
            print(f"{rec['op']:<40} {rec['shape']:<30} {rec['bytes'] / MB:>8.1f} {rec['flops'] / 1e9:>7.2f} "
                  f"{rec['floor_seconds'] * 1e6:>9.1f} {rec['seconds'] * 1e6:>10.1f} {rec['pct_of_floor']:>7.1f}%  "
                  f"{rec['check']} ({rec['rel_err']:.1e}, {rec['bound']})")
        else:
            print(f"{rec['op']:<40} {rec['shape']:<30} {'':>8} {'':>7} {'':>9} {'':>10} {'':>8}  {rec['check']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=name, copy_bytes_per_s=bw, fp32_flops_per_s=rate, rows=results), f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

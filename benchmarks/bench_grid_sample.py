"""filtered_grid_sample (SPEC A4): aliasing quality and speed against F.grid_sample and
blur-then-grid_sample.

Quality. An image x (zero mean, float64) is shrunk by a factor k with the same grid (an
identity F.affine_grid at the output size, align_corners=False, reflection padding) by each
method. With f_N = 1 / (2 k') cycles per input pixel the output's Nyquist frequency
(k' = W / Wo, the exact scale), split x by its DFT into
    x_lo : the coefficients with |f_x| < f_N and |f_y| < f_N  (what the output can hold),
    x_hi = x - x_lo                                           (what it cannot),
    x_pb : the coefficients with |f_x| < f_N/2 and |f_y| < f_N/2  (the passband).
Every method here is linear in the image for a fixed grid, so its output splits the same way.
    aliasing  = 10 log10( mean M(x_hi)^2 / mean x_lo^2 )  dB: the energy the result gets from
                content above its Nyquist frequency (an ideal, band-limiting result has none),
                relative to the in-band content's power; lower is better.
    passband  = 10 log10( mean M(x_pb)^2 / mean x_pb^2 )  dB: how much of the lower half of the
                output's band survives (0 dB: all of it; blur makes it negative).
Means are over the output's interior (4 output pixels from each edge are left out, where the
padding rules differ and the periodic DFT split rings), and the reference powers over the
same region of the input. Images: a zone plate
cos(π r² / (√2 S)) (local frequency r / (√2 S) cycles/pixel: 0 at the centre, Nyquist at the
corners) and skimage's astronaut photograph (grey), both 512 x 512.

Speed. A batch of 18 x 3 x 256 x 256 float32 images warped to 64 x 64 by an affine grid (x4
shrink, rotated 10°, shifted), forward and forward + backward (gradients w.r.t. the images
and the grid): F.grid_sample; a separable Gaussian blur (σ = k/2 = 2, taps to 3σ, reflect
padding) then F.grid_sample; latentx's filtered_grid_sample (tent; the footprint estimated
from the grid each call) and warp_affine (tent and Gaussian; footprint from theta).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from latentx import ops
from latentx.benchmarks.timing import assert_agree, is_oom, measure
from latentx.ops import _native

FACTORS = (2, 3, 4, 8)
QUALITY_SIZE = 512
BORDER = 4  # output pixels left out of the quality measures at each edge


# --- the methods ------------------------------------------------------------------------------


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [N, C, H, W], taps to ceil(3σ), reflect padding."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-t * t / (2 * sigma * sigma))
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def methods(factor: float) -> dict:
    """name -> fn(x, grid) for a shrink by `factor`."""
    impl = "native" if _native._C is not None else "reference"

    def plain(x, grid):
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def blurred(x, grid):
        return plain(gaussian_blur(x, factor / 2), grid)

    def latentx(filt):
        return lambda x, grid: ops.filtered_grid_sample(x, grid, padding_mode="reflection", filter=filt, impl=impl)

    return {"grid_sample": plain, f"blur(σ=k/2)+grid_sample": blurred,
            "latentx tent": latentx("tent"), "latentx gaussian": latentx("gaussian")}


# --- quality ----------------------------------------------------------------------------------


def zone_plate(size: int) -> torch.Tensor:
    c = (torch.arange(size, dtype=torch.float64) - (size - 1) / 2)
    r2 = c[None, :] ** 2 + c[:, None] ** 2
    return torch.cos(math.pi * r2 / (math.sqrt(2) * size))


def astronaut_grey(size: int) -> torch.Tensor:
    from skimage import data

    img = torch.from_numpy(data.astronaut().copy()).double().mean(-1) / 255
    return img[:size, :size]


def band_split(x: torch.Tensor, cutoff: float) -> torch.Tensor:
    """The DFT coefficients of x [H, W] with |f_x| < cutoff and |f_y| < cutoff (cycles/pixel)."""
    h, w = x.shape
    fy = torch.fft.fftfreq(h, dtype=x.dtype).abs()[:, None]
    fx = torch.fft.fftfreq(w, dtype=x.dtype).abs()[None, :]
    keep = (fy < cutoff) & (fx < cutoff)
    return torch.fft.ifft2(torch.fft.fft2(x) * keep).real


def quality_rows(factors=FACTORS, size: int = QUALITY_SIZE) -> list[dict]:
    rows = []
    for image_name, image in (("zone plate", zone_plate(size)), ("astronaut", astronaut_grey(size))):
        x = image - image.mean()
        for k in factors:
            out = size // k
            scale = size / out
            f_n = 1 / (2 * scale)
            lo = band_split(x, f_n)
            hi = x - lo
            pb = band_split(x, f_n / 2)
            grid = F.affine_grid(torch.eye(2, 3, dtype=torch.float64)[None], [1, 1, out, out], align_corners=False)
            inner = (slice(None), slice(None), slice(BORDER, out - BORDER), slice(BORDER, out - BORDER))
            # Reference powers over the same region of the input as the output's interior.
            b = round(BORDER * scale)
            lo_power = lo[b:size - b, b:size - b].square().mean()
            pb_power = pb[b:size - b, b:size - b].square().mean()
            for name, fn in methods(scale).items():
                alias = fn(hi[None, None], grid)[inner].square().mean() / lo_power
                kept = fn(pb[None, None], grid)[inner].square().mean() / pb_power
                rows.append({"benchmark": "grid_sample quality", "image": image_name, "shrink": f"1/{k}",
                             "method": name, "aliasing dB": 10 * math.log10(float(alias)),
                             "passband dB": 10 * math.log10(float(kept))})
    return rows


# --- speed ------------------------------------------------------------------------------------


def speed_rows(device: torch.device, repeats: int, batch: int = 18, size: int = 256, out: int = 64) -> list[dict]:
    factor = size / out
    case = f"{batch}x3x{size}x{size} -> {out}x{out}"
    x = torch.rand(batch, 3, size, size, device=device)
    angle = math.radians(10)
    theta = torch.tensor([[math.cos(angle), -math.sin(angle), 0.05], [math.sin(angle), math.cos(angle), -0.03]],
                         device=device).expand(batch, 2, 3).contiguous()
    grid = F.affine_grid(theta, [batch, 3, out, out], align_corners=False)
    impl = "native" if _native.native_supports(device) else "reference"
    fns = methods(factor)
    variants = {
        "F.grid_sample": lambda x, g, th: fns["grid_sample"](x, g),
        "blur(σ=2)+F.grid_sample": lambda x, g, th: fns["blur(σ=k/2)+grid_sample"](x, g),
        "latentx filtered_grid_sample tent": lambda x, g, th: fns["latentx tent"](x, g),
        "latentx warp_affine tent": lambda x, g, th: ops.warp_affine(
            x, th, (out, out), padding_mode="reflection", impl=impl),
        "latentx warp_affine gaussian": lambda x, g, th: ops.warp_affine(
            x, th, (out, out), padding_mode="reflection", filter="gaussian", impl=impl),
    }
    # Correctness before timing: the native op against the reference, on two images.
    if impl == "native":
        small = x[:2]
        assert_agree(ops.filtered_grid_sample(small, grid[:2], padding_mode="reflection", impl="native"),
                     ops.filtered_grid_sample(small, grid[:2], padding_mode="reflection", impl="reference"),
                     "latentx native", rtol=1e-4, atol=1e-5)
    upstream = torch.randn(batch, 3, out, out, device=device)
    rows, base = [], {}
    for name, fn in variants.items():
        for mode in ("forward", "forward+backward"):
            if mode == "forward":
                def call():
                    with torch.no_grad():
                        fn(x, grid, theta)
            else:
                xg, gg, tg = x.clone().requires_grad_(), grid.clone().requires_grad_(), theta.clone().requires_grad_()
                wrt = (xg, tg) if "warp_affine" in name else (xg, gg)

                def call(fn=fn, xg=xg, gg=gg, tg=tg, wrt=wrt):
                    torch.autograd.grad(fn(xg, gg, tg), wrt, upstream)
            try:
                t = measure(call, device, repeats=repeats, max_seconds=3.0)
            except RuntimeError as err:
                if not is_oom(err):
                    raise
                rows.append({"benchmark": "grid_sample speed", "case": case, "variant": name, "pass": mode, "median ms": "OOM"})
                continue
            base.setdefault((name, mode), t.median)
            row = {"benchmark": "grid_sample speed", "case": case, "variant": name, "pass": mode,
                   "median ms": t.ms, "IQR ms": (t.q3 - t.q1) * 1e3}
            plain = base.get(("F.grid_sample", mode))
            blur = base.get(("blur(σ=2)+F.grid_sample", mode))
            if plain:
                row["/ grid_sample"] = t.median / plain
            if blur:
                row["x faster than blur+sample"] = blur / t.median
            rows.append(row)
    return rows


def run(device: torch.device, quick: bool, repeats: int) -> list[dict]:
    rows = speed_rows(device, repeats, batch=2 if quick else 18)
    rows += quality_rows(factors=(4,) if quick else FACTORS, size=256 if quick else QUALITY_SIZE)
    return rows


if __name__ == "__main__":
    import argparse

    from latentx.benchmarks.timing import format_table

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    dev = torch.device(args.device)
    print(f"torch {torch.__version__} | {dev} | {torch.get_num_threads()} threads")
    print(format_table(quality_rows(factors=(4,) if args.quick else FACTORS)))
    print()
    print(format_table(speed_rows(dev, args.repeats, batch=2 if args.quick else 18)))

"""``latentx project IMAGE [IMAGE ...] [--box x0,y0,x1,y1 ...] --out DIR`` and ``latentx demo``:
project the object in a photo into a generator with the transform search, composite it back,
write the pictures.

Several images: give ``--box`` once per IMAGE, in the same order (or never: the whole
images). Each image gets its own sub-folder of ``--out`` (named after the file; ``-2``, ``-3``
... where names repeat); one image writes into ``--out`` itself. Resumable: ``result.json`` is
written last and atomically (temporary file, then rename), so a folder holding it is
finished; such images are skipped (``--overwrite`` redoes them), and rerunning an interrupted
command completes the rest. Every image uses the same ``--seed``, so a resumed run gives
what an uninterrupted one would.

``--finetune-steps N`` (default 0: off) fine-tunes a copy of the generator to the best
projection afterwards (seed 003 eq. 6, :func:`latentx.projection.finetune`); the pictures then
show the tuned generator's output and ``result.json`` gains a ``finetune`` entry.

The object box is cut out of the photo with context (a square ``--context`` × the box's longer
side, centred on it) and resized to ``--work-size`` pixels: the working frame in which
:func:`latentx.projection.project` searches the transform and the latent. The result is then
inverse-transformed into the full photo and Poisson-blended in (``latentx.poisson``).

Files written to ``--out``:

    target.png             the working crop (what is projected), box outlined
    target_transformed.png T_φ*(crop): the target as the generator is asked to draw it
    projection.png         G(z*) of the best seed, at the generator's resolution
    inverted.png           T_φ*⁻¹(G(z*)) pasted on the working crop where it lands
    composite.png          the full photo with G(z*) Poisson-blended into the box region
    side_by_side.png       crop | transformed target | projection | composite (crop region)
    loss_curve.png         transform search: best loss per CMA generation; latent search:
                           best-of-seeds loss per step
    result.json            settings, box, crop, φ₀, φ*, ψ in photo coordinates, all latents,
                           per-seed losses, best/mean-of-seeds summary, wall time
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from latentx import _threads
from latentx.transforms import SpatialTransform

# The astronaut's face in skimage.data.astronaut() (512×512), pixels (x0, y0, x1, y1): read off
# the image by eye with the same extent as the face DCGAN's measured box (models.FACE_DCGAN_BOX):
# forehead below the fringe (y 70) to the chin (y 182), cheek to cheek (x 178 to 272).
ASTRONAUT_FACE_BOX = (178, 70, 272, 182)

DEMO_BUDGET = dict(seeds=12, meta_steps=20, grad_steps=20, last_grad_steps=200,
                   transform_meta_steps=20, transform_grad_steps=20)
PAPER_BUDGET = dict(seeds=18, meta_steps=30, grad_steps=30, last_grad_steps=300,
                    transform_meta_steps=30, transform_grad_steps=30)


# --- images in and out ----------------------------------------------------------------------

def write_png(path: os.PathLike, image: np.ndarray) -> None:
    """Write an 8-bit RGB (H, W, 3) or grey (H, W) PNG with zlib only (no imaging library)."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise TypeError(f"write_png: image must be uint8, got {a.dtype}")
    if a.ndim == 2:
        color, a3 = 0, a[:, :, None]
    elif a.ndim == 3 and a.shape[2] == 3:
        color, a3 = 2, a
    else:
        raise ValueError(f"write_png: image must be (H, W) or (H, W, 3), got {a.shape}")
    h, w, ch = a3.shape
    raw = b"".join(b"\x00" + a3[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
    Path(path).write_bytes(png)


def to_uint8(image: Tensor) -> np.ndarray:
    """[3, H, W] in [−1, 1] → (H, W, 3) uint8."""
    x = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 0).numpy()


def read_image(path: str) -> Tensor:
    """Read an image file → [3, H, W] float32 in [−1, 1] (grey is repeated, alpha dropped)."""
    try:
        from skimage import io as skio
        a = skio.imread(path)
    except ImportError:
        try:
            from PIL import Image
        except ImportError as e:
            raise ImportError("latentx project: reading images needs scikit-image or Pillow "
                              "(pip install scikit-image)") from e
        a = np.asarray(Image.open(path).convert("RGB"))
    return array_to_tensor(a, path)


def array_to_tensor(a: np.ndarray, name: str = "image") -> Tensor:
    a = np.asarray(a)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"{name}: expected an RGB image (H, W, 3), got shape {a.shape}")
    a = a[:, :, :3]
    if a.dtype == np.uint8:
        x = a.astype(np.float32) / 127.5 - 1
    elif a.dtype == np.uint16:
        x = a.astype(np.float32) / 32767.5 - 1
    else:
        x = a.astype(np.float32)
        if x.max() > 1.0 + 1e-6 or x.min() < 0:
            raise ValueError(f"{name}: float images must lie in [0, 1]")
        x = 2 * x - 1
    return torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1).contiguous()


def _resize(image: Tensor, size: int) -> Tensor:
    """[3, h, w] → [3, size, size] (antialiased bilinear, or nearest when enlarging ×2+)."""
    h = image.shape[-1]
    mode = "nearest" if size >= 2 * h and size % h == 0 else "bilinear"
    kwargs = {} if mode == "nearest" else {"align_corners": False, "antialias": True}
    return torch.nn.functional.interpolate(image[None].float(), size=(size, size), mode=mode, **kwargs)[0]


def _outline(image: np.ndarray, box: Sequence[float], color=(255, 40, 40), width: int = 2) -> np.ndarray:
    out = image.copy()
    h, w = out.shape[:2]
    x0, y0, x1, y1 = [int(round(v)) for v in box]
    x0, x1 = max(0, min(w - 1, x0)), max(0, min(w - 1, x1 - 1))
    y0, y1 = max(0, min(h - 1, y0)), max(0, min(h - 1, y1 - 1))
    for k in range(width):
        out[min(h - 1, y0 + k), x0:x1 + 1] = color
        out[max(0, y1 - k), x0:x1 + 1] = color
        out[y0:y1 + 1, min(w - 1, x0 + k)] = color
        out[y0:y1 + 1, max(0, x1 - k)] = color
    return out


def plot_losses(path: Path, transform_best: Optional[np.ndarray], latent_best: np.ndarray,
                title: str) -> str:
    """Loss curves with matplotlib when it is installed, otherwise a simple rasterised plot.
    Returns which renderer was used."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _plot_raster(path, transform_best, latent_best)
        return "raster"
    ncols = 2 if transform_best is not None else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5 * ncols, 3.6), squeeze=False)
    k = 0
    if transform_best is not None:
        ax = axes[0, 0]
        ax.plot(np.arange(1, len(transform_best) + 1), transform_best, marker="o", ms=3)
        ax.set_xlabel("CMA generation (transform search)")
        ax.set_ylabel("best photo-frame L_mask")
        ax.set_title("stage 1: transform φ")
        ax.grid(alpha=0.3)
        k = 1
    ax = axes[0, k]
    ax.plot(np.arange(1, len(latent_best) + 1), latent_best)
    ax.set_xlabel("evaluation step (latent search)")
    ax.set_ylabel("best-of-seeds L_mask (generator frame)")
    ax.set_yscale("log")
    ax.set_title("stage 2: latent z")
    ax.grid(alpha=0.3, which="both")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return "matplotlib"


def _plot_raster(path: Path, transform_best: Optional[np.ndarray], latent_best: np.ndarray) -> None:
    curves = ([transform_best] if transform_best is not None else []) + [latent_best]
    ph, pw, pad = 200, 320, 10
    canvas = np.full((ph + 2 * pad, len(curves) * (pw + 2 * pad), 3), 255, np.uint8)
    for i, y in enumerate(curves):
        y = np.asarray(y, dtype=np.float64)
        ox = i * (pw + 2 * pad) + pad
        canvas[pad:pad + ph, ox] = 0
        canvas[pad + ph - 1, ox:ox + pw] = 0
        if len(y) == 0:
            continue
        lo, hi = float(np.min(y)), float(np.max(y))
        span = hi - lo if hi > lo else 1.0
        xs = np.linspace(0, pw - 1, num=max(len(y), 2))
        ys = (ph - 1) - (y - lo) / span * (ph - 1) if len(y) > 1 else np.full(2, ph / 2)
        for j in range(len(xs) - 1):
            n = int(max(abs(xs[j + 1] - xs[j]), abs(ys[min(j + 1, len(ys) - 1)] - ys[j]), 1)) + 1
            for t in np.linspace(0, 1, n):
                px = int(round(xs[j] + t * (xs[j + 1] - xs[j])))
                py = int(round(ys[j] + t * (ys[min(j + 1, len(ys) - 1)] - ys[j])))
                canvas[pad + py, ox + px] = (30, 90, 200)
    write_png(path, canvas)


# --- the pipeline ---------------------------------------------------------------------------

def crop_transform(box: Sequence[float], photo_size: Sequence[int], context: float) -> tuple[SpatialTransform, tuple]:
    """κ: the square crop around ``box`` (side = context × the box's longer side, moved to
    stay inside the photo when it fits) as a SpatialTransform from the crop frame into the
    photo, and the crop in pixels (x0, y0, side)."""
    h, w = photo_size
    x0, y0, x1, y1 = box
    side = min(context * max(x1 - x0, y1 - y0), float(min(h, w)))
    side = max(side, max(x1 - x0, y1 - y0))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = min(max(cx - side / 2, 0.0), max(w - side, 0.0)) if side <= w else cx - side / 2
    top = min(max(cy - side / 2, 0.0), max(h - side, 0.0)) if side <= h else cy - side / 2
    kappa = SpatialTransform(torch.tensor([side / w, side / h, 2 * (left + side / 2) / w - 1,
                                           2 * (top + side / 2) / h - 1], dtype=torch.float64))
    return kappa, (left, top, side)


def run_projection(photo: Tensor, box: Sequence[float], out: Path, *, generator=None, method: str = "basincma",
                   transform=True, device: str = "cpu", work_size: int = 128, context: float = 2.0,
                   seed: int = 0, budget: Optional[dict] = None, label: str = "image",
                   extra: Optional[dict] = None, finetune_steps: int = 0) -> dict:
    """Project ``box`` of ``photo`` [3, H, W] in [−1, 1]; write everything to ``out``; return
    the JSON summary. ``finetune_steps`` > 0: then fine-tune a copy of the generator for at
    most that many Adam steps (seed 003 eq. 6) and picture its output. ``result.json`` is
    written last, atomically: its presence means the folder is complete."""
    from latentx import models
    from latentx.poisson import poisson_blend
    from latentx.projection import finetune, invert_images, project, transform_images

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    H, W = photo.shape[1:]
    x0, y0, x1, y1 = [float(v) for v in box]
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"--box {list(box)} is empty (need x0 < x1 and y0 < y1)")
    if x0 < 0 or y0 < 0 or x1 > W or y1 > H:
        raise ValueError(f"--box {list(box)} lies outside the {W}×{H} image")
    if generator is None:
        generator = models.load("face-dcgan", device=device)
    generator = generator.to(device)
    budget = dict(DEMO_BUDGET if budget is None else budget)

    kappa, (left, top, side) = crop_transform((x0, y0, x1, y1), (H, W), context)
    photo_d = photo.to(device=device, dtype=torch.float32)
    crop = kappa.apply(photo_d[None], (work_size, work_size), padding_mode="border")  # [1, 3, ws, ws]
    sc = work_size / side
    box_crop = [(x0 - left) * sc, (y0 - top) * sc, (x1 - left) * sc, (y1 - top) * sc]
    box_crop = [max(0.0, box_crop[0]), max(0.0, box_crop[1]), min(float(work_size), box_crop[2]),
                min(float(work_size), box_crop[3])]

    if isinstance(finetune_steps, bool) or not isinstance(finetune_steps, int) or finetune_steps < 0:
        raise ValueError(f"--finetune-steps must be an integer >= 0, got {finetune_steps!r}")
    res = project(generator, crop.clamp(-1, 1), boxes=[box_crop], method=method, transform=transform,
                  seed=seed, progress=True, **budget)
    best = res.best()
    s = int(res.best_seed[0])
    ft = None
    if finetune_steps > 0:
        ft = finetune(generator, res, steps=finetune_steps, progress=True)
    phi = (res.phi[0] if ft is None else ft.phi[0]).to(torch.float64).cpu()
    # ψ from the generator frame into the full photo: κ after ψ* (crop first, then ψ*)
    psi_photo = SpatialTransform(kappa.params.to(torch.float64)).then(SpatialTransform(phi[:4]))
    phi_photo = torch.cat([psi_photo.params[0], phi[4:]]).to(device=device, dtype=torch.float32)

    with torch.no_grad():
        gen_best = (best["generated"] if ft is None else ft.generated)[:1].float()
        inv_full, cover_full = invert_images(gen_best, phi_photo[None], (H, W))
        # blend region: the box grown by 15% of its size, where the generated frame lands
        gx, gy = 0.15 * (x1 - x0), 0.15 * (y1 - y0)
        ys = torch.arange(H, device=device, dtype=torch.float32)[:, None] + 0.5
        xs = torch.arange(W, device=device, dtype=torch.float32)[None, :] + 0.5
        region = (xs >= x0 - gx) & (xs < x1 + gx) & (ys >= y0 - gy) & (ys < y1 + gy)
        cover = cover_full[0, 0]
        # stay two pixels inside the generated frame's footprint
        cover = -torch.nn.functional.max_pool2d(-cover[None, None].float(), 5, 1, 2)[0, 0] > 0.5
        region = region & cover
        composite, info = poisson_blend(inv_full.clamp(-1, 1), photo_d[None], region[None, None], return_info=True)
        composite = composite[0].clamp(-1, 1)
        target_t = transform_images(crop, phi[None].to(device=device, dtype=torch.float32), generator.resolution)[0]
        inv_crop = (best["inverted"] if ft is None else ft.inverted)[0]
        cov_crop = res.coverage[0, 0]
        pasted = torch.where(cov_crop[None], inv_crop, crop[0]).clamp(-1, 1)
        comp_crop = kappa.apply(composite[None], (work_size, work_size), padding_mode="border")[0]

    P = 192
    target_u8 = to_uint8(crop[0])
    write_png(out / "target.png", _outline(target_u8, box_crop))
    write_png(out / "target_transformed.png", to_uint8(target_t))
    write_png(out / "projection.png", to_uint8(gen_best[0]))
    write_png(out / "inverted.png", to_uint8(pasted))
    write_png(out / "composite.png", to_uint8(composite))
    panels = [_outline(to_uint8(_resize(crop[0].cpu(), P)), [v * P / work_size for v in box_crop]),
              to_uint8(_resize(target_t.cpu(), P)), to_uint8(_resize(gen_best[0].cpu(), P)),
              to_uint8(_resize(comp_crop.cpu(), P))]
    gap = np.full((P, 6, 3), 255, np.uint8)
    row = [panels[0]]
    for p in panels[1:]:
        row += [gap, p]
    write_png(out / "side_by_side.png", np.concatenate(row, axis=1))

    lat = res.history["latent"][0]  # [S, T]
    latent_best = lat.min(0).values.cpu().numpy() if lat.numel() else np.zeros(0)
    t_best = res.history["transform"][0].cpu().numpy() if "transform" in res.history else None
    renderer = plot_losses(out / "loss_curve.png", t_best, latent_best,
                           f"{label}: {method}{' + transform' if transform is True else ''}")

    summary = res.summary()[0]
    record = {
        "image": label, "photo_size": [H, W], "box": [x0, y0, x1, y1],
        "crop": {"left": left, "top": top, "side": side, "work_size": work_size, "context": context,
                 "box_in_crop": box_crop},
        "generator": res.settings["generator"], "generator_object_box": list(generator.object_box),
        "method": method, "transform": transform, "perceptual": res.perceptual,
        "phi_names": ["s_x", "s_y", "t_x", "t_y", "gamma"],
        "phi0": res.phi0[0].tolist(), "phi": res.phi[0].tolist(),
        "phi_photo": phi_photo.tolist(),
        "best_seed": s, "z_best": best["z"][0].tolist(),
        "losses": {k: v[0].tolist() for k, v in res.losses.items()},
        "best": summary["best"], "mean_of_seeds": summary["mean"],
        "poisson": info, "loss_curve_renderer": renderer,
        "settings": res.settings, "projection_seconds": res.seconds,
        "seconds": time.perf_counter() - t0,
        "z_all": res.z[0].tolist(),
        "files": ["target.png", "target_transformed.png", "projection.png", "inverted.png",
                  "composite.png", "side_by_side.png", "loss_curve.png", "result.json"],
        "side_by_side_panels": ["target crop (box outlined)", "T_phi*(target): what G is fitted to",
                                "G(z*) best seed", "Poisson composite (crop region)"],
    }
    if "transform" in res.history:
        record["transform_history_best"] = res.history["transform"][0].tolist()
    if ft is not None:
        record["finetune"] = {
            "note": "projection.png, inverted.png, composite.png and side_by_side.png show the tuned "
                    "generator's output; 'best' above is the projection's before tuning",
            "steps": ft.steps, "stopped": ft.stopped, "theta_distance": ft.theta_distance,
            "settings": ft.settings, "seconds": ft.seconds, "z": ft.z[0].tolist(),
            "losses_before": {k: float(v[0]) for k, v in ft.losses_before.items()},
            "losses": {k: float(v[0]) for k, v in ft.losses.items()},
        }
    if extra:
        record.update(extra)
    write_json_atomic(out / "result.json", record)
    return record


def write_json_atomic(path: Path, obj) -> None:
    """Write ``obj`` as JSON to ``path`` so that ``path`` either does not exist or is complete:
    a temporary file in the same folder, flushed to disk, then renamed over ``path``
    (``os.replace`` is atomic on one file system). Resuming relies on this."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _print_record(record: dict, out: Path) -> None:
    b, m = record["best"], record["mean_of_seeds"]
    print(f"perceptual metric: {record['perceptual']}")
    print(f"phi0 = {np.round(record['phi0'], 3).tolist()}  ->  phi* = {np.round(record['phi'], 3).tolist()}"
          "  (s_x, s_y, t_x, t_y, gamma; generator frame -> working crop)")
    print(f"losses (photo frame, masked; best of {len(record['losses']['total'])} seeds / mean of seeds):")
    for k in ("l1", "l2", "lpips", "total"):
        print(f"  {k:6s} {b[k]:.4f} / {m[k]:.4f}")
    print(f"Poisson blend: {record['poisson']['iterations']} CG iterations, relative residual "
          f"{record['poisson']['residual']:.1e}")
    if "finetune" in record:
        f = record["finetune"]
        print(f"fine-tuned {f['steps']} steps (stopped: {f['stopped']}): L_mask {f['losses_before']['total']:.4f} "
              f"-> {f['losses']['total']:.4f}, |theta - theta0| = {f['theta_distance']:.3g}")
    print(f"wall time {record['seconds']:.1f} s; wrote {', '.join(record['files'])} to {out}")


def parse_box(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--box must be x0,y0,x1,y1 numbers, got {text!r}") from None
    if len(vals) != 4:
        raise argparse.ArgumentTypeError(f"--box must be x0,y0,x1,y1 (4 numbers), got {text!r}")
    return vals


# Flags checked before any work, so a typo is a one-line error naming the flag rather than a
# failure (or a traceback) from deep inside the projection. (flag, minimum; None: optional)
_INT_FLAGS = (("seeds", 1), ("meta_steps", 1), ("grad_steps", 0), ("last_grad_steps", 0),
              ("transform_meta_steps", 1), ("transform_grad_steps", 0), ("adam_steps", 0),
              ("finetune_steps", 0), ("work_size", 8))


def check_settings(args: argparse.Namespace) -> None:
    """Raise ValueError naming the flag for a setting out of range (shared by demo and project)."""
    for name, minimum in _INT_FLAGS:
        v = getattr(args, name, None)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < minimum):
            raise ValueError(f"--{name.replace('_', '-')} must be an integer >= {minimum}, got {v!r}")
    if not (math.isfinite(args.context) and args.context >= 1):
        raise ValueError(f"--context must be a finite number >= 1 (the crop holds the box), got {args.context}")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise ValueError(f"--lr must be a finite number > 0, got {args.lr}")
    if args.beta is not None and not (math.isfinite(args.beta) and args.beta >= 0):
        raise ValueError(f"--beta must be a finite number >= 0, got {args.beta}")
    try:
        torch.device(args.device)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"--device {args.device!r} is not a device ({e})") from None


def _budget(args) -> dict:
    budget = dict(PAPER_BUDGET if args.paper_budget else DEMO_BUDGET)
    for name in ("seeds", "meta_steps", "grad_steps", "last_grad_steps", "transform_meta_steps",
                 "transform_grad_steps", "beta", "lr"):
        v = getattr(args, name, None)
        if v is not None:
            budget[name] = v
    if args.method in ("adam", "cma+adam"):
        budget["adam_steps"] = args.adam_steps if args.adam_steps is not None else (
            500 if args.paper_budget else budget["last_grad_steps"] + 100)
    if args.method in ("cma", "cma+adam") and not args.paper_budget:
        budget["cma_steps"] = 100 if args.method == "cma" else 30
    if args.method == "lbfgs":
        budget["lbfgs_steps"] = 500 if args.paper_budget else 100
    return budget


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, help="output folder")
    p.add_argument("--method", default="basincma", choices=["adam", "lbfgs", "cma", "cma+adam", "basincma"])
    p.add_argument("--no-transform", action="store_true", help="skip the transform search (identity φ)")
    p.add_argument("--generator", default="face-dcgan",
                   help="'face-dcgan' (default) or package.module:factory (with --checkpoint)")
    p.add_argument("--checkpoint", default=None, help="state dict for --generator (weights_only=True)")
    p.add_argument("--device", default="cpu")
    _threads.add_threads_argument(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--paper-budget", action="store_true",
                   help="the paper's budget: 18 seeds, 30×30 transform search, BasinCMA 30×30 + 300 "
                        "(default: a reduced budget that runs in minutes on a CPU)")
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--meta-steps", type=int, default=None)
    p.add_argument("--grad-steps", type=int, default=None)
    p.add_argument("--last-grad-steps", type=int, default=None)
    p.add_argument("--transform-meta-steps", type=int, default=None)
    p.add_argument("--transform-grad-steps", type=int, default=None)
    p.add_argument("--adam-steps", type=int, default=None)
    p.add_argument("--beta", type=float, default=None, help="LPIPS weight (default 10)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate for z (default 0.05)")
    p.add_argument("--work-size", type=int, default=128, help="working crop size in pixels (default 128)")
    p.add_argument("--context", type=float, default=2.0, help="crop side / box side (default 2)")
    p.add_argument("--finetune-steps", type=int, default=0,
                   help="fine-tune a copy of the generator to the projection for at most N Adam steps "
                        "(seed 003 eq. 6: lr 1e-4, lambda 1e3, stop below L_mask 0.1; default 0: off)")


def _generator(args):
    from latentx import models

    if args.generator in ("face-dcgan", "default"):
        return models.load("face-dcgan", device=args.device)
    return models.load(args.generator, checkpoint=args.checkpoint, device=args.device)


def add_project_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", nargs="+", help="image file(s) (PNG, JPEG, ...)")
    p.add_argument("--box", type=parse_box, action="append", default=None,
                   help="object box x0,y0,x1,y1 in pixels; repeat once per IMAGE, in order "
                        "(default: the whole images)")
    p.add_argument("--overwrite", action="store_true",
                   help="redo images whose result.json exists (default: skip them, resuming a run)")
    add_common_arguments(p)


def run_project(args: argparse.Namespace) -> int:
    try:
        return _run_project(args)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as e:
        print(f"latentx project: error: {e}", file=sys.stderr)
        return 2


def output_folders(images: Sequence[str], out: Path) -> list[Path]:
    """Where each image's files go: ``out`` for one image; otherwise ``out``/<file stem>, with
    ``-2``, ``-3`` ... appended to repeated stems (in argument order, so a rerun with the same
    arguments finds the same folders)."""
    if len(images) == 1:
        return [out]
    folders, seen = [], {}
    for path in images:
        stem = Path(path).stem or "image"
        seen[stem] = seen.get(stem, 0) + 1
        folders.append(out / (stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"))
    return folders


def _check_box(box: Sequence[float], size: tuple, name: str) -> None:
    x0, y0, x1, y1 = box
    H, W = size
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"--box {list(box)} for {name} is empty (need x0 < x1 and y0 < y1)")
    if x0 < 0 or y0 < 0 or x1 > W or y1 > H:
        raise ValueError(f"--box {list(box)} for {name} lies outside its {W}×{H} image")


def _run_project(args: argparse.Namespace) -> int:
    images = list(args.image)
    boxes = args.box
    if boxes is not None and len(boxes) != len(images):
        raise ValueError(f"got {len(boxes)} --box for {len(images)} IMAGE arguments: give --box once per "
                         "IMAGE, in the same order, or not at all (the whole images)")
    check_settings(args)
    out = Path(args.out or "latentx-project")
    folders = output_folders(images, out)
    # Check every image and box before the first projection: a typo in the last box should not
    # surface after hours of work on the others.
    jobs = []
    for i, (path, folder) in enumerate(zip(images, folders)):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"IMAGE {path!r} does not exist")
        size = _image_size(path)
        box = boxes[i] if boxes is not None else [0, 0, size[1], size[0]]
        _check_box(box, size, path)
        jobs.append((path, box, folder))
    todo = []
    for job in jobs:
        done = job[2] / "result.json"
        if done.is_file() and not args.overwrite:
            print(f"latentx project: {job[0]}: {done} exists, skipping (--overwrite redoes it)")
        else:
            todo.append(job)
    if not todo:
        return 0
    generator = _generator(args)
    budget = _budget(args)
    for k, (path, box, folder) in enumerate(todo, 1):
        if len(jobs) > 1:
            print(f"latentx project: [{k}/{len(todo)}] {path} -> {folder}")
        record = run_projection(read_image(path), box, folder, generator=generator, method=args.method,
                                transform=not args.no_transform, device=args.device, work_size=args.work_size,
                                context=args.context, seed=args.seed, budget=budget, label=str(path),
                                finetune_steps=args.finetune_steps)
        _print_record(record, folder)
    return 0


def _image_size(path: str) -> tuple:
    """(H, W) of an image file (reads it; the photos here are small next to a projection)."""
    return tuple(read_image(path).shape[1:])


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p)


def run_demo(args: argparse.Namespace) -> int:
    try:
        from skimage import data
    except ImportError:
        print("latentx demo needs scikit-image for its photo (pip install scikit-image)", file=sys.stderr)
        return 2
    try:
        check_settings(args)
        generator = _generator(args)
    except (ValueError, ModuleNotFoundError) as e:
        print(f"latentx demo: error: {e}", file=sys.stderr)
        return 2
    photo = array_to_tensor(data.astronaut(), "skimage.data.astronaut()")
    out = Path(args.out or "latentx-demo")
    budget = _budget(args)
    print(f"latentx demo: projecting the face in skimage.data.astronaut() (box x0,y0,x1,y1 = "
          f"{ASTRONAUT_FACE_BOX}) into {generator.name} ({generator.resolution[0]}×{generator.resolution[1]}, "
          f"z_dim {generator.z_dim}), method {args.method}"
          f"{'' if args.no_transform else ' + transform search'}, budget {budget}")
    record = run_projection(photo, ASTRONAUT_FACE_BOX, out, generator=generator, method=args.method,
                            transform=not args.no_transform, device=args.device, work_size=args.work_size,
                            context=args.context, seed=args.seed, budget=budget,
                            label="skimage.data.astronaut()", finetune_steps=args.finetune_steps,
                            extra={"face_box_note": "ASTRONAUT_FACE_BOX in latentx/cli/project.py"})
    _print_record(record, out)
    return 0

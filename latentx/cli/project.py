"""``latentx project IMAGE|FOLDER ... [--list FILE] [--box x0,y0,x1,y1 ... | --boxes FILE] --out DIR``
and ``latentx demo``: project the object in a photo into a generator with the transform
search, composite it back, write the pictures.

Which images: IMAGE arguments are files or folders (a folder's image files, sorted by name,
not recursive); ``--list FILE`` adds one path per line (relative to FILE's folder, ``#``
comments). Which box: ``--box`` once per image in order; or ``--boxes FILE``, a JSON object
``{"photo.jpg": [x0, y0, x1, y1], "other.jpg": null, ...}`` with an entry for every image
(paths relative to FILE's folder; null: the whole image); or neither: the whole images.
Boxes are in pixels of the image as a viewer shows it (JPEG EXIF orientation applied), and
every one is checked against its image's size before the first projection.

One IMAGE file writes into ``--out`` itself. Otherwise each image gets a sub-folder of
``--out`` named after the file (``-2``, ``-3`` ... where names repeat), ``--out`` holds
``config.json`` (the settings; a resumed run must match them), and at the end
``summary.json`` and ``summary.csv`` (every image's status and best / mean-of-seeds losses)
and a table is printed. An image whose projection raises gets ``error.json`` instead of
``result.json``; the others go on, the exit status is 1, and a rerun retries it.

Resumable: ``result.json`` is written last, atomically and durably (``latentx._atomic``), so a
folder holding it for the same image and box is finished; such images are skipped
(``--overwrite`` redoes them), and running an interrupted or killed command again completes
the rest. Every image uses the same ``--seed``, so a resumed run gives what an uninterrupted
one would.

At scale, under ``torchrun --nproc_per_node=N -m latentx.cli project ...`` (gloo; a bare
``--device cuda`` means each process's ``cuda:LOCAL_RANK``): every process lists the images
still to do, then rank r projects the r-th, (r + N)-th, ... of them; rank 0 writes the
summary once all are done.

``--finetune-steps N`` (default 0: off) fine-tunes a copy of the generator to the best
projection afterwards (seed 003 eq. 6, :func:`latentx.projection.finetune`); the pictures then
show the tuned generator's output and ``result.json`` gains a ``finetune`` entry.

The object box is cut out of the photo with context (a square ``--context`` × the box's longer
side, centred on it) and resized to ``--work-size`` pixels: the working frame in which
:func:`latentx.projection.project` searches the transform and the latent. The result is then
inverse-transformed into the full photo and Poisson-blended in (``latentx.poisson``).

Files written for each image (into ``--out``, or its sub-folder):

    target.png             the working crop (what is projected), box outlined
    target_transformed.png T_φ*(crop): the target as the generator is asked to draw it
    projection.png         G(z*) of the best seed, at the generator's resolution
    inverted.png           T_φ*⁻¹(G(z*)) pasted on the working crop where it lands
    composite.png          the full photo with G(z*) Poisson-blended into the box region
    side_by_side.png       crop | transformed target | projection | composite (crop region)
    loss_curve.png         matplotlib, axes labelled: transform search, best loss per CMA
                           generation; latent search, best-of-seeds loss per step (needs the
                           ``figures`` extra; skipped, with a message, without matplotlib)
    result.json            settings, image and box, crop, φ₀, φ*, ψ in photo coordinates, all
                           latents, per-seed losses, best/mean-of-seeds summary, wall time
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from tqdm.auto import tqdm

from latentx import _threads
from latentx._atomic import atomic_write_json
from latentx.cli import project_batch as batch
from latentx.cli._run_config import check_run_config
from latentx.figures import matplotlib_available, plot_projection_losses
# Image I/O lives in latentx.images; these names stay importable from here (tests, benchmarks).
from latentx.projection import METHODS
from latentx.images import array_to_tensor, outline_box, read_image, resize_square, to_uint8, write_png
from latentx.transforms import SpatialTransform

# The astronaut's face in skimage.data.astronaut() (512×512), pixels (x0, y0, x1, y1): read off
# the image by eye with the same extent as the face DCGAN's measured box (models.FACE_DCGAN_BOX):
# forehead below the fringe (y 70) to the chin (y 182), cheek to cheek (x 178 to 272).
ASTRONAUT_FACE_BOX = (178, 70, 272, 182)

DEMO_BUDGET = dict(seeds=12, meta_steps=20, grad_steps=20, last_grad_steps=200,
                   transform_meta_steps=20, transform_grad_steps=20)
PAPER_BUDGET = dict(seeds=18, meta_steps=30, grad_steps=30, last_grad_steps=300,
                    transform_meta_steps=30, transform_grad_steps=30)
# --fast: the settings of benchmarks/bench_time_to_quality.py's FAST (there: median 7.6x less time
# than the pix2latent-style baseline at the paper budget, to the same loss, on 3 of 4 images):
# Adam from 18 seeds with successive halving, phi0 from the box (no transform search), then the 3
# best seeds refined in z and phi on the photo-frame loss, on the BN-folded channels-last generator.
FAST_BUDGET = dict(seeds=18, adam_steps=150, halving=[25, 50, 100], refine_steps=300, refine_seeds=3,
                   fast_generator=True)


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
                   extra: Optional[dict] = None, finetune_steps: int = 0, progress: bool = True,
                   encoder=None, class_spec: Optional[dict] = None) -> dict:
    """Project ``box`` of ``photo`` [3, H, W] in [−1, 1]; write everything to ``out``; return
    the JSON summary. ``finetune_steps`` > 0: then fine-tune a copy of the generator for at
    most that many Adam steps (seed 003 eq. 6) and picture its output. ``encoder``: E(x) → z
    for the ``encoder`` / ``hybrid`` methods (a module or a train_encoder checkpoint path).
    ``class_spec`` (class-conditional generators, :func:`class_setting`): {"label": N} starts c
    at W[N]; {"auto": k, "among": labels or None} screens the classes, projects the k best
    candidates and keeps the lowest loss (``latentx.class_search``). ``result.json`` is
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
    kw = dict(boxes=[box_crop], method=method, transform=transform, seed=seed, progress=progress,
              encoder=encoder, **budget)
    target = crop.clamp(-1, 1)
    class_record = None
    if class_spec is None:
        res = project(generator, target, **kw)
    elif "label" in class_spec:
        res = project(generator, target, classes=[class_spec["label"]], **kw)
        class_record = {"mode": "given", "label": class_spec["label"]}
    else:
        from latentx.class_search import class_candidates, project_best_class

        cand = class_candidates(generator, target, k=class_spec["auto"], boxes=[box_crop],
                                among=class_spec["among"], seed=seed)
        res, picked = project_best_class(generator, target, cand, **kw)
        class_record = {"mode": "auto", "candidates": cand[0].tolist(),
                        "candidate_losses": picked["losses"][0].tolist(), "chosen": int(picked["chosen"][0])}
    best = res.best()
    s = int(res.best_seed[0])
    ft = None
    if finetune_steps > 0:
        ft = finetune(generator, res, steps=finetune_steps, progress=progress)
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
    write_png(out / "target.png", outline_box(target_u8, box_crop))
    write_png(out / "target_transformed.png", to_uint8(target_t))
    write_png(out / "projection.png", to_uint8(gen_best[0]))
    write_png(out / "inverted.png", to_uint8(pasted))
    write_png(out / "composite.png", to_uint8(composite))
    panels = [outline_box(to_uint8(resize_square(crop[0].cpu(), P)), [v * P / work_size for v in box_crop]),
              to_uint8(resize_square(target_t.cpu(), P)), to_uint8(resize_square(gen_best[0].cpu(), P)),
              to_uint8(resize_square(comp_crop.cpu(), P))]
    gap = np.full((P, 6, 3), 255, np.uint8)
    row = [panels[0]]
    for p in panels[1:]:
        row += [gap, p]
    write_png(out / "side_by_side.png", np.concatenate(row, axis=1))

    lat = res.history["latent"][0]  # [S, T]
    latent_best = lat.min(0).values.cpu().numpy() if lat.numel() else np.zeros(0)
    t_best = res.history["transform"][0].cpu().numpy() if "transform" in res.history else None
    files = ["target.png", "target_transformed.png", "projection.png", "inverted.png", "composite.png",
             "side_by_side.png"]
    renderer = None
    if matplotlib_available():
        plot_projection_losses(out / "loss_curve.png", t_best, latent_best,
                               f"{label}: {method}{TRANSFORM_LABELS[transform]}")
        renderer = "matplotlib"
        files.append("loss_curve.png")
    else:
        print("latentx project: matplotlib is not installed, so loss_curve.png is not drawn "
              "(pip install 'latentx[figures]')", file=sys.stderr)

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
        "c_best": None if best["c"] is None else best["c"][0].tolist(),
        "losses": {k: v[0].tolist() for k, v in res.losses.items()},
        "best": summary["best"], "mean_of_seeds": summary["mean"],
        "evaluations": summary["evaluations"],
        "poisson": info, "loss_curve_renderer": renderer,
        "settings": res.settings, "projection_seconds": res.seconds,
        "seconds": time.perf_counter() - t0,
        "z_all": res.z[0].tolist(),
        "files": files + ["result.json"],
        "side_by_side_panels": ["target crop (box outlined)", "T_phi*(target): what G is fitted to",
                                "G(z*) best seed", "Poisson composite (crop region)"],
    }
    if class_record is not None:
        from latentx.class_search import nearest_class

        class_record["nearest_after"] = int(nearest_class(generator, best["c"][:1])[0])
        record["class"] = class_record
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


# The name experiments and older code import from here; the one implementation (fsync, ordinary
# permissions) is latentx._atomic.atomic_write_json.
write_json_atomic = atomic_write_json


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
    """Raise ValueError naming the flag for a setting out of range or flags that conflict
    (shared by demo and project); fills in --method's default, which depends on --fast."""
    if args.method is None:
        args.method = "adam" if args.fast else "basincma"
    if args.fast:
        if args.paper_budget:
            raise ValueError("--fast and --paper-budget are two different budgets; pass one")
        if args.method not in ("adam", "hybrid"):
            raise ValueError(f"--fast runs Adam (or hybrid: Adam from the encoder's guess), not --method {args.method}")
        for name in ("meta_steps", "grad_steps", "last_grad_steps", "transform_meta_steps", "transform_grad_steps"):
            if getattr(args, name, None) is not None:
                raise ValueError(f"--{name.replace('_', '-')} is not used by --fast (no BasinCMA, no transform "
                                 "search); set --seeds / --adam-steps")
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
    if args.lr_c is not None and not (math.isfinite(args.lr_c) and args.lr_c >= 0):
        raise ValueError(f"--lr-c must be a finite number >= 0, got {args.lr_c}")
    if isinstance(args.class_k, bool) or not isinstance(args.class_k, int) or args.class_k < 1:
        raise ValueError(f"--class-k must be an integer >= 1, got {args.class_k!r}")
    _class_labels("--class-among", args.class_among)
    if args.class_ is not None and args.class_ != "auto":
        _class_labels("--class", args.class_)
    if args.method in ("encoder", "hybrid") and args.encoder is None:
        raise ValueError(f"--method {args.method} needs --encoder PATH (a checkpoint from `latentx train-encoder`)")
    if args.encoder is not None and not os.path.isfile(args.encoder):
        raise ValueError(f"--encoder {args.encoder!r} is not a file (train one with `latentx train-encoder`)")


def _class_labels(flag: str, text: Optional[str]) -> Optional[list[int]]:
    """Comma-separated class labels >= 0 (None for no text); ValueError naming ``flag``."""
    if text is None:
        return None
    try:
        labels = [int(v) for v in str(text).split(",")]
    except ValueError:
        labels = []
    if not labels or min(labels) < 0:
        raise ValueError(f"{flag} must be class label(s) N[,N...] >= 0" + (" or 'auto'" if flag == "--class" else "")
                         + f", got {text!r}")
    return labels


def class_setting(args, generator) -> Optional[dict]:
    """``run_projection``'s ``class_spec`` from --class / --class-k / --class-among, checked
    against the generator (conditional or not, its number of classes)."""
    n = 0 if generator.class_embedding is None else int(generator.class_embedding.shape[0])
    if n == 0:
        if args.class_ is not None:
            raise ValueError(f"--class: --generator {args.generator} is not class-conditional")
        return None
    if args.class_ is None:
        raise ValueError(f"--generator {args.generator} is class-conditional: pass --class N (0..{n - 1}) "
                         "or --class auto")
    among = _class_labels("--class-among", args.class_among)
    labels = among or ([] if args.class_ == "auto" else _class_labels("--class", args.class_))
    if labels and max(labels) >= n:
        raise ValueError(f"--class / --class-among: labels must lie in 0..{n - 1} for --generator "
                         f"{args.generator}, got {max(labels)}")
    if args.class_ == "auto":
        return {"auto": args.class_k, "among": among}
    return {"label": labels[0]}


TRANSFORM_LABELS = {True: " + transform search", "init": " + φ₀ from the box", False: ""}


def transform_setting(args) -> Union[bool, str]:
    """project()'s ``transform``: False with --no-transform, "init" (φ₀ from the box, no
    search) with --fast, else True (the search)."""
    return False if args.no_transform else ("init" if args.fast else True)


def _budget(args) -> dict:
    if args.fast:
        budget = dict(FAST_BUDGET)
        for name in ("seeds", "adam_steps", "beta", "lr", "lr_c"):
            if getattr(args, name, None) is not None:
                budget[name] = getattr(args, name)
        budget["halving"] = [k for k in budget["halving"] if k < budget["adam_steps"]]
        return budget
    budget = dict(PAPER_BUDGET if args.paper_budget else DEMO_BUDGET)
    for name in ("seeds", "meta_steps", "grad_steps", "last_grad_steps", "transform_meta_steps",
                 "transform_grad_steps", "beta", "lr", "lr_c"):
        v = getattr(args, name, None)
        if v is not None:
            budget[name] = v
    if args.method in ("adam", "cma+adam", "hybrid"):
        budget["adam_steps"] = args.adam_steps if args.adam_steps is not None else (
            500 if args.paper_budget else budget["last_grad_steps"] + 100)
    if args.method in ("cma", "cma+adam") and not args.paper_budget:
        budget["cma_steps"] = 100 if args.method == "cma" else 30
    if args.method == "lbfgs":
        budget["lbfgs_steps"] = 500 if args.paper_budget else 100
    return budget


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, help="output folder")
    p.add_argument("--method", default=None, choices=METHODS,
                   help="the latent search (default basincma; adam with --fast); encoder / hybrid need --encoder")
    p.add_argument("--encoder", default=None, metavar="PATH",
                   help="an encoder checkpoint from `latentx train-encoder` (for --method encoder / hybrid)")
    p.add_argument("--no-transform", action="store_true", help="skip the transform search (identity φ)")
    p.add_argument("--generator", default="face-dcgan",
                   help="'face-dcgan' (default), 'digits-cgan', 'biggan-deep-128|256|512' (with --checkpoint: "
                        "your copy of pytorch-pretrained-biggan's pytorch_model.bin or its folder) or "
                        "package.module:factory (with --checkpoint)")
    p.add_argument("--class", dest="class_", default=None, metavar="N|auto",
                   help="class-conditional generators: start c at class N's embedding, or 'auto': screen "
                        "the classes, project the --class-k best, keep the lowest loss")
    p.add_argument("--class-k", type=int, default=3, help="candidates projected by --class auto (default 3)")
    p.add_argument("--class-among", default=None, metavar="N,N,...",
                   help="--class auto screens only these classes (default: all; BigGAN's 1,000 are slow on a CPU)")
    p.add_argument("--lr-c", type=float, default=None, help="Adam learning rate for c (default 1e-4, seed 003)")
    p.add_argument("--checkpoint", default=None, help="state dict for --generator (weights_only=True)")
    p.add_argument("--device", default="cpu")
    _threads.add_threads_argument(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--paper-budget", action="store_true",
                   help="the paper's budget: 18 seeds, 30×30 transform search, BasinCMA 30×30 + 300 "
                        "(default: a reduced budget that runs in minutes on a CPU)")
    p.add_argument("--fast", action="store_true",
                   help="time-to-quality settings: Adam (or hybrid) from 18 seeds, 150 steps with successive "
                        "halving, phi0 from the box instead of the transform search, the 3 best seeds refined "
                        "in z and phi (300 steps), the BN-folded channels-last generator; the demo runs in about a "
                        "seventh of --paper-budget's time (benchmarks/RESULTS.md, 'Time to quality')")
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


def _encoder(args):
    if args.encoder is None:
        return None
    from latentx.projection import load_encoder

    return load_encoder(args.encoder, map_location=args.device)


def add_project_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", nargs="*", metavar="IMAGE",
                   help="image file(s) (PNG, JPEG, ...) or folder(s) of them (their image files, sorted by name)")
    p.add_argument("--list", default=None, metavar="FILE",
                   help="a text file naming one image per line (relative to FILE's folder; # comments)")
    boxes = p.add_mutually_exclusive_group()
    boxes.add_argument("--box", type=parse_box, action="append", default=None,
                       help="object box x0,y0,x1,y1 in pixels; repeat once per image, in order "
                            "(default: the whole images)")
    boxes.add_argument("--boxes", default=None, metavar="FILE",
                       help='a JSON object {"image path": [x0, y0, x1, y1] or null (the whole image)} with an '
                            "entry for every image; relative paths are relative to FILE's folder")
    p.add_argument("--overwrite", action="store_true",
                   help="redo images whose result.json exists (default: skip them, resuming a run)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_common_arguments(p)


def run_project(args: argparse.Namespace) -> int:
    try:
        return _run_project(args)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as e:
        rank = int(os.environ.get("RANK", "0"))
        where = f" [rank {rank}]" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        print(f"latentx project{where}: error: {e}", file=sys.stderr)
        return 2


def output_folders(images: Sequence[str], out: Path) -> list[Path]:
    """Where each image's files go when IMAGE arguments are files: ``out`` for one image;
    otherwise ``out``/<file stem>, with ``-2``, ``-3`` ... appended to repeated stems."""
    return batch.output_folders(images, out, many=len(images) != 1)


def _rank_device(device: str, local_rank: int, world: int) -> str:
    """Under torchrun, a bare ``cuda`` means this process's GPU: ``cuda:LOCAL_RANK``."""
    return f"cuda:{local_rank}" if world > 1 and device == "cuda" else device


def _run_project(args: argparse.Namespace) -> int:
    check_settings(args)
    images, many = batch.collect_images(args.image, args.list)
    out = Path(args.out or "latentx-project")
    jobs = batch.make_jobs(images, many, out, args.box, args.boxes)
    budget = _budget(args)
    config = batch.run_config(args, budget, transform_setting(args))
    write_config = many and check_run_config(out / batch.CONFIG, config, overwrite=args.overwrite)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    args.device = _rank_device(args.device, int(os.environ.get("LOCAL_RANK", "0")), world)
    distributed = world > 1
    if distributed and not dist.is_initialized():
        # gloo whatever the device: the processes only exchange barriers (results go through
        # the shared --out folder). A long timeout: the last barrier waits for the slowest rank.
        dist.init_process_group(backend="gloo", timeout=datetime.timedelta(hours=24))
    try:
        return _run_jobs(args, jobs, many, out, budget, config, write_config, rank, world, distributed)
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()


def _run_jobs(args, jobs, many: bool, out: Path, budget: dict, config: dict, write_config: bool,
              rank: int, world: int, distributed: bool) -> int:
    todo, stale = [], 0
    for job in jobs:
        record = batch.read_record(job.folder)  # parsed and dropped: thousands would fill memory
        if args.overwrite or not batch.is_done(job, record):
            todo.append(job)
            stale += record is not None and not args.overwrite
    skipped = len(jobs) - len(todo)
    # Before config.json is written: a bad --generator must not pin the run to its settings.
    generator = _generator(args) if todo else None
    class_spec = class_setting(args, generator) if todo else None
    encoder = _encoder(args) if todo else None
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if write_config:
            atomic_write_json(out / batch.CONFIG, config)
        if skipped:
            what = f"{jobs[0].folder / batch.RESULT} exists" if not many else f"{skipped} of {len(jobs)} images are done"
            print(f"latentx project: {what}, skipping (--overwrite redoes them)")
        if stale:
            print(f"latentx project: {stale} image(s) hold a result.json for another box or image; redoing them")
    # Every rank has listed what is done before any rank writes a result: they all split the
    # same to-do list, rank r taking its r-th, (r + world)-th, ... image.
    if distributed:
        dist.barrier()
    mine = todo[rank::world]
    failures = 0
    if mine:
        bar = tqdm(mine, disable=args.no_progress or not many, desc=f"project rank {rank}" if distributed else "project",
                   unit="image", position=rank if distributed else None)
        for job in bar:
            try:
                record = run_projection(
                    read_image(job.image), job.box, job.folder, generator=generator, method=args.method,
                    transform=transform_setting(args), device=args.device, work_size=args.work_size,
                    context=args.context, seed=args.seed, budget=budget, label=str(job.image),
                    finetune_steps=args.finetune_steps, progress=not (many or args.no_progress),
                    extra={"source": job.source}, encoder=encoder, class_spec=class_spec)
            except Exception as err:  # noqa: BLE001 - one bad photo must not end a run over thousands
                if not many:
                    raise
                failures += 1
                job.folder.mkdir(parents=True, exist_ok=True)
                atomic_write_json(job.folder / batch.ERROR, batch.error_record(job, err, traceback.format_exc()))
                tqdm.write(f"latentx project: {job.image} FAILED: {type(err).__name__}: {err} "
                           f"(details in {job.folder / batch.ERROR}; run the command again to retry)", file=sys.stderr)
                continue
            (job.folder / batch.ERROR).unlink(missing_ok=True)  # an earlier failure, now retried
            if many:
                tqdm.write(f"latentx project: {job.image}: L_mask {record['best']['total']:.4f} (best of seeds), "
                           f"{record['seconds']:.1f} s -> {job.folder}")
            else:
                _print_record(record, job.folder)
        bar.close()

    if distributed:
        dist.barrier()
    if rank != 0 or not many:
        return 1 if failures else 0
    rows = batch.summary_rows(jobs, out)
    summary = batch.write_summary(out, rows, {
        "config": config, "world_size": world, "out": str(out),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    print(batch.format_table(summary))
    print(f"latentx project: wrote {out / batch.SUMMARY_JSON} and {out / batch.SUMMARY_CSV}")
    return 1 if failures or summary["failed"] or summary["missing"] else 0


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
        class_spec = class_setting(args, generator)
    except (ValueError, ModuleNotFoundError) as e:
        print(f"latentx demo: error: {e}", file=sys.stderr)
        return 2
    photo = array_to_tensor(data.astronaut(), "skimage.data.astronaut()")
    out = Path(args.out or "latentx-demo")
    budget = _budget(args)
    print(f"latentx demo: projecting the face in skimage.data.astronaut() (box x0,y0,x1,y1 = "
          f"{ASTRONAUT_FACE_BOX}) into {generator.name} ({generator.resolution[0]}×{generator.resolution[1]}, "
          f"z_dim {generator.z_dim}), method {args.method}"
          f"{TRANSFORM_LABELS[transform_setting(args)]}, budget {budget}")
    record = run_projection(photo, ASTRONAUT_FACE_BOX, out, generator=generator, method=args.method,
                            transform=transform_setting(args), device=args.device, work_size=args.work_size,
                            context=args.context, seed=args.seed, budget=budget,
                            label="skimage.data.astronaut()", finetune_steps=args.finetune_steps,
                            extra={"face_box_note": "ASTRONAUT_FACE_BOX in latentx/cli/project.py"},
                            encoder=_encoder(args), class_spec=class_spec)
    _print_record(record, out)
    return 0

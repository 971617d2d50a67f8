"""Time to quality (issue 15): how long ``latentx.projection.project`` takes to reach, image by
image, the loss the pix2latent-style baseline reaches with the paper's full budget.

Per target image b (the astronaut crops of ``bench_projection``: the face DCGAN, 128 × 128
crops around the face box, the box moved by a few pixels per image):

1. **Baseline.** :class:`~latentx.benchmarks.bench_projection.Pix2LatentStyle` (pycma, the
   ``lpips`` package, ``F.grid_sample``, per-seed Python lists; one image per call) at
   ``PAPER_BUDGET``: 18 seeds, the 30 × 30 transform search, BasinCMA 30 × 30 with a last
   generation of 300 steps, seed b. Its wall time is t_base[b]. Its quality L_base[b] is the
   lowest, over its 18 seeds, photo-frame total loss L_mask(T_φ*⁻¹(G(z)), y, m') of its
   (φ*, z) — computed by latentx's own scoring function, the one that scores latentx's results
   (``Problem.photo_loss``), so the two are measured by the same ruler. (Before anything is
   timed, ``bench_projection.check_agreement`` checks that the baseline's loss and latentx's
   agree on the same inputs.)
2. **latentx.** ``project(G, image b, box b, seed=b, target_loss=L_base[b], **FAST)``: it stops
   as soon as one of its seeds reaches L_base[b] (photo-frame total loss, float32, checked
   during the search and at every refinement step). Its time to target is
   ``result.reached_seconds`` (from the start of the call, everything included); when it does
   not get there, its whole wall time, and the row says "no".

speedup[b] = t_base[b] / t_latentx[b]; images / hour = 3600 / (mean seconds per image) for the
baseline at the paper budget and for latentx at equal quality. The rows also give both final
losses and their ratio (latentx / baseline, ≤ 1 where the target was reached), and the
generator evaluations each spent (rows × forward + backward passes; the baseline's from its
budget, latentx's counted in ``result.evaluations``). The load average at the start and at the
end is printed: on a shared machine both implementations are slowed, and the images are run
interleaved (baseline b, latentx b, baseline b + 1, ...) so that both see the same load.

``FAST`` — what latentx runs (``project()`` options, each tested in tests/test_projection.py):

* ``transform="init"``: φ₀ from the box, no CMA search over φ; φ is refined by gradient at
  the end instead (below);
* ``method="adam"``, 18 seeds, 150 Adam steps, successive halving at steps 25, 50 and 100
  (18 → 9 → 5 → 3 seeds: the basins that cannot win stop early);
* ``refine_steps=300``, ``refine_seeds=3``: each image's 3 best seeds (by the photo-frame
  loss) then descend the reported photo-frame loss jointly in z and their own copy of φ
  (``latentx.projection.refine``); the image keeps the best;
* ``fast_generator=True``: the generator's batch norms folded into its convolutions,
  channels-last weights (same images to float rounding);
* ``target_loss`` per image, checked every 5 Adam steps and at every refinement step;
* ``restarts=3``: an image that misses its target is projected again with new seeds, at most
  3 more times (its time to target counts every attempt; it keeps its best).

``--ablation-from RUN.json`` (the ``--json`` of a full run): each step above measured — the
baseline is not run again (its times and losses are read from RUN.json; it is deterministic
given the seed); FAST and FAST with one step removed (``ABLATIONS``) run per image, to the
same targets, interleaved (image b: every variant, then image b + 1).

``--quick`` (CI): the budgets shrink to seconds (see ``QUICK_BASELINE`` / ``QUICK_FAST``); the
numbers then only show that the benchmark runs.

    python -m latentx.benchmarks.bench_time_to_quality [--images 4] [--threads 2] [--json PATH]
    python -m latentx.benchmarks.bench_time_to_quality --ablation-from PATH [--threads 2]
    latentx bench --only time_to_quality
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
from typing import Optional, Sequence

import torch

from latentx import models
from latentx.benchmarks.bench_projection import (Pix2LatentStyle, TINY_BUDGET, astronaut_targets,
                                                 check_agreement, describe_budget, lpips_package_module, quiet)
from latentx.benchmarks.timing import format_table, synchronize
from latentx.cli.project import FAST_BUDGET, PAPER_BUDGET
from latentx.projection import default_lpips, masks_from_boxes, project
from latentx.projection.problem import Problem

IMAGES = 4
# `latentx project --fast`'s settings (FAST_BUDGET), with the target checked every 5 steps and
# up to 3 restarts
FAST = dict(method="adam", transform="init", **FAST_BUDGET, target_every=5, restarts=3)
# --quick: seconds in all (a smoke test of the benchmark, not a measurement)
QUICK_BASELINE = dict(TINY_BUDGET, meta_steps=3, transform_meta_steps=3, last_grad_steps=5)
QUICK_FAST = dict(FAST, seeds=2, adam_steps=6, halving=(3,), refine_steps=10, refine_seeds=2, target_every=2,
                  restarts=1)
# --ablation-from: FAST with one step removed at a time
ABLATIONS = {"FAST (every step)": {}, "no successive halving": dict(halving=None),
             "no photo-frame refinement": dict(refine_steps=0), "no fast generator": dict(fast_generator=False),
             "no restarts": dict(restarts=0)}


def baseline_evaluations(budget: dict) -> int:
    """Generator row-evaluations (forward + backward passes, summed over seeds) of one
    baseline projection at ``budget``: per Adam run of n steps n forwards + n backwards + one
    forward of the final point; per transform generation one more forward (the photo-frame
    loss of the descended latents)."""
    S, tg, tm = budget["seeds"], budget["transform_grad_steps"], budget["transform_meta_steps"]
    g, m, last = budget["grad_steps"], budget["meta_steps"], budget["last_grad_steps"]
    per_seed = tm * (2 * tg + 2) + (m - 1) * (2 * g + 1) + (2 * last + 1)
    return S * per_seed


def baseline_quality(generator, lp, image: torch.Tensor, box: Sequence[float], result: dict) -> torch.Tensor:
    """[S] the photo-frame total loss of each of the baseline's seeds (z under its φ*), by
    latentx's scoring function."""
    H, W = image.shape[-2:]
    mask = masks_from_boxes([box], (H, W), background=0.3, device=image.device)
    S = result["z"].shape[0]
    P = quiet(lambda: Problem(generator=generator, images=image[None], masks=mask, perceptual=lp, beta=10.0,
                              seeds=S))
    phi = torch.tensor([result["phi"]] * S, dtype=image.dtype, device=image.device)
    with torch.no_grad():
        out = generator(result["z"].to(image.dtype))
        return quiet(lambda: P.photo_loss(out, phi)["total"]).double().cpu()


def latentx_setup(device: torch.device, n_images: int):
    """The face DCGAN, latentx's LPIPS and the first ``n_images`` astronaut targets (images,
    boxes), after one untimed tiny projection (first-call allocations, the fast generator copy)."""
    generator = models.load("face-dcgan", device=device)
    lp, _ = quiet(lambda: default_lpips("alex", device))
    images, boxes = astronaut_targets(n_images, device)
    quiet(lambda: project(generator, images[:1], boxes=boxes[:1], seed=0, perceptual=lp, progress=False,
                          **dict(QUICK_FAST, restarts=0)))
    return generator, lp, images, boxes


def to_target(generator, lp, images: torch.Tensor, boxes: list, b: int, target: float, settings: dict):
    """latentx on image b with ``target_loss=target``: (seconds to the target, or the whole
    call's where it was missed; reached; the ProjectionResult)."""
    res = quiet(lambda: project(generator, images[b:b + 1], boxes=boxes[b:b + 1], seed=b, perceptual=lp,
                                progress=False, target_loss=target, **settings))
    synchronize(images.device)
    reached = bool(res.reached[0])
    return (float(res.reached_seconds[0]) if reached else res.seconds), reached, res


def run(device: torch.device, quick: bool, repeats: int = 1, *, images: Optional[int] = None,
        threads: Optional[int] = None, fast: Optional[dict] = None, baseline_budget: Optional[dict] = None,
        with_paper: bool = False) -> list[dict]:
    """Rows: one per image, then the summary. ``quick``: QUICK budgets, 1 image, 1 thread.
    ``threads``: torch's CPU threads for the run (restored after; default unchanged, 1 for
    ``quick``). ``fast`` / ``baseline_budget``: override FAST / PAPER_BUDGET. ``with_paper``:
    also run latentx's own paper-budget BasinCMA per image (no target) for its images/hour.
    ``repeats`` is accepted for ``latentx bench`` and ignored: each image is one measurement."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads or (1 if quick else old))
    try:
        return _run(device, quick, images, fast, baseline_budget, with_paper)
    finally:
        torch.set_num_threads(old)


def _run(device, quick, n_images, fast, baseline_budget, with_paper) -> list[dict]:
    fast = dict(fast or (QUICK_FAST if quick else FAST))
    budget = dict(baseline_budget or (QUICK_BASELINE if quick else PAPER_BUDGET))
    n_images = n_images or (1 if quick else IMAGES)
    load_start = os.getloadavg()
    generator, lp, images, boxes = latentx_setup(device, n_images)
    lp_package = lpips_package_module(device)
    rel = check_agreement(generator, lp_package, images, boxes)
    base = Pix2LatentStyle(generator, lp_package)
    case = (f"face-dcgan 64x64, 128x128 astronaut crops; baseline {describe_budget(budget)}; {device.type} "
            f"{torch.get_num_threads()} thread(s)")
    # warm-up (untimed): first-call allocations, pycma and lpips set-up
    quiet(lambda: base.project(images[0], boxes[0], seed=0, **QUICK_BASELINE))
    base_evals = baseline_evaluations(budget)
    rows = []
    for b in range(n_images):
        synchronize(device)
        t0 = time.perf_counter()
        r = quiet(lambda: base.project(images[b], boxes[b], seed=b, **budget))
        synchronize(device)
        t_base = time.perf_counter() - t0
        l_base = float(baseline_quality(generator, lp, images[b], boxes[b], r).min())

        t_lx, reached, res = to_target(generator, lp, images, boxes, b, l_base, fast)
        l_lx = float(res.losses["total"][0].min())
        lx_evals = sum(int(v[0].sum()) for counts in res.evaluations.values() for v in counts.values())
        attempts = 1 if res.attempts is None else int(res.attempts[0])
        row = {"benchmark": "time_to_quality", "case": case, "image": b,
               "baseline s": t_base, "baseline loss": l_base,
               "latentx s to target": t_lx, "latentx loss": l_lx, "reached": "yes" if reached else "no",
               "attempts": attempts,
               "speedup": t_base / t_lx, "loss ratio": l_lx / l_base,
               "baseline G evals": base_evals, "latentx G evals": lx_evals}
        if with_paper:
            t0 = time.perf_counter()
            paper = quiet(lambda: project(generator, images[b:b + 1], boxes=boxes[b:b + 1], seed=b, perceptual=lp,
                                          progress=False, method="basincma", transform=True, **budget))
            synchronize(device)
            row["latentx paper-budget s"] = time.perf_counter() - t0
            row["latentx paper-budget loss"] = float(paper.losses["total"][0].min())
        rows.append(row)
        # one line per image on stderr: a full run takes many minutes per image
        print(f"time_to_quality image {b}: baseline {t_base:.1f} s loss {l_base:.4f}; latentx "
              f"{t_lx:.1f} s loss {l_lx:.4f} reached={reached} attempts={attempts}; load "
              f"{os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
    load_end = os.getloadavg()
    t_base = [r["baseline s"] for r in rows]
    t_lx = [r["latentx s to target"] for r in rows]
    summary = {"benchmark": "time_to_quality", "case": case, "image": "median / rate",
               "baseline s": statistics.median(t_base), "baseline loss": statistics.median(r["baseline loss"] for r in rows),
               "latentx s to target": statistics.median(t_lx),
               "latentx loss": statistics.median(r["latentx loss"] for r in rows),
               "reached": f"{sum(r['reached'] == 'yes' for r in rows)}/{len(rows)}",
               "speedup": statistics.median(r["speedup"] for r in rows),
               "loss ratio": max(r["loss ratio"] for r in rows),
               "baseline images/hour": 3600 * len(rows) / sum(t_base),
               "latentx images/hour (equal quality)": 3600 * len(rows) / sum(t_lx)}
    if with_paper:
        summary["latentx paper-budget images/hour"] = 3600 * len(rows) / sum(r["latentx paper-budget s"] for r in rows)
    summary["note"] = (f"speedup: median of per-image ratios; loss ratio: the worst image's; load average "
                       f"(1/5/15 min) {load_start[0]:.2f}/{load_start[1]:.2f}/{load_start[2]:.2f} at the start, "
                       f"{load_end[0]:.2f}/{load_end[1]:.2f}/{load_end[2]:.2f} at the end; the two losses agree to "
                       f"{rel:.1e} rel on the same inputs (checked first); latentx: "
                       + ", ".join(f"{k}={v}" for k, v in fast.items()))
    return rows + [summary]


def ablation(device: torch.device, baseline_rows: Sequence[dict], *, threads: Optional[int] = None,
             fast: Optional[dict] = None) -> list[dict]:
    """One row per ``ABLATIONS`` variant: FAST with that step removed, run to the baseline's
    per-image losses of ``baseline_rows`` (a full run's per-image rows: ``image``,
    ``baseline s``, ``baseline loss``); median time to target, images reached, median speedup
    against the recorded baseline times, and images / hour."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads or old)
    try:
        fast = dict(fast or FAST)
        per_image = [r for r in baseline_rows if isinstance(r.get("image"), int)]
        if not per_image:
            raise ValueError("ablation: baseline_rows has no per-image rows (expected a full run's --json)")
        generator, lp, images, boxes = latentx_setup(device, max(r["image"] for r in per_image) + 1)
        load_start = os.getloadavg()
        times: dict[str, list] = {name: [] for name in ABLATIONS}
        reached: dict[str, list] = {name: [] for name in ABLATIONS}
        for r in per_image:
            b = r["image"]
            for name, change in ABLATIONS.items():
                seconds, ok, _ = to_target(generator, lp, images, boxes, b, r["baseline loss"], {**fast, **change})
                times[name].append(seconds)
                reached[name].append(ok)
                print(f"time_to_quality ablation image {b}, {name}: {times[name][-1]:.1f} s reached={ok}",
                      file=sys.stderr, flush=True)
        load_end = os.getloadavg()
        t_base = [r["baseline s"] for r in per_image]
        rows = [{"benchmark": "time_to_quality ablation", "variant": name,
                 "median s to target": statistics.median(times[name]),
                 "reached": f"{sum(reached[name])}/{len(per_image)}",
                 "median speedup": statistics.median(tb / t for tb, t in zip(t_base, times[name])),
                 "images/hour": 3600 * len(per_image) / sum(times[name])} for name in ABLATIONS]
        rows[0]["note"] = (f"baseline times and losses from the full run ({len(per_image)} images); load average "
                           f"{load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end; "
                           f"{torch.get_num_threads()} thread(s)")
        return rows
    finally:
        torch.set_num_threads(old)


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse
    import json

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="tiny budgets, one image: seconds (CI)")
    p.add_argument("--images", type=int, default=None, help=f"target images (default {IMAGES}; quick 1)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default torch's)")
    p.add_argument("--with-paper", action="store_true",
                   help="also time latentx's own paper-budget BasinCMA per image (no target)")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON here")
    p.add_argument("--ablation-from", metavar="RUN_JSON",
                   help="measure each FAST step against the baseline rows of a full run's --json")
    args = p.parse_args(argv)
    if args.images is not None and not 1 <= args.images <= 8:
        p.error(f"--images must be in [1, 8], got {args.images}")
    device = torch.device(args.device)
    load = os.getloadavg()
    print(f"torch {torch.__version__} | {device} | {args.threads or torch.get_num_threads()} threads | "
          f"load average at the start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} | {time.strftime('%Y-%m-%d %H:%M')}")
    if args.ablation_from:
        with open(args.ablation_from) as f:
            rows = ablation(device, json.load(f), threads=args.threads)
        print(format_table(rows))
        print(rows[0]["note"])
    else:
        rows = run(device, args.quick, images=args.images, threads=args.threads, with_paper=args.with_paper)
        print(format_table(rows))
        print(rows[-1]["note"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

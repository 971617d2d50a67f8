"""Seed 003's class search, measured on a trained class-conditional generator.

Seed 003 (§3, Table 2) optimises BigGAN's continuous class embedding c next to z, starting from
c₀ = W[class guess], and reports that starting from the predicted class does almost as well as
the true one, a random class worse, a Gaussian c₀ far worse, and that "since we optimize the
class vector, we can potentially recover from a wrong initial guess". This script asks, on the
conditional digits GAN that ships with latentx (``latentx.models.load("digits-cgan")``, trained
by ``experiments/train_digits_cgan.py``; BigGAN's weights are not available offline):

* Targets: held-out real digits (the 397 of ``digits_split()`` that neither the GAN nor the
  digit classifier trained on), ``--per-class`` of each class, each upsampled bilinearly to a
  random side of 36–56 px and placed at a random spot of a 64×64 black photo; the box a user
  would draw is the placed square with each edge jittered by up to 10 % of its side. Fixed
  across seeds (target i uses placement seed 1000 + i).
* c₀: the right class W[y], a wrong class W[y'] (y' uniform among the other nine, drawn per
  seed), the mean row of W, and ``auto`` (``latentx.class_search``: the generator screens all
  ten classes against the box — 16 shared latents per class, best masked L1 — and the top
  ``--auto-k`` are each projected; the best final loss is kept: what ``--class auto`` does).
* The class step size lr_c: ~frozen (1e-12: ``project`` needs lr_c > 0; Adam moves c by at most
  lr_c per step, so this is c fixed at c₀), 1e-4 (seed 003 / SPEC C2), and larger ones.
* Transform: off (the whole photo resized to the generator's frame) and on (stage 1 search).
* Method: Adam (seed 003's Table 2 fixes Adam), ``--adam-steps`` steps, ``--restarts`` seeds per
  image (best of seeds reported, as the seed's table), stage 1 ``--t-meta`` × ``--t-grad``.

Measured per target (best seed): whether the optimised c is nearest (Euclidean) the true
class's row of W; whether the digit classifier reads G(z*, c*) (at its native 8×8) as the true
class; the masked losses in the photo frame (L1, L2, LPIPS, total = L1 + 10·LPIPS; SPEC C1 —
LPIPS over a random AlexNet backbone where ImageNet weights are absent, as everywhere offline);
how far c moved. Every number is the mean over targets, then mean ± std over ``--seeds``.

Progress, with every target's record, is saved after every condition to
``experiments/work/class_search_partial.json``; a rerun with the same settings resumes (and one
with more seeds, lr_c values or c₀ kinds reuses what is done). Writes
``experiments/results/class_search.{json,md}`` (per condition and seed: the means over targets)
and ``experiments/figures/class_search.png``.

    OMP_NUM_THREADS=1 python experiments/class_search.py      # the recorded run
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from latentx import models, synthetic
from latentx._atomic import atomic_write_json
from latentx.class_search import class_candidates, mean_embedding, nearest_class, project_best_class
from latentx.digits_cgan import digits_split
from latentx.projection import project

HERE = Path(__file__).resolve().parent
PHOTO = 64
INITS = ("right", "wrong", "mean", "auto")


def make_targets(per_class: int):
    """Photos [N, 3, 64, 64], boxes [N, 4] (pixels), labels [N], the 8×8 digits [N, 1, 8, 8]."""
    images, labels = synthetic.load_digits_tensor()
    _, held = digits_split()
    chosen = torch.cat([held[labels[held] == k][:per_class] for k in range(10)])
    photos, boxes = [], []
    for i, idx in enumerate(chosen.tolist()):
        g = torch.Generator().manual_seed(1000 + i)
        side = int(torch.randint(36, 57, (), generator=g))
        x0 = int(torch.randint(0, PHOTO - side + 1, (), generator=g))
        y0 = int(torch.randint(0, PHOTO - side + 1, (), generator=g))
        digit = F.interpolate(images[idx][None], size=(side, side), mode="bilinear", align_corners=False)[0]
        photo = torch.full((1, PHOTO, PHOTO), -1.0)
        photo[:, y0:y0 + side, x0:x0 + side] = digit
        photos.append(photo.expand(3, -1, -1))
        jitter = (torch.rand(4, generator=g) * 2 - 1) * 0.1 * side
        box = [x0 + jitter[0], y0 + jitter[1], x0 + side + jitter[2], y0 + side + jitter[3]]
        box = [min(max(float(v), 0.0), float(PHOTO)) for v in box]
        boxes.append(box)
    return torch.stack(photos).contiguous(), torch.tensor(boxes), labels[chosen], images[chosen], chosen


def classifier():
    clf = synthetic.digits_classifier()
    clf.load_state_dict(torch.load(HERE / "checkpoints" / "digits_classifier.pt", weights_only=True))
    return clf.eval()


def lr_name(lr_c: float) -> str:
    return "frozen" if lr_c < 1e-9 else f"{lr_c:g}"


def condition(G, clf, photos, boxes, labels, init, lr_c, transform, seed, args) -> dict:
    """One projection run over all targets; per-target records."""
    B = len(labels)
    W = G.class_embedding
    g = torch.Generator().manual_seed(10_000 + seed)
    wrong = (labels + torch.randint(1, 10, (B,), generator=g)) % 10
    kw = dict(boxes=boxes, method="adam", transform=transform, seeds=args.restarts, adam_steps=args.adam_steps,
              lr_c=lr_c, transform_meta_steps=args.t_meta, transform_grad_steps=args.t_grad, seed=seed * 1000,
              progress=False)
    info = None
    if init == "auto":
        cand = class_candidates(G, photos, k=args.auto_k, boxes=boxes, samples=16, seed=seed)
        res, info = project_best_class(G, photos, cand, **kw)
        c0_label = info["chosen"]
        c0 = W[c0_label]
    else:
        if init == "right":
            c0_label = labels
        elif init == "wrong":
            c0_label = wrong
        else:
            c0_label = torch.full((B,), -1)
        c0 = mean_embedding(G)[None].expand(B, -1) if init == "mean" else W[c0_label]
        res = project(G, photos, c0=c0, **kw)
    best = res.best()
    c_best = best["c"]
    nearest_best = nearest_class(G, c_best)
    nearest_all = nearest_class(G, res.c)  # [B, S]
    with torch.no_grad():
        digit8 = G.net.forward_native(best["z"], c_best)
        read = clf(digit8).argmax(1)
    rows = []
    for b in range(B):
        rows.append({
            "label": int(labels[b]), "c0_label": int(c0_label[b]),
            "nearest": int(nearest_best[b]), "nearest_right": bool(nearest_best[b] == labels[b]),
            "nearest_right_all_seeds": float((nearest_all[b] == labels[b]).float().mean()),
            "classifier_right": bool(read[b] == labels[b]),
            "c_moved": float((c_best[b] - c0[b]).norm()),
            **{k: float(v[b]) for k, v in best["losses"].items()},
        })
    out = {"rows": rows, "seconds": res.seconds if info is None else res.seconds, "perceptual": res.perceptual}
    if info is not None:
        out["auto"] = {"candidates": info["candidates"].tolist(), "losses": info["losses"].tolist(),
                       "top1_right": float((info["candidates"][:, 0] == labels).float().mean()),
                       "topk_contains_right": float((info["candidates"] == labels[:, None]).any(1).float().mean())}
    return out


def summarise(runs: dict, args, geometry: dict) -> tuple[dict, str]:
    metrics = ("nearest_right", "nearest_right_all_seeds", "classifier_right", "l1", "l2", "lpips", "total", "c_moved")
    table = {}
    for key, per_seed in runs.items():
        vals = {m: [] for m in metrics}
        for run in per_seed.values():
            for m in metrics:
                vals[m].append(sum(float(r[m]) for r in run["rows"]) / len(run["rows"]))
        stats = {}
        for m, v in vals.items():
            t = torch.tensor(v, dtype=torch.float64)
            stats[m] = {"mean": float(t.mean()), "std": float(t.std()) if len(v) > 1 else 0.0, "n_seeds": len(v)}
        autos = [run["auto"] for run in per_seed.values() if "auto" in run]
        if autos:
            stats["auto_top1_right"] = sum(a["top1_right"] for a in autos) / len(autos)
            stats["auto_topk_contains_right"] = sum(a["topk_contains_right"] for a in autos) / len(autos)
        table[key] = stats

    def fmt(s, m, pct=False, digits=4):
        if pct:
            return f"{100 * s[m]['mean']:.1f} ± {100 * s[m]['std']:.1f}"
        return f"{s[m]['mean']:.{digits}f} ± {s[m]['std']:.{digits}f}"

    lines = []
    for transform in ("off", "on"):
        lines += [f"\n### Transform search {transform}\n",
                  "| c₀ | lr_c | c* nearest the true class (%) | all seeds (%) | classifier reads G(z*, c*) as true (%) "
                  "| masked L1 | masked L2 | masked LPIPS | total | ‖c* − c₀‖ |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for init in INITS:
            for lr_c in args.lr_c:
                key = f"{init}|{lr_name(lr_c)}|{transform}"
                if key not in table:
                    continue
                s = table[key]
                lines.append(f"| {init} | {lr_name(lr_c)} | {fmt(s, 'nearest_right', True)} | "
                             f"{fmt(s, 'nearest_right_all_seeds', True)} | {fmt(s, 'classifier_right', True)} | "
                             f"{fmt(s, 'l1')} | {fmt(s, 'l2')} | {fmt(s, 'lpips')} | {fmt(s, 'total')} | "
                             f"{fmt(s, 'c_moved', digits=3)} |")
    return table, "\n".join(lines)


def plot(path: Path, table: dict, args) -> None:
    """Total masked loss and the share of c* nearest the true class against lr_c, per c₀ and
    transform setting (error bars: std over seeds). "frozen" is drawn at lr_c = 1e-5."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = {"right": "tab:green", "wrong": "tab:red", "mean": "tab:blue", "auto": "tab:purple"}
    for init in INITS:
        for transform, style in (("on", "-"), ("off", "--")):
            pts = [(max(l, 1e-5), table[f"{init}|{lr_name(l)}|{transform}"]) for l in args.lr_c
                   if f"{init}|{lr_name(l)}|{transform}" in table]
            if not pts:
                continue
            x = [p_[0] for p_ in pts]
            for ax, metric, scale in ((axes[0], "total", 1.0), (axes[1], "nearest_right", 100.0)):
                ax.errorbar(x, [scale * p_[1][metric]["mean"] for p_ in pts],
                            yerr=[scale * p_[1][metric]["std"] for p_ in pts], color=colours[init], linestyle=style,
                            marker="o", markersize=3, capsize=2, label=f"c₀ {init}, transform {transform}")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("lr_c (Adam step size of the class embedding; frozen drawn at 1e-5)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("masked loss L1 + 10·LPIPS (photo frame, best of restarts)")
    axes[1].set_ylabel("c* nearest the true class's row of W (%)")
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle("Class search on the conditional digits GAN (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def per_seed_means(runs: dict) -> dict:
    """{condition: {seed: metric means over targets, wall seconds, the auto screening}}."""
    out = {}
    for key, per_seed in runs.items():
        out[key] = {}
        for seed, run in per_seed.items():
            rows = run["rows"]
            means = {m: round(sum(float(r[m]) for r in rows) / len(rows), 6)
                     for m in ("nearest_right", "nearest_right_all_seeds", "classifier_right", "l1", "l2", "lpips",
                               "total", "c_moved")}
            means["wall_seconds"] = round(run["wall_seconds"], 1)
            if "auto" in run:
                means["auto_screen_top1_right"] = run["auto"]["top1_right"]
                means["auto_screen_topk_contains_right"] = run["auto"]["topk_contains_right"]
                means["auto_chosen_right"] = sum(r["c0_label"] == r["label"] for r in rows) / len(rows)
            out[key][seed] = means
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-class", type=int, default=4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--restarts", type=int, default=4, help="project seeds per image (best of them is kept)")
    p.add_argument("--adam-steps", type=int, default=150)
    p.add_argument("--t-meta", type=int, default=6)
    p.add_argument("--t-grad", type=int, default=15)
    p.add_argument("--lr-c", type=float, nargs="+", default=[1e-12, 1e-4, 1e-2, 5e-2, 0.2])
    p.add_argument("--inits", nargs="+", default=list(INITS), choices=INITS)
    p.add_argument("--auto-k", type=int, default=3)
    p.add_argument("--auto-lr-c", type=float, nargs="+", default=[1e-4, 5e-2],
                   help="the lr_c values at which the (k times dearer) auto rows run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(HERE / "results"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    G = models.load("digits-cgan")
    clf = classifier()
    photos, boxes, labels, digits8, indices = make_targets(args.per_class)
    W = G.class_embedding
    dists = torch.cdist(W, W)
    nn_dist = dists.masked_fill(torch.eye(len(W), dtype=torch.bool), math.inf).amin(1)
    geometry = {"row_norm_mean": float(W.norm(dim=1).mean()), "nearest_row_distance_mean": float(nn_dist.mean()),
                "nearest_row_distance_min": float(nn_dist.min()),
                "mean_embedding_to_rows_mean": float((W - W.mean(0)).norm(dim=1).mean()),
                "mean_embedding_nearest_class": int(nearest_class(G, mean_embedding(G)))}
    with torch.no_grad():
        real_read = float((clf(digits8).argmax(1) == labels).float().mean())

    settings = {k: v for k, v in vars(args).items() if k not in ("threads", "out")}
    # What a run's result depends on; runs are keyed by (c₀, lr_c, transform) and seed, so adding
    # seeds, lr_c values or c₀ kinds reuses the runs already done.
    run_settings = {k: v for k, v in settings.items() if k not in ("seeds", "lr_c", "inits", "auto_lr_c")}
    partial = HERE / "work" / "class_search_partial.json"
    runs: dict = {}
    if partial.exists():
        saved = json.loads(partial.read_text())
        if saved.get("run_settings") == run_settings:
            runs = saved["runs"]
            print(f"resuming: {sum(len(v) for v in runs.values())} runs done")
    for seed in args.seeds:
        for transform in (False, True):
            for lr_c in args.lr_c:
                for init in args.inits:
                    if init == "auto" and not any(abs(lr_c - a) <= 1e-12 * max(1.0, a) for a in args.auto_lr_c):
                        continue
                    key = f"{init}|{lr_name(lr_c)}|{'on' if transform else 'off'}"
                    if str(seed) in runs.get(key, {}):
                        continue
                    t0 = time.time()
                    run = condition(G, clf, photos, boxes, labels, init, lr_c, transform, seed, args)
                    run["wall_seconds"] = time.time() - t0
                    runs.setdefault(key, {})[str(seed)] = run
                    right = sum(r["nearest_right"] for r in run["rows"]) / len(run["rows"])
                    print(f"seed {seed} {key}: nearest right {right:.2f}, total "
                          f"{sum(r['total'] for r in run['rows']) / len(run['rows']):.4f} "
                          f"({run['wall_seconds']:.0f} s)", flush=True)
                    partial.parent.mkdir(exist_ok=True)
                    atomic_write_json(partial, {"run_settings": run_settings, "runs": runs})

    wanted = {f"{i}|{lr_name(l)}|{t}" for i in args.inits for l in args.lr_c for t in ("off", "on")}
    runs = {k: {s_: r for s_, r in v.items() if int(s_) in args.seeds} for k, v in runs.items() if k in wanted}
    runs = {k: v for k, v in runs.items() if v}
    table, md_tables = summarise(runs, args, geometry)
    wall = time.time() - started
    perceptual = next(iter(next(iter(runs.values())).values()))["perceptual"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"settings": settings, "targets": {"indices": indices.tolist(), "labels": labels.tolist(),
                                                "boxes": boxes.tolist(), "photo": PHOTO},
              "classifier_on_targets": real_read, "class_table": geometry, "perceptual": perceptual,
              "summary": table, "per_seed": per_seed_means(runs), "wall_seconds_this_invocation": wall,
              "wall_seconds_all_runs": sum(r["wall_seconds"] for v in runs.values() for r in v.values())}
    (out / "class_search.json").write_text(json.dumps(record, indent=1) + "\n")  # per-target rows: the partial file
    n = len(labels)
    md = [f"# Class search on the conditional digits GAN (seed 003 §3, Table 2)\n",
          f"{n} held-out real digits ({args.per_class} per class) in 64×64 photos with jittered boxes; Adam "
          f"{args.adam_steps} steps × {args.restarts} restarts per image (best kept), transform stage "
          f"{args.t_meta} × {args.t_grad}; seeds {args.seeds}; {args.threads} thread(s); "
          f"{record['wall_seconds_all_runs'] / 60:.0f} min of projection in all on a shared 2-core machine. "
          f"Perceptual metric: {perceptual}.\n",
          f"Class table W [10, {W.shape[1]}]: mean row norm {geometry['row_norm_mean']:.2f}, nearest-row "
          f"distance mean {geometry['nearest_row_distance_mean']:.2f} (min {geometry['nearest_row_distance_min']:.2f}); "
          f"the mean embedding lies {geometry['mean_embedding_to_rows_mean']:.2f} from the rows on average and is "
          f"nearest class {geometry['mean_embedding_nearest_class']}. Adam moves c by at most lr_c per coordinate and "
          f"step: at most lr_c·steps·√{W.shape[1]} in norm ({args.adam_steps} steps + {args.t_meta * args.t_grad} in "
          f"stage 1).\n",
          f"The digit classifier reads {100 * real_read:.1f} % of the target digits correctly (at 8×8).\n",
          "Each cell: mean over targets, then mean ± std over seeds. \"nearest\": the row of W closest to the "
          "best seed's optimised c. Losses: photo frame, inside the mask (SPEC C1), best of seeds.",
          md_tables]
    screens = {}
    for key, per_seed in runs.items():
        for seed_, run in per_seed.items():
            if "auto" in run:  # the screening depends on the seed only
                screens[seed_] = run["auto"]
    if screens:
        top1 = torch.tensor([a["top1_right"] for a in screens.values()], dtype=torch.float64)
        topk = torch.tensor([a["topk_contains_right"] for a in screens.values()], dtype=torch.float64)
        sd = lambda t: float(t.std()) if len(t) > 1 else 0.0  # noqa: E731
        md.append(f"\n`auto` = `class_candidates` (generator screening: 16 shared latents per class, best masked L1 "
                  f"against the box-aligned target) then `project_best_class` over the top {args.auto_k}. The screening "
                  f"alone ranks the true class first for {100 * float(top1.mean()):.1f} ± {100 * sd(top1):.1f} % of the "
                  f"targets and within its top {args.auto_k} for {100 * float(topk.mean()):.1f} ± {100 * sd(topk):.1f} % "
                  f"(mean ± std over seeds); the auto rows run at lr_c = {', '.join(lr_name(v) for v in args.auto_lr_c)}.")
        kept = []
        for key, per_seed in per_seed_means(runs).items():
            if key.startswith("auto|"):
                v = torch.tensor([m["auto_chosen_right"] for m in per_seed.values()], dtype=torch.float64)
                _, lr_, tr = key.split("|")
                kept.append(f"{100 * float(v.mean()):.1f} ± {100 * sd(v):.1f} % (lr_c {lr_}, transform {tr})")
        md.append("The candidate with the lowest final loss (what `project_best_class` keeps) is the true class for "
                  + "; ".join(kept) + ".")
    (out / "class_search.md").write_text("\n".join(md) + "\n")
    figures = HERE / "figures"
    figures.mkdir(exist_ok=True)
    plot(figures / "class_search.png", table, args)
    print(f"wrote {out / 'class_search.md'} ({wall:.0f} s)")


if __name__ == "__main__":
    main()

"""Seed 001's Grid protocol (appendix E.1, E.3) next to Ring: vanilla vs AdvLatGAN-qua vs
AdvLatGAN-div, each sampled plainly and through AdvLatGAN-z (the "+" variants; on the vanilla
model that is AdvLatGAN-z itself), over several seeds.

1. Grid: 25 Gaussians of std 0.0025 at (2i, 2j), i, j ∈ {−2..2}; 100K samples (4K per mode,
   as appendix E.1). The paper's MLP G (z ∈ ℝ², 100-200-100-2) and D (2-100-200-100-1).
2. For each seed, every method starts from the same initialisation and sees the same real
   batches: vanilla (Alg. 1 with t_z = 0), AdvLatGAN-qua (Alg. 1), AdvLatGAN-div (Alg. 2),
   and two controls: MSGAN (Alg. 2 with a random partner, no eq. 8 search) and
   AdvLatGAN-div-inv (the partner by eq. 8-inv).
3. The same test latents for every model are sampled as they are and through AdvLatGAN-z
   (:func:`latentx.advlat.sample` with ``steps``): vanilla → AdvLatGAN-z, -qua → -qua+,
   -div → -div+.
4. The metrics of ``experiments/ring.py`` (:func:`latentx.synthetic.mode_metrics`): share of
   samples within t of a mode centre (t = 0.05, 0.1, 0.2), modes with at least one such
   sample (of 25), KL of their mode histogram to uniform.

The paper trains 50 epochs (100K iterations of batch 50); the default here is 10,000
iterations (5 epochs) so that 5 methods × 3 seeds fit a CPU. Run from the repository root:

    OMP_NUM_THREADS=1 python experiments/grid.py

Each (method, seed) is saved to experiments/work/grid/ when it finishes (atomically); a rerun
with the same settings skips the finished ones. Writes experiments/results/grid.{json,md} and
experiments/figures/grid_scatter.png.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from latentx import advlat, synthetic
from latentx._atomic import atomic_torch_save

HERE = Path(__file__).resolve().parent
THRESHOLDS = (0.05, 0.1, 0.2)  # as experiments/ring.py: high quality = within t of a mode centre
# name → (train_step settings from the command line, the "+" name); "+" = sampled through AdvLatGAN-z.
METHODS = {
    "vanilla": "AdvLatGAN-z",
    "MSGAN": "MSGAN+",
    "AdvLatGAN-qua": "AdvLatGAN-qua+",
    "AdvLatGAN-div": "AdvLatGAN-div+",
    "AdvLatGAN-div-inv": "AdvLatGAN-div-inv+",
}


def step_settings(name: str, args: argparse.Namespace) -> dict:
    """The :func:`latentx.advlat.train_step` settings of a method."""
    div = dict(method="div", step_size=args.div_eps, radius=args.div_radius, lambda_ms=args.lambda_ms)
    return {
        "vanilla": dict(method="qua", latent_steps=0),
        "MSGAN": dict(method="div", latent_steps=0, lambda_ms=args.lambda_ms),
        "AdvLatGAN-qua": dict(method="qua", latent_steps=args.qua_steps, step_size=args.qua_eps),
        "AdvLatGAN-div": dict(div, latent_steps=args.div_steps),
        "AdvLatGAN-div-inv": dict(div, latent_steps=args.div_steps, inverse=True),
    }[name]


def measure(x: torch.Tensor) -> dict:
    centers = synthetic.grid_centers()
    row = {}
    for t in THRESHOLDS:
        m = synthetic.mode_metrics(x, centers, t)
        row[f"hq@{t}"], row[f"modes@{t}"], row[f"kl@{t}"] = m["high_quality"], m["modes"], m["kl"]
    return row


def run_one(name: str, seed: int, data: torch.Tensor, z_test: torch.Tensor, args, settings: dict) -> dict:
    """Train one (method, seed), sample plainly and through AdvLatGAN-z; cached in work/grid/."""
    path = HERE / "work" / "grid" / f"{name}-seed{seed}.pt"
    if path.exists():
        held = torch.load(path, weights_only=True)
        if held["settings"] == json.dumps(settings, sort_keys=True):
            return held
    torch.manual_seed(seed)  # the same initialisation for every method of a seed
    G, D = synthetic.ring_generator(), synthetic.ring_discriminator()
    g = torch.Generator().manual_seed(seed + 100)  # the same real batches too
    real = lambda m: data[torch.randint(len(data), (m,), generator=g)]  # noqa: E731
    t0 = time.time()
    history = advlat.train(G, D, real, iterations=args.iterations, z_dim=2, batch_size=50, lr=args.lr,
                           loss="nonsaturating", progress=False, **step_settings(name, args))
    train_seconds = time.time() - t0
    t0 = time.time()
    plain = advlat.sample(G, D, z_test, progress=False)
    plus = advlat.sample(G, D, z_test, steps=args.steps, step_size=args.eps, radius=args.radius,
                         batch_size=args.latents, progress=False)
    refine_seconds = time.time() - t0
    result = {
        "settings": json.dumps(settings, sort_keys=True), "method": name, "seed": seed,
        "plain": measure(plain.x), "plus": measure(plus.x),
        "mean_logit": [plus.scores[0].item(), plus.scores[-1].item()],
        "ms_ratio_last100": (sum(h["ms_ratio"] for h in history[-100:]) / len(history[-100:])
                             if "ms_ratio" in history[0] else None),
        "train_seconds": train_seconds, "refine_seconds": refine_seconds,
        "x_plain": plain.x[:args.figure_points].clone(), "x_plus": plus.x[:args.figure_points].clone(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(result, path)  # a killed run leaves whole results only
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=10_000, help="training iterations, batch 50 (paper: 100,000)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate, G and D (as ring.py)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per method")
    p.add_argument("--latents", type=int, default=5000, help="test latents per model (paper: 20,000)")
    p.add_argument("--steps", type=int, default=500, help="AdvLatGAN-z steps of the '+' sampling (paper: 8,000 on Ring)")
    p.add_argument("--eps", type=float, default=0.003, help="AdvLatGAN-z step size (paper: 0.003)")
    p.add_argument("--radius", type=float, default=0.5, help="AdvLatGAN-z l-inf radius (paper: not stated; ring.py: 0.5)")
    p.add_argument("--qua-steps", type=int, default=10, help="AdvLatGAN-qua latent steps t_z per D update (as ring.py)")
    p.add_argument("--qua-eps", type=float, default=0.01, help="AdvLatGAN-qua step size (as ring.py)")
    p.add_argument("--div-steps", type=int, default=10, help="AdvLatGAN-div eq. 8 steps per G update")
    p.add_argument("--div-eps", type=float, default=0.01, help="AdvLatGAN-div eq. 8 step size")
    p.add_argument("--div-radius", type=float, default=0.1, help="AdvLatGAN-div eq. 8 l-inf radius")
    p.add_argument("--lambda-ms", type=float, default=1.0, help="mode-seeking weight (MSGAN's default 1)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ", ".join(METHODS))
    p.add_argument("--figure-points", type=int, default=2500, help="points per scatter panel")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the dev machine's cores are shared)")
    args = p.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"--methods: unknown {unknown}; choose from {list(METHODS)}")
    torch.set_num_threads(args.threads)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "figures").mkdir(exist_ok=True)
    started = time.time()
    data = synthetic.grid(100_000, generator=torch.Generator().manual_seed(0))
    z_test = torch.randn(args.latents, 2, generator=torch.Generator().manual_seed(1))

    runs = []
    for seed in range(10, 10 + args.seeds):
        for name in methods:
            settings = {k: v for k, v in vars(args).items() if k not in ("seeds", "methods", "threads")}
            settings["train"] = step_settings(name, args)
            r = run_one(name, seed, data, z_test, args, settings)
            runs.append(r)
            print(f"{name:18s} seed {seed}: hq@0.1 {r['plain']['hq@0.1']:.3f} -> {r['plus']['hq@0.1']:.3f}, "
                  f"modes {r['plain']['modes@0.1']} -> {r['plus']['modes@0.1']}, "
                  f"KL {r['plain']['kl@0.1']:.3f} -> {r['plus']['kl@0.1']:.3f} "
                  f"({r['train_seconds']:.0f} s + {r['refine_seconds']:.0f} s)", flush=True)

    rows = []
    for r in runs:
        rows.append({"method": r["method"], "seed": r["seed"], **r["plain"], "mean D logit": r["mean_logit"][0]})
        rows.append({"method": METHODS[r["method"]], "seed": r["seed"], **r["plus"], "mean D logit": r["mean_logit"][1]})
    order = [n for m in methods for n in (m, METHODS[m])]
    summary = summarise(rows, order)
    _scatter(HERE / "figures" / "grid_scatter.png", data[:args.figure_points],
             {r["method"]: r for r in runs if r["seed"] == 10}, methods, args)
    out = {"settings": vars(args) | {"data": "grid, 25 modes at (2i, 2j), std 0.0025, 100K samples",
                                     "batch_size": 50, "loss": "nonsaturating", "optimizer": "Adam(0.5, 0.999)",
                                     "thresholds": THRESHOLDS, "seeds_used": list(range(10, 10 + args.seeds)),
                                     "train": {m: step_settings(m, args) for m in methods}},
           "summary": summary, "runs": rows,
           "seconds": {f"{r['method']}-seed{r['seed']}": [r["train_seconds"], r["refine_seconds"]] for r in runs},
           "wall_seconds_this_invocation": time.time() - started}
    (HERE / "results" / "grid.json").write_text(json.dumps(out, indent=2) + "\n")
    md = _markdown(summary, rows, order, args)
    (HERE / "results" / "grid.md").write_text(md)
    print(md)
    print(f"{time.time() - started:.0f} s")


COLUMNS = ["hq@0.05", "hq@0.1", "hq@0.2", "modes@0.1", "kl@0.1", "mean D logit"]


def summarise(rows: list[dict], order: list[str]) -> dict:
    """Mean and sample standard deviation over seeds of every column, per method."""
    summary = {}
    for name in order:
        mine = [r for r in rows if r["method"] == name]
        summary[name] = {}
        for c in COLUMNS:
            values = [float(r[c]) for r in mine if not math.isnan(float(r[c]))]
            mean = sum(values) / len(values) if values else float("nan")
            std = (math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
                   if len(values) > 1 else float("nan"))
            summary[name][c] = [mean, std, len(values)]
    return summary


def _markdown(summary: dict, rows: list[dict], order: list[str], args) -> str:
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = [f"Grid (25 modes, std 0.0025): {args.iterations} iterations of batch 50, Adam lr {args.lr}; "
             f"{args.latents} test latents; '+' = AdvLatGAN-z with {args.steps} steps of ε = {args.eps} in an "
             f"ℓ∞ ball of {args.radius}. -qua: t_z = {args.qua_steps}, ε = {args.qua_eps}, no ball; -div: "
             f"{args.div_steps} eq. 8 steps of ε = {args.div_eps} in a ball of {args.div_radius}, λ_ms = "
             f"{args.lambda_ms}. hq@t = share within t of a mode centre; modes@0.1 of 25; kl@0.1 in nats. "
             f"Mean ± sample std over {args.seeds} seeds (10..{9 + args.seeds}).", "",
             "| method | " + " | ".join(COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 1)]
    for name in order:
        cells = []
        for c in COLUMNS:
            mean, std, n = summary[name][c]
            cells.append(f"{mean:.3f} ± {std:.3f}" + ("" if n == args.seeds else f" (n={n})"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Per seed:", "", "| method | seed | " + " | ".join(COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 2)]
    for name in order:
        lines += [f"| {r['method']} | {r['seed']} | " + " | ".join(fmt(r[c]) for c in COLUMNS) + " |"
                  for r in rows if r["method"] == name]
    return "\n".join(lines) + "\n"


def _scatter(path, data, first_seed: dict, methods: list[str], args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = len(methods) + 1
    fig, axes = plt.subplots(2, cols, figsize=(2.9 * cols, 6.2))
    centers = synthetic.grid_centers()
    panels = [(axes[0, 0], "real grid data", data)]
    axes[1, 0].axis("off")
    axes[1, 0].text(0.0, 0.5, f"top: G(z), {args.iterations} iterations\nbottom: the same z through\n"
                    f"AdvLatGAN-z ({args.steps} steps,\nε = {args.eps}, r = {args.radius})\nseed 10, "
                    f"{len(first_seed[methods[0]]['x_plain'])} points each\nred ×: mode centres", fontsize=8,
                    va="center")
    for j, name in enumerate(methods, start=1):
        panels.append((axes[0, j], name, first_seed[name]["x_plain"]))
        panels.append((axes[1, j], METHODS[name], first_seed[name]["x_plus"]))
    for ax, title, x in panels:
        ax.scatter(centers[:, 0], centers[:, 1], s=10, c="red", marker="x", linewidths=0.7)
        ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.4)
        ax.set_xlim(-5.5, 5.5)
        ax.set_ylim(-5.5, 5.5)
        ax.set_aspect("equal")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("x₁")
        ax.set_ylabel("x₂")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()

"""The direction of seed 001's Fig. 10 / Fig. 11 on the Ring protocol (appendix E).

1. Train the paper's MLP GAN briefly on Ring (8 Gaussians, std 0.001, radius 2): 2,000
   iterations of batch 50 = one epoch of the 100K-sample set (appendix E.2).
2. AdvLatGAN-z with G and D frozen: ε = 0.003, many I-FGSM steps, ℓ∞ ball around z₀ —
   share of high-quality samples, modes covered and mode-histogram KL along the way.
3. Vanilla vs AdvLatGAN-qua training for the same number of iterations from the same
   initialisation, over several seeds.

Run from the repository root (about 5 minutes on 2 shared CPU cores with the defaults):

    python experiments/ring.py

Writes experiments/results/ring.{json,md} and experiments/figures/ring_scatter.png. The
paper refines 20,000 latents for 8,000 steps; the defaults here (4,000 latents, 2,000 steps)
keep the run short — pass --latents/--steps to go further.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from latentx import advlat, synthetic

HERE = Path(__file__).resolve().parent
THRESHOLDS = (0.05, 0.1, 0.2)  # high quality: within this distance of a mode centre (data units)


def train_ring(seed: int, iterations: int, lr: float, data: torch.Tensor, **step) -> tuple:
    torch.manual_seed(seed)
    G, D = synthetic.ring_generator(), synthetic.ring_discriminator()
    g = torch.Generator().manual_seed(seed + 100)
    real = lambda m: data[torch.randint(len(data), (m,), generator=g)]  # noqa: E731
    advlat.train(G, D, real, iterations=iterations, z_dim=2, batch_size=50, lr=lr, loss="nonsaturating",
                 progress=False, **step)
    return G.eval(), D.eval()


def measure(x: torch.Tensor) -> dict:
    centers = synthetic.ring_centers()
    row = {}
    for t in THRESHOLDS:
        m = synthetic.mode_metrics(x, centers, t)
        row[f"hq@{t}"], row[f"modes@{t}"], row[f"kl@{t}"] = m["high_quality"], m["modes"], m["kl"]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=2000, help="training iterations (batch 50)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate, G and D")
    p.add_argument("--latents", type=int, default=4000, help="latents refined (paper: 20,000)")
    p.add_argument("--steps", type=int, default=2000, help="AdvLatGAN-z steps (paper: 8,000)")
    p.add_argument("--eps", type=float, default=0.003, help="AdvLatGAN-z step size (paper: 0.003)")
    p.add_argument("--radius", type=float, default=0.5, help="AdvLatGAN-z l-inf radius (paper: not stated)")
    p.add_argument("--qua-steps", type=int, default=10, help="AdvLatGAN-qua latent steps t_z per D update")
    p.add_argument("--qua-eps", type=float, default=0.01, help="AdvLatGAN-qua step size")
    p.add_argument("--seeds", type=int, default=3, help="seeds for vanilla vs AdvLatGAN-qua")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the dev machine's cores are shared)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "figures").mkdir(exist_ok=True)
    started = time.time()
    data = synthetic.ring(100_000, generator=torch.Generator().manual_seed(0))

    # 1-2: a briefly trained GAN, then AdvLatGAN-z with snapshots along the steps.
    G, D = train_ring(0, args.iterations, args.lr, data)
    z0 = torch.randn(args.latents, 2, generator=torch.Generator().manual_seed(1))
    z = z0.clone()
    marks = sorted({0, 10, 30, 100, 300, 1000, args.steps} & set(range(args.steps + 1)))
    trajectory, mean_logit = [], []

    def snapshot(i: int, values: torch.Tensor) -> None:
        if i in marks:
            with torch.no_grad():
                trajectory.append({"step": i, "mean D logit": D(G(z)).mean().item(), **measure(G(z))})

    t0 = time.time()
    with advlat.frozen([G, D], eval_mode=True):
        objective = lambda zg: advlat.score_loss("log1m")(D(G(zg)))  # noqa: E731
        advlat.ifgsm(objective, z, steps=args.steps, step_size=args.eps, anchor=z0, radius=args.radius,
                     on_step=snapshot)
        with torch.no_grad():
            trajectory.append({"step": args.steps, "mean D logit": D(G(z)).mean().item(), **measure(G(z))})
    refine_seconds = time.time() - t0
    # The same refinement through the public entry point gives the same latents.
    check = advlat.refine(G, D, z0[:200], steps=50, step_size=args.eps, radius=args.radius, progress=False).z
    z_check = z0[:200].clone()
    with advlat.frozen([G, D], eval_mode=True):
        advlat.ifgsm(lambda zg: advlat.score_loss("log1m")(D(G(zg))), z_check, steps=50, step_size=args.eps,
                     anchor=z0[:200], radius=args.radius)
    assert torch.equal(check, z_check)
    with torch.no_grad():
        before, after = G(z0), G(z)

    # 3: vanilla vs AdvLatGAN-qua at equal iterations, same seeds.
    training = []
    trained = {}
    for seed in range(args.seeds):
        for name, step in (("vanilla", dict(latent_steps=0)),
                           ("AdvLatGAN-qua", dict(method="qua", latent_steps=args.qua_steps, step_size=args.qua_eps))):
            t1 = time.time()
            Gs, _ = train_ring(10 + seed, args.iterations, args.lr, data, **step)
            with torch.no_grad():
                xs = Gs(torch.randn(args.latents, 2, generator=torch.Generator().manual_seed(2)))
            training.append({"method": name, "seed": 10 + seed, **measure(xs), "seconds": time.time() - t1})
            trained.setdefault(name, xs)

    _scatter(HERE / "figures" / "ring_scatter.png", data[:4000], before, after, trained, args)
    out = {"settings": vars(args) | {"data": "ring, 8 modes, radius 2, std 0.001, 100K samples",
                                     "batch_size": 50, "loss": "nonsaturating", "optimizer": "Adam(0.5, 0.999)",
                                     "thresholds": THRESHOLDS},
           "advlatgan_z": trajectory, "advlatgan_z_seconds": refine_seconds, "training": training,
           "wall_seconds": time.time() - started}
    (HERE / "results" / "ring.json").write_text(json.dumps(out, indent=2) + "\n")
    md = _markdown(trajectory, training, args)
    (HERE / "results" / "ring.md").write_text(md)
    print(md)
    print(f"{time.time() - started:.0f} s")


def _markdown(trajectory, training, args) -> str:
    cols = ["hq@0.05", "hq@0.1", "hq@0.2", "modes@0.1", "kl@0.1"]
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = [f"AdvLatGAN-z on the briefly trained ring GAN ({args.iterations} iterations): {args.latents} latents, "
             f"ε = {args.eps}, ℓ∞ radius {args.radius}. hq@t = share of samples within t of a mode centre; "
             "modes@0.1 = modes with at least one such sample (of 8); kl@0.1 = KL of their mode histogram to "
             "uniform (nats).", "", "| step | mean D logit | " + " | ".join(cols) + " |",
             "|" + "---|" * (len(cols) + 2)]
    lines += [f"| {r['step']} | {r['mean D logit']:.3f} | " + " | ".join(fmt(r[c]) for c in cols) + " |"
              for r in trajectory]
    lines += ["", f"Vanilla vs AdvLatGAN-qua (t_z = {args.qua_steps}, ε = {args.qua_eps}, no ball), "
              f"{args.iterations} iterations each, same initialisation per seed:", "",
              "| method | seed | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 2)]
    lines += [f"| {r['method']} | {r['seed']} | " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in training]
    for name in ("vanilla", "AdvLatGAN-qua"):
        rows = [r for r in training if r["method"] == name]
        lines.append(f"| {name} | mean | " + " | ".join(fmt(sum(r[c] for r in rows) / len(rows)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _scatter(path, data, before, after, trained, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("real ring data", data), (f"G(z), {args.iterations} iterations", before),
              (f"AdvLatGAN-z: {args.steps} steps, ε={args.eps}", after),
              ("vanilla (seed 10)", trained["vanilla"]), (f"AdvLatGAN-qua t_z={args.qua_steps} (seed 10)", trained["AdvLatGAN-qua"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.3))
    centers = synthetic.ring_centers()
    for ax, (title, x) in zip(axes, panels):
        ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.4)
        ax.scatter(centers[:, 0], centers[:, 1], s=12, c="red", marker="x")
        ax.set_xlim(-3, 3)
        ax.set_ylim(-3, 3)
        ax.set_aspect("equal")
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()

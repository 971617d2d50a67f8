"""AdvLatGAN-z on real data: a DCGAN on sklearn's 8×8 digits, FID in a digit classifier's
feature space (+ density/coverage), before and after refining the latents (seed 001 §4.2).

Run from the repository root (a few minutes on 2 CPU cores):

    python experiments/digits.py

Writes experiments/checkpoints/digits_{generator,discriminator,classifier}.pt (state_dicts,
loadable with torch.load(weights_only=True) into latentx.synthetic.digits_*()),
experiments/results/digits.{json,md} and experiments/figures/digits_samples.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from latentx import advlat, metrics, synthetic
from latentx._atomic import atomic_torch_save

HERE = Path(__file__).resolve().parent


def train_classifier(images, labels, epochs: int, seed: int):
    """The feature extractor: trained on 1,400 digits, accuracy reported on the other 397."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=g)
    train, test = order[:1400], order[1400:]
    torch.manual_seed(seed)
    clf = synthetic.digits_classifier()
    opt = torch.optim.Adam(clf.parameters(), lr=1e-3)
    for _ in range(epochs):
        for idx in train[torch.randperm(len(train), generator=g)].split(64):
            # Small shifts make the features describe digits, not exact pixel positions.
            x = torch.roll(images[idx], shifts=tuple(torch.randint(-1, 2, (2,), generator=g).tolist()), dims=(2, 3))
            loss = F.cross_entropy(clf(x), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    clf.eval()
    with torch.no_grad():
        accuracy = (clf(images[test]).argmax(1) == labels[test]).float().mean().item()
    return clf, accuracy


def train_gan(images, iterations: int, seed: int):
    torch.manual_seed(seed)
    G, D = synthetic.digits_generator(), synthetic.digits_discriminator()
    g = torch.Generator().manual_seed(seed + 1)
    real = lambda m: images[torch.randint(len(images), (m,), generator=g)]  # noqa: E731
    advlat.train(G, D, real, iterations=iterations, z_dim=synthetic.DIGITS_Z_DIM, batch_size=64, lr=2e-4,
                 loss="nonsaturating", latent_steps=0)
    return G.eval(), D.eval()


def evaluate(G, clf, z, real_features) -> dict:
    with torch.no_grad():
        x = G(z)
        feats = clf.features(x)
        probs = clf(x).softmax(1)
    row = {"FID": metrics.fid(real_features, feats), **metrics.density_coverage(real_features, feats, k=5),
           "classifier confidence": probs.max(1).values.mean().item()}
    counts = torch.bincount(probs.argmax(1), minlength=10).double()
    p = counts / counts.sum()
    row["class KL to uniform"] = (p[p > 0] * (p[p > 0] * 10).log()).sum().item()
    return row


def save_grid(path: Path, rows: list[tuple[str, torch.Tensor]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 1.3 * len(rows)))
    for ax, (title, x) in zip(axes, rows):
        # 24 samples side by side, a 1-pixel gap between them.
        padded = F.pad(x[:24, 0], (0, 1), value=1.0)
        ax.imshow(torch.cat(list(padded), dim=1).numpy(), cmap="gray", vmin=-1, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=3000, help="GAN generator iterations")
    p.add_argument("--classifier-epochs", type=int, default=30)
    p.add_argument("--samples", type=int, default=2000, help="generated samples per evaluation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the dev machine's cores are shared)")
    p.add_argument("--retrain", action="store_true", help="retrain even when the checkpoints exist")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ckpt_dir, results, figures = HERE / "checkpoints", HERE / "results", HERE / "figures"
    for d in (ckpt_dir, results, figures):
        d.mkdir(exist_ok=True)
    images, labels = synthetic.load_digits_tensor()
    started = time.time()

    paths = {k: ckpt_dir / f"digits_{k}.pt" for k in ("generator", "discriminator", "classifier")}
    if args.retrain or not all(p.exists() for p in paths.values()):
        clf, accuracy = train_classifier(images, labels, args.classifier_epochs, args.seed)
        t0 = time.time()
        G, D = train_gan(images, args.iterations, args.seed)
        gan_seconds = time.time() - t0
        for name, model in (("generator", G), ("discriminator", D), ("classifier", clf)):
            atomic_torch_save(model.state_dict(), paths[name])  # all exist => all whole
        (ckpt_dir / "digits_training.json").write_text(json.dumps(
            {"classifier_test_accuracy": accuracy, "gan_iterations": args.iterations, "gan_train_seconds": gan_seconds,
             "seed": args.seed, "threads": args.threads}, indent=2) + "\n")
    G, D, clf = synthetic.digits_generator(), synthetic.digits_discriminator(), synthetic.digits_classifier()
    for name, model in (("generator", G), ("discriminator", D), ("classifier", clf)):
        model.load_state_dict(torch.load(paths[name], weights_only=True))
        model.eval()
    training = json.loads((ckpt_dir / "digits_training.json").read_text())

    real_features = metrics.extract_features(clf.features, images)
    z0 = torch.randn(args.samples, synthetic.DIGITS_Z_DIM, generator=torch.Generator().manual_seed(args.seed + 2))
    # Reference points: real digits against themselves (a second half) give the floor.
    half = torch.randperm(len(images), generator=torch.Generator().manual_seed(3))
    floor = metrics.fid(real_features[half[:898]], real_features[half[898:]])

    settings = [  # (steps, ε, radius); the paper's MNIST run: 30 steps of ε = 0.03. Every setting run is listed.
        (10, 0.01, 0.1), (30, 0.003, None), (30, 0.01, None), (30, 0.03, 0.3), (30, 0.03, None), (100, 0.01, 0.5),
    ]
    rows = [{"method": "original G(z)", "steps": 0, "ε": "", "radius": "", "mean D logit": "",
             **evaluate(G, clf, z0, real_features)}]
    samples = [("original G(z)", G(z0).detach())]
    for steps, eps, radius in settings:
        t0 = time.time()
        z, scores = advlat.refine(G, D, z0, steps=steps, step_size=eps, radius=radius, batch_size=1000)
        rows.append({"method": "AdvLatGAN-z", "steps": steps, "ε": eps, "radius": radius if radius else "none",
                     "mean D logit": f"{scores[0]:.2f} -> {scores[-1]:.2f}", **evaluate(G, clf, z, real_features),
                     "seconds": time.time() - t0})
        samples.append((f"AdvLatGAN-z, {steps} steps, eps={eps}, r={radius}", G(z).detach()))
    samples.append(("real digits", images[:24]))
    save_grid(figures / "digits_samples.png", samples)

    out = {"settings": {**vars(args), "samples": args.samples, "fid_features": "digits classifier penultimate layer (64-d)",
                        "real_set": "all 1,797 load_digits() images", "density_coverage_k": 5},
           "training": training, "real_vs_real_fid_floor": floor, "rows": rows,
           "wall_seconds": time.time() - started}
    (results / "digits.json").write_text(json.dumps(out, indent=2) + "\n")
    cols = ["method", "steps", "ε", "radius", "FID", "density", "coverage", "classifier confidence",
            "class KL to uniform", "mean D logit"]
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    (results / "digits.md").write_text(
        f"FID (lower is better) in the digit classifier's feature space (test accuracy "
        f"{training['classifier_test_accuracy']:.3f}); {args.samples} generated vs 1,797 real digits; "
        f"real-vs-real floor (two halves) {floor:.3f}.\n\n" + "\n".join(md) + "\n")
    print("\n".join(md))
    print(f"real-vs-real FID floor {floor:.3f}; classifier accuracy {training['classifier_test_accuracy']:.3f}; "
          f"{time.time() - started:.0f} s")


if __name__ == "__main__":
    main()

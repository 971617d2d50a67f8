"""Train the conditional digits GAN that ships as ``latentx/data/digits_cgan.pt``
(``latentx.models.load("digits-cgan")``; the model is described in ``latentx/digits_cgan.py``).

Data: the 1,400 training digits of ``latentx.digits_cgan.digits_split()`` (sklearn's
``load_digits()``, 8×8, in [−1, 1]); the other 397 stay unseen for the class-search experiment.
G and D both work at 8×8; G's fixed output layer upsamples to 32×32 RGB for projection.

Training: hinge loss (SPEC C1, ``latentx.losses``), Adam lr 2e-4, betas (0.5, 0.999), batch 64,
one D step per G step, labels drawn uniformly for the fakes; the real batch's labels for D.
Progress (G, D, both optimisers, the RNG) is saved atomically every 500 iterations to
``experiments/work/digits_cgan_partial.pt``; a rerun with the same settings resumes from it.

Check: the project's digit classifier (``experiments/checkpoints/digits_classifier.pt``,
trained by ``experiments/digits.py`` on the same 1,400 digits) labels generated samples
(z ~ N(0, I) clamped to |z|∞ ≤ 2, 200 per class, at the native 8×8); the class accuracy is
written next to the checkpoint's metadata, to ``experiments/results/digits_cgan.{json,md}``,
and a sample grid to ``experiments/figures/digits_cgan_samples.png``.

    OMP_NUM_THREADS=1 python experiments/train_digits_cgan.py    # ~5-8 min on one shared core
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from latentx import losses, synthetic
from latentx.digits_cgan import (DIGITS_CGAN_CHECKPOINT, DIGITS_CGAN_Z_DIM, DigitsCGANDiscriminator,
                                 DigitsCGANGenerator, digits_split)
from latentx.edit import save_atomic

HERE = Path(__file__).resolve().parent


def classifier():
    clf = synthetic.digits_classifier()
    clf.load_state_dict(torch.load(HERE / "checkpoints" / "digits_classifier.pt", weights_only=True))
    return clf.eval()


@torch.no_grad()
def sample_accuracy(G: DigitsCGANGenerator, clf, per_class: int, seed: int) -> dict:
    """Share of samples G(z, W[y]) that the digit classifier labels y, per class and overall."""
    g = torch.Generator().manual_seed(seed)
    G.eval()
    labels = torch.arange(10).repeat_interleave(per_class)
    z = torch.randn(len(labels), DIGITS_CGAN_Z_DIM, generator=g).clamp(-2, 2)
    x = G.forward_native(z, G.embedding(labels))
    pred = clf(x).argmax(1)
    per = [(pred[labels == k] == k).float().mean().item() for k in range(10)]
    return {"accuracy": (pred == labels).float().mean().item(), "per_class": per, "samples_per_class": per_class,
            "z": "N(0, I) clamped to [-2, 2]", "seed": seed}


def save_grid(path: Path, G: DigitsCGANGenerator, real, real_labels, seed: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = torch.Generator().manual_seed(seed)
    cols = 12
    with torch.no_grad():
        z = torch.randn(10 * cols, DIGITS_CGAN_Z_DIM, generator=g).clamp(-2, 2)
        fake = G(z, G.embedding(torch.arange(10).repeat_interleave(cols)))[:, 0]
    fig, axes = plt.subplots(10, 2, figsize=(9, 8.5), gridspec_kw={"width_ratios": [cols, 4]})
    for k in range(10):
        row = F.pad(fake[k * cols:(k + 1) * cols], (0, 2), value=1.0)
        axes[k, 0].imshow(torch.cat(list(row), 1).numpy(), cmap="gray", vmin=-1, vmax=1)
        reals = real[real_labels == k][:4]
        up = F.interpolate(reals, size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
        axes[k, 1].imshow(torch.cat(list(F.pad(up, (0, 2), value=1.0)), 1).numpy(), cmap="gray", vmin=-1, vmax=1)
        axes[k, 0].set_ylabel(f"class {k}", rotation=0, labelpad=25)
        for ax in axes[k]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_title("G(z, W[class]) samples (32×32 output)")
    axes[0, 1].set_title("real digits")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=DIGITS_CGAN_CHECKPOINT, help="where the checkpoint goes")
    p.add_argument("--fresh", action="store_true", help="ignore a saved partial run")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    images, labels = synthetic.load_digits_tensor()
    train_idx, _ = digits_split()
    x_train, y_train = images[train_idx], labels[train_idx]

    torch.manual_seed(args.seed)
    G, D = DigitsCGANGenerator(), DigitsCGANDiscriminator()
    opt_g = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=args.lr, betas=(0.5, 0.999))
    gen = torch.Generator().manual_seed(args.seed + 1)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "fresh", "threads")}
    partial = HERE / "work" / "digits_cgan_partial.pt"
    start, seconds = 0, 0.0
    if partial.exists() and not args.fresh:
        state = torch.load(partial, weights_only=True)
        if state["settings"] == settings:
            G.load_state_dict(state["G"])
            D.load_state_dict(state["D"])
            opt_g.load_state_dict(state["opt_g"])
            opt_d.load_state_dict(state["opt_d"])
            gen.set_state(state["rng"])
            torch.set_rng_state(state["torch_rng"])
            start, seconds = state["iteration"], state["seconds"]
            print(f"resuming at iteration {start}")
    t0 = time.time()
    G.train()
    D.train()
    log = []
    for it in range(start, args.iterations):
        idx = torch.randint(len(x_train), (args.batch_size,), generator=gen)
        real, y_real = x_train[idx], y_train[idx]
        y_fake = torch.randint(10, (args.batch_size,), generator=gen)
        z = torch.randn(args.batch_size, DIGITS_CGAN_Z_DIM, generator=gen)
        with torch.no_grad():
            fake = G.forward_native(z, G.embedding(y_fake))
        loss_d = losses.discriminator_loss(D(real, y_real), D(fake, y_fake), "hinge")
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()

        z = torch.randn(args.batch_size, DIGITS_CGAN_Z_DIM, generator=gen)
        loss_g = losses.generator_loss(D(G.forward_native(z, G.embedding(y_fake)), y_fake), "hinge")
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        if (it + 1) % 500 == 0 or it + 1 == args.iterations:
            log.append({"iteration": it + 1, "loss_d": loss_d.item(), "loss_g": loss_g.item()})
            print(f"iteration {it + 1}: loss_d {loss_d.item():.3f} loss_g {loss_g.item():.3f}", flush=True)
            partial.parent.mkdir(exist_ok=True)
            save_atomic({"settings": settings, "iteration": it + 1, "seconds": seconds + time.time() - t0,
                         "G": G.state_dict(), "D": D.state_dict(), "opt_g": opt_g.state_dict(),
                         "opt_d": opt_d.state_dict(), "rng": gen.get_state(),
                         "torch_rng": torch.get_rng_state()}, partial)
    seconds += time.time() - t0
    G.eval()
    clf = classifier()
    check = sample_accuracy(G, clf, per_class=200, seed=1234)
    with torch.no_grad():
        _, held = digits_split()
        real_acc = (clf(images[held]).argmax(1) == labels[held]).float().mean().item()
    meta = {"settings": settings, "train_seconds_wall": seconds, "threads": args.threads,
            "train_digits": len(train_idx), "sample_accuracy": check["accuracy"],
            "classifier_accuracy_on_held_out_real": real_acc}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_atomic({"generator": G.state_dict(), "meta": json.dumps(meta)}, out)
    print(f"saved {out} ({os.path.getsize(out) / 1024:.0f} KiB); sample class accuracy {check['accuracy']:.3f}, "
          f"classifier on held-out real digits {real_acc:.3f}")

    results, figures = HERE / "results", HERE / "figures"
    results.mkdir(exist_ok=True)
    figures.mkdir(exist_ok=True)
    record = {**meta, "check": check, "log": log, "checkpoint": str(out.relative_to(HERE.parent) if out.is_relative_to(HERE.parent) else out),
              "checkpoint_bytes": os.path.getsize(out)}
    (results / "digits_cgan.json").write_text(json.dumps(record, indent=2) + "\n")
    rows = "\n".join(f"| {k} | {a:.3f} |" for k, a in enumerate(check["per_class"]))
    (results / "digits_cgan.md").write_text(
        f"Conditional digits GAN (`latentx.models.load(\"digits-cgan\")`), {args.iterations} iterations, batch "
        f"{args.batch_size}, seed {args.seed}, {args.threads} thread(s), {seconds:.0f} s wall on a shared machine.\n\n"
        f"Class accuracy of its samples by the project's digit classifier ({check['samples_per_class']} samples "
        f"per class, z ~ N(0, I) clamped to |z| <= 2, judged at 8×8): **{check['accuracy']:.3f}** "
        f"(the classifier on the 397 held-out real digits: {real_acc:.3f}).\n\n| class | accuracy |\n|---|---|\n"
        f"{rows}\n")
    save_grid(figures / "digits_cgan_samples.png", G, x_train, y_train, seed=7)


if __name__ == "__main__":
    main()

"""``latentx train-encoder``: train E(x) → z on a generator's samples (seed 002's learning-based
inversion), for ``latentx project --method encoder`` / ``hybrid`` and
``latentx.projection.project(..., encoder=PATH)``.

Each step draws a batch of latents z ~ N(0, I) (truncated to the generator's bound), renders
x = G(z) and takes one Adam step on ‖E(x) − z‖² (+ ``--image-weight``·|G(E(x)) − x|). The
checkpoint ``--out`` is written atomically every ``--checkpoint-every`` steps and at the end;
running the same command again continues from it (to ``--steps`` in all), ``--overwrite``
starts over. It loads with ``torch.load(weights_only=True)`` on any device
(``latentx.projection.load_encoder``).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from latentx import _threads


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``train-encoder`` subcommand's options."""
    p.add_argument("--generator", default="face-dcgan",
                   help="'face-dcgan' (default) or package.module:factory (with --checkpoint)")
    p.add_argument("--checkpoint", default=None, help="state dict for --generator (weights_only=True)")
    p.add_argument("--out", default="encoder.pt", metavar="PATH",
                   help="the encoder checkpoint to write, and to resume from (default: encoder.pt)")
    p.add_argument("--steps", type=int, default=2000, help="training steps in all (default: 2000)")
    p.add_argument("--batch-size", type=int, default=64, help="generator samples per step (default: 64)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (default: 1e-3)")
    p.add_argument("--image-weight", type=float, default=0.0,
                   help="weight of |G(E(x)) - x| (back-propagates through G; default: 0, latent loss only)")
    p.add_argument("--width", type=int, default=32, help="the encoder's first-layer channels (default: 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples and the initial weights (default: 0)")
    p.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints (default: 100)")
    p.add_argument("--overwrite", action="store_true", help="start over even if --out holds a checkpoint")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    _threads.add_threads_argument(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from latentx import models
    from latentx.projection import train_encoder

    prog = "latentx train-encoder"
    for flag, minimum in (("steps", 0), ("batch_size", 1), ("width", 1), ("checkpoint_every", 1), ("seed", 0)):
        if getattr(args, flag) < minimum:
            print(f"{prog}: error: --{flag.replace('_', '-')} must be >= {minimum}, got {getattr(args, flag)}",
                  file=sys.stderr)
            return 2
    for flag in ("lr", "image_weight"):
        value = getattr(args, flag)
        if not (value >= 0 and value < float("inf")) or (flag == "lr" and value == 0):
            print(f"{prog}: error: --{flag.replace('_', '-')} must be a {'positive' if flag == 'lr' else '>= 0'} "
                  f"number, got {value}", file=sys.stderr)
            return 2
    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError) as e:
        print(f"{prog}: error: --device {args.device!r} is not a device ({e})", file=sys.stderr)
        return 2
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):
        print(f"{prog}: error: the folder of --out ({folder}) does not exist", file=sys.stderr)
        return 2
    try:
        if args.generator == "face-dcgan":
            generator = models.load("face-dcgan", device=device)
        else:
            generator = models.load(args.generator, checkpoint=args.checkpoint, device=device)
    except (ImportError, FileNotFoundError, ValueError, KeyError, AttributeError) as e:
        print(f"{prog}: error: cannot load --generator {args.generator!r}: {e}", file=sys.stderr)
        return 2
    if args.overwrite and os.path.exists(args.out):
        os.remove(args.out)
    try:
        result = train_encoder(generator, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                               image_weight=args.image_weight, width=args.width, checkpoint=args.out,
                               checkpoint_every=args.checkpoint_every, seed=args.seed, device=device,
                               progress=False if args.no_progress else None)
    except ValueError as e:  # a checkpoint of another encoder / other settings
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    hist = result.history
    first = float(hist[: min(10, len(hist))].mean()) if len(hist) else float("nan")
    last = float(hist[-min(10, len(hist)):].mean()) if len(hist) else float("nan")
    resumed = f" (resumed at step {result.resumed_from})" if result.resumed_from else ""
    print(f"{prog}: {result.step} steps{resumed}; loss (mean of 10 steps) {first:.4f} at the start -> "
          f"{last:.4f} at the end; wrote {args.out}")
    return 0

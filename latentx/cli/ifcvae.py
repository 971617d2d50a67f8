"""``latentx ifcvae``: the IFcVAE-GAN of seed 004 (adversarial information factorisation).

``latentx ifcvae train --data {faces,digits,FILE.pt} --out DIR`` trains one model
(``latentx.ifcvae.train``) and writes, in ``DIR``:

    config.json      the settings that decide the result; a rerun must match them (except
                     --epochs: a larger value extends a finished run)
    checkpoint.pt    model, optimisers, RNG state, step and history, saved atomically every
                     --checkpoint-every steps and each epoch; a rerun resumes from it
    model.pt         the trained model (``latentx.ifcvae.IFcVAE.load``)
    history.json     per epoch: the mean of every loss term and the accuracies of E's ŷ and A
    losses.png       those curves

Data: ``faces`` — face-DCGAN samples labelled smiling (1) / not smiling (0) by the
expression classifier (happy ≥ 0.5 / < 0.1; ambiguous ones dropped, classes balanced; cached in
``--data-cache``, default DIR/faces.pt), 64×64 RGB, resized to --image-size; ``digits`` —
sklearn's digits upsampled to --image-size (default 32), grey, attribute "bold" (ink mass in
the top third vs the bottom third); ``FILE.pt`` — a dict with ``images`` [N, C, S, S] (float in
[−1, 1], or uint8) and ``labels`` [N] of 0/1 (read with ``torch.load(weights_only=True)``).

``latentx ifcvae edit IMAGE [IMAGE ...] --model DIR/model.pt --out OUT`` encodes each image
(resized to the model's S×S; crop faces first, as the DCGAN frames them), sets ŷ to each of
``--values`` (default 0,1) and decodes. Writes ``OUT/grid.png`` (rows: images; columns: the
input, its reconstruction with the encoder's own ŷ, one column per value), one before/after
strip per image (``OUT/<name>_edits.png``, same columns, unlabelled, at the model's size) and
``OUT/edits.json`` (the encoder's ŷ per image, the values, the files).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from latentx import _threads
from latentx._atomic import atomic_write_bytes, atomic_write_json
from latentx.cli._run_config import check_run_config
from latentx.images import read_image, resize_square, to_uint8, write_png

# Options that do not change the result: a resumed run may differ in these.
_FREE = ("epochs", "out", "device", "no_progress", "threads", "checkpoint_every", "func", "command",
         "ifcvae_command", "extra", "data_cache")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``latentx ifcvae`` and its two subcommands."""
    sub = p.add_subparsers(dest="ifcvae_command", metavar="{train,edit}", required=True)
    train = sub.add_parser("train", help="train an IFcVAE-GAN (resumable)", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    data = train.add_argument_group("data")
    data.add_argument("--data", required=True, metavar="faces|digits|FILE.pt",
                      help="faces (face-DCGAN samples, smiling), digits (sklearn, bold) or a .pt file")
    data.add_argument("--face-samples", type=int, default=6000,
                      help="faces: DCGAN samples drawn before labelling (default 6000: ~2,360 kept)")
    data.add_argument("--face-seed", type=int, default=0, help="faces: seed of the samples (default 0)")
    data.add_argument("--data-cache", default=None, help="faces: cache file (default DIR/faces.pt)")
    model = train.add_argument_group("model")
    model.add_argument("--image-size", type=int, default=None,
                       help="S (4·2^k; default: 64 for faces, 32 for digits, the file's size)")
    model.add_argument("--z-dim", type=int, default=100, help="identity code size (default 100)")
    model.add_argument("--width", type=int, default=64, help="channels of the first convolution (default 64)")
    model.add_argument("--aux-width", type=int, default=1000, help="A's hidden width (default 1000)")
    loss = train.add_argument_group("losses (defaults: seed 004 Table 1)")
    loss.add_argument("--rho", type=float, default=0.1, help="weight of L_class (default 0.1)")
    loss.add_argument("--delta", type=float, default=0.1, help="weight of the GAN term (default 0.1)")
    loss.add_argument("--alpha", type=float, default=0.2, help="weight of L_KL (default 0.2)")
    loss.add_argument("--gamma", type=float, default=1.0, help="weight of -L_aux in the encoder's loss (default 1)")
    loss.add_argument("--no-aux", action="store_true", help="ablation: no -L_aux (the naive cVAE-GAN)")
    loss.add_argument("--no-kl", action="store_true", help="ablation: no L_KL")
    loss.add_argument("--no-gan", action="store_true", help="ablation: no discriminator")
    loss.add_argument("--gan-form", choices=("nonsaturating", "minimax"), default="nonsaturating",
                      help="E and D's GAN term (default: the authors' code's non-saturating one)")
    loss.add_argument("--reduction", choices=("code", "mean"), default="code",
                      help="batch reduction of the terms (default: the authors' code's; see latentx.ifcvae)")
    opt = train.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, default=10, help="passes over the data (default 10)")
    opt.add_argument("--batch-size", type=int, default=64, help="(default 64)")
    opt.add_argument("--lr", type=float, default=1e-3, help="RMSprop learning rate (default 1e-3)")
    opt.add_argument("--disc-alpha", type=float, default=0.9, help="C's RMSprop smoothing constant (default 0.9)")
    opt.add_argument("--warmup", type=int, default=0,
                     help="linear learning-rate warm-up steps (default 0; use ~100 for --alpha below 0.1)")
    opt.add_argument("--seed", type=int, default=0, help="initialisation, data order and noise (default 0)")
    run = train.add_argument_group("run")
    run.add_argument("--out", required=True, metavar="DIR", help="output folder (resumes what it holds)")
    run.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    run.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints (default 200)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    _threads.add_threads_argument(run)
    train.set_defaults(func=run_train)

    edit = sub.add_parser("edit", help="set the attribute of images to 0 / 1 / in between", description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    edit.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    edit.add_argument("--model", required=True, help="a model.pt (or checkpoint.pt) of `latentx ifcvae train`")
    edit.add_argument("--out", required=True, metavar="DIR", help="output folder")
    edit.add_argument("--values", default="0,1", help="comma-separated ŷ values in [0, 1] (default 0,1)")
    edit.add_argument("--device", default="cpu", help="(default: cpu)")
    _threads.add_threads_argument(edit)
    edit.set_defaults(func=run_edit)


# --- data ---------------------------------------------------------------------------------------

def _resize_batch(images: Tensor, size: int) -> Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    shrink = images.shape[-1] > size
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=shrink).clamp(-1, 1)


def load_data(args: argparse.Namespace, out: Path) -> tuple[Tensor, Tensor, dict]:
    """(images [N, C, S, S] in [−1, 1], labels [N], a description for config.json)."""
    from latentx import ifcvae

    if args.data == "digits":
        size = args.image_size or 32
        d = ifcvae.digits_ink_dataset(size)
        return d["images"], d["labels"], {"data": "digits", "thresholds": list(d["thresholds"])}
    if args.data == "faces":
        cache = Path(args.data_cache) if args.data_cache else out / "faces.pt"
        d = ifcvae.face_smile_dataset(args.face_samples, seed=args.face_seed, cache=cache,
                                      progress=not args.no_progress)
        return _resize_batch(d["images"], args.image_size or 64), d["labels"], {"data": "faces", **d["settings"]}
    path = Path(args.data)
    if not path.is_file():
        raise ValueError(f"--data must be faces, digits or an existing .pt file, got {args.data!r}")
    record = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(record, dict) or "images" not in record or "labels" not in record:
        raise ValueError(f"--data {path}: expected a dict with 'images' [N, C, S, S] and 'labels' [N]")
    images = record["images"]
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(f"--data {path}: 'images' must be a tensor [N, C, S, S]")
    if images.dtype == torch.uint8:
        images = images.float() / 127.5 - 1
    if args.image_size:
        images = _resize_batch(images.float(), args.image_size)
    return images, record["labels"], {"data": str(path)}


def plot_history(path: Path, history: list) -> None:
    """Per-epoch loss terms (left) and accuracies (right) as a PNG."""
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(9, 3.4))
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for key, label in (("rec", "L_rec"), ("kl", "L_KL"), ("class", "L_class"), ("aux", "L_aux"),
                       ("gen", "GAN term (E, D)"), ("gan", "L_gan (C)")):
        left.plot(epochs, [h[key] for h in history], label=label)
    left.set_xlabel("epoch")
    left.set_ylabel("loss (per-image mean)")
    left.legend(fontsize=7)
    right.plot(epochs, [h["class_acc"] for h in history], label="E's ŷ vs y")
    right.plot(epochs, [h["aux_acc"] for h in history], label="A(ẑ) vs y")
    right.axhline(0.5, color="grey", lw=0.8, ls="--", label="chance (balanced)")
    right.set_xlabel("epoch")
    right.set_ylabel("training accuracy")
    right.set_ylim(0, 1)
    right.legend(fontsize=7)
    fig.tight_layout()
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(path, buffer.getvalue())


def run_train(args: argparse.Namespace) -> int:
    from latentx import ifcvae

    try:
        for flag, value, low in (("--epochs", args.epochs, 0), ("--batch-size", args.batch_size, 2),
                                 ("--face-samples", args.face_samples, 1), ("--checkpoint-every", args.checkpoint_every, 1),
                                 ("--warmup", args.warmup, 0)):
            if value < low:
                raise ValueError(f"{flag} must be >= {low}, got {value}")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        config_record = {k: v for k, v in vars(args).items() if k not in _FREE}
        if check_run_config(out / "config.json", config_record):
            atomic_write_json(out / "config.json", config_record)
        images, labels, about = load_data(args, out)
        config = ifcvae.IFcVAEConfig(image_size=int(images.shape[-1]), channels=int(images.shape[1]),
                                     z_dim=args.z_dim, width=args.width, aux_width=args.aux_width)
        model = ifcvae.IFcVAE(config, seed=args.seed)
        print(f"IFcVAE-GAN on {about['data']}: {images.shape[0]} images {list(images.shape[1:])}, "
              f"{int(labels.float().sum())} with the attribute; {args.epochs} epochs -> {out}")
        result = ifcvae.train(
            model, images, labels, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
            disc_alpha=args.disc_alpha, warmup=args.warmup, rho=args.rho, delta=args.delta, alpha=args.alpha,
            gamma=args.gamma, aux=not args.no_aux, kl=not args.no_kl, gan=not args.no_gan, gan_form=args.gan_form,
            seed=args.seed, device=args.device, checkpoint=out / "checkpoint.pt",
            checkpoint_every=args.checkpoint_every, progress=not args.no_progress,
            weights=ifcvae.LossWeights(reduction=args.reduction))
    except (ValueError, TypeError, FileNotFoundError, ModuleNotFoundError, FloatingPointError) as err:
        raise SystemExit(f"latentx ifcvae train: {err}") from None
    model.save(out / "model.pt", history=result.history, data=about)
    atomic_write_json(out / "history.json", result.history)
    if result.history:
        try:
            plot_history(out / "losses.png", result.history)
        except ImportError:
            print("matplotlib is missing: losses.png not written (pip install matplotlib)", file=sys.stderr)
        last = result.history[-1]
        print(f"epoch {last['epoch']}: L_rec {last['rec']:.4f}, L_KL {last['kl']:.4f}, L_aux {last['aux']:.4f}, "
              f"E's accuracy {last['class_acc']:.3f}, A's accuracy {last['aux_acc']:.3f}")
    print(f"wrote {out / 'model.pt'}, {out / 'history.json'}" + (", losses.png" if result.history else ""))
    return 0


# --- editing ------------------------------------------------------------------------------------

def parse_values(text: str) -> list[float]:
    """"0,0.5,1" → [0.0, 0.5, 1.0]: numbers in [0, 1]."""
    values = []
    for part in text.split(","):
        try:
            v = float(part)
        except ValueError:
            raise ValueError(f"--values must be comma-separated numbers in [0, 1], got {text!r}") from None
        if not (math.isfinite(v) and 0 <= v <= 1):
            raise ValueError(f"--values must lie in [0, 1] (0: attribute off, 1: on), got {v}")
        values.append(v)
    return values


def to_model_input(image: Tensor, channels: int, size: int) -> Tensor:
    """[3, H, W] in [−1, 1] → [channels, size, size]: resized (squashed if not square), grey
    (ITU-R 601 luma) for one-channel models."""
    x = resize_square(image, size).clamp(-1, 1)
    if channels == 1:
        w = x.new_tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
        return (x * w).sum(0, keepdim=True)
    return x


def write_image(path: Path, image: Tensor) -> None:
    """Write [C, H, W] in [−1, 1] (C = 1 or 3) as a PNG."""
    write_png(path, to_uint8(image.expand(3, -1, -1) if image.shape[0] == 1 else image))


def _grid_figure(path: Path, columns: list[tuple[str, Tensor]], names: list[str]) -> None:
    from matplotlib.figure import Figure

    n, k = columns[0][1].shape[0], len(columns)
    fig = Figure(figsize=(1.5 * k + 0.8, 1.5 * n + 0.5))
    for i in range(n):
        for j, (title, images) in enumerate(columns):
            ax = fig.add_subplot(n, k, i * k + j + 1)
            a = to_uint8(images[i].expand(3, -1, -1) if images.shape[1] == 1 else images[i])
            ax.imshow(a, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=8)
            if j == 0:
                ax.set_ylabel(names[i][:18], fontsize=7)
    fig.tight_layout()
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(path, buffer.getvalue())


def _plain_grid(columns: list[tuple[str, Tensor]]) -> np.ndarray:
    """Images side by side, rows × columns, 2-pixel white gaps (no labels)."""
    n = columns[0][1].shape[0]
    rows = []
    for i in range(n):
        tiles = [to_uint8(c[i].expand(3, -1, -1) if c.shape[1] == 1 else c[i]) for _, c in columns]
        gap = np.full((tiles[0].shape[0], 2, 3), 255, np.uint8)
        rows.append(np.concatenate([t for tile in tiles for t in (tile, gap)][:-1], axis=1))
    hgap = np.full((2, rows[0].shape[1], 3), 255, np.uint8)
    return np.concatenate([r for row in rows for r in (row, hgap)][:-1], axis=0)


def run_edit(args: argparse.Namespace) -> int:
    from latentx.ifcvae import IFcVAE

    try:
        values = parse_values(args.values)
        model = IFcVAE.load(args.model, map_location=torch.device(args.device))
        cfg = model.config
        inputs = torch.stack([to_model_input(read_image(p), cfg.channels, cfg.image_size) for p in args.images])
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
    except (ValueError, TypeError, FileNotFoundError) as err:
        raise SystemExit(f"latentx ifcvae edit: {err}") from None
    with torch.no_grad():
        _, _, y_hat = model.encode(inputs)
        columns = [("input", inputs), ("reconstruction", model.reconstruct(inputs).cpu())]
        columns += [(f"ŷ = {v:g}", model.edit(inputs, v).cpu()) for v in values]
    names = [Path(p).name for p in args.images]
    records = []
    for i, path in enumerate(args.images):
        strip = out / f"{i:03d}_{Path(path).stem}_edits.png"
        write_png(strip, _plain_grid([(t, c[i:i + 1]) for t, c in columns]))
        records.append({"image": path, "y_hat": float(y_hat[i]), "edits": str(strip)})
    try:
        _grid_figure(out / "grid.png", [(f"{t}" if t != "reconstruction" else "reconstruction\n(E's own ŷ)", c)
                                        for t, c in columns], names)
    except ImportError:  # no matplotlib: the same grid without labels
        write_png(out / "grid.png", _plain_grid(columns))
    atomic_write_json(out / "edits.json", {"model": str(args.model), "values": values,
                                           "columns": ["input", "reconstruction"] + [f"y={v:g}" for v in values],
                                           "images": records})
    for r in records:
        print(f"{r['image']}: the encoder's ŷ = {r['y_hat']:.3f}")
    print(f"wrote {out / 'grid.png'} (rows: images; columns: input, reconstruction, ŷ = "
          f"{', '.join(f'{v:g}' for v in values)}), the per-image strips and {out / 'edits.json'}")
    return 0

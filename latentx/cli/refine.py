"""``latentx refine``: AdvLatGAN-z over N latents, in shards, resumable, across processes.

Layout of ``--out``::

    config.json            every setting that decides the result; a resumed run must match it
    shards/shard-000000.pt {"index", "start", "stop", "z": [n, ...] refined latents,
                            "scores": [steps + 1] mean D logit of the shard before each step
                            and after the last; for a class-conditional pair also
                            "c": [n] or [n, ...] the latents' classes}
    manifest.json          written by rank 0 once every shard exists: the shard list, N and
                           the mean scores over all latents

Shard k holds latents ``[k·S, min((k+1)·S, N))``. Drawn latents are N(0, I) from a generator
seeded by (``--seed``, k), so any process can make any shard alone. Under ``torchrun``
(torch.distributed, gloo on CPU, nccl on CUDA) rank r takes the shards k ≡ r (mod world
size). A shard is written to a temporary file and renamed into place, so a killed run
leaves only whole shards; running the same command again skips them.

A class-conditional pair (``G(z, c)``, ``D(x, c)``) takes one class per latent from
``--classes PATH`` (a file like ``--latents``: integer [N] or floating-point [N, ...]),
``--class K`` (every latent) or ``--num-classes K`` (latent i gets class i mod K: balanced,
and any shard computes its own); the class stays fixed while the latent moves.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from latentx import _threads, advlat, losses
from latentx._atomic import atomic_torch_save, atomic_write_json
from latentx.cli._run_config import check_run_config

SHARD_DIR = "shards"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``refine`` subcommand's options."""
    models = p.add_argument_group("models")
    models.add_argument("--generator", required=True, metavar="MODULE:FACTORY",
                        help="a callable returning G (an nn.Module): [B, z_dim] -> samples")
    models.add_argument("--generator-ckpt", metavar="PATH", help="G's state_dict (torch.load, weights_only=True)")
    models.add_argument("--discriminator", required=True, metavar="MODULE:FACTORY",
                        help="a callable returning D (an nn.Module): samples -> [B] or [B, 1] logits")
    models.add_argument("--discriminator-ckpt", metavar="PATH", help="D's state_dict (weights_only=True)")
    src = p.add_argument_group("latents (draw --num-latents of them, or read --latents)")
    # Not "--num": torchrun's parser takes it for an abbreviation of its --numa-binding.
    src.add_argument("--num-latents", type=int, help="number of latents to draw from N(0, I)")
    src.add_argument("--z-dim", type=int, help="latent size for drawn latents")
    src.add_argument("--seed", type=int, default=0, help="seed of the draws (default: 0)")
    src.add_argument("--latents", metavar="PATH", help="read z0 [N, ...] from a .pt tensor or .npy array (memory-mapped)")
    cls = p.add_argument_group("classes, for a class-conditional pair G(z, c), D(x, c) (at most one)")
    one = cls.add_mutually_exclusive_group()
    one.add_argument("--classes", metavar="PATH",
                     help="one class per latent: integer [N] (or floating-point conditions [N, ...]) in a .pt or .npy file")
    one.add_argument("--class", dest="class_index", type=int, metavar="K", help="every latent gets class K")
    one.add_argument("--num-classes", type=int, metavar="K", help="latent i gets class i mod K (balanced)")
    step = p.add_argument_group("AdvLatGAN-z (seed 001 eq. 5, 6)")
    step.add_argument("--steps", type=int, default=30, help="I-FGSM steps (default: 30)")
    step.add_argument("--step-size", type=float, default=0.03, help="epsilon per step (default: 0.03)")
    step.add_argument("--radius", type=float, help="l-inf radius around z0 (default: none)")
    step.add_argument("--lower", type=float, help="lower bound of every coordinate")
    step.add_argument("--upper", type=float, help="upper bound of every coordinate")
    step.add_argument("--loss", default="log1m", choices=("log1m",) + losses.GAN_LOSSES,
                      help="objective: log1m = log(1 - D(G(z))), or the G loss D was trained with")
    run = p.add_argument_group("run")
    run.add_argument("--out", required=True, metavar="DIR", help="output folder (resumes what it holds)")
    run.add_argument("--shard-size", type=int, default=65536, help="latents per shard file (default: 65536)")
    run.add_argument("--batch-size", type=int, default=4096, help="latents per chunk on the device (default: 4096)")
    run.add_argument("--device", help="default: cuda:LOCAL_RANK when CUDA is available, else cpu")
    _threads.add_threads_argument(run)
    run.add_argument("--stop-after", type=int, metavar="K",
                     help="stop after K shards in this process (to test resuming)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")


def load_results(out: str | os.PathLike) -> tuple[Tensor, dict]:
    """A finished run's refined latents [N, ...] in order, and its manifest."""
    out = Path(out)
    manifest_path = out / "manifest.json"
    if not manifest_path.exists():
        raise FileNotFoundError(f"{manifest_path} not found: the run is not finished (run the command again to resume)")
    manifest = json.loads(manifest_path.read_text())
    parts = [torch.load(out / s["file"], map_location="cpu", weights_only=True)["z"] for s in manifest["shards"]]
    return torch.cat(parts), manifest


# --- pieces ------------------------------------------------------------------------------


def load_entry_point(spec: str, flag: str):
    """``module:attr`` → the attribute (the current folder is importable, as with python -m)."""
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"{flag} must be MODULE:FACTORY, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"{flag}: cannot load {spec!r}: {err}") from err
    return obj


def load_model(spec: str, ckpt: Optional[str], flag: str, device: torch.device) -> nn.Module:
    """Call the factory, load the state_dict (``weights_only=True``), move to device, eval mode."""
    model = load_entry_point(spec, flag)()
    if not isinstance(model, nn.Module):
        raise TypeError(f"{flag}: {spec} returned {type(model).__name__}, not an nn.Module")
    if ckpt is not None:
        model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
    return model.to(device).eval()


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Latents:
    """The source of z0: seeded draws per shard, or slices of a memory-mapped file."""

    def __init__(self, args: argparse.Namespace):
        if (args.latents is None) == (args.num_latents is None):
            raise ValueError("give either --num-latents (with --z-dim) to draw latents or --latents PATH to read them")
        self.seed = args.seed
        if args.latents is not None:
            path = args.latents
            self.data = (torch.from_numpy(np.load(path, mmap_mode="r")) if path.endswith(".npy")
                         else torch.load(path, map_location="cpu", weights_only=True, mmap=True))
            if not isinstance(self.data, Tensor) or not self.data.is_floating_point() or self.data.dim() < 2:
                raise ValueError(f"--latents {path} must hold a floating-point tensor [N, ...]")
            self.num, self.shape = self.data.shape[0], tuple(self.data.shape[1:])
        else:
            if args.z_dim is None or args.z_dim < 1 or args.num_latents < 0:
                raise ValueError("--num-latents >= 0 needs --z-dim >= 1")
            self.data, self.num, self.shape = None, args.num_latents, (args.z_dim,)

    def describe(self, path: Optional[str]) -> dict:
        if self.data is None:
            return {"draw": "normal", "num": self.num, "shape": list(self.shape), "seed": self.seed}
        return {"file": os.path.abspath(path), "sha256": _sha256(path), "num": self.num, "shape": list(self.shape)}

    def shard(self, k: int, lo: int, hi: int) -> Tensor:
        if self.data is not None:
            return torch.as_tensor(self.data[lo:hi]).clone()
        # One generator per (seed, shard): a shard's latents do not depend on who draws them.
        seed = int(np.random.SeedSequence([self.seed, k]).generate_state(1, np.uint64)[0])
        return torch.randn((hi - lo,) + self.shape, generator=torch.Generator().manual_seed(seed))


class Classes:
    """The class input of a conditional pair, per shard: a memory-mapped file, one class, or
    i mod K; absent (None) for an unconditional pair."""

    def __init__(self, args: argparse.Namespace, num: int):
        self.path, self.index, self.cycle, self.data = args.classes, args.class_index, args.num_classes, None
        if self.path is not None:
            self.data = (torch.from_numpy(np.load(self.path, mmap_mode="r")) if self.path.endswith(".npy")
                         else torch.load(self.path, map_location="cpu", weights_only=True, mmap=True))
            # Shape and dtype only: nothing of a memory-mapped file is read here.
            advlat.check_classes(self.data, num, name=f"--classes {self.path}")

    @property
    def conditional(self) -> bool:
        return self.data is not None or self.index is not None or self.cycle is not None

    def describe(self) -> Optional[dict]:
        if self.data is not None:
            return {"file": os.path.abspath(self.path), "sha256": _sha256(self.path)}
        if self.index is not None:
            return {"class": self.index}
        return None if self.cycle is None else {"cycle": self.cycle}

    def shard(self, lo: int, hi: int) -> Optional[Tensor]:
        if self.data is not None:
            return torch.as_tensor(self.data[lo:hi]).clone()
        if self.index is not None:
            return torch.full((hi - lo,), self.index, dtype=torch.int64)
        return None if self.cycle is None else torch.arange(lo, hi) % self.cycle


def _shard_path(out: Path, k: int) -> Path:
    return out / SHARD_DIR / f"shard-{k:06d}.pt"


def _check_config(path: Path, config: dict) -> bool:
    try:
        return check_run_config(path, config)
    except ValueError as err:
        raise SystemExit(f"latentx refine: {err}") from None


# --- the command -------------------------------------------------------------------------


def check_settings(args: argparse.Namespace) -> None:
    """Exit with a message naming the flag for a setting out of range, before anything is
    written (a config.json with a typo in it would refuse the corrected rerun)."""
    def fail(message: str):
        raise SystemExit(f"latentx refine: {message}")

    for name, minimum in (("steps", 0), ("shard_size", 1), ("batch_size", 1)):
        if getattr(args, name) < minimum:
            fail(f"--{name.replace('_', '-')} must be an integer >= {minimum}, got {getattr(args, name)}")
    if not (math.isfinite(args.step_size) and args.step_size >= 0):
        fail(f"--step-size must be a finite number >= 0, got {args.step_size}")
    if args.radius is not None and not (math.isfinite(args.radius) and args.radius >= 0):
        fail(f"--radius must be a finite number >= 0, got {args.radius}")
    for name in ("lower", "upper"):
        if getattr(args, name) is not None and math.isnan(getattr(args, name)):
            fail(f"--{name} must be a number, got nan")
    if args.lower is not None and args.upper is not None and not args.lower <= args.upper:
        fail(f"--lower must be <= --upper, got {args.lower} > {args.upper}")
    if args.class_index is not None and args.class_index < 0:
        fail(f"--class must be a class index >= 0, got {args.class_index}")
    if args.num_classes is not None and args.num_classes < 1:
        fail(f"--num-classes must be an integer >= 1, got {args.num_classes}")
    if args.device is not None:
        try:
            torch.device(args.device)
        except (RuntimeError, ValueError) as e:
            fail(f"--device {args.device!r} is not a device ({e})")


def run(args: argparse.Namespace) -> int:
    """Run (or resume) ``latentx refine``; returns the exit status."""
    check_settings(args)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(args.device or (f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"))
    distributed = world > 1
    if distributed and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        return _run(args, device, rank, world, distributed)
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()


def _run(args: argparse.Namespace, device: torch.device, rank: int, world: int, distributed: bool) -> int:
    try:
        source = Latents(args)
        classes = Classes(args, source.num)
        # Before config.json is written: a bad --generator must not pin a run to its settings.
        G = load_model(args.generator, args.generator_ckpt, "--generator", device)
        D = load_model(args.discriminator, args.discriminator_ckpt, "--discriminator", device)
    except (ValueError, TypeError, FileNotFoundError) as e:
        raise SystemExit(f"latentx refine: {e}") from e
    bounds = None
    if args.lower is not None or args.upper is not None:
        bounds = (-float("inf") if args.lower is None else args.lower, float("inf") if args.upper is None else args.upper)
    config = {
        "generator": args.generator, "discriminator": args.discriminator,
        "generator_ckpt_sha256": args.generator_ckpt and _sha256(args.generator_ckpt),
        "discriminator_ckpt_sha256": args.discriminator_ckpt and _sha256(args.discriminator_ckpt),
        "latents": source.describe(args.latents), "steps": args.steps, "step_size": args.step_size,
        "radius": args.radius, "bounds": bounds and list(bounds), "loss": args.loss, "shard_size": args.shard_size,
    }
    if classes.conditional:  # only then: an unconditional run's config.json stays as it was
        config["classes"] = classes.describe()
    out = Path(args.out)
    (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    config_path = out / "config.json"
    if rank == 0:
        if _check_config(config_path, config):
            atomic_write_json(config_path, config, indent=2)
    if distributed:
        dist.barrier()
    if rank != 0:
        _check_config(config_path, config)

    n_shards = -(-source.num // args.shard_size)
    mine = [k for k in range(rank, n_shards, world) if not _shard_path(out, k).exists()]
    skipped = len(range(rank, n_shards, world)) - len(mine)
    if skipped:
        print(f"latentx refine [rank {rank}]: resuming, {skipped} shard(s) already done", file=sys.stderr)

    done = 0
    bar = tqdm(mine, disable=args.no_progress, desc=f"refine rank {rank}", unit="shard", position=rank)
    for k in bar:
        if args.stop_after is not None and done >= args.stop_after:
            break
        lo, hi = k * args.shard_size, min((k + 1) * args.shard_size, source.num)
        c = classes.shard(lo, hi)
        z, scores = advlat.refine(G, D, source.shard(k, lo, hi), c=c, steps=args.steps, step_size=args.step_size,
                                  radius=args.radius, bounds=bounds, loss=args.loss, batch_size=args.batch_size,
                                  progress=False)
        shard = {"index": k, "start": lo, "stop": hi, "z": z, "scores": scores}
        if c is not None:
            shard["c"] = c
        atomic_torch_save(shard, _shard_path(out, k))  # a reader sees no shard or a whole one
        done += 1
        bar.set_postfix(score=f"{scores[0]:.3f}->{scores[-1]:.3f}", refresh=False)
    bar.close()

    if distributed:
        dist.barrier()
    if rank != 0:
        return 0
    missing = [k for k in range(n_shards) if not _shard_path(out, k).exists()]
    if missing:
        print(f"latentx refine: {n_shards - len(missing)} of {n_shards} shards done; "
              "run the same command again to resume", file=sys.stderr)
        return 0
    shards, score_sum = [], torch.zeros(args.steps + 1, dtype=torch.float64)
    for k in range(n_shards):
        shard = torch.load(_shard_path(out, k), map_location="cpu", weights_only=True)
        score_sum += shard["scores"] * (shard["stop"] - shard["start"])
        shards.append({"file": f"{SHARD_DIR}/{_shard_path(out, k).name}", "start": shard["start"], "stop": shard["stop"]})
    manifest = {"num": source.num, "shape": list(source.shape), "shards": shards,
                "mean_score_per_step": (score_sum / max(source.num, 1)).tolist(), "config": config,
                "world_size": world, "device": str(device),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_json(out / "manifest.json", manifest, indent=2)
    s = manifest["mean_score_per_step"]
    print(f"latentx refine: {source.num} latents in {n_shards} shards -> {out}; mean D logit {s[0]:.4f} -> {s[-1]:.4f}")
    return 0

"""``latentx edit``: move latents toward target attributes (seed 000, SPEC C4).

One command runs the whole pipeline, each step saved in ``--out`` and skipped when a rerun
finds it done:

    config.json        the settings that decide the result; a rerun must match them
    bank.pt            the sample bank: z ~ N(0, I) and Φ(G(z)) (``latentx.edit.sample_bank``,
                       saved chunk by chunk, resumable)
    boundaries.pt      InterFaceGAN: one unit normal per attribute (``--method interfacegan``)
    directions.pt      GANSpace: principal directions and the component chosen per attribute
                       (``--method ganspace``)
    mapping.pt         the auxiliary mapping F (``--method sgf`` / ``cg``; checkpointed while it
                       trains, resumable)
    edit.pt            the edited latents: z before and after, the whole trajectory, Φ along it
    grid.png           the sources (rows) along the edit (columns: strength or step)
    attributes.json    each source's attributes before and after, steps taken, converged

Sources: ``--num`` latents drawn with ``--seed``, or ``--latents`` (a ``.pt`` tensor or
``.npy`` array [N, z_dim], or the ``result.json`` of ``latentx project``, whose best latent
is edited). Targets: ``--target NAME=VALUE`` (repeatable), goals in [0, 1] on the attribute
model's scale; attributes not named keep their values (SGF's δc is zero there).

The methods (``latentx.edit``): ``cg`` — seed 000 Algorithm 1, conjugate directions over the
SGF field; ``sgf`` — the surrogate gradient field with Neumann corrections; ``interfacegan``
— a step along the attribute's SVM normal (conditioned on ``--condition`` attributes);
``ganspace`` — a step along the principal component that moves the attribute most. The
linear methods take one target; they move each source toward its goal in ``--steps``
equal steps up to ``--strength`` (in σ units along the unit direction) and stop at the
first step that reaches it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from latentx import _threads
from latentx._atomic import atomic_write_json
from latentx.cli._run_config import check_run_config
from latentx.images import to_uint8, write_png

METHODS = ("cg", "sgf", "interfacegan", "ganspace")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``edit`` subcommand's options."""
    models = p.add_argument_group("models")
    models.add_argument("--generator", default="face-dcgan",
                        help="face-dcgan (default) or MODULE:FACTORY (latentx.models.load)")
    models.add_argument("--checkpoint", help="the generator's state dict, for MODULE:FACTORY (weights_only=True)")
    models.add_argument("--attributes", default="face",
                        help="attribute model for latentx.attributes.load (default: face)")
    goal = p.add_argument_group("what to edit")
    goal.add_argument("--target", action="append", required=True, metavar="NAME=VALUE",
                      help="attribute goal in [0, 1], e.g. happy=0.9 (repeatable)")
    goal.add_argument("--method", choices=METHODS, default="cg", help="editing method (default: cg)")
    goal.add_argument("--condition", action="append", default=[], metavar="NAME",
                      help="interfacegan: keep this attribute fixed (conditional boundary; repeatable)")
    goal.add_argument("--steps", type=int, default=20,
                      help="cg / sgf iterations, or the number of strengths of a linear edit (default: 20)")
    goal.add_argument("--strength", type=float, default=3.0,
                      help="interfacegan / ganspace: largest step along the direction, in σ units (default: 3)")
    src = p.add_argument_group("sources (draw --num latents, or read --latents)")
    src.add_argument("--num", type=int, default=8, help="number of latents to draw (default: 8)")
    src.add_argument("--seed", type=int, default=1, help="seed of the drawn sources (default: 1)")
    src.add_argument("--latents", metavar="PATH",
                     help=".pt tensor / .npy array [N, z_dim], or a `latentx project` result.json")
    fit = p.add_argument_group("fitting")
    fit.add_argument("--bank-size", type=int, default=20_000,
                     help="samples in the bank the boundaries, directions and F are fitted on (default: 20000)")
    fit.add_argument("--bank-seed", type=int, default=0, help="seed of the bank's latents (default: 0)")
    fit.add_argument("--mapping-steps", type=int, default=20_000,
                     help="Adam steps training F (batch 8, lr 2e-4; default: 20000)")
    fit.add_argument("--mapping-noise", type=float, default=0.5,
                     help="train F as a denoiser, F(z + noise·ε, Φ(z)) → z, so that it cannot ignore c "
                          "(0: the papers' plain loss; default: 0.5)")
    run = p.add_argument_group("run")
    run.add_argument("--out", required=True, metavar="DIR", help="output folder (resumes what it holds)")
    run.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    run.add_argument("--chunk-size", type=int, default=256, help="latents per chunk on the device (default: 256)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    _threads.add_threads_argument(run)


def parse_targets(items: list[str], names: list[str]) -> dict[str, float]:
    """``["happy=0.9", ...]`` → {"happy": 0.9}: known names, finite goals in [0, 1]."""
    targets: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"--target must be NAME=VALUE, got {item!r}")
        if name not in names:
            raise ValueError(f"--target: unknown attribute {name!r}; the model has {', '.join(names)}")
        try:
            goal = float(value)
        except ValueError:
            raise ValueError(f"--target {name}: the goal must be a number in [0, 1], got {value!r}") from None
        if not (0.0 <= goal <= 1.0):
            raise ValueError(f"--target {name}: the goal must lie in [0, 1], got {goal}")
        if name in targets:
            raise ValueError(f"--target: {name} given twice")
        targets[name] = goal
    return targets


def read_latents(path: str, z_dim: int) -> Tensor:
    """Sources from a file: .pt tensor / .npy array [N, z_dim] (or [N, z_dim, 1, 1]), or the
    best latent of a ``latentx project`` result.json → [N, z_dim] float32."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"--latents: {path} does not exist")
    if p.suffix == ".json":
        record = json.loads(p.read_text())
        if "z_best" not in record:
            raise ValueError(f"--latents: {path} has no 'z_best' (expected a `latentx project` result.json)")
        z = torch.tensor(record["z_best"], dtype=torch.float32)
    elif p.suffix == ".npy":
        z = torch.from_numpy(np.load(p)).float()
    else:
        z = torch.load(p, map_location="cpu", weights_only=True)
        if not isinstance(z, Tensor):
            raise ValueError(f"--latents: {path} holds a {type(z).__name__}, expected a tensor [N, {z_dim}]")
        z = z.float()
    z = z.reshape(-1, z_dim) if z.numel() % z_dim == 0 and z.numel() > 0 else z
    if z.dim() != 2 or z.shape[1] != z_dim:
        raise ValueError(f"--latents: expected latents [N, {z_dim}] for this generator, got {tuple(z.shape)}")
    if not torch.isfinite(z).all():
        raise ValueError(f"--latents: {path} holds non-finite values")
    return z


def _config(args: argparse.Namespace, targets: dict[str, float], latents_digest: Optional[str]) -> dict:
    keys = ("generator", "checkpoint", "attributes", "method", "condition", "steps", "strength", "num", "seed",
            "bank_size", "bank_seed", "mapping_steps", "mapping_noise")
    config = {k: getattr(args, k) for k in keys}
    config["targets"] = targets
    config["latents_sha256"] = latents_digest
    return config


def write_grid(path: Path, images: Tensor, *, max_columns: int = 9) -> list[int]:
    """Write images [T+1, N, 3, H, W] (a trajectory) as one PNG: a row per source, columns
    evenly spaced along the trajectory (the first and the last always). Returns the columns'
    trajectory indices."""
    steps = images.shape[0]
    columns = sorted(set(np.linspace(0, steps - 1, min(max_columns, steps)).round().astype(int).tolist()))
    sel = images[columns]                                   # [K, N, 3, H, W]
    k, n, _, h, w = sel.shape
    pad = 2
    canvas = np.full((n * (h + pad) + pad, k * (w + pad) + pad, 3), 255, np.uint8)
    for i in range(n):
        for j in range(k):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y:y + h, x:x + w] = to_uint8(sel[j, i])
    write_png(path, canvas)
    return columns


def run(args: argparse.Namespace) -> int:
    from latentx import attributes as attribute_models
    from latentx import edit
    from latentx.cli import project as project_cli

    for flag, value, low in (("--steps", args.steps, 1), ("--num", args.num, 1), ("--bank-size", args.bank_size, 100),
                             ("--chunk-size", args.chunk_size, 1), ("--mapping-steps", args.mapping_steps, 0)):
        if value < low:
            raise SystemExit(f"latentx edit: {flag} must be >= {low}, got {value}")
    if not (math.isfinite(args.strength) and args.strength > 0):
        raise SystemExit(f"latentx edit: --strength must be a positive number, got {args.strength}")
    if not (math.isfinite(args.mapping_noise) and args.mapping_noise >= 0):
        raise SystemExit(f"latentx edit: --mapping-noise must be >= 0, got {args.mapping_noise}")
    device = torch.device(args.device)
    progress = not args.no_progress
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    args.device = device  # _generator reads it
    G = project_cli._generator(args)
    phi = attribute_models.load(args.attributes, device=device)
    try:
        targets = parse_targets(args.target, list(phi.names))
        for name in args.condition:
            if name not in phi.names:
                raise ValueError(f"--condition: unknown attribute {name!r}; the model has {', '.join(phi.names)}")
        if args.method in ("interfacegan", "ganspace") and len(targets) != 1:
            raise ValueError(f"--target: --method {args.method} edits one attribute at a time, got {len(targets)}")
        if args.condition and args.method != "interfacegan":
            raise ValueError("--condition applies to --method interfacegan only")
        digest = None
        if args.latents:
            z0 = read_latents(args.latents, G.z_dim)
            digest = hashlib.sha256(z0.numpy().tobytes()).hexdigest()
        else:
            z0 = torch.randn(args.num, G.z_dim, generator=torch.Generator().manual_seed(args.seed))
        config = _config(args, targets, digest)
        if check_run_config(out / "config.json", config):
            atomic_write_json(out / "config.json", config)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"latentx edit: {err}") from None
    z0 = z0.to(device)

    print(f"[1/3] sample bank: {args.bank_size} samples -> {out / 'bank.pt'}")
    bank = edit.sample_bank(G, phi, args.bank_size, seed=args.bank_seed, chunk_size=args.chunk_size,
                            path=str(out / "bank.pt"), device=device, progress=progress)

    if args.method in ("cg", "sgf"):
        print(f"[2/3] auxiliary mapping F: {args.mapping_steps} steps -> {out / 'mapping.pt'}")
        mapping = edit.train_mapping(bank, steps=args.mapping_steps, noise=args.mapping_noise, seed=args.bank_seed,
                                     device=device, checkpoint=str(out / "mapping.pt"), progress=progress)
        print(f"[3/3] {args.method}: {z0.shape[0]} latents, at most {args.steps} steps")
        method = edit.conjugate_gradient if args.method == "cg" else edit.sgf
        result = method(G, phi, mapping, z0, targets, steps=args.steps, chunk_size=args.chunk_size,
                        progress=progress, return_trajectory=True, device=device)
    else:
        direction = _linear_direction(args, G, phi, bank, next(iter(targets)), out, device)
        print(f"[3/3] {args.method}: {z0.shape[0]} latents, {args.steps} strengths up to {args.strength}")
        result = edit.linear_path(G, phi, z0, direction, targets, strength=args.strength, steps=args.steps,
                                  chunk_size=args.chunk_size, progress=progress, return_trajectory=True,
                                  device=device)

    trajectory = result.trajectory_z
    edit.save_atomic({"z_before": trajectory[0], "z_after": result.z, "trajectory_z": trajectory,
                  "trajectory_attributes": result.trajectory_attributes, "names": list(phi.names)}, out / "edit.pt")
    with torch.no_grad():
        images = torch.stack([_images_of(G, zt.to(device), args.chunk_size) for zt in trajectory])
    columns = write_grid(out / "grid.png", images)
    before, after = result.attributes_before, result.attributes
    atomic_write_json(out / "attributes.json", {
        "method": args.method, "targets": targets, "names": list(phi.names), "grid_columns": columns,
        "sources": [{"before": dict(zip(phi.names, before[i].tolist())), "after": dict(zip(phi.names, after[i].tolist())),
                     "steps": int(result.steps[i]), "converged": bool(result.converged[i])}
                    for i in range(len(before))],
    })
    for name, goal in targets.items():
        j = phi.names.index(name)
        print(f"{name}: {before[:, j].mean():.3f} -> {after[:, j].mean():.3f} (mean over {len(before)} sources; "
              f"goal {goal})")
    print(f"{int(result.converged.sum())}/{len(before)} sources reached every goal")
    print(f"wrote {out / 'grid.png'} (rows: sources, columns: steps {columns}) and {out / 'attributes.json'}")
    return 0


def _linear_direction(args, G, phi, bank, name: str, out: Path, device) -> Tensor:
    """InterFaceGAN's (conditional) normal or GANSpace's chosen component for ``name`` [d],
    fitted once and saved in ``out``."""
    from latentx import edit

    if args.method == "interfacegan":
        path = out / "boundaries.pt"
        if path.exists():
            boundaries = edit.Boundaries.load(path)
        else:
            print(f"[2/3] InterFaceGAN boundaries for {len(phi.names)} attributes -> {path}")
            boundaries = edit.interfacegan_boundaries(bank, seed=args.bank_seed, device=device)
            boundaries.save(path)
        if args.condition:
            return edit.conditional_boundary(boundaries, name, args.condition)
        return boundaries[name]
    path = out / "directions.pt"
    if path.exists():
        record = torch.load(path, map_location="cpu", weights_only=True)
    else:
        print(f"[2/3] GANSpace directions (PCA on the first block's activations, regressed to z) -> {path}")
        directions = edit.ganspace_directions(bank, layer=first_layer(G), generator=G, device=device,
                                              progress=not args.no_progress)
        held_out = torch.randn(256, G.z_dim, generator=torch.Generator().manual_seed(args.bank_seed + 1))
        chosen = edit.choose_components(directions, G, phi, held_out.to(device), list(phi.names),
                                        progress=not args.no_progress)
        record = {"components": directions.components.cpu(), "stdev": directions.stdev.cpu(),
                  "chosen": {k: [int(v[0]), int(v[1])] for k, v in chosen.items()}}
        edit.save_atomic(record, path)
    index, sign = record["chosen"][name]
    return record["components"][index] * sign


def first_layer(G):
    """The face DCGAN's first block (ConvTranspose → BN → ReLU: [N, 512, 4, 4] activations,
    flattened) — GANSpace's PCA runs there and is regressed back to z."""
    net = getattr(getattr(G, "net", None), "main", None)
    if net is None:
        raise ValueError("--method ganspace: the generator has no .net.main to take a layer from")
    block = net[:3]
    return lambda z: block(z.reshape(z.shape[0], *G.latent_shape)).flatten(1)


def _images_of(G, z: Tensor, chunk_size: int) -> Tensor:
    return torch.cat([G(part).cpu() for part in z.split(chunk_size)])

"""The ``latentx`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

import torch

import latentx
from latentx import _threads
from latentx.cli import edit as edit_cli, project as project_cli, refine as refine_cli
from latentx.cli import train_encoder as train_encoder_cli
from latentx.cli import ifcvae as ifcvae_cli


def _cmd_bench(args: argparse.Namespace) -> int:
    from latentx.benchmarks import run  # imported on use: no other command needs it

    return run.main(args.extra)


def _cmd_info(args: argparse.Namespace) -> int:
    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError) as e:
        print(f"latentx info: error: --device {args.device!r} is not a device ({e})", file=sys.stderr)
        return 2
    print(json.dumps(latentx.backend(device), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentx",
        description="Latent-space optimisation for generative networks: project photos into "
        "a generator, refine latents, edit attributes — on fused C++/CUDA kernels.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser(
        "demo",
        help="project the face in skimage.data.astronaut() into the embedded face DCGAN",
        description="The main job on the embedded default: transformation-aware BasinCMA projection of "
        "the astronaut photo's face into the face DCGAN (gan_face_generate), composited back with "
        "Poisson blending. " + project_cli.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    project_cli.add_demo_arguments(demo)
    demo.set_defaults(func=project_cli.run_demo)

    project = sub.add_parser(
        "project",
        help="project the object in a photo (--box) into a generator, with the transform search",
        description=project_cli.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    project_cli.add_project_arguments(project)
    project.set_defaults(func=project_cli.run_project)

    train_encoder = sub.add_parser(
        "train-encoder",
        help="train an encoder E(x) -> z on generator samples (for --method encoder / hybrid)",
        description=train_encoder_cli.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train_encoder_cli.add_arguments(train_encoder)
    train_encoder.set_defaults(func=train_encoder_cli.run)

    bench = sub.add_parser(
        "bench",
        help="run the microbenchmarks and print a table per family",
        description="Run the microbenchmarks (reference vs native, with the ratio). "
        "Options after `bench` go to the runner: --device, --quick, --repeats, --only, --json.",
        add_help=False,
    )
    bench.set_defaults(func=_cmd_bench)

    refine = sub.add_parser(
        "refine",
        help="AdvLatGAN-z over many latents: sharded, resumable, torchrun-ready",
        description=refine_cli.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    refine_cli.add_arguments(refine)
    refine.set_defaults(func=refine_cli.run)

    edit = sub.add_parser(
        "edit",
        help="move latents toward target attributes (CG, SGF, InterFaceGAN, GANSpace; seed 000)",
        description=edit_cli.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    edit_cli.add_arguments(edit)
    edit.set_defaults(func=edit_cli.run)

    ifcvae = sub.add_parser(
        "ifcvae",
        help="train an IFcVAE-GAN and edit a binary attribute by switching y-hat (seed 004)",
        description=ifcvae_cli.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ifcvae_cli.add_arguments(ifcvae)

    info = sub.add_parser("info", help="print which implementation runs and the build's facts")
    info.add_argument("--device", default="cpu", help="device to report on (default: cpu)")
    info.set_defaults(func=_cmd_info)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    # `bench` hands everything after it to the benchmark runner, which has its own --help.
    args, args.extra = parser.parse_known_args(argv)
    if args.extra and args.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(args.extra)}")
    if hasattr(args, "threads"):  # subcommands that compute; `bench` sets its own
        _threads.configure_threads(args.threads, prog=f"latentx {args.command}")
    return args.func(args)


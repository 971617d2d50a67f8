"""Run the latentx microbenchmarks and print a table per family (``latentx bench``)."""

from __future__ import annotations

import argparse
import datetime
import json
import platform
from typing import Optional, Sequence

import torch

import latentx
from latentx import _threads
from latentx.benchmarks import (
    bench_advlat,
    bench_cma,
    bench_edit,
    bench_grid_sample,
    bench_ifgsm_step,
    bench_lpips,
    bench_projection,
    bench_time_to_quality,
)
from latentx.benchmarks.timing import format_table


BENCHMARKS = {
    "ifgsm_step": bench_ifgsm_step,
    "cma": bench_cma,
    "lpips": bench_lpips,
    "grid_sample": bench_grid_sample,
    "advlat": bench_advlat,
    "projection": bench_projection,
    "time_to_quality": bench_time_to_quality,
    "edit": bench_edit,
}


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"--repeats must be an integer >= 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="latentx bench", description=__doc__)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--quick", action="store_true", help="small sizes, a few seconds in all")
    p.add_argument("--repeats", type=_at_least_one, default=10, help="timed calls per variant (median)")
    p.add_argument("--only", choices=sorted(BENCHMARKS), action="append",
                   help="run only this benchmark (repeatable; default: all)")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON here")
    _threads.add_threads_argument(p)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    _threads.configure_threads(args.threads, prog="latentx bench")
    device = torch.device(args.device)
    info = latentx.backend(device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"latentx {latentx.__version__} | torch {torch.__version__} | {device} ({device_name}) | "
          f"{torch.get_num_threads()} threads | {datetime.date.today()}")
    print(f"backend: {info['impl']} ({info['reason']})")
    rows = []
    for name in args.only or BENCHMARKS:
        family = BENCHMARKS[name].run(device, args.quick, repeats=3 if args.quick else args.repeats)
        # One table per family, with only the columns its rows have (--json keeps every row).
        print(f"\n## {name}\n\n{format_table(family)}", flush=True)
        rows += family
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backend": info, "device": str(device), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

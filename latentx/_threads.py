"""CPU threads for the command-line tools: ``--threads`` and the oversubscription warning.

Every latentx op on the CPU runs an OpenMP parallel region, and OpenMP threads wait for each
other (spinning, by default) at the end of each one. When another busy process takes a core,
one thread of every region arrives late and the others spin until it does: on a 2-core
machine next to one busy process, ``latentx demo`` took 8.4 min instead of 37 s. So the
commands size torch's pool to the cores this process may use and say so when the machine is
busier than that.

Used by every ``latentx`` subcommand that computes (``demo``, ``project``, ``refine``,
``bench``): :func:`add_threads_argument` on its parser, :func:`configure_threads` before work.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, TextIO

import torch

__all__ = ["add_threads_argument", "available_cores", "configure_threads", "default_threads",
           "oversubscription_warning"]


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which a container or ``taskset``
    can narrow below ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """The default of ``--threads``: ``OMP_NUM_THREADS`` when it is set to a positive integer
    (torchrun sets it to 1 for several processes per machine, exactly to avoid
    oversubscription), else :func:`available_cores`."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return int(env)
    return available_cores()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"--threads must be an integer >= 1, got {value}")
    return value


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--threads N`` (default None: :func:`default_threads`) to ``parser``."""
    parser.add_argument(
        "--threads", type=_positive_int, default=None, metavar="N",
        help="CPU threads for torch and latentx's kernels (default: $OMP_NUM_THREADS when set, else "
             f"the cores available to this process, here {available_cores()}). On a busy machine "
             "use fewer: see README.md, Troubleshooting.")


def oversubscription_warning(threads: int, prog: str = "latentx") -> Optional[str]:
    """A warning when ``threads`` CPU threads will share their cores with other work, else None.

    Busy: the 1-minute load average (``os.getloadavg``; it counts runnable processes, this
    one's start included) exceeds the cores available, or ``threads`` itself exceeds them.
    """
    cores = available_cores()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this platform
        load = 0.0
    reasons = []
    if load > cores:
        reasons.append(f"the 1-minute load average is {load:.1f} on {cores} available core(s)")
    if threads > cores:
        reasons.append(f"--threads {threads} exceeds the {cores} available core(s)")
    if not reasons:
        return None
    return (f"{prog}: warning: the CPU is oversubscribed ({'; '.join(reasons)}). OpenMP threads wait "
            "for each other at every op, so a run can be many times slower (13x measured for "
            "`latentx demo` next to one busy process on 2 cores). Run on a quiet machine, or use "
            "--threads 1, or start with OMP_WAIT_POLICY=passive in the environment (it must be set "
            "before Python starts).")


def configure_threads(threads: Optional[int] = None, *, prog: str = "latentx",
                      stream: Optional[TextIO] = None, warn: bool = True) -> int:
    """Set torch's intra-op threads to ``threads`` (None: :func:`default_threads`) and print
    :func:`oversubscription_warning` to ``stream`` (default stderr) when it applies.

    Args:
        threads: CPU threads, an integer >= 1, or None.
        prog: names the command in the warning.
        warn: check the load and print the warning.

    Returns:
        The number of threads set.
    """
    if threads is None:
        threads = default_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1 or None, got {threads!r}")
    torch.set_num_threads(threads)
    if warn:
        message = oversubscription_warning(threads, prog)
        if message is not None:
            print(message, file=sys.stderr if stream is None else stream, flush=True)
    return threads

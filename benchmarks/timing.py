"""Shared timing helper: warm-up, synchronised timing, median of many runs, agreement checks."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch


@dataclass
class Timing:
    """Seconds per call over ``runs`` timed calls: median and interquartile range."""

    median: float
    q1: float
    q3: float
    runs: int

    @property
    def ms(self) -> float:
        return self.median * 1e3


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    fn: Callable[[], object],
    device: torch.device,
    *,
    warmup: int = 2,
    repeats: int = 10,
    max_seconds: Optional[float] = None,
) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then up to ``repeats`` timed ones (stopping
    early once ``max_seconds`` of timed calls have run, but never under 3), each between
    device synchronisations."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    spent = 0.0
    while len(times) < repeats and (max_seconds is None or spent < max_seconds or len(times) < 3):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
        spent += times[-1]
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else times * 3
    return Timing(statistics.median(times), quartiles[0], quartiles[2], len(times))


def assert_agree(actual: torch.Tensor, expected: torch.Tensor, what: str, *, exact: bool = False,
                 rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """Refuse to time a variant whose result differs from the reference."""
    try:
        if exact:
            torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)
        else:
            torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=True)
    except AssertionError as err:
        raise AssertionError(f"{what}: result disagrees with the reference; not timing it.\n{err}")


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def format_table(rows: Iterable[dict]) -> str:
    """Rows (dicts) as one aligned Markdown table; columns in order of first appearance."""
    rows = list(rows)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    cells = [[_fmt(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(columns), sep] + [line(r) for r in cells])


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def native_unavailable(device: str) -> Optional[str]:
    """Why latentx's native kernels cannot be measured on ``device`` ("cuda" without a CUDA
    device, or a backend that runs the reference), or None when they can."""
    from latentx import ops

    if device.startswith("cuda") and not torch.cuda.is_available():
        return "no CUDA device"
    info = ops.backend(device)
    if info["impl"] != "native":
        return f"latentx runs the reference on {device}: {info['reason']}"
    return None

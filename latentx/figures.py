"""Figures the command-line tools write, drawn with matplotlib (the ``figures`` extra:
``pip install 'latentx[figures]'``; ``scripts/install.sh`` installs it).

matplotlib's object-oriented API (``matplotlib.figure.Figure``) is used rather than pyplot:
no global figure state and no GUI backend, so it is safe in worker processes and threads.
"""

from __future__ import annotations

import io
import os
from typing import Optional, Union

import numpy as np

from latentx._atomic import atomic_write_bytes

__all__ = ["matplotlib_available", "plot_projection_losses"]

PathLike = Union[str, os.PathLike]


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure_class():
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("latentx's figures need matplotlib: pip install 'latentx[figures]' "
                          "(scripts/install.sh installs it)") from e
    return Figure


def plot_projection_losses(path: PathLike, transform_best: Optional[np.ndarray], latent_best: np.ndarray,
                           title: str):
    """The loss curves of one projection as a PNG at ``path`` (written atomically).

    transform_best: [n] best photo-frame masked loss per CMA generation of the transform search
        (None: no search ran); drawn on the left.
    latent_best: [T] best-over-seeds generator-frame masked loss per evaluation of the latent
        search (Adam / L-BFGS steps or CMA generations), on a log scale.
    Returns the ``matplotlib.figure.Figure`` (already saved; for inspection).
    """
    Figure = _figure_class()
    from matplotlib.ticker import MaxNLocator
    latent_best = np.asarray(latent_best, dtype=np.float64)
    ncols = 2 if transform_best is not None else 1
    fig = Figure(figsize=(5 * ncols, 3.6))
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    if transform_best is not None:
        ax = axes[0]
        ax.plot(np.arange(1, len(transform_best) + 1), np.asarray(transform_best, dtype=np.float64),
                marker="o", ms=3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("CMA generation (transform search)")
        ax.set_ylabel("generation's best L_mask (photo frame)")
        ax.set_title("stage 1: transform φ")
        ax.grid(alpha=0.3)
    ax = axes[-1]
    ax.plot(np.arange(1, len(latent_best) + 1), latent_best)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("evaluation step (latent search)")
    ax.set_ylabel("best-of-seeds L_mask (generator frame)")
    # a log axis needs positive values; an all-zero or empty curve stays linear
    if latent_best.size and np.all(latent_best > 0):
        ax.set_yscale("log")
    ax.set_title("stage 2: latent z")
    ax.grid(alpha=0.3, which="both")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(path, buffer.getvalue())
    return fig

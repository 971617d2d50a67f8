"""Write a PNG that shows aliasing side by side (no matplotlib: tiles written with skimage.io).

Rows: the zone plate and the astronaut photograph (grey, 512 x 512), each shrunk 4x to
128 x 128. Columns, left to right: F.grid_sample (bilinear), Gaussian blur (σ = 2) then
F.grid_sample, latentx filtered_grid_sample (tent), latentx filtered_grid_sample (Gaussian),
and the ideal result (the DFT band-limited to the output's Nyquist frequency, then sampled).
Tiles are shown at 2x with nearest-neighbour pixels and separated by white lines.

Usage: python -m latentx.benchmarks.aliasing_figure [PATH] (default aliasing_4x.png).
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn.functional as F

from latentx.benchmarks.bench_grid_sample import QUALITY_SIZE, astronaut_grey, band_split, methods, zone_plate

FACTOR = 4
ZOOM = 2
GAP = 4


def tiles(image: torch.Tensor) -> list[np.ndarray]:
    size = image.shape[-1]
    out = size // FACTOR
    grid = F.affine_grid(torch.eye(2, 3, dtype=torch.float64)[None], [1, 1, out, out], align_corners=False)
    x = image[None, None]
    results = [fn(x, grid)[0, 0] for fn in methods(size / out).values()]
    ideal = band_split(image, 1 / (2 * FACTOR))
    # Sample the band-limited image at the output pixel centres: input coordinate k(o+0.5)-0.5,
    # between pixels for even k, so interpolate the band-limited (smooth) image bilinearly there.
    results.append(F.grid_sample(ideal[None, None], grid, align_corners=False)[0, 0])
    lo, hi = float(image.min()), float(image.max())
    return [np.kron(((r.clamp(lo, hi) - lo) / (hi - lo)).numpy(), np.ones((ZOOM, ZOOM))) for r in results]


def figure() -> np.ndarray:
    rows = [tiles(zone_plate(QUALITY_SIZE)), tiles(astronaut_grey(QUALITY_SIZE))]
    t = rows[0][0].shape[0]
    canvas = np.ones((len(rows) * (t + GAP) + GAP, len(rows[0]) * (t + GAP) + GAP))
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            y, x = GAP + r * (t + GAP), GAP + c * (t + GAP)
            canvas[y:y + t, x:x + t] = tile
    return (canvas * 255).round().astype(np.uint8)


def main(argv: list[str]) -> int:
    from skimage import io

    path = argv[0] if argv else "aliasing_4x.png"
    io.imsave(path, figure(), check_contrast=False)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

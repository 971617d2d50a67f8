"""Seed 003's Table 1 on latentx's real generator: which optimiser projects best?

Targets, all 128 × 128 photo frames with an object box (the mask is 1 inside, 0.3 outside):

(a) synthetic — G(z*) of the face DCGAN under a known transform φ* = (s_x, s_y, t_x, t_y, γ):
    scaled to 40–65 % of the frame (aspect ±10 %), shifted anywhere it fits, brightness
    γ ∈ [−0.15, 0.15], over a smooth random colour background. The box a user would draw is
    the generator's typical face box mapped by ψ*, each edge jittered by up to 10 % of its
    side (an annotation, not the answer). "transform error" compares the φ the method used
    with φ*: the mean distance, in photo pixels, between where the two put the generator
    frame's four corners, and |γ − γ*|.
(b) real photos — the astronaut's face (``skimage.data.astronaut()``) cropped at several
    sizes and offsets, and faces from ``skimage.data.lfw_subset()`` (grey, 25 × 25, upscaled)
    placed off-centre on a smooth background.

Rows (seed 003 Table 1): Adam, L-BFGS, CMA, CMA+Adam, BasinCMA, Adam+Transform,
BasinCMA+Transform, all through ``latentx.projection.project`` (the transform rows search φ
first, stage 1; the others use the identity: the whole frame resized to the generator's),
and one ablation, Adam with φ₀ (the box-based start of the search) and no search. Seed 002's
learning-based family: Encoder (z = E(T_φ(y)), no optimisation) and Hybrid (Adam from
z ~ N(E(T_φ(y)), 0.5·I), seed 0 at E's guess), with the identity, with φ₀, and Hybrid after
the transform search. The encoder is trained here with ``latentx.projection.train_encoder``
on the face DCGAN's samples (``--encoder-*``; checkpoint ``checkpoints/face_encoder.pt``,
resumed when present, so a rerun does not train again).
Columns: masked L1 / L2 / LPIPS in the photo frame (the seed's fair comparison: projections
inverted to the photo, loss inside the mask), mean over seeds and best over seeds (each
metric's minimum over the seeds), averaged over the targets; the budget actually spent, in
generator forward and backward passes per (image, seed) problem over all stages
(``ProjectionResult.evaluations``: stage 1, stage 2 and the one scoring forward); wall time
and process CPU time per target (the CPU time is the comparable one when the machine is
shared).

Budgets. ``--budget reduced`` (32 synthetic + 8 real targets, 8 seeds) gives every method
the same latent-stage budget of 150 generator evaluations per seed — Adam and Hybrid 150
steps, L-BFGS 150 forward+backward evaluations (its line searches included), CMA 150
generations (forward passes only), CMA+Adam 50 generations + 100 steps, BasinCMA 5
generations × 20 steps with the last 70; Encoder none — and the transform rows 6 × 15 more
for stage 1. ``--budget paper`` is the seed's Appendix A: Adam, Hybrid and L-BFGS 500, CMA
300, CMA+Adam 100 + 500, BasinCMA 30 × 30 with the last 300, the transform 30 × 30, 18
seeds.

Progress is saved after every (group, row) to ``<out>/projection_table_partial.json``; a
rerun with the same settings resumes from it.

    python experiments/projection_table.py                            # reduced budget
    python experiments/projection_table.py --synthetic 16             # the recorded run
    python experiments/projection_table.py --budget paper --seeds 18  # seed 003's budget
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from latentx import models
from latentx._atomic import atomic_write_json
from latentx.cli.project import ASTRONAUT_FACE_BOX
from latentx.projection import default_lpips, invert_images, project, train_encoder
from latentx.transforms import SpatialTransform

HERE = Path(__file__).resolve().parent
SIZE = 128  # photo frame of every target
ROWS = (  # (row name, method, transform search)
    ("Adam", "adam", False),
    ("L-BFGS", "lbfgs", False),
    ("CMA", "cma", False),
    ("CMA+Adam", "cma+adam", False),
    ("BasinCMA", "basincma", False),
    ("Adam+Transform", "adam", True),
    ("BasinCMA+Transform", "basincma", True),
    ("Adam+φ₀ (ablation)", "adam", "init"),  # φ₀ from the box, no search: what stage 1 adds
    ("Encoder", "encoder", False),           # seed 002: E alone
    ("Hybrid", "hybrid", False),             # seed 002: E's guess, then Adam
    ("Encoder+φ₀", "encoder", "init"),
    ("Hybrid+φ₀", "hybrid", "init"),
    ("Hybrid+Transform", "hybrid", True),
)
# the encoder of the Encoder / Hybrid rows (trained by this script when absent; --encoder-*)
ENCODER = HERE / "checkpoints" / "face_encoder.pt"
ENCODER_SETTINGS = dict(steps=500, batch_size=64, lr=1e-3, width=16, seed=0)
BUDGETS = {
    # every method: 150 generator evaluations per seed in the latent stage
    "reduced": dict(adam=dict(adam_steps=150), hybrid=dict(adam_steps=150), encoder=dict(),
                    lbfgs=dict(lbfgs_steps=150), cma=dict(cma_steps=150),
                    **{"cma+adam": dict(cma_steps=50, adam_steps=100)},
                    basincma=dict(meta_steps=5, grad_steps=20, last_grad_steps=70),
                    transform=dict(transform_meta_steps=6, transform_grad_steps=15)),
    # seed 003 Appendix A
    "paper": dict(adam=dict(adam_steps=500), hybrid=dict(adam_steps=500), encoder=dict(),
                  lbfgs=dict(lbfgs_steps=500), cma=dict(cma_steps=300),
                  **{"cma+adam": dict(cma_steps=100, adam_steps=500)},
                  basincma=dict(meta_steps=30, grad_steps=30, last_grad_steps=300),
                  transform=dict(transform_meta_steps=30, transform_grad_steps=30)),
}


# --- targets ------------------------------------------------------------------------------------

def smooth_background(n: int, generator: torch.Generator, amplitude: float = 0.4) -> torch.Tensor:
    """[n, 3, SIZE, SIZE] low-frequency colour noise (4 × 4 noise, bicubic upsampling)."""
    coarse = torch.randn(n, 3, 4, 4, generator=generator) * amplitude
    return F.interpolate(coarse, size=(SIZE, SIZE), mode="bicubic", align_corners=False).clamp(-1, 1)


def box_pixels(psi: SpatialTransform, box) -> torch.Tensor:
    """[N, 4] pixels (x0, y0, x1, y1) of a generator-frame box (normalised) under ψ."""
    s, t = psi.params[:, :2], psi.params[:, 2:]
    lo = s * torch.tensor(box[:2], dtype=s.dtype) + t
    hi = s * torch.tensor(box[2:], dtype=s.dtype) + t
    return torch.cat([(lo + 1) / 2, (hi + 1) / 2], 1) * SIZE


def synthetic_targets(G, n: int, seed: int) -> dict:
    """G(z*) under known φ* over a smooth background, with jittered boxes."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, G.z_dim, generator=g).clamp(-G.truncation, G.truncation)
    u = lambda *shape: torch.rand(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    s_x = 0.40 + 0.25 * u(n)
    s_y = s_x * (0.9 + 0.2 * u(n))
    t_x = (1 - s_x) * (2 * u(n) - 1) * 0.95
    t_y = (1 - s_y) * (2 * u(n) - 1) * 0.95
    gamma = 0.3 * u(n) - 0.15
    phi = torch.stack([s_x, s_y, t_x, t_y, gamma], 1)
    with torch.no_grad():
        drawn = G(z).float()
        inv, cover = invert_images(drawn, phi.float(), (SIZE, SIZE))
        images = torch.where(cover, inv, smooth_background(n, g)).clamp(-1, 1)
    box = box_pixels(SpatialTransform(phi[:, :4]), G.object_box)
    side = torch.cat([box[:, 2:] - box[:, :2]] * 2, 1)
    box = (box + side * (0.2 * u(n, 4) - 0.1)).clamp(0, SIZE)
    return {"images": images, "boxes": box.tolist(), "phi_true": phi,
            "names": [f"synthetic {i}" for i in range(n)]}


def astronaut_targets() -> tuple[list, list, list]:
    """The astronaut's face at three crop sizes and offsets: images [3, SIZE, SIZE], boxes, names."""
    from skimage import data

    photo = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float()[None] / 127.5 - 1
    H, W = photo.shape[2:]
    x0, y0, x1, y1 = ASTRONAUT_FACE_BOX
    side0 = max(x1 - x0, y1 - y0)
    images, boxes, names = [], [], []
    # (crop side / face side, crop centre offset from the face centre in crop sides)
    for context, (ox, oy) in ((1.6, (0.0, 0.0)), (2.0, (0.22, -0.15)), (2.5, (-0.25, 0.2)), (3.0, (0.2, 0.25))):
        side = context * side0
        cx, cy = (x0 + x1) / 2 + ox * side, (y0 + y1) / 2 + oy * side
        kappa = SpatialTransform(torch.tensor([side / W, side / H, 2 * cx / W - 1, 2 * cy / H - 1]))
        images.append(kappa.apply(photo, (SIZE, SIZE), padding_mode="border")[0])
        sc = SIZE / side
        left, top = cx - side / 2, cy - side / 2
        boxes.append([max(0.0, (x0 - left) * sc), max(0.0, (y0 - top) * sc),
                      min(float(SIZE), (x1 - left) * sc), min(float(SIZE), (y1 - top) * sc)])
        names.append(f"astronaut ×{context} offset ({ox:+.2f}, {oy:+.2f})")
    return images, boxes, names


def lfw_targets(seed: int) -> tuple[list, list, list]:
    """Four LFW faces (grey 25 × 25 → 56 × 56) placed off-centre on a smooth background."""
    from skimage import data

    faces = torch.from_numpy(data.lfw_subset()[:100]).float()  # the first 100 are faces
    g = torch.Generator().manual_seed(seed)
    background = smooth_background(4, g, amplitude=0.3)
    images, boxes, names = [], [], []
    for k, (index, (px, py)) in enumerate(((3, (10, 14)), (27, (62, 8)), (51, (14, 66)), (88, (58, 60)))):
        face = F.interpolate(faces[index][None, None] * 2 - 1, size=(56, 56), mode="bicubic",
                             align_corners=False).clamp(-1, 1)
        img = background[k].clone()
        img[:, py:py + 56, px:px + 56] = face[0].expand(3, -1, -1)
        images.append(img)
        boxes.append([float(px), float(py), float(px + 56), float(py + 56)])
        names.append(f"lfw_subset face {index} at ({px}, {py})")
    return images, boxes, names


def real_targets(seed: int) -> dict:
    a_img, a_box, a_name = astronaut_targets()
    l_img, l_box, l_name = lfw_targets(seed)
    return {"images": torch.stack(a_img + l_img), "boxes": a_box + l_box, "names": a_name + l_name}


# --- measures -----------------------------------------------------------------------------------

def transform_error(phi: torch.Tensor, phi_true: torch.Tensor) -> dict:
    """Mean corner distance (photo pixels) between the generator frames placed by ψ and ψ*,
    and |γ − γ*|, averaged over targets."""
    corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)

    def place(p):
        return corners[None] * p[:, None, :2] + p[:, None, 2:4]  # [N, 4, 2] normalised

    d = (place(phi.double()) - place(phi_true.double())) * SIZE / 2
    return {"corner px": float(d.norm(dim=-1).mean()), "|dγ|": float((phi[:, 4].double() - phi_true[:, 4]).abs().mean())}


def summarise(res, seconds: float, cpu_seconds: float, phi_true=None) -> dict:
    n = res.z.shape[0]
    row = {"seconds per target": seconds / n, "CPU seconds per target": cpu_seconds / n}
    # the budget spent: generator passes per (image, seed) problem, all stages, mean over targets
    per_problem = res.evaluations_per_problem()
    for kind in ("forward", "backward"):
        row[f"G {kind} / seed"] = float(sum(stage[kind] for stage in per_problem.values()).mean())
    for k in ("l1", "l2", "lpips"):
        v = res.losses[k].double()
        row[f"mean {k}"] = float(v.mean(1).mean())
        row[f"best {k}"] = float(v.min(1).values.mean())
    if phi_true is not None:
        row.update(transform_error(res.phi.cpu(), phi_true))
        row["box φ₀ corner px"] = transform_error(res.phi0.cpu(), phi_true)["corner px"]
    return row


# --- the run ------------------------------------------------------------------------------------

def settings_for(budget: str, method: str, transform, seeds: int) -> dict:
    """project()'s keyword arguments for a row (``transform``: True, False or "init")."""
    b = BUDGETS[budget]
    kw = dict(b[method], seeds=seeds)
    if transform is True:
        kw.update(b["transform"])
    return kw


def encoder_for(G, args) -> dict:
    """Train (or resume, or just load) the Encoder / Hybrid rows' encoder; its settings and
    training record."""
    settings = dict(steps=args.encoder_steps, batch_size=args.encoder_batch, lr=args.encoder_lr,
                    width=args.encoder_width, seed=0)
    args.encoder.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    trained = train_encoder(G, checkpoint=args.encoder, checkpoint_every=50, progress=not args.quiet, **settings)
    hist = trained.history
    return {"path": str(args.encoder.relative_to(HERE) if args.encoder.is_relative_to(HERE) else args.encoder),
            "settings": settings, "resumed_from": trained.resumed_from,
            "seconds this run": time.perf_counter() - t0,
            "loss first 50 steps": float(hist[:50].mean()), "loss last 50 steps": float(hist[-50:].mean()),
            "weights": sum(p.numel() for p in trained.encoder.parameters()), "encoder": trained.encoder}


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    G = models.load("face-dcgan")
    lp, perceptual = default_lpips("alex")
    enc = encoder_for(G, args)
    encoder = enc.pop("encoder")
    print(f"encoder: {enc}")
    groups = {"synthetic": synthetic_targets(G, args.synthetic, args.seed), "real": real_targets(args.seed)}
    config = {"budget": args.budget, "seeds": args.seeds, "synthetic": args.synthetic, "seed": args.seed,
              "threads": args.threads, "perceptual": perceptual,
              "encoder": {k: enc[k] for k in ("path", "settings", "weights")}}
    partial_path = args.out / "projection_table_partial.json"
    done = {}
    if partial_path.exists():
        saved = json.loads(partial_path.read_text())
        if saved.get("config") == config:
            done = saved["rows"]
            print(f"resuming: {len(done)} (group, row) results from {partial_path}")
    for group, tg in groups.items():
        for name, method, transform in ROWS:
            key = f"{group} | {name}"
            if key in done:
                continue
            kw = settings_for(args.budget, method, transform, args.seeds)
            t0, c0 = time.perf_counter(), time.process_time()
            extra = {"encoder": encoder} if method in ("encoder", "hybrid") else {}
            res = project(G, tg["images"], boxes=tg["boxes"], method=method, transform=transform,
                          seed=args.seed, perceptual=lp, progress=not args.quiet, **kw, **extra)
            row = summarise(res, time.perf_counter() - t0, time.process_time() - c0, tg.get("phi_true"))
            row["settings"] = kw
            row["per target best total"] = res.losses["total"].min(1).values.tolist()
            done[key] = row
            print(f"{key}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)))
            atomic_write_json(partial_path, {"config": config, "rows": done})
    return {"config": config, "rows": done, "targets": {g: tg["names"] for g, tg in groups.items()},
            "encoder training": enc}


def markdown(result: dict) -> str:
    cfg = result["config"]
    enc = cfg["encoder"]
    lines = [f"Budget `{cfg['budget']}`, {cfg['seeds']} seeds, {cfg['synthetic']} synthetic + 8 real targets "
             f"(128 × 128), seed {cfg['seed']}, {cfg['threads']} threads; perceptual metric: {cfg['perceptual']}.",
             "",
             f"Encoder (`{enc['path']}`, {enc['weights']:,} weights): `train_encoder` with "
             + ", ".join(f"{k}={v}" for k, v in enc["settings"].items()) + ".",
             "",
             "G fwd / bwd: generator forward and backward passes per (image, seed) problem, all stages "
             "(the budget actually spent).", ""]
    for group in ("synthetic", "real"):
        cols = ["mean l1", "mean l2", "mean lpips", "best l1", "best l2", "best lpips", "G forward / seed",
                "G backward / seed", "seconds per target", "CPU seconds per target"]
        if group == "synthetic":
            cols += ["corner px", "|dγ|"]
        header = [c.replace("|dγ|", "mean abs dγ").replace("G forward", "G fwd").replace("G backward", "G bwd")
                  for c in cols]  # a bare | would split the cell
        lines += [f"### ({'a' if group == 'synthetic' else 'b'}) {group} targets", "",
                  "| method | " + " | ".join(header) + " |", "|---|" + "---|" * len(cols)]
        rows = {k.split(" | ", 1)[1]: v for k, v in result["rows"].items() if k.startswith(group + " |")}
        best = {c: min(r[c] for r in rows.values()) for c in cols if "seconds" not in c and "/ seed" not in c}
        for name, _, _ in ROWS:
            if name not in rows:
                continue
            r = rows[name]
            cells = []
            for c in cols:
                if "/ seed" in c:
                    v = f"{r[c]:.0f}"
                else:
                    v = f"{r[c]:.1f}" if "seconds" in c or c == "corner px" else f"{r[c]:.4f}"
                cells.append(f"**{v}**" if c in best and r[c] == best[c] else v)
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    init = [r["box φ₀ corner px"] for k, r in result["rows"].items() if k.startswith("synthetic |")]
    if init:
        lines.append(f"φ₀ from the jittered boxes alone (the transform search's start): corner error {init[0]:.1f} px.")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", choices=sorted(BUDGETS), default="reduced")
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--synthetic", type=int, default=32, help="synthetic targets")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=int(os.environ.get("LATENTX_THREADS", torch.get_num_threads())))
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--encoder", type=Path, default=ENCODER,
                   help="the Encoder / Hybrid rows' encoder checkpoint: trained to --encoder-steps here "
                        "(resumed when the file holds fewer steps with the same settings)")
    p.add_argument("--encoder-steps", type=int, default=ENCODER_SETTINGS["steps"])
    p.add_argument("--encoder-batch", type=int, default=ENCODER_SETTINGS["batch_size"])
    p.add_argument("--encoder-lr", type=float, default=ENCODER_SETTINGS["lr"])
    p.add_argument("--encoder-width", type=int, default=ENCODER_SETTINGS["width"])
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = run(args)
    result["total seconds"] = time.perf_counter() - t0
    stem = "projection_table" if args.budget == "reduced" else f"projection_table_{args.budget}"
    atomic_write_json(args.out / f"{stem}.json", result)
    (args.out / f"{stem}.md").write_text(markdown(result))
    (args.out / "projection_table_partial.json").unlink(missing_ok=True)  # complete: nothing to resume
    print(markdown(result))
    print(f"wrote {args.out / (stem + '.md')} ({result['total seconds'] / 60:.1f} min)")


if __name__ == "__main__":
    main()

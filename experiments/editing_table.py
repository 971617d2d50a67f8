"""Seed 000's Table 1 on latentx's real generator: which method edits attributes best (MDS)?

Generator: the 64×64 face DCGAN (``latentx.models.load("face-dcgan")``). Steering model Φ:
``latentx.attributes.load("face")`` — 12 attributes (7 expression probabilities, yaw, pitch,
roll, mouth width, brightness; continuous ones through the saved empirical-CDF normaliser).
Second, independent judge: ``latentx.attributes.load("face-judge")`` (OpenCV Haar cascades,
no network shared with Φ); it scores the edits too, so an edit that fools Φ without changing
the face shows up as a gap between the two.

One sample bank of ``--bank`` latents z ~ N(0, I) with Φ(G(z)) (bank seed 0) serves every
seed; per seed (the SVMs' shuffles, GANSpace's held-out latents, F's initialisation and
batches, and the sources depend on it):

1. InterFaceGAN boundaries for every attribute (linear SVM on the top / bottom 2 %, C = 1);
2. GANSpace directions (PCA on the first block's activations [512·4·4], regressed back to z;
   per target the component among the first ``--components`` and the sign that move it most
   on ``--held-out`` held-out latents); the auxiliary mapping F (``--mapping-steps`` Adam
   steps, batch 8, lr 2e-4, trained as a denoiser with noise 0.5 — EDITING.md: with the
   papers' plain loss F ignores c);
3. for each target: ``--sources`` fresh latents whose target attribute is below ``low``;
   the goal is ``goal`` (reached when the attribute is ≥ goal);
4. each method's curve over ``--steps`` strengths: InterFaceGAN and GANSpace move along their
   direction by s ∈ linspace(0, 3) (σ units), SGF (λ = ``--sgf-lambda``) and CG (α =
   ``--cg-alpha``) take their iterations; every method stops a source at its goal, within
   0.01 (``edit.linear_path``, ``edit.sgf``, ``edit.conjugate_gradient``) — the curve's points
   are the steps;
5. MDS (``latentx.edit.mds``): at each point, accuracy = share of sources at the goal,
   disentanglement = mean over sources of 1 − (other attributes moved by > t)/(M − 1),
   area under disentanglement vs accuracy; t = 0.5 (the paper's) and t = 0.25 (stricter:
   0.5 is rarely exceeded by probabilities that start low).

The judge's MDS uses the judge's counterpart of the target (happy → smile, yaw → its profile
yaw; surprise has none) with its goal at the same bank quantile as the steering goal (the
judge's scale is its own), over the sources the judge puts below that goal at the start, and
the judge's other scores for disentanglement.

Writes ``results/editing_table.{md,json}``, ``figures/editing_mds_curves.png`` and
``figures/editing_grid_<target>.png``. Work (the bank, F, partial results) goes to ``--work``
and a rerun resumes from it.

    python experiments/editing_table.py --seeds 3 --bank 6000 --sources 80 --steps 12 \
        --components 30 --held-out 64 --mapping-steps 4000     # the recorded run (2 CPU cores)
    python experiments/editing_table.py --seeds 5 --bank 20000 --sources 300 --components 80
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from latentx import attributes, edit, models
from latentx._atomic import atomic_torch_save, atomic_write_json
from latentx.cli.edit import first_layer

HERE = Path(__file__).resolve().parent
METHODS = ("GANSpace", "InterFaceGAN", "SGF", "CG")
# (attribute, sources start below, goal): every target is raised from low to goal.
TARGETS = (("happy", 0.2, 0.5), ("surprise", 0.1, 0.3), ("yaw", 0.3, 0.7))
STRENGTH = 3.0      # linear methods: largest step, σ units (InterFaceGAN's linear_interpolate uses ±3)
THRESHOLDS = (0.5, 0.25)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--bank", type=int, default=10_000, help="sample bank size (one bank, seed 0)")
    p.add_argument("--sources", type=int, default=100, help="edited latents per target and seed")
    p.add_argument("--steps", type=int, default=15, help="points on each method's curve")
    p.add_argument("--held-out", type=int, default=96, help="latents GANSpace's component choice is made on")
    p.add_argument("--mapping-steps", type=int, default=20_000)
    p.add_argument("--mapping-noise", type=float, default=0.5)
    p.add_argument("--components", type=int, default=30, help="GANSpace components searched (its default: 80)")
    p.add_argument("--sgf-lambda", type=float, default=1.0, help="SGF's δc = λ(c₁ − c₀) per step")
    p.add_argument("--cg-alpha", type=float, default=1.0, help="CG's δc_i = α(c₁ − c_i)")
    p.add_argument("--work", default=str(HERE / "work" / "editing"), help="banks, F and partial results (resumable)")
    p.add_argument("--out", default=str(HERE), help="writes results/ and figures/ here")
    p.add_argument("--device", default="cpu")
    p.add_argument("--chunk-size", type=int, default=500)
    return p.parse_args(argv)


def evaluate(G, model, z: torch.Tensor, chunk: int) -> torch.Tensor:
    """model(G(z)) for z [..., d] → [..., M], in chunks."""
    flat = z.reshape(-1, z.shape[-1])
    with torch.no_grad():
        c = torch.cat([model(G(part)) for part in flat.split(chunk)])
    return c.reshape(*z.shape[:-1], c.shape[-1])


def draw_sources(G, phi, index: int, low: float, n: int, seed: int, chunk: int) -> torch.Tensor:
    """n latents whose attribute ``index`` is below ``low`` (rejection from N(0, I))."""
    gen = torch.Generator().manual_seed(seed)
    kept, have = [], 0
    for _ in range(200):
        z = torch.randn(chunk, G.z_dim, generator=gen)
        ok = evaluate(G, phi, z, chunk)[:, index] < low
        kept.append(z[ok])
        have += int(ok.sum())
        if have >= n:
            return torch.cat(kept)[:n]
    raise RuntimeError(f"only {have} of {n} sources with attribute {index} < {low} in {200 * chunk} draws")


def run_seed(seed: int, args, G, phi, judge, bank, judge_bank, work: Path) -> dict:
    device = torch.device(args.device)
    timings = {}
    t0 = time.time()
    boundaries = edit.interfacegan_boundaries(bank, seed=seed, device=device)
    timings["interfacegan_fit_s"] = time.time() - t0
    t0 = time.time()
    directions = edit.ganspace_directions(bank, args.components, layer=first_layer(G), generator=G, progress=False)
    held_out = torch.randn(args.held_out, G.z_dim, generator=torch.Generator().manual_seed(3000 + seed))
    chosen = edit.choose_components(directions, G, phi, held_out, [t for t, _, _ in TARGETS], progress=False)
    timings["ganspace_fit_s"] = time.time() - t0
    t0 = time.time()
    mapping = edit.train_mapping(bank, steps=args.mapping_steps, noise=args.mapping_noise, seed=seed,
                                 device=device, checkpoint=str(work / f"mapping_{seed}.pt"), progress=False)
    timings["mapping_fit_s"] = time.time() - t0

    record = {"seed": seed, "timings": timings, "boundary_accuracy": dict(zip(bank.names, boundaries.accuracy.tolist())),
              "ganspace_choice": {k: [int(v[0]), int(v[1])] for k, v in chosen.items()}, "targets": {}}
    for t_i, (name, low, goal) in enumerate(TARGETS):
        index = phi.names.index(name)
        z0 = draw_sources(G, phi, index, low, args.sources, 2000 + 100 * seed + t_i, args.chunk_size)
        q = float((bank.attributes[:, index] < goal).float().mean())
        j_name = judge.counterpart.get(name)
        j_index = judge.names.index(j_name) if j_name else None
        j_goal = float(torch.quantile(judge_bank[:, j_index], q)) if j_name else None
        curves = {}
        comp, sign = chosen[name]
        directions_of = {"InterFaceGAN": boundaries.normals[index],
                         "GANSpace": directions.components[comp] * sign}
        for method in METHODS:
            t0 = time.time()
            if method in directions_of:
                res = edit.linear_path(G, phi, z0, directions_of[method], {name: goal}, strength=STRENGTH,
                                       steps=args.steps, chunk_size=args.chunk_size, progress=False,
                                       return_trajectory=True)
            else:
                fn = edit.conjugate_gradient if method == "CG" else edit.sgf
                options = {"alpha": args.cg_alpha} if method == "CG" else {"lam": args.sgf_lambda}
                res = fn(G, phi, mapping, z0, {name: goal}, steps=args.steps, chunk_size=args.chunk_size,
                         progress=False, return_trajectory=True, **options)
            seconds = time.time() - t0
            cz, cc = res.trajectory_z, res.trajectory_attributes
            jc = evaluate(G, judge, cz, args.chunk_size)
            curves[method] = (cz, cc, jc)
            row = {"seconds": seconds, "final_mean": float(cc[-1, :, index].mean()),
                   "accuracy_final": float(res.converged.float().mean()),
                   "mean_steps": float(res.steps.float().mean())}
            m = edit.mds(cc[0], cc, index, goal, threshold=0.5, strict_threshold=0.25)
            row.update({"mds@0.5": m.mds, "mds@0.25": m.mds_strict,
                        "curve": {"accuracy": m.accuracy.tolist(), "disentanglement@0.5": m.disentanglement.tolist(),
                                  "disentanglement@0.25": m.disentanglement_strict.tolist()}})
            if j_name and bool((jc[0, :, j_index] < j_goal).any()):
                # Only sources the judge sees below its goal count: one it already puts past the goal
                # would count as reached by a method that did nothing.
                below = jc[0, :, j_index] < j_goal
                mj = edit.mds(jc[0, below], jc[:, below], j_index, j_goal, threshold=0.5, strict_threshold=0.25)
                row.update({"judge_mds@0.5": mj.mds, "judge_mds@0.25": mj.mds_strict, "judge_sources": int(below.sum()),
                            "judge_accuracy_final": float(mj.accuracy[-1]),
                            "judge_curve": {"accuracy": mj.accuracy.tolist(),
                                            "disentanglement@0.5": mj.disentanglement.tolist(),
                                            "disentanglement@0.25": mj.disentanglement_strict.tolist()}})
            record["targets"].setdefault(name, {})[method] = row
            print(f"seed {seed} {name:>9} {method:>12}: MDS@0.5 {row['mds@0.5']:.3f} MDS@0.25 {row['mds@0.25']:.3f}"
                  + (f" judge@0.25 {row['judge_mds@0.25']:.3f}" if j_name else "")
                  + f"  acc {row['accuracy_final']:.2f} steps {row['mean_steps']:.1f}  {seconds:.1f}s", flush=True)
        record["targets"][name]["_setting"] = {"low": low, "goal": goal, "judge": j_name, "judge_goal": j_goal,
                                               "bank_quantile": q}
        if seed == 0:
            grid_figure(G, curves, name, Path(args.out) / "figures" / f"editing_grid_{name}.png", args.chunk_size)
    return record


def grid_figure(G, curves: dict, name: str, path: Path, chunk: int, sources: int = 4, columns: int = 6) -> None:
    """The same ``sources`` latents edited by every method: a block of rows per source (one
    row per method), columns evenly spaced along the curve."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = next(iter(curves.values()))[0].shape[0]
    cols = np.linspace(0, steps - 1, columns).round().astype(int)
    rows = []
    for i in range(sources):
        for method in METHODS:
            z = curves[method][0][cols, i]
            with torch.no_grad():
                imgs = G(z).cpu()
            rows.append(torch.cat(list(imgs), dim=2))                      # [3, H, W·columns]
    grid = torch.cat(rows, dim=1).clamp(-1, 1).add(1).div(2).permute(1, 2, 0).numpy()
    h = grid.shape[0] // len(rows)
    fig, ax = plt.subplots(figsize=(columns * 1.1 + 1.5, len(rows) * 1.1))
    ax.imshow(grid)
    ax.set_yticks([h * (r + 0.5) for r in range(len(rows))])
    ax.set_yticklabels([f"source {r // len(METHODS)}: {METHODS[r % len(METHODS)]}" for r in range(len(rows))], fontsize=7)
    w = grid.shape[1] // columns
    ax.set_xticks([w * (c + 0.5) for c in range(columns)])
    ax.set_xticklabels([str(c) for c in cols])
    ax.set_xlabel("step along the edit (strength index; SGF / CG: iteration)")
    ax.set_ylabel("source latent and method")
    ax.set_title(f"raising '{name}': the same sources edited by each method")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    # A 256-colour palette keeps the photo grid readable at a third of the size.
    from PIL import Image
    Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)


def curves_figure(records: list[dict], path: Path) -> None:
    """MDS curves (disentanglement vs accuracy, t = 0.25) of seed 0, a panel per target, plus
    the judge's."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = [t for t, _, _ in TARGETS]
    fig, axes = plt.subplots(2, len(targets), figsize=(4.2 * len(targets), 7.5), squeeze=False)
    for col, name in enumerate(targets):
        rows = records[0]["targets"][name]
        for r, (key, who) in enumerate((("", "steering model"), ("judge_", "judge"))):
            ax = axes[r, col]
            for method in METHODS:
                if key + "curve" in rows[method]:
                    c = rows[method][key + "curve"]
                    mds = rows[method][key + "mds@0.25"]
                    ax.plot(c["accuracy"], c["disentanglement@0.25"], marker=".", label=f"{method} ({mds:.3f})")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            ax.set_xlabel("manipulation accuracy")
            ax.set_ylabel("disentanglement (t = 0.25)")
            ax.set_title(f"{name}, judged by the {who}")
            if ax.lines:
                ax.legend(fontsize=7, loc="lower left")
            else:
                ax.text(0.5, 0.5, "the judge has no counterpart", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarise(records: list[dict]) -> tuple[dict, str]:
    """Mean ± std over seeds per (target, method, metric), and the markdown table."""
    keys = [f"mds@{t}" for t in THRESHOLDS] + [f"judge_mds@{t}" for t in THRESHOLDS] + ["accuracy_final"]
    summary: dict = {}
    lines = ["| target | method | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    targets = [t for t, _, _ in TARGETS] + ["mean of targets"]  # the judge's mean: over the targets it judges
    for name in targets:
        for method in METHODS:
            cells = []
            for key in keys:
                if name == "mean of targets":
                    per_seed = [np.mean([r["targets"][t][method][key] for t, _, _ in TARGETS
                                         if key in r["targets"][t][method]]) for r in records]
                else:
                    per_seed = [r["targets"][name][method][key] for r in records if key in r["targets"][name][method]]
                if not per_seed or np.isnan(per_seed).any():
                    cells.append("—")
                    continue
                mean, std = float(np.mean(per_seed)), float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0
                summary.setdefault(name, {}).setdefault(method, {})[key] = {"mean": mean, "std": std,
                                                                            "per_seed": per_seed}
                cells.append(f"{mean:.3f} ± {std:.3f}")
            lines.append(f"| {name} | {method} | " + " | ".join(cells) + " |")
    return summary, "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    (out / "results").mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    G = models.load("face-dcgan", device=device)
    phi = attributes.load("face", device=device)
    judge = attributes.load("face-judge", device=device)
    settings = {k: getattr(args, k) for k in ("seeds", "bank", "sources", "steps", "held_out", "components",
                                              "mapping_steps", "mapping_noise", "sgf_lambda", "cg_alpha")}
    settings.update(targets=TARGETS, strength=STRENGTH, thresholds=THRESHOLDS)
    partial = work / "partial.json"
    records = []
    if partial.exists():
        saved = json.loads(partial.read_text())
        if saved["settings"] == json.loads(json.dumps(settings)):
            records = saved["records"]
    started = time.time()
    bank = edit.sample_bank(G, phi, args.bank, seed=0, chunk_size=args.chunk_size, path=str(work / "bank.pt"),
                            device=device)
    # The judge's goal sits at the steering goal's quantile of the bank (the judge's scale is its own).
    judge_bank_path = work / "judge_bank.pt"
    if not judge_bank_path.exists():
        atomic_torch_save(evaluate(G, judge, bank.z[:2000], args.chunk_size), judge_bank_path)
    judge_bank = torch.load(judge_bank_path, weights_only=True)
    for seed in range(len(records), args.seeds):
        records.append(run_seed(seed, args, G, phi, judge, bank, judge_bank, work))
        atomic_write_json(partial, {"settings": settings, "records": records})
    summary, table = summarise(records)
    meta = {"settings": settings, "machine": f"{platform.machine()} {platform.processor()}, "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}, device {args.device}",
            "date": time.strftime("%Y-%m-%d"), "minutes": (time.time() - started) / 60}
    atomic_write_json(out / "results" / "editing_table.json", {**meta, "summary": summary, "records": records})
    header = (f"# Seed 000 Table 1 on the face DCGAN (MDS, mean ± std over {args.seeds} seeds)\n\n"
              f"Settings: {json.dumps(settings)}\n\n")
    (out / "results" / "editing_table.md").write_text(header + table + "\n")
    curves_figure(records, out / "figures" / "editing_mds_curves.png")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

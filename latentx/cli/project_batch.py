"""``latentx project`` over many photos: which images, which box each, where each one's files
go, which are done, how the processes share them, and the summary at the end.

The per-image work is :func:`latentx.cli.project.run_projection`; this module decides what it
is called on. A run over many images (a folder, ``--list``, or several IMAGE arguments) has
this layout in ``--out``::

    config.json              the settings that decide the results; a resumed run must match
    <stem>/result.json, ...  one folder per image (``latentx.cli.project`` lists its files)
    <stem>/error.json        only for an image whose projection raised: the error, to retry
    summary.json             rank 0, at the end: every image's status and losses, the means
    summary.csv              the same, one row per image
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from latentx._atomic import atomic_write_json, atomic_write_text
from latentx.images import IMAGE_SUFFIXES, image_size, list_images

CONFIG = "config.json"
RESULT = "result.json"
ERROR = "error.json"
SUMMARY_JSON = "summary.json"
SUMMARY_CSV = "summary.csv"
LOSS_NAMES = ("l1", "l2", "lpips", "total")


@dataclass(frozen=True)
class Job:
    """One image to project: ``image`` as given (or found in a folder), ``source`` its
    resolved absolute path, ``box`` (x0, y0, x1, y1) in its pixels, ``folder`` for its files."""

    index: int
    image: str
    source: str
    box: tuple
    folder: Path


# --- which images ------------------------------------------------------------------------

def collect_images(sources: Sequence[str], list_file: Optional[str]) -> tuple[list[str], bool]:
    """The image paths of a run, in order, and whether it is a run over many images.

    ``sources``: IMAGE arguments, each a file or a folder (its image files, sorted by name;
    not recursive). ``list_file``: a text file with one image path per line (blank lines and
    lines starting with ``#`` skipped; relative paths are relative to the list file's folder).
    One IMAGE file and no ``--list`` is a single-image run (its files go into ``--out``
    itself); anything else is a run over many (one sub-folder each, a summary)."""
    images: list[str] = []
    many = list_file is not None or len(sources) != 1
    for src in sources:
        if os.path.isdir(src):
            found = list_images(src)
            if not found:
                raise ValueError(f"IMAGE folder {src!r} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            images += [str(p) for p in found]
            many = True
        elif os.path.isfile(src):
            images.append(src)
        else:
            raise FileNotFoundError(f"IMAGE {src!r} does not exist")
    if list_file is not None:
        if not os.path.isfile(list_file):
            raise FileNotFoundError(f"--list {list_file!r} does not exist")
        base = os.path.dirname(os.path.abspath(list_file))
        with open(list_file, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                entry = line.strip()
                if not entry or entry.startswith("#"):
                    continue
                path = entry if os.path.isabs(entry) else os.path.join(base, entry)
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"--list {list_file} line {number}: image {entry!r} does not exist")
                images.append(path)
    if not images:
        raise ValueError("no images: give IMAGE files or folders, or --list FILE")
    return images, many


def output_folders(images: Sequence[str], out: Path, many: bool) -> list[Path]:
    """Where each image's files go: ``out`` for a single-image run; otherwise ``out``/<file
    stem>, with ``-2``, ``-3`` ... appended to repeated stems in image order (so a rerun with
    the same images in the same order finds the same folders)."""
    if not many:
        return [out]
    folders, seen = [], {}
    for path in images:
        stem = Path(path).stem or "image"
        seen[stem] = seen.get(stem, 0) + 1
        folders.append(out / (stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"))
    return folders


# --- which box ---------------------------------------------------------------------------

def _box_value(value, where: str) -> Optional[tuple]:
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or len(value) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
        raise ValueError(f"{where} must be [x0, y0, x1, y1] (4 finite numbers, pixels) or null (the whole "
                         f"image), got {value!r}")
    return tuple(float(v) for v in value)


def read_boxes_file(path: str) -> dict[str, Optional[tuple]]:
    """``--boxes FILE``: a JSON object mapping image path → [x0, y0, x1, y1] in pixels, or
    null for the whole image. Relative paths are relative to FILE's folder (a ``boxes.json``
    beside the photos can name them by file name). Returns {resolved absolute path: box}."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--boxes {path!r} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            mapping = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"--boxes {path}: not valid JSON ({e})") from None
    if not isinstance(mapping, dict):
        raise ValueError(f"--boxes {path}: expected a JSON object {{\"image path\": [x0, y0, x1, y1] or null}}, "
                         f"got a {type(mapping).__name__}")
    base = os.path.dirname(os.path.abspath(path))
    boxes = {}
    for key, value in mapping.items():
        resolved = os.path.realpath(key if os.path.isabs(key) else os.path.join(base, key))
        boxes[resolved] = _box_value(value, f"--boxes {path}: the box of {key!r}")
    return boxes


def check_box(box: Sequence[float], size: tuple, name: str, flag: str = "--box") -> None:
    """ValueError naming ``flag`` unless ``box`` is a non-empty rectangle inside an image of
    ``size`` (H, W)."""
    x0, y0, x1, y1 = box
    H, W = size
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"{flag} {list(box)} for {name} is empty (need x0 < x1 and y0 < y1)")
    if not (x0 >= 0 and y0 >= 0 and x1 <= W and y1 <= H):
        raise ValueError(f"{flag} {list(box)} for {name} lies outside its {W}×{H} image")


def make_jobs(images: Sequence[str], many: bool, out: Path, boxes: Optional[Sequence[Sequence[float]]],
              boxes_file: Optional[str]) -> list[Job]:
    """One :class:`Job` per image, every box checked against its image's size (read from the
    file header) before any work: a typo in the last box must not surface hours later.

    ``boxes``: ``--box`` values, one per image in order (or None); ``boxes_file``: ``--boxes``
    (every image must have an entry); neither: the whole images."""
    if boxes is not None and len(boxes) != len(images):
        raise ValueError(f"got {len(boxes)} --box for {len(images)} images: give --box once per IMAGE, in the "
                         "same order, or not at all (the whole images), or use --boxes FILE for many images")
    mapping = read_boxes_file(boxes_file) if boxes_file is not None else None
    sources = [os.path.realpath(p) for p in images]
    if mapping is not None:
        missing = [p for p, s in zip(images, sources) if s not in mapping]
        if missing:
            shown = ", ".join(repr(p) for p in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise ValueError(f"--boxes {boxes_file} has no box for {len(missing)} image(s): {shown} "
                             "(give null for the whole image)")
    jobs = []
    for i, (path, source, folder) in enumerate(zip(images, sources, output_folders(images, out, many))):
        size = image_size(path)
        box = boxes[i] if boxes is not None else (mapping[source] if mapping is not None else None)
        box = (0.0, 0.0, float(size[1]), float(size[0])) if box is None else tuple(float(v) for v in box)
        check_box(box, size, path, f"--boxes {boxes_file}:" if mapping is not None else "--box")
        jobs.append(Job(index=i, image=path, source=source, box=box, folder=folder))
    return jobs


# --- which are done ----------------------------------------------------------------------

def read_record(folder: Path) -> Optional[dict]:
    """The image's result.json, or None when absent or unreadable."""
    try:
        return json.loads((folder / RESULT).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def is_done(job: Job, record: Optional[dict]) -> bool:
    """A finished result for this job: result.json exists (it is written last, atomically) for
    the same image (when it says which) and the same box. A changed box, or a folder that now
    belongs to another image (the list was reordered), is redone."""
    if record is None:
        return False
    same_box = [float(v) for v in record.get("box", ())] == list(job.box)
    return same_box and record.get("source", job.source) == job.source


def run_config(args, budget: dict, transform) -> dict:
    """The settings that decide a result; a run resumed in the same ``--out`` must match.
    ``transform``: project()'s (True, "init" or False)."""
    config = {"generator": args.generator, "checkpoint_sha256": _sha256(getattr(args, "checkpoint", None)),
              "method": args.method, "transform": transform, "seed": args.seed, "budget": budget,
              "work_size": args.work_size, "context": args.context, "finetune_steps": args.finetune_steps}
    # Absent unless used: older config.json files still match.
    if getattr(args, "encoder", None) is not None:
        config["encoder_sha256"] = _sha256(args.encoder)
    if getattr(args, "class_", None) is not None:
        config["class"] = {"class": args.class_, "class_k": args.class_k, "class_among": args.class_among}
    return config


def _sha256(path) -> Optional[str]:
    """The file's SHA-256 (hex), or None for no path or a missing file."""
    if path is None or not os.path.isfile(path):
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- the summary -------------------------------------------------------------------------

def summary_rows(jobs: Sequence[Job], out: Path) -> list[dict]:
    """One row per job, in order: status ``done`` (with its losses), ``failed`` (with the
    error) or ``missing``."""
    rows = []
    for job in jobs:
        row = {"index": job.index, "image": job.image, "folder": os.path.relpath(job.folder, out),
               "box": list(job.box)}
        record = read_record(job.folder)
        if is_done(job, record):
            row.update(status="done", best={k: record["best"][k] for k in LOSS_NAMES},
                       mean_of_seeds={k: record["mean_of_seeds"][k] for k in LOSS_NAMES},
                       best_seed=record.get("best_seed"), seconds=record.get("seconds"),
                       # None: a result.json written before the counts were recorded
                       evaluations=evaluation_totals(record["evaluations"]) if "evaluations" in record else None)
            if "finetune" in record:
                row["finetune_total"] = record["finetune"]["losses"].get("total")
        elif (job.folder / ERROR).is_file():
            try:
                error = json.loads((job.folder / ERROR).read_text()).get("error", "?")
            except (json.JSONDecodeError, UnicodeDecodeError):
                error = "?"
            row.update(status="failed", error=error)
        else:
            row.update(status="missing")
        rows.append(row)
    return rows


def evaluation_totals(evaluations: dict) -> dict:
    """A result.json's ``{stage: {"forward": n, "backward": n}}`` (generator evaluations per
    (image, seed) problem, mean over the kept seeds) summed over the stages."""
    return {k: sum(counts.get(k, 0.0) for counts in evaluations.values()) for k in ("forward", "backward")}


def write_summary(out: Path, rows: list[dict], meta: dict) -> dict:
    """summary.json and summary.csv in ``out`` (atomically); returns the summary."""
    done = [r for r in rows if r["status"] == "done"]
    means = {k: float(np.mean([r["best"][k] for r in done])) for k in LOSS_NAMES} if done else None
    medians = {k: float(np.median([r["best"][k] for r in done])) for k in LOSS_NAMES} if done else None
    summary = {**meta, "images": len(rows), "done": len(done),
               "failed": sum(r["status"] == "failed" for r in rows),
               "missing": sum(r["status"] == "missing" for r in rows),
               "best_mean": means, "best_median": medians,
               "note": "losses are photo-frame masked losses of the best seed ('best') and their mean over "
                       "seeds ('mean_of_seeds'), as in each image's result.json; 'evaluations': generator "
                       "forward / backward passes per (image, seed) problem, all stages",
               "rows": rows}
    atomic_write_json(out / SUMMARY_JSON, summary)
    buffer = io.StringIO()
    fields = (["index", "image", "folder", "status", "x0", "y0", "x1", "y1"] + [f"best_{k}" for k in LOSS_NAMES]
              + ["mean_of_seeds_total", "best_seed", "finetune_total", "forward_per_seed", "backward_per_seed",
                 "seconds", "error"])
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        flat = {"index": r["index"], "image": r["image"], "folder": r["folder"], "status": r["status"],
                **dict(zip(("x0", "y0", "x1", "y1"), r["box"])), "error": r.get("error", "")}
        if r["status"] == "done":
            flat.update({f"best_{k}": r["best"][k] for k in LOSS_NAMES})
            flat.update(mean_of_seeds_total=r["mean_of_seeds"]["total"], best_seed=r["best_seed"],
                        finetune_total=r.get("finetune_total", ""), seconds=r["seconds"],
                        **({"forward_per_seed": r["evaluations"]["forward"],
                            "backward_per_seed": r["evaluations"]["backward"]} if r["evaluations"] else {}))
        writer.writerow(flat)
    atomic_write_text(out / SUMMARY_CSV, buffer.getvalue())
    return summary


def format_table(summary: dict, max_rows: int = 20) -> str:
    """The summary as a text table: every image when there are at most ``max_rows``, else the
    5 best and 5 worst by best-of-seeds total loss, then the counts and means."""
    rows = summary["rows"]
    done = [r for r in rows if r["status"] == "done"]
    if len(rows) <= max_rows:
        shown, note = rows, ""
    else:
        ranked = sorted(done, key=lambda r: r["best"]["total"])
        shown = ranked[:5] + ranked[-5:] if len(ranked) > 10 else ranked
        shown += [r for r in rows if r["status"] != "done"][:5]
        note = (f"(the 5 best and 5 worst of {len(done)} by total"
                f"{', and the first failures' if len(done) < len(rows) else ''}; every image is in summary.csv)\n")
    width = max([len(r["folder"]) for r in shown] + [5])
    lines = [f"{'image':<{width}}  {'L1':>7} {'L2':>7} {'LPIPS':>7} {'total':>8} {'mean':>8} {'s':>7}  "
             "(best of seeds; mean: total, mean over seeds)"]
    for r in shown:
        if r["status"] == "done":
            b = r["best"]
            lines.append(f"{r['folder']:<{width}}  {b['l1']:7.4f} {b['l2']:7.4f} {b['lpips']:7.4f} {b['total']:8.4f} "
                         f"{r['mean_of_seeds']['total']:8.4f} {r['seconds'] or 0:7.1f}")
        else:
            lines.append(f"{r['folder']:<{width}}  {r['status'].upper()}: {r.get('error', 'no result.json')}")
    counts = f"{summary['done']} of {summary['images']} images done"
    if summary["failed"]:
        counts += f", {summary['failed']} failed (run the same command again to retry them)"
    if summary["missing"]:
        counts += f", {summary['missing']} missing"
    if summary["best_mean"]:
        m, md = summary["best_mean"], summary["best_median"]
        counts += f"; best-of-seeds total: mean {m['total']:.4f}, median {md['total']:.4f}"
    return note + "\n".join(lines) + "\n" + counts


def error_record(job: Job, err: BaseException, trace: str) -> dict:
    return {"image": job.image, "source": job.source, "box": list(job.box), "error": f"{type(err).__name__}: {err}",
            "traceback": trace, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

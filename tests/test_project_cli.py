"""`latentx project` at scale and the pieces under it: atomic writes (fsync, ordinary
permissions, nothing left on failure), image I/O through Pillow, labelled matplotlib figures,
folders / --list / --boxes, resuming, the summary, and two torchrun (gloo) processes killed
midway and resumed to the same results as one uninterrupted process."""

import csv
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentx import _atomic, images

# A tiny generator (8-d z → 3×32×32): the CLI's machinery, not the face DCGAN, is under test.
TINY_GENERATOR_MODULE = '''
import torch
from torch import nn

from latentx import models


class TinyG(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8 * 4 * 4)
        self.up = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(8, 8, 3, padding=1), nn.Tanh(),
                                nn.Upsample(scale_factor=4), nn.Conv2d(8, 3, 3, padding=1))

    def forward(self, z):
        return torch.tanh(self.up(self.fc(z).view(-1, 8, 4, 4)))


def make():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = TinyG()
    return models.Generator(net, 8, object_box=(-0.5, -0.5, 0.5, 0.5), name="tiny-batch")
'''

# Tiny budgets, as the CLI tests in test_projection.py: seconds per image.
BUDGET = ["--method", "adam", "--seeds", "2", "--adam-steps", "2", "--transform-meta-steps", "1",
          "--transform-grad-steps", "1", "--work-size", "32", "--no-progress"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture
def tiny_generator(tmp_path, monkeypatch):
    (tmp_path / "tiny_batch_generator.py").write_text(TINY_GENERATOR_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return ["--generator", "tiny_batch_generator:make"]


def write_photo(path, seed, h=48, w=56):
    """A blocky random photo (8×8-pixel blocks), written with Pillow."""
    rng = np.random.default_rng(seed)
    a = (rng.random((h // 8, w // 8, 3)) * 255).astype(np.uint8).repeat(8, 0).repeat(8, 1)
    Image.fromarray(a).save(path)
    return a


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def run_cli(argv):
    from latentx import cli

    try:
        status = cli.main([str(a) for a in argv])
    except SystemExit as e:  # argparse's errors
        status = e.code
    return status


# --- atomic writes --------------------------------------------------------------------------


def test_atomic_writes_fsync_and_get_ordinary_permissions(tmp_path, monkeypatch, umask_022):
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else fd)
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    _atomic.atomic_write_json(tmp_path / "a.json", {"x": [1, 2]})
    _atomic.atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    _atomic.atomic_torch_save({"z": torch.arange(3)}, tmp_path / "c.pt")
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": [1, 2]}
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert torch.equal(torch.load(tmp_path / "c.pt", weights_only=True)["z"], torch.arange(3))
    for name in ("a.json", "b.bin", "c.pt"):
        assert mode_of(tmp_path / name) == 0o644, name  # not mkstemp's 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.bin", "c.pt"]
    if os.path.exists("/proc/self/fd"):
        # each write fsyncs its temporary file, then the folder (so the rename is durable)
        files = [Path(p).name for p in synced if Path(p).parent == tmp_path]
        assert len(files) == 3 and all(f.endswith(".tmp") for f in files)
        assert synced.count(str(tmp_path)) == 3
    os.umask(0o077)
    _atomic.atomic_write_json(tmp_path / "private.json", {})
    assert mode_of(tmp_path / "private.json") == 0o600  # the umask decides, as for open()


def test_atomic_write_failure_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "state.pt"
    _atomic.atomic_torch_save({"step": 1}, target)
    before = target.read_bytes()
    with pytest.raises(Exception):
        _atomic.atomic_torch_save({"f": lambda: 0}, target)  # a lambda does not pickle
    with pytest.raises(KeyboardInterrupt):
        with _atomic.atomic_open(target) as f:
            f.write(b"half")
            raise KeyboardInterrupt
    with pytest.raises(TypeError):
        _atomic.atomic_write_json(tmp_path / "r.json", {"bad": object()})
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]
    with pytest.raises(ValueError, match="mode"):
        with _atomic.atomic_open(target, "a"):
            pass


def test_one_atomic_write_implementation():
    """Every resumable writer goes through latentx._atomic: no other os.replace in the code."""
    import latentx.edit
    from latentx.cli import project as project_cli

    assert latentx.edit.save_atomic is _atomic.atomic_torch_save
    assert project_cli.write_json_atomic is _atomic.atomic_write_json
    root = Path(__file__).resolve().parents[1]
    offenders = [str(p.relative_to(root)) for folder in ("latentx", "experiments", "benchmarks")
                 for p in (root / folder).rglob("*.py")
                 if p.name != "_atomic.py" and ("os.replace(" in p.read_text() or "os.rename(" in p.read_text())]
    assert offenders == [], ("write through latentx._atomic (atomic_torch_save, atomic_write_json, "
                             "atomic_write_bytes, atomic_open) instead of a rename of one's own")


# --- images and figures ---------------------------------------------------------------------


def test_image_io_through_pillow(tmp_path, umask_022):
    rgb = write_photo(tmp_path / "rgb.png", 0)
    x = images.read_image(tmp_path / "rgb.png")
    assert x.shape == (3, 48, 56) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1
    assert np.array_equal(images.to_uint8(x), rgb)  # exact round trip through [-1, 1]
    images.write_png(tmp_path / "out.png", rgb)
    assert mode_of(tmp_path / "out.png") == 0o644
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), rgb)
    images.write_png(tmp_path / "grey.png", rgb[:, :, 0])
    assert torch.equal(images.read_image(tmp_path / "grey.png")[1], x[0])  # grey repeated
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "rgba.png")
    assert torch.equal(images.read_image(tmp_path / "rgba.png"), x)  # alpha dropped
    Image.fromarray(np.full((4, 5), 65535, np.uint16)).save(tmp_path / "deep.png")
    assert torch.allclose(images.read_image(tmp_path / "deep.png"), torch.ones(3, 4, 5))
    # a camera JPEG rotated by its EXIF tag (6: 90° clockwise) is read as displayed
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    assert images.image_size(tmp_path / "rotated.jpg") == (56, 48)
    assert images.read_image(tmp_path / "rotated.jpg").shape == (3, 56, 48)
    assert images.image_size(tmp_path / "rgb.png") == (48, 56)
    # bad input names what is wrong
    with pytest.raises(TypeError, match="uint8"):
        images.write_png(tmp_path / "f.png", rgb.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        images.write_png(tmp_path / "f.png", np.zeros((4, 4, 2), np.uint8))
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="junk.png"):
        images.read_image(tmp_path / "junk.png")
    data = (tmp_path / "rgb.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.png"):
        images.read_image(tmp_path / "cut.png")
    with pytest.raises(FileNotFoundError, match="nope.png"):
        images.image_size(tmp_path / "nope.png")
    assert [p.name for p in images.list_images(tmp_path)] == [
        "cut.png", "deep.png", "grey.png", "junk.png", "out.png", "rgb.png", "rgba.png", "rotated.jpg"]


def test_loss_curve_figure_has_labelled_axes(tmp_path):
    from latentx.figures import plot_projection_losses

    fig = plot_projection_losses(tmp_path / "loss.png", np.array([0.9, 0.7, 0.6]), np.geomspace(1, 0.1, 20), "t")
    axes = fig.get_axes()
    assert len(axes) == 2
    for ax in axes:
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
    assert axes[1].get_yscale() == "log"
    with Image.open(tmp_path / "loss.png") as im:
        assert im.format == "PNG" and im.size[0] > 400
    fig = plot_projection_losses(tmp_path / "one.png", None, np.zeros(5), "no transform search")
    assert len(fig.get_axes()) == 1 and fig.get_axes()[0].get_yscale() == "linear"


# --- many images, in one process ------------------------------------------------------------


def test_folder_with_boxes_file_summary_and_resume(tmp_path, tiny_generator, capsys, umask_022):
    photos = tmp_path / "photos"
    photos.mkdir()
    for k, name in enumerate(["a.png", "b.png", "c.jpg"]):
        write_photo(photos / name, k)
    (photos / "notes.txt").write_text("not an image")
    boxes = photos / "boxes.json"
    boxes.write_text(json.dumps({"a.png": [8, 8, 40, 40], "b.png": None, "c.jpg": [16, 10, 52, 44],
                                 "elsewhere.png": [0, 0, 1, 1]}))
    out = tmp_path / "out"
    argv = ["project", photos, "--boxes", boxes, *tiny_generator, "--out", out, *BUDGET]
    assert run_cli(argv) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["images"], summary["done"], summary["failed"]) == (3, 3, 0)
    assert [r["folder"] for r in summary["rows"]] == ["a", "b", "c"]
    assert summary["rows"][1]["box"] == [0.0, 0.0, 56.0, 48.0]  # null: the whole image
    rows = list(csv.DictReader((out / "summary.csv").open()))
    for name, file, row, srow in zip("abc", ["a.png", "b.png", "c.jpg"], rows, summary["rows"]):
        record = json.loads((out / name / "result.json").read_text())
        assert record["box"] == srow["box"] and record["source"] == str((photos / file).resolve())
        assert srow["best"] == {k: record["best"][k] for k in ("l1", "l2", "lpips", "total")}
        assert float(row["best_total"]) == pytest.approx(record["best"]["total"], rel=1e-12)
        # the budget spent, per (image, seed) problem: each stage's counts in result.json, summed
        forward = sum(counts["forward"] for counts in record["evaluations"].values())
        assert forward > 0 and srow["evaluations"]["forward"] == forward == float(row["forward_per_seed"])
        assert float(row["backward_per_seed"]) == sum(c["backward"] for c in record["evaluations"].values()) > 0
        assert mode_of(out / name / "result.json") == 0o644  # was 0o600
        assert (out / name / "loss_curve.png").stat().st_size > 1000
        assert f"{record['best']['total']:8.4f}" in printed
    assert summary["best_mean"]["total"] == pytest.approx(np.mean([r["best"]["total"] for r in summary["rows"]]))
    assert "3 of 3 images done" in printed and not list(out.rglob("*.tmp"))

    # a rerun skips everything; the same images through --list find the same folders
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/result.json")}
    assert run_cli(argv) == 0
    assert "3 of 3 images are done, skipping" in capsys.readouterr().out
    listing = tmp_path / "list.txt"
    listing.write_text("# photos\nphotos/a.png\n\nphotos/b.png\nphotos/c.jpg\n")
    assert run_cli(["project", "--list", listing, "--boxes", boxes, *tiny_generator, "--out", out, *BUDGET]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/result.json")} == stamps

    # a changed box is redone, the others are not
    boxes.write_text(json.dumps({"a.png": [8, 8, 40, 40], "b.png": [0, 0, 30, 30], "c.jpg": [16, 10, 52, 44]}))
    assert run_cli(argv) == 0
    assert "1 image(s) hold a result.json for another box" in capsys.readouterr().out
    assert json.loads((out / "b" / "result.json").read_text())["box"] == [0.0, 0.0, 30.0, 30.0]
    assert (out / "a" / "result.json").stat().st_mtime_ns == stamps[out / "a" / "result.json"]

    # other settings in the same --out are refused, naming them
    assert run_cli(argv + ["--seed", "3"]) == 2
    assert "seed" in capsys.readouterr().err


def test_bad_batch_input_is_named_before_any_work(tmp_path, tiny_generator, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    write_photo(photos / "a.png", 0)
    write_photo(photos / "b.png", 1)
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    common = [*tiny_generator, "--out", out, *BUDGET]
    boxes = tmp_path / "boxes.json"

    def fails(argv, expected, boxes_json=None):
        if boxes_json is not None:
            boxes.write_text(json.dumps(boxes_json))
        capsys.readouterr()
        assert run_cli(argv + common) == 2, argv
        err = capsys.readouterr().err
        assert expected in err, (argv, expected, err)
        assert "Traceback" not in err

    fails(["project", photos, "--boxes", tmp_path / "none.json"], "--boxes")
    fails(["project", photos, "--boxes", photos / "a.png"], "--boxes")  # not JSON
    fails(["project", photos, "--boxes", boxes, "--box", "0,0,5,5"], "--box", {})  # both
    fails(["project", photos, "--box", "0,0,5,5"], "--box once per IMAGE")
    fails(["project", "--list", tmp_path / "none.txt"], "--list")
    fails(["project"], "IMAGE")
    fails(["project", tmp_path / "empty"], "holds no image files")
    fails(["project", photos, "--boxes", boxes], f"has no box for 1 image(s): '{photos / 'b.png'}'",
          {str(photos / "a.png"): [0, 0, 8, 8]})
    fails(["project", photos, "--boxes", boxes], "--boxes", [[0, 0, 8, 8]])  # not a mapping
    for bad in ([0, 0, 8], [0, 0, "8", 8], [0, 0, float("nan"), 8], "whole"):
        fails(["project", photos, "--boxes", boxes], "[x0, y0, x1, y1]", {"photos/a.png": bad, "photos/b.png": None})
    fails(["project", photos, "--boxes", boxes], "outside", {"photos/a.png": [0, 0, 80, 8], "photos/b.png": None})
    fails(["project", photos, "--boxes", boxes], "empty", {"photos/a.png": [9, 0, 8, 8], "photos/b.png": None})
    (photos / "c.png").write_bytes(b"broken")
    fails(["project", photos], "c.png")
    (photos / "c.png").unlink()
    # a bad --generator fails before config.json would pin the run to it
    assert run_cli(["project", photos, "--out", out, *BUDGET, "--generator", "no_such_module:make"]) == 2
    assert "no_such_module" in capsys.readouterr().err
    assert not out.exists()  # nothing was written


def test_a_failing_image_is_recorded_and_retried(tmp_path, tiny_generator, monkeypatch, capsys):
    from latentx.cli import project as project_cli

    photos = tmp_path / "photos"
    photos.mkdir()
    for k in range(3):
        write_photo(photos / f"p{k}.png", k)
    out = tmp_path / "out"
    argv = ["project", photos, *tiny_generator, "--out", out, *BUDGET]
    real = project_cli.run_projection

    def fails_on_p1(photo, box, folder, **kw):
        if folder.name == "p1":
            raise FloatingPointError("non-finite loss at step 1")
        return real(photo, box, folder, **kw)

    monkeypatch.setattr(project_cli, "run_projection", fails_on_p1)
    assert run_cli(argv) == 1
    captured = capsys.readouterr()
    assert "p1.png FAILED: FloatingPointError" in captured.err and "FAILED" in captured.out
    summary = json.loads((out / "summary.json").read_text())
    assert [r["status"] for r in summary["rows"]] == ["done", "failed", "done"]
    assert "non-finite loss" in summary["rows"][1]["error"]
    assert "Traceback" in json.loads((out / "p1" / "error.json").read_text())["traceback"]
    monkeypatch.setattr(project_cli, "run_projection", real)
    assert run_cli(argv) == 0
    assert "2 of 3 images are done" in capsys.readouterr().out
    assert not (out / "p1" / "error.json").exists()
    assert json.loads((out / "summary.json").read_text())["done"] == 3


# --- many images, two processes under torchrun, killed and resumed ---------------------------


def _subprocess_cli(argv, nproc=None, **kw):
    cmd = ([sys.executable, "-m", "latentx.cli"] if nproc is None else
           [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
            f"--nproc_per_node={nproc}", "-m", "latentx.cli"])
    return cmd + [str(a) for a in argv]


def _descendants(pid):
    """The process ids below ``pid``, children first (Linux /proc)."""
    found, queue = [], [pid]
    while queue:
        parent = queue.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue
            found += children
            queue += children
    return found


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds torchrun's workers through Linux /proc")
def test_torchrun_two_processes_killed_and_resumed_equal_one_process(tmp_path, tiny_generator):
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(tmp_path), ENV.get("PYTHONPATH", "")])}
    photos = tmp_path / "photos"
    photos.mkdir()
    n = 6
    for k in range(n):
        write_photo(photos / f"img{k}.png", 10 + k)
    # a few more steps than BUDGET: each image takes long enough for the kill to land midway
    budget = [*BUDGET, "--adam-steps", "10", *tiny_generator]

    # the uninterrupted reference: one process (this one), one thread, as the workers run
    reference = tmp_path / "reference"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert run_cli(["project", photos, "--out", reference, *budget]) == 0
    finally:
        torch.set_num_threads(threads)

    out = tmp_path / "dist"
    killed = subprocess.Popen(_subprocess_cli(["project", photos, "--out", out, *budget], nproc=2), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not list(out.glob("*/result.json")):
            assert killed.poll() is None, "the run ended before any image was done"
            assert time.time() < deadline, "no image was finished in time"
            time.sleep(0.02)
    finally:
        # SIGKILL the workers and torchrun, with no chance to clean up. torchrun starts its
        # workers in sessions of their own, so killing its process group would miss them.
        for pid in _descendants(killed.pid) + [killed.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        killed.wait()
    done_before = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("*/result.json")}
    assert 0 < len(done_before) < n, "the kill did not land midway"
    assert not (out / "summary.json").exists()

    proc = subprocess.run(_subprocess_cli(["project", photos, "--out", out, *budget], nproc=2), env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(done_before)} of {n} images are done, skipping" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["done"] == n
    for name, stamp in done_before.items():
        assert (out / name / "result.json").stat().st_mtime_ns == stamp  # finished images are not redone
    for k in range(n):
        got = json.loads((out / f"img{k}" / "result.json").read_text())
        want = json.loads((reference / f"img{k}" / "result.json").read_text())
        for key in ("z_best", "z_all", "losses", "best", "phi", "phi_photo", "best_seed", "box"):
            assert got[key] == want[key], (k, key)
    ref_rows = json.loads((reference / "summary.json").read_text())["rows"]
    assert [r["best"] for r in summary["rows"]] == [r["best"] for r in ref_rows]


# --- the encoder family from the command line ------------------------------------------------


def test_train_encoder_then_project_with_encoder_and_hybrid(tmp_path, tiny_generator):
    """`latentx train-encoder` writes a checkpoint that `latentx project --method encoder /
    hybrid --encoder PATH` uses; hybrid ends no worse than the encoder alone; the methods
    refuse to run without --encoder, naming it."""
    photo = tmp_path / "p.png"
    write_photo(photo, 3)
    enc = tmp_path / "enc.pt"
    assert run_cli(["train-encoder", *tiny_generator, "--out", enc, "--steps", "3", "--batch-size", "4",
                    "--width", "4", "--checkpoint-every", "2", "--no-progress"]) == 0
    assert enc.is_file()
    budget = [b for b in BUDGET if b not in ("--method", "adam")]
    losses = {}
    for method in ("encoder", "hybrid"):
        out = tmp_path / method
        assert run_cli(["project", photo, *tiny_generator, *budget, "--method", method, "--encoder", enc,
                        "--out", out]) == 0
        record = json.loads((out / "result.json").read_text())
        assert record["method"] == method
        losses[method] = record["best"]["total"]
    assert losses["hybrid"] <= losses["encoder"] + 1e-6
    for argv in (["--method", "hybrid"], ["--method", "encoder", "--encoder", tmp_path / "missing.pt"]):
        assert run_cli(["project", photo, *tiny_generator, *budget, *argv, "--out", tmp_path / "bad"]) == 2
        assert not (tmp_path / "bad").exists()


# --- class-conditional generators from the command line (issue 18) ---------------------------


def test_class_given_and_auto_on_the_conditional_digits_gan(tmp_path, capsys):
    """--class N starts c at W[N]; --class auto screens --class-among, projects the --class-k
    best and keeps the lowest loss, saying which; a conditional generator without --class and
    labels outside its table are refused, naming the flag."""
    photo = tmp_path / "digit.png"
    write_photo(photo, 5, 40, 40)
    common = [photo, "--generator", "digits-cgan", *BUDGET, "--work-size", "32"]
    assert run_cli(["project", *common, "--class", "3", "--lr-c", "0.05", "--out", tmp_path / "given"]) == 0
    given = json.loads((tmp_path / "given" / "result.json").read_text())
    assert given["class"]["mode"] == "given" and given["class"]["label"] == 3
    assert len(given["c_best"]) == 16 and 0 <= given["class"]["nearest_after"] < 10
    assert run_cli(["project", *common, "--class", "auto", "--class-among", "1,3,7", "--class-k", "2",
                    "--out", tmp_path / "auto"]) == 0
    auto = json.loads((tmp_path / "auto" / "result.json").read_text())["class"]
    assert auto["mode"] == "auto" and len(auto["candidates"]) == 2 and set(auto["candidates"]) <= {1, 3, 7}
    assert auto["chosen"] == auto["candidates"][int(np.argmin(auto["candidate_losses"]))]
    capsys.readouterr()
    for argv, flag in ((["--out", tmp_path / "no-class"], "--class N"),
                       (["--class", "12", "--out", tmp_path / "big"], "--class"),
                       (["--class", "two", "--out", tmp_path / "word"], "--class"),
                       (["--class", "auto", "--class-k", "0", "--out", tmp_path / "k0"], "--class-k")):
        assert run_cli(["project", *common, *argv]) == 2
        assert flag in capsys.readouterr().err
        assert not argv[-1].exists()


def test_class_on_an_unconditional_generator_is_refused(tmp_path, tiny_generator, capsys):
    photo = tmp_path / "p.png"
    write_photo(photo, 1)
    assert run_cli(["project", photo, *tiny_generator, *BUDGET, "--class", "3", "--out", tmp_path / "o"]) == 2
    assert "not class-conditional" in capsys.readouterr().err


def test_fast_runs_the_time_to_quality_settings_and_refuses_conflicts(tmp_path, tiny_generator, capsys):
    photo = tmp_path / "p.png"
    write_photo(photo, 2)
    out = tmp_path / "fast"
    fast = ["project", photo, *tiny_generator, "--fast", "--seeds", "4", "--adam-steps", "30", "--work-size", "32",
            "--no-progress"]
    assert run_cli([*fast, "--out", out]) == 0
    record = json.loads((out / "result.json").read_text())
    assert record["method"] == "adam" and record["transform"] == "init"  # φ₀ from the box, no search
    s = record["settings"]
    assert (s["seeds"], s["adam_steps"], s["halving"]) == (4, 30, [25])  # halving steps past the run dropped
    assert (s["refine_steps"], s["refine_seeds"], s["fast_generator"]) == (300, 3, True)
    ev = record["evaluations"]
    assert ev["transform"]["forward"] == 0 and ev["refine"]["backward"] > 0  # no search; refined
    assert ev["latent"]["backward"] < 30  # halving stopped half the seeds at step 25

    capsys.readouterr()
    for extra, expected in [(["--paper-budget"], "--fast and --paper-budget"),
                            (["--method", "basincma"], "not --method basincma"),
                            (["--meta-steps", "3"], "--meta-steps is not used by --fast")]:
        assert run_cli([*fast, *extra, "--out", tmp_path / "bad"]) == 2, extra
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err, (extra, err)


def test_summary_of_a_result_without_evaluation_counts_leaves_them_blank(tmp_path):
    from latentx.cli import project_batch as batch

    losses = {"l1": 0.1, "l2": 0.2, "lpips": 0.3, "total": 0.4}
    row = {"index": 0, "image": "old.png", "folder": "old", "box": [0, 0, 8, 8], "status": "done", "best": losses,
           "mean_of_seeds": losses, "best_seed": 0, "seconds": 1.0, "evaluations": None}
    batch.write_summary(tmp_path, [row, dict(row, image="new.png", folder="new",
                                             evaluations=batch.evaluation_totals(
                                                 {"latent": {"forward": 3.0, "backward": 2.0},
                                                  "score": {"forward": 1.0, "backward": 0.0}}))], {})
    old, new = csv.DictReader((tmp_path / "summary.csv").open())
    assert (old["forward_per_seed"], old["backward_per_seed"]) == ("", "")  # unknown, not 0
    assert (float(new["forward_per_seed"]), float(new["backward_per_seed"])) == (4.0, 2.0)

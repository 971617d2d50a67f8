"""``latentx refine``: same result as advlat.refine; resumes after an interruption or a kill
without losing or redoing finished shards; two processes under torchrun (gloo)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from latentx import advlat, synthetic
from latentx.cli import refine as refine_cli

STEP = ["--steps", "6", "--step-size", "0.02", "--radius", "0.05", "--lower", "-2", "--upper", "2"]
# One thread everywhere: results compared across runs come from the same arithmetic.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Random (seeded) ring G and D saved as state_dicts; the CLI needs no trained weights."""
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(1234)
    paths = root / "g.pt", root / "d.pt"
    torch.save(synthetic.ring_generator().state_dict(), paths[0])
    torch.save(synthetic.ring_discriminator().state_dict(), paths[1])
    return paths


def model_args(ckpts):
    return ["--generator", "latentx.synthetic:ring_generator", "--generator-ckpt", str(ckpts[0]),
            "--discriminator", "latentx.synthetic:ring_discriminator", "--discriminator-ckpt", str(ckpts[1])]


def cli(args, nproc=None, check=True, **kw):
    if nproc is None:
        cmd = [sys.executable, "-m", "latentx.cli", "refine"]
    else:
        # --standalone: a local rendezvous on a free port.
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
               f"--nproc_per_node={nproc}", "-m", "latentx.cli", "refine"]
    proc = subprocess.run(cmd + ["--no-progress"] + [str(a) for a in args], capture_output=True, text=True,
                          env=ENV, timeout=300, **kw)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def shard_files(out):
    return sorted(p.name for p in (Path(out) / "shards").iterdir())


def expected_latents(ckpts, num, shard_size, seed=0):
    """What the CLI must produce: its seeded draws, refined by advlat.refine in-process."""
    G, D = synthetic.ring_generator(), synthetic.ring_discriminator()
    G.load_state_dict(torch.load(ckpts[0], weights_only=True))
    D.load_state_dict(torch.load(ckpts[1], weights_only=True))
    args = refine_cli.argparse.Namespace(latents=None, num_latents=num, z_dim=2, seed=seed)
    source = refine_cli.Latents(args)
    z0 = torch.cat([source.shard(k, lo, min(lo + shard_size, num))
                    for k, lo in enumerate(range(0, num, shard_size))])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return z0, advlat.refine(G, D, z0, steps=6, step_size=0.02, radius=0.05, bounds=(-2.0, 2.0), progress=False)
    finally:
        torch.set_num_threads(threads)


def test_result_equals_refine(ckpts, tmp_path):
    out = tmp_path / "run"
    cli(model_args(ckpts) + STEP + ["--num-latents", 250, "--z-dim", 2, "--shard-size", 100, "--batch-size", 64, "--out", out])
    z, manifest = refine_cli.load_results(out)
    z0, expected = expected_latents(ckpts, 250, 100)
    torch.testing.assert_close(z, expected.z, rtol=0, atol=0)
    torch.testing.assert_close(torch.tensor(manifest["mean_score_per_step"], dtype=torch.float64), expected.scores)
    assert [s["start"] for s in manifest["shards"]] == [0, 100, 200] and manifest["num"] == 250
    assert (z - z0.clamp(-2, 2)).abs().max() <= 0.05 + 1e-6  # clamp is 1-Lipschitz


def test_interrupted_run_resumes_to_the_same_result(ckpts, tmp_path):
    base = model_args(ckpts) + STEP + ["--num-latents", 300, "--z-dim", 2, "--shard-size", 60, "--seed", 7]
    full = tmp_path / "full"
    cli(base + ["--out", full])

    part = tmp_path / "part"
    proc = cli(base + ["--out", part, "--stop-after", 2])
    assert shard_files(part) == ["shard-000000.pt", "shard-000001.pt"]
    assert not (part / "manifest.json").exists() and "run the same command again" in proc.stderr
    first = (part / "shards" / "shard-000000.pt").stat().st_mtime_ns
    # What a writer killed mid-save leaves: a temporary file, never a shard.
    (part / "shards" / ".shard-000002.pt.999.tmp").write_bytes(b"partial")
    proc = cli(base + ["--out", part])
    assert "2 shard(s) already done" in proc.stderr
    assert (part / "shards" / "shard-000000.pt").stat().st_mtime_ns == first  # not redone
    z_full, m_full = refine_cli.load_results(full)
    z_part, m_part = refine_cli.load_results(part)
    torch.testing.assert_close(z_part, z_full, rtol=0, atol=0)
    assert m_part["mean_score_per_step"] == m_full["mean_score_per_step"]


def test_killed_run_resumes(ckpts, tmp_path):
    """SIGKILL mid-run: only whole shards remain, and running again completes the same result."""
    base = model_args(ckpts) + STEP + ["--num-latents", 1600, "--z-dim", 2, "--shard-size", 16]
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "latentx.cli", "refine", "--no-progress"]
                            + [str(a) for a in base + ["--out", out]], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "shards").exists() or not any((out / "shards").glob("shard-*.pt")):
            assert time.time() < deadline, "no shard appeared"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    finished = shard_files(out)
    assert 0 < len([f for f in finished if f.startswith("shard-")]) < 100, "the run ended before the kill"
    for name in finished:
        if name.startswith("shard-"):
            assert torch.load(out / "shards" / name, weights_only=True)["z"].shape == (16, 2)
    cli(base + ["--out", out])
    z, manifest = refine_cli.load_results(out)
    _, expected = expected_latents(ckpts, 1600, 16)
    torch.testing.assert_close(z, expected.z, rtol=0, atol=0)


def test_torchrun_two_processes_and_resume(ckpts, tmp_path):
    base = model_args(ckpts) + STEP + ["--num-latents", 330, "--z-dim", 2, "--shard-size", 50]
    out = tmp_path / "dist"
    # Interrupted: each rank stops after one shard (shards 0 and 1), then all resume.
    cli(base + ["--out", out, "--stop-after", 1], nproc=2)
    assert shard_files(out) == ["shard-000000.pt", "shard-000001.pt"]
    assert not (out / "manifest.json").exists()
    cli(base + ["--out", out], nproc=2)
    z, manifest = refine_cli.load_results(out)
    assert manifest["world_size"] == 2 and len(manifest["shards"]) == 7
    _, expected = expected_latents(ckpts, 330, 50)
    torch.testing.assert_close(z, expected.z, rtol=0, atol=0)


def test_read_latents_from_files(ckpts, tmp_path):
    z0 = torch.randn(90, 2)
    torch.save(z0, tmp_path / "z.pt")
    np.save(tmp_path / "z.npy", z0.numpy())
    outs = []
    for name in ("z.pt", "z.npy"):
        out = tmp_path / f"out-{name}"
        cli(model_args(ckpts) + STEP + ["--latents", tmp_path / name, "--shard-size", 40, "--out", out])
        outs.append(refine_cli.load_results(out)[0])
    G, D = synthetic.ring_generator(), synthetic.ring_discriminator()
    G.load_state_dict(torch.load(ckpts[0], weights_only=True))
    D.load_state_dict(torch.load(ckpts[1], weights_only=True))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = advlat.refine(G, D, z0, steps=6, step_size=0.02, radius=0.05, bounds=(-2.0, 2.0), progress=False)
    finally:
        torch.set_num_threads(threads)
    for z in outs:
        torch.testing.assert_close(z, expected.z, rtol=0, atol=0)


def test_other_settings_refused_on_resume(ckpts, tmp_path):
    base = model_args(ckpts) + ["--num-latents", 20, "--z-dim", 2, "--out", tmp_path]
    cli(base + STEP)
    proc = cli(base + ["--steps", "7"], check=False)
    assert proc.returncode != 0 and "steps" in proc.stderr and "other settings" in proc.stderr
    assert json.loads((tmp_path / "config.json").read_text())["steps"] == 6


def test_bad_arguments(ckpts, tmp_path):
    with pytest.raises(ValueError, match="MODULE:FACTORY"):
        refine_cli.load_entry_point("latentx.synthetic.ring_generator", "--generator")
    with pytest.raises(ValueError, match="cannot load"):
        refine_cli.load_entry_point("latentx.synthetic:nope", "--generator")
    with pytest.raises(ValueError, match="either --num-latents"):
        refine_cli.Latents(refine_cli.argparse.Namespace(latents=None, num_latents=None, z_dim=2, seed=0))
    with pytest.raises(FileNotFoundError, match="not finished"):
        refine_cli.load_results(tmp_path)

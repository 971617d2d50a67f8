"""``latentx edit`` end to end on the real face DCGAN and face attributes, at a tiny budget."""

import json

import pytest
import torch

pytest.importorskip("gan_face_generate", reason="the face DCGAN ships in gan_face_generate")
pytest.importorskip("h5py", reason="the expression classifier's weights are read with h5py")

from latentx import cli  # noqa: E402
from latentx.cli import edit as edit_cli  # noqa: E402

TINY = ["--bank-size", "300", "--mapping-steps", "30", "--steps", "3", "--num", "3", "--chunk-size", "128",
        "--no-progress", "--threads", "1"]


def _run(tmp_path, *extra):
    return cli.main(["edit", "--out", str(tmp_path), "--target", "happy=0.9", *TINY, *extra])


@pytest.mark.parametrize("method", ["cg", "interfacegan"])
def test_edit_writes_the_grid_and_the_attributes(tmp_path, method):
    assert _run(tmp_path, "--method", method) == 0
    for name in ("config.json", "bank.pt", "edit.pt", "grid.png", "attributes.json"):
        assert (tmp_path / name).exists(), name
    record = json.loads((tmp_path / "attributes.json").read_text())
    assert record["method"] == method and len(record["sources"]) == 3
    saved = torch.load(tmp_path / "edit.pt", weights_only=True)
    assert saved["trajectory_z"].shape == (4, 3, 100)
    assert saved["trajectory_attributes"].shape[:2] == (4, 3)
    # The JSON's "after" is Φ of the saved final latent, and it moved toward the goal.
    happy = record["names"].index("happy")
    before = torch.tensor([s["before"]["happy"] for s in record["sources"]])
    after = torch.tensor([s["after"]["happy"] for s in record["sources"]])
    torch.testing.assert_close(before, saved["trajectory_attributes"][0, :, happy])
    assert torch.equal(saved["z_before"], saved["trajectory_z"][0])
    if method == "interfacegan":  # a step along the fitted happy normal raises happy on average
        assert float(after.mean()) > float(before.mean())


def test_a_rerun_resumes_and_other_settings_are_refused(tmp_path, capsys):
    assert _run(tmp_path, "--method", "sgf") == 0
    bank = (tmp_path / "bank.pt").stat().st_mtime_ns
    mapping = (tmp_path / "mapping.pt").stat().st_mtime_ns
    assert _run(tmp_path, "--method", "sgf") == 0
    assert (tmp_path / "bank.pt").stat().st_mtime_ns == bank        # not recomputed
    assert (tmp_path / "mapping.pt").stat().st_mtime_ns == mapping
    with pytest.raises(SystemExit, match="other settings.*method"):
        _run(tmp_path, "--method", "cg")


def test_latents_from_a_file(tmp_path):
    z = torch.randn(2, 100)
    torch.save(z, tmp_path / "z.pt")
    (tmp_path / "result.json").write_text(json.dumps({"z_best": torch.randn(100).tolist()}))
    assert _run(tmp_path / "a", "--method", "interfacegan", "--latents", str(tmp_path / "z.pt")) == 0
    saved = torch.load(tmp_path / "a" / "edit.pt", weights_only=True)
    assert torch.equal(saved["z_before"], z)
    assert edit_cli.read_latents(str(tmp_path / "result.json"), 100).shape == (1, 100)
    torch.save(torch.randn(2, 7), tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"--latents: expected latents \[N, 100\]"):
        edit_cli.read_latents(str(tmp_path / "bad.pt"), 100)
    torch.save(torch.full((1, 100), float("nan")), tmp_path / "nan.pt")
    with pytest.raises(ValueError, match="--latents.*non-finite"):
        edit_cli.read_latents(str(tmp_path / "nan.pt"), 100)


@pytest.mark.parametrize("target, message", [
    ("happy", "NAME=VALUE"),
    ("smiling=0.5", "unknown attribute 'smiling'"),
    ("happy=1.5", r"must lie in \[0, 1\]"),
    ("happy=nan", r"must lie in \[0, 1\]"),
    ("happy=x", "must be a number"),
])
def test_bad_targets_name_the_flag(tmp_path, target, message):
    with pytest.raises(SystemExit, match=f"--target.*{message}"):
        cli.main(["edit", "--out", str(tmp_path), "--target", target, *TINY])


def test_linear_methods_take_one_target(tmp_path):
    with pytest.raises(SystemExit, match="--target: --method ganspace edits one attribute"):
        cli.main(["edit", "--out", str(tmp_path), "--target", "happy=0.9", "--target", "sad=0.1",
                  "--method", "ganspace", *TINY])

"""The BigGAN-deep adapter (latentx.biggan, models.load("biggan-deep-*")): real architectures,
a round trip through a saved state dict, the forward pass, and the errors a user meets.

Real sizes are checked on the meta device (shapes only, nothing allocated); the round trip and
the forward run at 128 (50 M parameters, ~200 MB on disk in tmp, a forward of 2 images)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys

import pytest
import torch

from latentx import models

pytestmark = pytest.mark.skipif(importlib.util.find_spec("pytorch_pretrained_biggan") is None,
                                reason="pytorch-pretrained-biggan not installed (scripts/install.sh installs it)")

from latentx import biggan  # noqa: E402  (after the skip mark: the module itself needs no package)

# The package README's parameter counts (50.4 M, 55.9 M, 56.2 M) and the output sides.
REAL = {"biggan-deep-128": (50.4e6, 128), "biggan-deep-256": (55.9e6, 256), "biggan-deep-512": (56.2e6, 512)}


def test_package_modules_import_without_the_download_code():
    pkg = biggan._package()
    assert {"config", "model", "convert_tf_to_pytorch"} <= set(vars(pkg))
    # the stub stands in for file_utils: nothing that downloads was imported
    assert "boto3" not in sys.modules and "requests" not in sys.modules
    assert "pytorch_pretrained_biggan.file_utils" not in sys.modules
    with pytest.raises(OSError, match="never downloads"):
        pkg.model.cached_path("https://example.invalid/x.bin")


@pytest.mark.parametrize("name", biggan.BIGGAN_NAMES)
def test_real_architectures_build(name):
    model = biggan.build_biggan(name, device="meta")
    params = sum(p.numel() for p in model.parameters())
    count, side = REAL[name]
    assert abs(params - count) < 0.05e6, f"{name}: {params} parameters"
    cfg = model.config
    assert (cfg.z_dim, cfg.num_classes, cfg.output_dim) == (128, 1000, side)
    assert tuple(model.embeddings.weight.shape) == (128, 1000)  # c = W·onehot, W [128, 1000]
    # 4×4 start, one doubling per up-sampling block
    ups = sum(1 for up, _, _ in cfg.layers if up)
    assert 4 * 2 ** ups == side


@pytest.fixture(scope="module")
def saved_128(tmp_path_factory):
    """A randomly initialised BigGAN-deep-128 (eval mode, non-trivial batch-norm statistics)
    and its state dict saved as a from_pretrained folder's pytorch_model.bin."""
    torch.manual_seed(1234)
    model = biggan.build_biggan("biggan-deep-128").eval()
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_means"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_vars"):
                buf.uniform_(0.5, 2.0)
    folder = tmp_path_factory.mktemp("biggan128")
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return model, folder


def test_round_trip_and_forward(saved_128):
    model, folder = saved_128
    gen = models.load("biggan-deep-128", checkpoint=str(folder / "pytorch_model.bin"))
    assert isinstance(gen, models.Generator)
    assert (gen.z_dim, gen.class_dim, gen.resolution, gen.truncation) == (128, 128, (128, 128), 2.0)
    assert gen.object_box == pytest.approx(biggan.BIGGAN_OBJECT_BOX)
    torch.testing.assert_close(gen.class_embedding, model.embeddings.weight.t())
    assert not any(p.requires_grad for p in gen.parameters())

    labels = torch.tensor([3, 981])
    z = torch.randn(2, 128).clamp(-2, 2).requires_grad_(True)
    c = gen.embed(labels).clone().requires_grad_(True)
    out = gen(z, c)
    with torch.no_grad():
        onehot = torch.nn.functional.one_hot(labels, 1000).float()
        ref = model(z, onehot, 1.0)  # the package's own forward, spectral norm as hooks
    assert out.shape == (2, 3, 128, 128)
    x = out.detach()
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    assert float(x.std()) > 1e-3  # not a constant image
    torch.testing.assert_close(x, ref, rtol=1e-4, atol=1e-4)
    # gradients reach z and c (what projection optimises)
    out.square().mean().backward()
    assert z.grad.abs().sum() > 0 and c.grad.abs().sum() > 0


def test_folder_truncation_and_config(saved_128, tmp_path):
    model, folder = saved_128
    (folder / "config.json").write_text(biggan.biggan_config("biggan-deep-128").to_json_string())
    gen = models.load("biggan-deep-128", checkpoint=str(folder), bn_truncation=0.5)
    assert gen.net.bn_truncation == 0.5 and gen.truncation == 1.0  # |z| <= 2ψ
    # a config.json of another size next to the weights is refused, naming the difference
    (folder / "config.json").write_text(biggan.biggan_config("biggan-deep-256").to_json_string())
    try:
        with pytest.raises(ValueError, match="output_dim"):
            models.load("biggan-deep-128", checkpoint=str(folder))
    finally:
        (folder / "config.json").unlink()
    with pytest.raises(ValueError, match="bn_truncation"):
        models.load("biggan-deep-128", checkpoint=str(folder), bn_truncation=1.5)


def _cheap_state(name):
    """A state dict with ``name``'s keys and shapes whose tensors share one element (stride-0
    views: the file is a few hundred kB, not 200 MB)."""
    return {k: torch.zeros(()).expand(shape) for k, shape in biggan._shapes(name).items()}


def test_mismatched_checkpoints(tmp_path):
    path = tmp_path / "deep128.pt"
    torch.save(_cheap_state("biggan-deep-128"), path)
    with pytest.raises(ValueError, match=r"does not match biggan-deep-256.*It fits biggan-deep-128"):
        models.load("biggan-deep-256", checkpoint=str(path))
    state = _cheap_state("biggan-deep-512")
    state["generator.conv_to_rgb.weight_orig"] = torch.zeros(3, 128, 3, 3)
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"other shapes .*conv_to_rgb") as info:
        models.load("biggan-deep-512", checkpoint=str(path))
    assert "It fits" not in str(info.value)
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(ValueError, match="missing"):
        models.load("biggan-deep-128", checkpoint=str(path))
    torch.save({"netG": _cheap_state("biggan-deep-128")}, path)  # wrapped: key= finds it
    with pytest.raises(ValueError, match="has no entry 'G'"):
        models.load("biggan-deep-128", checkpoint=str(path), key="G")
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="weights_only"):
        models.load("biggan-deep-128", checkpoint=str(text))


def test_missing_checkpoint_says_where_copies_live(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTORCH_PRETRAINED_BIGGAN_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError) as info:
        models.load("biggan-deep-256")
    msg = str(info.value)
    assert "never downloads" in msg and "checkpoint=" in msg and "--checkpoint" in msg
    assert str(tmp_path / "cache") in msg and "found" not in msg.replace("not found", "")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.load("biggan-deep-256", checkpoint=str(tmp_path / "nope.bin"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin"):
        models.load("biggan-deep-256", checkpoint=str(tmp_path / "empty"))
    # a copy in the package's download cache (named sha256(url).sha256(etag)) is pointed out
    url = biggan._package().model.PRETRAINED_MODEL_ARCHIVE_MAP["biggan-deep-256"]
    cached = tmp_path / "cache" / (hashlib.sha256(url.encode()).hexdigest() + ".0123abcd")
    cached.parent.mkdir()
    cached.write_bytes(b"")
    (tmp_path / "cache" / (cached.name + ".json")).write_text(json.dumps({"url": url, "etag": "x"}))
    with pytest.raises(FileNotFoundError, match=f"Found on this machine: {cached}"):
        models.load("biggan-deep-256")


def test_bad_arguments():
    with pytest.raises(ValueError, match="one of"):
        biggan.build_biggan("biggan-deep-64")
    with pytest.raises(ValueError, match="z_dim"):
        models.load("biggan-deep-128", checkpoint="x", z_dim=64)
    with pytest.raises(TypeError, match="checkpoint must be a path"):
        models.load("biggan-deep-128", checkpoint=123)

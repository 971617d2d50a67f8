"""latentx.models: the generator adapter and its loaders."""

import importlib.util

import pytest
import torch
from torch import nn

from latentx import models


class TinyConvG(nn.Module):
    """DCGAN-shaped: z [N, 6, 1, 1] → [N, 3, 8, 8] in [-1, 1]."""

    nz = 6

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.ConvTranspose2d(6, 8, 4, 1, 0), nn.ReLU(),
                                 nn.ConvTranspose2d(8, 3, 4, 2, 1), nn.Tanh())

    def forward(self, z):
        return self.net(z)


def tiny_factory():
    return TinyConvG()


def test_adapter_reshapes_clamps_and_declares():
    g = models.Generator(TinyConvG(), 6, latent_shape=(6, 1, 1), object_box=(-0.5, -0.4, 0.5, 0.6))
    z = torch.randn(5, 6)
    out = g(z)
    assert out.shape == (5, 3, 8, 8) and g.resolution == (8, 8)
    assert g.truncation == 2.0 and g.class_dim == 0
    assert not any(p.requires_grad for p in g.parameters())
    with pytest.raises(ValueError, match="z must be"):
        g(torch.randn(5, 7))
    with pytest.raises(ValueError, match="object_box"):
        models.Generator(TinyConvG(), 6, object_box=(0.5, 0, 0.4, 1))
    with pytest.raises(ValueError, match="latent_shape"):
        models.Generator(TinyConvG(), 6, latent_shape=(5, 1, 1))


def test_class_embedding():
    class CondG(nn.Module):
        def forward(self, z, c):
            return torch.tanh((z[:, :3, None, None] + c[:, :3, None, None]).expand(-1, 3, 4, 4))

    table = torch.randn(10, 4)
    g = models.Generator(CondG(), 5, class_embedding=table)
    assert g.class_dim == 4
    c0 = g.embed([3, 7])
    assert torch.equal(c0, table[[3, 7]])
    assert g(torch.zeros(2, 5), c0).shape == (2, 3, 4, 4)
    with pytest.raises(ValueError, match="labels"):
        g.embed([10])


def test_load_module_factory_with_checkpoint(tmp_path):
    ref = TinyConvG()
    path = tmp_path / "g.pt"
    torch.save({"state_dict": ref.state_dict()}, path)
    g = models.load("test_models:tiny_factory", checkpoint=str(path))
    assert g.z_dim == 6 and g.latent_shape == (6, 1, 1)  # found nz and the conv layout
    z = torch.randn(3, 6)
    torch.testing.assert_close(g(z), ref(z.view(3, 6, 1, 1)))
    with pytest.raises(KeyError, match="nope"):
        models.load("test_models:tiny_factory", checkpoint=str(path), key="nope")
    with pytest.raises(ValueError, match="spec"):
        models.load("not-a-spec")
    with pytest.raises(ModuleNotFoundError, match="no_such_module"):
        models.load("no_such_module:f")


@pytest.mark.skipif(importlib.util.find_spec("gan_face_generate") is None,
                    reason="gan_face_generate is not installed (pip install --no-deps gan_face_generate==1.1.1)")
def test_load_face_dcgan():
    g = models.load("face-dcgan")
    assert g.z_dim == 100 and g.latent_shape == (100, 1, 1) and g.resolution == (64, 64)
    assert g.object_box == models.FACE_DCGAN_BOX
    torch.manual_seed(0)
    with torch.no_grad():
        x = g(torch.randn(4, 100).clamp(-2, 2))
    assert x.shape == (4, 3, 64, 64) and x.min() >= -1 and x.max() <= 1
    # trained weights, not an initialisation: samples differ and are not flat noise
    assert x.std(0).mean() > 0.1 and x.std() > 0.2


def test_face_dcgan_missing_package_message(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gan_face_generate" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gan_face_generate"):
        models.load("face-dcgan")

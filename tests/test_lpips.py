"""latentx.LPIPS: parity with the `lpips` package, masks, the cached target, loading."""

import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import latentx
from latentx.lpips import LPIPS, backbone_checkpoint_paths

NETS = ["alex", "vgg", "squeeze"]


@pytest.fixture(scope="module")
def lpips_package():
    """The real `lpips` package. Its torchvision import fails on a CPU-only torch inside
    torchvision._meta_registrations; an empty stand-in for that one module lets the pure-Python
    model definitions import (ENVIRONMENT.md). Backbones are random (pnet_rand): no download."""
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    import lpips

    return lpips


def photos(size=64, dtype=torch.float64):
    """Real photographs from scikit-image, as [N, 3, size, size] in [-1, 1]."""
    from skimage import data

    images = [torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)[None].to(dtype) / 127.5 - 1
              for im in (data.astronaut(), data.chelsea(), data.coffee())]
    batch = torch.cat([F.interpolate(im, size=(size, size), mode="bilinear", antialias=True,
                                     align_corners=False) for im in images])
    return batch.clamp(-1, 1)


def matched_models(lpips_package, net, **kwargs):
    ref = lpips_package.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False, **kwargs).double()
    ours = LPIPS(net=net, pretrained=True, pnet_rand=True, **kwargs).double()
    ours.load_state_dict(ref.state_dict())  # a user swaps the import; nothing else changes
    return ref, ours


@pytest.mark.parametrize("net", NETS)
def test_parity_with_lpips_package(lpips_package, net):
    ref, ours = matched_models(lpips_package, net)
    assert list(ours.state_dict()) == list(ref.state_dict())
    real = photos()
    rand = torch.rand(3, 3, 64, 64, dtype=torch.float64) * 2 - 1
    for in0, in1 in ((real, real.roll(1, 0)), (rand, real), (real, real[:1].expand(3, -1, -1, -1))):
        expected = ref(in0, in1)
        got = ours(in0, in1)
        assert got.shape == expected.shape == (3, 1, 1, 1)
        # atol only for identical pairs, whose distance is 0 up to rounding (~1e-33)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-15)
    # [0, 1] inputs and the per-layer terms
    (tot_r, layers_r), (tot_o, layers_o) = (m((real + 1) / 2, (rand + 1) / 2, retPerLayer=True, normalize=True)
                                            for m in (ref, ours))
    torch.testing.assert_close(tot_o, tot_r, rtol=1e-5, atol=0)
    for lo, lr in zip(layers_o, layers_r):
        torch.testing.assert_close(lo, lr, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("net", ["alex", "squeeze"])
def test_parity_spatial_and_baseline(lpips_package, net):
    real = photos()
    for kwargs in (dict(spatial=True), dict(lpips=False)):
        ref, ours = matched_models(lpips_package, net, **kwargs)
        torch.testing.assert_close(ours(real, real.flip(0)), ref(real, real.flip(0)), rtol=1e-5, atol=1e-12)


def test_all_ones_mask_equals_no_mask():
    model = LPIPS(pnet_rand=True).double()
    real = photos()
    target = real.roll(1, 0)
    torch.testing.assert_close(model(real, target, mask=torch.ones(3, 1, 64, 64, dtype=torch.float64)),
                               model(real, target), rtol=1e-12, atol=0)


def test_mask_semantics_against_spec(lpips_package):
    """Σ_l Σ_hw m^l d^l / Σ_hw m^l, m^l the mask's area average over each layer cell
    (latentx.lpips.resize_mask; SPEC A3's bilinear resize loses small masks), in float64 by hand."""
    _, model = matched_models(lpips_package, "alex")
    real = photos()
    target = real[:1]
    mask = torch.full((3, 1, 64, 64), 0.3, dtype=torch.float64)
    mask[:, :, 16:48, 8:40] = 1.0  # an object box: 1 inside, 0.3 outside (SPEC C1)
    scaled0, scaled1 = model.scaling_layer(real), model.scaling_layer(target)
    expected = torch.zeros(3, dtype=torch.float64)
    for k, (f0, f1) in enumerate(zip(model.net(scaled0), model.net(scaled1))):
        u = f0 / (f0.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        v = f1 / (f1.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        w = model.lins[k].model[-1].weight.view(1, -1, 1, 1)
        d = (w * (u - v) ** 2).sum(1, keepdim=True)
        m = F.interpolate(mask, size=d.shape[2:], mode="area")
        expected += (m * d).sum((1, 2, 3)) / m.sum((1, 2, 3))
    got = model(real, target, mask=mask).view(-1)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-15)
    assert not torch.allclose(got, model(real, target).view(-1))  # the mask matters


def test_cached_target_equals_forward():
    model = LPIPS(net="squeeze", pnet_rand=True)
    cand = torch.rand(5, 3, 48, 48) * 2 - 1
    target = torch.rand(1, 3, 48, 48) * 2 - 1
    cached = model.encode(target)
    mask = torch.rand(48, 48)
    torch.testing.assert_close(model.distance(cand, cached, mask=mask), model(cand, target, mask=mask))
    cand.requires_grad_()
    (grad,) = torch.autograd.grad(model.distance(cand, cached).sum(), (cand,))
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_torchvision_checkpoint_loads_through_index_map(tmp_path):
    """A torchvision-format checkpoint (features.N.*) lands in lpips' slices."""
    source = LPIPS(net="alex", pnet_rand=True)
    checkpoint = {f"features.{key.split('.', 1)[1]}": value.clone() + 1
                  for key, value in source.net.state_dict().items()}
    checkpoint["classifier.1.weight"] = torch.zeros(4096, 9216)  # ignored
    path = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(checkpoint, path)
    loaded = LPIPS(net="alex", backbone_path=str(path))
    for name in ("slice2.3.weight", "slice5.10.bias"):  # torchvision's features.3, features.10
        torch.testing.assert_close(loaded.net.get_parameter(name), source.net.get_parameter(name) + 1)


def test_missing_backbone_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match="alexnet-owt-7be5be79.pth") as err:
        LPIPS(net="alex")
    assert str(tmp_path) in str(err.value) and "pnet_rand=True" in str(err.value)
    assert backbone_checkpoint_paths("alex")[0].startswith(str(tmp_path))


def test_bad_input():
    model = LPIPS(pnet_rand=True)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with pytest.raises(ValueError, match="same size"):
        model(x, torch.rand(2, 3, 72, 72))
    with pytest.raises(ValueError, match="in0"):
        model(x[:, :2], x)
    with pytest.raises(ValueError, match="mask"):
        model(x, x, mask=torch.ones(2, 1, 16, 16))
    with pytest.raises(ValueError, match="mask"):
        model(x, x, mask=torch.zeros(2, 1, 64, 64))
    with pytest.raises(ValueError, match="net"):
        LPIPS(net="resnet", pnet_rand=True)
    with pytest.warns(UserWarning, match=r"outside \[-1, 1\]"):
        model(x * 255, x)
    # mismatched in0 / in1 are refused before in1 reaches the backbone (a 16×16 in1 would stop
    # inside AlexNet's pooling)
    for in1 in (torch.rand(2, 3, 16, 16), torch.rand(3, 3, 64, 64)):
        with pytest.raises(ValueError, match="in0 .* and in1"):
            model(x, in1)
    small = torch.rand(1, 3, 30, 40)
    with pytest.raises(ValueError, match="in1 is 30×40"):
        model(small, small)
    with pytest.raises(ValueError, match="in0 is 30×40"):
        model.distance(small, model.encode(x[:1]))


def test_missing_model_path_names_the_argument(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_path") as err:
        LPIPS(pnet_rand=True, model_path=str(tmp_path / "missing.pth"))
    assert "missing.pth" in str(err.value) and "model_path=None" in str(err.value)


@pytest.mark.parametrize("net, side", [("alex", 31), ("vgg", 16), ("squeeze", 17)])
def test_min_size_is_the_smallest_input_the_backbone_takes(net, side):
    model = LPIPS(net=net, pnet_rand=True, pretrained=False)
    assert model.min_size == side
    with torch.no_grad():
        model.net(torch.rand(1, 3, side, side))
        with pytest.raises(RuntimeError):
            model.net(torch.rand(1, 3, side - 1, side - 1))


def test_exported_at_top_level():
    assert latentx.LPIPS is LPIPS


def test_small_mask_stays_non_empty_at_every_layer():
    """Issue 19: a 12×12 box on a 64×64 AlexNet input vanished at a deep layer under bilinear
    resizing (0/0 = NaN). Area averaging keeps it: finite, and different from the unmasked value."""
    model = LPIPS(net="alex", pnet_rand=True).double()
    cand = torch.rand(2, 3, 64, 64, dtype=torch.float64) * 2 - 1
    target = torch.rand(1, 3, 64, 64, dtype=torch.float64) * 2 - 1
    mask = torch.zeros(64, 64, dtype=torch.float64)
    mask[26:38, 40:52] = 1.0
    got, layers = model(cand, target, mask=mask, retPerLayer=True)
    assert torch.isfinite(got).all() and all(torch.isfinite(t).all() for t in layers)
    assert not torch.allclose(got, model(cand, target))
    # a single positive pixel anywhere, at any value in (0, 1], still counts
    for r, c in ((0, 0), (63, 63), (31, 17)):
        one = torch.zeros(64, 64, dtype=torch.float64)
        one[r, c] = 0.01
        assert torch.isfinite(model(cand, target, mask=one)).all()
    # an all-ones mask is the plain lpips value
    torch.testing.assert_close(model(cand, target, mask=torch.ones(64, 64, dtype=torch.float64)),
                               model(cand, target), rtol=1e-12, atol=0)


@pytest.mark.parametrize("bad", ["nan", "negative", "above_one", "all_zero", "one_sample_zero", "integer"])
def test_invalid_masks_are_refused(bad):
    model = LPIPS(net="squeeze", pnet_rand=True)
    cand = torch.rand(2, 3, 32, 32) * 2 - 1
    mask = torch.full((2, 1, 32, 32), 0.5)
    error = ValueError
    if bad == "nan":
        mask[0, 0, 3, 3] = float("nan")
    elif bad == "negative":
        mask[1, 0, 0, 0] = -0.1
    elif bad == "above_one":
        mask[0, 0, 5, 5] = 1.5
    elif bad == "all_zero":
        mask.zero_()
    elif bad == "one_sample_zero":
        mask[1].zero_()
    else:
        mask, error = torch.ones(2, 1, 32, 32, dtype=torch.int64), TypeError
    with pytest.raises(error, match="mask"):
        model(cand, cand.flip(0), mask=mask)

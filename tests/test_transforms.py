"""latentx.transforms: directions, exact inverses, round trips inside the valid region, masks,
per-sample batches, the initial ψ₀ from boxes."""

import math

import pytest
import torch
import torch.nn.functional as F

from latentx.transforms import BrightnessTransform, SpatialTransform, Transform


def smooth_photo(n=1, size=(64, 64), dtype=torch.float64):
    """Real photos, blurred so a warp there and back can reproduce them, in [-1, 1]."""
    skdata = pytest.importorskip("skimage.data")
    imgs = [torch.from_numpy(getattr(skdata, name)().copy()).permute(2, 0, 1).to(dtype) / 127.5 - 1
            for name in ("astronaut", "coffee", "chelsea")[:n]]
    imgs = [F.interpolate(i[None], size=size, mode="bilinear", antialias=True, align_corners=False) for i in imgs]
    x = torch.cat(imgs)
    kernel = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=dtype) / 16
    k2 = (kernel[:, None] * kernel[None, :]).expand(3, 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), k2, groups=3)


def smooth_field(n, size, max_freq=1 / 16, terms=6, dtype=torch.float64):
    """Band-limited random images [n, 3, H, W]: sums of cosines of at most `max_freq`
    cycles per pixel, which a warp there and back can reproduce (filtering is lossless-ish
    far below Nyquist)."""
    h, w = size
    yy, xx = torch.meshgrid(torch.arange(h, dtype=dtype), torch.arange(w, dtype=dtype), indexing="ij")
    freq = (torch.rand(n, 3, terms, 2, dtype=dtype) * 2 - 1) * max_freq
    phase = torch.rand(n, 3, terms, 1, 1, dtype=dtype) * 2 * math.pi
    arg = 2 * math.pi * (freq[..., 0, None, None] * xx + freq[..., 1, None, None] * yy) + phase
    return 0.25 * torch.cos(arg).sum(2) / math.sqrt(terms)


def erode(mask, pixels):
    """Shrink a bool mask by `pixels`, counting outside the image as invalid (the filters
    read zero padding there)."""
    padded = F.pad(mask.float(), (pixels,) * 4, value=0.0)
    return -F.max_pool2d(-padded, 2 * pixels + 1, stride=1) > 0.5


def test_inverse_parameters_and_composition():
    psi = SpatialTransform(torch.tensor([[1.3, 0.8, 0.1, -0.2], [0.5, 2.0, -0.3, 0.4]], dtype=torch.float64))
    identity = SpatialTransform.identity(2, dtype=torch.float64).params
    torch.testing.assert_close(psi.then(psi.inverse()).params, identity)
    torch.testing.assert_close(psi.inverse().then(psi).params, identity)
    torch.testing.assert_close(psi.inverse().inverse().params, psi.params)
    # SPEC A5's formula.
    s, t = psi.params[:, :2], psi.params[:, 2:]
    torch.testing.assert_close(psi.inverse().params, torch.cat([1 / s, -t / s], 1))


def test_direction_is_output_to_input():
    """t_x > 0 shows content further right: a bright column moves left by t_x·W/2 pixels."""
    x = torch.zeros(1, 1, 8, 16, dtype=torch.float64)
    x[..., 10] = 1
    shift = 4 * 2 / 16  # 4 pixels in normalised units
    out = SpatialTransform(torch.tensor([1.0, 1.0, shift, 0.0], dtype=torch.float64)).apply(x)
    assert out[0, 0, 0].argmax() == 6 and out[0, 0, 0, 6] == pytest.approx(1.0)


def test_round_trip_inside_valid_region():
    """T_φ⁻¹(T_φ(x)) ≈ x where both warps read inside their inputs, per-sample parameters,
    zooming in and out (the zoom-out is low-pass filtered, so x is band-limited)."""
    x = smooth_field(3, (64, 64))
    params = torch.tensor([[1.25, 1.1, 0.1, -0.15], [0.8, 0.85, -0.1, 0.05], [1.0, 1.3, 0.0, 0.2]], dtype=torch.float64)
    phi = Transform(SpatialTransform(params), BrightnessTransform(torch.tensor([0.1, -0.2, 0.05], dtype=torch.float64)))
    y = phi.apply(x)
    back = phi.invert(y)
    valid = erode(phi.spatial.inverse().valid_region(x.shape[2:]), 3).expand_as(x)
    assert valid.float().mean() > 0.4
    err = (back - x)[valid].abs()
    assert err.mean() < 0.01 and err.max() < 0.05, (err.mean(), err.max())
    # Outside the valid region the round trip has lost the content (zeros padding).
    assert (back - x)[~valid].abs().mean() > 10 * err.mean()
    # The inverse transform object agrees with invert() inside the valid region.
    torch.testing.assert_close(Transform(phi.spatial.inverse(), phi.brightness.inverse()).apply(y)[valid],
                               back[valid], rtol=1e-9, atol=1e-9)


def test_integer_translation_round_trip_is_exact():
    x = torch.randn(2, 3, 12, 16, dtype=torch.float64)
    params = torch.tensor([[1.0, 1.0, 2 * 2 / 16, -3 * 2 / 12], [1.0, 1.0, -1 * 2 / 16, 1 * 2 / 12]], dtype=torch.float64)
    psi = SpatialTransform(params)
    back = psi.inverse().apply(psi.apply(x))
    valid = psi.inverse().valid_region((12, 16)).expand_as(x)
    torch.testing.assert_close(back[valid], x[valid], rtol=1e-12, atol=1e-12)


def test_brightness_inverse_is_exact_up_to_rounding():
    x = torch.rand(4, 3, 5, 5, dtype=torch.float64) * 2 - 1
    for gamma in (torch.tensor([0.1, -0.3, 0.0, 0.5], dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64) * 0.2):
        b = BrightnessTransform(gamma)
        y = b.apply(x)
        assert not torch.allclose(y, x)
        torch.testing.assert_close(b.inverse().apply(y), x, rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="gamma"):
        BrightnessTransform(torch.zeros(3)).apply(x)


def test_per_sample_batch_equals_one_by_one():
    x = smooth_photo(2, size=(32, 40))
    params = torch.tensor([[1.5, 1.2, 0.1, 0.0], [0.7, 0.9, -0.2, 0.1]], dtype=torch.float64)
    batched = SpatialTransform(params).apply(x, (20, 24))
    for i in range(2):
        single = SpatialTransform(params[i]).apply(x[i:i + 1], (20, 24))
        torch.testing.assert_close(batched[i:i + 1], single)
    shared = SpatialTransform(params[0]).apply(x)  # one ψ for every image
    torch.testing.assert_close(shared[1:], SpatialTransform(params[0]).apply(x[1:]))


def test_masks_and_gradients():
    mask = torch.zeros(2, 1, 32, 32, dtype=torch.float64)
    mask[:, :, 8:20, 10:26] = 1
    params = torch.tensor([[1.7, 1.7, 0.1, 0.0], [0.6, 0.8, 0.0, 0.1]], dtype=torch.float64, requires_grad=True)
    psi = SpatialTransform(params)
    out = psi.apply_mask(mask)
    assert out.min() >= 0 and out.max() <= 1 + 1e-12
    assert out.sum() > 0
    (g,) = torch.autograd.grad(out.sum(), (params,))
    assert torch.isfinite(g).all() and (g.abs() > 0).any()
    image = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    phi = Transform(psi, BrightnessTransform(torch.tensor([0.2, -0.1], dtype=torch.float64)))
    torch.testing.assert_close(phi.apply_mask(mask), out)
    assert phi.apply(image).shape == image.shape


@pytest.mark.parametrize("keep_aspect", [False, True])
def test_initial_psi_maps_generator_box_onto_mask_box(keep_aspect):
    h, w = 48, 64
    mask = torch.zeros(3, 1, h, w)
    mask[0, :, 10:30, 20:50] = 1
    mask[1, :, 0:12, 40:64] = 1
    gbox = torch.tensor([-0.5, -0.4, 0.3, 0.6])
    psi = SpatialTransform.from_boxes(mask, gbox, keep_aspect=keep_aspect)
    torch.testing.assert_close(psi.params[2], torch.tensor([1.0, 1.0, 0.0, 0.0]))  # empty mask: identity
    out = psi.apply_mask(mask, filter="none") > 0.5
    for i in range(2):
        rows = torch.nonzero(out[i, 0].any(1))[:, 0]
        cols = torch.nonzero(out[i, 0].any(0))[:, 0]
        box = torch.tensor([2 * cols.min() / w - 1, 2 * rows.min() / h - 1,
                            2 * (cols.max() + 1) / w - 1, 2 * (rows.max() + 1) / h - 1])
        pixel = torch.tensor([2 / w, 2 / h, 2 / w, 2 / h])
        if keep_aspect:  # inside the generator's box, touching it on one axis, same centre
            assert (box[:2] >= gbox[:2] - pixel[:2]).all() and (box[2:] <= gbox[2:] + pixel[2:]).all()
            centre, gcentre = (box[:2] + box[2:]) / 2, (gbox[:2] + gbox[2:]) / 2
            assert ((centre - gcentre).abs() <= pixel[:2]).all()
            assert ((box - gbox).abs() <= 1.5 * pixel).reshape(2, 2).all(0).any()
        else:
            assert ((box - gbox).abs() <= 1.5 * pixel).all(), (box, gbox)


def test_bad_arguments_are_named():
    image = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="image"):
        SpatialTransform.identity(2).apply(image[0])  # [C, H, W]: C must not pass for the batch
    with pytest.raises(ValueError, match="mask"):
        SpatialTransform.identity(1).apply_mask(torch.ones(1, 8, 8))
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="params must be finite"):
            SpatialTransform(torch.tensor([1.0, bad, 0.0, 0.0]))
    with pytest.raises(ValueError, match="params must be finite"):  # also when set after construction
        psi = SpatialTransform.identity(2)
        psi.params = psi.params.clone()
        psi.params[1, 2] = math.nan
        psi.apply(image)
    with pytest.raises(ValueError, match="params scales"):
        SpatialTransform(torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 2.0, 0.1, 0.0]])).inverse()
    with pytest.raises(ValueError, match="size"):
        SpatialTransform.identity(1).valid_region((4,))
    with pytest.raises(ValueError, match="size"):
        SpatialTransform.identity(1).valid_region((4, -1))
    with pytest.raises(ValueError, match="generator_box"):
        SpatialTransform.from_boxes(torch.ones(1, 1, 8, 8), [0.2, -0.5, 0.2, 0.5])  # zero width
    # a valid transform still inverts and reports its region
    psi = SpatialTransform(torch.tensor([0.5, 2.0, 0.1, -0.2]))
    torch.testing.assert_close(psi.inverse().inverse().params, psi.params)
    assert psi.valid_region((4, 6)).shape == (1, 1, 4, 6)

"""filtered_grid_sample and warp_affine: native against the reference, against F.grid_sample
(bilinear where the warp does not shrink) and F.interpolate (antialiased resize), gradients,
opcheck, compile, errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import device_params
from latentx import ops
from latentx.ops import _native, reference
from latentx.ops.filtered_grid_sample import affine_grid

needs_native = pytest.mark.skipif(_native._C is None, reason="compiled library not built")
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-5),
       torch.float16: dict(rtol=1e-2, atol=2e-2), torch.bfloat16: dict(rtol=2e-2, atol=6e-2)}
PADDINGS = ["zeros", "border", "reflection"]
FILTERS = ["none", "tent", "gaussian"]
IMPLS = ["reference", pytest.param("native", marks=needs_native)]


def warp_grid(n, ho, wo, *, scale, dtype=torch.float64, device="cpu", jitter=0.02, align_corners=False):
    """A random rotation + anisotropic scale + shift (scale > 1 shrinks), with jitter: a
    non-affine grid whose footprint varies per pixel. Reaches outside [-1, 1]."""
    angle = torch.rand(n, dtype=torch.float64) * 2 * math.pi
    sx = scale * (0.8 + 0.4 * torch.rand(n, dtype=torch.float64))
    sy = scale * (0.8 + 0.4 * torch.rand(n, dtype=torch.float64))
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([sx * cos, -sy * sin, 0.3 * torch.randn(n, dtype=torch.float64)], -1),
                         torch.stack([sx * sin, sy * cos, 0.3 * torch.randn(n, dtype=torch.float64)], -1)], 1)
    grid = F.affine_grid(theta, [n, 1, ho, wo], align_corners=align_corners)
    grid = grid + jitter * torch.randn_like(grid)
    return grid.to(device=device, dtype=dtype)


def photo(name="astronaut", size=None, dtype=torch.float32):
    skdata = pytest.importorskip("skimage.data")
    img = torch.from_numpy(getattr(skdata, name)().copy()).permute(2, 0, 1)[None].to(dtype) / 255
    return img if size is None else img[..., :size[0], :size[1]]


def psnr(a, b):
    return 10 * math.log10(1.0 / float((a.double() - b.double()).square().mean()))


# --- native against the reference ------------------------------------------------------------


@needs_native
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize("filt", FILTERS)
def test_forward_matches_reference(device, dtype, filt):
    # Small images, and larger ones where the CPU kernels' row plan reads most pixels directly
    # (taps inside the image, no more than its windows hold), folds the planned taps of those
    # across an edge, and leaves long footprints to AxisRun.
    for (n, c, h, w, ho, wo), scale in [((2, 3, 13, 17, 7, 9), 2.5), ((1, 2, 9, 5, 11, 4), 0.7),
                                        ((3, 1, 1, 6, 2, 3), 1.5), ((1, 3, 40, 53, 16, 20), 1.0),
                                        ((1, 1, 44, 70, 5, 7), 1.0)]:
        x = torch.randn(n, c, h, w, dtype=torch.float64, device=device)
        grid = warp_grid(n, ho, wo, scale=scale, device=device)
        for padding in PADDINGS:
            for align in (False, True):
                kw = dict(padding_mode=padding, filter=filt, align_corners=align)
                # The reference runs on the half inputs' values in float64 (float32 and float64:
                # in their dtype, which rounds the pixel coordinates the same way; on a 90-pixel
                # row float32's rounding of them alone is ~1e-5 of the image's range), with the
                # footprint the native call estimates (from the low-precision grid): a float64
                # estimate can land on the other side of the s = 1 rounding threshold (1e-4
                # for float32, 1e-9 for float64) and change the filter by more than rounding.
                xd, gd = x.to(dtype), grid.to(dtype)
                stretch = reference.grid_stretch(gd, h, w, align)
                ref_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float64
                expected = ops.filtered_grid_sample(xd.to(ref_dtype), gd.to(ref_dtype), **kw,
                                                    stretch=stretch.to(ref_dtype), impl="reference").double()
                got = ops.filtered_grid_sample(xd, gd, **kw, impl="native")
                assert got.dtype == dtype and got.shape == (n, c, ho, wo)
                torch.testing.assert_close(got.double(), expected, **TOL[dtype])


@needs_native
@pytest.mark.parametrize("device", device_params())
def test_non_contiguous_and_empty(device):
    x = torch.randn(2, 9, 11, 3, dtype=torch.float64, device=device).permute(0, 3, 1, 2)  # [2,3,9,11]
    grid = warp_grid(2, 8, 12, scale=2.0, device=device).transpose(1, 2)  # [2,12,8,2], strided
    assert not x.is_contiguous() and not grid.is_contiguous()
    for filt in FILTERS:
        got = ops.filtered_grid_sample(x, grid, filter=filt, impl="native")
        expected = ops.filtered_grid_sample(x.contiguous(), grid.contiguous(), filter=filt, impl="reference")
        torch.testing.assert_close(got, expected, **TOL[torch.float64])
    for xs, gs in [((0, 3, 5, 5), (0, 4, 4, 2)), ((2, 0, 5, 5), (2, 4, 4, 2)), ((2, 3, 5, 5), (2, 0, 4, 2))]:
        xe = torch.randn(xs, dtype=torch.float64, device=device, requires_grad=True)
        ge = torch.randn(gs, dtype=torch.float64, device=device, requires_grad=True)
        for impl in ("native", "reference"):
            out = ops.filtered_grid_sample(xe, ge, impl=impl)
            assert out.shape == (xs[0], xs[1], gs[1], gs[2])
            gx, gg = torch.autograd.grad(out.sum(), (xe, ge), allow_unused=True)
            assert gx is None or (gx == 0).all()
            assert gg is None or (gg == 0).all()


def _fixed_stretch(x, grid, align):
    return reference.grid_stretch(grid, x.shape[2], x.shape[3], align)


@needs_native
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("filt", FILTERS)
def test_gradients(device, filt):
    """float64 gradcheck of both gradients (footprint held fixed), and agreement with
    autograd through the reference."""
    for padding, align, scale in [("zeros", False, 2.3), ("border", True, 3.1), ("reflection", False, 1.7),
                                  ("reflection", True, 0.8)]:
        x = torch.randn(2, 2, 7, 8, dtype=torch.float64, device=device, requires_grad=True)
        grid = warp_grid(2, 4, 5, scale=scale, device=device, align_corners=align).requires_grad_()
        stretch = _fixed_stretch(x, grid, align)
        kw = dict(padding_mode=padding, filter=filt, align_corners=align, stretch=stretch)

        def sample(impl):
            return lambda a, g: ops.filtered_grid_sample(a, g, **kw, impl=impl)

        assert torch.autograd.gradcheck(sample("native"), (x, grid))
        out_n, out_r = sample("native")(x, grid), sample("reference")(x, grid)
        upstream = torch.randn_like(out_n)
        for gn, gr in zip(torch.autograd.grad(out_n, (x, grid), upstream),
                          torch.autograd.grad(out_r, (x, grid), upstream)):
            torch.testing.assert_close(gn, gr, rtol=1e-9, atol=1e-11)
        # Only the gradient asked for is computed.
        (gg,) = torch.autograd.grad(sample("native")(x.detach(), grid).sum(), (grid,))
        torch.testing.assert_close(gg, torch.autograd.grad(sample("reference")(x, grid).sum(), (grid,))[0])


@needs_native
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("filt", FILTERS)
def test_gradients_on_larger_images(device, filt):
    """Both gradients, and each alone, against autograd through the reference where the CPU
    kernels' row plan reads most pixels directly: windows of one block (footprints ~2.5 and
    ~1) and of two (~6: the tent's 12-14 taps), pixels across each edge, and long footprints
    left to AxisRun (~14, and the Gaussian's at ~6)."""
    for n, c, h, w, ho, wo in [(2, 3, 40, 53, 16, 20), (1, 2, 61, 47, 9, 8), (1, 3, 33, 35, 30, 31),
                               (1, 1, 60, 50, 4, 4)]:
        x = torch.randn(n, c, h, w, dtype=torch.float64, device=device, requires_grad=True)
        grid = warp_grid(n, ho, wo, scale=1.0, device=device).requires_grad_()
        upstream = torch.randn(n, c, ho, wo, dtype=torch.float64, device=device)
        for padding in PADDINGS:
            for align in (False, True):
                kw = dict(padding_mode=padding, filter=filt, align_corners=align,
                          stretch=_fixed_stretch(x, grid, align))
                for wrt in ((x, grid), (x,), (grid,)):
                    got = torch.autograd.grad(ops.filtered_grid_sample(x, grid, **kw, impl="native"), wrt, upstream)
                    expected = torch.autograd.grad(ops.filtered_grid_sample(x, grid, **kw, impl="reference"), wrt,
                                                   upstream)
                    for a, b in zip(got, expected):
                        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


# --- against F.grid_sample and F.interpolate -------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align", [False, True])
def test_identity_and_upscaling_equal_grid_sample(impl, padding, align):
    """Where the warp does not shrink, every filter is bilinear F.grid_sample: values and
    both gradients, at non-integer locations (at integer ones the gradient is a one-sided
    convention; grid_sample's differs at the first row/column under border/reflection)."""
    for dtype, tol in [(torch.float64, dict(rtol=1e-12, atol=1e-12)), (torch.float32, dict(rtol=1e-5, atol=1e-5))]:
        x = torch.randn(2, 3, 9, 10, dtype=dtype, requires_grad=True)
        identity = F.affine_grid(torch.eye(2, 3, dtype=dtype).expand(2, 2, 3), [2, 3, 9, 10], align_corners=align)
        upscale = warp_grid(2, 23, 19, scale=0.45, dtype=dtype, jitter=0.0, align_corners=align)
        for grid in (identity, upscale):
            grid = grid.clone().requires_grad_()
            expected = F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=align)
            for filt in FILTERS:
                got = ops.filtered_grid_sample(x, grid, padding_mode=padding, filter=filt,
                                               align_corners=align, impl=impl)
                torch.testing.assert_close(got, expected, **tol)
        # Gradients on the (non-integer) upscaling grid.
        upstream = torch.randn_like(expected)
        got = ops.filtered_grid_sample(x, grid, padding_mode=padding, align_corners=align, impl=impl)
        for gn, ge in zip(torch.autograd.grad(got, (x, grid), upstream),
                          torch.autograd.grad(expected, (x, grid), upstream)):
            torch.testing.assert_close(gn, ge, rtol=10 * tol["rtol"], atol=10 * tol["atol"])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("padding", PADDINGS)
def test_filter_none_is_grid_sample_anywhere(impl, padding):
    """filter='none' is bilinear F.grid_sample for any grid, far outside the image too
    (per-tap padding reproduces grid_sample's coordinate padding)."""
    for align in (False, True):
        x = torch.randn(2, 2, 6, 7, dtype=torch.float64, requires_grad=True)
        grid = (torch.rand(2, 9, 8, 2, dtype=torch.float64) * 8 - 4).requires_grad_()
        got = ops.filtered_grid_sample(x, grid, padding_mode=padding, filter="none", align_corners=align, impl=impl)
        expected = F.grid_sample(x, grid, padding_mode=padding, align_corners=align)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
        upstream = torch.randn_like(got)
        for gn, ge in zip(torch.autograd.grad(got, (x, grid), upstream),
                          torch.autograd.grad(expected, (x, grid), upstream)):
            torch.testing.assert_close(gn, ge, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("impl", IMPLS)
def test_resize_matches_interpolate_antialias(impl):
    """A pure resize (an identity affine grid at the output size) with the tent filter is
    F.interpolate(mode='bilinear', antialias=True): identical inside, close at the border
    (interpolate drops the taps outside the image; here they are padded)."""
    sizes = [(171, 128), (128, 97)] if impl == "native" else [(86, 64)]
    for name in ("astronaut", "coffee", "chelsea"):
        img = photo(name)
        if impl == "reference":
            img = F.avg_pool2d(img, 2)  # the eager reference is slow on full photos
        h, w = img.shape[2:]
        for ho, wo in sizes:
            ho, wo = min(ho, h // 2), min(wo, w // 2)
            theta = torch.eye(2, 3).expand(1, 2, 3)
            got = ops.warp_affine(img, theta, (ho, wo), padding_mode="border", impl=impl)
            got_grid = ops.filtered_grid_sample(img, F.affine_grid(theta, [1, 3, ho, wo], align_corners=False),
                                                padding_mode="border", impl=impl)
            expected = F.interpolate(img, size=(ho, wo), mode="bilinear", antialias=True, align_corners=False)
            assert psnr(got, expected) >= 40, (name, ho, wo, psnr(got, expected))
            assert psnr(got_grid, expected) >= 40
            torch.testing.assert_close(got[..., 3:-3, 3:-3], expected[..., 3:-3, 3:-3], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
def test_shrinking_does_not_alias(impl):
    """A checkerboard of period 2 shrunk 4x is its mean (0.5) with the tent and Gaussian
    filters; bilinear grid_sample reads single cells and returns 0s and 1s."""
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    board = ((xx + yy) % 2).double()[None, None]
    # Shifted by half a pixel (1/64 in normalised units) so grid_sample lands near cell centres.
    theta = torch.tensor([[[1.0, 0.0, 1 / 64 + 1e-3], [0.0, 1.0, 1 / 64 + 2e-3]]], dtype=torch.float64)
    grid = F.affine_grid(theta, [1, 1, 16, 16], align_corners=False)
    plain = F.grid_sample(board, grid, align_corners=False)
    assert (plain - 0.5).abs().mean() > 0.4
    for filt in ("tent", "gaussian"):
        got = ops.filtered_grid_sample(board, grid, padding_mode="reflection", filter=filt, impl=impl)
        assert (got - 0.5).abs().max() < 0.02, filt


@pytest.mark.parametrize("impl", IMPLS)
def test_constant_image_is_preserved(impl):
    """The stretched filters are normalised: a constant image stays constant under any warp
    with border padding."""
    x = torch.full((2, 2, 12, 9), 0.37, dtype=torch.float64)
    grid = warp_grid(2, 7, 6, scale=3.0)
    for filt in FILTERS:
        got = ops.filtered_grid_sample(x, grid, padding_mode="border", filter=filt, impl=impl)
        torch.testing.assert_close(got, torch.full_like(got, 0.37), rtol=1e-12, atol=1e-12)


def test_stretch_estimate():
    """grid_stretch: the resize factor for a resize, rotation-invariant, 1 where upscaling,
    NaN → 1, capped at max(H, W); warp_affine's analytic footprint agrees with it."""
    theta = torch.tensor([[[1.0, 0, 0], [0, 1, 0]]], dtype=torch.float64)
    grid = F.affine_grid(theta, [1, 1, 16, 8], align_corners=False)
    s = reference.grid_stretch(grid, 64, 64, False)
    torch.testing.assert_close(s[..., 0], torch.full_like(s[..., 0], 8.0))
    torch.testing.assert_close(s[..., 1], torch.full_like(s[..., 1], 4.0))
    angle = 0.7
    rot = torch.tensor([[[3 * math.cos(angle), -3 * math.sin(angle), 0.1],
                         [3 * math.sin(angle), 3 * math.cos(angle), -0.2]]], dtype=torch.float64)
    for align in (False, True):
        grid = F.affine_grid(rot, [1, 1, 10, 10], align_corners=align)
        s = reference.grid_stretch(grid, 40, 40, align)
        analytic = ops.affine_stretch(rot, (40, 40), (10, 10), align)
        torch.testing.assert_close(s, analytic[:, None, None].expand_as(s))
    upscale = F.affine_grid(0.5 * theta, [1, 1, 16, 16], align_corners=False)
    assert (reference.grid_stretch(upscale, 16, 16, False) == 1).all()
    grid = F.affine_grid(theta, [1, 1, 4, 4], align_corners=False).clone()
    grid[0, 1, 1, 0] = float("nan")
    s = reference.grid_stretch(grid, 1000, 1000, False)
    # The NaN location's neighbours along the output row difference through it: NaN → 1.
    assert torch.isfinite(s).all() and s[0, 1, 0, 0] == 1 and s[0, 1, 2, 0] == 1 and s[0, 2, 2, 0] == 250
    far = F.affine_grid(1000 * theta, [1, 1, 4, 4], align_corners=False)
    assert reference.grid_stretch(far, 6, 5, False).max() == 6


# F.affine_grid warns about its (documented) unit-size behaviour with align_corners=True.
@pytest.mark.filterwarnings("ignore:Since version 1.3.0, affine_grid behavior has changed")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_affine_grid_is_f_affine_grid(dtype):
    """warp_affine's grid is F.affine_grid's (to rounding), unit-size axes included, and so
    is its gradient w.r.t. theta."""
    theta = torch.randn(3, 2, 3, dtype=dtype, requires_grad=True)
    # The gradient sums Ho * Wo products in another order: float32 rounding of ~1e-6.
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    for ho, wo in [(9, 11), (1, 5), (4, 1), (1, 1)]:
        for align in (False, True):
            got = affine_grid(theta, (ho, wo), align)
            expected = F.affine_grid(theta, [3, 1, ho, wo], align_corners=align)
            assert got.shape == expected.shape
            torch.testing.assert_close(got, expected, **tol)
            if got.numel():
                upstream = torch.randn_like(got)
                torch.testing.assert_close(torch.autograd.grad(got, theta, upstream)[0],
                                           torch.autograd.grad(expected, theta, upstream)[0], **tol)


@pytest.mark.parametrize("impl", IMPLS)
def test_warp_affine_matches_grid_path(impl):
    x = torch.randn(3, 2, 20, 24, dtype=torch.float64)
    theta = torch.tensor([[2.0, 0.3, 0.1], [-0.2, 1.5, 0.0]], dtype=torch.float64).expand(3, 2, 3).clone()
    theta[1, :, :2] *= 0.4  # upscaling sample
    for align in (False, True):
        got = ops.warp_affine(x, theta, (9, 11), align_corners=align, impl=impl)
        grid = F.affine_grid(theta, [3, 2, 9, 11], align_corners=align)
        expected = ops.filtered_grid_sample(x, grid, align_corners=align, impl=impl)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
        plain = ops.warp_affine(x, theta, (9, 11), antialias=False, align_corners=align, impl=impl)
        torch.testing.assert_close(plain, F.grid_sample(x, grid, align_corners=align), rtol=1e-12, atol=1e-12)
    theta.requires_grad_()
    (g,) = torch.autograd.grad(ops.warp_affine(x, theta, (9, 11), impl=impl).sum(), (theta,))
    assert torch.isfinite(g).all() and g.abs().sum() > 0


# --- undefined locations and bad input ---------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("padding", PADDINGS)
def test_nan_and_huge_grid_locations(impl, padding):
    """NaN/inf locations give 0 and no gradient; huge finite ones neither crash nor read out
    of bounds, and agree between the implementations."""
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    grid = warp_grid(1, 5, 5, scale=2.0).clone()
    grid[0, 1, 2, 0] = float("nan")
    grid[0, 3, 3, 1] = float("inf")
    grid[0, 4, 0] = torch.tensor([1e30, -1e25], dtype=torch.float64)
    grid.requires_grad_()
    for filt in FILTERS:
        out = ops.filtered_grid_sample(x, grid, padding_mode=padding, filter=filt, impl=impl)
        assert torch.isfinite(out).all()
        assert (out[0, :, 1, 2] == 0).all() and (out[0, :, 3, 3] == 0).all()
        gx, gg = torch.autograd.grad(out.sum(), (x, grid))
        assert torch.isfinite(gx).all() and torch.isfinite(gg).all()
        assert (gg[0, 1, 2] == 0).all() and (gg[0, 3, 3] == 0).all()
        if impl == "native":
            expected = ops.filtered_grid_sample(x, grid, padding_mode=padding, filter=filt, impl="reference")
            torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("impl", IMPLS)
def test_stretch_broadcasts(impl):
    """A stretch of [N, 1, 1, 2] (one footprint per sample, as warp_affine passes) or
    [1, Ho, 1, 2] gives what its expansion to the grid's shape gives, both gradients too."""
    x = torch.randn(2, 3, 30, 26, dtype=torch.float64, requires_grad=True)
    grid = warp_grid(2, 7, 9, scale=1.0).requires_grad_()
    upstream = torch.randn(2, 3, 7, 9, dtype=torch.float64)
    for stretch in (torch.tensor([[2.5, 3.25], [1.0, 4.0]], dtype=torch.float64)[:, None, None, :],
                    torch.linspace(0.5, 5.0, 7, dtype=torch.float64)[None, :, None, None].repeat(1, 1, 1, 2)):
        for filt in FILTERS:
            kw = dict(padding_mode="reflection", filter=filt, impl=impl)
            small = ops.filtered_grid_sample(x, grid, stretch=stretch, **kw)
            full = ops.filtered_grid_sample(x, grid, stretch=stretch.expand(2, 7, 9, 2).contiguous(), **kw)
            torch.testing.assert_close(small, full, rtol=0, atol=0)
            for a, b in zip(torch.autograd.grad(small, (x, grid), upstream),
                            torch.autograd.grad(full, (x, grid), upstream)):
                torch.testing.assert_close(a, b, rtol=0, atol=0)


def bad_calls():
    x = torch.randn(2, 3, 8, 8)
    g = torch.rand(2, 4, 4, 2) * 2 - 1
    return [
        ("input", ValueError, dict(input=x[0], grid=g)),
        ("input", TypeError, dict(input=x.long(), grid=g)),
        ("grid", ValueError, dict(input=x, grid=g[..., :1])),
        ("grid", ValueError, dict(input=x, grid=g[:1])),
        ("grid", TypeError, dict(input=x, grid=g.double())),
        ("grid", ValueError, dict(input=x, grid=g.to("meta"))),
        ("stretch", ValueError, dict(input=x, grid=g, stretch=torch.ones(2, 4, 3, 2))),
        ("stretch", ValueError, dict(input=x, grid=g, stretch=torch.ones(2, 4, 4, 1))),
        ("stretch", ValueError, dict(input=x, grid=g, stretch=torch.ones(4, 2))),
        ("padding_mode", ValueError, dict(input=x, grid=g, padding_mode="mirror")),
        ("filter", ValueError, dict(input=x, grid=g, filter="lanczos")),
    ]


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_input_names_the_argument(impl):
    for name, error, kw in bad_calls():
        with pytest.raises(error, match=name):
            ops.filtered_grid_sample(**kw, impl=impl)


@needs_native
def test_native_op_checks_its_arguments():
    """The registered op validates what the wrapper would (direct torch.ops calls)."""
    x, g = torch.randn(1, 2, 5, 5), torch.rand(1, 3, 3, 2)
    s = torch.ones(1, 3, 3, 2)
    op = torch.ops.latentx.filtered_grid_sample
    with pytest.raises(ValueError, match="padding_mode"):
        op(x, g, s, 5, False, 1)
    with pytest.raises(ValueError, match="filter"):
        op(x, g, s, 0, False, -1)
    with pytest.raises(ValueError, match="grid"):
        op(x, g[..., :1], s, 0, False, 1)
    with pytest.raises(ValueError, match="stretch"):
        op(x, g, s[:, :2], 0, False, 1)
    with pytest.raises(ValueError, match="input"):
        op(torch.randn(1, 2, 0, 5), g, s, 0, False, 1)


# --- the op's registration ---------------------------------------------------------------------


@needs_native
@pytest.mark.parametrize("device", device_params())
def test_opcheck(device):
    for padding, filt in [(0, 1), (1, 2), (2, 0)]:
        x = torch.randn(2, 3, 9, 8, device=device, requires_grad=True)
        grid = warp_grid(2, 5, 4, scale=2.0, dtype=torch.float32, device=device).requires_grad_()
        stretch = reference.grid_stretch(grid, 9, 8, False)
        for s in (stretch, None):  # given, or estimated by the kernels
            torch.library.opcheck(torch.ops.latentx.filtered_grid_sample.default,
                                  (x, grid, s, padding, False, filt))


@needs_native
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", list(TOL), ids=str)
def test_kernels_estimate_the_stretch_as_the_reference(device, dtype):
    """Without a stretch the kernels estimate it per pixel (grid_stretch_at): the same outputs
    and gradients as with reference.grid_stretch's passed in, at a NaN location, on an axis of
    length 1, at footprints within rounding of an integer (snapped) and capped ones.

    The two estimates may differ in the last bit (the kernels' arithmetic may fuse multiply-adds),
    which moves the Gaussian's truncation at 3 sigma past a tap only where a tap lies exactly
    on it: on the exact resize's dyadic coordinates. That case runs the continuous filters."""
    resize = F.affine_grid(torch.eye(2, 3, dtype=torch.float64)[None].repeat(2, 1, 1), [2, 1, 16, 12],
                           align_corners=False)  # 64 -> 16 x 12: footprints 4 and 16/3
    cases = [(64, 64, resize, ["none", "tent"]), (40, 53, warp_grid(2, 9, 11, scale=1.3), FILTERS),
             (30, 30, warp_grid(2, 1, 7, scale=1.0), FILTERS), (20, 24, warp_grid(2, 5, 6, scale=40.0), FILTERS)]
    for h, w, grid, filters in cases:
        grid = grid.clone()
        grid[0, 0, 1] = float("nan")
        x = torch.randn(2, 3, h, w, dtype=dtype, device=device, requires_grad=True)
        g = grid.to(dtype=dtype, device=device).requires_grad_()
        for align in (False, True):
            given = reference.grid_stretch(g, h, w, align)
            for filt in filters:
                kw = dict(padding_mode="reflection", filter=filt, align_corners=align, impl="native")
                upstream = torch.randn(2, 3, *grid.shape[1:3], dtype=dtype, device=device)
                out_given = ops.filtered_grid_sample(x, g, stretch=given, **kw)
                out_estimated = ops.filtered_grid_sample(x, g, **kw)
                torch.testing.assert_close(out_estimated, out_given, **TOL[dtype])
                grads_given = torch.autograd.grad(out_given, (x, g), upstream)
                grads_estimated = torch.autograd.grad(out_estimated, (x, g), upstream)
                for a, b in zip(grads_estimated, grads_given):
                    torch.testing.assert_close(a, b, **TOL[dtype])


@needs_native
@pytest.mark.parametrize("device", device_params())
def test_torch_compile_fullgraph(device):
    x = torch.randn(2, 3, 16, 16, device=device, requires_grad=True)
    theta = torch.tensor([[[1.8, 0.2, 0.1], [-0.3, 2.1, 0.0]]], device=device).repeat(2, 1, 1).requires_grad_()

    def loss(x, theta):
        grid = F.affine_grid(theta, [2, 3, 6, 6], align_corners=False)
        return ops.filtered_grid_sample(x, grid, padding_mode="reflection").square().sum()

    compiled = torch.compile(loss, fullgraph=True)
    value = compiled(x, theta)
    torch.testing.assert_close(value, loss(x, theta))
    for gc, ge in zip(torch.autograd.grad(value, (x, theta)), torch.autograd.grad(loss(x, theta), (x, theta))):
        torch.testing.assert_close(gc, ge)


# --- issue 19 -------------------------------------------------------------------------------


def identity_grid(n, h, w, dtype=torch.float64):
    return F.affine_grid(torch.eye(2, 3, dtype=dtype)[None].repeat(n, 1, 1), [n, 1, h, w], align_corners=False)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=str)
@pytest.mark.parametrize("align", [False, True])
def test_non_finite_pixels_propagate_as_in_grid_sample(impl, value, align):
    """An identity warp with one NaN pixel gave 1 NaN output natively, 4 in the reference and in
    F.grid_sample; an inf pixel gave inf natively, NaN elsewhere. Every tap of the window now
    multiplies its pixel, weight 0 or not: the three agree with F.grid_sample (bilinear, zeros
    padding), at every position of the pixel (edges, corners) and for shifted warps. (At an
    exact identity a coordinate is an integer up to rounding, and grid_sample's own rounding of
    it decides whether the tap above is read: there the reference is the oracle.)"""
    for r, c in ((3, 4), (0, 0), (6, 8), (0, 5)):
        x = torch.randn(2, 2, 7, 9, dtype=torch.float64)
        x[1, 0, r, c] = value
        for shift in (0.0, 0.3, -0.45):
            grid = F.affine_grid(torch.tensor([[[1, 0, shift / 9], [0, 1, -shift / 7]]], dtype=torch.float64)
                                 .repeat(2, 1, 1), [2, 1, 7, 9], align_corners=align)
            got = ops.filtered_grid_sample(x, grid, align_corners=align, impl=impl)
            if shift == 0.0:
                expected = ops.filtered_grid_sample(x, grid, align_corners=align, impl="reference")
            else:
                expected = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=align)
            assert torch.equal(got.isnan(), expected.isnan()), (r, c, shift)
            assert torch.equal(got.isinf(), expected.isinf()), (r, c, shift)
            finite = expected.isfinite()
            torch.testing.assert_close(got[finite], expected[finite], rtol=1e-12, atol=1e-12)
            assert torch.isfinite(got[0]).all()  # the other sample is untouched


@needs_native
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("filt", FILTERS)
def test_non_finite_pixels_native_equals_reference_when_shrinking(padding, filt):
    """The same rule where the filter is stretched (every tap of the window, weight 0 or not):
    NaN / inf reach the same outputs natively as in the reference, and nothing else changes."""
    x = torch.randn(2, 3, 24, 20, dtype=torch.float64)
    grid = warp_grid(2, 7, 6, scale=2.5)
    # pixels read by some output (the bilinear taps of three locations), and an edge pixel
    for (s, ch, value), (r, c) in zip(((0, 1, float("nan")), (0, 2, float("inf")), (1, 0, float("-inf"))),
                                      ((3, 2), (5, 4), (1, 1))):
        ix, iy = (float(reference.grid_unnormalize(grid[s, r, c, k], size, False)) for k, size in ((0, 20), (1, 24)))
        x[s, ch, min(max(int(math.floor(iy)), 0), 23), min(max(int(math.floor(ix)), 0), 19)] = value
    x[0, 2, 23, 0] = float("inf")
    kw = dict(padding_mode=padding, filter=filt)
    expected = ops.filtered_grid_sample(x, grid, **kw, impl="reference")
    got = ops.filtered_grid_sample(x, grid, **kw, impl="native")
    assert torch.equal(got.isnan(), expected.isnan()) and torch.equal(got.isinf(), expected.isinf())
    assert (~expected.isfinite()).any()
    finite = expected.isfinite()
    torch.testing.assert_close(got[finite], expected[finite], rtol=1e-10, atol=1e-12)
    # the outputs whose windows hold only finite pixels do not depend on the others' values
    clean = ops.filtered_grid_sample(x.nan_to_num(0.0, 0.0, 0.0), grid, **kw, impl="native")
    torch.testing.assert_close(clean[finite], got[finite], rtol=1e-10, atol=1e-12)


@needs_native
def test_double_backward_raises_instead_of_a_graph_less_gradient():
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    grid = warp_grid(1, 4, 4, scale=2.0).requires_grad_()
    for wrt in (x, grid):
        (g,) = torch.autograd.grad(ops.filtered_grid_sample(x, grid, impl="native").square().sum(), wrt,
                                   create_graph=True)
        assert g.requires_grad
        with pytest.raises(RuntimeError, match="no double backward"):
            torch.autograd.grad(g.square().sum(), (x, grid))
    (g,) = torch.autograd.grad(ops.filtered_grid_sample(x, grid, impl="reference").square().sum(), x,
                               create_graph=True)
    assert torch.autograd.grad(g.square().sum(), x)[0].abs().sum() > 0  # the reference has it


@pytest.mark.parametrize("size", [(4.0, 4), (4, 2.5), (-1, 4), (4, -3)], ids=str)
def test_warp_affine_size_must_be_non_negative_integers(size):
    """Float sizes were truncated and a negative one failed without naming ``size``."""
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises((TypeError, ValueError), match="size"):
        ops.warp_affine(x, torch.eye(2, 3)[None], size)


def test_gaussian_is_continuous_at_its_truncation():
    """The flaky test (test_kernels_estimate_the_stretch_as_the_reference, float32, CPU: 3 of
    ~70 runs): the estimated and the given footprints differ in the last bit, and at a pixel
    where a tap lay within an ulp of the Gaussian's truncation (3 sigma) that bit moved it
    across: the truncated Gaussian jumped by exp(-4.5) = 1.1 % of its peak, the output by
    8e-4. The Gaussian is now shifted to reach 0 there: one ulp of footprint moves the output
    by about an ulp. This is the failing pixel (sample 0, row 0, column 4) of
    LATENTX_TEST_SEED=392448400."""
    torch.manual_seed(461)  # the test's stream of that session seed
    F.affine_grid(torch.eye(2, 3, dtype=torch.float64)[None].repeat(2, 1, 1), [2, 1, 16, 12], align_corners=False)
    grid = warp_grid(2, 9, 11, scale=1.3).clone()
    grid[0, 0, 1] = float("nan")
    x = torch.randn(2, 3, 40, 53)
    g = grid.float()
    given = reference.grid_stretch(g, 40, 53, False)
    s = given[0, 0, 4, 0]
    assert abs(float(reference.grid_unnormalize(g[0, 0, 4, 0], 53, False)) - 1.5 * float(s) - 34) < 1e-5
    nudged = given.clone()
    nudged[0, 0, 4, 0] = torch.nextafter(s, torch.tensor(0.0))
    for impl in ("reference", "native") if _native._C is not None else ("reference",):
        kw = dict(padding_mode="reflection", filter="gaussian", impl=impl)
        a = ops.filtered_grid_sample(x, g.requires_grad_(), stretch=given, **kw)
        b = ops.filtered_grid_sample(x, g, stretch=nudged, **kw)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        up = torch.randn(a.shape)
        # and so does the grid's gradient (the window's slope is 0 at its edge too)
        torch.testing.assert_close(torch.autograd.grad(a, g, up)[0], torch.autograd.grad(b, g, up)[0],
                                   rtol=1e-5, atol=1e-4)


@needs_native
def test_flaky_seed_replayed():
    """The flaky test's body under the torch seed of LATENTX_TEST_SEED=392448400 (its
    failing run)."""
    torch.manual_seed(461)
    test_kernels_estimate_the_stretch_as_the_reference("cpu", torch.float32)


# --- issue 13: the CUDA input gradient's atomicAdd under deterministic algorithms ------------


@pytest.fixture
def deterministic_mode():
    """Restores torch's deterministic-algorithms setting after the test."""
    was, warn_only = torch.are_deterministic_algorithms_enabled(), \
        torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(was, warn_only=warn_only)


@needs_native
@pytest.mark.needs_cuda
def test_cuda_input_gradient_honours_deterministic_algorithms(deterministic_mode):
    """The CUDA backward scatters the input gradient with atomicAdd (run-to-run rounding
    differences): under torch.use_deterministic_algorithms(True) it raises, naming the kernel;
    with warn_only it warns and computes; the grid gradient alone (no atomics) is allowed."""
    x = torch.randn(2, 3, 9, 10, device="cuda", requires_grad=True)
    grid = warp_grid(2, 5, 6, scale=2.0, dtype=torch.float32, device="cuda").requires_grad_()
    expected = torch.autograd.grad(ops.filtered_grid_sample(x, grid, impl="reference").sum(), (x, grid))
    torch.use_deterministic_algorithms(True)
    out = ops.filtered_grid_sample(x, grid, impl="native")  # the forward has no atomics
    with pytest.raises(RuntimeError, match="filtered_grid_sample_backward_cuda"):
        torch.autograd.grad(out.sum(), (x,))
    (gg,) = torch.autograd.grad(ops.filtered_grid_sample(x.detach(), grid, impl="native").sum(), (grid,))
    torch.testing.assert_close(gg, expected[1], rtol=1e-4, atol=1e-4)
    torch.use_deterministic_algorithms(True, warn_only=True)
    with pytest.warns(UserWarning, match="filtered_grid_sample_backward_cuda"):
        gx, _ = torch.autograd.grad(ops.filtered_grid_sample(x, grid, impl="native").sum(), (x, grid))
    torch.testing.assert_close(gx, expected[0], rtol=1e-4, atol=1e-4)


@needs_native
def test_cpu_input_gradient_is_allowed_under_deterministic_algorithms(deterministic_mode):
    """The CPU backward has no atomics: deterministic mode leaves it alone."""
    x = torch.randn(1, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    grid = warp_grid(1, 4, 5, scale=2.0)
    torch.use_deterministic_algorithms(True)
    (gx,) = torch.autograd.grad(ops.filtered_grid_sample(x, grid, impl="native").sum(), (x,))
    (want,) = torch.autograd.grad(ops.filtered_grid_sample(x, grid, impl="reference").sum(), (x,))
    torch.testing.assert_close(gx, want, **TOL[torch.float64])

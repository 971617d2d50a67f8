"""Property tests (hypothesis): every op's native kernel equals its reference on generated
inputs, including the odd ones each op's docstring (and README's table) gives a behaviour for:
NaN / inf placed anywhere, empty dimensions, float16 / bfloat16, non-contiguous and
overlapping (expanded, stride-0) tensors, inputs that require grad.

Small shapes and few examples: the whole file runs in well under a minute on 2 cores."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latentx import ops
from latentx.ops import _native, reference
from latentx.ops.filtered_grid_sample import affine_grid

pytestmark = pytest.mark.skipif(_native._C is None, reason="compiled library not built")
SETTINGS = dict(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HALF = (torch.float16, torch.bfloat16)
ALL_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
SPECIAL = [float("nan"), float("inf"), float("-inf")]


def tol(dtype):
    return {torch.float64: dict(rtol=1e-9, atol=1e-11), torch.float32: dict(rtol=1e-4, atol=1e-5),
            torch.float16: dict(rtol=1e-2, atol=2e-3), torch.bfloat16: dict(rtol=5e-2, atol=1e-2)}[dtype]


def assert_same(got, want, dtype):
    """Equal within the dtype's tolerance, NaN where NaN and inf where inf (with sign)."""
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want, **tol(dtype), equal_nan=True)


def layout(t, how):
    """The same values as ``t`` in another memory layout: 'contiguous', 'transposed' (a
    non-contiguous view of the last two dims) or 'expanded' (first dim broadcast from size 1:
    overlapping memory, stride 0; only where that keeps the values, i.e. the rows are equal)."""
    if how == "transposed" and t.dim() >= 2:
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if how == "expanded" and t.dim() >= 1 and t.shape[0] > 0:
        return t[:1].expand(t.shape)
    return t


def sprinkle(t, data, label):
    """Put NaN / inf / -inf at a few drawn positions of t (in place; t is a fresh tensor)."""
    if t.numel() == 0:
        return t
    t = t.contiguous()  # fresh tensors are already: written in place
    flat = t.view(-1)
    for _ in range(data.draw(st.integers(0, 2), label=f"{label}: specials")):
        i = data.draw(st.integers(0, t.numel() - 1), label=f"{label}: position")
        flat[i] = data.draw(st.sampled_from(SPECIAL), label=f"{label}: value")
    return t


LAYOUTS = st.sampled_from(["contiguous", "transposed", "expanded"])


# --- ifgsm_step -----------------------------------------------------------------------------


@settings(**SETTINGS)
@given(data=st.data())
def test_ifgsm_step(data):
    """Bit for bit (SPEC A2), NaN anywhere in z, grad or anchor; the result never requires grad."""
    shape = tuple(data.draw(st.lists(st.integers(0, 5), min_size=1, max_size=3), label="shape"))
    dtype = data.draw(st.sampled_from(ALL_DTYPES), label="dtype")
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    z = sprinkle(torch.randn(shape, generator=gen).to(dtype), data, "z")
    grad = sprinkle(torch.randn(shape, generator=gen).to(dtype), data, "grad")
    z = layout(z, data.draw(LAYOUTS, label="z layout"))
    grad = layout(grad, data.draw(LAYOUTS, label="grad layout"))
    z.requires_grad_(data.draw(st.booleans(), label="z requires grad") and z.dtype.is_floating_point)
    kw = dict(step_size=data.draw(st.floats(0, 2), label="step"), ascend=data.draw(st.booleans()))
    if data.draw(st.booleans(), label="anchor"):
        kw["anchor"] = sprinkle((z.detach() + 0.1).clone(), data, "anchor")
        kw["radius"] = data.draw(st.one_of(st.floats(0, 1), st.just(math.inf)), label="radius")
    if data.draw(st.booleans(), label="box"):
        kw["lower"], kw["upper"] = -1.0, 1.5
    got = ops.ifgsm_step(z, grad, **kw, impl="native")
    want = ops.ifgsm_step(z, grad, **kw, impl="reference")
    assert not got.requires_grad and not want.requires_grad
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


# --- cma_sample, cma_covariance_update ---------------------------------------------------------


@settings(**SETTINGS)
@given(data=st.data())
def test_cma_sample(data):
    """NaN / inf in noise, mean or E propagate as the reference's arithmetic (a box clamps inf);
    float16 / bfloat16 and sigma <= 0, D < 0 are refused by both with the same error."""
    b, lam, d = (data.draw(st.integers(lo, 4), label=n) for lo, n in ((0, "B"), (0, "lambda"), (1, "d")))
    dtype = data.draw(st.sampled_from(ALL_DTYPES), label="dtype")
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    f64 = dict(dtype=torch.float64)
    noise = sprinkle(torch.randn(b, lam, d, generator=gen, **f64), data, "noise")
    mean = sprinkle(torch.randn(b, d, generator=gen, **f64), data, "mean")
    sigma = torch.rand(b, generator=gen, **f64) + 0.1
    D = torch.rand(b, d, generator=gen, **f64) + 0.05
    E = None if data.draw(st.booleans(), label="diagonal") else torch.linalg.qr(torch.randn(b, d, d, generator=gen, **f64))[0]
    bad = data.draw(st.sampled_from([None, "sigma", "D"]), label="bad value")
    if bad == "sigma" and b:
        sigma[0] = data.draw(st.sampled_from([0.0, -1.0, float("nan")]))
    if bad == "D" and b:
        D[-1, 0] = data.draw(st.sampled_from([-0.5, float("nan")]))
    args = [layout(t.to(dtype), data.draw(LAYOUTS, label=f"layout {i}")) if t is not None else None
            for i, t in enumerate((noise, mean, sigma, E, D))]
    lower, upper = data.draw(st.sampled_from([(None, None), (-1.0, 1.0), (None, 0.5)]), label="box")
    outcomes = []
    for impl in ("native", "reference"):
        try:
            outcomes.append(ops.cma_sample(*args, lower=lower, upper=upper, impl=impl))
        except (TypeError, ValueError) as exc:
            outcomes.append(type(exc))
    sig, dd = args[2].double(), args[4].double()  # after the layout (expanding drops a row)
    bad = not bool(((sig > 0) & sig.isfinite()).all() and ((dd >= 0) & dd.isfinite()).all())
    if dtype in HALF:
        assert outcomes == [TypeError, TypeError]
    elif bad:
        assert outcomes == [ValueError, ValueError]
    else:
        for got, want in zip(*outcomes):
            assert_same(got, want, dtype)


@settings(**SETTINGS)
@given(data=st.data())
def test_cma_covariance_update(data):
    """NaN / inf anywhere propagate as the reference's arithmetic; in place equals out of place;
    float16 / bfloat16 are refused by both."""
    b, k, d = (data.draw(st.integers(lo, 4), label=n) for lo, n in ((0, "B"), (0, "k"), (1, "d")))
    dtype = data.draw(st.sampled_from(ALL_DTYPES), label="dtype")
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    f64 = dict(dtype=torch.float64)
    a = torch.randn(b, d, d, generator=gen, **f64)
    cov = sprinkle(a @ a.transpose(1, 2) + torch.eye(d, **f64), data, "cov")
    pc = sprinkle(torch.randn(b, d, generator=gen, **f64), data, "pc")
    y = sprinkle(torch.randn(b, k, d, generator=gen, **f64), data, "y")
    w = torch.randn(k, generator=gen, **f64) if data.draw(st.booleans(), label="shared w") else torch.randn(b, k, generator=gen, **f64)
    decay = torch.rand(b, generator=gen, **f64)
    args = [layout(t.to(dtype), data.draw(LAYOUTS, label=f"layout {i}")) for i, t in enumerate((cov, pc, y, w, decay))]
    if dtype in HALF:
        for impl in ("native", "reference"):
            with pytest.raises(TypeError, match="float32 or float64"):
                ops.cma_covariance_update(*args, 0.1, 0.2, impl=impl)
        return
    want = ops.cma_covariance_update(*args, 0.1, 0.2, impl="reference")
    assert_same(ops.cma_covariance_update(*args, 0.1, 0.2, impl="native"), want, dtype)
    target = args[0].clone()  # in place needs memory of its own (not an expanded view)
    ops.cma_covariance_update_(target, *args[1:], 0.1, 0.2, impl="native")
    assert_same(target, want, dtype)


# --- lpips_head ------------------------------------------------------------------------------


@settings(**SETTINGS)
@given(data=st.data())
def test_lpips_head(data):
    """NaN / inf in a feature make that sample's distance NaN (its spatial map there), as the
    reference; broadcast and expanded targets, channels-last features, half dtypes; gradients
    w.r.t. both feature maps match where the inputs are finite."""
    n, c, h, w = (data.draw(st.integers(lo, 4), label=nm) for lo, nm in ((0, "N"), (1, "C"), (1, "H"), (1, "W")))
    dtype = data.draw(st.sampled_from(ALL_DTYPES), label="dtype")
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    f0 = torch.randn(n, c, h, w, generator=gen).relu()
    f1 = torch.randn(data.draw(st.sampled_from([1, n]), label="target batch"), c, h, w, generator=gen).relu()
    specials = data.draw(st.booleans(), label="specials")
    if specials:
        sprinkle(f0, data, "feat0")
        sprinkle(f1, data, "feat1")
    f0, f1 = f0.to(dtype), f1.to(dtype)
    if data.draw(st.booleans(), label="channels last"):
        f0 = f0.contiguous(memory_format=torch.channels_last)
    f1 = layout(f1, data.draw(st.sampled_from(["contiguous", "transposed"]), label="feat1 layout"))
    if data.draw(st.booleans(), label="target expanded") and f1.shape[0] == 1:
        f1 = f1.expand(n, c, h, w)
    weight = torch.rand(c, generator=gen).to(dtype)
    mode = data.draw(st.sampled_from(["mean", "masked", "spatial"]), label="mode")
    mask = None
    if mode == "masked":
        mask = torch.rand(data.draw(st.sampled_from([1, n]), label="mask batch"), 1, h, w, generator=gen)
        mask[:, :, 0, 0] = 0.5  # a positive value per sample
        mask = mask.to(dtype)
    grads = not specials and dtype == torch.float64 and n > 0
    f0 = f0.detach().requires_grad_(grads)
    f1 = f1.detach().requires_grad_(grads)
    got = ops.lpips_head(f0, f1, weight, mask, spatial=mode == "spatial", impl="native")
    want = ops.lpips_head(f0, f1, weight, mask, spatial=mode == "spatial", impl="reference")
    assert_same(got.detach(), want.detach(), dtype)
    if grads:
        up = torch.randn(got.shape, generator=gen, dtype=dtype)
        for a, b in zip(torch.autograd.grad(got, (f0, f1), up), torch.autograd.grad(want, (f0, f1), up)):
            # the reference's gradient is NaN where a feature vector is all zeros (lpips #69)
            ok = b.isfinite()
            torch.testing.assert_close(a[ok], b[ok], **tol(dtype))


# --- filtered_grid_sample ----------------------------------------------------------------------


@settings(**SETTINGS)
@given(data=st.data())
def test_filtered_grid_sample(data):
    """NaN / inf pixels reach the outputs whose windows read them, NaN / inf grid locations give
    0, for every padding mode and filter, shrinking or not; non-contiguous and expanded inputs,
    strided grids, half dtypes; gradients match where everything is finite."""
    n, c, h, w = (data.draw(st.integers(lo, hi), label=nm) for lo, hi, nm in ((1, 2, "N"), (0, 3, "C"), (1, 9, "H"), (1, 9, "W")))
    ho, wo = data.draw(st.integers(0, 5), label="Ho"), data.draw(st.integers(1, 5), label="Wo")
    dtype = data.draw(st.sampled_from(ALL_DTYPES), label="dtype")
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    scale = data.draw(st.sampled_from([0.5, 1.0, 2.0, 4.0]), label="scale")
    theta = torch.randn(n, 2, 3, generator=gen, dtype=torch.float64) * 0.3
    theta[:, 0, 0] += scale
    theta[:, 1, 1] += scale
    grid = affine_grid(theta, (ho, wo))  # F.affine_grid's, empty sizes allowed
    grid = grid + 0.02 * torch.randn(grid.shape, generator=gen, dtype=torch.float64)
    specials = data.draw(st.booleans(), label="specials")
    if specials:
        sprinkle(x, data, "input")
        sprinkle(grid, data, "grid")
    x, grid = x.to(dtype), grid.to(dtype)
    how = data.draw(st.sampled_from(["contiguous", "transposed", "expanded", "channels last"]), label="input layout")
    x = x.contiguous(memory_format=torch.channels_last) if how == "channels last" else layout(x, how)
    if data.draw(st.booleans(), label="grid strided") and ho > 1:
        grid = grid.transpose(1, 2).contiguous().transpose(1, 2)
    kw = dict(padding_mode=data.draw(st.sampled_from(["zeros", "border", "reflection"]), label="padding"),
              filter=data.draw(st.sampled_from(["none", "tent", "gaussian"]), label="filter"),
              align_corners=data.draw(st.booleans(), label="align"))
    # Below float64 both get the reference's footprint: estimated separately, the two may differ
    # in the last bit, which is within a tolerance only away from the snapping thresholds.
    if dtype != torch.float64 or data.draw(st.booleans(), label="given stretch"):
        kw["stretch"] = reference.grid_stretch(grid, h, w, kw["align_corners"])
    grads = not specials and dtype in (torch.float64, torch.float32)
    x = x.detach().requires_grad_(grads)
    grid = grid.detach().requires_grad_(grads)
    got = ops.filtered_grid_sample(x, grid, **kw, impl="native")
    want = ops.filtered_grid_sample(x, grid, **kw, impl="reference")
    assert_same(got.detach(), want.detach(), dtype)
    if grads and got.numel():
        up = torch.randn(got.shape, generator=gen, dtype=dtype)
        for a, b in zip(torch.autograd.grad(got, (x, grid), up), torch.autograd.grad(want, (x, grid), up)):
            torch.testing.assert_close(a, b, **tol(dtype))

"""ifgsm_step: native (CPU, CUDA) against the reference, bit for bit; opcheck; compile; errors."""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import device_params
from latentx import ops
from latentx.ops import _native, reference

NATIVE = _native._C is not None
needs_native = pytest.mark.skipif(not NATIVE, reason="compiled library not built")

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
SHAPES = [(1,), (7,), (3, 5), (17, 3, 1, 1), (5, 129), (0, 5), (4, 0), ()]


def assert_identical(actual, expected):
    """Bit-for-bit equal values (NaN where NaN), same dtype and shape."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


def make_inputs(shape, dtype, device, *, anchor, per_sample, bounds, ascend, zeros=0.1):
    """Random latents and gradients, with exact zeros in the gradient (sign(0) = 0)."""
    z = (torch.randn(shape, dtype=torch.float64) * 1.5).to(dtype).to(device)
    grad = torch.randn(shape, dtype=torch.float64)
    grad[torch.rand(shape) < zeros] = 0
    grad = grad.to(dtype).to(device)
    rows = shape[0] if len(shape) else 1
    kwargs = dict(step_size=0.05, ascend=ascend)
    if per_sample and len(shape):
        kwargs["step_size"] = torch.rand(rows, device=device) * 0.1
    if anchor:
        kwargs["anchor"] = (z.double() + 0.05 * torch.randn(shape, device=device).double()).to(dtype)
        kwargs["radius"] = torch.rand(rows, device=device) * 0.08 if per_sample and len(shape) else 0.03
    if bounds:
        kwargs.update(lower=-1.25, upper=1.5)
    return z, grad, kwargs


OPTIONS = [
    dict(anchor=a, per_sample=p, bounds=b, ascend=s)
    for a, p, b, s in itertools.product([False, True], repeat=4)
]


# --- the reference itself, by hand -------------------------------------------------------


def test_reference_by_hand():
    z = torch.tensor([[0.5, 0.5, 0.5, 1.9], [0.0, 0.0, 0.0, 0.0]])
    g = torch.tensor([[1.0, -1.0, 0.0, -3.0], [float("nan"), 2.0, -2.0, 0.0]])
    out = reference.ifgsm_step(z, g, 0.25, anchor=z, radius=torch.tensor([0.2, 1.0]), lower=-2, upper=2)
    expected = torch.tensor([[0.3, 0.7, 0.5, 2.0], [float("nan"), -0.25, 0.25, 0.0]])
    torch.testing.assert_close(out, expected, equal_nan=True)
    up = reference.ifgsm_step(z, g, 0.25, ascend=True)
    torch.testing.assert_close(up[0], torch.tensor([0.75, 0.25, 0.5, 1.65]))


# --- native against reference ------------------------------------------------------------


@needs_native
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(k for k, v in o.items() if v) or "plain")
def test_matches_reference(device, dtype, shape, opts):
    z, grad, kwargs = make_inputs(shape, dtype, device, **opts)
    expected = ops.ifgsm_step(z, grad, **kwargs, impl="reference")
    assert_identical(ops.ifgsm_step(z, grad, **kwargs, impl="native"), expected)
    z_inplace = z.clone()
    returned = ops.ifgsm_step_(z_inplace, grad, **kwargs, impl="native")
    assert returned is z_inplace
    assert_identical(z_inplace, expected)


@needs_native
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_non_contiguous(device, dtype):
    base = torch.randn(9, 13, 4, dtype=dtype, device=device)
    z = base.transpose(0, 1)[:, ::2]  # [13, 5, 4], strided
    grad = torch.randn(4, 5, 13, dtype=dtype, device=device).permute(2, 1, 0)
    anchor = torch.randn(13, 5, 8, dtype=dtype, device=device)[..., ::2]
    kwargs = dict(step_size=torch.rand(13, 1, 1, device=device)[:, :, 0], anchor=anchor,
                  radius=torch.rand(26, device=device)[::2], lower=-1.0, upper=1.0)
    assert not (z.is_contiguous() or grad.is_contiguous() or anchor.is_contiguous())
    expected = ops.ifgsm_step(z, grad, **kwargs, impl="reference")
    assert_identical(ops.ifgsm_step(z, grad, **kwargs, impl="native"), expected)
    ops.ifgsm_step_(z, grad, **kwargs, impl="native")  # writes through the strided view
    assert_identical(z, expected)
    assert_identical(base.transpose(0, 1)[:, ::2], expected)


@needs_native
@pytest.mark.parametrize("device", device_params())
def test_broadcast_parameters(device):
    """One value as a number, a 0-dim, a [1] or a [B,1,1] tensor: all the same step."""
    z, grad, _ = make_inputs((6, 3, 2), torch.float32, device, anchor=False, per_sample=False,
                             bounds=False, ascend=False)
    anchor = z + 0.01
    expected = ops.ifgsm_step(z, grad, step_size=0.1, anchor=anchor, radius=0.05, impl="reference")
    for value in (0.1, torch.tensor(0.1), torch.tensor([0.1]), torch.full((6, 1, 1), 0.1)):
        value = value.to(device) if isinstance(value, torch.Tensor) else value
        for impl in ("reference", "native"):
            out = ops.ifgsm_step(z, grad, step_size=value, anchor=anchor, radius=0.05, impl=impl)
            assert_identical(out, expected)


@needs_native
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_special_values(device, dtype):
    """sign(0) = 0, NaN in grad or z stays NaN, ±inf gradients step by s, ball always held."""
    nan, inf = float("nan"), float("inf")
    z = torch.tensor([[0.3, 0.3, nan, 0.3, 1.0, -1.0]], dtype=dtype, device=device)
    g = torch.tensor([[0.0, nan, 1.0, inf, -inf, -0.0]], dtype=dtype, device=device)
    anchor = z.clone().nan_to_num(0.0)
    for impl in ("reference", "native"):
        out = ops.ifgsm_step(z, g, step_size=0.125, anchor=anchor, radius=0.5, impl=impl)
        assert out[0, 0] == z[0, 0] and out[0, 5] == z[0, 5]
        assert out[0, 1].isnan() and out[0, 2].isnan()
        opmath = reference.opmath_dtype(dtype)
        assert out[0, 3] == (z[0, 3].to(opmath) - 0.125).to(dtype)
        assert out[0, 4] == (z[0, 4].to(opmath) + 0.125).to(dtype)
    assert_identical(ops.ifgsm_step(z, g, step_size=0.125, impl="native"),
                     ops.ifgsm_step(z, g, step_size=0.125, impl="reference"))


@needs_native
@pytest.mark.parametrize("device", device_params())
def test_ball_and_box_always_held(device):
    z0 = torch.rand(64, 33, device=device) * 3 - 1.5  # inside the box, so ball ∩ box ∋ z0
    z = z0.clone()
    radius = torch.rand(64, device=device) * 0.3
    for _ in range(20):
        ops.ifgsm_step_(z, torch.randn_like(z), step_size=0.07, anchor=z0, radius=radius,
                        lower=-1.5, upper=1.5)
        excess = (z - z0).abs() - radius[:, None]
        assert excess.max() <= 1e-6
        assert z.min() >= -1.5 and z.max() <= 1.5


@needs_native
def test_no_autograd_through_step():
    z = torch.randn(4, 3, requires_grad=True)
    for impl in ("reference", "native"):
        out = ops.ifgsm_step(z, torch.randn(4, 3), step_size=0.1, impl=impl)
        assert not out.requires_grad and out.grad_fn is None


# --- property-based: shapes, strides, dtypes and parameters drawn by hypothesis ----------


@st.composite
def step_problems(draw):
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(0, 9), min_size=ndim, max_size=ndim)))
    dtype = draw(st.sampled_from(DTYPES))
    transpose = ndim >= 2 and draw(st.booleans())
    return dict(
        shape=shape, dtype=dtype, transpose=transpose,
        step=draw(st.one_of(st.floats(0, 4), st.just("per-sample"))),
        radius=draw(st.one_of(st.none(), st.floats(0, 3), st.just("per-sample"))),
        bounds=draw(st.one_of(st.none(), st.tuples(st.floats(-3, 0), st.floats(0, 3)))),
        ascend=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@needs_native
@settings(max_examples=150, deadline=None)
@given(step_problems())
def test_property_native_equals_reference(p):
    gen = torch.Generator().manual_seed(p["seed"])
    shape = p["shape"][::-1] if p["transpose"] else p["shape"]

    def draw():
        t = torch.randn(shape, generator=gen).to(p["dtype"])
        return t.transpose(0, 1) if p["transpose"] else t

    z, grad = draw(), draw()
    grad[torch.rand(grad.shape, generator=gen) < 0.2] = 0
    rows = z.shape[0]
    kwargs = dict(step_size=torch.rand(rows, generator=gen) if p["step"] == "per-sample" else p["step"],
                  ascend=p["ascend"])
    if p["radius"] is not None:
        kwargs["anchor"] = draw()
        kwargs["radius"] = torch.rand(rows, generator=gen) if p["radius"] == "per-sample" else p["radius"]
    if p["bounds"] is not None:
        kwargs["lower"], kwargs["upper"] = p["bounds"]
    assert_identical(ops.ifgsm_step(z, grad, **kwargs, impl="native"),
                     ops.ifgsm_step(z, grad, **kwargs, impl="reference"))


# --- torch.library: opcheck and torch.compile ---------------------------------------------


def opcheck_samples(device):
    z = torch.randn(5, 7, device=device)
    g = torch.randn(5, 7, device=device)
    a = z + 0.01 * torch.randn_like(z)
    per = torch.rand(5, device=device)
    return [
        (z, g, 0.1, None, None, None, None, None, None, False),
        (z, g, 0.1, per, a, None, per, -1.0, 1.0, True),
        (z.double(), g.double(), 0.2, None, a.double(), 0.05, None, None, 2.0, False),
        (z.t(), g.t(), 0.1, None, None, None, None, -0.5, None, False),
        (z.requires_grad_(), g, 0.1, None, a, 0.3, None, None, None, False),
    ]


@needs_native
@pytest.mark.parametrize("device", device_params())
def test_opcheck(device):
    for args in opcheck_samples(device):
        torch.library.opcheck(torch.ops.latentx.ifgsm_step.default, args)
        z = args[0].detach().clone()
        torch.library.opcheck(torch.ops.latentx.ifgsm_step_.default, (z,) + args[1:])


@needs_native
@pytest.mark.parametrize("device", device_params())
def test_torch_compile_fullgraph(device):
    def refine(z, z0, w):
        for _ in range(3):
            grad = 2 * (z - w)  # ∇ of ‖z − w‖²
            z = ops.ifgsm_step(z, grad, step_size=0.1, anchor=z0, radius=0.25, lower=-2, upper=2)
        return z

    def refine_(z, z0, w):
        ops.ifgsm_step_(z, 2 * (z - w), step_size=0.1, anchor=z0, radius=0.25)
        return z * 1.0

    z0, w = torch.randn(8, 16, device=device), torch.randn(8, 16, device=device)
    compiled = torch.compile(refine, fullgraph=True, backend="inductor")
    assert_identical(compiled(z0, z0, w), refine(z0, z0, w))
    compiled_ = torch.compile(refine_, fullgraph=True, backend="inductor")
    assert_identical(compiled_(z0.clone(), z0, w), refine_(z0.clone(), z0, w))


# --- bad input: a clear error that names the argument, from both implementations ---------


def bad_calls():
    z = torch.randn(4, 3)
    g = torch.randn(4, 3)
    a = torch.randn(4, 3)
    nan = float("nan")
    return [
        ("grad", ValueError, dict(z=z, grad=torch.randn(4, 2), step_size=0.1)),
        ("grad", TypeError, dict(z=z, grad=g.double(), step_size=0.1)),
        ("z", TypeError, dict(z=z.long(), grad=g.long(), step_size=1)),
        ("z", TypeError, dict(z=z.int(), grad=g.int(), step_size=1)),
        ("anchor", ValueError, dict(z=z, grad=g, step_size=0.1, anchor=a[:2], radius=0.1)),
        ("anchor", TypeError, dict(z=z, grad=g, step_size=0.1, anchor=a.half(), radius=0.1)),
        ("radius", ValueError, dict(z=z, grad=g, step_size=0.1, anchor=a, radius=-0.5)),
        ("radius", ValueError, dict(z=z, grad=g, step_size=0.1, anchor=a, radius=nan)),
        ("radius", ValueError, dict(z=z, grad=g, step_size=0.1, anchor=a, radius=torch.tensor([0.1, -1, 0.1, 0.1]))),
        ("radius", ValueError, dict(z=z, grad=g, step_size=0.1, anchor=a, radius=torch.rand(3))),
        ("radius", ValueError, dict(z=z, grad=g, step_size=0.1, radius=0.1)),
        ("anchor", ValueError, dict(z=z, grad=g, step_size=0.1, anchor=a)),
        ("step_size", ValueError, dict(z=z, grad=g, step_size=-0.1)),
        ("step_size", ValueError, dict(z=z, grad=g, step_size=float("inf"))),
        ("step_size", ValueError, dict(z=z, grad=g, step_size=torch.tensor([0.1, nan, 0.1, 0.1]))),
        ("step_size", TypeError, dict(z=z, grad=g, step_size=torch.ones(4, dtype=torch.long))),
        ("step_size", TypeError, dict(z=z, grad=g, step_size="0.1")),
        ("lower", ValueError, dict(z=z, grad=g, step_size=0.1, lower=1.0, upper=-1.0)),
        ("lower", ValueError, dict(z=z, grad=g, step_size=0.1, lower=nan)),
        ("grad", ValueError, dict(z=z, grad=g.to("meta"), step_size=0.1)),
    ]


@pytest.mark.parametrize("impl", ["reference", pytest.param("native", marks=needs_native)])
@pytest.mark.parametrize("case", range(len(bad_calls())))
def test_bad_input_names_the_argument(impl, case):
    name, error, kwargs = bad_calls()[case]
    with pytest.raises(error, match=name):
        ops.ifgsm_step(**kwargs, impl=impl)
    with pytest.raises(error, match=name):
        ops.ifgsm_step_(**kwargs, impl=impl)


@needs_native
@pytest.mark.needs_cuda
def test_mixed_devices_cuda():
    z = torch.randn(4, 3, device="cuda")
    for impl in ("reference", "native"):
        with pytest.raises(ValueError, match="grad"):
            ops.ifgsm_step(z, torch.randn(4, 3), step_size=0.1, impl=impl)
        with pytest.raises(ValueError, match="radius"):
            ops.ifgsm_step(z, z, step_size=0.1, anchor=z, radius=torch.rand(4), impl=impl)


@pytest.mark.parametrize("impl", ["reference", pytest.param("native", marks=needs_native)])
def test_in_place_refuses_a_tensor_that_requires_grad(impl):
    """Issue 19: ifgsm_step_ modified a leaf that requires grad without the error torch's own
    in-place ops give; now it refuses it (and a non-leaf) in grad mode, like z.add_()."""
    grad = torch.randn(4, 3)
    leaf = torch.randn(4, 3, requires_grad=True)
    before = leaf.detach().clone()
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        ops.ifgsm_step_(leaf, grad, step_size=0.1, impl=impl)
    assert torch.equal(leaf.detach(), before)  # untouched
    non_leaf = leaf * 2
    with pytest.raises(RuntimeError, match="requires grad"):
        ops.ifgsm_step_(non_leaf, grad, step_size=0.1, impl=impl)
    with torch.no_grad():  # an optimizer's update: allowed, as for torch's in-place ops
        ops.ifgsm_step_(leaf, grad, step_size=0.1, impl=impl)
    torch.testing.assert_close(leaf.detach(), before - 0.1 * grad.sign())

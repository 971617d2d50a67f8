"""lpips_head: native (CPU, CUDA) against the reference, gradients, opcheck, compile, errors."""

import pytest
import torch

from conftest import device_params
from latentx import ops
from latentx.ops import _native

needs_native = pytest.mark.skipif(_native._C is None, reason="compiled library not built")
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-4, atol=1e-6),
       torch.float16: dict(rtol=2e-2, atol=1e-3), torch.bfloat16: dict(rtol=5e-2, atol=5e-3)}


def head_inputs(n, c, h, w, dtype, device, *, shared_target=True, masked=True, relu=True):
    f = dict(dtype=torch.float64, device=device)
    feat0 = torch.randn(n, c, h, w, **f)
    feat1 = torch.randn(1 if shared_target else n, c, h, w, **f)
    if relu:  # backbone features are post-ReLU: exact zeros are common
        feat0, feat1 = feat0.relu(), feat1.relu()
    mask = torch.rand(1 if shared_target else n, 1, h, w, **f) if masked else None
    out = dict(feat0=feat0.to(dtype), feat1=feat1.to(dtype), weight=torch.rand(c, **f).to(dtype),
               mask=None if mask is None else mask.to(dtype))
    return out


@needs_native
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 7, 5, 6), (18, 64, 15, 15), (2, 3, 1, 9), (0, 4, 3, 3)], ids=str)
@pytest.mark.parametrize("mode", ["mean", "masked", "spatial", "per-sample-target"])
def test_forward_matches_reference(device, dtype, shape, mode):
    kw = head_inputs(*shape, dtype, device, shared_target=mode != "per-sample-target",
                     masked=mode in ("masked", "per-sample-target"))
    spatial = mode == "spatial"
    expected = ops.lpips_head(**{k: v.double() if v is not None else v for k, v in kw.items()},
                              spatial=spatial, impl="reference")
    got = ops.lpips_head(**kw, spatial=spatial, impl="native")
    assert got.dtype == dtype and got.shape == expected.shape
    torch.testing.assert_close(got.double(), expected, **TOL[dtype])


@needs_native
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("mode", ["mean", "masked", "spatial", "per-sample-target"])
def test_gradients(device, mode):
    """float64 gradcheck of the native op, and agreement with autograd of the reference."""
    kw = head_inputs(3, 5, 4, 3, torch.float64, device, shared_target=mode != "per-sample-target",
                     masked=mode in ("masked", "per-sample-target"), relu=False)
    spatial = mode == "spatial"
    f0 = kw["feat0"].requires_grad_()
    f1 = kw["feat1"].requires_grad_()

    def head(impl):
        return lambda a, b: ops.lpips_head(a, b, kw["weight"], kw["mask"], spatial=spatial, impl=impl)

    assert torch.autograd.gradcheck(head("native"), (f0, f1))
    out_n, out_r = head("native")(f0, f1), head("reference")(f0, f1)
    upstream = torch.randn_like(out_n)
    grads_n = torch.autograd.grad(out_n, (f0, f1), upstream)
    grads_r = torch.autograd.grad(out_r, (f0, f1), upstream)
    for gn, gr in zip(grads_n, grads_r):
        torch.testing.assert_close(gn, gr, rtol=1e-9, atol=1e-12)
    # Only the gradient asked for is computed.
    (g0,) = torch.autograd.grad(head("native")(f0, f1.detach()).sum(), (f0,))
    torch.testing.assert_close(g0, torch.autograd.grad(head("reference")(f0, f1).sum(), (f0,))[0])


@needs_native
@pytest.mark.parametrize("device", device_params())
def test_gradient_finite_at_zero_features(device):
    """lpips issue #69: an all-zero feature vector gives NaN through autograd; not here."""
    kw = head_inputs(2, 6, 3, 3, torch.float32, device, relu=True)
    feat0 = kw["feat0"].clone()
    feat0[0, :, 1, 1] = 0
    feat0.requires_grad_()
    (grad,) = torch.autograd.grad(ops.lpips_head(feat0, kw["feat1"], kw["weight"], impl="native").sum(), (feat0,))
    assert torch.isfinite(grad).all()
    (ref_grad,) = torch.autograd.grad(ops.lpips_head(feat0, kw["feat1"], kw["weight"], impl="reference").sum(), (feat0,))
    assert not torch.isfinite(ref_grad).all()  # the eager formula does hit the NaN
    finite = torch.isfinite(ref_grad)
    torch.testing.assert_close(grad[finite], ref_grad[finite])


@needs_native
@pytest.mark.parametrize("device", device_params())
def test_opcheck(device):
    for mode in ("mean", "masked", "spatial"):
        kw = head_inputs(3, 5, 4, 3, torch.float32, device, masked=mode == "masked", relu=False)
        kw["feat0"].requires_grad_()
        args = (kw["feat0"], kw["feat1"], kw["weight"], kw["mask"], mode == "spatial")
        torch.library.opcheck(torch.ops.latentx.lpips_head.default, args)


@needs_native
@pytest.mark.parametrize("device", device_params())
def test_torch_compile_fullgraph(device):
    kw = head_inputs(4, 8, 5, 5, torch.float32, device, relu=False)
    f0 = kw["feat0"].requires_grad_()

    def loss(f0, f1, w, m):
        return ops.lpips_head(f0, f1, w, m).sum()

    compiled = torch.compile(loss, fullgraph=True)
    value = compiled(f0, kw["feat1"], kw["weight"], kw["mask"])
    torch.testing.assert_close(value, loss(f0, kw["feat1"], kw["weight"], kw["mask"]))
    (g_c,) = torch.autograd.grad(value, (f0,))
    (g_e,) = torch.autograd.grad(loss(f0, kw["feat1"], kw["weight"], kw["mask"]), (f0,))
    torch.testing.assert_close(g_c, g_e)


def bad_calls():
    kw = head_inputs(3, 5, 4, 4, torch.float32, "cpu")
    return [
        ("feat0", ValueError, {**kw, "feat0": kw["feat0"][0]}),
        ("feat0", TypeError, {**kw, "feat0": kw["feat0"].long()}),
        ("feat1", ValueError, {**kw, "feat1": kw["feat1"][:, :4]}),
        ("feat1", ValueError, {**kw, "feat1": kw["feat1"].double()}),
        ("weight", ValueError, {**kw, "weight": kw["weight"][:4]}),
        ("mask", ValueError, {**kw, "mask": kw["mask"][..., :3]}),
        ("mask", ValueError, {**kw, "spatial": True}),
    ]


@pytest.mark.parametrize("impl", ["reference", pytest.param("native", marks=needs_native)])
def test_bad_input_names_the_argument(impl):
    for name, error, kw in bad_calls():
        spatial = kw.pop("spatial", False)
        with pytest.raises(error, match=name):
            ops.lpips_head(**kw, spatial=spatial, impl=impl)


# --- issue 19 ---------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["reference", pytest.param("native", marks=needs_native)])
@pytest.mark.parametrize("bad", ["nan", "negative", "above_one", "all_zero", "one_sample_zero"])
def test_invalid_mask_values_are_refused(impl, bad):
    """NaN, negative, > 1 and all-zero masks passed the checks (0/0 = NaN, or a meaningless
    weighted mean); every implementation now refuses them, naming the mask."""
    kw = head_inputs(2, 4, 3, 3, torch.float64, "cpu", shared_target=False)
    mask = torch.full((2, 1, 3, 3), 0.5, dtype=torch.float64)
    if bad == "nan":
        mask[0, 0, 1, 1] = float("nan")
    elif bad == "negative":
        mask[1, 0, 0, 0] = -1e-3
    elif bad == "above_one":
        mask[0, 0, 2, 2] = 1.0 + 1e-6
    elif bad == "all_zero":
        mask.zero_()
    else:
        mask[1].zero_()
    with pytest.raises(ValueError, match="mask"):
        ops.lpips_head(**{**kw, "mask": mask}, impl=impl)
    ok = mask.nan_to_num(0.5).clamp(0, 1)
    ok[:, 0, 0, 0] = 0.25  # every sample keeps a positive value
    assert torch.isfinite(ops.lpips_head(**{**kw, "mask": ok}, impl=impl)).all()


@needs_native
@pytest.mark.parametrize("device", device_params())
def test_double_backward_raises_instead_of_a_graph_less_gradient(device):
    """create_graph=True through the native op returned a gradient without a graph, so a
    gradient penalty was silently wrong; now differentiating that gradient raises. The
    reference supports it."""
    kw = head_inputs(2, 5, 4, 4, torch.float64, device, relu=False)
    f0 = kw.pop("feat0").requires_grad_()
    (g,) = torch.autograd.grad(ops.lpips_head(f0, **kw, impl="native").sum(), f0, create_graph=True)
    assert g.requires_grad
    with pytest.raises(RuntimeError, match="no double backward"):
        g.square().sum().backward()
    (g_ref,) = torch.autograd.grad(ops.lpips_head(f0, **kw, impl="reference").sum(), f0, create_graph=True)
    torch.testing.assert_close(g, g_ref.detach(), **TOL[torch.float64])
    (gg,) = torch.autograd.grad(g_ref.square().sum(), f0)
    assert torch.isfinite(gg).all() and gg.abs().sum() > 0
    # without create_graph nothing changes: a plain gradient
    (g_plain,) = torch.autograd.grad(ops.lpips_head(f0, **kw, impl="native").sum(), f0)
    assert not g_plain.requires_grad

"""cma_sample and cma_covariance_update: native (CPU, CUDA) against the float64 reference."""

import pytest
import torch

from conftest import device_params
from latentx import ops
from latentx.ops import _native

needs_native = pytest.mark.skipif(_native._C is None, reason="compiled library not built")
TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=2e-5, atol=2e-5)}


def sample_inputs(b, popsize, d, dtype, device, *, diagonal=False):
    """A random CMA state: orthonormal E, positive D, positive sigma."""
    f64 = dict(dtype=torch.float64, device=device)
    eigvecs = None if diagonal else torch.linalg.qr(torch.randn(b, d, d, **f64))[0]
    state = dict(noise=torch.randn(b, popsize, d, **f64), mean=torch.randn(b, d, **f64),
                 sigma=torch.rand(b, **f64) + 0.1, eigvecs=eigvecs,
                 sqrt_eigvals=torch.rand(b, d, **f64) * 2 + 0.05)
    return {k: None if v is None else v.to(dtype) for k, v in state.items()}


def as_f64(kwargs):
    return {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


@needs_native
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("shape", [(1, 2, 1), (3, 7, 5), (4, 18, 33), (0, 5, 4), (2, 0, 3)], ids=str)
@pytest.mark.parametrize("diagonal", [False, True], ids=["full", "diagonal"])
@pytest.mark.parametrize("bounds", [None, (-1.0, 1.5), (None, 0.5)], ids=str)
def test_sample_matches_reference(device, dtype, shape, diagonal, bounds):
    kwargs = sample_inputs(*shape, dtype, device, diagonal=diagonal)
    lower, upper = bounds or (None, None)
    x_ref, y_ref = ops.cma_sample(**as_f64(kwargs), lower=lower, upper=upper, impl="reference")
    x, y = ops.cma_sample(**kwargs, lower=lower, upper=upper, impl="native")
    assert x.dtype == y.dtype == dtype and x.shape == y.shape == shape
    torch.testing.assert_close(x.double(), x_ref, **TOL[dtype])
    torch.testing.assert_close(y.double(), y_ref, **TOL[dtype])
    if bounds is not None and x.numel():
        assert (lower is None or x.min() >= lower) and x.max() <= upper


@needs_native
@pytest.mark.parametrize("device", device_params())
def test_sample_non_contiguous(device):
    kwargs = sample_inputs(3, 6, 5, torch.float64, device)
    kwargs["noise"] = kwargs["noise"].transpose(1, 2).contiguous().transpose(1, 2)
    kwargs["eigvecs"] = kwargs["eigvecs"].transpose(1, 2)  # still orthonormal
    kwargs["mean"] = torch.randn(5, 3, dtype=torch.float64, device=device).t()
    assert not kwargs["noise"].is_contiguous() and not kwargs["mean"].is_contiguous()
    expected = ops.cma_sample(**kwargs, lower=-0.5, upper=0.5, impl="reference")
    for got, want in zip(ops.cma_sample(**kwargs, lower=-0.5, upper=0.5, impl="native"), expected):
        torch.testing.assert_close(got, want, **TOL[torch.float64])


def covariance_inputs(b, k, d, dtype, device, *, shared_weights=False):
    f64 = dict(dtype=torch.float64, device=device)
    a = torch.randn(b, d, d, **f64)
    state = dict(cov=a @ a.transpose(1, 2) / d + torch.eye(d, **f64), pc=torch.randn(b, d, **f64),
                 y=torch.randn(b, k, d, **f64),
                 weights=torch.randn(k, **f64) if shared_weights else torch.randn(b, k, **f64),
                 decay=torch.rand(b, **f64))
    return {n: v.to(dtype) for n, v in state.items()}


@needs_native
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 7, 5), (2, 18, 129), (0, 4, 3), (2, 0, 6)], ids=str)
@pytest.mark.parametrize("shared_weights", [False, True], ids=["per-instance-w", "shared-w"])
def test_covariance_update_matches_reference(device, dtype, shape, shared_weights):
    kwargs = covariance_inputs(*shape, dtype, device, shared_weights=shared_weights)
    c1, cmu = 0.03, 0.2
    expected = ops.cma_covariance_update(**as_f64(kwargs), c1=c1, cmu=cmu, impl="reference")
    got = ops.cma_covariance_update(**kwargs, c1=c1, cmu=cmu, impl="native")
    torch.testing.assert_close(got.double(), expected, **TOL[dtype])
    cov = kwargs.pop("cov")
    assert ops.cma_covariance_update_(cov, **kwargs, c1=c1, cmu=cmu, impl="native") is cov
    torch.testing.assert_close(cov.double(), expected, **TOL[dtype])


@needs_native
@pytest.mark.parametrize("device", device_params())
def test_covariance_update_non_contiguous_in_place(device):
    kwargs = covariance_inputs(3, 6, 7, torch.float64, device)
    base = kwargs["cov"].transpose(1, 2).contiguous()
    cov = base.transpose(1, 2)  # same values, strided
    kwargs["y"] = kwargs["y"].transpose(1, 2).contiguous().transpose(1, 2)
    expected = ops.cma_covariance_update(**kwargs, c1=0.1, cmu=0.3, impl="reference")
    kwargs.pop("cov")
    ops.cma_covariance_update_(cov, **kwargs, c1=0.1, cmu=0.3, impl="native")
    torch.testing.assert_close(cov, expected, **TOL[torch.float64])
    torch.testing.assert_close(base.transpose(1, 2), expected, **TOL[torch.float64])


@needs_native
@pytest.mark.parametrize("device", device_params())
def test_opcheck(device):
    s = sample_inputs(3, 6, 5, torch.float32, device)
    torch.library.opcheck(torch.ops.latentx.cma_sample.default,
                          (s["noise"], s["mean"], s["sigma"], s["eigvecs"], s["sqrt_eigvals"], -1.0, 1.0))
    torch.library.opcheck(torch.ops.latentx.cma_sample.default,
                          (s["noise"], s["mean"], s["sigma"], None, s["sqrt_eigvals"], None, None))
    c = covariance_inputs(3, 6, 5, torch.float32, device)
    args = (c["cov"], c["pc"], c["y"], c["weights"], c["decay"], 0.1, 0.2)
    torch.library.opcheck(torch.ops.latentx.cma_covariance_update.default, args)
    torch.library.opcheck(torch.ops.latentx.cma_covariance_update_.default, (c["cov"].clone(),) + args[1:])


@needs_native
@pytest.mark.parametrize("device", device_params())
def test_torch_compile_fullgraph(device):
    s = sample_inputs(2, 6, 4, torch.float32, device)
    c = covariance_inputs(2, 6, 4, torch.float32, device)

    def generation(noise, mean, sigma, eigvecs, sqrt_eigvals, cov, pc, weights, decay):
        x, y = ops.cma_sample(noise, mean, sigma, eigvecs, sqrt_eigvals, lower=-2.0, upper=2.0)
        return x, ops.cma_covariance_update(cov, pc, y, weights, decay, 0.1, 0.2)

    args = (s["noise"], s["mean"], s["sigma"], s["eigvecs"], s["sqrt_eigvals"], c["cov"], c["pc"],
            c["weights"], c["decay"])
    compiled = torch.compile(generation, fullgraph=True)
    for got, want in zip(compiled(*args), generation(*args)):
        torch.testing.assert_close(got, want)


def bad_sample_calls():
    s = sample_inputs(3, 6, 5, torch.float32, "cpu")
    return [
        ("noise", ValueError, {**s, "noise": s["noise"][0]}),
        ("noise", TypeError, {**s, "noise": s["noise"].long()}),
        ("mean", ValueError, {**s, "mean": s["mean"][:, :4]}),
        ("sigma", ValueError, {**s, "sigma": s["sigma"].double()}),
        ("eigvecs", ValueError, {**s, "eigvecs": s["eigvecs"][:2]}),
        ("sqrt_eigvals", ValueError, {**s, "sqrt_eigvals": s["sqrt_eigvals"][None]}),
        ("lower", ValueError, {**s, "lower": 1.0, "upper": -1.0}),
    ]


def bad_covariance_calls():
    c = covariance_inputs(3, 6, 5, torch.float32, "cpu")
    return [
        ("cov", ValueError, {**c, "cov": c["cov"][:, :4]}),
        ("cov", TypeError, {**c, "cov": c["cov"].int()}),
        ("pc", ValueError, {**c, "pc": c["pc"][:2]}),
        ("y", ValueError, {**c, "y": c["y"][:, :, :4]}),
        ("weights", ValueError, {**c, "weights": c["weights"][:, :5]}),
        ("decay", ValueError, {**c, "decay": c["decay"].double()}),
    ]


@pytest.mark.parametrize("impl", ["reference", pytest.param("native", marks=needs_native)])
def test_bad_input_names_the_argument(impl):
    for name, error, kwargs in bad_sample_calls():
        lower, upper = kwargs.pop("lower", None), kwargs.pop("upper", None)
        with pytest.raises(error, match=name):
            ops.cma_sample(**kwargs, lower=lower, upper=upper, impl=impl)
    for name, error, kwargs in bad_covariance_calls():
        with pytest.raises(error, match=name):
            ops.cma_covariance_update(**kwargs, c1=0.1, cmu=0.2, impl=impl)


# --- issue 19: half dtypes and bad values are refused up front, by every implementation -----


@pytest.mark.parametrize("impl", ["reference", pytest.param("native", marks=needs_native)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_dtypes_are_refused_naming_the_argument(impl, dtype):
    """float16 / bfloat16 passed the argument check and then failed inside the kernels with an
    error naming no argument (the reference computed them): all now refuse them up front."""
    kwargs = {k: None if v is None else v.to(dtype) for k, v in sample_inputs(2, 4, 3, torch.float32, "cpu").items()}
    with pytest.raises(TypeError, match="noise must be float32 or float64"):
        ops.cma_sample(**kwargs, impl=impl)
    c = {k: v.to(dtype) for k, v in covariance_inputs(2, 4, 3, torch.float32, "cpu").items()}
    with pytest.raises(TypeError, match="cov must be float32 or float64"):
        ops.cma_covariance_update(**c, c1=0.1, cmu=0.2, impl=impl)
    c32 = covariance_inputs(2, 4, 3, torch.float32, "cpu")
    with pytest.raises((TypeError, ValueError), match="weights"):
        ops.cma_covariance_update(**{**c32, "weights": c32["weights"].half()}, c1=0.1, cmu=0.2, impl=impl)


@pytest.mark.parametrize("impl", ["reference", pytest.param("native", marks=needs_native)])
@pytest.mark.parametrize("case", ["sigma_zero", "sigma_negative", "sigma_nan", "sigma_inf", "D_negative", "D_nan"])
def test_sample_refuses_bad_sigma_and_D(impl, case):
    kwargs = sample_inputs(3, 4, 2, torch.float64, "cpu")
    name, index, value = {"sigma_zero": ("sigma", 1, 0.0), "sigma_negative": ("sigma", 0, -0.5),
                          "sigma_nan": ("sigma", 2, float("nan")), "sigma_inf": ("sigma", 0, float("inf")),
                          "D_negative": ("sqrt_eigvals", (1, 1), -1e-3),
                          "D_nan": ("sqrt_eigvals", (0, 0), float("nan"))}[case]
    kwargs[name] = kwargs[name].clone()
    kwargs[name][index] = value
    with pytest.raises(ValueError, match=name):
        ops.cma_sample(**kwargs, impl=impl)
    kwargs = sample_inputs(3, 4, 2, torch.float64, "cpu")
    kwargs["sqrt_eigvals"] = kwargs["sqrt_eigvals"].clone()
    kwargs["sqrt_eigvals"][0, 0] = 0.0  # a zero eigenvalue is allowed
    ops.cma_sample(**kwargs, impl=impl)


# --- issue 13: the covariance kernel's rows per block, and its row limit ------------------------


@needs_native
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("shape", [(7, 3, 2), (5, 4, 31), (3, 4, 32), (3, 2, 33), (2, 3, 255),
                                   (2, 3, 256), (2, 3, 300)], ids=str)
def test_covariance_update_rows_per_block(device, shape):
    """The CUDA kernel packs 256 / tpr rows in a block (tpr = d rounded up to a power of two, at
    most 256): d on both sides of each power of two, and row counts that leave the last block
    part-full, against the reference."""
    kwargs = covariance_inputs(*shape, torch.float64, device)
    expected = ops.cma_covariance_update(**kwargs, c1=0.05, cmu=0.3, impl="reference")
    got = ops.cma_covariance_update(**kwargs, c1=0.05, cmu=0.3, impl="native")
    torch.testing.assert_close(got, expected, **TOL[torch.float64])


@needs_native
@pytest.mark.parametrize("in_place", [False, True], ids=["out-of-place", "in-place"])
def test_covariance_update_refuses_more_rows_than_a_cuda_grid(in_place):
    """B*d rows go on the CUDA grid's x dimension (at most 2^31 - 1 blocks); every device refuses
    more, naming cov, before copying anything. Expanded and empty tensors: no memory is used."""
    f64 = dict(dtype=torch.float64)
    b, d = 2**30, 2  # B*d = 2^31: one row too many (B alone fits)
    cov = torch.eye(d, **f64).expand(b, d, d)
    pc = torch.zeros(1, d, **f64).expand(b, d)
    y = torch.zeros(b, 0, d, **f64)
    weights = torch.zeros(0, **f64)
    decay = torch.ones(1, **f64).expand(b)
    op = torch.ops.latentx.cma_covariance_update_ if in_place else torch.ops.latentx.cma_covariance_update
    with pytest.raises(ValueError, match=r"cma_covariance_update: cov has B\*d = 1073741824\*2"):
        op(cov, pc, y, weights, decay, 0.1, 0.2)


# --- cma_eigh: the batch's eigendecompositions -------------------------------------------------


def spd_batch(b, d, dtype, device, *, repeated=False):
    """B symmetric positive definite matrices; ``repeated``: a spectrum with a repeated
    eigenvalue (eigenvectors then defined only up to a rotation of that space)."""
    f64 = dict(dtype=torch.float64, device=device)
    q = torch.linalg.qr(torch.randn(b, d, d, **f64))[0]
    w = torch.rand(b, d, **f64) * 3 + 0.1
    if repeated and d >= 3:
        w[:, 1:3] = w[:, 1:2]
    return ((q * w[:, None]) @ q.mT).to(dtype)


def check_eigh(cov, eigvals, eigvecs, want_eigvals, tol):
    """Eigenvalues as the reference's; E orthonormal; E diag(w) Eᵀ = C (sign-free checks)."""
    torch.testing.assert_close(eigvals, want_eigvals, **tol)
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device).expand_as(cov)
    torch.testing.assert_close(eigvecs.mT @ eigvecs, eye, **tol)
    torch.testing.assert_close((eigvecs * eigvals[:, None]) @ eigvecs.mT, cov, **tol)


@needs_native
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 3), (7, 33), (3, 130), (0, 4), (3, 0)], ids=str)
@pytest.mark.parametrize("repeated", [False, True], ids=["distinct", "repeated"])
def test_eigh_matches_reference(device, dtype, shape, repeated):
    cov = spd_batch(*shape, dtype, device, repeated=repeated)
    eigvals, eigvecs = ops.cma_eigh(cov, impl="native")
    want, _ = ops.cma_eigh(cov.double(), impl="reference")
    assert eigvals.shape == shape and eigvecs.shape == (*shape, shape[1])
    assert eigvals.dtype == dtype and eigvecs.dtype == dtype and not eigvals.requires_grad
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    check_eigh(cov, eigvals, eigvecs, want.to(dtype), tol)


@needs_native
@pytest.mark.parametrize("device", device_params())
def test_eigh_reads_the_lower_triangle_of_any_strides(device):
    cov = spd_batch(4, 9, torch.float64, device)
    upper_garbage = cov.tril() + torch.randn_like(cov).triu(1)  # as torch.linalg.eigh: lower read
    eigvals, eigvecs = ops.cma_eigh(upper_garbage.mT.contiguous().mT, impl="native")  # non-contiguous
    check_eigh(cov, eigvals, eigvecs, torch.linalg.eigvalsh(cov), dict(rtol=1e-10, atol=1e-10))
    expanded = cov[:1].expand(3, -1, -1)
    eigvals, eigvecs = ops.cma_eigh(expanded, impl="native")
    check_eigh(expanded, eigvals, eigvecs, torch.linalg.eigvalsh(expanded), dict(rtol=1e-10, atol=1e-10))


@needs_native
def test_eigh_batch_parallel_equals_one_thread():
    """The CPU kernel's matrices-in-parallel path against the one-thread path (torch.linalg.eigh)."""
    cov = spd_batch(6, 40, torch.float64, "cpu")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.cma_eigh(cov, impl="native")
        torch.set_num_threads(max(2, threads))
        many = ops.cma_eigh(cov, impl="native")
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(many[0], one[0], rtol=1e-12, atol=1e-12)
    check_eigh(cov, *many, one[0], dict(rtol=1e-10, atol=1e-10))


@pytest.mark.parametrize("impl", ["reference", pytest.param("native", marks=needs_native)])
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_eigh_refuses_non_finite_and_bad_input(impl, value):
    cov = spd_batch(3, 4, torch.float64, "cpu")
    cov[1, 2, 0] = value
    with pytest.raises(ValueError, match="cov must be finite"):
        ops.cma_eigh(cov, impl=impl)
    with pytest.raises(ValueError, match="cov must be \\[B, d, d\\]"):
        ops.cma_eigh(cov[:, :3], impl=impl)
    with pytest.raises(TypeError, match="cov must be float32 or float64"):
        ops.cma_eigh(cov.half(), impl=impl)


@needs_native
@pytest.mark.parametrize("device", device_params())
def test_eigh_opcheck_and_compile(device):
    cov = spd_batch(3, 5, torch.float32, device)
    torch.library.opcheck(torch.ops.latentx.cma_eigh.default, (cov,))
    compiled = torch.compile(lambda c: ops.cma_eigh(c), fullgraph=True)
    eigvals, eigvecs = compiled(cov)
    check_eigh(cov, eigvals, eigvecs, torch.linalg.eigvalsh(cov), dict(rtol=1e-4, atol=1e-4))

"""poisson_blend's failure modes: an unconverged solve is announced, NaN input is refused."""

import warnings

import pytest
import torch

from latentx.poisson import poisson_blend


def images(n=2, c=3, size=24):
    source, target = torch.rand(n, c, size, size), torch.rand(n, c, size, size)
    region = torch.zeros(size, size)
    region[5:19, 6:17] = 1
    return source, target, region


def test_unconverged_solve_warns_with_its_residual():
    """It used to return the unconverged iterate silently (the residual only in return_info)."""
    source, target, region = images()
    with pytest.warns(RuntimeWarning, match=r"did not converge: relative residual .* max_iter=3"):
        out, info = poisson_blend(source, target, region, max_iter=3, return_info=True)
    assert info["iterations"] == 3 and info["residual"] > 1e-5
    assert torch.isfinite(out).all()


def test_converged_solve_is_quiet():
    source, target, region = images()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, info = poisson_blend(source, target, region, return_info=True)
    assert info["residual"] <= 1e-5


@pytest.mark.parametrize("name", ["source", "target"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_pixels_in_the_solve_are_named(name, bad):
    """A NaN pixel in Ω spread through the whole CG solve and came back as NaN, unannounced."""
    source, target, region = images()
    x = source if name == "source" else target
    x[1, 2, 12, 10] = bad  # inside Ω (source) / on the solve's crop (target)
    if name == "target":
        x[1, 2, 4, 10] = bad  # on Ω's boundary row: the target's value enters the equation
    with pytest.raises(ValueError, match=name):
        poisson_blend(source, target, region)


def test_non_finite_pixels_outside_the_solve_are_kept():
    """Pixels that do not enter the equation (outside Ω and its boundary) are copied from target."""
    source, target, region = images()
    target[0, 0, 0, 0] = float("nan")
    source[0, 0, 23, 23] = float("inf")
    out = poisson_blend(source, target, region)
    assert out[0, 0, 0, 0].isnan() and torch.isfinite(out[..., 1:, 1:]).all()


def test_diverging_solve_raises():
    """Finite but huge pixels overflow float32 in the solve: an error, not a NaN image."""
    source, target, region = images()
    source[:, :, 10, 10] = 3e38
    source[:, :, 10, 11] = -3e38
    with pytest.raises(FloatingPointError, match="poisson_blend"):
        poisson_blend(source, target, region)


@pytest.mark.parametrize("kwargs, name", [
    (dict(tol=0.0), "tol"), (dict(tol=float("nan")), "tol"), (dict(tol="1e-5"), "tol"),
    (dict(max_iter=0), "max_iter"), (dict(max_iter=2.5), "max_iter"),
])
def test_bad_solver_settings_are_named(kwargs, name):
    source, target, region = images()
    with pytest.raises(ValueError, match=name):
        poisson_blend(source, target, region, **kwargs)


def test_bad_images_are_named():
    source, target, region = images()
    with pytest.raises(TypeError, match="source"):
        poisson_blend(source.to(torch.uint8), target, region)
    with pytest.raises(TypeError, match="region"):
        poisson_blend(source, target, region.numpy())
    bad_region = region.clone()
    bad_region[3, 3] = float("nan")
    with pytest.raises(ValueError, match="region"):
        poisson_blend(source, target, bad_region)

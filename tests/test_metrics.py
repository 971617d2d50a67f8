"""metrics: bad features are refused with the argument's name (no LinAlgError, no silent NaN)."""

import pytest
import torch

from latentx import metrics


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("which", ["real", "fake"])
def test_fid_refuses_non_finite_features(which, bad):
    """NaN features used to reach torch.linalg.eigh and raise a LinAlgError."""
    real, fake = torch.randn(40, 5), torch.randn(30, 5)
    (real if which == "real" else fake)[7, 2] = bad
    with pytest.raises(ValueError, match=rf"{which} holds NaN or infinite values .* row 7"):
        metrics.fid(real, fake)


@pytest.mark.parametrize("which", ["real", "fake"])
def test_density_coverage_refuses_non_finite_features(which):
    """NaN distances compare False: the NaN rows used to count silently as 'outside every ball'."""
    real, fake = torch.randn(40, 5), torch.randn(30, 5)
    (real if which == "real" else fake)[3, 0] = float("nan")
    with pytest.raises(ValueError, match=which):
        metrics.density_coverage(real, fake)


def test_frechet_distance_checks_its_statistics():
    mu, cov = torch.zeros(3), torch.eye(3)
    assert metrics.frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="cov2"):
        metrics.frechet_distance(mu, cov, mu, torch.eye(4))
    with pytest.raises(ValueError, match="mu2"):
        metrics.frechet_distance(mu, cov, torch.full((3,), float("nan")), cov)
    with pytest.raises(TypeError, match="cov1"):
        metrics.frechet_distance(mu, cov.numpy(), mu, cov)


def test_fid_is_still_a_distance():
    a = torch.randn(400, 3, dtype=torch.float64)
    assert metrics.fid(a, a) == pytest.approx(0.0, abs=1e-9)
    assert metrics.fid(a, a + 1) == pytest.approx(3.0, rel=1e-6)


@pytest.mark.parametrize("call, name", [
    (lambda r, f: metrics.density_coverage(r, f, k=2.0), "k"),
    (lambda r, f: metrics.density_coverage(r, f, k=40), "k"),
    (lambda r, f: metrics.density_coverage(r, f[:, :3]), "feature size"),
    (lambda r, f: metrics.fid(r, f[:, :3]), "feature size"),
    (lambda r, f: metrics.fid(r[:1], f), "real"),
    (lambda r, f: metrics.fid(r, f.to(torch.complex64)), "fake"),
    (lambda r, f: metrics.extract_features(lambda x: x, r, batch_size=0), "batch_size"),
    (lambda r, f: metrics.extract_features("net", r), "extractor"),
])
def test_bad_arguments_are_named(call, name):
    real, fake = torch.randn(40, 5), torch.randn(30, 5)
    with pytest.raises((TypeError, ValueError), match=name):
        call(real, fake)

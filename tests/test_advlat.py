"""AdvLatGAN: refine against a plain eager I-FGSM loop, the ball and bounds, chunking,
frozen models, non-finite errors; the eq. 8 search; the training steps; the metrics."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import device_params
from latentx import advlat, losses, metrics, synthetic


def eager_ifgsm(G, D, z0, steps, eps, radius=None, bounds=None):
    """AdvLatGAN-z as a user writes it by hand (eq. 5, 6): the oracle for refine."""
    z = z0.clone()
    scores = []
    for _ in range(steps):
        z.requires_grad_(True)
        logits = D(G(z)).reshape(-1)
        scores.append(logits.detach().double().mean())
        (g,) = torch.autograd.grad(-F.softplus(logits).sum(), z)  # log(1 − σ(s))
        z = z.detach() - eps * torch.sign(g)
        if radius is not None:
            z = torch.minimum(torch.maximum(z, z0 - radius), z0 + radius)
        if bounds is not None:
            z = z.clamp(*bounds)
    with torch.no_grad():
        scores.append(D(G(z)).reshape(-1).double().mean())
    return z, torch.stack(scores)


def ring_pair(dtype=torch.float32):
    return synthetic.ring_generator().to(dtype), synthetic.ring_discriminator().to(dtype)


def digits_pair():
    G, D = synthetic.digits_generator(), synthetic.digits_discriminator()
    for m in G.modules():  # non-trivial BatchNorm statistics for eval mode
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    return G.eval(), D.eval()


@pytest.mark.parametrize("impl", ["native", "reference"])
@pytest.mark.parametrize("case", ["ring", "digits"])
def test_refine_equals_eager_loop(case, impl):
    if impl == "native" and not advlat.ops.backend()["impl"] == "native":
        pytest.skip("compiled library not built")
    G, D = ring_pair() if case == "ring" else digits_pair()
    z0 = torch.randn(64, synthetic.RING_Z_DIM if case == "ring" else synthetic.DIGITS_Z_DIM)
    kwargs = dict(radius=0.05, bounds=(-2.0, 2.0))
    expected_z, expected_scores = eager_ifgsm(G, D, z0, 12, 0.01, **kwargs)
    z, scores = advlat.refine(G, D, z0, steps=12, step_size=0.01, progress=False, impl=impl, **kwargs)
    torch.testing.assert_close(z, expected_z, rtol=0, atol=0)
    torch.testing.assert_close(scores, expected_scores)
    assert (z != z0).any()


def test_chunks_give_the_same_result():
    """Chunking is invisible: float64, so no sign can flip on round-off between batch sizes."""
    G, D = ring_pair(torch.float64)
    z0 = torch.randn(30, 2, dtype=torch.float64)
    whole = advlat.refine(G, D, z0, steps=20, step_size=0.02, radius=0.1, progress=False)
    chunked = advlat.refine(G, D, z0, steps=20, step_size=0.02, radius=0.1, batch_size=7, progress=False)
    torch.testing.assert_close(chunked.z, whole.z, rtol=0, atol=0)
    torch.testing.assert_close(chunked.scores, whole.scores)
    expected_z, _ = eager_ifgsm(G, D, z0, 20, 0.02, radius=0.1)
    torch.testing.assert_close(whole.z, expected_z, rtol=0, atol=0)


def test_ball_and_bounds_always_held():
    G, D = ring_pair()
    z0 = torch.randn(500, 2) * 1.5  # some start outside the bounds
    radius = torch.rand(500) * 0.2
    step = torch.rand(500) * 0.05
    seen = []
    for steps in (1, 7, 40):
        z, scores = advlat.refine(G, D, z0, steps=steps, step_size=step, radius=radius, bounds=(-1.5, 2.0),
                                  batch_size=128, progress=False)
        seen.append(scores)
        assert z.shape == z0.shape and z.dtype == z0.dtype
        assert (z >= -1.5).all() and (z <= 2.0).all()
        inside = z0.clamp(-1.5, 2.0) == z0
        dist = (z - z0).abs().max(1).values
        assert (dist[inside.all(1)] <= radius[inside.all(1)] + 1e-6).all()
    assert len(seen[-1]) == 41


def test_refine_raises_the_score():
    """The objective of eq. 5 goes down: the mean logit after the steps is higher."""
    G, D = ring_pair()
    _, scores = advlat.refine(G, D, torch.randn(256, 2), steps=30, step_size=0.02, progress=False)
    assert scores[-1] > scores[0]


def test_models_frozen_and_restored():
    G, D = digits_pair()
    G.train()
    D.fc_frozen = False  # an arbitrary attribute stays
    next(D.parameters()).requires_grad_(False)
    flags = [p.requires_grad for p in list(G.parameters()) + list(D.parameters())]
    running = [m.running_mean.clone() for m in G.modules() if isinstance(m, nn.BatchNorm2d)]
    advlat.refine(G, D, torch.randn(16, synthetic.DIGITS_Z_DIM), steps=3, step_size=0.01, progress=False)
    assert [p.requires_grad for p in list(G.parameters()) + list(D.parameters())] == flags
    assert all(p.grad is None for p in list(G.parameters()) + list(D.parameters()))
    assert G.training and all(m.training for m in G.modules()) and not D.training
    # eval mode during refine: BatchNorm statistics untouched.
    after = [m.running_mean for m in G.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(running, after))


class Sqrt(nn.Module):
    """A 'discriminator' whose gradient is infinite at 0: finite loss, non-finite gradient."""

    def forward(self, x):
        return x.abs().sqrt().sum(1)


class Log(nn.Module):
    """A 'discriminator' that is NaN below zero: finite latents, non-finite loss."""

    def forward(self, x):
        return x[:, 0].log()


def test_non_finite_loss_names_step_and_chunk():
    z = torch.rand(10, 3) + 1
    z[5, 0] = -1.0
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 0 of chunk 1 \(latents 4:8\)"):
        advlat.refine(nn.Identity(), Log(), z, steps=2, step_size=0.1, batch_size=4, progress=False)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_latents_are_named_before_any_work(bad):
    z = torch.randn(10, 3)
    z[5, 1] = bad
    with pytest.raises(ValueError, match=r"z must be finite; latents 4:8"):
        advlat.refine(nn.Identity(), Sqrt(), z, steps=2, step_size=0.1, batch_size=4, progress=False)


def test_non_finite_gradient_names_step_and_chunk():
    z = torch.full((6, 2), 0.25)
    z[3, 0] = 0.0  # reached after one step down from 0.25 by 0.25
    with pytest.raises(FloatingPointError, match=r"non-finite gradient at step 0 of chunk 1"):
        advlat.refine(nn.Identity(), Sqrt(), z, steps=3, step_size=0.25, batch_size=3, progress=False)


def test_bad_arguments():
    G, D = ring_pair()
    z = torch.randn(4, 2)
    with pytest.raises(ValueError, match="loss"):
        advlat.refine(G, D, z, steps=1, step_size=0.1, loss="bce", progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        advlat.refine(G, D, z, steps=1, step_size=0.1, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="step_size"):
        advlat.refine(G, D, z, steps=1, step_size=torch.ones(3), progress=False)
    with pytest.raises(ValueError, match="one logit per sample"):
        advlat.refine(G, nn.Identity(), z, steps=1, step_size=0.1, progress=False)
    with pytest.raises(ValueError, match="bounds"):
        advlat.refine(G, D, z, steps=1, step_size=0.1, bounds=(1.0, -1.0), progress=False)


@pytest.mark.parametrize("kwargs, name", [
    (dict(steps=2.0), "steps"), (dict(steps=True), "steps"), (dict(steps=-1), "steps"),
    (dict(batch_size=2.5), "batch_size"), (dict(batch_size=0), "batch_size"),
    (dict(step_size=-0.1), "step_size"), (dict(step_size=float("nan")), "step_size"),
    (dict(radius=-0.1), "radius"), (dict(radius=torch.tensor([0.1, float("nan"), 0.1, 0.1])), "radius"),
    (dict(bounds=2.0), "bounds"), (dict(bounds=(0.0, float("nan"))), "bounds"), (dict(impl="fast"), "impl"),
])
def test_bad_arguments_are_named(kwargs, name):
    """Found by the bad-input review: float steps / batch_size failed deep inside range()."""
    G, D = ring_pair()
    args = {**dict(steps=2, step_size=0.1, progress=False), **kwargs}
    with pytest.raises((TypeError, ValueError), match=name):
        advlat.refine(G, D, torch.randn(4, 2), **args)


@pytest.mark.parametrize("batch_size", [None, 3])
def test_refine_zero_latents(batch_size):
    """N = 0 is a valid (empty) input: it crashed with "range() arg 3 must not be zero"."""
    G, D = ring_pair()
    z0 = torch.randn(0, 2)
    z, scores = advlat.refine(G, D, z0, steps=3, step_size=0.1, batch_size=batch_size, progress=False)
    assert z.shape == (0, 2) and z.dtype == z0.dtype
    assert scores.shape == (4,) and (scores == 0).all()


@pytest.mark.parametrize("device", device_params())
def test_models_on_device_latents_on_host(device):
    G, D = ring_pair()
    G, D = G.to(device), D.to(device)
    z0 = torch.randn(40, 2)
    z, scores = advlat.refine(G, D, z0, steps=5, step_size=0.01, radius=0.03, batch_size=16, progress=False)
    assert z.device == z0.device and scores.device.type == "cpu"
    expected, _ = eager_ifgsm(G, D, z0.to(device), 5, 0.01, radius=0.03)
    torch.testing.assert_close(z, expected.cpu(), rtol=0, atol=0)


# --- eq. 8 ----------------------------------------------------------------------------


def test_hard_pair_finds_close_generations():
    """Eq. 8 lowers the image/latent distance ratio below a random partner's; -inv raises it."""
    G, _ = digits_pair()
    z0 = torch.randn(32, synthetic.DIGITS_Z_DIM)
    kw = dict(steps=20, step_size=0.02, radius=0.3)
    hard = advlat.hard_pair(G, z0, generator=torch.Generator().manual_seed(1), **kw)
    easy = advlat.hard_pair(G, z0, inverse=True, generator=torch.Generator().manual_seed(1), **kw)
    start = advlat.hard_pair(G, z0, steps=0, step_size=0.02, radius=0.3, generator=torch.Generator().manual_seed(1))
    for z in (hard, easy, start):
        assert ((z - z0).abs() <= 0.3 + 1e-6).all()
    with torch.no_grad():
        ratio = lambda z: losses.mode_seeking_ratio(G(z0), G(z), z0, z).mean()  # noqa: E731
        assert ratio(hard) < ratio(start) < ratio(easy)
    assert all(p.requires_grad for p in G.parameters())


def test_hard_pair_conditional():
    table = nn.Embedding(3, 4)
    net = nn.Linear(8, 5)
    G = lambda z, c: net(torch.cat([z, table(c)], 1))  # noqa: E731
    z0, c = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    z = advlat.hard_pair(G, z0, c=c, steps=5, step_size=0.01, radius=0.05)
    assert z.shape == z0.shape and ((z - z0).abs() <= 0.05 + 1e-6).all()
    with pytest.raises(ValueError, match="radius"):
        advlat.hard_pair(G, z0, c=c, steps=5, step_size=0.01, radius=None)


# --- training ---------------------------------------------------------------------------


def _ring_setup(seed):
    torch.manual_seed(seed)
    G, D = synthetic.ring_generator(), synthetic.ring_discriminator()
    data = synthetic.ring(256, generator=torch.Generator().manual_seed(0))
    counter = iter(range(10**6))
    real = lambda m: data[(next(counter) * m) % 256:][:m]  # noqa: E731  (no RNG draws)
    return G, D, real


def test_zero_latent_steps_is_vanilla_gan():
    """qua with latent_steps=0 is a hand-written vanilla (non-saturating) GAN, parameter for parameter."""
    G, D, real = _ring_setup(3)
    opt_g, opt_d = (torch.optim.Adam(m.parameters(), lr=1e-3) for m in (G, D))
    torch.manual_seed(11)
    for _ in range(3):
        advlat.train_step(G, D, opt_g, opt_d, real, z_dim=2, batch_size=32, latent_steps=0)

    G2, D2, real2 = _ring_setup(3)
    o_g, o_d = (torch.optim.Adam(m.parameters(), lr=1e-3) for m in (G2, D2))
    torch.manual_seed(11)
    bce = F.binary_cross_entropy_with_logits
    for _ in range(3):
        fake = G2(torch.randn(32, 2)).detach()
        s_r, s_f = D2(real2(32)), D2(fake)
        o_d.zero_grad()
        (bce(s_r, torch.ones(32)) + bce(s_f, torch.zeros(32))).backward()
        o_d.step()
        o_g.zero_grad()
        bce(D2(G2(torch.randn(32, 2))), torch.ones(32)).backward()
        o_g.step()
    for a, b in zip(list(G.parameters()) + list(D.parameters()), list(G2.parameters()) + list(D2.parameters())):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("method,loss", [("qua", "nonsaturating"), ("qua", "wgan"), ("div", "hinge"), ("div", "lsgan")])
def test_training_steps_run(method, loss):
    G, D, real = _ring_setup(5)
    before = [p.clone() for p in G.parameters()]
    history = advlat.train(G, D, real, iterations=3, z_dim=2, batch_size=16, method=method, latent_steps=3,
                           step_size=0.01, radius=0.05, loss=loss, progress=False)
    assert len(history) == 3 and all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in history)
    assert ("ms_ratio" in history[0]) == (method == "div")
    assert any(not torch.equal(a, b) for a, b in zip(before, G.parameters()))
    assert all(p.requires_grad for p in list(G.parameters()) + list(D.parameters()))


def test_qua_latent_steps_change_training():
    """The D step really sees moved latents: with latent steps the run departs from vanilla."""
    runs = []
    for steps in (0, 5):
        G, D, real = _ring_setup(7)
        torch.manual_seed(1)
        advlat.train(G, D, real, iterations=2, z_dim=2, batch_size=16, latent_steps=steps, step_size=0.05,
                     progress=False)
        runs.append(torch.cat([p.flatten() for p in D.parameters()]))
    assert not torch.equal(*runs)


def test_div_needs_radius():
    G, D, real = _ring_setup(0)
    with pytest.raises(ValueError, match="radius"):
        advlat.train(G, D, real, iterations=1, z_dim=2, method="div", latent_steps=2, progress=False)


# --- synthetic protocol and metrics -------------------------------------------------------


def test_mode_metrics_by_hand():
    centers = synthetic.ring_centers()
    assert torch.allclose(centers[2], torch.tensor([0.0, 2.0]), atol=1e-6)
    x = torch.cat([centers[:2].repeat(2, 1), torch.tensor([[0.0, 0.0]]), centers[:2] + 0.05])
    m = synthetic.mode_metrics(x, centers, threshold=0.1)
    assert m["high_quality"] == pytest.approx(6 / 7) and m["modes"] == 2
    assert m["kl"] == pytest.approx(torch.log(torch.tensor(4.0)).item())  # uniform over 2 of 8 modes
    data = synthetic.grid(4000, generator=torch.Generator().manual_seed(0))
    full = synthetic.mode_metrics(data, synthetic.grid_centers(), threshold=0.02)
    assert full["high_quality"] == 1.0 and full["modes"] == 25 and full["kl"] < 0.01


def test_fid_and_density_coverage():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2000, 4, generator=g)
    b = torch.randn(2000, 4, generator=g)
    assert metrics.fid(a, b) < 0.05
    # Shifted mean by 1 in each of 4 dims and scaled covariance 4I: FID = 4 + 4·(1 + 4 − 2·2) = 8.
    assert metrics.frechet_distance(torch.zeros(4), torch.eye(4), torch.ones(4), 4 * torch.eye(4)) == pytest.approx(8.0)
    assert metrics.fid(a, 2 * b + 1) == pytest.approx(8.0, rel=0.15)
    same = metrics.density_coverage(a, b)
    far = metrics.density_coverage(a, b + 10)
    assert 0.8 < same["density"] < 1.2 and same["coverage"] > 0.9
    assert far == {"density": 0.0, "coverage": 0.0}
    collapsed = metrics.density_coverage(a, torch.zeros(500, 4) + 0.01 * b[:500])
    assert collapsed["coverage"] < 0.2


@pytest.mark.parametrize("radius", [0, 0.0, torch.tensor([0.1, 0.0, 0.1])])
def test_hard_pair_zero_radius_is_named(radius):
    """At r = 0 the ratio is 0/0: that used to surface as a misleading "non-finite loss"."""
    G, _ = ring_pair()
    with pytest.raises(ValueError, match="radius must .*> 0"):
        advlat.hard_pair(G, torch.randn(3, 2), steps=2, step_size=0.01, radius=radius)


def test_hard_pair_bad_steps_are_named():
    G, _ = ring_pair()
    with pytest.raises(TypeError, match="steps"):
        advlat.hard_pair(G, torch.randn(3, 2), steps=2.5, step_size=0.01, radius=0.1)


# --- eq. 8-inv in training (issue 17) ---------------------------------------------------------


def _div_step(inverse, seed=4):
    """One -div generator iteration on the digits pair from a fixed state; returns its stats."""
    torch.manual_seed(0)
    G, D = synthetic.digits_generator(), synthetic.digits_discriminator()
    data = torch.rand(64, 1, 8, 8) * 2 - 1
    opt_g, opt_d = (torch.optim.Adam(m.parameters(), lr=1e-3) for m in (G, D))
    torch.manual_seed(seed)
    return G, advlat.train_step(G, D, opt_g, opt_d, lambda m: data[:m], z_dim=synthetic.DIGITS_Z_DIM, batch_size=32,
                                method="div", latent_steps=15, step_size=0.03, radius=0.3, inverse=inverse)


def test_inverse_training_moves_the_pair_apart():
    """The G step's pair: eq. 8 pulls it together (ratio below the random start in the ball),
    eq. 8-inv pushes it apart (above), from the same state and the same draws."""
    hard = _div_step(inverse=False)[1]["ms_ratio"]
    G, easy = _div_step(inverse=True)
    easy = easy["ms_ratio"]
    # The start the search moves from: the same draws as train_step's G step (the D step drew one
    # batch of latents before it; G is unchanged until the G update).
    torch.manual_seed(0)
    G0 = synthetic.digits_generator()
    torch.manual_seed(4)
    torch.randn(32, synthetic.DIGITS_Z_DIM)
    z = torch.randn(32, synthetic.DIGITS_Z_DIM)
    start = advlat.hard_pair(G0.train(), z, steps=0, step_size=0.03, radius=0.3)
    pair = G0(torch.cat([z, start])).detach()
    ratio_start = losses.mode_seeking_ratio(pair[:32], pair[32:], z, start).mean().item()
    assert hard < ratio_start < easy
    assert easy > 1.5 * hard


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="qua", latent_steps=3, inverse=True), "method='div'"),
    (dict(method="div", latent_steps=0, radius=0.1, inverse=True), "latent_steps > 0"),
    (dict(method="div", latent_steps=2, radius=0.1, inverse=1), "inverse must be a bool"),
])
def test_inverse_bad_use_is_named(kwargs, match):
    G, D, real = _ring_setup(0)
    with pytest.raises((TypeError, ValueError), match=match):
        advlat.train(G, D, real, iterations=1, z_dim=2, progress=False, **kwargs)


# --- the "+" variants: trained model sampled through AdvLatGAN-z ---------------------------------


@pytest.mark.parametrize("method, step", [("qua", dict(latent_steps=3, step_size=0.02)),
                                          ("div", dict(latent_steps=3, step_size=0.02, radius=0.1))])
def test_plus_variant_equals_training_then_refine_by_hand(method, step):
    """AdvLatGAN-qua+ / -div+ in one call (sample with steps) = the same training, then an
    eager I-FGSM loop and G by hand."""
    z0 = torch.randn(300, 2, generator=torch.Generator().manual_seed(5))
    ball = dict(radius=0.05, bounds=(-2.5, 2.5))
    G, D, real = _ring_setup(2)
    advlat.train(G, D, real, iterations=20, z_dim=2, batch_size=32, lr=1e-3, method=method, progress=False, **step)
    plus = advlat.sample(G, D, z0, steps=25, step_size=0.01, batch_size=128, progress=False, **ball)

    G2, D2, real2 = _ring_setup(2)
    advlat.train(G2, D2, real2, iterations=20, z_dim=2, batch_size=32, lr=1e-3, method=method, progress=False, **step)
    z_hand, scores_hand = eager_ifgsm(G2.eval(), D2.eval(), z0, 25, 0.01, **ball)
    with torch.no_grad():
        x_hand = G2(z_hand)
    torch.testing.assert_close(plus.z, z_hand, rtol=0, atol=0)
    torch.testing.assert_close(plus.x, x_hand, rtol=0, atol=0)
    torch.testing.assert_close(plus.scores, scores_hand)
    plain = advlat.sample(G, D, z0, progress=False)  # the same model without "+"
    assert plain.scores is None and torch.equal(plain.z, z0)
    assert not torch.equal(plain.x, plus.x)
    with torch.no_grad():
        assert D(plus.x).mean() > D(plain.x).mean()  # the "+" moves samples where D scores them higher


def test_sample_without_steps_is_g_in_eval_mode():
    G, _ = digits_pair()
    G.train()
    z = torch.randn(50, synthetic.DIGITS_Z_DIM)
    out = advlat.sample(G, None, z, batch_size=16)
    assert G.training  # mode restored
    with torch.no_grad():
        expected = G.eval()(z)
    torch.testing.assert_close(out.x, expected)
    empty = advlat.sample(G, None, z[:0])
    assert empty.x.shape == (0, 1, 8, 8)
    with pytest.raises(ValueError, match="D is required"):
        advlat.sample(G, None, z, steps=2, step_size=0.1)
    with pytest.raises(ValueError, match="step_size is required"):
        advlat.sample(G, synthetic.digits_discriminator(), z, steps=2)


# --- class-conditional generators (G(z, c), D(x, c)) on load_digits() classes -------------------------


def conditional_digits_pair():
    torch.manual_seed(21)
    G, D = synthetic.conditional_digits_generator(), synthetic.conditional_digits_discriminator()
    for m in G.modules():  # non-trivial BatchNorm statistics for eval mode
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    return G.eval(), D.eval()


@pytest.fixture(scope="module")
def digits_data():
    pytest.importorskip("sklearn")
    return synthetic.load_digits_tensor()


def eager_conditional_ifgsm(G, D, z0, c, steps, eps, radius=None):
    """Conditional AdvLatGAN-z by hand: I-FGSM on log(1 − D(G(z, c), c)), c held fixed."""
    z = z0.clone()
    for _ in range(steps):
        z.requires_grad_(True)
        (g,) = torch.autograd.grad(-F.softplus(D(G(z, c), c)).sum(), z)
        z = z.detach() - eps * torch.sign(g)
        if radius is not None:
            z = torch.minimum(torch.maximum(z, z0 - radius), z0 + radius)
    return z


def test_conditional_refine_equals_hand_loop(digits_data):
    _, labels = digits_data
    G, D = conditional_digits_pair()
    c = labels[:40]
    z0 = torch.randn(40, synthetic.DIGITS_Z_DIM, generator=torch.Generator().manual_seed(3))
    expected = eager_conditional_ifgsm(G, D, z0, c, 10, 0.02, radius=0.1)
    z, scores = advlat.refine(G, D, z0, c=c, steps=10, step_size=0.02, radius=0.1, batch_size=16, progress=False)
    torch.testing.assert_close(z, expected, rtol=0, atol=0)
    assert scores[-1] > scores[0]
    other = advlat.refine(G, D, z0, c=(c + 1) % 10, steps=10, step_size=0.02, radius=0.1, progress=False).z
    assert not torch.equal(other, z)  # the class is used
    out = advlat.sample(G, D, z0, c=c, steps=10, step_size=0.02, radius=0.1, batch_size=16, progress=False)
    with torch.no_grad():
        torch.testing.assert_close(out.x, G(expected, c), rtol=0, atol=0)


def test_conditional_hard_pair_uses_the_class(digits_data):
    _, labels = digits_data
    G, _ = conditional_digits_pair()
    c, z0 = labels[:24], torch.randn(24, synthetic.DIGITS_Z_DIM)
    kw = dict(steps=10, step_size=0.03, radius=0.3)
    hard = advlat.hard_pair(G, z0, c=c, generator=torch.Generator().manual_seed(1), **kw)
    easy = advlat.hard_pair(G, z0, c=c, inverse=True, generator=torch.Generator().manual_seed(1), **kw)
    with torch.no_grad():
        ratio = lambda z: losses.mode_seeking_ratio(G(z0, c), G(z, c), z0, z).mean()  # noqa: E731
        assert ratio(hard) < ratio(easy)
    other = advlat.hard_pair(G, z0, c=(c + 3) % 10, generator=torch.Generator().manual_seed(1), **kw)
    assert not torch.equal(other, hard)


def _digits_real(images, labels):
    counter = iter(range(10**6))

    def real(m):  # fixed slices, no RNG draws: the hand-written loop sees the same batches
        lo = (next(counter) * m) % (len(images) - m)
        return images[lo:lo + m], labels[lo:lo + m]
    return real


def test_conditional_vanilla_step_equals_hand_written_cgan(digits_data):
    """Conditional train_step with latent_steps=0 = a hand-written conditional GAN: D's fakes use
    the real batch's classes (Alg. 2, lines 5–6), G's classes are drawn uniformly (line 9)."""
    images, labels = digits_data
    torch.manual_seed(8)
    G, D = synthetic.conditional_digits_generator(), synthetic.conditional_digits_discriminator()
    G2, D2 = synthetic.conditional_digits_generator(), synthetic.conditional_digits_discriminator()
    G2.load_state_dict(G.state_dict())
    D2.load_state_dict(D.state_dict())
    # SGD, not Adam: G's biases before BatchNorm get gradients of pure round-off, which Adam
    # would scale up to lr-sized steps that differ between two equal computations.
    opt = [torch.optim.SGD(m.parameters(), lr=0.05) for m in (G, D, G2, D2)]
    real, real2 = _digits_real(images, labels), _digits_real(images, labels)
    torch.manual_seed(11)
    for _ in range(3):
        advlat.train_step(G, D, opt[0], opt[1], real, z_dim=synthetic.DIGITS_Z_DIM, batch_size=16, num_classes=10)
    torch.manual_seed(11)
    bce = F.binary_cross_entropy_with_logits
    for _ in range(3):
        z = torch.randn(16, synthetic.DIGITS_Z_DIM)
        x, c = real2(16)
        with torch.no_grad():
            fake = G2(z, c)
        loss_d = bce(D2(x, c), torch.ones(16)) + bce(D2(fake, c), torch.zeros(16))
        opt[3].zero_grad()
        loss_d.backward()
        opt[3].step()
        z = torch.randn(16, synthetic.DIGITS_Z_DIM)
        c = torch.randint(10, (16,))
        opt[2].zero_grad()
        bce(D2(G2(z, c), c), torch.ones(16)).backward()
        opt[2].step()
    for a, b in zip(list(G.parameters()) + list(D.parameters()), list(G2.parameters()) + list(D2.parameters())):
        torch.testing.assert_close(a, b)


class RecordingD(nn.Module):
    """D(x, c) that records the classes it is called with."""

    def __init__(self, D):
        super().__init__()
        self.D, self.seen = D, []

    def forward(self, x, c):
        self.seen.append(c.clone())
        return self.D(x, c)


@pytest.mark.parametrize("method, step", [("qua", dict(latent_steps=3, step_size=0.02)),
                                          ("div", dict(latent_steps=3, step_size=0.02, radius=0.2)),
                                          ("div", dict(latent_steps=3, step_size=0.02, radius=0.2, inverse=True))])
def test_conditional_training_on_digits(digits_data, method, step):
    images, labels = digits_data
    torch.manual_seed(2)
    G, D = synthetic.conditional_digits_generator(), RecordingD(synthetic.conditional_digits_discriminator())
    real = _digits_real(images, labels)
    history = advlat.train(G, D, real, iterations=3, z_dim=synthetic.DIGITS_Z_DIM, batch_size=16, num_classes=10,
                           method=method, progress=False, **step)
    assert all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in history)
    # Every call of D sees one class per sample; in the first D step the real batch's classes
    # (the eq. 5 latent steps of -qua included).
    assert all(c.shape in ((16,), (32,)) and c.dtype == torch.int64 for c in D.seen)
    first = labels[:16]
    d_step_calls = 3 + 2 if method == "qua" else 2  # qua: 3 latent steps, then the real and fake scores
    assert all(torch.equal(c, first) for c in D.seen[:d_step_calls])
    if method == "div":  # the G step's pair shares its classes
        pair = D.seen[2]
        assert pair.shape == (32,) and torch.equal(pair[:16], pair[16:])


def _bad_classes():
    return [(torch.tensor([0, 1, 2]), ValueError, "c must hold one class per latent"),
            (torch.zeros(4), TypeError, "c must be integer class indices.*use c.long"),
            (torch.zeros(4, dtype=torch.bool), TypeError, "c must be integer class indices"),
            (torch.zeros(4, 2, dtype=torch.int64), TypeError, "c must be integer class indices"),
            ([0, 1, 2, 3], TypeError, "c must be a tensor")]


@pytest.mark.parametrize("bad, error, match", _bad_classes())
@pytest.mark.parametrize("call", ["refine", "sample", "hard_pair"])
def test_bad_class_input_is_named(call, bad, error, match):
    G, D = conditional_digits_pair()
    z = torch.randn(4, synthetic.DIGITS_Z_DIM)
    with pytest.raises(error, match=match):
        if call == "refine":
            advlat.refine(G, D, z, c=bad, steps=1, step_size=0.1, progress=False)
        elif call == "sample":
            advlat.sample(G, D, z, c=bad, steps=1, step_size=0.1, progress=False)
        else:
            advlat.hard_pair(G, z, c=bad, steps=1, step_size=0.1, radius=0.1)


def test_float_conditions_are_accepted():
    """Floating-point conditions [N, K] (one-hot rows) pass through to G and D as they are."""
    net, head = nn.Linear(6, 3), nn.Linear(3 + 4, 1)
    G = nn.Module()
    G.forward = lambda z, c: net(torch.cat([z, c], 1))
    G.net = net
    D = nn.Module()
    D.forward = lambda x, c: head(torch.cat([x, c], 1))
    D.head = head
    z, c = torch.randn(5, 2), F.one_hot(torch.arange(5) % 4, 4).float()
    out = advlat.refine(G, D, z, c=c, steps=3, step_size=0.05, progress=False)
    assert out.z.shape == z.shape and not torch.equal(out.z, z)


@pytest.mark.parametrize("classes, error, match", [
    (lambda m: torch.zeros(m), TypeError, "integer class indices"),
    (lambda m: torch.full((m,), 10), ValueError, r"\[0, num_classes=10\)"),
    (lambda m: torch.zeros(m + 1, dtype=torch.int64), ValueError, "one class per latent"),
    (None, TypeError, r"must return \(x, c\)"),
])
def test_training_bad_real_classes_are_named(digits_data, classes, error, match):
    images, _ = digits_data
    G, D = conditional_digits_pair()
    real = (lambda m: images[:m]) if classes is None else (lambda m: (images[:m], classes(m)))
    with pytest.raises(error, match=match):
        advlat.train(G.train(), D.train(), real, iterations=1, z_dim=synthetic.DIGITS_Z_DIM, batch_size=8,
                     num_classes=10, progress=False)


# --- `latentx refine` with a class input ---------------------------------------------------------


@pytest.fixture(scope="module")
def conditional_ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("cond_ckpt")
    G, D = conditional_digits_pair()
    paths = root / "g.pt", root / "d.pt"
    torch.save(G.state_dict(), paths[0])
    torch.save(D.state_dict(), paths[1])
    return paths


def _refine_cli_args(ckpts, out, *extra):
    from latentx.cli import build_parser

    return build_parser().parse_args([
        "refine", "--generator", "latentx.synthetic:conditional_digits_generator", "--generator-ckpt", str(ckpts[0]),
        "--discriminator", "latentx.synthetic:conditional_digits_discriminator", "--discriminator-ckpt", str(ckpts[1]),
        "--num-latents", "25", "--z-dim", str(synthetic.DIGITS_Z_DIM), "--shard-size", "10", "--batch-size", "8",
        "--steps", "4", "--step-size", "0.02", "--radius", "0.1", "--out", str(out), "--no-progress", *extra])


@pytest.mark.parametrize("how", ["num-classes", "class", "file"])
def test_refine_cli_conditional(conditional_ckpts, digits_data, tmp_path, how):
    """`latentx refine --classes/--class/--num-classes` = advlat.refine with those classes, shard by shard."""
    import numpy as np

    from latentx.cli import refine as refine_cli

    _, labels = digits_data
    expected_c = {"num-classes": torch.arange(25) % 10, "class": torch.full((25,), 3),
                  "file": labels[100:125]}[how]
    if how == "file":
        np.save(tmp_path / "c.npy", expected_c.numpy())
    extra = {"num-classes": ["--num-classes", "10"], "class": ["--class", "3"],
             "file": ["--classes", str(tmp_path / "c.npy")]}[how]
    args = _refine_cli_args(conditional_ckpts, tmp_path / "run", *extra)
    assert refine_cli.run(args) == 0
    z, manifest = refine_cli.load_results(tmp_path / "run")
    assert "classes" in manifest["config"]
    shards = [torch.load(tmp_path / "run" / s["file"], weights_only=True) for s in manifest["shards"]]
    torch.testing.assert_close(torch.cat([s["c"] for s in shards]), expected_c, rtol=0, atol=0)

    G, D = synthetic.conditional_digits_generator(), synthetic.conditional_digits_discriminator()
    G.load_state_dict(torch.load(conditional_ckpts[0], weights_only=True))
    D.load_state_dict(torch.load(conditional_ckpts[1], weights_only=True))
    source = refine_cli.Latents(args)
    z0 = torch.cat([source.shard(k, lo, min(lo + 10, 25)) for k, lo in enumerate(range(0, 25, 10))])
    expected = advlat.refine(G.eval(), D.eval(), z0, c=expected_c, steps=4, step_size=0.02, radius=0.1,
                             batch_size=8, progress=False)
    torch.testing.assert_close(z, expected.z, rtol=0, atol=0)


def test_refine_cli_bad_classes_are_named(conditional_ckpts, tmp_path):
    import numpy as np

    from latentx.cli import refine as refine_cli

    np.save(tmp_path / "short.npy", np.zeros(24, dtype=np.int64))
    np.save(tmp_path / "float.npy", np.zeros(25, dtype=np.float32))
    for extra, match in ((["--classes", str(tmp_path / "short.npy")], r"--classes .*one class per latent \(25\)"),
                         (["--classes", str(tmp_path / "float.npy")], r"--classes .*integer class indices"),
                         (["--class", "-1"], "--class must be"), (["--num-classes", "0"], "--num-classes must be")):
        with pytest.raises(SystemExit, match=match):
            refine_cli.run(_refine_cli_args(conditional_ckpts, tmp_path / "bad", *extra))
        assert not (tmp_path / "bad" / "config.json").exists()  # refused before anything is written
    with pytest.raises(SystemExit):  # one class source at most
        _refine_cli_args(conditional_ckpts, tmp_path / "bad", "--class", "1", "--num-classes", "3")

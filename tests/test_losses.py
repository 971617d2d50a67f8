"""GAN losses and the MSGAN term against hand-computed values."""

import math

import pytest
import torch
import torch.nn.functional as F

from latentx import losses

REAL = torch.tensor([0.0, 2.0])
FAKE = torch.tensor([0.0, -1.0])
LN2 = math.log(2)
SP_M2 = math.log(1 + math.exp(-2))  # softplus(−2)
SP_M1 = math.log(1 + math.exp(-1))  # softplus(−1)
SP_1 = math.log(1 + math.e)  # softplus(1)

# Per pair, by hand from the module table, for REAL and FAKE above.
D_EXPECTED = {
    "minimax": [2 * LN2, SP_M2 + SP_M1],
    "nonsaturating": [2 * LN2, SP_M2 + SP_M1],
    "hinge": [2.0, 0.0],
    "lsgan": [0.5, 1.0],
    "wgan": [0.0, -3.0],
}
G_EXPECTED = {
    "minimax": [-LN2, -SP_M1],
    "nonsaturating": [LN2, SP_1],
    "hinge": [0.0, 1.0],
    "lsgan": [0.5, 2.0],
    "wgan": [0.0, 1.0],
}


@pytest.mark.parametrize("kind", losses.GAN_LOSSES)
def test_discriminator_loss_by_hand(kind):
    expected = torch.tensor(D_EXPECTED[kind])
    torch.testing.assert_close(losses.discriminator_loss(REAL, FAKE, kind, "none"), expected)
    torch.testing.assert_close(losses.discriminator_loss(REAL, FAKE, kind), expected.mean())
    torch.testing.assert_close(losses.discriminator_loss(REAL, FAKE, kind, "sum"), expected.sum())


@pytest.mark.parametrize("kind", losses.GAN_LOSSES)
def test_generator_loss_by_hand(kind):
    expected = torch.tensor(G_EXPECTED[kind])
    torch.testing.assert_close(losses.generator_loss(FAKE, kind, "none"), expected)
    torch.testing.assert_close(losses.generator_loss(FAKE, kind), expected.mean())


def test_bce_losses_match_torch_bce():
    real, fake = torch.randn(50) * 3, torch.randn(50) * 3
    bce = F.binary_cross_entropy_with_logits
    expected_d = bce(real, torch.ones(50)) + bce(fake, torch.zeros(50))
    torch.testing.assert_close(losses.discriminator_loss(real, fake, "minimax"), expected_d)
    torch.testing.assert_close(losses.generator_loss(fake, "nonsaturating"), bce(fake, torch.ones(50)))
    # log(1 − D) is minus BCE against label 0.
    torch.testing.assert_close(losses.generator_loss(fake, "minimax"), -bce(fake, torch.zeros(50)))


def test_extreme_logits_stay_finite():
    """log σ(s) from logits: no −inf where sigmoid() would round to 0 or 1."""
    s = torch.tensor([-200.0, 200.0])
    assert torch.isfinite(losses.discriminator_loss(s, s, "minimax", "none")).all()
    torch.testing.assert_close(losses.generator_loss(s, "nonsaturating", "none"), torch.tensor([200.0, 0.0]))
    torch.testing.assert_close(losses.generator_loss(s, "minimax", "none"), torch.tensor([-0.0, -200.0]))


def test_gradient_penalty_of_linear_critic():
    """D(x) = w·x has ∇D = w everywhere: penalty = λ (‖w‖ − 1)² = 10 · (5 − 1)² = 160."""
    w = torch.tensor([3.0, 4.0], requires_grad=True)
    D = lambda x: x @ w  # noqa: E731
    gp = losses.gradient_penalty(D, torch.randn(8, 2), torch.randn(8, 2), weight=10.0)
    torch.testing.assert_close(gp, torch.tensor(160.0))
    (dw,) = torch.autograd.grad(gp, w)  # d/dw 10 (‖w‖ − 1)² = 20 (‖w‖ − 1) w / ‖w‖
    torch.testing.assert_close(dw, 20 * 4 * torch.tensor([3.0, 4.0]) / 5)


def test_mode_seeking_by_hand():
    x1 = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    x2 = torch.tensor([[1.0, 1.0], [1.0, 3.0]])  # d_I = [1, 1]
    z1 = torch.zeros(2, 4)
    z2 = torch.tensor([[0.5, 0.5, 0.5, 0.5], [2.0, 0.0, 0.0, 0.0]])  # d_z = [0.5, 0.5]
    torch.testing.assert_close(losses.mode_seeking_ratio(x1, x2, z1, z2), torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(losses.mode_seeking_loss(x1, x2, z1, z2, eps=0.5), torch.tensor(0.4))


def test_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        losses.generator_loss(FAKE, "bce")
    with pytest.raises(ValueError, match="same shape"):
        losses.discriminator_loss(REAL, FAKE[:1], "hinge")
    with pytest.raises(ValueError, match="reduction"):
        losses.generator_loss(FAKE, "hinge", reduction="avg")


@pytest.mark.parametrize("eps", [-1e-5, 0.0, float("nan"), float("inf"), "0.1", True])
def test_mode_seeking_loss_refuses_bad_eps(eps):
    x = torch.zeros(2, 3)  # identical generations: only eps keeps 1 / (ratio + eps) finite
    with pytest.raises(ValueError, match="eps"):
        losses.mode_seeking_loss(x, x, torch.zeros(2, 4), torch.ones(2, 4), eps=eps)

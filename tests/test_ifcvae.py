"""latentx.ifcvae (seed 004, SPEC C5): the losses against hand computations, the gradient
isolation Algorithm 1 relies on, a tiny training, resuming after a real kill, bad input, and
the ``latentx ifcvae`` command line."""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from latentx import ifcvae as I

# A model small enough for steps of a few milliseconds.
TINY = dict(image_size=16, channels=1, z_dim=4, width=4, aux_width=16)


@pytest.fixture
def one_thread():
    """Bitwise comparisons between runs need the same thread count everywhere."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _bce(p: float, t: float) -> float:
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


def _sig(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def stripes(n: int, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Toy data: a smooth random 'identity' pattern, plus a bright band along the top rows when
    the attribute y is 1. Images [n, 1, size, size] in [−1, 1], labels [n]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, 4, 4, generator=g) * 1.2 - 0.9
    x = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    y = (torch.rand(n, generator=g) < 0.5).float()
    x[:, :, : size // 4] += 0.9 * y.view(n, 1, 1, 1)
    return x.clamp(-1, 1), y


# --- losses by hand ---------------------------------------------------------------------------------

def test_bce_with_logits_by_hand():
    logits = torch.tensor([0.3, -1.2, 2.0])
    target = torch.tensor([1.0, 0.0, 0.25])
    want = sum(_bce(_sig(v), t) for v, t in zip(logits.tolist(), target.tolist())) / 3
    assert I.bce_with_logits(logits, target).item() == pytest.approx(want, rel=1e-6)
    want1 = sum(_bce(_sig(v), 1.0) for v in logits.tolist()) / 3
    assert I.bce_with_logits(logits, 1.0).item() == pytest.approx(want1, rel=1e-6)


def test_reconstruction_loss_by_hand():
    # Two images, 2 channels, 2×3 pixels: per image Σ_{c,h,w} BCE / (H·W), then the batch mean.
    x_logits = torch.tensor([0.5, -0.4, 1.5, 0.0, -2.0, 0.7, 0.1, 0.2, -0.3, 0.9, -1.1, 0.4,
                             1.0, -0.5, 0.3, 0.8, -0.6, 0.2, -0.2, 0.6, 1.2, -0.9, 0.05, 0.0]).view(2, 2, 2, 3)
    x = torch.linspace(-1, 1, 24).view(2, 2, 2, 3)
    per_image = []
    for i in range(2):
        s = sum(_bce(_sig(float(x_logits[i, c, h, w])), (float(x[i, c, h, w]) + 1) / 2)
                for c in range(2) for h in range(2) for w in range(3))
        per_image.append(s / (2 * 3))
    assert I.reconstruction_loss(x_logits, x).item() == pytest.approx(sum(per_image) / 2, rel=1e-5)


def test_kl_divergence_by_hand():
    mu = torch.tensor([[0.5, -1.0, 0.0], [2.0, 0.1, -0.3]])
    logvar = torch.tensor([[0.0, -0.5, 0.7], [0.2, -1.0, 0.0]])
    rows = [sum(0.5 * (m * m + math.exp(lv) - 1 - lv) for m, lv in zip(mr, lr)) / 3
            for mr, lr in zip(mu.tolist(), logvar.tolist())]
    assert I.kl_divergence(mu, logvar).item() == pytest.approx(sum(rows) / 2, rel=1e-6)
    # KL of the prior itself is zero.
    assert I.kl_divergence(torch.zeros(4, 5), torch.zeros(4, 5)).item() == 0.0


def test_gan_losses_by_hand():
    real = torch.tensor([1.5, 0.2])
    rec = torch.tensor([-0.3, 0.8])
    prior = torch.tensor([0.0, -2.0])
    mean = lambda vals, t: sum(_bce(_sig(v), t) for v in vals) / len(vals)  # noqa: E731
    l_gan = (mean(real.tolist(), 1) + mean(rec.tolist(), 0) + mean(prior.tolist(), 0)) / 3
    assert I.discriminator_loss(real, rec, prior).item() == pytest.approx(l_gan, rel=1e-6)
    nonsat = (mean(rec.tolist(), 1) + mean(prior.tolist(), 1)) / 2
    assert I.generator_loss(real, rec, prior).item() == pytest.approx(nonsat, rel=1e-6)
    assert I.generator_loss(real, rec, prior, "minimax").item() == pytest.approx(-l_gan, rel=1e-6)
    with pytest.raises(ValueError, match="form"):
        I.generator_loss(real, rec, prior, "wasserstein")


@pytest.mark.parametrize("reduction", ["code", "mean"])
@pytest.mark.parametrize("switches", [{}, {"aux": False}, {"kl": False}, {"gan": False}])
def test_compute_losses_by_hand(reduction, switches):
    """Every term from the networks' raw outputs, and the encoder-decoder objective built from
    them with the weights, for the full model and each ablation."""
    torch.manual_seed(0)
    model = I.IFcVAE(**TINY, seed=1).train()
    x, y = stripes(6)
    eps, z_prior = torch.randn(6, 4), torch.randn(6, 4)
    w = I.LossWeights(rho=0.3, delta=0.2, alpha=0.4, gamma=0.7, reduction=reduction, **switches)
    got = I.compute_losses(model, x, y, eps, z_prior, w)
    with torch.no_grad():
        mu, logvar, y_logit = model.encoder(x)
        z = mu + torch.exp(0.5 * logvar) * eps
        x_logits = model.decoder(torch.sigmoid(y_logit), z)
        n, hw = 6, 16 * 16
        rec = sum(_bce(_sig(float(v)), (float(t) + 1) / 2) for v, t in zip(x_logits.flatten(), x.flatten())) / hw / n
        kl = sum(0.5 * (m * m + math.exp(lv) - 1 - lv) for m, lv in zip(mu.flatten().tolist(),
                                                                    logvar.flatten().tolist())) / 4 / n
        cls = sum(_bce(_sig(float(v)), float(t)) for v, t in zip(y_logit[:, 0], y)) / n
        a = model.auxiliary(z)
        aux = sum(_bce(_sig(float(v)), float(t)) for v, t in zip(a, y)) / n
    assert got["rec"].item() == pytest.approx(rec, rel=1e-4)
    assert got["kl"].item() == pytest.approx(kl, rel=1e-4)
    assert got["class"].item() == pytest.approx(cls, rel=1e-4)
    assert got["aux"].item() == pytest.approx(aux, rel=1e-4)
    assert got["auxiliary"].item() == pytest.approx(aux, rel=1e-4)
    if w.gan:
        with torch.no_grad():
            x_rec = torch.sigmoid(x_logits) * 2 - 1
            x_prior = torch.sigmoid(model.decoder(y.view(-1, 1), z_prior)) * 2 - 1
            c = [model.discriminator(t).tolist() for t in (x, x_rec, x_prior)]
        mean = lambda vals, t: sum(_bce(_sig(v), t) for v in vals) / len(vals)  # noqa: E731
        gan = (mean(c[0], 1) + mean(c[1], 0) + mean(c[2], 0)) / 3
        gen = (mean(c[1], 1) + mean(c[2], 1)) / 2
        assert got["gan"].item() == pytest.approx(gan, rel=1e-4)
        assert got["gen"].item() == pytest.approx(gen, rel=1e-4)
    else:
        gan = gen = 0.0
        assert got["gan"].item() == 0.0 and got["gen"].item() == 0.0
    b = n if reduction == "code" else 1
    want = b * (rec + (0.4 * kl if w.kl else 0) + (0.2 * gen if w.gan else 0)) + 0.3 * cls - (0.7 * aux if w.aux else 0)
    assert got["encoder_decoder"].item() == pytest.approx(want, rel=1e-4, abs=1e-5)


# --- gradient isolation -----------------------------------------------------------------------------

def test_attribute_head_reads_detached_features():
    model = I.IFcVAE(**TINY, seed=0)
    x, y = stripes(4)
    _, _, y_logit = model.encoder(x)
    loss = I.bce_with_logits(y_logit, y.view(-1, 1))
    conv = [p for p in model.encoder.features.parameters()]
    grads = torch.autograd.grad(loss, conv + list(model.encoder.attribute.parameters()), allow_unused=True)
    assert all(g is None for g in grads[:len(conv)])               # the convolutions: untouched
    assert all(g is not None and g.abs().sum() > 0 for g in grads[len(conv):])  # the head: trained
    # Without the detach (the option) L_class does reach the convolutions: the test can fail.
    free = I.IFcVAE(**TINY, detach_attribute_head=False, seed=0)
    _, _, y_logit = free.encoder(x)
    g = torch.autograd.grad(I.bce_with_logits(y_logit, y.view(-1, 1)), list(free.encoder.features.parameters()))
    assert any(t.abs().sum() > 0 for t in g)


def _rmsprop_first_step(p: torch.Tensor, g: torch.Tensor, lr: float, alpha: float) -> torch.Tensor:
    # torch.optim.RMSprop's first step from zero state: v = (1 − α) g², p ← p − lr·g/(√v + 1e-8).
    return p - lr * g / ((1 - alpha) * g * g).sqrt().add(1e-8)


@pytest.mark.parametrize("gan", [True, False])
def test_one_training_step_follows_each_groups_own_loss(gan, one_thread):
    """After one step of train(), E and D moved by RMSprop on the encoder-decoder objective
    alone, A on L_aux alone and C on L_gan alone (simultaneous updates from one forward pass):
    A's loss does not update D or E, C's does not update D, −γ L_aux does not update A."""
    x, y = stripes(8)
    model = I.IFcVAE(**TINY, seed=3)
    start = copy.deepcopy(model)
    I.train(model, x, y, epochs=1, batch_size=8, lr=1e-3, seed=5, gan=gan, progress=False)

    # The same batch and noise as train() draws them (white box: its RNG order).
    ref = copy.deepcopy(start).train()
    order = I._epoch_order(5, 0, 8)
    gen = torch.Generator().manual_seed(5)
    eps = torch.randn(8, 4, generator=gen)
    z_prior = torch.randn(8, 4, generator=gen)
    terms = I.compute_losses(ref, x[order], y[order], eps, z_prior, I.LossWeights(gan=gan))
    groups = {"encoder_decoder": (list(ref.encoder.parameters()) + list(ref.decoder.parameters()), 0.99),
              "auxiliary": (list(ref.auxiliary.parameters()), 0.99),
              "discriminator": (list(ref.discriminator.parameters()), 0.9)}
    expected = {}
    for name, (params, alpha) in groups.items():
        if name == "discriminator" and not gan:
            expected.update({id(p): p.detach().clone() for p in params})
            continue
        grads = torch.autograd.grad(terms[name], params, retain_graph=True, allow_unused=True)
        for p, g in zip(params, grads):
            g = torch.zeros_like(p) if g is None else g
            expected[id(p)] = _rmsprop_first_step(p.detach(), g, 1e-3, alpha)
    trained = dict(model.named_parameters())
    for name, p in ref.named_parameters():
        torch.testing.assert_close(trained[name].detach(), expected[id(p)], rtol=1e-5, atol=1e-6,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_a_different_auxiliary_does_not_change_the_naive_model(one_thread):
    """With aux=False (the naive cVAE-GAN) E and D after training do not depend on A at all,
    though A is trained alongside: its loss reaches no other network."""
    x, y = stripes(32)
    a, b = I.IFcVAE(**TINY, seed=0), I.IFcVAE(**TINY, seed=0)
    with torch.no_grad():
        for p in b.auxiliary.parameters():
            p.mul_(-2.0)
    I.train(a, x, y, epochs=3, batch_size=16, aux=False, progress=False)
    I.train(b, x, y, epochs=3, batch_size=16, aux=False, progress=False)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        if name.startswith("auxiliary"):
            assert not torch.equal(p, q)
        else:
            assert torch.equal(p, q), name


# --- a tiny training --------------------------------------------------------------------------------

def test_tiny_training_reduces_rec_and_factorises(one_thread):
    """On toy data whose attribute is a bright band (no KL and no GAN term, so nothing but L_aux
    keeps y out of ẑ): L_rec falls; without the factorisation term A reads y off ẑ and the
    decoder ignores ŷ (the paper's naive cVAE); with it A's accuracy sits near chance and
    setting ŷ = 1 vs 0 paints the band."""
    x, y = stripes(256, seed=1)
    common = dict(epochs=30, batch_size=32, lr=1e-3, seed=0, progress=False, gan=False, kl=False)
    runs = {}
    for aux in (True, False):
        model = I.IFcVAE(image_size=16, channels=1, z_dim=8, width=8, aux_width=64, seed=0)
        runs[aux] = (model, I.train(model, x, y, aux=aux, **common).history)
    for _, hist in runs.values():
        assert hist[-1]["rec"] < hist[0]["rec"] - 0.03
    late = lambda h: sum(e["aux_acc"] for e in h[-5:]) / 5  # noqa: E731
    on, off = late(runs[True][1]), late(runs[False][1])
    assert off > 0.9, off            # without L_aux, ẑ tells y apart
    assert on < 0.65, on             # with it, A is near chance
    band = lambda m: float(m.edit(x[:64], 1.0)[:, :, :4].mean() - m.edit(x[:64], 0.0)[:, :, :4].mean())  # noqa: E731
    assert band(runs[True][0]) > 0.6
    assert abs(band(runs[False][0])) < 0.3


# --- resuming after a kill --------------------------------------------------------------------------

_CHILD = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from test_ifcvae import stripes, TINY
    from latentx import ifcvae as I
    x, y = stripes(64)
    model = I.IFcVAE(**TINY, seed=0)
    I.train(model, x, y, epochs={epochs}, batch_size=16, seed=7, checkpoint={path!r}, checkpoint_every=1,
            progress=False)
""")


def test_resume_after_a_real_kill_equals_an_uninterrupted_run(tmp_path, one_thread):
    epochs, path = 30, str(tmp_path / "ckpt.pt")
    total = epochs * 4
    code = _CHILD.format(tests=os.path.dirname(__file__), epochs=epochs, path=path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
    killed_at = None
    try:
        deadline = time.time() + 120
        while time.time() < deadline and child.poll() is None:
            if os.path.exists(path):
                step = torch.load(path, weights_only=True)["step"]
                if step >= 5:
                    child.send_signal(signal.SIGKILL)
                    child.wait()
                    killed_at = step
                    break
            time.sleep(0.01)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert killed_at is not None, f"the child ended before it could be killed: {child.stderr.read().decode()[-2000:]}"
    saved = torch.load(path, weights_only=True)
    assert 5 <= saved["step"] < total, "the kill must land in the middle of the run"

    x, y = stripes(64)
    resumed_model = I.IFcVAE(**TINY, seed=123)   # other initial weights: the checkpoint's replace them
    resumed = I.train(resumed_model, x, y, epochs=epochs, batch_size=16, seed=7, checkpoint=path,
                      checkpoint_every=1000, progress=False)
    assert resumed.resumed_from == saved["step"] and resumed.steps == total
    straight_model = I.IFcVAE(**TINY, seed=0)
    straight = I.train(straight_model, x, y, epochs=epochs, batch_size=16, seed=7, progress=False)
    for (name, p), q in zip(straight_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(p, q), name
    assert resumed.history == straight.history

    # The same checkpoint refuses other settings, another configuration or other data.
    with pytest.raises(ValueError, match="other settings.*lr"):
        I.train(I.IFcVAE(**TINY), x, y, epochs=epochs, batch_size=16, seed=7, lr=2e-3, checkpoint=path,
                progress=False)
    with pytest.raises(ValueError, match="z_dim=4 \\(asked: 5\\)"):
        I.train(I.IFcVAE(**{**TINY, "z_dim": 5}), x, y, epochs=epochs, batch_size=16, seed=7, checkpoint=path,
                progress=False)
    with pytest.raises(ValueError, match="training data differ"):
        I.train(I.IFcVAE(**TINY), x.flip(0), y.flip(0), epochs=epochs, batch_size=16, seed=7, checkpoint=path,
                progress=False)


def test_model_save_and_load(tmp_path):
    model = I.IFcVAE(**TINY, seed=0).eval()
    x, _ = stripes(5)
    model.save(tmp_path / "m.pt")
    back = I.IFcVAE.load(tmp_path / "m.pt")
    torch.testing.assert_close(back.edit(x, 0.3), model.edit(x, 0.3))
    assert torch.load(tmp_path / "m.pt", weights_only=True)["config"] == model.config.to_dict()
    with pytest.raises(ValueError, match="width=4 \\(asked: 8\\)"):
        I.IFcVAE.load(tmp_path / "m.pt", config=I.IFcVAEConfig(**{**TINY, "width": 8}))
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a latentx IFcVAE file"):
        I.IFcVAE.load(tmp_path / "other.pt")


# --- the editing API and bad input ------------------------------------------------------------------

def test_edit_shapes_values_and_mode():
    model = I.IFcVAE(**TINY, seed=0).train()
    x, _ = stripes(3)
    for value in (0.0, 1.0, 0.5, torch.tensor([0.0, 1.0, 0.25])):
        out = model.edit(x, value)
        assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
    assert model.training                              # restored after editing
    mu, logvar, y_hat = model.encode(x)
    assert mu.shape == (3, 4) and logvar.shape == (3, 4) and y_hat.shape == (3,)
    torch.testing.assert_close(model.edit(x, y_hat), model.reconstruct(x))
    g = torch.Generator().manual_seed(0)
    assert not torch.equal(model.edit(x, 1.0, sample=True, generator=g), model.edit(x, 1.0))


def test_config_sizes():
    for size, levels in ((8, 1), (16, 2), (32, 3), (64, 4)):
        model = I.IFcVAE(image_size=size, channels=3, z_dim=6, width=2, aux_width=8)
        assert model.config.levels == levels
        x = torch.zeros(2, 3, size, size)
        assert model.edit(x, 1.0).shape == (2, 3, size, size)
    assert I.IFcVAEConfig().image_size == 64 and I.IFcVAEConfig().z_dim == 100
    for bad in (48, 4, 0, 100):
        with pytest.raises(ValueError, match="image_size"):
            I.IFcVAEConfig(image_size=bad)


def test_bad_input_is_refused_clearly():
    model = I.IFcVAE(**TINY)
    x, y = stripes(16)
    with pytest.raises(ValueError, match=r"\[-1, 1\].*\[0, 1\] images use 2x - 1"):
        I.train(model, (x + 1) * 2, y, epochs=1, batch_size=8, progress=False)
    with pytest.raises(ValueError, match=r"\[N, 1, 16, 16\].*got \[16, 1, 32, 32\]"):
        I.train(model, torch.zeros(16, 1, 32, 32), y, epochs=1, batch_size=8, progress=False)
    with pytest.raises(ValueError, match=r"\[N, 1, 16, 16\]"):
        model.edit(torch.zeros(2, 3, 16, 16), 1.0)
    with pytest.raises(TypeError, match="floating point"):
        model.edit(torch.zeros(2, 1, 16, 16, dtype=torch.uint8), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        model.edit(torch.full((2, 1, 16, 16), float("nan")), 1.0)
    with pytest.raises(ValueError, match="labels must be 0 or 1.*0.5"):
        I.train(model, x, torch.full((16,), 0.5), epochs=1, batch_size=8, progress=False)
    with pytest.raises(ValueError, match="labels must be 0 or 1.*2.0"):
        I.train(model, x, torch.arange(16) % 3, epochs=1, batch_size=8, progress=False)
    with pytest.raises(ValueError, match="labels has 15 entries for 16 images"):
        I.train(model, x, y[:15], epochs=1, batch_size=8, progress=False)
    with pytest.raises(ValueError, match=r"y must lie in \[0, 1\]"):
        model.edit(x, 1.5)
    with pytest.raises(ValueError, match="one value per image"):
        model.edit(x, torch.ones(3))
    with pytest.raises(ValueError, match="fewer than one batch"):
        I.train(model, x, y, epochs=1, batch_size=32, progress=False)
    with pytest.raises(ValueError, match="rho must be a finite number >= 0"):
        I.train(model, x, y, epochs=1, batch_size=8, rho=-1.0, progress=False)
    with pytest.raises(ValueError, match="gan_form"):
        I.train(model, x, y, epochs=1, batch_size=8, gan_form="hinge", progress=False)


def test_judges_of_the_digit_data():
    data = I.digits_ink_dataset(16)
    x, labels, ink = data["images"], data["labels"], data["ink"]
    assert x.shape[1:] == (1, 16, 16) and x.min() >= -1 and x.max() <= 1
    lo, hi = data["thresholds"]
    assert bool((ink[labels == 1] >= hi).all()) and bool((ink[labels == 0] <= lo).all())
    assert lo < data["judge_threshold"] < hi
    assert set(data["digits"].unique().tolist()) == set(range(10))
    torch.testing.assert_close(I.ink_mass(x), ink)
    # ink_mass by hand on a half-inked image.
    half = -torch.ones(1, 1, 4, 4)
    half[..., :2, :] = 1
    assert I.ink_mass(half).item() == pytest.approx(0.5)


# --- the command line -------------------------------------------------------------------------------

def test_cli_train_resume_and_edit(tmp_path, capsys, one_thread):
    from latentx import cli

    x, y = stripes(40)
    torch.save({"images": x, "labels": y}, tmp_path / "toy.pt")
    out = tmp_path / "run"
    args = ["ifcvae", "train", "--data", str(tmp_path / "toy.pt"), "--out", str(out), "--epochs", "2",
            "--batch-size", "16", "--image-size", "16", "--z-dim", "4", "--width", "4", "--aux-width", "16",
            "--no-progress", "--threads", "1"]
    assert cli.main(args) == 0
    for name in ("config.json", "checkpoint.pt", "model.pt", "history.json", "losses.png"):
        assert (out / name).exists(), name
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert cli.main(args[:7] + ["4"] + args[8:]) == 0            # --epochs 4: resumes and extends
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [1, 2, 3, 4]
    with pytest.raises(SystemExit, match="other settings.*no_aux"):
        cli.main(args + ["--no-aux"])

    from latentx.cli import ifcvae as ifcvae_cli
    paths = []
    for i in range(3):
        p = tmp_path / f"in{i}.png"
        ifcvae_cli.write_image(p, x[i].repeat(3, 1, 1))
        paths.append(str(p))
    edits = tmp_path / "edits"
    assert cli.main(["ifcvae", "edit", *paths, "--model", str(out / "model.pt"), "--out", str(edits),
                     "--values", "0,0.5,1", "--threads", "1"]) == 0
    assert (edits / "grid.png").exists()
    record = json.loads((edits / "edits.json").read_text())
    assert [r["image"] for r in record["images"]] == paths and record["values"] == [0.0, 0.5, 1.0]
    for r in record["images"]:
        assert 0 <= r["y_hat"] <= 1
    with pytest.raises(SystemExit, match="--values"):
        cli.main(["ifcvae", "edit", paths[0], "--model", str(out / "model.pt"), "--out", str(edits),
                  "--values", "0,2"])


def test_face_smile_dataset_and_judge(tmp_path):
    """The face data: labels follow the happy thresholds, the ambiguous band is dropped, classes
    balanced; the cache reads back (to 1/255) and refuses other settings; the Haar judge fits a
    threshold and gives verdicts."""
    pytest.importorskip("gan_face_generate", reason="the face DCGAN ships in gan_face_generate")
    pytest.importorskip("h5py", reason="the expression classifier's weights are read with h5py")
    pytest.importorskip("cv2", reason="the Haar judge needs OpenCV")
    cache = tmp_path / "faces.pt"
    data = I.face_smile_dataset(120, seed=3, low=0.1, high=0.3, cache=cache, progress=False)
    happy, labels = data["happy"], data["labels"]
    assert data["images"].shape[1:] == (3, 64, 64) and len(labels) >= 4
    assert bool((happy[labels == 1] >= 0.3).all()) and bool((happy[labels == 0] < 0.1).all())
    assert int(labels.sum()) * 2 == len(labels)                       # balanced
    back = I.face_smile_dataset(120, seed=3, low=0.1, high=0.3, cache=cache, progress=False)
    assert torch.equal(back["labels"], labels)
    assert (back["images"] - data["images"]).abs().max() <= 1 / 255 + 1e-6
    with pytest.raises(ValueError, match="holds another data set"):
        I.face_smile_dataset(120, seed=4, low=0.1, high=0.3, cache=cache, progress=False)
    judge = I.SmileJudge()
    bacc = judge.fit(data["images"], labels)
    assert 0.5 <= bacc <= 1 and judge.threshold is not None
    on, off = judge.accepts(data["images"], 1), judge.accepts(data["images"], 0)
    assert torch.equal(on, ~off)

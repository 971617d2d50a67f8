"""The shipped conditional digits GAN (models.load("digits-cgan")) and the class-search helpers
(latentx.class_search) that ``latentx project --class auto`` and experiments/class_search.py use."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from latentx import models, synthetic
from latentx.class_search import class_candidates, mean_embedding, nearest_class, project_best_class
from latentx.digits_cgan import DIGITS_CGAN_CHECKPOINT, digits_frame, digits_split

CLASSIFIER = Path(__file__).resolve().parents[1] / "experiments" / "checkpoints" / "digits_classifier.pt"


@pytest.fixture(scope="module")
def G():
    return models.load("digits-cgan")


def test_digits_cgan_interface(G):
    assert (G.z_dim, G.class_dim, G.resolution, G.truncation) == (32, 16, (32, 32), 2.0)
    assert G.class_embedding.shape == (10, 16) and G.object_box == (-1.0, -1.0, 1.0, 1.0)
    torch.testing.assert_close(G.class_embedding, G.net.embedding.weight)
    z = torch.randn(4, 32).clamp(-2, 2)
    x = G(z, G.embed([0, 3, 5, 9]))
    assert x.shape == (4, 3, 32, 32) and float(x.min()) >= -1 and float(x.max()) <= 1
    torch.testing.assert_close(x[:, 0], x[:, 2])  # grey in RGB
    # the output layer is the bilinear ×4 of the native 8×8 digit, as real digits are framed
    torch.testing.assert_close(x, digits_frame(G.net.forward_native(z, G.embed([0, 3, 5, 9]))))
    assert DIGITS_CGAN_CHECKPOINT.endswith("digits_cgan.pt")
    with pytest.raises(ValueError, match="takes no"):
        models.load("digits-cgan", z_dim=8)
    train, held = digits_split()
    assert len(train) == 1400 and len(held) == 397 and not set(train.tolist()) & set(held.tolist())


def test_digits_cgan_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.load("digits-cgan", checkpoint=str(tmp_path / "missing.pt"))
    bad = tmp_path / "bad.pt"
    torch.save({"generator": {"fc.weight": torch.zeros(1)}}, bad)
    with pytest.raises(ValueError, match="DigitsCGANGenerator"):
        models.load("digits-cgan", checkpoint=str(bad))
    torch.save({"G": {}}, bad)
    with pytest.raises(KeyError, match="'generator'"):
        models.load("digits-cgan", checkpoint=str(bad))


def test_digits_cgan_samples_are_their_class(G):
    """The shipped weights are trained: the project's digit classifier reads most samples as the
    class they were drawn for (an untrained G scores about 10 %)."""
    clf = synthetic.digits_classifier()
    clf.load_state_dict(torch.load(CLASSIFIER, weights_only=True))
    clf.eval()
    labels = torch.arange(10).repeat_interleave(20)
    z = torch.randn(len(labels), 32).clamp(-2, 2)
    with torch.no_grad():
        read = clf(G.net.forward_native(z, G.embed(labels))).argmax(1)
    assert float((read == labels).float().mean()) > 0.7


def test_nearest_class_and_mean(G):
    W = G.class_embedding
    assert nearest_class(G, W).tolist() == list(range(10))
    spacing = torch.cdist(W, W).masked_fill(torch.eye(10, dtype=torch.bool), 1e9).amin(1)
    noisy = W + 0.2 * spacing[:, None] * torch.nn.functional.normalize(torch.randn_like(W), dim=1)
    assert nearest_class(G, noisy[None]).shape == (1, 10) and nearest_class(G, noisy).tolist() == list(range(10))
    torch.testing.assert_close(mean_embedding(G), W.mean(0))
    with pytest.raises(ValueError, match=r"c must be \[\.\.\., 16\]"):
        nearest_class(G, torch.zeros(3, 5))
    with pytest.raises(ValueError, match="no class embedding"):
        nearest_class(models.Generator(torch.nn.Identity(), 3), torch.zeros(1, 3))


def test_class_candidates(G):
    # Targets drawn by G itself with the screening's own first latent: their class scores 0.
    gen = torch.Generator().manual_seed(5)
    z0 = torch.randn(16, 32, generator=gen).clamp(-2, 2)[:1].repeat(3, 1)
    labels = torch.tensor([1, 4, 8])
    with torch.no_grad():
        targets = G(z0, G.embed(labels))
    cand = class_candidates(G, targets, k=3, seed=5, boxes=[[0, 0, 32, 32]] * 3)
    assert cand.shape == (3, 3) and cand[:, 0].tolist() == labels.tolist()
    # restricted pool; a classifier's top-k
    cand = class_candidates(G, targets, k=2, among=[2, 8, 9], seed=5)
    assert set(cand.flatten().tolist()) <= {2, 8, 9} and int(cand[2, 0]) == 8
    logits = torch.zeros(3, 10)
    logits[0, 7], logits[0, 2], logits[1, 0], logits[1, 1], logits[2, 5], logits[2, 6] = 3, 2, 3, 2, 3, 2
    assert class_candidates(G, targets, k=2, classifier=lambda x: logits).tolist() == [[7, 2], [0, 1], [5, 6]]
    with pytest.raises(ValueError, match="k must be"):
        class_candidates(G, targets, k=11)
    with pytest.raises(ValueError, match=r"logits \[3, 10\]"):
        class_candidates(G, targets, classifier=lambda x: torch.zeros(3, 5))
    with pytest.raises(ValueError, match="among"):
        class_candidates(G, targets, among=[10])


@pytest.mark.filterwarnings("ignore:latentx.projection. LPIPS")
def test_project_best_class_keeps_the_better_class(G):
    # Two targets of class 3 drawn by G; candidates 3 and 0 in either order.
    z = torch.randn(2, 32).clamp(-2, 2)
    with torch.no_grad():
        targets = G(z, G.embed([3, 3]))
    res, info = project_best_class(G, targets, [[3, 0], [0, 3]], method="adam", transform=False, seeds=2,
                                   adam_steps=25, seed=0, progress=False)
    assert info["chosen"].tolist() == [3, 3]
    assert info["losses"].shape == (2, 2)
    torch.testing.assert_close(res.best()["losses"]["total"].double().cpu(), info["losses"].min(1).values)
    assert res.c.shape == (2, 2, 16) and info["nearest"].tolist() == [3, 3]
    with pytest.raises(ValueError, match="do not pass classes"):
        project_best_class(G, targets, [3], classes=[3, 3])
    with pytest.raises(ValueError, match=r"candidates must be \[2, k\]"):
        project_best_class(G, targets, [[3], [3], [3]])

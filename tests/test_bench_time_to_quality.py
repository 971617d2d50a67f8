"""The time-to-quality benchmark's quick path, and the baseline's evaluation count."""

import torch
from torch import nn

from latentx import models
from latentx.benchmarks import bench_time_to_quality as ttq
from latentx.benchmarks.bench_projection import Pix2LatentStyle, astronaut_targets, lpips_package_module


def test_quick_run_compares_at_equal_quality():
    threads = torch.get_num_threads()
    rows = ttq.run(torch.device("cpu"), quick=True)
    assert torch.get_num_threads() == threads
    image, summary = rows
    assert image["image"] == 0 and summary["image"] == "median / rate"
    assert image["speedup"] == image["baseline s"] / image["latentx s to target"]
    assert image["loss ratio"] == image["latentx loss"] / image["baseline loss"]
    if image["reached"] == "yes":  # quality equal or better (float32 rounding aside)
        assert image["latentx loss"] <= image["baseline loss"] * (1 + 1e-5)
    assert image["baseline G evals"] == ttq.baseline_evaluations(ttq.QUICK_BASELINE)
    assert 0 < image["latentx G evals"]
    assert summary["baseline images/hour"] == 3600 / image["baseline s"]
    assert "load average" in summary["note"] and "agree" in summary["note"]


class Counting(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.rows = net, 0

    def forward(self, z):
        out = self.net(z)
        self.rows += z.shape[0]
        if out.requires_grad:
            out.register_hook(lambda g, n=z.shape[0]: setattr(self, "rows", self.rows + n))
        return out


def test_baseline_evaluations_match_what_the_baseline_runs():
    face = models.load("face-dcgan")
    counting = Counting(face.net)
    G = models.Generator(counting, face.z_dim, latent_shape=face.latent_shape, object_box=face.object_box)
    G.resolution
    counting.rows = 0
    images, boxes = astronaut_targets(1, torch.device("cpu"))
    budget = dict(seeds=2, meta_steps=2, grad_steps=2, last_grad_steps=3, transform_meta_steps=2,
                  transform_grad_steps=1)
    r = Pix2LatentStyle(G, lpips_package_module(torch.device("cpu"))).project(images[0], boxes[0], **budget)
    assert counting.rows == ttq.baseline_evaluations(budget)
    losses = ttq.baseline_quality(face, ttq.quiet(lambda: ttq.default_lpips("alex"))[0], images[0], boxes[0], r)
    assert losses.shape == (2,) and losses.isfinite().all()


def test_ablation_runs_every_variant_to_the_recorded_targets():
    import pytest

    def rows(loss):
        return [{"image": 0, "baseline s": 1.0, "baseline loss": loss}, {"image": "median / rate"}]

    easy = ttq.ablation(torch.device("cpu"), rows(10.0), fast=ttq.QUICK_FAST, threads=1)
    assert [r["variant"] for r in easy] == list(ttq.ABLATIONS)
    assert all(r["reached"] == "1/1" for r in easy)  # any start beats a loss of 10
    assert all(r["median speedup"] == 1.0 / r["median s to target"] for r in easy)
    impossible = ttq.ablation(torch.device("cpu"), rows(0.0), fast=ttq.QUICK_FAST, threads=1)
    assert all(r["reached"] == "0/1" for r in impossible)
    assert "load average" in impossible[0]["note"]
    with pytest.raises(ValueError, match="no per-image rows"):
        ttq.ablation(torch.device("cpu"), [{"image": "median / rate"}])

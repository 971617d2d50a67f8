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
    losses = ttq.baseline_quality(face, ttq._quiet(lambda: ttq.default_lpips("alex"))[0], images[0], boxes[0], r)
    assert losses.shape == (2,) and losses.isfinite().all()

"""The projection throughput benchmark's quick path: the agreement check passes and both
implementations are timed."""

import torch

from latentx.benchmarks import bench_projection


def test_quick_run_checks_agreement_and_times_both():
    threads = torch.get_num_threads()
    rows = bench_projection.run(torch.device("cpu"), quick=True, repeats=1)
    assert torch.get_num_threads() == threads  # quick runs on one thread, then restores
    variants = [row["variant"] for row in rows]
    assert variants[0].startswith("pix2latent-style") and "latentx project()" in variants
    assert "agrees with latentx's" in rows[0]["note"]  # written only after check_agreement passed
    assert [row["images/call"] for row in rows] == [1, 1, 2]
    for row in rows:
        assert {"s/transform gen", "s/latent gen", "s last gen", "s/image", "images/hour", "x baseline"} <= set(row)
    assert "| latentx project()" in bench_projection.format_table(rows)

import os
import random
import zlib

import pytest
import torch

# Fresh random inputs on every run; LATENTX_TEST_SEED=<n> replays a failing one.
SEED = int(os.environ.get("LATENTX_TEST_SEED", random.SystemRandom().randrange(2**31)))


def pytest_report_header(config):
    return f"latentx test seed: {SEED} (LATENTX_TEST_SEED={SEED} to replay)"


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_cuda: runs only where a CUDA device is present")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device on this machine")
    for item in items:
        if "needs_cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_rng(request):
    """Each test draws from its own stream of the session seed."""
    torch.manual_seed(SEED ^ zlib.crc32(request.node.nodeid.encode()))


def device_params():
    """'cpu', and 'cuda' marked needs_cuda."""
    return ["cpu", pytest.param("cuda", marks=pytest.mark.needs_cuda)]

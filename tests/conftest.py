import os
import random
import zlib

import pytest
import torch

from latentx.ops import _native

# Fresh random inputs on every run; LATENTX_TEST_SEED=<n> replays a failing one.
SEED = int(os.environ.get("LATENTX_TEST_SEED", random.SystemRandom().randrange(2**31)))

# LATENTX_REQUIRE_NATIVE=1 (set by .ci/run): the compiled library must load and every
# native-vs-reference test must run. Without it such tests skip where _C is missing (a source
# checkout), and a build that compiles but does not load would pass with its kernels untested.
REQUIRE_NATIVE = os.environ.get("LATENTX_REQUIRE_NATIVE", "0").strip() == "1"
# The reason every native test skips with when _C is missing (skipif marks, pytest.skip calls
# and the needs_native marker below all say it).
NATIVE_SKIP_REASON = "compiled library not built"


def pytest_report_header(config):
    try:
        info = _native.backend()
        backend = f"{info['impl']} ({info['reason']})"
    except ValueError as e:  # a bad LATENTX_IMPL: the tests that read it say so
        backend = str(e)
    return [f"latentx test seed: {SEED} (LATENTX_TEST_SEED={SEED} to replay)",
            f"latentx backend: {backend}" + ("; LATENTX_REQUIRE_NATIVE=1" if REQUIRE_NATIVE else "")]


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_cuda: runs only where a CUDA device is present")
    config.addinivalue_line(
        "markers", "needs_native: needs the compiled library latentx._C (skips without it; "
        "fails instead under LATENTX_REQUIRE_NATIVE=1)")


def pytest_sessionstart(session):
    if REQUIRE_NATIVE and _native.backend()["impl"] != "native":
        pytest.exit(f"LATENTX_REQUIRE_NATIVE=1 but latentx.backend() runs the reference: "
                    f"{_native.backend()['reason']}", returncode=1)


def pytest_collection_modifyitems(config, items):
    skip_native = pytest.mark.skip(reason=NATIVE_SKIP_REASON)
    skip_cuda = pytest.mark.skip(reason="no CUDA device on this machine")
    for item in items:
        if "needs_native" in item.keywords and _native._C is None:
            item.add_marker(skip_native)
        if "needs_cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under LATENTX_REQUIRE_NATIVE=1 a test skipped for a missing compiled library fails."""
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_NATIVE and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if "compiled library" in reason:
            report.outcome = "failed"
            report.longrepr = (f"LATENTX_REQUIRE_NATIVE=1, but this native test was skipped: {reason} "
                               f"(latentx._C: {_native._LOAD_ERROR or 'loaded'})")


@pytest.fixture(autouse=True)
def _seed_rng(request):
    """Each test draws from its own stream of the session seed."""
    torch.manual_seed(SEED ^ zlib.crc32(request.node.nodeid.encode()))


def device_params():
    """'cpu', and 'cuda' marked needs_cuda."""
    return ["cpu", pytest.param("cuda", marks=pytest.mark.needs_cuda)]

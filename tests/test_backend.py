"""Choosing an implementation: backend(), LATENTX_IMPL, and the fallback without _C."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import latentx
from latentx.ops import _native


def test_backend_reports_build_facts():
    info = latentx.backend()
    assert info["impl"] in ("native", "reference") and info["reason"]
    if _native._C is not None:
        assert info["impl"] == "native"
        assert info["torch_version"].split(".")[:2] == torch.__version__.split(".")[:2]
        assert isinstance(info["cuda"], bool) and isinstance(info["openmp"], bool)
        assert info["num_threads"] >= 1


def test_env_forces_reference(monkeypatch):
    monkeypatch.setenv("LATENTX_IMPL", "reference")
    assert latentx.backend()["impl"] == "reference"
    assert not _native.use_native("auto", torch.device("cpu"))


def test_bad_impl_values(monkeypatch):
    with pytest.raises(ValueError, match="impl"):
        latentx.ops.ifgsm_step(torch.zeros(2), torch.zeros(2), step_size=0.1, impl="fast")
    monkeypatch.setenv("LATENTX_IMPL", "turbo")
    with pytest.raises(ValueError, match="LATENTX_IMPL"):
        latentx.backend()


def test_native_on_unsupported_device_is_a_clear_error():
    with pytest.raises(RuntimeError, match="impl='native'"):
        _native.use_native("native", torch.device("meta"))


def run_python(code, **env):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=300)


def test_works_without_the_compiled_library():
    """With _C unimportable: one clear warning, the reference runs, native is refused."""
    proc = run_python("""
        import sys, warnings
        sys.modules["latentx._C"] = None  # as if never built
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import torch, latentx
        msgs = [str(w.message) for w in caught if "latentx" in str(w.message)]
        assert len(msgs) == 1 and "reference" in msgs[0], msgs
        assert latentx.backend()["impl"] == "reference"
        out = latentx.ops.ifgsm_step(torch.ones(3), torch.ones(3), step_size=0.5)
        assert out.tolist() == [0.5, 0.5, 0.5]
        try:
            latentx.ops.ifgsm_step(torch.ones(3), torch.ones(3), step_size=0.5, impl="native")
        except RuntimeError as e:
            assert "native" in str(e)
        else:
            raise AssertionError("impl='native' without _C must fail")
        print("ok")
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"

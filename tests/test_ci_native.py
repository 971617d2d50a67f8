"""LATENTX_REQUIRE_NATIVE=1 (set by .ci/run): a build whose compiled library does not load
fails the test run instead of skipping every native test. Runs conftest.py in a subprocess."""

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = textwrap.dedent('''
    import pytest
    from latentx.ops import _native

    @pytest.mark.skipif(_native._C is None, reason="compiled library not built")
    def test_marked_native():
        pass

    def test_skips_itself():
        if _native.backend()["impl"] != "native" or FORCE_SKIP:
            pytest.skip("compiled library not built")

    @pytest.mark.needs_native
    def test_needs_native_marker():
        pass

    @pytest.mark.needs_cuda
    def test_cuda_skip_is_left_alone():
        pass

    def test_plain():
        pass
''')


def run_pytest(tmp_path: Path, *, require: bool, without_c: bool, force_skip: bool = False):
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_fake_native.py").write_text(f"FORCE_SKIP = {force_skip}\n" + TESTS)
    block = "sys.modules['latentx._C'] = None; " if without_c else ""  # as if it failed to load
    code = f"import sys; {block}import pytest; sys.exit(pytest.main(['-q', '-rfEs', '-p', 'no:cacheprovider', '.']))"
    env = {k: v for k, v in os.environ.items() if k not in ("LATENTX_REQUIRE_NATIVE", "LATENTX_IMPL")}
    if require:
        env["LATENTX_REQUIRE_NATIVE"] = "1"
    return subprocess.run([sys.executable, "-W", "ignore::RuntimeWarning", "-c", code], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)


def test_without_the_library_native_tests_skip_by_default(tmp_path):
    proc = run_pytest(tmp_path, require=False, without_c=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("compiled library not built") == 3, proc.stdout
    assert "failed" not in proc.stdout


def test_without_the_library_required_native_fails_before_any_test(tmp_path):
    proc = run_pytest(tmp_path, require=True, without_c=True)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "LATENTX_REQUIRE_NATIVE=1 but latentx.backend() runs the reference" in out, out
    assert "compiled library not loaded" in out and "passed" not in out


def test_required_native_turns_a_native_skip_into_a_failure(tmp_path):
    """Even with the library loaded, a test that skips for a missing library fails the run;
    the CUDA skip stays a skip."""
    from latentx.ops import _native

    if _native._C is None:
        pytest.skip("compiled library not built")
    proc = run_pytest(tmp_path, require=True, without_c=False, force_skip=True)
    assert proc.returncode != 0, proc.stdout
    assert "FAILED test_fake_native.py::test_skips_itself" in proc.stdout, proc.stdout
    assert "but this native test was skipped" in proc.stdout
    assert re.search(r"^1 failed, ", proc.stdout, re.M) and proc.stdout.count("FAILED") == 1, proc.stdout

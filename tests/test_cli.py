"""The latentx command line."""

import json
import subprocess
import sys

from latentx import cli


def test_help_lists_subcommands(capsys):
    try:
        cli.main(["--help"])
    except SystemExit as e:
        assert e.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "bench", "info"):
        assert command in out


def test_info_prints_backend_json(capsys):
    assert cli.main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["impl"] in ("native", "reference")


def test_console_script_installed():
    proc = subprocess.run([sys.executable, "-m", "latentx.cli", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "latentx" in proc.stdout


def test_bench_quick_runs_and_checks(capsys):
    """The runner checks every variant against the reference before timing it."""
    assert cli.main(["bench", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "ifgsm_step" in out and "reference (eager)" in out and "copy" in out

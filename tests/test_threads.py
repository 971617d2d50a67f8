"""--threads and the oversubscription warning of the command-line tools (latentx._threads)."""

import io
import os

import pytest
import torch

from latentx import _threads, cli
from latentx.cli import project as project_cli, refine as refine_cli


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_default_is_the_cores_available(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5})
    assert _threads.available_cores() == 3 and _threads.default_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # torchrun's per-process setting is kept
    assert _threads.default_threads() == 2


def test_configure_sets_torch_threads_and_is_quiet_on_an_idle_machine(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(os, "getloadavg", lambda: (0.3, 0.2, 0.1))
    out = io.StringIO()
    assert _threads.configure_threads(1, prog="latentx demo", stream=out) == 1
    assert torch.get_num_threads() == 1 and out.getvalue() == ""


def test_warns_when_the_load_exceeds_the_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(os, "getloadavg", lambda: (3.2, 2.0, 1.0))
    out = io.StringIO()
    _threads.configure_threads(2, prog="latentx demo", stream=out)
    msg = out.getvalue()
    assert msg.startswith("latentx demo: warning:") and "load average is 3.2 on 2" in msg
    for advice in ("--threads 1", "OMP_WAIT_POLICY=passive", "quiet machine"):
        assert advice in msg


def test_warns_when_threads_exceed_the_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert "--threads 4 exceeds the 1 available" in _threads.oversubscription_warning(4)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_threads_are_named(bad):
    with pytest.raises(ValueError, match="threads"):
        _threads.configure_threads(bad)


@pytest.mark.parametrize("command", [["demo"], ["project", "a.png"],
                                     ["refine", "--generator", "m:g", "--discriminator", "m:d", "--out", "x"]])
def test_every_computing_command_takes_threads(command, monkeypatch, capsys):
    """cli.main applies --threads before the command runs; a bad value is a usage error."""
    seen = {}

    def fake(args):
        seen["threads"] = torch.get_num_threads()
        return 0

    for module, name in ((project_cli, "run_demo"), (project_cli, "run_project"), (refine_cli, "run")):
        monkeypatch.setattr(module, name, fake)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert cli.main(command + ["--threads", "1"]) == 0 and seen["threads"] == 1
    with pytest.raises(SystemExit):
        cli.main(command + ["--threads", "0"])
    assert "--threads must be an integer >= 1, got 0" in capsys.readouterr().err


def test_bench_takes_threads(capsys):
    from latentx.benchmarks import run

    assert run.build_parser().parse_args(["--threads", "1"]).threads == 1
    with pytest.raises(SystemExit):
        run.build_parser().parse_args(["--threads", "x"])
    assert "--threads" in capsys.readouterr().err

"""Ctrl-C or SIGTERM during ``train``: one line saying where the last complete checkpoint is and the exact
command to resume; on SIGTERM a checkpoint of the current step first, then exit 143 (issue 11, part 5)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .conftest import train_args


def _launch(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "unetseg", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _args(data: Path, run: Path) -> list[str]:
    args = train_args(data, run, "--seed", "2")
    i = args.index("--epochs")
    args[i + 1] = "6"
    args[args.index("--iters-per-epoch") + 1] = "40"
    return args


def _stop_mid_epoch(proc: subprocess.Popen, run: Path, sig: int) -> str:
    deadline = time.monotonic() + 120
    while not (run / "metrics.csv").is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # into the second epoch
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return err


def test_sigterm_saves_the_current_step_and_prints_the_resume_command(data, tmp_path):
    run, full = tmp_path / "RUN", tmp_path / "FULL"
    proc = _launch(_args(data, run))
    err = _stop_mid_epoch(proc, run, signal.SIGTERM)
    assert proc.returncode == 143, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("SIGTERM: training stopped; checkpoint of the current step saved in "), err
    assert str(run / "last") in line and "Traceback" not in err
    state = torch.load(run / "last" / "state.pt", weights_only=True)
    assert state["batch_in_epoch"] > 0 and state["epoch"] >= 1  # mid-epoch, not an epoch boundary
    command = shlex.split(line.split("resume with: ", 1)[1])
    assert command[0] == "unetseg" and command[-1] == "--resume"
    resumed = _launch(command[1:])
    reference = _launch(_args(data, full))
    for p in (resumed, reference):
        _, e = p.communicate(timeout=300)
        assert p.returncode == 0, e
    a = load_file(str(full / "last" / "model.safetensors"))
    b = load_file(str(run / "last" / "model.safetensors"))
    diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    assert diff <= 1e-6, f"resumed from the middle of an epoch, the weights differ by {diff}"


def test_ctrl_c_says_where_the_last_checkpoint_is(data, tmp_path):
    run = tmp_path / "RUN"
    proc = _launch(_args(data, run))
    err = _stop_mid_epoch(proc, run, signal.SIGINT)
    assert proc.returncode == 130, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("interrupted (Ctrl-C): training stopped; the last complete checkpoint is "), err
    assert line.endswith("--resume") and "Traceback" not in err


def test_ctrl_c_wrapped_by_an_extension_import_is_still_ctrl_c(data, tmp_path, monkeypatch, capsys):
    """Ctrl-C that lands while a C extension initialises (matplotlib's Agg on the first curves plot) comes
    back as ``ImportError: initialization failed`` raised from the KeyboardInterrupt: still exit 130 and the
    resume line, not a traceback (the CI run that caught it sent SIGINT into that import)."""
    from unetseg.cli.commands import run as cli_run
    from unetseg.training import runlog

    def interrupted_import(*_args, **_kwargs):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as e:
            raise ImportError("initialization failed") from e

    monkeypatch.setattr(runlog, "plot_curves", interrupted_import)
    code = cli_run(train_args(data, tmp_path / "RUN"))
    err = capsys.readouterr().err
    assert code == 130, err
    assert err.strip().splitlines()[-1].startswith("interrupted (Ctrl-C): training stopped"), err
    assert "Traceback" not in err


def test_an_import_error_without_ctrl_c_is_not_taken_for_one(data, tmp_path, monkeypatch):
    from unetseg.cli.commands import run as cli_run
    from unetseg.training import runlog

    def broken(*_args, **_kwargs):
        raise ImportError("initialization failed")

    monkeypatch.setattr(runlog, "plot_curves", broken)
    with pytest.raises(ImportError):
        cli_run(train_args(data, tmp_path / "RUN"))


def test_python_m_exits_130_after_a_ctrl_c_that_ended_a_string_exec(tmp_path):
    """A Ctrl-C that lands while a dataclass or namedtuple is being built ends a string ``exec``; CPython then
    remembers it and ``python -m unetseg`` died of SIGINT (-2) instead of exiting 130 (a CI run caught it)."""
    (tmp_path / "interrupted_cli.py").write_text(
        "import unetseg.cli.commands as c\n"
        "def run(argv):\n"
        "    try:\n"
        "        exec('raise KeyboardInterrupt', {})\n"
        "    except KeyboardInterrupt:\n"
        "        return 130\n"
        "c.run = run\n"
        "c.main(['--help'])\n"
    )
    proc = subprocess.run([sys.executable, "-m", "interrupted_cli"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 130, proc.stderr

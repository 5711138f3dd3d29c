"""What every reliability test checks from the user's side: the exit status, exactly one ``error:`` line
that names the file or option, no traceback, and every user file byte-for-byte unchanged."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest


def cli(*args: str | Path, cwd: Path | None = None, timeout: int = 300, **kw) -> subprocess.CompletedProcess:
    """``python -m unetseg ARGS`` in a real subprocess (one thread, as the suite's other workers)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "unetseg", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
        **kw,
    )


def run_inprocess(*args: str | Path, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """The same command line through :func:`unetseg.cli.commands.run` in this process (fast; without the
    process-wide settings only ``main`` applies). Returns ``(status, stderr)``."""
    from unetseg.cli.commands import run

    capsys.readouterr()
    code = run([str(a) for a in args])
    return code, capsys.readouterr().err


def assert_refused(code: int, stderr: str, *needles: str, status: int = 2) -> str:
    """Exit ``status``, one ``error:`` line holding every needle, no traceback; returns the line."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert code == status, stderr
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def md5_tree(*roots: Path) -> dict[str, str]:
    """md5 of every file under ``roots`` (links by their target path), to prove nothing was changed."""
    out = {}
    for root in roots:
        paths = [root] if root.is_file() or root.is_symlink() else sorted(root.rglob("*"))
        for p in paths:
            if p.is_symlink():
                out[str(p)] = "link:" + os.readlink(p)
            elif p.is_file():
                out[str(p)] = hashlib.md5(p.read_bytes()).hexdigest()
    return out


def leftovers(folder: Path) -> list[str]:
    """Temporary files an interrupted write could leave (ours are ``.<name>.<hex>.tmp<suffix>``)."""
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name)

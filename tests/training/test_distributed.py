"""A real 2-process torchrun job on the gloo backend: identical replicas, one set of files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file


@pytest.mark.parametrize("mode", ["epochs", "budget"])
def test_torchrun_two_processes_gloo(cells_2d: Path, tmp_path: Path, mode: str) -> None:
    run, dump = tmp_path / "run", tmp_path / "dump"
    dump.mkdir()
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            *torchrun,
            "--standalone",
            "--nproc_per_node",
            "2",
            str(Path(__file__).with_name("ddp_job.py")),
            str(cells_2d),
            str(run),
            str(dump),
            mode,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0, w1 = load_file(str(dump / "rank0.safetensors")), load_file(str(dump / "rank1.safetensors"))
    start = load_file(str(run / "last" / "model.safetensors"))
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"ranks disagree on {k}"
        assert torch.equal(w0[k], start[k])
    # One set of files, written by rank 0 alone.
    assert sorted(p.name for p in run.iterdir()) == [
        "best",
        "config.yaml",
        "curves.png",
        "last",
        "log.txt",
        "metrics.csv",
    ]
    log = (run / "log.txt").read_text()
    assert log.count("training unet") == 1 and "world size 2" in log
    epochs = len((run / "metrics.csv").read_text().strip().splitlines()) - 1
    if mode == "epochs":
        assert epochs == 2
    else:
        assert "stopped at the 0.05-minute budget" in log and epochs >= 1
        last = (run / "metrics.csv").read_text().strip().splitlines()[-1].split(",")
        assert float(last[-1]) >= 0.05  # the run went on until rank 0's clock reached the budget

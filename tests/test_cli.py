"""The command line: every command exists, user mistakes are one line and exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from unetseg.cli import _parse_classes, expand_multi


def _run(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "unetseg", *args], capture_output=True, text=True, timeout=timeout
    )


def test_models_lists_every_architecture_with_parameters() -> None:
    proc = _run("models")
    assert proc.returncode == 0, proc.stderr
    for name in ("unet", "unet_pp", "attention_unet", "r2unet", "r2_attention_unet", "res_unet"):
        assert f"{name} " in proc.stdout
    assert "," in proc.stdout  # counts are printed with thousands separators


def test_help_lists_the_contract_commands() -> None:
    proc = _run("--help")
    assert proc.returncode == 0, proc.stderr
    for cmd in ("models", "train", "evaluate", "predict", "export", "demo"):
        assert cmd in proc.stdout


@pytest.mark.parametrize(
    "args, needle",
    [
        (["predict", "--checkpoint", "nowhere", "--input", ".", "--output", "o"], "nowhere"),
        (["evaluate", "--checkpoint", "nowhere", "--data", "."], "nowhere"),
        (["export", "--checkpoint", "nowhere", "--format", "onnx", "--output", "m.onnx"], "nowhere"),
        (["train", "--out", "r"], "--data"),
        (["train", "--data", "missing_folder", "--out", "r"], "missing_folder"),
        (["train", "--data", "d", "--out", "r", "--patch-size", "1", "2", "3", "4"], "--patch-size"),
        (["train", "--data", "d", "--out", "r", "--classes", "0,a+b"], "--classes '0,a+b'"),
    ],
)
def test_user_mistakes_give_one_line_and_status_2(tmp_path: Path, args: list[str], needle: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "unetseg", *args], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_multi_value_options_expand() -> None:
    assert expand_multi(["--patch-size", "64", "128", "--lr", "1"]) == [
        "--patch-size",
        "64",
        "--patch-size",
        "128",
        "--lr",
        "1",
    ]
    assert expand_multi(["--tile", "8", "16", "32"]) == ["--tile", "8", "--tile", "16", "--tile", "32"]
    assert expand_multi(["--downsample", "1.5", "2", "--out", "R"]) == [
        "--downsample", "1.5", "--downsample", "2", "--out", "R"]


def test_classes_option_takes_values_and_merged_groups() -> None:
    assert _parse_classes("0,128,255") == [0, 128, 255]
    assert _parse_classes("0,1+2+4,3") == [0, [1, 2, 4], 3]
    assert _parse_classes("0,0.5") == [0, 0.5]


LEAVER = """
import atexit, sys, threading, time

class Late:
    def __del__(self):
        print("torn down", flush=True)

late = Late()  # freed only by the interpreter's teardown
atexit.register(print, "exit handlers ran")
threading.Thread(target=lambda: (time.sleep(0.3), print("thread finished", flush=True))).start()
from unetseg.cli import main
sys.stdout.write("unflushed ")  # no newline: shown only if the stream is flushed
main(["evaluate", "--checkpoint", "/nonexistent/run", "--data", "/nonexistent/data"])
"""


@pytest.mark.parametrize("torchrun", [False, True])
def test_a_process_torchrun_started_ends_without_the_interpreter_teardown(torchrun: bool) -> None:
    # torch keeps the group DDP used (and its threads) until that teardown, which can abort a finished rank
    env = {k: v for k, v in os.environ.items() if k != "TORCHELASTIC_RUN_ID"}
    if torchrun:
        env["TORCHELASTIC_RUN_ID"] = "test"
    proc = subprocess.run([sys.executable, "-c", LEAVER], capture_output=True, text=True, timeout=120,
                          env=env)
    assert proc.returncode == 2 and "error: /nonexistent/run: checkpoint not found" in proc.stderr
    # whatever the way out: the command's status, other threads joined, exit handlers run, streams flushed
    assert "unflushed" in proc.stdout and "exit handlers ran" in proc.stdout
    assert "thread finished" in proc.stdout
    assert ("torn down" in proc.stdout) is not torchrun

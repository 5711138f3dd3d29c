"""The start-up allocator setting and the per-hardware fast-path choices (unetseg.runtime)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch

from unetseg import runtime as utils

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Allocates and frees a 64 MiB buffer 20 times and prints the minor page faults of the last 19.
CHILD = """
import resource, sys
from unetseg.runtime import tune_allocator
applied = tune_allocator() if sys.argv[1] == "tuned" else False
import torch
torch.empty(16 << 20).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(19):
    torch.empty(16 << 20).fill_(1.0)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def run_child(mode: str, **env: str) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not GLIBC, reason="the allocator setting is for glibc")
def test_tuned_allocator_reuses_large_buffers_instead_of_faulting_them_in_again():
    applied, tuned = run_child("tuned")
    _, system = run_child("system")
    assert applied == "True"
    # system malloc maps each 64 MiB buffer afresh: ~16k faults per pass, 19 passes; tuned: the heap pages are
    # reused after the heap settles (one or two passes' worth on a quiet machine; six under a full -n 2 test
    # run, where the kernel reclaims some of the heap between passes), never once per pass
    assert system > 19 * 10_000
    assert tuned * 2 < system


def test_allocator_setting_can_be_switched_off():
    applied, _ = run_child("tuned", UNETSEG_MALLOC="system")
    assert applied == "False"


def test_channels_last_auto_follows_the_measurements(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(utils, "cpu_has_fast_bf16", lambda: False)
    assert utils.use_channels_last("auto", cpu, 2, inference=True)
    assert utils.use_channels_last("auto", cpu, 3, inference=True)
    assert not utils.use_channels_last("auto", cpu, 2)  # 2D training: no gain in fp32
    assert utils.use_channels_last("auto", cpu, 3)
    monkeypatch.setattr(utils, "cpu_has_fast_bf16", lambda: True)
    assert utils.use_channels_last("auto", cpu, 2)
    assert not utils.use_channels_last("off", cpu, 3, inference=True)
    assert utils.use_channels_last(True, cpu, 2)


def test_auto_precision_is_fp32_on_a_cpu_without_fast_bf16(monkeypatch):
    monkeypatch.setattr(utils, "cpu_has_fast_bf16", lambda: False)
    assert utils.autocast_dtype("auto", torch.device("cpu")) is None
    monkeypatch.setattr(utils, "cpu_has_fast_bf16", lambda: True)
    assert utils.autocast_dtype("auto", torch.device("cpu")) == torch.bfloat16
    assert utils.autocast_dtype("fp32", torch.device("cpu")) is None

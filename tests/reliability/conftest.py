"""Fixtures of the reliability tests: a small dataset per test (so a test may try to damage it) and a
tiny checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def _dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from unetseg.data.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("rel_data"), n=4, size=(48, 48), kind="cells", seed=4)


@pytest.fixture
def data(_dataset: Path, tmp_path: Path) -> Path:
    """A fresh copy of four 48x48 cell images and their 0/255 masks."""
    return Path(shutil.copytree(_dataset, tmp_path / "DATA"))


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A base-4, depth-2 U-Net checkpoint folder (no training needed to test file handling)."""
    from inference.helpers import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("rel_ckpt") / "ckpt")


def train_args(data: Path, run: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--data",
        str(data),
        "--out",
        str(run),
        "--base-channels",
        "4",
        "--depth",
        "2",
        "--patch-size",
        "32",
        "32",
        "--batch-size",
        "2",
        "--epochs",
        "1",
        "--iters-per-epoch",
        "2",
        "--precision",
        "fp32",
        "--workers",
        "0",
        "--no-plan",  # these tests are about files and errors: a fixed, fast recipe
        *extra,
    ]

"""Shared fixtures of the data tests: tiny synthetic datasets and the real-dataset location."""

from __future__ import annotations

from pathlib import Path

import pytest

from unetseg.data.synthetic import make_dataset


@pytest.fixture
def cells2d(tmp_path: Path) -> Path:
    """Six 64x64 synthetic cell images with 0/255 masks in the contract layout."""
    return make_dataset(tmp_path / "cells", n=6, size=(64, 64), kind="cells", seed=3)


@pytest.fixture
def cells3d(tmp_path: Path) -> Path:
    """Three 16x24x24 synthetic 3D stacks (NIfTI) with 0/1/2 masks."""
    return make_dataset(tmp_path / "cells3d", n=3, size=(16, 24, 24), kind="cells3d", seed=1)


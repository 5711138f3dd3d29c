"""Shared fixtures: small synthetic datasets made by the project itself (no downloads)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Two test workers share two cores: one intra-op thread each keeps them from oversubscribing.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Fingerprints are cached per user; the tests keep theirs out of the user's cache directory.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="unetseg-test-cache-")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def cells_2d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight 64x64 synthetic cell images with 0/255 masks."""
    from unetseg.data.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("cells2d"), n=8, size=(64, 64), kind="cells", seed=1)


@pytest.fixture(scope="session")
def cells_3d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four small synthetic 3D volumes (NIfTI) with masks."""
    from unetseg.data.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("cells3d"), n=4, size=(16, 32, 32), kind="cells3d", seed=2)

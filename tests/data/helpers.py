"""Helpers of the data tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

DATASETS = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets"


def real_dataset(name: str) -> pytest.MarkDecorator:
    """Mark a test slow and skip it when ``../shared/datasets/<name>`` is absent."""
    return pytest.mark.skipif(not (DATASETS / name / "images").is_dir(), reason=f"{name} not present")


def gradient_image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A smooth random float32 image (so a threshold gives big, clean regions)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.normal(size=shape), 4).astype(np.float32)

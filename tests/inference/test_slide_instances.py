"""Instance models on streamed slides: objects cut by band borders are one object with one id, the same
objects as the whole-image watershed; the CLI writes the id pyramid and its table."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import zarr
from scipy import ndimage

from unetseg.checkpoint import save_checkpoint
from unetseg.config import Config
from unetseg.config.schema import instance_classes
from unetseg.data.instances import distance_class_target
from unetseg.inference.instances import instances_of
from unetseg.inference.stream.slide_instances import BAND, OVERLAP, stitched_objects

from .helpers import tiny_config, tiny_model


def _discs(shape: tuple[int, ...], n: int, radius: tuple[float, float], seed: int = 0) -> np.ndarray:
    """Touching discs (balls in 3D) of random radius: a Voronoi split of their union."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 1, (n, len(shape))) * np.asarray(shape)
    radii = rng.uniform(*radius, n)
    grid = np.indices(shape, dtype=np.float32)
    dist = np.stack([np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, cen, strict=True))) / r
                     for cen, r in zip(centres, radii, strict=True)])
    owner = dist.argmin(0) + 1
    return np.where(dist.min(0) < 1.0, owner, 0).astype(np.int64)


def _probabilities(ids: np.ndarray) -> np.ndarray:
    """Background / interior / boundary probabilities of an instance image, softened."""
    edge = ids != ndimage.grey_erosion(ids, size=3)
    edge |= ids != ndimage.grey_dilation(ids, size=3)
    boundary = edge & (ndimage.grey_dilation(ids, size=3) > 0)
    interior = (ids > 0) & ~boundary
    return _soft(np.stack([~interior & ~boundary, interior, boundary]))


def _distance_probabilities(ids: np.ndarray) -> np.ndarray:
    """Background / distance-bin probabilities of an instance image, softened."""
    target = distance_class_target(ids)
    return _soft(np.stack([target == k for k in range(instance_classes("distance"))]))


def _soft(onehot: np.ndarray) -> np.ndarray:
    soft = np.stack([ndimage.gaussian_filter(c, 0.7) for c in onehot.astype(np.float32)])
    return soft / soft.sum(0, keepdims=True)


def _distance_config() -> Config:
    cfg = Config()
    cfg.data.task, cfg.data.instance_target = "instances", "distance"
    cfg.model.num_classes = instance_classes("distance")
    return cfg


def _partition_mismatch(a: np.ndarray, b: np.ndarray) -> int:
    """Pixels of ``a`` outside the ``b`` object most of their ``a`` object falls in; -1 when two ``a``
    objects map to one ``b`` object (a merge or a duplicate)."""
    pairs, counts = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1, return_counts=True)
    best = {}
    for (x, y), c in zip(pairs.T, counts, strict=True):
        if c > best.get(x, (0, 0))[1]:
            best[x] = (y, c)
    if len({y for y, _ in best.values()}) != len(best):
        return -1
    return int(a.size - sum(c for _, c in best.values()))


@pytest.mark.parametrize("shape,n,radius", [((1500, 200), 160, (6, 14)), ((150, 48, 48), 60, (5, 8))])
def test_objects_across_band_borders_are_the_whole_image_objects(shape, n, radius):
    ids = _discs(shape, n, radius)
    probs = _probabilities(ids).astype(np.float16)  # as the slide's first pass stores them
    cfg = Config()
    want = instances_of(probs.astype(np.float32), cfg)
    dims = len(shape)
    assert shape[0] > 2 * BAND[dims] and 2 * radius[1] <= OVERLAP[dims] // 2  # several bands; small discs
    blocks = list(stitched_objects(zarr.array(probs, chunks=(3, 64, *shape[1:])),
                                   cfg, 100))
    assert [s for s, _ in blocks] == list(range(0, shape[0], 100))
    got = np.concatenate([b for _, b in blocks])
    assert got.shape == shape
    present = np.unique(got[got > 0])
    np.testing.assert_array_equal(present, np.arange(1, present.size + 1))  # 1..N, no duplicates
    assert present.size == np.unique(want[want > 0]).size >= n // 2
    agree = (got > 0) == (want > 0)
    assert agree.all()
    both = agree & (got > 0)
    # the same objects; a watershed tie between two touching objects may go either way in a band's
    # overlap (a handful of pixels), never a merge, a split or a duplicate
    assert 0 <= _partition_mismatch(got[both], want[both]) <= 2e-4 * both.sum()


def test_the_distance_target_finds_every_touching_disc_in_memory_and_across_bands():
    # 100 x 4 discs of radius 7 on a 13-pixel grid: each touches its neighbours along a flat face
    grid = np.indices((1300, 52), dtype=np.float32)
    centre = (grid // 13) * 13 + 6.0
    ids = ((grid[0] // 13) * 4 + grid[1] // 13 + 1).astype(np.int64)
    ids[((grid - centre) ** 2).sum(0) > 49] = 0
    assert ndimage.label(ids > 0)[1] == 1  # one connected component of 400 objects
    probs = _distance_probabilities(ids)
    cfg = _distance_config()
    want = instances_of(probs, cfg)
    assert want.max() == 400
    assert _partition_mismatch(want[ids > 0], ids[ids > 0]) == 0 and ((want > 0) == (ids > 0)).mean() > 0.99
    blocks = list(stitched_objects(zarr.array(probs.astype(np.float16), chunks=(5, 64, 52)), cfg, 100))
    got = np.concatenate([b for _, b in blocks])
    assert got.shape == ids.shape and got.max() == 400
    assert _partition_mismatch(got[ids > 0], ids[ids > 0]) == 0


@pytest.mark.parametrize("target", ["three_class", "distance"])
def test_the_cli_writes_object_ids_and_their_table_for_a_slide(target, tmp_path):
    cfg = tiny_config(num_classes=instance_classes(target))
    cfg.data.task, cfg.data.instance_target = "instances", target
    ckpt = save_checkpoint(tmp_path / "ckpt", tiny_model(cfg), cfg)
    rng = np.random.default_rng(1)
    image = ndimage.gaussian_filter(rng.random((700, 300)), 3)
    image = np.clip((image - image.mean()) * 4000 + 120, 0, 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "slide.ome.tif", image, ome=True, tile=(64, 64))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "unetseg", "predict", "--checkpoint", str(ckpt), "--input",
                           str(tmp_path / "slide.ome.tif"), "--output", str(out), "--device", "cpu"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    ids = zarr.open_array(str(out / "slide.ome.zarr" / "0"), mode="r")[...]
    assert ids.shape == (700, 300) and ids.dtype == np.uint32
    with (out / "slide_objects.csv").open() as f:
        table = list(csv.DictReader(f))
    present = np.unique(ids[ids > 0])
    assert [int(r["id"]) for r in table] == present.tolist()
    areas = np.bincount(ids.ravel())
    assert all(int(r["area"]) == areas[int(r["id"])] for r in table)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "slide.ome.zarr", "slide_objects.csv"]
    assert not list(out.glob(".*probabilities*"))  # the intermediate store is gone

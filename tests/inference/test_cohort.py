"""``predict_cohort`` on real dask clusters (two worker processes on loopback): the single-process outputs,
bad inputs reported and skipped, one model per worker, complete outputs not redone."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from unetseg.errors import ConfigError
from unetseg.inference import predict_files

from .helpers import make_checkpoint

distributed = pytest.importorskip("distributed")

from unetseg.inference.jobs.cohort import predict_cohort, split_rows  # noqa: E402 - after the importorskip


@pytest.fixture()
def cohort(cells_2d: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A checkpoint and a folder of four 64x64 images plus one corrupt PNG."""
    folder = tmp_path / "in"
    folder.mkdir()
    for f in sorted((cells_2d / "images").iterdir())[:4]:
        shutil.copy(f, folder / f.name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return make_checkpoint(tmp_path / "ckpt", "unet"), folder


def test_cluster_outputs_equal_single_process_and_complete_outputs_are_not_redone(cohort, tmp_path):
    ckpt, folder = cohort
    settings = {"tile": [32, 32], "overlap": 0.5, "probabilities": True, "device": "cpu", "precision": "fp32"}
    single = predict_files(ckpt, folder, tmp_path / "single", skip_bad=True, progress=False, **settings)
    assert len(single.skipped) == 1
    out = tmp_path / "cluster"
    first = predict_cohort(ckpt, folder, out, cluster="local:2", **settings)
    good = sorted(str(f) for f in folder.iterdir() if f.name != "broken.png")
    assert first.done == good and first.complete == [] and first.failed == []
    assert [p for p, _ in first.skipped] == [str(folder / "broken.png")]
    assert first.skipped[0][1].startswith(str(folder / "broken.png")) and "\n" not in first.skipped[0][1]
    assert 1 <= first.model_loads <= 2  # one warm model per worker, not one per image
    for f in (tmp_path / "single").iterdir():
        if f.suffix == ".png":
            assert (out / f.name).read_bytes() == f.read_bytes()
        elif f.suffix == ".tif":
            np.testing.assert_array_equal(tifffile.imread(out / f.name), tifffile.imread(f))
    assert len(first.written) == 8
    stamps = {f.name: f.stat().st_mtime_ns for f in out.iterdir()}

    # a second run on a running scheduler (tcp://) redoes nothing; the bad input is reported again
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        second = predict_cohort(ckpt, folder, out, cluster=cluster.scheduler_address, **settings)
    assert second.done == [] and second.written == [] and sorted(second.complete) == good
    assert len(second.skipped) == 1 and second.model_loads == 1
    assert {f.name: f.stat().st_mtime_ns for f in out.iterdir()} == stamps


def test_a_bad_cluster_option_is_one_error_before_any_work(cohort, tmp_path):
    ckpt, folder = cohort
    with pytest.raises(ConfigError, match="local:N or tcp://HOST:PORT"):
        predict_cohort(ckpt, folder, tmp_path / "out", cluster="threads:4")
    with pytest.raises(ConfigError, match="local:N with N >= 1"):
        predict_cohort(ckpt, folder, tmp_path / "out", cluster="local:0")


def test_a_task_that_keeps_failing_is_retried_then_reported_not_fatal(cohort, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA (the workers fail to load the model on cuda)")
    ckpt, folder = cohort
    # the client checks the model on the CPU; every worker attempt to load it on CUDA fails
    result = predict_cohort(ckpt, folder, tmp_path / "out", cluster="local:1", device="cuda", retries=1)
    assert result.done == [] and result.model_loads == 0 and len(result.failed) == 5
    path, line = result.failed[0]
    assert line.startswith(path) and "failed after 2 attempt(s)" in line and "CUDA" in line


def test_the_regions_of_one_slide_are_shared_by_the_workers(tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt", "unet")
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(2)
    tifffile.imwrite(folder / "slide.ome.tif", rng.integers(0, 255, (2100, 160), dtype=np.uint8), ome=True,
                     tile=(64, 64))  # 5 chunk rows of 512
    settings = {"tile": [32, 32], "device": "cpu", "precision": "fp32"}
    single = predict_files(ckpt, folder, tmp_path / "single", progress=False, **settings)
    assert [Path(p).name for p in single.written] == ["slide.ome.zarr"]
    result = predict_cohort(ckpt, folder, tmp_path / "cluster", cluster="local:2", **settings)
    assert result.done == [str(folder / "slide.ome.tif")] and result.failed == result.skipped == []
    assert result.tasks >= 2  # parts of at least two chunk rows: (0, 2), (2, 4), (4, 5) with 2 workers
    a, b = zarr.open_group(str(tmp_path / "single" / "slide.ome.zarr"), mode="r"), zarr.open_group(
        str(tmp_path / "cluster" / "slide.ome.zarr"), mode="r")
    assert sorted(a.array_keys()) == sorted(b.array_keys()) and len(list(a.array_keys())) >= 2
    for key in a.array_keys():
        np.testing.assert_array_equal(a[key][...], b[key][...])
    assert dict(a.attrs) == dict(b.attrs)
    assert not list((tmp_path / "cluster").glob(".*.tmp"))


def test_split_rows_cuts_runs_of_pending_rows():
    assert split_rows([0, 1, 2, 3, 4], 4) == [(0, 2), (2, 4), (4, 5)]
    assert split_rows([0, 1, 2, 3, 4, 5, 6, 7], 2) == [(0, 4), (4, 8)]
    assert split_rows([1, 2, 5, 6, 7], 1) == [(1, 3), (5, 8)]  # resume: only the rows still missing
    assert split_rows([], 3) == []

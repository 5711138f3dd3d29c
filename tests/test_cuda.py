"""The CUDA path (bf16 autocast, cudnn.benchmark, pinned memory, NCCL): skipped without a GPU; run by
``benchmarks/gpu_check.sh`` (``pytest -m cuda``) on a machine that has one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.helpers import make_checkpoint
from unetseg.config import Config
from unetseg.inference import Predictor, load_engine
from unetseg.inference.stream.predictor import StreamPredictor
from unetseg.io.ngff import LabelZarrWriter

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _config(data: Path, out: Path) -> Config:
    cfg = Config()
    cfg.data.data, cfg.data.patch_size, cfg.data.num_workers = str(data), [64, 64], 2
    cfg.model.base_channels, cfg.model.depth = 8, 3
    cfg.train.out, cfg.train.epochs, cfg.train.iters_per_epoch, cfg.train.batch_size = str(out), 2, 5, 4
    cfg.train.device, cfg.train.precision = "cuda", "bf16"
    return cfg


def test_training_on_cuda_in_bf16(cells_2d: Path, tmp_path: Path) -> None:
    from unetseg.training import train

    run = train(_config(cells_2d, tmp_path / "run"), quiet=True)
    metrics = json.loads((run / "best" / "config.json").read_text())["metrics"]
    assert 0.0 <= metrics["val_dice"] <= 1.0 and "bfloat16" in (run / "log.txt").read_text()


def test_predict_on_cuda_matches_the_cpu(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "ckpt")
    x = np.random.default_rng(0).normal(size=(1, 200, 170)).astype(np.float32)
    cpu = Predictor(load_engine(ckpt, "cpu", "fp32")[0], tile=(64, 64)).predict_proba(x)
    gpu = Predictor(load_engine(ckpt, "cuda", "fp32")[0], tile=(64, 64)).predict_proba(x)
    np.testing.assert_allclose(gpu, cpu, atol=1e-3)  # TF32 convolutions round differently
    bf16 = Predictor(load_engine(ckpt, "cuda", "bf16")[0], tile=(64, 64)).predict(x)
    assert (bf16 == cpu.argmax(0)).mean() > 0.98


def test_streamed_prediction_on_cuda_equals_in_memory(tmp_path: Path) -> None:
    import zarr

    ckpt = make_checkpoint(tmp_path / "ckpt")
    engine = load_engine(ckpt, "cuda", "fp32")[0]
    image = np.random.default_rng(1).normal(size=(1, 700, 300)).astype(np.float32)
    pred = Predictor(engine, tile=(64, 64), batch_size=8)

    class Source:
        path, channels = "array", 1

        def shape(self, level: int = 0) -> tuple[int, ...]:
            return image.shape[1:]

        def read(self, region, level: int = 0) -> np.ndarray:
            return image[(slice(None), *region)]

    writer = LabelZarrWriter(tmp_path / "out.ome.zarr", image.shape[1:], chunks=(128, 300))
    StreamPredictor(pred).predict_to(Source(), writer, normalize=lambda r: r)
    got = zarr.open_array(str(writer.finish() / "0"), mode="r")[...]
    np.testing.assert_array_equal(got, pred.predict(image))


def test_torchrun_on_one_gpu_uses_nccl(cells_2d: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m",
         "unetseg", "train", "--data", str(cells_2d), "--out", str(tmp_path / "run"), "--no-plan",
         "--patch-size", "64", "64", "--epochs", "1", "--iters-per-epoch", "4", "--batch-size", "4",
         "--base-channels", "8", "--depth", "3", "--device", "cuda", "--precision", "bf16"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "nccl" in log.lower() and (tmp_path / "run" / "best" / "model.safetensors").is_file()


def test_uncertainty_and_temperature_on_cuda_match_the_cpu(tmp_path: Path) -> None:
    """The extra accumulator channel goes through the pinned, asynchronous copy-back as the probabilities."""
    ckpt = make_checkpoint(tmp_path / "ckpt")
    x = np.random.default_rng(1).normal(size=(1, 150, 170)).astype(np.float32)
    out = [Predictor(load_engine(ckpt, dev, "fp32")[0], tile=(64, 64), tta=True, temperature=1.7,
                     batch_size=3).predict_uncertain(x) for dev in ("cpu", "cuda")]
    np.testing.assert_allclose(out[1][1], out[0][1], atol=1e-3)
    np.testing.assert_allclose(out[1][2], out[0][2], atol=2e-3)
    assert out[0][2][1].max() > 0

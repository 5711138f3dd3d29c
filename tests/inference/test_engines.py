"""Engines: chosen by the file, same geometry and outputs, one clear error per bad model file."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from unetseg.errors import CheckpointError
from unetseg.inference import Predictor, TorchEngine, load_engine

from .helpers import make_checkpoint


def test_checkpoint_folder_or_run_folder_gives_a_torch_engine(tmp_path):
    make_checkpoint(tmp_path / "run" / "best", "res_unet", num_classes=3, in_channels=2)
    engine, cfg = load_engine(tmp_path / "run", "cpu", "fp32")
    assert isinstance(engine, TorchEngine) and cfg.model.name == "res_unet"
    assert (engine.spatial_dims, engine.in_channels, engine.num_classes, engine.size_divisor) == (2, 2, 3, 4)
    logits = engine(torch.zeros(3, 2, 16, 20))
    assert logits.shape == (3, 3, 16, 20) and logits.dtype == torch.float32


def test_explicit_level_widths_travel_in_the_checkpoint(tmp_path):
    make_checkpoint(tmp_path / "ckpt", "unet_pp", channels=[4, 4, 8])
    engine, cfg = load_engine(tmp_path / "ckpt", "cpu", "fp32")
    assert cfg.model.options["channels"] == [4, 4, 8] and engine.model.widths == [4, 4, 8]
    assert engine(torch.zeros(1, 1, 16, 16)).shape == (1, 2, 16, 16)


def test_valid_unet_engine_reports_its_output_size(tmp_path):
    make_checkpoint(tmp_path / "ckpt", "unet", padding="valid")
    engine, _ = load_engine(tmp_path / "ckpt", "cpu")
    assert engine.valid_input_size((50, 50)) == (52, 52)  # depth 2: 44, 48, 52, ...
    assert engine.output_size((52, 60)) == (12, 20)  # 20 pixels lost per side
    assert engine(torch.zeros(1, 1, 52, 60)).shape == (1, 2, 12, 20)


def test_toy_module_geometry_comes_from_its_layers():
    conv = torch.nn.Conv3d(2, 4, 3, padding=1)
    pred = Predictor(conv, tile=(4, 4, 4), precision="fp32")
    assert (pred.spatial_dims, pred.engine.in_channels, pred.num_classes) == (3, 2, 4)
    assert pred.predict(np.zeros((2, 5, 6, 7), np.float32)).shape == (5, 6, 7)


def test_missing_and_bad_model_files_are_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_engine(tmp_path / "nothing", "cpu")
    with pytest.raises(CheckpointError, match="not found"):
        load_engine(tmp_path / "nothing.onnx", "cpu")
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="bad.onnx: not a loadable ONNX model"):
        load_engine(tmp_path / "bad.onnx", "cpu")
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="bad.pt: a TorchScript file is a program"):
        load_engine(tmp_path / "bad.pt", "cpu")  # refused before it is even opened
    with pytest.raises(CheckpointError, match="bad.pt: not a TorchScript model"):
        load_engine(tmp_path / "bad.pt", "cpu", trust_torchscript=True)


def test_foreign_onnx_without_config_is_refused(tmp_path):
    pytest.importorskip("onnxruntime")
    path = tmp_path / "plain.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation note
        torch.onnx.export(torch.nn.Conv2d(1, 2, 3), (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False)
    with pytest.raises(CheckpointError, match="no unetseg config"):
        load_engine(path, "cpu")



def test_checkpoint_engine_folds_batchnorm_without_changing_the_output(tmp_path):
    from unetseg.checkpoint import load_checkpoint

    make_checkpoint(tmp_path / "ckpt", "r2unet")
    engine, _ = load_engine(tmp_path / "ckpt", "cpu", "fp32")
    model, _ = load_checkpoint(tmp_path / "ckpt")
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in engine.model.modules())
    x = torch.randn(2, 1, 20, 28)
    with torch.no_grad():
        np.testing.assert_allclose(engine(x).numpy(), model(x).numpy(), atol=1e-4)

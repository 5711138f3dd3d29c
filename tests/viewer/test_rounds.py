"""A fine-tuning round refuses a model it cannot train from (no Qt needed: ``unetseg.viewer.rounds``)."""

from __future__ import annotations

import numpy as np
import pytest

from unetseg.checkpoint import TORCHSCRIPT_SUFFIXES
from unetseg.config import Config
from unetseg.errors import ConfigError
from unetseg.inference.engines import TorchEngine
from unetseg.inference.segmenter import Segmenter
from unetseg.models import build_model
from unetseg.viewer.rounds import Correction, fine_tune_round


@pytest.mark.parametrize("suffix", [".onnx", *TORCHSCRIPT_SUFFIXES])
def test_an_exported_model_is_refused_before_a_round_folder_is_made(suffix, tmp_path):
    engine = TorchEngine(build_model("unet", base_channels=4, depth=2), "cpu", "fp32")
    seg = Segmenter(tmp_path / f"model{suffix}", engine, Config())
    fix = Correction("a", np.zeros((16, 16), np.float32), np.zeros((16, 16), np.uint8))
    with pytest.raises(ConfigError, match="an exported model cannot be fine-tuned"):
        fine_tune_round(seg, [fix], tmp_path / "rounds", minutes=0.1)
    assert not (tmp_path / "rounds").exists()

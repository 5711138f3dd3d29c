"""Sliding-window inference (Gaussian blending, overlap-tile, flip TTA) over PyTorch, TorchScript and
ONNX Runtime engines, and file-level prediction.

Public API::

    predict(model_or_engine, image, *, config=None, tile=None, overlap=0.25, tta=False, ...) -> labels
    predictor_for(engine, config, **overrides) -> Predictor   # the one config -> predictor path
    Predictor(engine, *, tile, overlap, blend, batch_size, tta, device, precision)
        .predict(image) / .predict_proba(image) / .predict_both(image)
    load_engine(path, device) -> (engine, config)      # .onnx, trusted TorchScript or checkpoint folder
    predict_files(checkpoint, input, output, ...) -> PredictResult
"""

from __future__ import annotations

from unetseg.inference.api import predict, predictor_for
from unetseg.inference.engines import Engine, OnnxEngine, TorchEngine, load_engine
from unetseg.inference.jobs.folder import predict_files
from unetseg.inference.predictor import Predictor
from unetseg.inference.tiling import gaussian_importance_map, tile_starts
from unetseg.inference.tta import flip_axes, logits_to_probs

__all__ = [
    "predict", "predictor_for", "predict_files", "Predictor", "Engine", "TorchEngine", "OnnxEngine",
    "load_engine", "gaussian_importance_map", "tile_starts", "flip_axes", "logits_to_probs",
]

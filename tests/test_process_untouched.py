"""Library calls leave the caller's process as they found it (issue 12): no cuDNN switch, no matplotlib
backend, no logger level, no allocator change, and the caller's module is not modified."""

from __future__ import annotations

import logging
import sys

import numpy as np
import torch

import unetseg


def _process_state() -> dict:
    import matplotlib

    return {"cudnn": torch.backends.cudnn.benchmark, "backend": matplotlib.get_backend(),
            "tifffile": logging.getLogger("tifffile").level, "threads": torch.get_num_threads(),
            "pyplot": "matplotlib.pyplot" in sys.modules}


def test_predict_and_evaluate_change_nothing_in_the_callers_process(cells_2d, tmp_path):
    from inference.helpers import make_checkpoint
    from unetseg.evaluation import evaluate

    model = unetseg.build_model("res_unet", base_channels=4, depth=2).train()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    before = _process_state()
    labels = unetseg.predict(model, np.random.rand(40, 52).astype(np.float32), tile=(32, 32))
    assert labels.shape == (40, 52)
    assert model.training  # still in training mode, still channels-first, the same weights
    assert all(p.is_contiguous() for p in model.parameters())
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # folding happened on a copy
    evaluate(make_checkpoint(tmp_path / "ckpt"), cells_2d, out_json=tmp_path / "m.json", quiet=True)
    assert _process_state() == before

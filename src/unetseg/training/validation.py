"""Validation on whole images with the predictor ``unetseg predict`` and ``evaluate`` use (built by the same
:func:`~unetseg.inference.api.predictor_for`, so every inference option applies the same way)."""

from __future__ import annotations

import numpy as np
import torch

from unetseg.config import Config
from unetseg.data.prepare import PreparedData
from unetseg.inference.api import predictor_for
from unetseg.inference.engines import TorchEngine
from unetseg.metrics import dice
from unetseg.training.distributed import DistInfo, all_reduce_sum


class Validator:
    """Mean Dice per class over this rank's share of the validation cases, summed across ranks.

    The validation images come from the prepared dataset's store (decoded and normalised once); cases the
    store could not hold are read each time.
    """

    def __init__(
        self,
        data: PreparedData,
        cfg: Config,
        device: torch.device,
        info: DistInfo,
        precision: str,
        channels_last: bool = False,
    ) -> None:
        self.cfg, self.device, self.info, self.precision = cfg, device, info, precision
        self.num_classes = data.class_map.num_classes
        self.cases = data.val_cases[info.rank :: info.world_size]
        self.store = data.store
        # the training model's own layout: validation must not convert the live model
        self.channels_last = channels_last

    def run(self, model: torch.nn.Module) -> np.ndarray:
        engine = TorchEngine(model, self.device, self.precision, channels_last=self.channels_last)
        predictor = predictor_for(engine, self.cfg)
        was_training = model.training
        model.eval()
        sums = torch.zeros(self.num_classes + 1, dtype=torch.float64)
        for case in self.cases:
            image, labels, _ = self.store.get(case)
            pred = predictor.predict(image)
            sums[: self.num_classes] += torch.from_numpy(dice(pred, labels, self.num_classes))
            sums[-1] += 1
        model.train(was_training)
        sums = all_reduce_sum(sums, self.info)
        return (sums[: self.num_classes] / max(1.0, float(sums[-1]))).numpy()

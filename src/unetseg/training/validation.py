"""Validation on whole images with the predictor ``unetseg predict`` and ``evaluate`` use (built by the same
:func:`~unetseg.inference.api.predictor_for`, so every inference option applies the same way)."""

from __future__ import annotations

from typing import Any

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
        self.instances = cfg.data.task == "instances"
        # the training model's own layout: validation must not convert the live model
        self.channels_last = channels_last

    def run(self, model: torch.nn.Module) -> np.ndarray:
        """Mean Dice per class; for an instance model ``[foreground Dice, DSB score, AP@0.5]`` (the DSB score,
        of the objects made by the same watershed as ``predict``, picks the best checkpoint)."""
        engine = TorchEngine(model, self.device, self.precision, channels_last=self.channels_last)
        predictor = predictor_for(engine, self.cfg)
        was_training = model.training
        model.eval()
        width = 3 if self.instances else self.num_classes
        sums = torch.zeros(width + 1, dtype=torch.float64)
        for case in self.cases:
            image, labels, _ = self.store.get(case)
            sums[:width] += torch.from_numpy(self._score(predictor, image, labels))
            sums[-1] += 1
        model.train(was_training)
        sums = all_reduce_sum(sums, self.info)
        return (sums[:width] / max(1.0, float(sums[-1]))).numpy()

    def _score(self, predictor: Any, image: np.ndarray, labels: np.ndarray) -> np.ndarray:
        if not self.instances:
            return dice(predictor.predict(image), labels, self.num_classes)
        from unetseg.inference.instances import instances_of
        from unetseg.metrics.instances import average_precision, dsb_score

        objects = instances_of(predictor.predict_proba(image), self.cfg)
        fg = dice((objects > 0).astype(np.int64), (np.asarray(labels) > 0).astype(np.int64), 2)[1]
        return np.asarray([fg, dsb_score(objects, labels), average_precision(objects, labels)])

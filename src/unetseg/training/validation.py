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

# The watershed option an instance model's validation chooses (per target), and the values it tries; the
# default first, so a tie keeps it. Chosen on the validation images, it travels in the checkpoint.
CALIBRATION = {
    "three_class": ("interior_threshold", (0.5, 0.3, 0.4, 0.6, 0.7)),
    "distance": ("distance_h", (0.2, 0.05, 0.1, 0.3, 0.4)),
}


class Validator:
    """Mean Dice per class over this rank's share of the validation cases, summed across ranks.

    An instance model's objects are made for each value of its :data:`CALIBRATION` option (``calibrate``;
    else only the configured one): the value with the best mean DSB score is :attr:`chosen` and its scores
    are the validation's, so the checkpoint is selected, and saved, with the watershed it is best with.

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
        calibrate: bool = True,
    ) -> None:
        self.cfg, self.device, self.info, self.precision = cfg, device, info, precision
        self.num_classes = data.class_map.num_classes
        self.cases = data.val_cases[info.rank :: info.world_size]
        self.store = data.store
        self.instances = cfg.data.task == "instances"
        # the training model's own layout: validation must not convert the live model
        self.channels_last = channels_last
        key, grid = CALIBRATION[cfg.data.instance_target]
        self.key = key
        self.grid = grid if calibrate else (float(getattr(cfg.infer, key)),)
        self.chosen: dict[str, float] = {}  # after run(): an instance model's calibrated watershed option
        self._probe = cfg.copy_deep()  # the config each tried value is set on

    def run(self, model: torch.nn.Module) -> np.ndarray:
        """Mean Dice per class; for an instance model ``[foreground Dice, DSB score, AP@0.5]`` (the DSB score,
        of the objects made by the same watershed as ``predict``, picks the best checkpoint)."""
        engine = TorchEngine(model, self.device, self.precision, channels_last=self.channels_last)
        predictor = predictor_for(engine, self.cfg)
        was_training = model.training
        model.eval()
        width = 3 * len(self.grid) if self.instances else self.num_classes
        sums = torch.zeros(width + 1, dtype=torch.float64)
        for case in self.cases:
            image, labels, _ = self.store.get(case)
            sums[:width] += torch.from_numpy(self._score(predictor, image, labels).ravel())
            sums[-1] += 1
        model.train(was_training)
        sums = all_reduce_sum(sums, self.info)
        means = (sums[:width] / max(1.0, float(sums[-1]))).numpy()
        if not self.instances:
            return means
        rows = means.reshape(len(self.grid), 3)
        best = int(np.argmax(rows[:, 1]))  # the first maximum: a tie keeps the default
        self.chosen = {self.key: float(self.grid[best])}
        return rows[best]

    def _score(self, predictor: Any, image: np.ndarray, labels: np.ndarray) -> np.ndarray:
        if not self.instances:
            return dice(predictor.predict(image), labels, self.num_classes)
        from unetseg.inference.instances import instances_of
        from unetseg.metrics.instances import average_precision, dsb_score

        probs = predictor.predict_proba(image)
        truth = (np.asarray(labels) > 0).astype(np.int64)
        cfg, out = self._probe, []
        for value in self.grid:
            setattr(cfg.infer, self.key, value)
            objects = instances_of(probs, cfg)
            fg = dice((objects > 0).astype(np.int64), truth, 2)[1]
            out.append([fg, dsb_score(objects, labels), average_precision(objects, labels)])
        return np.asarray(out)

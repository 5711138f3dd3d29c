"""Validation on whole images with the predictor ``unetseg predict`` and ``evaluate`` use (built by the same
:func:`~unetseg.inference.api.predictor_for`, so every inference option applies the same way)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from unetseg.config import Config
from unetseg.data.prepare import PreparedData
from unetseg.data.store import load_case
from unetseg.inference.api import from_model_grid, predictor_for
from unetseg.inference.engines import TorchEngine
from unetseg.metrics import dice
from unetseg.training.distributed import DistInfo, all_reduce_sum

# The watershed options an instance model's validation chooses (per target), searched one after the other
# (each with the values chosen before it), and the values tried: the default first, so a tie keeps it. As
# StarDist's optimize_thresholds: chosen on the validation images, they travel in the checkpoint. The
# grids stay central: a few validation images overfit extreme values (0.9 was tried for the foreground).
FOREGROUND = ("foreground_threshold", (0.5, 0.3, 0.4, 0.6, 0.7, 0.8))
CALIBRATION = {
    "three_class": (FOREGROUND, ("interior_threshold", (0.5, 0.3, 0.4, 0.6, 0.7))),
    "distance": (FOREGROUND, ("distance_h", (0.2, 0.05, 0.1, 0.3, 0.4))),
}


HELD_BYTES = 1 << 30  # validation probabilities kept (float16) while the watershed options are searched


class Validator:
    """Mean Dice per class over this rank's share of the validation cases, summed across ranks.

    An instance model's validation calibrates its watershed: for each :data:`CALIBRATION` option in turn
    (but those in ``fixed``, the user's), the value with the best mean DSB score over the validation images
    is kept; :attr:`chosen` holds the values and the scores returned are those of the final choice, so the
    checkpoint is selected, and saved, with the watershed it is best with.

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
        fixed: frozenset[str] = frozenset(),
    ) -> None:
        self.cfg, self.device, self.info, self.precision = cfg, device, info, precision
        self.num_classes = data.class_map.num_classes
        self.cases = data.val_cases[info.rank :: info.world_size]
        self.store = data.store
        self.instances = cfg.data.task == "instances"
        # the training model's own layout: validation must not convert the live model
        self.channels_last = channels_last
        self.search = [(k, g) for k, g in CALIBRATION[cfg.data.instance_target] if f"infer.{k}" not in fixed]
        self.chosen: dict[str, float] = {}  # after run(): an instance model's calibrated watershed options
        self.held_bytes = HELD_BYTES
        self._originals: dict[tuple[str, ...], np.ndarray] = {}  # labels of resampled cases, own grid

    def run(self, model: torch.nn.Module) -> np.ndarray:
        """Mean Dice per class; for an instance model ``[foreground Dice, DSB score, AP@0.5]`` (the DSB score,
        of the objects made by the same watershed as ``predict``, picks the best checkpoint)."""
        engine = TorchEngine(model, self.device, self.precision, channels_last=self.channels_last)
        predictor = predictor_for(engine, self.cfg)
        was_training = model.training
        model.eval()
        try:
            if self.instances:
                return self._instances(predictor)
            sums = torch.zeros(self.num_classes + 1, dtype=torch.float64)
            for case in self.cases:
                image, labels, meta = self.store.get(case)
                if "original_shape" in meta:  # scored on the image's own grid, as predict writes it
                    pred = from_model_grid(predictor.predict_proba(image), meta["original_shape"],
                                           probabilities=False)[0]
                    labels = self._original_labels(case)
                else:
                    pred = predictor.predict(image)
                sums[:-1] += torch.from_numpy(dice(pred, labels, self.num_classes))
                sums[-1] += 1
            return self._mean(sums)
        finally:
            model.train(was_training)

    def preview(self, model: torch.nn.Module) -> np.ndarray | None:
        """The first validation image as image | truth | prediction | errors (uint8 RGB), for trackers."""
        if not self.cases:
            return None
        from unetseg.data.overlay import overlay_panels

        engine = TorchEngine(model, self.device, self.precision, channels_last=self.channels_last)
        was_training = model.training
        model.eval()
        try:
            image, labels, _ = self.store.get(self.cases[0])
            pred = predictor_for(engine, self.cfg).predict(image)
        finally:
            model.train(was_training)
        return overlay_panels(image, pred, labels)

    def _original_labels(self, case: Any) -> np.ndarray:
        """A resampled case's labels on its own grid (read once, then kept: small next to the images)."""
        key = self.store.key(case)
        if key not in self._originals:
            _, labels, _ = load_case(case, self.store.data_cfg, self.store.class_map, compact=True)
            assert labels is not None  # a validation case has a mask (the store read it)
            self._originals[key] = labels
        return self._originals[key]

    def probabilities(self, predictor: Any, case: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(probabilities, labels)`` of a case on its own grid (float16 probabilities: what a held-out
        prediction keeps, here and in a cross-validation's out-of-fold store)."""
        image, labels, meta = self.store.get(case)
        probs = predictor.predict_proba(image)
        if "original_shape" in meta:
            probs = from_model_grid(probs, meta["original_shape"])[1]
            labels = self._original_labels(case)
        return probs.astype(np.float16), labels

    def _mean(self, sums: torch.Tensor) -> np.ndarray:
        sums = all_reduce_sum(sums, self.info)
        return (sums[:-1] / max(1.0, float(sums[-1]))).numpy()

    def _instances(self, predictor: Any) -> np.ndarray:
        """Objects of every validation image for each tried value (probabilities computed once, kept as
        float16 while the options are searched)."""
        held, size = [], 0
        for case in self.cases:
            probs, labels = self.probabilities(predictor, case)
            size += probs.nbytes
            # past the budget (big 3D validation sets) an image is predicted again for each option searched
            held.append((probs if size <= self.held_bytes else (predictor, case), labels))
        from unetseg.inference.instances import Watershed

        options = [k for k, _ in CALIBRATION[self.cfg.data.instance_target]]
        watershed = Watershed.of(self.cfg)
        rows = None if self.search else self._scores(held, [watershed])
        for key, grid in self.search:
            tried = self._scores(held, [watershed.but(**{key: v}) for v in grid])
            best = int(np.argmax(tried[:, 1]))  # the first maximum: a tie keeps the default
            watershed = watershed.but(**{key: grid[best]})
            rows = tried[best : best + 1]
        self.chosen = {k: float(getattr(watershed, k)) for k in options}
        assert rows is not None
        return rows[0]

    def _scores(self, held: list, tries: list) -> np.ndarray:
        """``[foreground Dice, DSB, AP@0.5]`` means across ranks, one row per tried watershed."""
        from unetseg.metrics.instances import average_precision, dsb_score

        sums = torch.zeros(3 * len(tries) + 1, dtype=torch.float64)
        for stored, labels in held:
            truth = (np.asarray(labels) > 0).astype(np.int64)
            if isinstance(stored, tuple):
                stored = self.probabilities(*stored)[0]
            probs = stored.astype(np.float32)  # once per image, not once per tried value
            for t, watershed in enumerate(tries):
                objects = watershed(probs)
                fg = dice((objects > 0).astype(np.int64), truth, 2)[1]
                sums[3 * t : 3 * t + 3] += torch.tensor([fg, dsb_score(objects, labels),
                                                         average_precision(objects, labels)])
            sums[-1] += 1
        return self._mean(sums).reshape(len(tries), 3)

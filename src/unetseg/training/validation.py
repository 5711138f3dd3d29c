"""Validation on whole images with the same sliding-window predictor that ``unetseg predict`` uses."""

from __future__ import annotations

import numpy as np
import torch

from unetseg.config import Config
from unetseg.data.dataset import PreparedData, load_case
from unetseg.inference import Predictor
from unetseg.inference.engines import TorchEngine
from unetseg.metrics import dice
from unetseg.training.distributed import DistInfo, all_reduce_sum


class Validator:
    """Mean Dice per class over this rank's share of the validation cases, summed across ranks.

    The validation images are decoded and normalised once and kept, since they are read every epoch.
    """

    def __init__(
        self,
        data: PreparedData,
        cfg: Config,
        device: torch.device,
        info: DistInfo,
        amp_dtype: torch.dtype | None,
        channels_last: bool = False,
    ) -> None:
        self.cfg, self.device, self.info = cfg, device, info
        self.num_classes = data.class_map.num_classes
        self.cases = data.val_cases[info.rank :: info.world_size]
        self.class_map = data.class_map
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]
        # the training model's own layout: validation must not convert the live model
        self.channels_last = channels_last

    def _case(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if i not in self._cache:
            image, labels, _ = load_case(self.cases[i], self.cfg.data, self.class_map)
            self._cache[i] = (image, labels)
        return self._cache[i]

    def run(self, model: torch.nn.Module) -> np.ndarray:
        infer = self.cfg.infer
        predictor = Predictor(
            TorchEngine(model, self.device, self.precision, channels_last=self.channels_last),
            num_classes=self.num_classes,
            spatial_dims=self.cfg.model.spatial_dims,
            tile=infer.tile or self.cfg.data.patch_size,
            overlap=infer.overlap,
            blend=infer.blend,
            batch_size=infer.batch_size,
            tta=False,
            device=self.device,
            precision=self.precision,
        )
        was_training = model.training
        model.eval()
        sums = torch.zeros(self.num_classes + 1, dtype=torch.float64)
        for i in range(len(self.cases)):
            image, labels = self._case(i)
            pred = predictor.predict(image)
            sums[: self.num_classes] += torch.from_numpy(dice(pred, labels, self.num_classes))
            sums[-1] += 1
        model.train(was_training)
        sums = all_reduce_sum(sums, self.info)
        return (sums[: self.num_classes] / max(1.0, float(sums[-1]))).numpy()

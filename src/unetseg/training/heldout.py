"""The end of a semantic run: the temperature and the post-processing chosen on the validation images of
the best checkpoint (:func:`unetseg.calibration.fit_heldout`), written into ``RUN/best``.

The best checkpoint predicts every validation image once, with its own inference settings but temperature
1 and no post-processing, at each image's own grid (as ``predict`` writes it), probabilities kept as
float16 as a cross-validation's out-of-fold store keeps them. From those: the temperature (NLL on a pixel
sample) and nnU-Net's post-processing rule. ``RUN/best/config.json`` gets ``infer.temperature``,
``infer.postprocess`` and, in its metrics, ``heldout`` (the ECE and NLL before and after, the Dice before
and after, every candidate tried). A value the run was trained with (a temperature other than 1, a
non-empty ``infer.postprocess``: the user's, since nothing else sets them before this step) is kept;
``train.calibrate: false`` skips the whole step. ``RUN/last`` is
left as it was trained, so ``--resume`` goes on from an uncalibrated config and calibrates again at its end.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetseg import checkpoint as ckpt
from unetseg.calibration import HeldOutFit, apply_fit, fit_heldout
from unetseg.config import Config
from unetseg.config.schema import PostprocessStep
from unetseg.data.prepare import PreparedData
from unetseg.inference.api import predictor_for
from unetseg.inference.engines import TorchEngine
from unetseg.postprocess.semantic import describe_step
from unetseg.training.distributed import DistInfo
from unetseg.training.runlog import RunLogger
from unetseg.training.validation import Validator


def what_to_fit(cfg: Config) -> tuple[bool, bool]:
    """``(temperature, post-processing)``: which of the two the end of a run trained with ``cfg`` chooses."""
    if not cfg.train.calibrate or cfg.data.task != "semantic":
        return False, False
    return cfg.infer.temperature == 1.0, not cfg.infer.postprocess


Pair = tuple[np.ndarray, np.ndarray]


def heldout_pairs(validator: Validator, predictor: Any, cases: list[Any]) -> Iterator[Pair]:
    """``(float16 probabilities, labels)`` of every case, on its own grid, one at a time."""
    for case in cases:
        yield validator.probabilities(predictor, case)


def calibrate_best(run: Path, trained: Config, data: PreparedData, device: torch.device, precision: str,
                   channels_last: bool, log: RunLogger) -> HeldOutFit | None:
    """Fit and write the held-out choices into ``run/best`` (rank 0 only; see the module doc; ``trained``:
    the run's config). None when there is nothing to fit (no validation images, an instance model,
    ``train.calibrate: false``, both given)."""
    folder = run / "best"
    temperature, postprocess = what_to_fit(trained)
    if not data.val_cases or not (folder / ckpt.CONFIG_FILE).is_file() or not (temperature or postprocess):
        return None
    model, cfg = ckpt.load_checkpoint(folder, device)
    t0 = time.monotonic()
    raw = cfg.copy_deep()
    raw.infer.postprocess = []
    if temperature:
        raw.infer.temperature = 1.0
    engine = TorchEngine(model, device, precision, channels_last=channels_last)
    predictor = predictor_for(engine, raw)
    validator = Validator(data, raw, device, DistInfo(), precision, channels_last)
    fit = fit_heldout(heldout_pairs(validator, predictor, list(data.val_cases)), data.class_map.num_classes,
                      temperature=temperature, postprocess=postprocess)
    apply_fit(cfg, fit, temperature=temperature, postprocess=postprocess)
    ckpt.rewrite_config(folder, cfg, {**ckpt.read_metrics(folder), "heldout": fit.to_dict()})
    log.log(summary(fit, cfg.infer.postprocess, time.monotonic() - t0))
    return fit


def summary(fit: HeldOutFit, steps: list[PostprocessStep], seconds: float,
            what: str = "validation image(s)") -> str:
    """One log line: what the held-out images chose (``steps``: the post-processing now in force) and what
    it gained."""
    parts = [f"held-out calibration on {fit.images} {what} ({seconds:.1f} s)"]
    if fit.pixels:
        if fit.temperature_note:
            parts.append(f"temperature {fit.temperature_fitted:.3g} {fit.temperature_note}")
        else:
            parts.append(f"temperature {fit.temperature:.3g} (ECE {fit.ece_before:.4f} -> "
                         f"{fit.ece_after:.4f})")
    if fit.dice_before:
        chosen = "; ".join(f"{describe_step(s)} (+{s.gain:.4f} Dice)" for s in steps)
        parts.append(f"post-processing: {chosen}" if chosen else "post-processing: none raised the Dice")
    return "; ".join(parts)

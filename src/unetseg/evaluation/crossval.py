"""Cross-validation scores: every training case predicted by the fold that did not see it (out of fold),
measured as ``evaluate`` measures a case, kept on disk, and summarised per fold and across the folds.

``RUN/oof/<stem>.npz`` (read with ``numpy.load``; one per training case, written atomically):

* ``probabilities``: float16 ``(C, *spatial)``, C = max(2, classes): the class probabilities (softmax; they
  sum to 1 up to float16 rounding) at the image's own grid and size, as ``predict --probabilities`` makes
  them (the fold's best checkpoint with the run's tile, overlap and TTA settings) but **uncalibrated**
  (temperature 1): they are what the run's pooled fit of the temperature and the post-processing is made on
  (``folds.json``'s ``pooled``); the fold's own temperature is in its ``fold_<k>/best/config.json``;
* ``labels``: the true labels at the same grid: class indices 0..C-1 (uint8, uint16 beyond 256 classes) for
  a semantic model, object ids (0 background) for an instance model;
* ``fold``: int64 scalar, the fold that held the case out;
* ``spacing``: float64 ``(spatial,)``, the image's pixel or voxel spacing (1.0 per axis when the file
  records none).

``RUN/fold_<k>/held_out.json`` is the fold's :class:`~unetseg.evaluation.result.EvaluationResult` on its
held-out cases (``evaluate --out``'s format); :func:`summary` makes ``RUN/cv.json`` from them: per fold the
mean of every metric ``evaluate`` computes (per class; the object metrics of an instance model), and across
the folds the mean and sample standard deviation (ddof=1) of those means. Strict JSON: a value with no
finite number is ``null``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unetseg.data.cases import Case
from unetseg.errors import CheckpointError
from unetseg.evaluation.evaluate import ScoredCase, score_case
from unetseg.evaluation.report import as_result
from unetseg.evaluation.result import EvaluationResult, finite_mean
from unetseg.fileio import atomic_write, write_json
from unetseg.inference.api import predictor_for
from unetseg.inference.engines import load_engine

OOF = "oof"
HELD_OUT = "held_out.json"
SUMMARY = "cv.json"


def write_oof(path: Path, scored: ScoredCase, fold: int) -> Path:
    """One case's out-of-fold record (the format in the module doc)."""
    assert scored.probs is not None  # scored with probabilities
    dims = scored.labels.ndim
    spacing = np.asarray(scored.spacing if scored.spacing is not None else [1.0] * dims, dtype=np.float64)
    arrays: dict[str, Any] = {"probabilities": scored.probs.astype(np.float16), "labels": scored.labels,
              "fold": np.int64(fold), "spacing": spacing}
    return atomic_write(path, lambda tmp: np.savez_compressed(tmp, **arrays))


def score_held_out(checkpoint: Path, cases: Sequence[Case], *, fold: int, oof_dir: Path, data: str,
                   device: Any, precision: str = "auto") -> EvaluationResult:
    """Predict ``cases`` (a fold's held-out cases, or this process's share of them) with the fold's
    checkpoint, write each one's ``oof_dir/<stem>.npz`` and return their evaluation."""
    engine, cfg = load_engine(checkpoint, device, precision)
    predictor = predictor_for(engine, cfg, temperature=1.0)  # the labels are the same: argmax ignores T
    result = EvaluationResult(str(checkpoint), data, list(cfg.data.class_values or []))
    for case in cases:
        scored = score_case(case, predictor, cfg, probabilities=True)
        write_oof(oof_dir / f"{case.name}.npz", scored, fold)
        result.per_image.append(scored.row)
    return result


def oof_pairs(run: Path) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(probabilities, labels)`` of every out-of-fold record of ``run``, one at a time, in stem order: the
    pairs :func:`unetseg.calibration.fit_heldout` takes."""
    for path in sorted((run / OOF).glob("*.npz")):
        try:
            with np.load(path, allow_pickle=False) as z:
                probs, labels = z["probabilities"], z["labels"]
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"{path}: damaged out-of-fold record ({e}); start afresh with "
                                  "--overwrite") from None
        yield probs, labels


def save_fold(folder: Path, result: EvaluationResult) -> Path:
    return write_json(folder / HELD_OUT, result.to_json())


def load_fold(folder: Path) -> EvaluationResult:
    """A finished fold's scores on its held-out cases."""
    path = folder / HELD_OUT
    try:
        return as_result(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"{path}: missing or damaged; resume the run to score the fold again") from None


def _num(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def _spread(values: list[float]) -> dict[str, float | None]:
    """Mean and sample standard deviation over the finite values (sd: None for fewer than two)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    sd = float(np.std(finite, ddof=1)) if len(finite) > 1 else None
    return {"mean": _num(finite_mean(finite)), "sd": sd}


def summary(folds: list[EvaluationResult], records: list[dict[str, Any]],
            about: dict[str, Any]) -> dict[str, Any]:
    """``RUN/cv.json``: ``about`` (the split), one entry per fold (its record: cases, minutes, validation
    score; and the means of its held-out cases) and, for every metric, the mean and sd across folds."""
    per_fold = []
    for k, (res, rec) in enumerate(zip(folds, records, strict=True)):
        entry = {"fold": k, **rec, "images": res.num_images,
                 "mean": {m: [_num(v) for v in vs] for m, vs in res.mean.items()},
                 "mean_foreground_dice": _num(res.mean_foreground_dice)}
        if res.mean_objects is not None:
            entry["mean_objects"] = {m: _num(v) for m, v in res.mean_objects.items()}
        per_fold.append(entry)
    first = folds[0]
    across: dict[str, Any] = {
        m: [_spread([f.mean[m][c] for f in folds]) for c in range(first.num_classes)]
        for m in first.metric_names
    }
    out = {**about, "folds": len(folds), "class_values": first.class_values, "per_fold": per_fold,
           "across_folds": across,
           "mean_foreground_dice": _spread([f.mean_foreground_dice for f in folds])}
    if first.mean_objects is not None:
        out["objects"] = {m: _spread([(f.mean_objects or {}).get(m, math.nan) for f in folds])
                          for m in first.mean_objects}
    out["oof"] = (f"{OOF}/<stem>.npz: probabilities (float16, uncalibrated), labels, fold, spacing "
                  f"({__name__})")
    return out



def pooled(folds: list[EvaluationResult], checkpoint: str, data: str) -> EvaluationResult:
    """Every held-out case of every fold as one evaluation (each case scored by the fold that held it out)."""
    rows = sorted((r for f in folds for r in f.per_image), key=lambda r: r.case)
    return EvaluationResult(checkpoint, data, folds[0].class_values, rows)

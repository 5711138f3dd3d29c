"""The typed result of an evaluation, and its strict JSON form (RFC 8259: no NaN/Infinity).

Per image and class the metrics of :data:`unetseg.metrics.semantic.PER_CLASS_METRICS`; surface distances are
infinite when a structure is present on one side only. In JSON such a value is ``null`` and the image's
``infinite`` field lists the classes where it was infinite; a mean with no finite value is ``null`` and
``mean_counts`` says over how many images each mean was taken.

A semantic model's result also says how far its probabilities and its uncertainty can be trusted
(:class:`unetseg.calibration.TrustStats`): ``calibration`` (the ECE of the probabilities as predicted, the
reliability bins) and ``uncertainty`` (errors found against pixels checked in order of uncertainty), with
each image's mean uncertainty (``per_image[i].uncertainty``), the images ranked by it
(``least_sure``) and the rank correlation of that mean with the image's error (``image_correlation``).
``heldout``: what the checkpoint chose on its validation images (temperature, post-processing), when known.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unetseg.metrics.semantic import PER_CLASS_METRICS


@dataclass
class ImageResult:
    """Metrics of one image: ``metrics[name][class]``; ``overlay``: its picture, when one was written."""

    case: str
    metrics: dict[str, list[float]]
    overlay: str | None = None
    objects: dict[str, float] | None = None  # instance metrics (instance models)
    uncertainty: dict[str, float] | None = None  # mean entropy / mutual information (semantic models)

    def to_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {"case": self.case, **self.metrics}
        if self.overlay:
            row["overlay"] = self.overlay
        if self.objects is not None:
            row["objects"] = self.objects
        if self.uncertainty is not None:
            row["uncertainty"] = self.uncertainty
        return row


def finite_mean(values: list[float]) -> float:
    """Mean over finite values; inf (an empty structure on one side) is counted apart, never averaged."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def mean_sd(spread: dict[str, float | None], pm: str = "+/-") -> str:
    """``0.8123 +/- 0.0345`` (``-`` without a mean)."""
    mean, sd = spread.get("mean"), spread.get("sd")
    if mean is None:
        return "-"
    return f"{mean:.4f}" + (f" {pm} {sd:.4f}" if sd is not None else "")


@dataclass
class EvaluationResult:
    """What ``unetseg evaluate`` found: per image, the mean per class, and what was skipped."""

    checkpoint: str
    data: str
    class_values: list[Any]
    per_image: list[ImageResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    calibration: dict[str, Any] | None = None
    uncertainty: dict[str, Any] | None = None
    heldout: dict[str, Any] | None = None  # the checkpoint's metrics["heldout"]
    postprocess: list[dict[str, Any]] = field(default_factory=list)  # the checkpoint's infer.postprocess

    @property
    def num_images(self) -> int:
        return len(self.per_image)

    @property
    def num_classes(self) -> int:
        return len(self.per_image[0].metrics["dice"]) if self.per_image else len(self.class_values)

    @property
    def metric_names(self) -> list[str]:
        return [k for k in PER_CLASS_METRICS if self.per_image and k in self.per_image[0].metrics]

    @property
    def mean(self) -> dict[str, list[float]]:
        return {k: [finite_mean([r.metrics[k][c] for r in self.per_image]) for c in range(self.num_classes)]
                for k in self.metric_names}

    @property
    def foreground(self) -> list[int]:
        return list(range(1, self.num_classes)) or [0]

    @property
    def mean_foreground_dice(self) -> float:
        if not self.per_image:
            return float("nan")
        dice = self.mean["dice"]
        return float(np.mean([dice[c] for c in self.foreground]))

    @property
    def mean_objects(self) -> dict[str, float] | None:
        rows = [r.objects for r in self.per_image if r.objects is not None]
        if not rows:
            return None
        return {k: finite_mean([float(r[k]) for r in rows]) for k in rows[0]}

    def least_sure(self) -> list[str]:
        """The images from the least sure (highest mean entropy) to the surest: which to check first."""
        rows = [r for r in self.per_image if r.uncertainty is not None]
        return [r.case for r in sorted(rows, key=lambda r: -float((r.uncertainty or {})["entropy"]))]

    @property
    def image_correlation(self) -> float:
        """Spearman's correlation between an image's mean entropy and its error (1 - mean foreground
        Dice); NaN without uncertainty or with fewer than 3 images."""
        from unetseg.calibration.uncertainty import image_correlation

        rows = [r for r in self.per_image if r.uncertainty is not None]
        fg = self.foreground
        return image_correlation([float((r.uncertainty or {})["entropy"]) for r in rows],
                                 [1.0 - float(np.mean([r.metrics["dice"][c] for c in fg])) for r in rows])

    def to_dict(self) -> dict[str, Any]:
        """The plain-Python form (floats may be inf/nan); ``result["key"]`` reads it too."""
        out = {"checkpoint": self.checkpoint, "data": self.data, "class_values": self.class_values,
               "num_images": self.num_images, "per_image": [r.to_dict() for r in self.per_image],
               "mean": self.mean, "mean_foreground_dice": self.mean_foreground_dice, "skipped": self.skipped}
        if self.mean_objects is not None:
            out["mean_objects"] = self.mean_objects
        if self.uncertainty is not None:
            out["uncertainty"] = {**self.uncertainty, "image_correlation": self.image_correlation,
                                  "least_sure": self.least_sure()}
        for key in ("calibration", "heldout"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.postprocess:
            out["postprocess"] = self.postprocess
        return out

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def to_json(self) -> dict[str, Any]:
        """Strict JSON: infinities and NaN become null, with the explicit fields described above."""
        out = self.to_dict()
        for row in out["per_image"]:
            infinite = {k: [c for c, v in enumerate(row[k]) if math.isinf(v)] for k in self.metric_names}
            row.update({k: [_finite(v) for v in row[k]] for k in self.metric_names})
            if any(infinite.values()):
                row["infinite"] = {k: v for k, v in infinite.items() if v}
        out["mean_counts"] = {k: [sum(math.isfinite(r.metrics[k][c]) for r in self.per_image)
                                  for c in range(self.num_classes)] for k in self.metric_names}
        out["mean"] = {k: [_finite(v) for v in vs] for k, vs in out["mean"].items()}
        out["mean_foreground_dice"] = _finite(out["mean_foreground_dice"])
        if "mean_objects" in out:
            out["mean_objects"] = {k: _finite(v) for k, v in out["mean_objects"].items()}
        for row in out["per_image"]:
            if "objects" in row:
                row["objects"] = {k: _finite(v) for k, v in row["objects"].items()}
        for key in ("calibration", "uncertainty", "heldout"):
            if key in out:
                out[key] = _strict(out[key])
        out["null_means"] = ("a per-image surface distance that is infinite (the class is present on one "
                             "side only; see 'infinite'), or a mean with no finite value")
        return out


def _finite(v: float) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _strict(value: Any) -> Any:
    """Nested dicts and lists with NaN/inf floats as None (strict JSON)."""
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    if isinstance(value, float):
        return _finite(value)
    return value

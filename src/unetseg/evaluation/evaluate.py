"""``unetseg evaluate``: segment a labelled dataset, then metrics per image and per class.

Every output (the JSON, the overlays, the report) is planned and checked before the first image: none may
replace a file the command reads (images, masks, the checkpoint), none may land in the masks folder, and an
existing file unetseg did not write is kept unless ``overwrite``.

Images are predicted as ``predict`` does (the checkpoint's temperature and post-processing included). A
semantic model is also measured on how far its probabilities and uncertainty can be trusted
(:class:`~unetseg.calibration.TrustStats`: calibration error, errors found in order of uncertainty, the
least sure images).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from unetseg.calibration import TrustStats
from unetseg.checkpoint import read_metrics
from unetseg.config import Config
from unetseg.data.cases import Case, find_cases
from unetseg.data.overlay import save_overlay
from unetseg.data.store import label_map, load_case
from unetseg.errors import DataError
from unetseg.evaluation.result import EvaluationResult, ImageResult
from unetseg.fileio import OutputGuard, printable, record_written, write_json
from unetseg.inference.api import predict_full, predictor_for
from unetseg.inference.engines import load_engine
from unetseg.inference.instances import instances_of
from unetseg.inference.predictor import Predictor
from unetseg.io.images import SkipLog
from unetseg.metrics import compute_metrics
from unetseg.metrics.instances import instance_metrics


def _middle_slice(a: np.ndarray, spatial_dims: int) -> np.ndarray:
    """The central axial slice of a 3D array (channel axis kept when present), for 2D pictures."""
    if spatial_dims == 2:
        return a
    axis = a.ndim - 3
    return np.take(a, a.shape[axis] // 2, axis=axis)


def _plan(
    cases: list[Case],
    data: Path,
    checkpoint: Path,
    out_json: Path | None,
    overlay_dir: Path | None,
    report: Path | None,
) -> OutputGuard:
    guard = OutputGuard()
    guard.read(data, "--data")
    for case in cases:
        guard.read_all(case.files, "--data")
        guard.read_all({p.parent for p in case.files}, "--data")
    guard.read(checkpoint, "--checkpoint")
    if checkpoint.is_dir():
        guard.read_all([p for p in checkpoint.rglob("*") if p.is_dir()], "--checkpoint")
    if out_json:
        guard.write(out_json, "--out")
    if report:
        guard.write(report, "--report")
    if overlay_dir:
        for case in cases:
            guard.write(overlay_dir / f"{case.name}.png", "--overlays", case.image_paths[0])
    return guard


def evaluate(
    checkpoint: str | Path,
    data: str | Path,
    *,
    out_json: str | Path | None = None,
    overlays: str | Path | None = None,
    report: str | Path | None = None,
    tile: Sequence[int] | None = None,
    overlap: float | None = None,
    blend: str | None = None,
    tta: bool = False,
    batch_size: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    skip_bad: bool = False,
    quiet: bool = False,
    overwrite: bool = False,
    trust_torchscript: bool = False,
    folds: Sequence[int] | None = None,
) -> EvaluationResult:
    """Predict every image of ``data`` with ``checkpoint`` and compare with its mask.

    Writes the result as strict JSON to ``out_json``, side-by-side PNGs to ``overlays`` and a
    self-contained HTML page to ``report``. Inference options apply as in ``predict`` (the checkpoint's
    ``infer`` settings, each overridden when given). A K-fold run is evaluated as the ensemble of its folds
    (``folds``: of these); its report also shows the cross-validation.
    """
    console = Console(stderr=True, quiet=quiet)
    engine, cfg = load_engine(checkpoint, device, precision, trust_torchscript=trust_torchscript,
                              folds=tuple(folds) if folds is not None else None)
    skipped = SkipLog()
    cases = find_cases(data, require_masks=True, skip_bad=skip_bad, skip=skipped)
    overlay_dir = Path(overlays) if overlays else (Path(report).parent / "report_images" if report else None)
    guard = _plan(
        cases,
        Path(data),
        Path(checkpoint),
        Path(out_json) if out_json else None,
        overlay_dir,
        Path(report) if report else None,
    )
    guard.check(overwrite=overwrite)
    predictor = predictor_for(
        engine, cfg, tile=tile, overlap=overlap, blend=blend, batch_size=batch_size, tta=True if tta else None
    )
    classes = cfg.data.class_values
    assert classes is not None  # a trained model's config records them (check_config(trained=True))
    result = EvaluationResult(str(checkpoint), str(data), classes)
    trust = TrustStats(predictor.temperature) if cfg.data.task == "semantic" else None
    for case in cases:
        try:
            result.per_image.append(_evaluate_case(case, predictor, cfg, overlay_dir, trust))
        except DataError as e:  # e.g. mask values outside the checkpoint's class map
            if not skip_bad:
                raise
            skipped.skip(e)
    result.skipped = skipped.messages
    _add_trust(result, trust, cfg, Path(checkpoint))
    _print_table(console, result)
    skipped.summary()
    _write_outputs(console, result, out_json, report, overlay_dir, checkpoint)
    return result


def _add_trust(result: EvaluationResult, trust: TrustStats | None, cfg: Config, checkpoint: Path) -> None:
    """The calibration and uncertainty measures, and what the checkpoint chose on its validation images."""
    result.postprocess = [s.model_dump(mode="json", exclude_none=True) for s in cfg.infer.postprocess]
    heldout = read_metrics(checkpoint).get("heldout") if checkpoint.is_dir() else None
    result.heldout = heldout if isinstance(heldout, dict) else None
    if trust is not None and result.per_image:
        found = trust.result()
        result.calibration, result.uncertainty = found["calibration"], found["uncertainty"]


@dataclass
class ScoredCase:
    """One case predicted and measured: its row of metrics, the normalised image, its true labels at the
    image's grid (class indices, or object ids), what was predicted (classes, or object ids) and the
    probabilities (when asked for, and always for an instance model)."""

    row: ImageResult
    image: np.ndarray
    labels: np.ndarray
    shown: np.ndarray
    probs: np.ndarray | None
    spacing: tuple[float, ...] | None


def score_case(case: Case, predictor: Predictor, cfg: Config, *, probabilities: bool = False,
               trust: TrustStats | None = None) -> ScoredCase:
    """Predict one labelled case as ``predict`` does and measure it. An instance model is measured on its
    objects (DSB score, AP/F1 at 0.5, PQ, AJI) and on the foreground they cover (Dice etc., 2 classes);
    with ``trust``, a semantic model's probabilities and uncertainty go to it."""
    labels_of = label_map(cfg.data)
    image, labels, meta = load_case(case, cfg.data, labels_of)
    assert labels is not None  # find_cases(require_masks=True): every case has a mask
    instances, spacing = cfg.data.task == "instances", meta.get("spacing")
    measured = trust is not None
    out = predict_full(predictor, image, spacing, cfg, probabilities=instances or probabilities or measured,
                       uncertainty=measured)
    pred, probs = out.labels, out.probabilities
    if trust is not None and out.uncertainty is not None:
        assert probs is not None  # asked for (measured)
        trust.add(probs, labels, pred, out.uncertainty[0])
    objects, shown = None, pred
    if instances:
        assert probs is not None  # asked for (probabilities=instances)
        shown = instances_of(probs, cfg)
        objects = instance_metrics(shown, labels)
        pred, truth = (shown > 0).astype(np.int64), (np.asarray(labels) > 0).astype(np.int64)
        m = compute_metrics(pred, truth, 2, spacing=spacing)
    else:
        m = compute_metrics(pred, labels, labels_of.num_classes, spacing=spacing)
    row = ImageResult(printable(case.name), {k: [float(x) for x in v] for k, v in m.items()}, objects=objects)
    if out.uncertainty is not None:
        row.uncertainty = {"entropy": float(out.uncertainty[0].mean()),
                           "mutual_information": float(out.uncertainty[1].mean())}
    return ScoredCase(row, image, labels, shown, probs, tuple(spacing) if spacing is not None else None)


def _evaluate_case(case: Case, predictor: Predictor, cfg: Config, overlay_dir: Path | None,
                   trust: TrustStats | None = None) -> ImageResult:
    """Score one case and draw its overlay."""
    scored = score_case(case, predictor, cfg, trust=trust)
    if overlay_dir:
        sd = cfg.model.spatial_dims
        png = save_overlay(
            overlay_dir / f"{case.name}.png",
            _middle_slice(scored.image, sd),
            _middle_slice(scored.shown, sd),
            truth=_middle_slice(scored.labels, sd),
            objects=cfg.data.task == "instances",
        )
        record_written([png])
        scored.row.overlay = str(png)
    return scored.row


def _write_outputs(
    console: Console,
    result: EvaluationResult,
    out_json: str | Path | None,
    report: str | Path | None,
    overlay_dir: Path | None,
    checkpoint: str | Path,
) -> None:
    if out_json:
        record_written([write_json(out_json, result.to_json())])
        console.print(f"metrics written to {out_json}")
    if report:
        from unetseg.evaluation.report import write_report

        record_written([write_report(report, result, checkpoint=checkpoint)])
        console.print(f"report written to {report}")
    if overlay_dir:
        console.print(f"overlays written to {overlay_dir}")


def _fmt(v: float) -> str:
    return "inf" if v == float("inf") else ("-" if math.isnan(v) else f"{v:.4f}")


def _print_table(console: Console, result: EvaluationResult) -> None:
    fg = result.foreground
    table = Table(title=f"evaluation: {result.num_images} images, classes {result.class_values}")
    table.add_column("image")
    for c in fg:
        for k in ("dice", "iou", "hd95"):
            table.add_column(f"{k} c{c}", justify="right")
    for r in result.per_image:
        table.add_row(r.case, *[_fmt(r.metrics[k][c]) for c in fg for k in ("dice", "iou", "hd95")])
    if result.per_image:
        mean = result.mean
        table.add_row(
            "[bold]mean", *[f"[bold]{_fmt(mean[k][c])}" for c in fg for k in ("dice", "iou", "hd95")]
        )
    console.print(table)
    console.print(f"mean foreground Dice: {_fmt(result.mean_foreground_dice)}")
    for line in trust_lines(result):
        console.print(line)


def trust_lines(result: EvaluationResult) -> list[str]:
    """What the calibration and uncertainty measures say, in a few lines."""
    lines = []
    c, u = result.calibration, result.uncertainty
    if c:
        lines.append(f"calibration error (ECE, 15 bins, pixels): {_fmt(c['ece'])} at temperature "
                     f"{c['temperature']:.3g}" + (f" ({_fmt(c['ece_without_temperature'])} without it)"
                                                   if "ece_without_temperature" in c else ""))
    if u and math.isfinite(u["auc"]):
        lines.append(f"uncertainty: the 10% most uncertain pixels hold {u['found_at']['0.1']:.0%} of the "
                     f"errors; area under errors found vs pixels checked {u['auc']:.3f} (random 0.5, best "
                     f"{u['auc_best']:.3f}); least sure first: {', '.join(result.least_sure()[:3])}")
    return lines

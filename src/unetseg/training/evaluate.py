"""``unetseg evaluate``: segment a labelled dataset, then metrics per image and per class."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from unetseg.data.dataset import ClassMap, find_cases, load_case
from unetseg.data.io import SkipLog, save_overlay
from unetseg.errors import DataError
from unetseg.inference import Predictor
from unetseg.inference.engines import load_engine
from unetseg.metrics import compute_metrics
from unetseg.utils import resolve_device

METRICS = ("dice", "iou", "precision", "recall", "hd95", "msd")


def _middle_slice(a: np.ndarray, spatial_dims: int) -> np.ndarray:
    """The central axial slice of a 3D array (channel axis kept when present), for 2D pictures."""
    if spatial_dims == 2:
        return a
    axis = a.ndim - 3
    return np.take(a, a.shape[axis] // 2, axis=axis)


def _mean(values: list[float]) -> float:
    """Mean over finite values; inf (an empty structure on one side) is counted apart, never averaged."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def evaluate(
    checkpoint: str | Path,
    data: str | Path,
    *,
    out_json: str | Path | None = None,
    overlays: str | Path | None = None,
    report: str | Path | None = None,
    tile: list[int] | None = None,
    overlap: float | None = None,
    tta: bool = False,
    batch_size: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    skip_bad: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Predict every image of ``data`` with ``checkpoint`` and compare with its mask.

    Returns ``{"per_image": [...], "mean": {metric: [per class]}, "mean_foreground_dice": x, ...}``;
    writes it as JSON to ``out_json``, side-by-side PNGs to ``overlays`` and an HTML page to ``report``.
    """
    console = Console(stderr=True, quiet=quiet)
    dev = resolve_device(device)
    engine, cfg = load_engine(checkpoint, dev)
    class_map = ClassMap(cfg.data.class_values)
    num_classes = class_map.num_classes
    predictor = Predictor(
        engine,
        num_classes=num_classes,
        spatial_dims=cfg.model.spatial_dims,
        tile=tile or cfg.infer.tile or cfg.data.patch_size,
        overlap=cfg.infer.overlap if overlap is None else overlap,
        blend=cfg.infer.blend,
        batch_size=batch_size or cfg.infer.batch_size,
        tta=tta,
        device=dev,
        precision=precision,
    )
    skipped = SkipLog()
    cases = find_cases(data, require_masks=True, skip_bad=skip_bad, skip=skipped)
    overlay_dir = Path(overlays) if overlays else (Path(report).parent / "report_images" if report else None)
    if overlay_dir:
        overlay_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for case in cases:
        try:
            image, labels, meta = load_case(case, cfg.data, class_map)
        except DataError as e:  # e.g. mask values outside the checkpoint's class map
            if not skip_bad:
                raise
            skipped.skip(e)
            continue
        pred = predictor.predict(image)
        m = compute_metrics(pred, labels, num_classes, spacing=meta.get("spacing"))
        row: dict[str, Any] = {"case": case.name, **{k: [float(x) for x in m[k]] for k in METRICS if k in m}}
        if overlay_dir:
            png = overlay_dir / f"{case.name}.png"
            sd = cfg.model.spatial_dims
            save_overlay(
                png, _middle_slice(image, sd), _middle_slice(pred, sd), truth=_middle_slice(labels, sd)
            )
            row["overlay"] = str(png)
        rows.append(row)
    mean = {
        k: [_mean([r[k][c] for r in rows]) for c in range(num_classes)]
        for k in METRICS
        if rows and k in rows[0]
    }
    fg = list(range(1, num_classes)) or [0]
    result: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "class_values": cfg.data.class_values,
        "num_images": len(rows),
        "per_image": rows,
        "mean": mean,
        "mean_foreground_dice": float(np.mean([mean["dice"][c] for c in fg])) if rows else float("nan"),
    }
    result["skipped"] = skipped.messages
    _print_table(console, result, num_classes)
    skipped.summary()
    if out_json:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(result, indent=2))
        console.print(f"metrics written to {out_json}")
    if report:
        from unetseg.report import write_report

        write_report(report, result, checkpoint=checkpoint)
        console.print(f"report written to {report}")
    if overlay_dir:
        console.print(f"overlays written to {overlay_dir}")
    return result


def _fmt(v: float) -> str:
    return "inf" if v == float("inf") else ("-" if math.isnan(v) else f"{v:.4f}")


def _print_table(console: Console, result: dict[str, Any], num_classes: int) -> None:
    fg = list(range(1, num_classes)) or [0]
    table = Table(title=f"evaluation: {result['num_images']} images, classes {result['class_values']}")
    table.add_column("image")
    for c in fg:
        for k in ("dice", "iou", "hd95"):
            table.add_column(f"{k} c{c}", justify="right")
    for r in result["per_image"]:
        table.add_row(r["case"], *[_fmt(r[k][c]) for c in fg for k in ("dice", "iou", "hd95")])
    if result["per_image"]:
        table.add_row(
            "[bold]mean",
            *[f"[bold]{_fmt(result['mean'][k][c])}" for c in fg for k in ("dice", "iou", "hd95")],
        )
    console.print(table)
    console.print(f"mean foreground Dice: {result['mean_foreground_dice']:.4f}")

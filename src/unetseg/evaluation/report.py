"""A self-contained HTML evaluation report: sortable metric table, overlays, what the checkpoint chose on
its validation images (temperature, post-processing), how calibrated its probabilities are and which images
and pixels its uncertainty says to check first, curves and configuration.

Images are embedded as data URIs, so the one file can be mailed or archived on its own.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

from unetseg.checkpoint import CALIBRATION_FILE, CONFIG_FILE, FOLDS_FILE, find_checkpoint, is_fold_run
from unetseg.errors import CheckpointError
from unetseg.evaluation.result import EvaluationResult, ImageResult, mean_sd
from unetseg.fileio import printable, write_text

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}
h1{font-size:1.5em} h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em}
th,td{padding:.3em .7em;border-bottom:1px solid #eee;text-align:right}
th{cursor:pointer;background:#f4f4f4;position:sticky;top:0} th:first-child,td:first-child{text-align:left}
tr.mean td{font-weight:bold;border-top:2px solid #999}
.case{display:inline-block;margin:.5em;vertical-align:top} .case img{max-width:640px;border:1px solid #ccc}
.case figcaption{font-size:.85em} pre{background:#f8f8f8;padding:1em;overflow:auto;font-size:.8em}
.legend span{display:inline-block;width:1em;height:1em;margin:0 .3em 0 1em;vertical-align:middle}
svg.plot{margin:.5em 2em .5em 0;vertical-align:top} svg.plot text{font-size:10px}
"""

# Clicking a header sorts by that column; the mean row stays at the bottom.
_SCRIPT = """
document.querySelectorAll('table.sortable th').forEach((th, col) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0];
  const rows = [...body.querySelectorAll('tr:not(.mean)')];
  const asc = th.dataset.asc !== 'true'; th.dataset.asc = asc;
  const key = r => { const t = r.cells[col].dataset.v ?? r.cells[col].textContent; const n = parseFloat(t);
                     return isNaN(n) ? t : n; };
  rows.sort((a, b) => { const x = key(a), y = key(b);
                       return (x > y ? 1 : x < y ? -1 : 0) * (asc ? 1 : -1); });
  const mean = body.querySelector('tr.mean'); rows.forEach(r => body.insertBefore(r, mean));
}));
"""


def _data_uri(path: str | Path) -> str | None:
    p = Path(path)
    if not p.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode("ascii")


def _cell(v: float) -> str:
    if isinstance(v, float) and math.isinf(v):
        return '<td data-v="1e308">inf</td>'
    if isinstance(v, float) and math.isnan(v):
        return '<td data-v="-1">-</td>'
    return f'<td data-v="{v}">{v:.4f}</td>'


def _esc(text: Any) -> str:
    return html.escape(printable(str(text)))


def _table(result: EvaluationResult, classes: list[int]) -> str:
    metrics = result.metric_names
    head = "".join(f"<th>{k} c{c}</th>" for c in classes for k in metrics)
    objects = list(result.mean_objects or {})
    head += "".join(f"<th>{k}</th>" for k in objects)
    rows = []
    for r in result.per_image:
        cells = "".join(_cell(r.metrics[k][c]) for c in classes for k in metrics)
        cells += "".join(_cell(float((r.objects or {}).get(k, math.nan))) for k in objects)
        rows.append(f"<tr><td>{_esc(r.case)}</td>{cells}</tr>")
    mean = result.mean
    cells = "".join(_cell(mean[k][c]) for c in classes for k in metrics)
    cells += "".join(_cell(v) for v in (result.mean_objects or {}).values())
    rows.append(f'<tr class="mean"><td>mean</td>{cells}</tr>')
    return (
        f'<table class="sortable" id="metrics"><thead><tr><th>image</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def as_result(result: EvaluationResult | dict[str, Any]) -> EvaluationResult:
    """Accept the typed result or its dict form (as read back from the JSON of ``evaluate --out``)."""
    if isinstance(result, EvaluationResult):
        return result
    names = ("dice", "iou", "precision", "recall", "hd95", "msd")
    rows = [ImageResult(r["case"], {k: [math.inf if v is None else v for v in r[k]] for k in names if k in r},
                        r.get("overlay"), r.get("objects"), r.get("uncertainty"))
            for r in result["per_image"]]
    return EvaluationResult(result["checkpoint"], result["data"], result["class_values"], rows,
                            result.get("skipped", []), result.get("calibration"),
                            _numbers(result.get("uncertainty") or None), result.get("heldout"),
                            result.get("postprocess", []))


def _numbers(measures: dict[str, Any] | None) -> dict[str, Any] | None:
    """Strict JSON's nulls back to NaN in a measures dict (their absence of a value)."""
    if measures is None:
        return None
    return {k: _numbers(v) if isinstance(v, dict) else (math.nan if v is None else v)
            for k, v in measures.items()}


def _mean_sd(spread: dict[str, float | None]) -> str:
    mean = spread.get("mean")
    return f'<td data-v="{-1 if mean is None else mean}">{mean_sd(spread, "&plusmn;")}</td>'


def _fold_cell(v: float | None) -> str:
    return '<td data-v="-1">-</td>' if v is None else _cell(float(v))


def cv_section(cv: dict[str, Any]) -> str:
    """A K-fold run's cross-validation (``RUN/cv.json``): each fold's mean of every metric on the cases it
    held out, and the mean and sd across folds."""
    metrics = list(cv["across_folds"])
    classes = list(range(1, len(cv["across_folds"][metrics[0]]))) or [0]  # instance models: 2 (objects)
    objects = list(cv.get("objects", {}))
    head = "".join(f"<th>{k} c{c}</th>" for c in classes for k in metrics) + "".join(
        f"<th>{k}</th>" for k in objects)
    rows = []
    for f in cv["per_fold"]:
        cells = "".join(_fold_cell(f["mean"][k][c]) for c in classes for k in metrics)
        cells += "".join(_fold_cell(f.get("mean_objects", {}).get(k)) for k in objects)
        minutes = f.get("minutes")
        rows.append(f"<tr><td>fold {f['fold']}</td><td>{f['images']}</td>"
                    f"<td>{'-' if minutes is None else f'{minutes:.1f}'}</td>{cells}</tr>")
    cells = "".join(_mean_sd(cv["across_folds"][k][c]) for c in classes for k in metrics)
    cells += "".join(_mean_sd(cv["objects"][k]) for k in objects)
    rows.append(f'<tr class="mean"><td>mean &plusmn; sd</td><td></td><td></td>{cells}</tr>')
    score = mean_sd(cv["mean_foreground_dice"], "&plusmn;")
    return (
        f'<h2>Cross-validation</h2><p>{cv["folds"]} folds; mean foreground Dice <b>{score}</b> (sd across '
        f"folds); each fold scored on the cases it did not train on, with its best checkpoint. "
        f"{_esc(cv.get('grouping', ''))}; folds balanced by {_esc(cv.get('stratified_by', '-'))}.</p>"
        f'<table class="sortable" id="cv"><thead><tr><th>fold</th><th>images</th><th>minutes</th>{head}'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _fold_run_sections(run: Path) -> list[str]:
    """A K-fold run's cross-validation and configuration."""
    parts = []
    try:
        parts.append(cv_section(json.loads((run / "cv.json").read_bytes().decode("utf-8", "replace"))))
    except (OSError, ValueError, KeyError, TypeError):
        parts.append("<h2>Cross-validation</h2><p>not finished (no readable cv.json in the run)</p>")
    try:
        fitted = json.loads((run / CALIBRATION_FILE).read_bytes().decode("utf-8", "replace"))
        fit = fitted["fit"]
        kept = (f"temperature <b>{_num(fitted['temperature'], '.3g')}</b>, calibration error "
                f"{_num(fit['ece_before'])} &rarr; {_num(fit['ece_after'])}" if not fit["temperature_note"]
                else f"temperature 1: the fit ({_num(fit['temperature_fitted'], '.3g')}) was "
                     f"{_esc(fit['temperature_note'])}")
        parts.append(f'<h2>Ensemble calibration</h2><p id="ensemble-calibration">folds '
                     f"{_esc(','.join(map(str, fitted['folds'])))}, fitted on {fit['images']} image(s) of "
                     f"{_esc(fitted['data'])} that no fold saw: {kept}.</p>")
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not calibrated (unetseg calibrate), or a record the run refuses when it loads
    try:
        record = json.loads((run / FOLDS_FILE).read_bytes().decode("utf-8", "replace"))
        parts.append(f"<h2>Run configuration</h2><pre>{_esc(json.dumps(record['config'], indent=2))}</pre>")
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return parts


def _run_sections(checkpoint: str | Path | None) -> list[str]:
    """Training curves and the run configuration, when the checkpoint is a run's folder (a K-fold run:
    its cross-validation)."""
    if checkpoint is None:
        return []
    if is_fold_run(checkpoint):
        return _fold_run_sections(Path(checkpoint))
    try:
        folder = find_checkpoint(checkpoint)
    except CheckpointError:  # an ONNX file or a moved checkpoint: no curves, still a report
        return []
    parts = []
    curves = _data_uri(folder.parent / "curves.png")
    if curves:
        parts.append(f'<h2>Training curves</h2><img id="curves" src="{curves}" alt="training curves">')
    try:
        run_config = json.loads((folder / CONFIG_FILE).read_bytes().decode("utf-8", "replace"))
    except (OSError, ValueError):
        return parts
    parts.append(f"<h2>Run configuration</h2><pre>{_esc(json.dumps(run_config, indent=2))}</pre>")
    return parts


def _num(v: Any, fmt: str = ".4f") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else math.nan


def _plot(points: list[tuple[float, float]], title: str, x_label: str) -> str:
    """A small SVG line plot on the unit square (title: the y axis), with the diagonal dashed."""
    size, pad = 200, 30

    def xy(x: float, y: float) -> str:
        return f"{pad + x * size:.1f},{pad + (1 - y) * size:.1f}"

    line = " ".join(xy(x, y) for x, y in points)
    return (f'<svg class="plot" width="{size + 2 * pad}" height="{size + 2 * pad + 10}" role="img" '
            f'aria-label="{_esc(title)}"><text x="{pad}" y="15">{_esc(title)}</text>'
            f'<rect x="{pad}" y="{pad}" width="{size}" height="{size}" fill="none" stroke="#999"/>'
            f'<polyline points="{xy(0, 0)} {xy(1, 1)}" fill="none" stroke="#aaa" stroke-dasharray="4"/>'
            f'<polyline points="{line}" fill="none" stroke="#36f" stroke-width="2"/>'
            f'<text x="{pad}" y="{size + 2 * pad}">{_esc(x_label)}</text></svg>')


def _chosen_section(result: EvaluationResult) -> list[str]:
    """What the checkpoint chose on its validation images (a K-fold run's ensemble: on the pooled
    out-of-fold predictions): temperature and post-processing."""
    h = result.heldout or {}
    if not h and not result.postprocess:
        return []
    where = "out-of-fold predictions" if h.get("source") == "out-of-fold" else "validation images"
    parts = [f"<h2>Chosen on the {where}</h2>"]
    if h.get("pixels"):
        note = h.get("temperature_note")
        kept = (f"Temperature fitted by NLL: {_num(h.get('temperature_fitted'), '.3g')}, {_esc(note)}; 1 is "
                "used" if note else f"Temperature <b>{_num(h.get('temperature'), '.3g')}</b> (fitted by NLL")
        parts.append(
            f"<p>{kept} on {h.get('pixels')} pixels of {h.get('images')} {_esc(h.get('source', ''))} "
            f"images{')' if not note else ''}: calibration error (ECE) {_num(h.get('ece_before'))} &rarr; "
            f"{_num(h.get('ece_after'))}, NLL {_num(h.get('nll_before'))} &rarr; "
            f"{_num(h.get('nll_after'))}.</p>")
    if h.get("ensemble_temperature_note"):
        parts.append(f'<p id="ensemble-temperature">For the ensemble: {_esc(h["ensemble_temperature_note"])}.'
                     "</p>")
    steps = result.postprocess or h.get("postprocess") or []
    if steps:
        items = "".join(f"<li>{_esc(_describe(s))}: +{_num(s.get('gain'))} held-out Dice</li>" for s in steps)
        parts.append(f"<p>Post-processing (nnU-Net's rule: kept only where the held-out Dice rose):</p>"
                     f'<ul id="postprocess">{items}</ul>')
    elif h.get("dice_before"):
        parts.append("<p>Post-processing: none of the candidates raised the held-out Dice.</p>")
    if h.get("dice_before"):
        parts.append(f"<p>Held-out mean foreground Dice {_num(_mean(h['dice_before']))} &rarr; "
                     f"{_num(_mean(h['dice_after']))}.</p>")
    return parts


def _describe(step: dict[str, Any]) -> str:
    from unetseg.config.schema import PostprocessStep
    from unetseg.postprocess.semantic import describe_step

    return describe_step(PostprocessStep(**{k: v for k, v in step.items() if k != "dice"}))


def _trust_sections(result: EvaluationResult) -> list[str]:
    """Calibration on these images, and the uncertainty: which images and pixels to check first."""
    parts = _chosen_section(result)
    c, u = result.calibration, result.uncertainty
    if c:
        rel = c.get("reliability") or {}
        points = [(conf, acc) for conf, acc, n in zip(rel.get("confidence", []), rel.get("accuracy", []),
                                                     rel.get("count", []), strict=False) if n]
        undone = (f" ({_num(c.get('ece_without_temperature'))} with the temperature undone)"
                  if "ece_without_temperature" in c else "")
        parts.append("<h2>Calibration on these images</h2><p>Expected calibration error (15 bins of the top "
                     f'probability, pixels): <b id="ece">{_num(c.get("ece"))}</b> at temperature '
                     f'{_num(c.get("temperature"), ".3g")}{undone}.</p>')
        if points:
            parts.append(_plot(points, "accuracy per confidence bin", "confidence"))
    if u:
        parts += _uncertainty_section(result, u)
    return parts


def _uncertainty_section(result: EvaluationResult, u: dict[str, Any]) -> list[str]:
    found = [_num(u.get("found_at", {}).get(k), ".0%") for k in ("0.05", "0.1", "0.2")]
    parts = [
        "<h2>Uncertainty: what to check first</h2>",
        "<p>Pixels checked from the most uncertain (entropy of the mean probability) down: the first 5% / "
        f"10% / 20% hold <b>{found[0]}</b> / <b>{found[1]}</b> / <b>{found[2]}</b> of the errors; area under "
        f'the curve <b id="uncertainty-auc">{_num(u.get("auc"), ".3f")}</b> (random order 0.5, perfect '
        f'{_num(u.get("auc_best"), ".3f")}); pixel-level correlation of uncertainty and error '
        f'{_num(u.get("pixel_correlation"), ".3f")}. Across images, Spearman\'s correlation of the mean '
        "uncertainty with the error (1 - mean foreground Dice): "
        f'<b id="image-correlation">{_num(result.image_correlation, ".3f")}</b>.</p>',
    ]
    curve = u.get("curve")
    if curve:
        parts.append(_plot(list(zip(curve["checked"], curve["found"], strict=True)), "errors found",
                           "pixels checked, most uncertain first"))
    rows = {r.case: r for r in result.per_image}
    body = []
    for name in result.least_sure():
        r = rows[name]
        unc = r.uncertainty or {}
        dice = _mean([r.metrics["dice"][c] for c in result.foreground])
        body.append(f"<tr><td>{_esc(name)}</td>{_cell(float(unc['entropy']))}"
                    f"{_cell(float(unc['mutual_information']))}{_cell(dice)}</tr>")
    parts.append('<p>Images from the least sure down (mutual information: the disagreement of the TTA flips; '
                 '0 without TTA):</p><table class="sortable" id="least-sure"><thead><tr><th>image</th>'
                 "<th>mean entropy</th><th>mean mutual information</th><th>mean foreground Dice</th></tr>"
                 f"</thead><tbody>{''.join(body)}</tbody></table>")
    return parts


def write_report(path: str | Path, result: EvaluationResult | dict[str, Any],
                 checkpoint: str | Path | None = None) -> Path:
    """Write the HTML page for an evaluation ``result`` (atomically); returns the path."""
    result = as_result(result)
    classes = result.foreground
    parts = [
        f"<h1>unetseg evaluation: {_esc(result.data)}</h1>",
        f"<p>checkpoint <code>{_esc(result.checkpoint)}</code>; {result.num_images} images; "
        f"mask values {_esc(result.class_values)}; mean foreground Dice "
        f"<b>{result.mean_foreground_dice:.4f}</b></p>",
        "<h2>Metrics per image and per class</h2><p>Click a column header to sort. "
        "hd95/msd are in physical units (spacing); inf marks a structure absent from one side.</p>",
        _table(result, classes),
        *_trust_sections(result),
        '<h2>Images</h2><p class="legend">image | truth | prediction | errors:'
        '<span style="background:#e33"></span>false positive'
        '<span style="background:#36f"></span>false negative</p>',
    ]
    for r in result.per_image:
        uri = _data_uri(r.overlay or "")
        if uri:
            score = " ".join(f"Dice c{c} {r.metrics['dice'][c]:.3f}" for c in classes)
            parts.append(f'<figure class="case"><img src="{uri}" alt="{_esc(r.case)}">'
                         f"<figcaption>{_esc(r.case)}: {score}</figcaption></figure>")
    parts += _run_sections(checkpoint)
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>unetseg report</title>'
        f"<style>{_STYLE}</style></head><body>{''.join(parts)}<script>{_SCRIPT}</script></body></html>"
    )
    return write_text(path, page)

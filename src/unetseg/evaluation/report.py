"""A self-contained HTML evaluation report: sortable metric table, overlays, curves and configuration.

Images are embedded as data URIs, so the one file can be mailed or archived on its own.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

from unetseg.checkpoint import CONFIG_FILE, FOLDS_FILE, find_checkpoint, is_fold_run
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
                        r.get("overlay"), r.get("objects")) for r in result["per_image"]]
    return EvaluationResult(result["checkpoint"], result["data"], result["class_values"], rows,
                            result.get("skipped", []))


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

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


def _table(result: dict[str, Any], classes: list[int]) -> str:
    metrics = [k for k in ("dice", "iou", "precision", "recall", "hd95", "msd") if k in result["mean"]]
    head = "".join(f"<th>{k} c{c}</th>" for c in classes for k in metrics)
    rows = []
    for r in result["per_image"]:
        cells = "".join(_cell(r[k][c]) for c in classes for k in metrics)
        rows.append(f"<tr><td>{html.escape(r['case'])}</td>{cells}</tr>")
    mean = "".join(_cell(result["mean"][k][c]) for c in classes for k in metrics)
    rows.append(f'<tr class="mean"><td>mean</td>{mean}</tr>')
    return (
        f'<table class="sortable" id="metrics"><thead><tr><th>image</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def write_report(path: str | Path, result: dict[str, Any], checkpoint: str | Path | None = None) -> Path:
    """Write the HTML page for an evaluation ``result`` (as returned by ``unetseg evaluate``)."""
    from unetseg.training.checkpoint import find_checkpoint

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    num_classes = len(result["mean"]["dice"]) if result["mean"] else 0
    classes = list(range(1, num_classes)) or [0]
    parts = [
        f"<h1>unetseg evaluation: {html.escape(str(result['data']))}</h1>",
        f"<p>checkpoint <code>{html.escape(str(result['checkpoint']))}</code>; "
        f"{result['num_images']} images; "
        f"mask values {result['class_values']}; mean foreground Dice "
        f"<b>{result['mean_foreground_dice']:.4f}</b></p>",
        "<h2>Metrics per image and per class</h2><p>Click a column header to sort. "
        "hd95/msd are in physical units (spacing); inf marks a structure absent from one side.</p>",
        _table(result, classes),
        '<h2>Images</h2><p class="legend">image | truth | prediction | errors:'
        '<span style="background:#e33"></span>false positive'
        '<span style="background:#36f"></span>false negative</p>',
    ]
    for r in result["per_image"]:
        uri = _data_uri(r.get("overlay", ""))
        if uri:
            score = " ".join(f"Dice c{c} {r['dice'][c]:.3f}" for c in classes)
            parts.append(
                f'<figure class="case"><img src="{uri}" alt="{html.escape(r["case"])}">'
                f"<figcaption>{html.escape(r['case'])}: {score}</figcaption></figure>"
            )
    run_config = None
    if checkpoint is not None:
        try:
            folder = find_checkpoint(checkpoint)
        except Exception:  # noqa: BLE001 - an ONNX file or a moved checkpoint: no curves, still a report
            folder = None
        if folder is not None:
            curves = _data_uri(folder.parent / "curves.png")
            if curves:
                parts.append(
                    f'<h2>Training curves</h2><img id="curves" src="{curves}" alt="training curves">'
                )
            run_config = json.loads((folder / "config.json").read_text())
    if run_config is not None:
        parts.append(f"<h2>Run configuration</h2><pre>{html.escape(json.dumps(run_config, indent=2))}</pre>")
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>unetseg report</title>'
        f"<style>{_STYLE}</style></head><body>{''.join(parts)}<script>{_SCRIPT}</script></body></html>"
    )
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path

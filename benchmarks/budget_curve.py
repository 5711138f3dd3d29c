"""Dice against the training budget for the planner, the MONAI reference and nnU-Net v2, as a picture.

For each dataset and each budget (default 2, 5, 10, 20 CPU minutes) it runs ``real_data.py``'s planner and
reference on the same split and scores the foreground class on the held-out images, then draws
``benchmarks/budget_curve.png`` (linked from BENCHMARKS.md) and keeps the numbers in
``benchmarks/budget_curve.json``. Runs already in the JSON are reused (``--redo`` to run them again).
Run it alone, under the venv that has MONAI::

    .venv-bench/bin/python benchmarks/budget_curve.py dsb2018 isbi2012 --minutes 2 5 10 20
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import real_data

from unetseg.fileio import write_text  # atomic: temp, fsync, replace

HERE = Path(__file__).resolve().parent
LABELS = {"planner": "unetseg planner (no recipe)", "reference": "MONAI BasicUNet + DiceCE",
          "nnunet": "nnU-Net v2 (its planner, clock-stopped)"}
MAIN = {
    "dsb2018": "dice/nucleus",
    "isbi2012": "dice/membrane",
    "drive": "dice/vessel",
    "brats3d": "whole_tumour_dice",
}


def one(name: str, tool: str, minutes: float, work: Path) -> float:
    cfg = real_data.load_recipe(name)
    data = (real_data.DATA_ROOT / real_data.DATASETS[name][0]).resolve()
    train, val, cases = real_data.write_split(data, cfg, work)
    values = real_data.ClassMap(cfg.data.class_values).values
    if tool == "planner":
        info = real_data.run_unetseg(name, train, val, work, minutes, [], planner=True)
    elif tool == "nnunet":
        info = run_nnunet(train, val, work, minutes, values)
    else:
        info = real_data.run_reference(train, val, work, minutes, values, [])
    scores = real_data.score(
        Path(info["pred"]), cases, values, name, data, original=info.get("pred_values") == "original",
        flat=info.get("flat_values"),
    )
    return scores[MAIN[name]]


def run_nnunet(train: Path, val: Path, work: Path, minutes: float, values: list) -> dict:
    """``benchmarks/reference_nnunet.py`` in its own venv (``.venv-nnunet``, made by ``make bench``):
    nnU-Net's planner and default trainer stopped by the clock; every mask value its own label, as for
    MONAI."""
    import shutil

    flat = sorted({float(x) for v in values for x in (v if isinstance(v, list) else [v])})
    pred = work / "nnunet" / "pred"
    shutil.rmtree(work / "nnunet", ignore_errors=True)
    python = real_data.REPO / ".venv-nnunet" / "bin" / "python"
    real_data.run([str(python), "benchmarks/reference_nnunet.py", "--train", str(train), "--predict",
                   str(val / "images"), "--out", str(pred), "--minutes", f"{minutes:g}", "--class-values",
                   *[f"{v:g}" for v in flat], "--work", str(work / "nnunet" / "work")], work / "nnunet.log")
    shutil.rmtree(work / "nnunet" / "work", ignore_errors=True)
    return {"pred": str(pred), "flat_values": flat}


def draw(results: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = sorted(results)
    fig = Figure(figsize=(5 * len(names), 4))
    FigureCanvasAgg(fig)
    for ax, name in zip(fig.subplots(1, len(names), squeeze=False)[0], names, strict=True):
        for tool, style in (("planner", "o-"), ("reference", "s--"), ("nnunet", "^-.")):
            pts = sorted((float(m), d) for m, d in results[name].get(tool, {}).items())
            if pts:
                ax.plot(
                    [m for m, _ in pts],
                    [d for _, d in pts],
                    style,
                    label=LABELS[tool],
                )
        ax.set(
            title=f"{real_data.DATASETS[name][0]}: {MAIN[name]}",
            xlabel="training minutes (2 CPU cores)",
            ylabel="held-out Dice",
            xscale="log",
        )
        ax.set_xticks([2, 5, 10, 20], labels=["2", "5", "10", "20"])
        ax.minorticks_off()  # a log axis would label 3x10^0, 4x10^0...
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="+", choices=sorted(MAIN))
    ap.add_argument("--minutes", type=float, nargs="+", default=[2, 5, 10, 20])
    ap.add_argument("--tools", nargs="+", default=["planner", "reference"], choices=sorted(LABELS))
    ap.add_argument("--redo", action="store_true")
    args = ap.parse_args()
    store = HERE / "budget_curve.json"
    results = json.loads(store.read_text()) if store.is_file() else {}
    for name in args.names:
        for minutes in args.minutes:
            for tool in args.tools:
                have = results.setdefault(name, {}).setdefault(tool, {})
                if f"{minutes:g}" in have and not args.redo:
                    continue
                work = Path(tempfile.gettempdir()) / "unetseg_budget" / name / f"{minutes:g}"
                have[f"{minutes:g}"] = one(name, tool, minutes, work)
                write_text(store, json.dumps(results, indent=1))
                print(f"{name} {tool} {minutes:g} min: {have[f'{minutes:g}']:.4f}", flush=True)
    draw(results, HERE / "budget_curve.png")
    print(f"wrote {HERE / 'budget_curve.png'}")


if __name__ == "__main__":
    main()

"""``unetseg calibrate`` on real data: does a K-fold ensemble's temperature, fitted on labelled images no
fold saw, make its probabilities more trustworthy on other unseen images?

It reuses what ``benchmarks/cross_validation.py`` left in its WORK folder (``WORK/<dataset>/<M>min/cv``: a
K-fold run; ``WORK/<dataset>/split/test``: the held-out test set, whole groups). The test set is split in
two halves of whole groups (CVC-ClinicDB: video sequences), balanced by image count. For each direction
(calibrate on one half, measure on the other):

1. ``evaluate`` the ensemble on the measured half as the run predicts today (members at temperature 1,
   the post-processing chosen on the pooled out-of-fold predictions);
2. ``calibrate`` it on the other half (``RUN/calibration.json``);
3. ``evaluate`` again on the measured half: expected calibration error (15 bins of the top probability, on
   every pixel) and Dice, before and after. A temperature does not move the argmax, so Dice must not change.

Each run is a copy of ``cv`` as the current code writes it (``folds.json`` with the pooled temperature 1;
the folds are links), so the benchmark's own runs stay as they were. Results go to
``WORK/ensemble_calibration.json`` and a section of BENCHMARKS.md. Run it alone::

    python benchmarks/ensemble_calibration.py cvc --minutes 10 20 --work /tmp/cvbench
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from unetseg.fileio import write_text  # atomic: temp, fsync, replace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import replace_section  # noqa: E402
from cross_validation import DATA_ROOT, DATASETS  # noqa: E402
from real_data import machine  # noqa: E402

PY = [sys.executable, "-m", "unetseg"]


def halves(test: Path, groups: Path | None, work: Path) -> tuple[Path, Path]:
    """``work/A`` and ``work/B``: symlink folders of whole groups of ``test``, balanced by image count."""
    from unetseg.config import DataConfig
    from unetseg.data import find_cases
    from unetseg.data.splits import case_groups

    cases = find_cases(test)
    of = case_groups(cases, DataConfig(groups=str(groups) if groups else None)) or {}
    by_group: dict[str, list[Any]] = {}
    for case in cases:
        by_group.setdefault(of.get(case.name, case.name), []).append(case)
    sides: dict[str, list[Any]] = {"A": [], "B": []}
    for _, members in sorted(by_group.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        smaller = min(sides, key=lambda s: len(sides[s]))
        sides[smaller].extend(members)
    out = []
    for side, members in sides.items():
        folder = work / side
        shutil.rmtree(folder, ignore_errors=True)
        for case in members:
            for sub, path in (("images", case.image_paths[0]), ("masks", case.mask_path)):
                (folder / sub).mkdir(parents=True, exist_ok=True)
                (folder / sub / path.name).symlink_to(path.resolve())
        out.append(folder)
    return out[0], out[1]


def current_run(cv: Path, folder: Path) -> Path:
    """A copy of the K-fold run ``cv`` as the current code writes it: members at temperature 1."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    record = json.loads((cv / "folds.json").read_text())
    if record.get("pooled") and record["pooled"].get("temperature") is not None:
        record["pooled"]["temperature"] = 1.0
    write_text(folder / "folds.json", json.dumps(record))
    for fold in sorted(cv.glob("fold_*")):
        (folder / fold.name).symlink_to(fold.resolve())
    return folder


def run(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - t0


def scores(path: Path) -> dict[str, float]:
    r = json.loads(path.read_text())
    return {"ece": r["calibration"]["ece"], "dice": r["mean_foreground_dice"]}


def measure(name: str, minutes: float, work: Path) -> list[dict[str, Any]]:
    folder, groups_rel = DATASETS[name]
    groups = DATA_ROOT / folder / groups_rel if groups_rel else None
    base = work / name
    a, b = halves(base / "split" / "test", groups, base / "calibration_halves")
    rows = []
    for cal, test in ((a, b), (b, a)):
        tag = f"{minutes:g}min"
        here = base / f"{tag}_calibrate_{cal.name}"
        here.mkdir(parents=True, exist_ok=True)
        ens = current_run(base / tag / "cv", here / "run")
        evaluate = [*PY, "evaluate", "--checkpoint", str(ens), "--data", str(test), "--out"]
        run([*evaluate, str(here / "before.json")], here / "before.log")
        seconds = run([*PY, "calibrate", "--checkpoint", str(ens), "--data", str(cal)],
                      here / "calibrate.log")
        run([*evaluate, str(here / "after.json")], here / "after.log")
        fitted = json.loads((ens / "calibration.json").read_text())
        fit = fitted["fit"]
        before, after = scores(here / "before.json"), scores(here / "after.json")
        rows.append({"dataset": name, "minutes": minutes, "calibrated_on": cal.name, "measured_on": test.name,
                     "cal_images": fit["images"], "test_images": len(list((test / "images").iterdir())),
                     "temperature_fitted": fit["temperature_fitted"],
                     "temperature": fitted["temperature"], "note": fit["temperature_note"],
                     "cal_ece_before": fit["ece_before"], "cal_ece_after": fit["ece_after"],
                     "test_ece_before": before["ece"], "test_ece_after": after["ece"],
                     "dice_before": before["dice"], "dice_after": after["dice"],
                     "calibrate_seconds": round(seconds, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| dataset | minutes | calibrated on -> measured on | T fitted (kept) | ECE on the calibration "
             "half | ECE on the measured half | Dice (measured half) | calibrate s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        kept = f"{r['temperature_fitted']:.3g} ({'yes' if not r['note'] else 'no'})"
        lines.append(
            f"| {r['dataset']} | {r['minutes']:g} | {r['calibrated_on']} ({r['cal_images']}) -> "
            f"{r['measured_on']} ({r['test_images']}) | {kept} | {r['cal_ece_before']:.4f} -> "
            f"{r['cal_ece_after']:.4f} | {r['test_ece_before']:.4f} -> {r['test_ece_after']:.4f} | "
            f"{r['dice_before']:.4f} -> {r['dice_after']:.4f} | {r['calibrate_seconds']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("datasets", nargs="+", choices=sorted(DATASETS))
    parser.add_argument("--minutes", type=float, nargs="+", default=[10.0, 20.0])
    parser.add_argument("--work", type=Path, required=True, help="cross_validation.py's WORK folder")
    parser.add_argument("--no-markdown", action="store_true", help="leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    rows = [r for name in args.datasets for m in args.minutes for r in measure(name, m, args.work)]
    write_text(args.work / "ensemble_calibration.json", json.dumps(rows, indent=2) + "\n")
    text = table(rows)
    print(text)
    if not args.no_markdown:
        names = "-".join(args.datasets)
        replace_section(REPO / "BENCHMARKS.md", f"ensemble-calibration-{names}",
                        f"### Calibrating a K-fold ensemble on unseen images: {names}\n\n"
                        f"{time.strftime('%Y-%m-%d')}; {machine()}. "
                        "`benchmarks/ensemble_calibration.py`: the test set of `cross_validation.py` split "
                        "in two halves of whole groups (video sequences where the dataset has them); the "
                        "5-fold ensemble (members at temperature 1) is calibrated on one half and measured "
                        "on the other, and the other way round. ECE: 15 bins of the top probability, every "
                        "pixel.\n\n" + text)
    return rows


if __name__ == "__main__":
    main()

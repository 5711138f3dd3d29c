"""Cross-validation and ensembles at a fixed budget (issue 24): is the ensemble of K folds worth its minutes?

For each dataset and budget M:

1. a test set is held out of the dataset (whole groups where the dataset has them: CVC-ClinicDB's video
   sequences, ``extra/sequences.csv``; a fifth of the images, ``split_cases`` seed 0) and never trained on;
2. ``cv``: ``unetseg train --data POOL --out CV --folds K --max-minutes M`` (planned; the K folds share the
   M minutes) gives the cross-validated Dice with its spread across folds (``CV/cv.json``);
3. ``single``: ``unetseg train --data POOL --out SINGLE --max-minutes M``: one model of the same total
   minutes (its own validation split out of POOL);
4. both are evaluated on the test set (``unetseg evaluate``): the ensemble of the folds (``--checkpoint CV``),
   each fold alone (``--folds k``) and the single model. At small budgets each fold gets M/K minutes, so
   the single model may well win: the table says which did.

Results go to ``WORK/cross_validation.json`` and a Markdown table on stdout (for BENCHMARKS.md). Run it
alone on a quiet machine::

    python benchmarks/cross_validation.py cvc drive --minutes 10 20 --folds 5
    python benchmarks/cross_validation.py --smoke     # tiny synthetic data, seconds: checks the plumbing
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = REPO / ".." / "shared" / "datasets"
DATASETS = {  # name -> (folder under ../shared/datasets, groups CSV inside it or None)
    "cvc": ("cvc_clinicdb_polyp", "extra/sequences.csv"),
    "isbi2012": ("isbi2012_em", None),
    "dsb2018": ("dsb2018_stage1_test", None),
    "drive": ("drive_retina", None),
    "brats3d": ("brats2013_deepmedic_3d", None),
}
SMOKE = ["--no-plan", "--epochs", "1", "--iters-per-epoch", "2", "--base-channels", "4", "--depth", "2",
         "--patch-size", "32", "32", "--workers", "0", "--precision", "fp32"]


def split(data: Path, groups: Path | None, work: Path) -> tuple[Path, Path]:
    """``work/pool`` and ``work/test``: symlink folders of a grouped 80/20 split of ``data``."""
    from unetseg.config import DataConfig
    from unetseg.data import find_cases, split_cases
    from unetseg.data.splits import case_groups

    cases = find_cases(data)
    grouping = DataConfig(groups=str(groups) if groups else None)
    pool, test = split_cases(cases, 0.2, 0, case_groups(cases, grouping))
    for name, part in (("pool", pool), ("test", test)):
        for case in part:
            for sub, paths in (("images", case.image_paths), ("masks", [case.mask_path])):
                (work / name / sub).mkdir(parents=True, exist_ok=True)
                for p in paths:
                    link = work / name / sub / p.name
                    if not link.is_symlink():
                        link.symlink_to(p.resolve())
    return work / "pool", work / "test"


def unetseg(args: list[str], log: Path, inprocess: bool) -> float:
    """One ``unetseg`` command (a child process, or this one for the smoke test); its wall minutes."""
    print("$ unetseg " + shlex.join(args), flush=True)
    t0 = time.monotonic()
    if inprocess:
        from unetseg.cli.commands import run

        code = run(args)
    else:
        with open(log, "w") as f:
            code = subprocess.run([sys.executable, "-m", "unetseg", *args], cwd=REPO, stdout=f,
                                  stderr=subprocess.STDOUT, check=False).returncode
    if code != 0:
        raise SystemExit(f"unetseg {args[0]} failed ({code}); see {log}")
    return (time.monotonic() - t0) / 60


def test_dice(checkpoint: Path, test: Path, out: Path, inprocess: bool, folds: str | None = None) -> float:
    extra = ["--folds", folds] if folds is not None else []
    unetseg(["evaluate", "--checkpoint", str(checkpoint), "--data", str(test), "--out", str(out), *extra],
            out.with_suffix(".log"), inprocess)
    return float(json.loads(out.read_text())["mean_foreground_dice"])


def measure(name: str, data: Path, groups: Path | None, minutes: float, folds: int, work: Path,
            extra: list[str], inprocess: bool) -> dict[str, Any]:
    """Train and score the folds and the single model of ``minutes`` on one dataset."""
    pool, test = split(data, groups, work / "split")
    run = work / f"{minutes:g}min"
    grouped = ["--groups", str(groups)] if groups else []
    budget = ["--max-minutes", f"{minutes:g}"] if minutes else []  # the smoke test: the epochs
    base = ["train", "--data", str(pool), *budget, "--overwrite", *grouped, *extra]
    run.mkdir(parents=True, exist_ok=True)
    took_cv = unetseg([*base, "--out", str(run / "cv"), "--folds", str(folds)], run / "cv_train.log",
                      inprocess)
    took_one = unetseg([*base, "--out", str(run / "single")], run / "single_train.log", inprocess)
    cv = json.loads((run / "cv" / "cv.json").read_text())
    each = [test_dice(run / "cv", test, run / f"fold_{k}_test.json", inprocess, str(k)) for k in range(folds)]
    return {
        "dataset": name, "minutes": minutes, "folds": folds, "grouping": cv["grouping"],
        "pool": len(list((pool / "images").iterdir())), "test": len(list((test / "images").iterdir())),
        "cv_dice": cv["mean_foreground_dice"],
        "cv_per_fold": [f["mean_foreground_dice"] for f in cv["per_fold"]],
        "test_ensemble": test_dice(run / "cv", test, run / "ensemble_test.json", inprocess),
        "test_single": test_dice(run / "single", test, run / "single_test.json", inprocess),
        "test_each_fold": each,
        "wall_minutes": {"cv": round(took_cv, 2), "single": round(took_one, 2)},
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| dataset | minutes | cross-validated Dice (mean ± sd over K folds) | test: ensemble of the "
            "folds | test: one fold alone (mean) | test: one model, same minutes | better on test |\n"
            "|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        cv, each = r["cv_dice"], r["test_each_fold"]
        better = "ensemble" if r["test_ensemble"] > r["test_single"] else "single model"
        lines.append(f"| {r['dataset']} | {r['minutes']:g} | {cv['mean']:.4f} ± {cv['sd'] or 0:.4f} "
                     f"(K={r['folds']}) | {r['test_ensemble']:.4f} | {sum(each) / len(each):.4f} | "
                     f"{r['test_single']:.4f} | {better} |")
    return head + "\n".join(lines)


def smoke(work: Path) -> list[dict[str, Any]]:
    """The whole pipeline on 12 tiny synthetic images in pairs (groups), in seconds."""
    from unetseg.data.synthetic import make_dataset

    data = make_dataset(work / "cells", n=12, size=(48, 48), kind="cells", seed=0)
    groups = work / "groups.csv"
    groups.write_text("".join(f"case_{i:03d},g{i // 2}\n" for i in range(12)))
    return [measure("smoke", data, groups, 0, 2, work / "smoke", SMOKE, inprocess=True)]


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("datasets", nargs="*", help=f"of {', '.join(DATASETS)}")
    ap.add_argument("--minutes", type=float, nargs="+", default=[10.0, 20.0])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "unetseg-cross-validation")
    ap.add_argument("--smoke", action="store_true", help="tiny synthetic data, unplanned: the plumbing")
    args = ap.parse_args(argv)
    unknown = [d for d in args.datasets if d not in DATASETS]
    if unknown or not (args.datasets or args.smoke):
        ap.error(f"give datasets among {', '.join(DATASETS)} (or --smoke)")
    if args.smoke:
        rows = smoke(args.work)
    else:
        rows = []
        for name in args.datasets:
            folder, groups = DATASETS[name]
            data = DATA_ROOT / folder
            for minutes in args.minutes:
                rows.append(measure(name, data, data / groups if groups else None, minutes, args.folds,
                                    args.work / name, [], inprocess=False))
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "cross_validation.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()

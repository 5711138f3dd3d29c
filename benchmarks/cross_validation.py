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
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from unetseg.fileio import write_text  # atomic: temp, fsync, replace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import raw_checkpoint, replace_section  # noqa: E402
from real_data import machine  # noqa: E402

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


def evaluate(checkpoint: Path, test: Path, out: Path, inprocess: bool, folds: str | None = None,
             extra: list[str] | None = None) -> dict[str, Any]:
    """``unetseg evaluate`` on the test images: its JSON (Dice, calibration, uncertainty)."""
    picks = ["--folds", folds] if folds is not None else []
    unetseg(["evaluate", "--checkpoint", str(checkpoint), "--data", str(test), "--out", str(out), *picks,
             *(extra or [])], out.with_suffix(".log"), inprocess)
    return json.loads(out.read_text())


def raw_twin(run: Path, folder: Path) -> Path:
    """``run`` at temperature 1 and without post-processing (the same weights): a single model's best
    checkpoint rewritten, or a K-fold run's folds (symlinked) with ``pooled`` set to nothing chosen."""
    from unetseg.checkpoint import FOLDS_FILE

    shutil.rmtree(folder, ignore_errors=True)
    if (run / FOLDS_FILE).is_file():
        folder.mkdir(parents=True)
        record = json.loads((run / FOLDS_FILE).read_text())
        record["pooled"] = {"temperature": 1.0, "postprocess": [], "fit": {}}
        write_text(folder / FOLDS_FILE, json.dumps(record))
        for k in range(len(record["folds"])):
            (folder / f"fold_{k}").symlink_to((run / f"fold_{k}").resolve())
        return folder
    return raw_checkpoint(run / "best", folder)


def trust(done: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    """What the held-out choices did on the test images: Dice and ECE without and with them, and how well
    the uncertainty finds the errors."""
    u = done.get("uncertainty") or {}
    return {"dice_raw": raw["mean_foreground_dice"], "dice": done["mean_foreground_dice"],
            "ece_raw": (raw.get("calibration") or {}).get("ece"),
            "ece": (done.get("calibration") or {}).get("ece"),
            "errors_found_auc": u.get("auc"), "errors_found_auc_best": u.get("auc_best"),
            "errors_found_at_10pct": (u.get("found_at") or {}).get("0.1"),
            "image_correlation": u.get("image_correlation")}


def measure(name: str, data: Path, groups: Path | None, minutes: float, folds: int, work: Path,
            extra: list[str], inprocess: bool, evaluate_extra: list[str] | None = None) -> dict[str, Any]:
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
    ev = evaluate_extra or []
    each = [evaluate(run / "cv", test, run / f"fold_{k}_test.json", inprocess, str(k), ev)
            ["mean_foreground_dice"] for k in range(folds)]
    ensemble = evaluate(run / "cv", test, run / "ensemble_test.json", inprocess, extra=ev)
    ensemble_raw = evaluate(raw_twin(run / "cv", run / "cv_raw"), test, run / "ensemble_raw_test.json",
                            inprocess, extra=ev)
    single = evaluate(run / "single", test, run / "single_test.json", inprocess, extra=ev)
    single_raw = evaluate(raw_twin(run / "single", run / "single_raw"), test, run / "single_raw_test.json",
                          inprocess, extra=ev)
    held = json.loads((run / "single" / "best" / "config.json").read_text())["metrics"].get("heldout") or {}
    pooled = cv.get("pooled_fit") or {}
    keys = ("images", "temperature", "temperature_fitted", "temperature_note", "ece_before", "ece_after",
            "postprocess", "dice_gain", "ensemble_temperature")
    return {
        "dataset": name, "minutes": minutes, "folds": folds, "grouping": cv["grouping"],
        "pool": len(list((pool / "images").iterdir())), "test": len(list((test / "images").iterdir())),
        "cv_dice": cv["mean_foreground_dice"],
        "cv_per_fold": [f["mean_foreground_dice"] for f in cv["per_fold"]],
        "test_ensemble": ensemble["mean_foreground_dice"], "test_single": single["mean_foreground_dice"],
        "test_each_fold": each,
        "pooled_oof_fit": {k: pooled.get(k) for k in keys},
        "single_validation_fit": {k: held.get(k) for k in keys},
        "ensemble_trust": trust(ensemble, ensemble_raw), "single_trust": trust(single, single_raw),
        "wall_minutes": {"cv": round(took_cv, 2), "single": round(took_one, 2)},
        "machine": machine(),
    }


def _f(v: Any, fmt: str = ".4f") -> str:
    return "-" if v is None else format(v, fmt)


def _steps(fit: dict[str, Any]) -> str:
    steps = fit.get("postprocess") or []
    return "; ".join(f"{s['op']}{' ' + str(s['size']) if s.get('size') else ''} class "
                     f"{'+'.join(map(str, s['classes']))}" for s in steps) or "none"


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
    trust_head = ("\n\n| dataset | minutes | model | chosen on | temperature | post-processing (held-out "
                  "Dice gain) | test Dice: raw -> post-processed | test ECE: T = 1 -> fitted T | errors "
                  "found vs pixels checked: area (best) | errors in the 10% most uncertain pixels |\n"
                  "|---|---|---|---|---|---|---|---|---|---|\n")
    trust_lines = []
    for r in rows:
        for model, fit, t, where in (("ensemble", r["pooled_oof_fit"], r["ensemble_trust"], "pooled OOF"),
                                     ("single", r["single_validation_fit"], r["single_trust"], "validation")):
            temp = _f(fit.get("temperature"), ".3g")
            if fit.get("ensemble_temperature") is not None:  # the members' in the ensemble; fit: one fold
                temp = f"{fit['ensemble_temperature']:g} (one fold: {temp})"
            elif fit.get("temperature_note"):
                temp += f" (fit {_f(fit.get('temperature_fitted'), '.3g')} not kept)"
            trust_lines.append(
                f"| {r['dataset']} | {r['minutes']:g} | {model} | {where} ({fit.get('images')} images) | "
                f"{temp} | {_steps(fit)} ({_f(fit.get('dice_gain'), '+.4f')}) | {_f(t['dice_raw'])} -> "
                f"{_f(t['dice'])} | {_f(t['ece_raw'])} -> {_f(t['ece'])} | "
                f"{_f(t['errors_found_auc'], '.3f')} ({_f(t['errors_found_auc_best'], '.3f')}) | "
                f"{_f(t['errors_found_at_10pct'], '.1%')} |")
    return head + "\n".join(lines) + trust_head + "\n".join(trust_lines)


def smoke(work: Path) -> list[dict[str, Any]]:
    """The whole pipeline on 12 tiny synthetic images in pairs (groups), in seconds."""
    from unetseg.data.synthetic import make_dataset

    data = make_dataset(work / "cells", n=12, size=(48, 48), kind="cells", seed=0)
    groups = work / "groups.csv"
    write_text(groups, "".join(f"case_{i:03d},g{i // 2}\n" for i in range(12)))
    return [measure("smoke", data, groups, 0, 2, work / "smoke", SMOKE, inprocess=True,
                    evaluate_extra=["--device", "cpu", "--precision", "fp32"])]


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("datasets", nargs="*", help=f"of {', '.join(DATASETS)}")
    ap.add_argument("--minutes", type=float, nargs="+", default=[10.0, 20.0])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "unetseg-cross-validation")
    ap.add_argument("--smoke", action="store_true", help="tiny synthetic data, unplanned: the plumbing")
    ap.add_argument("--markdown", type=Path, default=None,
                    help="also write the tables between <!-- cross-validation:start/end --> in this file")
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
    write_text(args.work / "cross_validation.json", json.dumps(rows, indent=2) + "\n")
    text = f"{table(rows)}\n\n{rows[0]['machine'] if rows else ''}\n"
    print(text)
    if args.markdown is not None:
        replace_section(args.markdown, "cross-validation", text)
    return rows


if __name__ == "__main__":
    main()

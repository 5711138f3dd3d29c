"""What the held-out choices of issue 24 are worth on images nobody chose them on: the temperature's effect on
the calibration error, the post-processing's Dice gain, and how well the uncertainty finds the errors.

For ``NAME`` in isbi2012, dsb2018, drive, brats3d (dataset folders under ``../shared/datasets``):

1. splits off a *test* set (``--test-fraction``, unetseg's ``split_cases`` with seed 1) into
   ``WORK/split/{trainval,test}`` folders of symlinks;
2. trains unetseg with the planner on ``trainval`` (``unetseg train --max-minutes M``): the run keeps its own
   validation images, on which the end of training fits the temperature and chooses the post-processing
   (``RUN/best``: ``infer.temperature``, ``infer.postprocess``, metrics ``heldout``);
3. makes an uncalibrated twin of ``RUN/best`` (temperature 1, no post-processing) and evaluates both on the
   test images (``unetseg evaluate``, the checkpoint's TTA setting): mean foreground Dice with and without the
   post-processing, the ECE with and without the temperature, and the uncertainty measures (area under
   "errors found against pixels checked in order of uncertainty", the share found in the first 10%, the
   image-level rank correlation);
4. prints a Markdown section and writes ``WORK/calibration_NAME.json``; ``--markdown FILE`` also writes the
   section between ``<!-- calibration:NAME:start/end -->`` markers in FILE (e.g. BENCHMARKS.md).

One run per dataset on a quiet machine::

    .venv/bin/python benchmarks/calibration.py drive --minutes 10
    .venv/bin/python benchmarks/calibration.py --smoke   # synthetic cells, seconds: checks the plumbing

``--smoke`` trains a tiny model on unetseg's synthetic cells for a few steps; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import raw_checkpoint, replace_section

from unetseg.fileio import write_text  # atomic: temp, fsync, replace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from real_data import DATA_ROOT, DATASETS, machine  # noqa: E402

SMOKE_TRAIN = ["--no-plan", "--patch-size", "32", "32", "--epochs", "2", "--iters-per-epoch", "3",
               "--batch-size", "2", "--base-channels", "4", "--depth", "2", "--precision", "fp32",
               "--workers", "0", "--val-fraction", "0.34"]


def run(cmd: list[str], log: Path) -> None:
    """Run ``cmd`` in the repo root with its output in ``log``; stop with the log's tail on failure."""
    print("$ " + shlex.join(cmd), flush=True)
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise SystemExit(f"command failed ({proc.returncode}), see {log}:\n{tail}")


def split(data: Path, work: Path, fraction: float) -> tuple[Path, Path]:
    """Symlink folders ``work/split/trainval`` and ``work/split/test``."""
    from unetseg.data import find_cases, split_cases

    trainval, test = split_cases(find_cases(data), fraction, 1)
    root = work / "split"
    shutil.rmtree(root, ignore_errors=True)
    for folder, cases in (("trainval", trainval), ("test", test)):
        for case in cases:
            for sub, paths in (("images", case.image_paths), ("masks", [case.mask_path])):
                (root / folder / sub).mkdir(parents=True, exist_ok=True)
                for p in paths:
                    (root / folder / sub / p.name).symlink_to(p.resolve())
    return root / "trainval", root / "test"


def evaluate(checkpoint: Path, test: Path, out: Path, extra: list[str]) -> dict[str, Any]:
    py = [sys.executable, "-m", "unetseg"]
    run([*py, "evaluate", "--checkpoint", str(checkpoint), "--data", str(test), "--out", str(out),
         "--report", str(out.with_suffix(".html")), *extra], out.with_suffix(".log"))
    return json.loads(out.read_text())


def measure(name: str, data: Path, work: Path, minutes: float, smoke: bool,
            fraction: float) -> dict[str, Any]:
    trainval, test = split(data, work, fraction)
    run_dir = work / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    train = SMOKE_TRAIN if smoke else ["--max-minutes", str(minutes)]
    run([sys.executable, "-m", "unetseg", "train", "--data", str(trainval), "--out", str(run_dir), *train],
        work / "train.log")
    best = run_dir / "best"
    extra = ["--device", "cpu", "--precision", "fp32"] if smoke else []
    calibrated = evaluate(best, test, work / "calibrated.json", extra)
    raw = evaluate(raw_checkpoint(best, work / "uncalibrated"), test, work / "uncalibrated.json", extra)
    held = json.loads((best / "config.json").read_text())["metrics"].get("heldout", {})
    u = calibrated.get("uncertainty", {})
    return {
        "dataset": name, "minutes": None if smoke else minutes, "test_images": calibrated["num_images"],
        "validation": {k: held.get(k) for k in ("images", "temperature", "ece_before", "ece_after",
                                                 "postprocess", "dice_before", "dice_after", "dice_gain")},
        "test": {
            "dice_raw": raw["mean_foreground_dice"], "dice_postprocessed": calibrated["mean_foreground_dice"],
            "ece_raw": raw.get("calibration", {}).get("ece"),
            "ece_calibrated": calibrated.get("calibration", {}).get("ece"),
            "uncertainty_auc": u.get("auc"), "auc_best": u.get("auc_best"),
            "errors_found_at_10pct": (u.get("found_at") or {}).get("0.1"),
            "image_correlation": u.get("image_correlation"),
        },
        "machine": machine(),
    }


def _f(v: Any, fmt: str = ".4f") -> str:
    return "-" if v is None else format(v, fmt)


def markdown(r: dict[str, Any]) -> str:
    v, t = r["validation"], r["test"]
    steps = "; ".join(f"{s['op']} {s.get('size') or ''} class {'+'.join(map(str, s['classes']))} "
                      f"(+{s['gain']:.4f})".replace("  ", " ") for s in v.get("postprocess") or []) or "none"
    rows = [
        ("temperature (fitted on the validation images)", _f(v.get("temperature"), ".3g")),
        ("ECE, validation: before -> after", f"{_f(v.get('ece_before'))} -> {_f(v.get('ece_after'))}"),
        ("ECE, test: T = 1 -> fitted T", f"{_f(t['ece_raw'])} -> {_f(t['ece_calibrated'])}"),
        ("post-processing chosen (validation gain)", steps),
        ("mean foreground Dice, test: raw -> post-processed",
         f"{_f(t['dice_raw'])} -> {_f(t['dice_postprocessed'])}"),
        ("errors found vs pixels checked, test: area (random 0.5, best)",
         f"{_f(t['uncertainty_auc'], '.3f')} ({_f(t['auc_best'], '.3f')})"),
        ("errors in the 10% most uncertain pixels, test", _f(t["errors_found_at_10pct"], ".1%")),
        ("rank correlation of image uncertainty and error, test", _f(t["image_correlation"], ".3f")),
    ]
    table = "\n".join(f"| {a} | {b} |" for a, b in rows)
    budget = "a few steps" if r["minutes"] is None else f"{r['minutes']:g} minutes"
    return (f"**{r['dataset']}**, {budget}, {r['test_images']} test images "
            f"({r['machine']})\n\n| measure | value |\n| --- | --- |\n{table}\n")


def write_section(md: Path, name: str, text: str) -> None:
    """Replace (or append) the block between this dataset's markers, leaving the rest of the file alone."""
    replace_section(md, f"calibration:{name}", text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", nargs="?", choices=sorted(DATASETS), help="a shared dataset")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a temp folder)")
    ap.add_argument("--markdown", type=Path, default=None, help="also write the section into this file")
    ap.add_argument("--smoke", action="store_true", help="synthetic cells, a few steps: checks the plumbing")
    args = ap.parse_args()
    if not args.smoke and args.name is None:
        ap.error("name a dataset, or --smoke")
    name = "smoke" if args.smoke else args.name
    work = args.work or Path(tempfile.gettempdir()) / f"unetseg-calibration-{name}"
    work.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        from unetseg.data.synthetic import make_dataset

        data = make_dataset(work / "data", n=8, size=(64, 64), kind="cells", seed=3)
    else:
        data = DATA_ROOT / DATASETS[args.name][0]
    result = measure(name, data, work, args.minutes, args.smoke, args.test_fraction)
    write_text(work / f"calibration_{name}.json", json.dumps(result, indent=2))
    text = markdown(result)
    print(text)
    if args.markdown is not None:
        write_section(args.markdown, name, text)


if __name__ == "__main__":
    main()

"""The cascade on a real 3D set: the planner's run with ``--cascade off`` against its default (``auto``: a
full-resolution second stage after the coarse first when the probe leaves 20 minutes), same split, same
minutes, one run each, scored on the held-out volumes: both stages of the cascade run separately, and what
each run keeps.

    .venv/bin/python benchmarks/cascade_3d.py --minutes 30 --work /tmp/rd/cascade

BraTS 2013 as one whole-tumour class (``--classes 0,1+2+3+4``), the split of ``real_data.py brats3d``.
Scores come from each model's last checkpoint (``RUN/last``; the second stage's ``RUN/cascade/last``), as
in ``real_data.py``; the choice between the stages is made on the validation volume the scores are
measured on (the probe's choice too): with five volumes there is no third split, so say so.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from _common import replace_section
from real_data import DATA_ROOT, DATASETS, load_recipe, machine, run, score, write_split

from unetseg.fileio import write_text  # atomic: temp, fsync, replace

MODES = ("off", "auto", "on")
CLASSES = "0,1+2+3+4"
VALUES = [0.0, [1.0, 2.0, 3.0, 4.0]]


def predict(checkpoint: Path, val: Path, out: Path, log: Path) -> Path:
    run([sys.executable, "-m", "unetseg", "predict", "--checkpoint", str(checkpoint), "--input",
         str(val / "images"), "--output", str(out), "--mask-values", "original"], log)
    return out


def one(mode: str, train: Path, val: Path, cases: list, work: Path, minutes: float, data: Path) -> dict:
    out = work / mode
    t0 = time.monotonic()
    run([sys.executable, "-m", "unetseg", "train", "--data", str(train), "--val-data", str(val), "--out",
         str(out / "run"), "--max-minutes", str(minutes), "--classes", CLASSES, "--cascade", mode,
         "--overwrite"], work / f"{mode}_train.log")
    result: dict = {"wall_train_s": round(time.monotonic() - t0, 1)}
    models = {"last": out / "run" / "last"}
    state_file = out / "run" / "cascade.json"
    if state_file.is_file():
        state = json.loads(state_file.read_text())
        result["cascade"] = {k: state[k] for k in ("stage1_until", "stage1_minutes", "stage1_score",
                                                   "stage2_score", "kept")}
        models["stage2"] = out / "run" / "cascade" / "last"
    for name, ckpt in models.items():
        pred = predict(ckpt, val, out / f"pred_{name}", work / f"{mode}_{name}_predict.log")
        result[name] = score(pred, cases, VALUES, "brats3d", data, original=True)["whole_tumour_dice"]
    kept = result.get("cascade", {}).get("kept")
    result["final"] = result["stage2"] if kept == "cascade" else result["last"]
    log = (out / "run" / "log.txt").read_text()
    result["probe"] = [line.split(" ", 2)[2] for line in log.splitlines() if " probe " in line]
    return result


def section(results: dict, minutes: float, n_train: int, val: list, args: argparse.Namespace) -> str:
    cmd = "python benchmarks/cascade_3d.py " + shlex.join(sys.argv[1:])
    rows = ["| run | first stage (`RUN/last`) | second stage (`RUN/cascade/last`) | kept | whole-tumour "
            "Dice of what the run keeps |", "| --- | ---: | ---: | --- | ---: |"]
    for mode, r in results.items():
        c = r.get("cascade")
        rows.append(f"| `--cascade {mode}` | {r['last']:.4f} | "
                    + (f"{r['stage2']:.4f} | {c['kept']} (validation {c['stage2_score']:.4f} vs "
                       f"{c['stage1_score']:.4f}) | " if c else "- | - | ")
                    + f"{r['final']:.4f} |")
    notes = []
    for mode, r in results.items():
        c = r.get("cascade")
        if c:
            notes.append(f"`--cascade {mode}`: the first stage stopped at minute {c['stage1_minutes']:.1f} "
                         f"(planned {c['stage1_until']:.1f}), the second had the rest.")
        notes += [f"`--cascade {mode}` {line}" for line in r["probe"]]
    return "\n".join([
        "### The cascade on BraTS 2013 (whole tumour, 3D)",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {machine()}  ",
        f"Date: {time.strftime('%Y-%m-%d')}; {minutes:g} training minutes per run; {n_train} training / "
        f"{len(val)} validation volume(s) ({', '.join(c.name for c in val)}); the stage choice and the "
        "probe's are made on that validation volume (no third split with five volumes): indicative only.",
        "",
        *rows,
        "",
        *[f"- {n}" for n in notes],
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/rd/cascade"))
    ap.add_argument("--modes", nargs="*", choices=MODES, default=["off", "auto"])
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    data = DATA_ROOT / DATASETS["brats3d"][0]
    if not data.is_dir():
        raise SystemExit(f"{data}: not found (the shared datasets)")
    args.work.mkdir(parents=True, exist_ok=True)
    train, val, cases = write_split(data, load_recipe("brats3d"), args.work)
    results = {}
    for mode in args.modes:
        results[mode] = one(mode, train, val, cases, args.work, args.minutes, data)
        print(mode, json.dumps(results[mode]), flush=True)
    write_text(args.work / "results.json", json.dumps(results, indent=2))
    n_train = len(list((train / "images").iterdir()))
    text = section(results, args.minutes, n_train, cases, args)
    print(text)
    if not args.no_write:
        replace_section(Path(__file__).resolve().parents[1] / "BENCHMARKS.md", "cascade_3d", text)


if __name__ == "__main__":
    main()

"""Large structures at the same CPU minutes: unetseg's planner against nnU-Net v2 and MONAI (issue 20).

For each dataset and budget, the three tools train on the same training images for the same minutes and
segment the same held-out images, scored by the same code (foreground Dice and IoU, mean over images):

* ``planner``: ``unetseg train --data TRAIN --out RUN --max-minutes M`` with nothing else (it plans the
  resolution, patch, network and schedule, and runs its timed probe when its rules are unsure; its own
  validation images come out of TRAIN), then ``unetseg predict --checkpoint RUN`` (the best checkpoint on
  those validation images);
* ``nnunet``: ``benchmarks/reference_nnunet.py`` (nnU-Net 2.8.1's own planner, preprocessing and default
  trainer stopped by the clock, ``nnUNetv2_predict`` defaults; its own venv ``.venv-nnunet``);
* ``monai``: ``benchmarks/reference_monai.py`` (BasicUNet + DiceCE on 256x256 patches).

Datasets:

* ``cvc``: ``../shared/datasets/cvc_clinicdb_polyp`` (RGB colonoscopy frames 288x384, polyps of 0.3-49% of
  the frame), split by video sequence (``extra/sequences.csv``; frames of one sequence are near-duplicates):
  five sequences drawn with a fixed seed are the held-out test set;
* ``lesions``: synthetic RGB 480x640 images of one large lesion each (a third to two thirds of the image's
  side, some cut by the border; ``unetseg.data.synthetic``, kind ``lesions``): 60 training, 30 test images.

Results are kept in ``benchmarks/large_objects.json`` (runs there are reused; ``--redo`` runs them again),
drawn in ``benchmarks/large_objects.png`` and written between ``<!-- large_objects:start/end -->`` in
BENCHMARKS.md. Run it alone on a quiet machine, under ``.venv-bench`` (``make bench`` builds the venvs)::

    .venv-bench/bin/python benchmarks/large_objects.py cvc lesions --minutes 5 10
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import real_data
from _common import cpu_model

from unetseg.fileio import write_text  # atomic: temp, fsync, replace

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared" / "datasets"
RESULTS = HERE / "large_objects.json"
PICTURE = HERE / "large_objects.png"
TOOLS = ("planner", "nnunet", "monai")
NAMES = {"planner": "unetseg planner (no recipe)", "nnunet": "nnU-Net v2 2.8.1 (its planner, clock-stopped)",
         "monai": "MONAI BasicUNet + DiceCE"}
PYTHON = {"nnunet": REPO / ".venv-nnunet" / "bin" / "python"}


def _link(paths: list[Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for p in paths:
        link = folder / p.name
        if not link.is_symlink():
            link.symlink_to(p.resolve())


def split_cvc(work: Path) -> tuple[Path, Path, str]:
    """Training and test folders (symlinks) of CVC-ClinicDB, five whole sequences held out."""
    data = SHARED / "cvc_clinicdb_polyp"
    if not data.is_dir():
        raise SystemExit(f"{data}: dataset not found")
    with open(data / "extra" / "sequences.csv") as f:
        seq = {row["stem"]: int(row["sequence"]) for row in csv.DictReader(f)}
    test_seqs = sorted(random.Random(20).sample(sorted(set(seq.values())), 5))
    for part, keep in (("train", lambda s: s not in test_seqs), ("test", lambda s: s in test_seqs)):
        stems = sorted((s for s in seq if keep(seq[s])), key=int)
        _link([data / "images" / f"{s}.png" for s in stems], work / part / "images")
        _link([data / "masks" / f"{s}.png" for s in stems], work / part / "masks")
    n_test = len(list((work / "test" / "images").iterdir()))
    return work / "train", work / "test", f"test sequences {test_seqs} ({n_test} frames)"


def make_lesions(work: Path) -> tuple[Path, Path, str]:
    from unetseg.data.synthetic import make_dataset

    if not (work / "test" / "masks").is_dir():
        make_dataset(work / "train", n=60, size=(480, 640), kind="lesions", seed=100)
        make_dataset(work / "test", n=30, size=(480, 640), kind="lesions", seed=200)
    return work / "train", work / "test", "60 training / 30 test images, 480x640, seeds 100 / 200"


DATASETS = {"cvc": split_cvc, "lesions": make_lesions}


def _run(cmd: list, log: Path) -> str:
    return real_data.run([str(c) for c in cmd], log)  # the one runner: output to the log, tail on failure


def run_planner(train: Path, test: Path, out: Path, minutes: float) -> dict:
    py = [sys.executable, "-m", "unetseg"]
    t0 = time.monotonic()
    _run([*py, "train", "--data", train, "--out", out / "run", "--max-minutes", f"{minutes:g}"],
         out / "train.log")
    t1 = time.monotonic()
    _run([*py, "predict", "--checkpoint", out / "run", "--input", test / "images", "--output", out / "pred",
          "--mask-values", "original"], out / "predict.log")
    with open(out / "run" / "metrics.csv") as f:
        last = list(csv.DictReader(f))[-1]
    cfg = json.loads((out / "run" / "best" / "config.json").read_text())
    logged = [ln.split(" ", 2)[-1] for ln in (out / "run" / "log.txt").read_text().splitlines()]
    verdicts = ("kept", "lost", "not run")
    probe = [ln for ln in logged if ln.startswith("probe ") and any(w in ln for w in verdicts)]
    return {"steps": int(last["step"]), "train_minutes": float(last["minutes"]),
            "wall_train_s": round(t1 - t0),
            "predict_s": round(time.monotonic() - t1), "pred": str(out / "pred"), "values": "original",
            "plan": {"downsample": cfg["data"]["downsample"], "patch": cfg["data"]["patch_size"],
                     "depth": cfg["model"]["depth"], "base": cfg["model"]["base_channels"],
                     "batch": cfg["train"]["batch_size"]},
            "probe": probe}


def run_peer(tool: str, train: Path, test: Path, out: Path, minutes: float) -> dict:
    script = {"nnunet": "reference_nnunet.py", "monai": "reference_monai.py"}[tool]
    python = PYTHON.get(tool, Path(sys.executable))
    if not python.exists():
        raise SystemExit(f"{python}: missing (make bench builds it)")
    cmd = [python, HERE / script, "--train", train, "--predict", test / "images", "--out", out / "pred",
           "--minutes", f"{minutes:g}", "--class-values", "0", "255"]
    if tool == "nnunet":
        cmd += ["--work", out / "work"]
    t0 = time.monotonic()
    text = _run(cmd, out / "run.log")
    summary = json.loads(text.split("REFERENCE ", 1)[1].splitlines()[0])
    if tool == "nnunet":
        shutil.rmtree(out / "work", ignore_errors=True)  # gigabytes of preprocessed arrays
    return {**summary, "wall_s": round(time.monotonic() - t0), "pred": str(out / "pred"), "values": "index"}


def score(pred: Path, test: Path) -> dict[str, float]:
    """Mean over the test images of the foreground Dice and IoU (an empty truth and prediction: 1)."""
    from unetseg.io.images import list_images, read_mask, stem_of

    preds = {stem_of(p): p for p in list_images(pred)}
    dices, ious = [], []
    for mask in list_images(test / "masks"):
        truth = read_mask(mask)[0] > 0
        guess = read_mask(preds[stem_of(mask)])[0] > 0
        inter, total = np.logical_and(truth, guess).sum(), truth.sum() + guess.sum()
        union = total - inter
        dices.append(1.0 if total == 0 else 2 * inter / total)
        ious.append(1.0 if union == 0 else inter / union)
    return {"dice": float(np.mean(dices)), "iou": float(np.mean(ious)), "images": len(dices)}


def machine() -> str:
    import platform

    import torch

    from unetseg.runtime import cpu_has_fast_bf16

    bf16 = "AVX-512-bf16/AMX" if cpu_has_fast_bf16() else "no fast bf16"
    return (f"{cpu_model()} ({bf16}), {len(os.sched_getaffinity(0))} cores, Python "
            f"{platform.python_version()}, torch {torch.__version__}")


def draw(results: dict) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [n for n in DATASETS if n in results]
    fig = Figure(figsize=(5 * len(names), 4))
    FigureCanvasAgg(fig)
    for ax, name in zip(fig.subplots(1, len(names), squeeze=False)[0], names, strict=True):
        for tool, style in zip(TOOLS, ("o-", "^-.", "s--"), strict=True):
            pts = sorted((float(m), r["dice"]) for m, r in results[name].get(tool, {}).items())
            if pts:
                ax.plot([m for m, _ in pts], [d for _, d in pts], style, label=NAMES[tool])
        ax.set_title(name)
        ax.set_xlabel("training minutes (2 CPU cores)")
        ax.set_ylabel("foreground Dice, held-out images")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(PICTURE, dpi=90)


def section(results: dict, notes: dict) -> str:
    lines = ["## Large structures: the planner against nnU-Net and MONAI at the same minutes (issue 20)", "",
             f"`benchmarks/large_objects.py`; machine: {notes.get('machine', '?')}; runs up to "
             f"{notes.get('date', '?')}. Each tool trains from scratch on the same images for the same "
             "minutes and segments the same held-out images; foreground Dice (IoU), mean over images.", "",
             "![Dice against the budget](benchmarks/large_objects.png)", ""]
    for name in (n for n in DATASETS if n in results):
        lines += [f"### {name}: {notes.get(name, '')}", "",
                  "| tool | minutes | Dice | IoU | steps | what it trained |",
                  "| --- | ---: | ---: | ---: | ---: | --- |"]
        for minutes in sorted({m for t in results[name].values() for m in t}, key=float):
            row = {t: results[name].get(t, {}).get(minutes) for t in TOOLS}
            best = max((r["dice"] for r in row.values() if r), default=None)
            for tool, r in row.items():
                if r is None:
                    continue
                dice = f"**{r['dice']:.4f}**" if r["dice"] == best else f"{r['dice']:.4f}"
                lines.append(f"| {NAMES[tool]} | {minutes} | {dice} | {r['iou']:.4f} | "
                             f"{r.get('steps', '-')} | {_what(tool, r)} |")
        probes = [(m, r["probe"]) for m, r in sorted(results[name].get("planner", {}).items(), key=lambda x:
                                                      float(x[0])) if r.get("probe")]
        for m, probe in probes:
            lines.append("")
            lines.append(f"Planner's probe at {m} min: " + "; ".join(probe))
        lines.append("")
    return "\n".join(lines)


def _what(tool: str, r: dict) -> str:
    p = r.get("plan") or {}
    if tool == "planner":
        grid = f"{p['downsample'][0]:g}x coarser" if p.get("downsample") else "full resolution"
        return (f"{grid}, patch {p.get('patch')}, depth {p.get('depth')}, base {p.get('base')}, "
                f"batch {p.get('batch')}")
    if tool == "nnunet":
        return (f"{r.get('configuration')}, patch {p.get('patch_size')}, batch {p.get('batch_size')}, "
                f"{p.get('n_stages')} stages")
    return "256x256 patches, batch 4"


def write_section(text: str) -> None:
    md = REPO / "BENCHMARKS.md"
    start, end = "<!-- large_objects:start -->", "<!-- large_objects:end -->"
    old = md.read_text()
    block = f"{start}\n{text}\n{end}"
    new = (old[: old.index(start)] + block + old[old.index(end) + len(end):] if start in old and end in old
           else old.rstrip("\n") + "\n\n" + block + "\n")
    write_text(md, new)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("datasets", nargs="*", help=f"some of {sorted(DATASETS)} (default: all)")
    ap.add_argument("--minutes", type=float, nargs="+", default=[5.0, 10.0])
    ap.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "unetseg_large_objects")
    ap.add_argument("--redo", action="store_true", help="run again what the JSON already holds")
    ap.add_argument("--no-write", action="store_true", help="leave BENCHMARKS.md and the picture alone")
    args = ap.parse_args()
    if unknown := set(args.datasets) - set(DATASETS):
        ap.error(f"unknown dataset(s) {sorted(unknown)}: choose from {sorted(DATASETS)}")
    stored = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results, notes = stored.get("results", {}), stored.get("notes", {})
    for name in args.datasets or sorted(DATASETS):
        train, test, note = DATASETS[name](args.work / name / "data")
        notes[name] = note
        for minutes in args.minutes:
            for tool in args.tools:
                key = f"{minutes:g}"
                if key in results.get(name, {}).get(tool, {}) and not args.redo:
                    continue
                out = args.work / name / f"{tool}_{key}"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(parents=True)
                info = (run_planner(train, test, out, minutes) if tool == "planner"
                        else run_peer(tool, train, test, out, minutes))
                info.update(score(Path(info["pred"]), test))
                results.setdefault(name, {}).setdefault(tool, {})[key] = info
                notes["machine"] = machine()
                notes["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
                write_text(RESULTS, json.dumps({"results": results, "notes": notes}, indent=1))
                print(f"{name} {tool} {key} min: Dice {info['dice']:.4f} IoU {info['iou']:.4f}", flush=True)
    if not args.no_write:
        draw(results)
        write_section(section(results, notes))


if __name__ == "__main__":
    main()

"""Fine-tuning against training from scratch at the same minutes, by the number of images (issue 22).

* ``dsb``: ``../shared/datasets/dsb2018_stage1_test``. A source model trains on its grey fluorescence images
  (R=G=B: 43 of 52); its colour bright-field / H&E images (9) are the new modality: 4 (drawn with a fixed
  seed) are the held-out test set, the other 5 the pool the training subsets of 1, 3 and 5 images are
  drawn from (nested). The issue asked for 5, 10 and 20 images: this share of DSB has 9 such images, so the
  subsets stop at 5. For each subset, ``train --init-from SOURCE`` and ``train`` from scratch get the same
  minutes; the source model as it is (zero-shot) is the third line.
* ``dsbfluo``: the human-in-the-loop case, one modality: a source trained on 30 of the fluorescence images,
  fine-tuned on 1, 3 and 5 other fluorescence images, 8 more as the test set.
* ``em2drive``: another modality: a source trained on ISBI 2012 EM membranes (grey) is fine-tuned to DRIVE
  retinal vessels (RGB; the stem adapts grey -> RGB), against DRIVE from scratch, on 5 DRIVE images, 12 held
  out.

Scores on the held-out images: foreground Dice and, for the nuclei, the DSB score of the connected components
against the instance masks. Everything runs through the command line with the planner (no recipe). Results in
``benchmarks/finetune.json`` (reused; ``--redo``), ``benchmarks/finetune.png`` and BENCHMARKS.md between
``<!-- finetune:start/end -->``. Run it alone::

    .venv/bin/python benchmarks/finetune.py --source-minutes 6 --minutes 2
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import real_data
from _common import replace_section
from large_objects import machine, score

from unetseg.fileio import write_text  # atomic: temp, fsync, replace

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared" / "datasets"
RESULTS, PICTURE = HERE / "finetune.json", HERE / "finetune.png"
PY = [sys.executable, "-m", "unetseg"]


def link(paths: list[Path], folder: Path) -> Path:
    """A dataset folder of symbolic links (the shared data is only read)."""
    for p in paths:
        for sub, src in (("images", p), ("masks", p.parent.parent / "masks" / p.name)):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            dst = folder / sub / p.name
            if not dst.is_symlink():
                dst.symlink_to(src.resolve())
    return folder


def is_grey(path: Path) -> bool:
    from PIL import Image

    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
    return bool(np.abs(rgb[..., 0] - rgb[..., 1]).max() == 0 and np.abs(rgb[..., 1] - rgb[..., 2]).max() == 0)


def split_dsb(work: Path) -> dict:
    root = SHARED / "dsb2018_stage1_test"
    images = sorted((root / "images").glob("*.png"))
    grey = [p for p in images if is_grey(p)]
    colour = [p for p in images if not is_grey(p)]
    rng = random.Random(0)
    test = sorted(rng.sample(colour, 4))
    pool = [p for p in colour if p not in test]
    rng.shuffle(pool)
    return {"source": link(grey, work / "source_data"), "test": link(test, work / "test"),
            "subsets": {n: link(pool[:n], work / f"train_{n}") for n in (1, 3, 5) if n <= len(pool)},
            "instances": root / "extra" / "instances",
            "note": f"source: {len(grey)} fluorescence images; new modality: {len(colour)} colour images "
                    f"({len(test)} test, subsets of a pool of {len(pool)})"}


def split_dsb_fluo(work: Path) -> dict:
    """The human-in-the-loop case: the same modality. A source trained on 30 of the fluorescence images is
    fine-tuned on 1, 3 and 5 others; 8 more are the test set."""
    root = SHARED / "dsb2018_stage1_test"
    grey = [p for p in sorted((root / "images").glob("*.png")) if is_grey(p)]
    rng = random.Random(1)
    rng.shuffle(grey)
    test, pool, source = sorted(grey[:8]), grey[8:13], grey[13:]
    return {"source": link(source, work / "source_data"), "test": link(test, work / "test"),
            "subsets": {n: link(pool[:n], work / f"train_{n}") for n in (1, 3, 5)},
            "instances": root / "extra" / "instances",
            "note": f"source: {len(source)} fluorescence images; new: 1-5 other fluorescence images, "
                    f"{len(test)} test"}


def split_em2drive(work: Path) -> dict:
    em = sorted((SHARED / "isbi2012_em" / "images").glob("*"))
    drive = sorted((SHARED / "drive_retina" / "images").glob("*"))
    rng = random.Random(0)
    test = sorted(rng.sample(drive, 12))
    pool = [p for p in drive if p not in test]
    rng.shuffle(pool)
    return {"source": link(em, work / "source_data"), "test": link(test, work / "test"),
            "subsets": {5: link(pool[:5], work / "train_5")}, "instances": None,
            "note": f"source: ISBI 2012 EM ({len(em)} images); new: DRIVE vessels, 5 training, 12 test"}


def train(data: Path, out: Path, minutes: float, init: Path | None) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.monotonic()
    real_data.run([*PY, "train", "--data", str(data), "--out", str(out / "run"), "--max-minutes",
                   f"{minutes:g}", *(["--init-from", str(init)] if init else [])], out / "train.log")
    return {"wall_s": round(time.monotonic() - t0)}


def predict_and_score(run: Path, test: Path, out: Path, instances: Path | None) -> dict:
    pred = out / "pred"
    shutil.rmtree(pred, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    real_data.run([*PY, "predict", "--checkpoint", str(run), "--input", str(test / "images"), "--output",
                   str(pred), "--mask-values", "original"], out / "predict.log")
    result = score(pred, test)
    if instances is not None:
        result["dsb"] = dsb(pred, test, instances)
    return result


def dsb(pred: Path, test: Path, instances: Path) -> float:
    """The DSB score of the predicted foreground's connected components against the instance masks."""
    from scipy import ndimage

    from unetseg.io.images import list_images, read_mask, stem_of
    from unetseg.metrics.instances import dsb_score

    preds = {stem_of(p): p for p in list_images(pred)}
    scores = []
    for mask in list_images(test / "masks"):
        stem = stem_of(mask)
        ids = ndimage.label(read_mask(preds[stem])[0] > 0)[0]
        scores.append(dsb_score(ids, read_mask(next(instances.glob(stem + ".*")))[0]))
    return float(np.mean(scores))


def run_dataset(name: str, split: dict, work: Path, args: argparse.Namespace, stored: dict) -> dict:
    res = stored.setdefault(name, {})
    source = work / "source"
    if "source" not in res or args.redo:
        res["source"] = train(split["source"], source, args.source_minutes, None)
        res["zero_shot"] = predict_and_score(source / "run", split["test"], work / "zero_shot",
                                             split["instances"])
    for n, data in split["subsets"].items():
        for arm, init in (("finetune", source / "run"), ("scratch", None)):
            key = f"{arm}_{n}"
            if key in res and not args.redo:
                continue
            out = work / key
            info = train(data, out, args.minutes, init)
            res[key] = {**info, **predict_and_score(out / "run", split["test"], out, split["instances"])}
            print(name, key, res[key], flush=True)
    res["note"] = split["note"]
    return res


def draw(results: dict, minutes: float) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [n for n in ("dsbfluo", "dsb") if n in results]
    titles = {"dsb": "fluorescence -> bright-field/H&E", "dsbfluo": "fluorescence -> other fluorescence"}
    fig = Figure(figsize=(10, 4 * len(names)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(names), 2, squeeze=False)
    for row, name in zip(axes, names, strict=True):
        res = results[name]
        sizes = sorted({int(k.split("_")[1]) for k in res if k.startswith(("finetune_", "scratch_"))})
        for ax, metric in zip(row, ("dice", "dsb"), strict=True):
            for arm, style in (("finetune", "o-"), ("scratch", "s--")):
                ax.plot(sizes, [res[f"{arm}_{n}"][metric] for n in sizes], style,
                        label=f"{arm} ({minutes:g} min)")
            ax.axhline(res["zero_shot"][metric], color="grey", ls=":", label="source model, zero-shot")
            ax.set(xlabel="training images of the new set", ylabel=f"{metric} (held-out images)",
                   title=f"DSB2018 {titles[name]}: {metric}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(PICTURE, dpi=90)


def section(results: dict, notes: dict) -> str:
    lines = ["## Fine-tuning against training from scratch (issue 22)", "",
             f"`benchmarks/finetune.py`; machine: {notes['machine']}; {notes['date']}. Source models "
             f"{notes['source_minutes']:g} min; every fine-tune and every from-scratch run "
             f"{notes['minutes']:g} min, planned (no recipe); scores on held-out images.", "",
             "![fine-tuning against from scratch](benchmarks/finetune.png)", ""]
    for name, res in results.items():
        lines += [f"### {name}: {res['note']}", "",
                  "| model | training images | Dice | DSB score | wall s |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        z = res["zero_shot"]
        lines.append(f"| source model, zero-shot | 0 | {z['dice']:.4f} | {z.get('dsb', float('nan')):.4f} "
                     "| - |")
        for key in sorted((k for k in res if k.startswith(("finetune_", "scratch_"))),
                          key=lambda k: (int(k.split("_")[1]), k)):
            r = res[key]
            arm, n = key.split("_")
            lines.append(f"| {arm} | {n} | {r['dice']:.4f} | {r.get('dsb', float('nan')):.4f} | "
                         f"{r['wall_s']} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("datasets", nargs="*", default=["dsb", "em2drive"])
    ap.add_argument("--source-minutes", type=float, default=6.0)
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "unetseg_finetune")
    ap.add_argument("--redo", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    stored = json.loads(RESULTS.read_text()) if RESULTS.is_file() and not args.no_write else {}
    results = stored.get("results", {})
    splits = {"dsb": split_dsb, "dsbfluo": split_dsb_fluo, "em2drive": split_em2drive}
    for name in args.datasets:
        run_dataset(name, splits[name](args.work / name / "data"), args.work / name, args, results)
    notes = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "minutes": args.minutes,
             "source_minutes": args.source_minutes}
    text = section(results, notes)
    print(text)
    if args.no_write:
        return
    write_text(RESULTS, json.dumps({"results": results, "notes": notes}, indent=2) + "\n")
    if {"dsb", "dsbfluo"} & set(results):
        draw(results, args.minutes)
    replace_section(REPO / "BENCHMARKS.md", "finetune", text)


if __name__ == "__main__":
    main()

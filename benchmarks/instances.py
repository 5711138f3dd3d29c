"""Instances on DSB2018 nuclei: unetseg's instance mode against the connected components of its own semantic
model, StarDist and Cellpose 3, each trained from scratch for the same minutes on the same split.

1. splits ``../shared/datasets/dsb2018_stage1_test`` as ``real_data.py`` does (val_fraction 0.2, seed 0)
   into ``WORK/split/{train,val}`` with the instance labels (``extra/instances``) as masks, and
   ``WORK/semantic/{train,val}`` with the binary masks;
2. ``instances``: ``unetseg train --task instances`` (the planner chooses the rest), ``unetseg predict``;
   ``instances_distance``: the same with the distance-to-boundary target (``data.instance_target:
   distance`` from a one-line recipe; the planner chooses the rest);
   ``semantic``: ``unetseg train`` on the binary masks, ``unetseg predict``, then connected components;
3. ``stardist`` / ``cellpose``: ``benchmarks/peer_stardist.py`` / ``peer_cellpose.py`` in their own
   virtual environments (``make bench`` builds them; skipped, with the reason, where one cannot be built);
4. scores every tool's objects with ``unetseg.metrics.instances`` (DSB score, AP@0.5, F1@0.5, PQ, AJI; mean
   over the held-out ``split/val`` images, which no tool trains or validates on: each carves its own
   validation images out of ``split/train``) and writes the section between
   ``<!-- instances:start/end -->`` in BENCHMARKS.md, with the per-object CSV of one image.

Run it alone on a quiet machine (``--tools`` runs a subset; the others' last results are kept)::

    .venv/bin/python benchmarks/instances.py --minutes 10
    .venv/bin/python benchmarks/instances.py --minutes 10 --tools instances instances_distance semantic
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import replace_section
from scipy import ndimage

from unetseg.data import find_cases, split_cases
from unetseg.fileio import write_text  # atomic: temp, fsync, replace
from unetseg.io.images import read_mask, stem_of
from unetseg.metrics.instances import instance_metrics

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / ".." / "shared" / "datasets" / "dsb2018_stage1_test"
PEERS = {
    "stardist": REPO / ".venv-stardist" / "bin" / "python",
    "cellpose": REPO / ".venv-cellpose" / "bin" / "python",
}
TOOLS = ("instances", "instances_distance", "semantic", "stardist", "cellpose")
UNETSEG = ("instances", "instances_distance", "semantic")


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.is_symlink():
        dst.symlink_to(src.resolve())


def write_splits(work: Path) -> tuple[dict[str, Path], list[str]]:
    """``WORK/{split,semantic}/{train,val}`` symlink folders; returns them and the validation stems."""
    train, val = split_cases(find_cases(DATA), 0.2, 0)
    folders = {}
    for name, cases in (("train", train), ("val", val)):
        for kind, masks in (("split", DATA / "extra" / "instances"), ("semantic", DATA / "masks")):
            root = work / kind / name
            for c in cases:
                _link(c.image_paths[0], root / "images" / c.image_paths[0].name)
                _link(masks / c.mask_path.name, root / "masks" / c.mask_path.name)
            folders[f"{kind}/{name}"] = root
    return folders, [c.name for c in val]


def run(cmd: list[str], log: Path) -> str:
    print("$ " + shlex.join(cmd), flush=True)
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(
            f"command failed ({proc.returncode}), see {log}:\n"
            + "\n".join(log.read_text().splitlines()[-15:])
        )
    return log.read_text()


def unetseg(kind: str, folders: dict[str, Path], work: Path, minutes: float) -> Path:
    out = work / "runs" / kind  # not work / kind: WORK/semantic holds that model's data
    shutil.rmtree(out, ignore_errors=True)
    src = "semantic" if kind == "semantic" else "split"
    py = [sys.executable, "-m", "unetseg"]
    task = [] if kind == "semantic" else ["--task", "instances"]
    if kind == "instances_distance":  # train has no option for the target: a one-line recipe gives it
        recipe = work / "instances_distance.yaml"
        write_text(recipe, "data: {task: instances, instance_target: distance}\n")
        task += ["--config", str(recipe)]
    run(
        [
            *py,
            "train",
            *task,
            "--data",
            str(folders[f"{src}/train"]),  # no --val-data: its validation images come from train, as
            "--out",  # StarDist's do, so the scored images stay unseen (they choose checkpoint and watershed)
            str(out / "run"),
            "--max-minutes",
            str(minutes),
        ],
        work / f"{kind}_train.log",
    )
    run(
        [
            *py,
            "predict",
            "--checkpoint",
            str(out / "run" / "last"),
            "--input",
            str(folders[f"{src}/val"] / "images"),
            "--output",
            str(out / "pred"),
        ],
        work / f"{kind}_predict.log",
    )
    return out / "pred"


def peer(name: str, folders: dict[str, Path], work: Path, minutes: float) -> Path | str:
    python = PEERS[name]
    if not python.exists():
        venv = python.parent.parent
        log = venv.with_name(f"{venv.name}.log")
        why = log.read_text().strip().splitlines()[-1:] if log.is_file() else []
        return (f"not run: {venv.name} could not be built ({why[0][:300] if why else 'no log'})" if why
                else f"not run: {venv.name} is missing (`make bench` builds it)")
    out = work / name / "pred"
    shutil.rmtree(out, ignore_errors=True)
    run(
        [
            str(python),
            f"benchmarks/peer_{name}.py",
            "--train",
            str(folders["split/train"]),
            "--predict",
            str(folders["split/val"] / "images"),
            "--out",
            str(out),
            "--minutes",
            str(minutes),
        ],
        work / f"{name}.log",
    )
    return out


def objects(pred_dir: Path, stem: str, semantic: bool) -> np.ndarray:
    files = {stem_of(p): p for p in pred_dir.iterdir() if not p.name.endswith(".csv")}
    labels = read_mask(files[stem])[0]
    if semantic:  # the semantic model's masks: touching nuclei become one object
        return ndimage.label(labels > 0)[0]
    return labels.astype(np.int64)


def score(pred_dir: Path, stems: list[str], semantic: bool) -> dict[str, float]:
    rows = [
        instance_metrics(
            objects(pred_dir, s, semantic),
            read_mask(DATA / "extra" / "instances" / f"{s}.png")[0].astype(np.int64),
        )
        for s in stems
    ]
    return {
        k: float(np.mean([r[k] for r in rows])) for k in ("dsb", "ap50", "f1_50", "pq", "sq", "rq", "aji")
    }


def section(results: dict, minutes: float, stems: list[str], csv_text: str, csv_stem: str) -> str:
    names = {
        "instances": "unetseg `--task instances`",
        "instances_distance": "unetseg `--task instances`, distance target",
        "semantic": "unetseg semantic + connected components",
        "stardist": "StarDist 2D (from scratch)",
        "cellpose": "Cellpose 3 (from scratch)",
    }
    cols = [t for t in TOOLS if t in results]
    lines = [
        "### Instances: DSB2018 nuclei (issue 15)",
        "",
        f"Command: `.venv/bin/python benchmarks/instances.py --minutes {minutes:g}`; run "
        f"{time.strftime('%Y-%m-%d %H:%M')}; {len(stems)} held-out images (the split of `real_data.py`; "
        "every tool validates on images it carves out of the training split).  ",
        "Every tool trained from scratch for the same minutes on the same 42 images; objects scored by "
        "`unetseg.metrics.instances` (DSB = the 2018 Data Science Bowl metric).",
        "",
        "| metric (mean over held-out images) | " + " | ".join(names[t] for t in cols) + " |",
        "| --- | " + " | ".join("---:" for _ in cols) + " |",
    ]
    for key in ("dsb", "ap50", "f1_50", "pq", "aji"):
        vals = [results[t].get("scores", {}).get(key) for t in cols]
        best = max((v for v in vals if v is not None), default=None)
        lines.append(
            f"| {key} | "
            + " | ".join("-" if v is None else (f"**{v:.4f}**" if v == best else f"{v:.4f}") for v in vals)
            + " |"
        )
    for t in cols:
        if "note" in results[t]:
            lines.append(f"\n{names[t]}: {results[t]['note']}")
    lines += [
        "",
        f"Per-object table of one validation image (`OUT/{csv_stem[:12]}..._objects.csv`, first rows):",
        "",
        "```",
        *csv_text.splitlines()[:8],
        "```",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "unetseg_instances")
    ap.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    folders, stems = write_splits(work)
    results: dict[str, dict] = {}
    for tool in TOOLS:
        record = work / f"{tool}.json"
        if tool in args.tools:
            pred = (
                unetseg(tool, folders, work, args.minutes)
                if tool in UNETSEG
                else peer(tool, folders, work, args.minutes)
            )
            info = (
                {"note": pred}
                if isinstance(pred, str)
                else {"pred": str(pred), "scores": score(pred, stems, semantic=tool == "semantic")}
            )
            write_text(record, json.dumps(info, indent=1))
        elif record.is_file():
            info = json.loads(record.read_text())
        else:
            continue
        results[tool] = info
        print(tool, info.get("scores", info.get("note")), flush=True)
    csv = next((work / "runs" / "instances" / "pred").glob("*_objects.csv"), None)
    text = section(results, args.minutes, stems, csv.read_text() if csv else "", csv.stem if csv else "")
    if args.no_write:
        print(text)
        return
    replace_section(REPO / "BENCHMARKS.md", "instances", text)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()

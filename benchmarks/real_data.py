"""unetseg's planner (no recipe), its recipe and a plain MONAI reference on one real dataset: same split,
minutes and metrics.

For ``NAME`` in isbi2012, dsb2018, drive, brats3d (dataset folders under ``../shared/datasets``):

1. splits the dataset with unetseg's ``split_cases`` (the recipe's ``val_fraction`` and ``split_seed``) into
   ``WORK/split/{train,val}/{images,masks}`` folders of symlinks, so both tools train on the same cases and
   are scored on the same held-out ones (``WORK`` defaults to a folder under the system temp dir);
2. ``planner``: trains unetseg with no recipe and no class option (``unetseg train --data TRAIN --val-data
   VAL --out RUN --max-minutes M``: the planner chooses everything); ``recipe``: with ``configs/NAME.yaml``;
   each is evaluated from its last checkpoint (``unetseg evaluate``: JSON + HTML report) and writes its masks
   with their original values (``unetseg predict --mask-values original``). ``RUN/last``, not
   ``RUN/best``: best is chosen on these same validation images, which would flatter unetseg; the
   reference, too, is scored with its final weights;
3. trains and predicts with ``benchmarks/reference_monai.py`` (MONAI BasicUNet + DiceCELoss) for the
   same minutes;
4. scores both sets of masks with the same code (``unetseg.metrics``): Dice and IoU per class (mean over
   validation images), plus the foreground-restricted Rand error and pixel error for ISBI (membrane maps ->
   instances), Dice inside the field of view for DRIVE, whole-tumour Dice (labels > 0) for BraTS;
5. writes the result between ``<!-- real_data:NAME:start/end -->`` in ``BENCHMARKS.md``.

Run it alone on a quiet machine, under the venv that has MONAI (``make bench`` creates ``.venv-bench``)::

    .venv-bench/bin/python benchmarks/real_data.py isbi2012 --minutes 10
    .venv-bench/bin/python benchmarks/real_data.py drive --minutes 10 --tools unetseg   # rerun one tool
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from unetseg.config import Config, apply_overrides, load_yaml
from unetseg.data import ClassMap, find_cases, split_cases
from unetseg.fileio import write_text  # atomic: temp, fsync, replace
from unetseg.io.images import list_images, read_mask, stem_of
from unetseg.metrics import dice, instances_from_membranes, iou, pixel_error, rand_error

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = REPO / ".." / "shared" / "datasets"
DATASETS = {  # recipe name -> (dataset folder, class names by mask value)
    "isbi2012": ("isbi2012_em", {255: "cell", 0: "membrane"}),
    "dsb2018": ("dsb2018_stage1_test", {0: "background", 255: "nucleus"}),
    "drive": ("drive_retina", {0: "background", 255: "vessel"}),
    "brats3d": ("brats2013_deepmedic_3d", {0: "background", 1: "necrosis", 2: "oedema",
                                           3: "non-enhancing", 4: "enhancing"}),
}
TOOLS = ("planner", "recipe", "reference")


def load_recipe(name: str) -> Config:
    """The recipe ``configs/NAME.yaml`` as a Config (unknown keys raise ConfigError)."""
    path = REPO / "configs" / f"{name}.yaml"
    return apply_overrides(Config(), load_yaml(path), source=str(path))


def _link_case(case, dest: Path) -> None:
    for sub, paths in (("images", case.image_paths), ("masks", [case.mask_path])):
        (dest / sub).mkdir(parents=True, exist_ok=True)
        for p in paths:
            link = dest / sub / p.name
            if not link.is_symlink():
                link.symlink_to(p.resolve())


def write_split(data: Path, cfg: Config, work: Path) -> tuple[Path, Path, list]:
    """Symlink folders ``work/split/train`` and ``work/split/val`` from the recipe's split of ``data``."""
    train, val = split_cases(find_cases(data), cfg.data.val_fraction, cfg.data.split_seed)
    root = work / "split"
    for folder, cases in (("train", train), ("val", val)):
        if (root / folder).exists():  # a rerun: the split must be the same one
            have = sorted(stem_of(p) for p in list_images(root / folder / "images"))
            if have != sorted(c.name for c in cases):
                raise SystemExit(f"{root / folder} holds another split; remove {work} or use --work")
        for case in cases:
            _link_case(case, root / folder)
    return root / "train", root / "val", val


def run(cmd: list[str], log: Path) -> str:
    """Run ``cmd`` in the repo root, streaming its output to ``log``; stop with the log's tail on failure."""
    print("$ " + shlex.join(cmd), flush=True)
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, text=True, check=False)
    text = log.read_text()
    if proc.returncode != 0:
        tail = "\n".join(text.splitlines()[-15:])
        raise SystemExit(f"command failed ({proc.returncode}), see {log}:\n{tail}")
    return text


def run_unetseg(name: str, train: Path, val: Path, work: Path, minutes: float, extra: list[str],
                planner: bool = False) -> dict:
    """Train with the planner (no recipe) or the recipe (``extra``: more ``unetseg train`` options),
    evaluate (JSON + report), predict the validation images with their original mask values."""
    out = work / ("planner" if planner else "unetseg")
    shutil.rmtree(out, ignore_errors=True)  # a fresh run, not a continuation of an older one
    py = [sys.executable, "-m", "unetseg"]
    recipe = [] if planner else ["--config", f"configs/{name}.yaml"]
    t0 = time.monotonic()
    run([*py, "train", *recipe, "--data", str(train), "--val-data", str(val), "--out", str(out / "run"),
         "--max-minutes", str(minutes), *extra], out.with_name(out.name + "_train.log"))
    t1 = time.monotonic()
    last = str(out / "run" / "last")
    run([*py, "evaluate", "--checkpoint", last, "--data", str(val), "--out", str(out / "evaluate.json"),
         "--report", str(out / "report.html")], out.with_name(out.name + "_evaluate.log"))
    t2 = time.monotonic()
    run([*py, "predict", "--checkpoint", last, "--input", str(val / "images"), "--output", str(out / "pred"),
         "--mask-values", "original"], out.with_name(out.name + "_predict.log"))
    with open(out / "run" / "metrics.csv") as f:
        final = list(csv.DictReader(f))[-1]
    return {"steps": int(final["step"]), "train_minutes": float(final["minutes"]),
            "wall_train_s": round(t1 - t0, 1), "predict_seconds": round(time.monotonic() - t2, 1),
            "evaluate_seconds": round(t2 - t1, 1), "pred": str(out / "pred"), "pred_values": "original"}


def run_reference(train: Path, val: Path, work: Path, minutes: float, values: list[float],
                  extra: list[str]) -> dict:
    """Train and predict with ``benchmarks/reference_monai.py`` (``extra``: more of its options)."""
    pred = work / "reference" / "pred"
    shutil.rmtree(pred, ignore_errors=True)
    t0 = time.monotonic()
    # every mask value its own class (a plain reference does not merge classes); scored through the map
    flat = sorted({float(x) for v in values for x in (v if isinstance(v, list) else [v])})
    text = run([sys.executable, "benchmarks/reference_monai.py", "--train", str(train), "--predict",
                str(val / "images"), "--out", str(pred), "--minutes", str(minutes), "--class-values",
                *[f"{v:g}" for v in flat], *extra], work / "reference.log")
    summary = json.loads(text.split("REFERENCE ", 1)[1].splitlines()[0])
    return {**summary, "wall_s": round(time.monotonic() - t0, 1), "pred": str(pred), "flat_values": flat}


def class_name(group: list[float], labels: dict[int, str]) -> str:
    """``membrane``; a class that merges several mask values: ``necrosis+oedema+...``."""
    return "+".join(labels[int(v)] for v in group)


def score(pred_dir: Path, cases: list, values: list, name: str, data: Path, original: bool = False,
          flat: list[float] | None = None) -> dict[str, float]:
    """Mean over the validation cases of every metric; keys like ``dice/membrane``, ``rand_error``."""
    cmap, labels = ClassMap(values), DATASETS[name][1]
    k = len(values)
    per: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        per.setdefault(key, []).append(float(value))

    preds = {stem_of(p): p for p in pred_dir.iterdir()}
    for case in cases:
        truth = cmap.encode(read_mask(case.mask_path)[0], source=case.mask_path)
        raw = read_mask(preds[case.name])[0]
        # mask values written back (unetseg) are scored through the same class map as the truth; the
        # reference writes indices into ``flat`` (every mask value its own class)
        if flat is not None:
            raw = np.asarray(flat)[raw.astype(np.int64)]
        pred = cmap.encode(raw) if original or flat is not None else raw.astype(np.int64)
        for c, (d, j) in enumerate(zip(dice(pred, truth, k), iou(pred, truth, k), strict=True)):
            add(f"dice/{class_name(cmap.groups[c], labels)}", d)
            add(f"iou/{class_name(cmap.groups[c], labels)}", j)
        if name == "isbi2012":
            m = values.index(0.0)  # the membrane class
            pred_cells, true_cells = instances_from_membranes(pred, m), instances_from_membranes(truth, m)
            add("rand_error", rand_error(pred_cells, true_cells))
            add("pixel_error", pixel_error(pred == m, truth == m))
        if name == "drive":
            fov = read_mask(data / "extra" / "fov" / f"{case.name}.png")[0] > 0
            v = values.index(255.0)  # the vessel class
            add("fov_dice/vessel", dice(pred[fov], truth[fov], k)[v])
            add("fov_iou/vessel", iou(pred[fov], truth[fov], k)[v])
        if name == "brats3d":
            # a class's first mask value: > 0 for every tumour class, merged or not
            add("whole_tumour_dice", dice((cmap.decode(pred) > 0).astype(np.int64),
                                          (cmap.decode(truth) > 0).astype(np.int64), 2)[1])
    return {key: float(np.mean(v)) for key, v in per.items()}


def machine() -> str:
    """CPU model, cores, torch threads, library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("torch", "monai") if _installed(p))
    return (f"{cpu}, {os.cpu_count()} cores (torch threads {torch.get_num_threads()}), "
            f"Python {platform.python_version()}, {versions}")


def _installed(package: str) -> bool:
    try:
        metadata.version(package)
        return True
    except metadata.PackageNotFoundError:
        return False


def _recipe_line(work: Path, folder: str = "unetseg", who: str = "recipe") -> str:
    cfg_file = work / folder / "run" / "config.yaml"
    if not cfg_file.is_file():
        return ""
    c = apply_overrides(Config(), load_yaml(cfg_file))
    return (f"{who}: `{c.model.name}` base {c.model.base_channels} depth {c.model.depth} "
            f"{c.model.options or ''}, patch {c.data.patch_size}, batch {c.train.batch_size}, "
            f"loss {c.train.loss} {c.train.loss_options or ''}, {c.train.optimizer} lr {c.train.lr:g} "
            f"{c.train.schedule}, class values {c.data.class_values}.")


def _command(name: str, args: argparse.Namespace, work: Path) -> list[str]:
    """The command that (re)runs every tool of the table (``--tools`` only narrows a rerun)."""
    cmd = [".venv-bench/bin/python", "benchmarks/real_data.py", name, "--minutes", f"{args.minutes:g}"]
    return cmd + ["--work", str(work)]


def _finished(work: Path, tools: list[str]) -> str:
    """When the newest result of the table was recorded (a section rewritten later keeps its runs' date)."""
    newest = max((work / f"{t}.json").stat().st_mtime for t in tools)
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(newest))


def section(name: str, args: argparse.Namespace, results: dict, val: list, n_train: int, work: Path) -> str:
    """The markdown block for BENCHMARKS.md."""
    folder = DATASETS[name][0]
    keys = list(dict.fromkeys(k for r in results.values() for k in r["scores"]))
    cols = [t for t in TOOLS if t in results]
    title = {"planner": "unetseg planner (no recipe)", "recipe": f"unetseg recipe (`configs/{name}.yaml`)",
             "reference": "MONAI reference"}
    lines = [
        f"### {folder}",
        "",
        f"Command: `{shlex.join(_command(name, args, work))}`  ",
        f"Budget: {args.minutes:g} training minutes per tool; run {_finished(work, cols)}.  ",
        f"Machine: {machine()}.  ",
        f"Split: {n_train} training / {len(val)} validation cases (`split_cases`, recipe val_fraction and "
        f"seed); validation: {', '.join(c.name if len(c.name) <= 24 else c.name[:12] for c in val)}.  ",
        _recipe_line(work, "planner", "planner") + "  ",
        _recipe_line(work) + "  ",
        "Reference: MONAI BasicUNet (32,32,64,128,256,32) + DiceCELoss, random patches + flips/rot90, Adam "
        "1e-3, batch 4, sliding_window_inference (overlap 0.25, gaussian)."
        if "reference" in results
        else "Reference: not run (`benchmarks/reference_monai.py` is the issue's 2D reference).",
        "",
        "| metric (mean over validation images) | " + " | ".join(title[t] for t in cols) + " |",
        "| --- | " + " | ".join("---:" for _ in cols) + " |",
    ]
    for key in keys:
        lower = "error" in key
        vals = {t: results[t]["scores"].get(key) for t in cols}
        best = (min if lower else max)((v for v in vals.values() if v is not None), default=None)
        cells = [("-" if v is None else (f"**{v:.4f}**" if v == best and len(cols) > 1 else f"{v:.4f}"))
                 for v in vals.values()]
        lines.append(f"| {key}{' (lower is better)' if lower else ''} | " + " | ".join(cells) + " |")
    for key, what in (("steps", "training steps"), ("train_minutes", "training minutes"),
                      ("predict_seconds", "prediction seconds (validation set)")):
        lines.append(f"| {what} | " + " | ".join(str(results[t]["run"].get(key, "-")) for t in cols) + " |")
    return "\n".join(lines) + "\n"


def write_section(md: Path, name: str, text: str) -> None:
    """Replace (or append) the block between this dataset's markers, leaving the rest of the file alone."""
    start, end = f"<!-- real_data:{name}:start -->", f"<!-- real_data:{name}:end -->"
    block = f"{start}\n{text}{end}"
    old = md.read_text() if md.is_file() else "# Benchmarks\n"
    if start in old and end in old:
        new = old[: old.index(start)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    write_text(md, new)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", choices=sorted(DATASETS))
    ap.add_argument("--minutes", type=float, default=10.0, help="training minutes per tool")
    ap.add_argument("--data-root", type=Path, default=DATA_ROOT)
    ap.add_argument("--work", type=Path, default=None, help="runs and split (default: temp dir)")
    ap.add_argument("--tools", nargs="*", choices=TOOLS, default=list(TOOLS),
                    help="tools to (re)run; earlier results of the others in WORK are reused (none: only "
                         "write the section again)")
    ap.add_argument("--unetseg-args", default="", help="extra `unetseg train` options (trials, smoke tests)")
    ap.add_argument("--reference-args", default="", help="extra reference_monai.py options")
    ap.add_argument("--no-write", action="store_true", help="print the section, leave BENCHMARKS.md")
    args = ap.parse_args()

    folder = DATASETS[args.name][0]
    data = (args.data_root / folder).resolve()
    if not data.is_dir():
        raise SystemExit(f"{data}: dataset not found")
    work = (args.work or Path(tempfile.gettempdir()) / "unetseg_real_data" / args.name).resolve()
    work.mkdir(parents=True, exist_ok=True)
    cfg = load_recipe(args.name)
    train, val, val_cases = write_split(data, cfg, work)
    values = ClassMap(cfg.data.class_values).values  # the recipe's classes score everyone; merged stay lists

    results: dict[str, dict] = {}
    for tool in TOOLS:
        record = work / f"{tool}.json"
        if tool in args.tools:
            info = (run_unetseg(args.name, train, val, work, args.minutes, shlex.split(args.unetseg_args),
                                planner=tool == "planner") if tool != "reference" else
                    run_reference(train, val, work, args.minutes, values, shlex.split(args.reference_args)))
            original = info.get("pred_values") == "original"
            info["scores"] = score(Path(info["pred"]), val_cases, values, args.name, data, original=original,
                                   flat=info.get("flat_values"))
            write_text(record, json.dumps(info, indent=2))
        elif record.is_file():
            info = json.loads(record.read_text())
        else:
            continue
        results[tool] = {"run": info, "scores": info["scores"]}
        print(f"{tool}: " + ", ".join(f"{k} {v:.4f}" for k, v in info["scores"].items()), flush=True)

    n_train = len(list_images(train / "images"))
    text = section(args.name, args, results, val_cases, n_train, work)
    if args.no_write:
        print(text)
    else:
        write_section(REPO / "BENCHMARKS.md", args.name, text)
        print(f"wrote the {args.name} section of {REPO / 'BENCHMARKS.md'}; runs in {work}")


if __name__ == "__main__":
    main()

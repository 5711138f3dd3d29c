"""Issue 7's benchmarks in one run: unetseg against MONAI / smp, side by side, on the same inputs and threads.

1. Training throughput (batch 4, 256x256 patches) and peak memory of unetseg's models vs MONAI ``BasicUNet``
   (same widths and default widths), ``UNet``, ``AttentionUnet`` and smp ``UnetPlusPlus``, with params and
   GFLOPs per patch; achieved GFLOP/s against the machine's measured matmul GFLOP/s (the ceiling).
2. Sliding-window prediction of a 2048x2048 image (tile 256, overlap 0.25, Gaussian): unetseg's Predictor
   vs ``monai.inferers.sliding_window_inference`` with the same weights; time, peak RSS, output agreement.
3. The fast paths behind unetseg's per-hardware defaults (allocator, channels_last, BN folding, bf16,
   torch.compile, ONNX Runtime) and the data pipeline (augmented patches/s with 0 and 2 workers).

Each measurement runs in a fresh child process (warm-up, then the median of several repeats). The result
replaces the part of BENCHMARKS.md between the ``run.py`` markers; the rest of the file is left alone::

    python benchmarks/run.py              # full run, about 10 minutes on 2 cores; run it on a quiet machine
    python benchmarks/run.py --quick      # tiny sizes, a smoke test; prints, writes nothing

Needs the ``bench`` extra (``make bench`` builds ``.venv-bench`` with it and runs this).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import machine_facts, run_child
from _contestants import TRAIN_ROWS
from _report import fastpath_table, sliding_table, train_table

from unetseg.fileio import write_text  # atomic: temp, fsync, replace

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- run.py:start -->", "<!-- run.py:end -->"

FULL = {
    "train": {"batch": 4, "size": 256, "warmup": 1, "repeats": 3},
    "sliding": {
        "size": 2048,
        "tile": 256,
        "overlap": 0.25,
        "batch": 4,
        "warmup_size": 512,
        "repeats": 3,
        "weights": {"steps": 30, "patch": 128, "batch": 4},
    },
    "fast": {"batch": 4, "size": 256, "warmup": 1, "repeats": 3},
    "bf16": {"batch": 1, "size": 64, "warmup": 1, "repeats": 2},
    "data": {"size": 256, "batch": 4, "samples": 192},
    "matmul": {"n": 2048, "repeats": 5},
}
QUICK = {
    "train": {"batch": 2, "size": 64, "warmup": 1, "repeats": 1},
    "sliding": {
        "size": 256,
        "tile": 64,
        "overlap": 0.25,
        "batch": 4,
        "warmup_size": 128,
        "repeats": 1,
        "weights": {"steps": 2, "patch": 64, "batch": 2},
    },
    "fast": {"batch": 2, "size": 64, "warmup": 1, "repeats": 1},
    "bf16": {"batch": 1, "size": 32, "warmup": 1, "repeats": 1},
    "data": {"size": 64, "batch": 4, "samples": 16},
    "matmul": {"n": 512, "repeats": 2},
}
PARTS = ("train", "sliding", "fastpaths", "data", "compile", "ort", "smp")


class Runner:
    """Runs the children in order, logging progress to stderr."""

    def __init__(self, threads: int) -> None:
        self.threads, self.start = threads, time.monotonic()

    def __call__(self, kind: str, spec: dict[str, Any], label: str) -> dict[str, Any]:
        result = run_child(kind, spec, self.threads)
        status = result.get("error", "ok")
        print(
            f"[{time.monotonic() - self.start:6.0f} s] {kind:9s} {label}: {status}",
            file=sys.stderr,
            flush=True,
        )
        return result


def run_training(run: Runner, cfg: dict[str, Any], skip: set[str]) -> dict[str, Any]:
    rows = [r for r in TRAIN_ROWS if not (r[0] == "smp" and "smp" in skip)]
    out = {
        name: run("train", {**cfg, "impl": impl, "name": name, "tuned": impl == "unetseg"}, label)
        for impl, name, label in rows
    }
    # The peer with unetseg's allocator setting: how much of the gap is the allocator alone
    out["BasicUNet-same+alloc"] = run(
        "train",
        {**cfg, "impl": "monai", "name": "BasicUNet-same", "tuned": True},
        "MONAI BasicUNet (same widths) + allocator setting",
    )
    # and unetseg without it (UNETSEG_MALLOC=system): the speed the setting buys, the memory it costs
    out["unet-system"] = run(
        "train", {**cfg, "impl": "unetseg", "name": "unet", "tuned": False}, "unetseg unet, glibc malloc"
    )
    return out


def run_sliding(run: Runner, cfg: dict[str, Any], tmp: Path) -> dict[str, Any]:
    import numpy as np

    from unetseg.data.synthetic import make_image

    n = cfg["size"]
    image, _ = make_image("cells", (n, n), seed=0)
    image = image.astype("float32")
    np.save(tmp / "image.npy", ((image - image.mean()) / image.std())[None])  # z-score, unetseg's default
    out: dict[str, Any] = {
        "weights": run(
            "weights",
            {**cfg["weights"], "out": str(tmp / "w.safetensors"), "tuned": True},
            "brief training for the weights",
        )
    }
    # a square whose tile grid is the same in both (starts at multiples of tile*(1-overlap))
    step = int(cfg["tile"] * (1 - cfg["overlap"]))
    check = min(n, cfg["tile"] + 4 * step)
    # unetseg-system: unetseg without its allocator setting (UNETSEG_MALLOC=system)
    for key, impl, tuned in (
        ("unetseg", "unetseg", True),
        ("monai", "monai", False),
        ("unetseg-system", "unetseg", False),
    ):
        spec = {
            **cfg,
            "impl": impl,
            "image": str(tmp / "image.npy"),
            "out": str(tmp / f"{key}.npy"),
            "check_out": str(tmp / f"{key}_check.npy"),
            "check_size": check,
            "tuned": tuned,
            "weights": str(tmp / "w.safetensors") if "error" not in out["weights"] else None,
        }
        out[key] = run("sliding", spec, f"{key} {n}x{n}")
    if all("error" not in out[k] for k in ("unetseg", "monai")):
        out["agreement"] = compare(np.load(tmp / "unetseg.npy"), np.load(tmp / "monai.npy"))
        out["check"] = compare(np.load(tmp / "unetseg_check.npy"), np.load(tmp / "monai_check.npy"))
        out["check"]["size"] = check
    return out


def compare(ours: Any, theirs: Any) -> dict[str, float]:
    """Largest probability difference, and the pixels whose argmax differs with their top-2 margins."""
    import numpy as np

    diff = float(np.abs(ours - theirs).max())
    differ = ours.argmax(0) != theirs.argmax(0)
    top2 = np.sort(theirs, axis=0)[-2:]
    margin = top2[1] - top2[0]
    return {
        "max_abs_diff": diff,
        "pixels": int(differ.size),
        "differ": int(differ.sum()),
        "max_margin_where_differ": float(margin[differ].max()) if differ.any() else 0.0,
    }


def run_fastpaths(
    run: Runner, cfg: dict[str, Any], bf16_cfg: dict[str, Any], skip: set[str]
) -> dict[str, Any]:
    from unetseg.runtime import cpu_has_fast_bf16

    fast_bf16 = cpu_has_fast_bf16()
    compile_ = [] if "compile" in skip else ["compile"]
    infer = (
        ["fp32", "cl", "fuse+cl"] + [f"{c}+fuse+cl" for c in compile_] + ([] if "ort" in skip else ["ort"])
    )
    train = ["fp32", "cl"] + compile_
    if fast_bf16:  # at full size only where bf16 is fast; elsewhere below, at a tiny size
        infer += ["bf16", "bf16+cl"]
        train += ["bf16", "bf16+cl"]
    out = {
        "infer_system": run(
            "fastpaths", {**cfg, "mode": "infer", "variants": ["fp32"]}, "inference, glibc malloc"
        ),
        "infer_tuned": run(
            "fastpaths", {**cfg, "mode": "infer", "variants": infer, "tuned": True}, "inference"
        ),
        "train_system": run(
            "fastpaths", {**cfg, "mode": "train", "variants": ["fp32"]}, "training, glibc malloc"
        ),
        "train_tuned": run(
            "fastpaths", {**cfg, "mode": "train", "variants": train, "tuned": True}, "training"
        ),
        "fast_bf16": fast_bf16,
    }
    if not fast_bf16:
        for mode in ("infer", "train"):
            spec = {**bf16_cfg, "mode": mode, "variants": ["fp32", "bf16", "bf16+cl"], "tuned": True}
            out[f"{mode}_bf16_small"] = run("fastpaths", spec, f"{mode} bf16 (tiny)")
    return out


def data_table(res: dict[str, Any], cfg: dict[str, Any]) -> str:
    if "error" in res:
        return f"Data pipeline: failed ({res['error']})."
    r = res["patches_per_s"]
    return (
        f"| augmented {cfg['size']}x{cfg['size']} patches, default augmentation, batch {cfg['batch']} "
        f"| workers=0 | workers=2 |\n| --- | --- | --- |\n| patches/s | {r['0']:.0f} | {r['2']:.0f} |"
    )


def section(facts: dict[str, str], parts: list[str], command: str, minutes: float) -> str:
    head = "\n".join(f"- **{k}**: {v}" for k, v in facts.items())
    return "\n".join(
        [
            START,
            "## Speed against MONAI and smp (issue 7; written by `benchmarks/run.py`)",
            "",
            f"`{command}` ({minutes:.1f} minutes). Each number comes from a fresh child process: "
            "warm-up, then the median of the repeats; peak RSS is that child's `ru_maxrss` (interpreter, "
            'libraries and model included; "+run" is what the measured work added). unetseg runs at its '
            "defaults, with the "
            "allocator setting its command line applies at start-up (`unetseg.runtime.tune_allocator`); "
            "MONAI and smp at theirs (fp32 eager). Every training row uses the same loss (cross-entropy), "
            "optimiser (AdamW) and random batch.",
            "",
            head,
            "",
            *parts,
            END,
        ]
    )


def write_section(path: Path, text: str) -> None:
    """Replace the run.py part of ``path`` (between the markers), or append it; keep everything else."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    if START in old and END in old:
        before, rest = old.split(START, 1)
        new = before + text + rest.split(END, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    write_text(path, new)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes and one repeat: a smoke test")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--skip", default="", help=f"comma-separated parts to leave out: {', '.join(PARTS)}")
    ap.add_argument(
        "--output",
        type=Path,
        help="markdown file to update (default: BENCHMARKS.md; with --quick: print only)",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        from _measure import CHILDREN

        CHILDREN[args.child](json.loads(args.spec))
        return
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if skip - set(PARTS):
        ap.error(f"--skip: unknown parts {sorted(skip - set(PARTS))}; choose from {', '.join(PARTS)}")
    sizes = QUICK if args.quick else FULL
    run = Runner(args.threads)
    parts: list[str] = []
    ceiling = run("matmul", {**sizes["matmul"]}, "matmul ceiling")
    if "train" not in skip:
        parts.append(train_table(run_training(run, sizes["train"], skip), sizes["train"], ceiling))
    if "sliding" not in skip:
        with tempfile.TemporaryDirectory() as tmp:
            parts.append(sliding_table(run_sliding(run, sizes["sliding"], Path(tmp)), sizes["sliding"]))
    if "data" not in skip:
        data = run("data", sizes["data"], "data pipeline")
        parts.append("### 3. Data pipeline\n\n" + data_table(data, sizes["data"]) + "\n")
    if "fastpaths" not in skip:
        fast = run_fastpaths(run, sizes["fast"], sizes["bf16"], skip)
        parts.append(fastpath_table(fast, sizes["fast"], sizes["bf16"]))
    command = "python benchmarks/run.py" + " ".join([""] + sys.argv[1:])
    text = section(machine_facts(args.threads), parts, command, (time.monotonic() - run.start) / 60)
    output = args.output or (None if args.quick else ROOT / "BENCHMARKS.md")
    if output is None:
        print(text)
    else:
        write_section(output, text)
        print(f"wrote {output}", file=sys.stderr)


if __name__ == "__main__":
    main()

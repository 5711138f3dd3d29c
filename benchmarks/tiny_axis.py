"""CPU bf16 convolutions of inputs with a 1- or 2-long axis: gradients and cost of the float32 fallback.

torch's oneDNN bf16 backward returned wrong (often NaN) weight gradients for such inputs on the machines
this was measured on; ``unetseg.models.layers`` runs those convolutions in float32 under CPU autocast. For
a few networks whose deepest levels reach such sizes, this compares one training step (forward + backward)
in bf16 with the fallback on and off: the gradients against a float32 step (worst relative error over the
gradient vector, and how many of the repeats gave a non-finite gradient) and the median time. One thread is
what torchrun gives each process by default (``OMP_NUM_THREADS=1``)::

    python benchmarks/tiny_axis.py [--repeats 8] [--write]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from _common import interleaved, machine_facts, replace_section

from unetseg.fileio import write_text
from unetseg.models import build_model, layers
from unetseg.runtime import memory_format

GUARD = layers.TINY_AXIS  # the library's setting, restored after each switched-off measurement

HERE = Path(__file__).resolve().parent
# (name, dims, patch, base channels, depth): the deepest level's input is patch / 2**depth per axis.
CASES = [
    ("3D, patch 16x64x64, depth 3 (deepest 2x8x8)", 3, (16, 64, 64), 16, 3),
    ("3D, patch 16x96x96, depth 4 (deepest 1x6x6)", 3, (16, 96, 96), 16, 4),
    ("3D, patch 32x32x32, depth 4 (deepest 2x2x2)", 3, (32, 32, 32), 16, 4),
    ("2D, patch 64x64, depth 5 (deepest 2x2)", 2, (64, 64), 16, 5),
]


def step(model: torch.nn.Module, x: torch.Tensor, bf16: bool) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(x)
    out.float().square().mean().backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def grad_check(model: torch.nn.Module, x: torch.Tensor, tiny: int, repeats: int) -> dict[str, Any]:
    ref = step(model, x, bf16=False)
    layers.TINY_AXIS, worst, bad = tiny, 0.0, 0
    try:
        for _ in range(repeats):
            got = step(model, x, bf16=True)
            if not all(bool(torch.isfinite(g).all()) for g in got):
                bad += 1
                continue
            # over all gradients at once: a bias before a norm has a ~0 gradient and no meaningful own ratio
            diff = torch.cat([(g - r).flatten() for g, r in zip(got, ref, strict=True)])
            worst = max(worst, float(diff.norm() / torch.cat([r.flatten() for r in ref]).norm()))
    finally:
        layers.TINY_AXIS = GUARD
    return {"nonfinite": bad, "worst_rel_error": worst}


def timing(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> dict[str, float]:
    def run(tiny: int) -> Any:
        def go() -> None:
            layers.TINY_AXIS = tiny
            try:
                step(model, x, bf16=True)
            finally:
                layers.TINY_AXIS = GUARD
        return go

    res = interleaved({"fallback": run(GUARD), "plain bf16": run(0)}, warmup=2, repeats=repeats)
    return {k: v["median_s"] for k, v in res.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--write", action="store_true", help="write tiny_axis.json and BENCHMARKS.md")
    args = ap.parse_args()
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for name, dims, patch, base, depth in CASES:
            torch.manual_seed(0)
            model = build_model("unet", spatial_dims=dims, num_classes=3, base_channels=base, depth=depth)
            model.to(memory_format=memory_format(dims))  # as the trainer runs it (channels_last)
            x = torch.randn(2, 1, *patch).contiguous(memory_format=memory_format(dims))
            row = {"case": name, "threads": threads,
                   "fallback": grad_check(model, x, GUARD, args.repeats),
                   "plain": grad_check(model, x, 0, args.repeats),
                   "seconds": timing(model, x, args.repeats)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    if not args.write:
        return
    facts = machine_facts(2)
    write_text(HERE / "tiny_axis.json", json.dumps({"machine": facts, "rows": rows}, indent=1) + "\n")
    lines = [
        "## CPU bf16 convolutions of 1- or 2-long inputs: the float32 fallback (`benchmarks/tiny_axis.py`)",
        "",
        *(f"- {k}: {v}" for k, v in facts.items()),
        "",
        "One training step (forward + backward, batch 2, unet base 16, channels-last) in bf16, "
        f"{args.repeats} repeats each; gradients against the float32 step: worst relative error of the whole "
        "gradient vector (finite repeats) and repeats with a NaN/inf gradient. Time: median seconds per "
        "step, interleaved.",
        "",
        "| network | threads | fallback: non-finite / worst error | plain bf16: non-finite / worst error "
        "| fallback s | plain bf16 s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        f, p, s = r["fallback"], r["plain"], r["seconds"]
        lines.append(f"| {r['case']} | {r['threads']} | {f['nonfinite']} / {f['worst_rel_error']:.3g} | "
                     f"{p['nonfinite']} / {p['worst_rel_error']:.3g} | {s['fallback']:.3f} | "
                     f"{s['plain bf16']:.3f} |")
    replace_section(HERE.parent / "BENCHMARKS.md", "tiny-axis", "\n".join(lines))


if __name__ == "__main__":
    main()

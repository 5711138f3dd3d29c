"""The GPU part of ``benchmarks/gpu_check.sh`` (one CUDA device, a few minutes): bf16 training throughput of
unetseg's U-Net against MONAI's BasicUNet at the same widths, and sliding-window prediction in 2D and 3D,
in memory and streamed (throughput, peak GPU memory, peak host memory). Writes its section of
BENCHMARKS.md; without CUDA it says so and exits 0.

    python benchmarks/gpu_bench.py [--quick] [--markdown BENCHMARKS.md] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import machine_facts, peak_rss_mib, replace_section

from unetseg.fileio import write_text  # atomic: temp, fsync, replace

WIDTHS = (32, 64, 128, 256, 512)


def _sync() -> None:
    torch.cuda.synchronize()


def train_speed(model: torch.nn.Module, dims: int, size: int, batch: int, steps: int) -> dict[str, Any]:
    """Patches per second of bf16-autocast training steps (AdamW, cross-entropy) after a warm-up."""
    dev = torch.device("cuda")
    model = model.to(dev).to(memory_format=torch.channels_last if dims == 2 else torch.channels_last_3d)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 1, *(size,) * dims, device=dev)
    y = torch.randint(0, 2, (batch, *(size,) * dims), device=dev)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    _sync()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync()
    seconds = (time.perf_counter() - start) / steps
    return {"s_per_step": seconds, "patches_per_s": batch / seconds,
            "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30}


def training(quick: bool) -> dict[str, Any]:
    from unetseg.models import build_model

    out: dict[str, Any] = {}
    cases = [(2, 256 if quick else 512, 16), (3, 64 if quick else 128, 2)]
    for dims, size, batch in cases:
        nets = {"unetseg unet": lambda d=dims: build_model("unet", spatial_dims=d, base_channels=WIDTHS[0],
                                                           depth=len(WIDTHS) - 1)}
        try:
            from monai.networks.nets import BasicUNet

            nets["MONAI BasicUNet"] = lambda d=dims: BasicUNet(spatial_dims=d, in_channels=1, out_channels=2,
                                                               features=(*WIDTHS, WIDTHS[0]))
        except ImportError:
            out[f"{dims}D MONAI BasicUNet"] = {"error": "monai is not installed here"}
        for name, make in nets.items():
            torch.manual_seed(0)
            key = f"{dims}D {name}"
            try:
                out[key] = {"size": size, "batch": batch, **train_speed(make(), dims, size, batch,
                                                                        5 if quick else 20)}
            except Exception as e:  # noqa: BLE001 - one failed row must not hide the others
                out[key] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
            torch.cuda.empty_cache()
    return out


class _Array:
    """A numpy image behind the lazy-source interface of the streamed predictor."""

    path = "array"

    def __init__(self, image: np.ndarray) -> None:
        self.image, self.channels = image, image.shape[0]

    def shape(self, level: int = 0) -> tuple[int, ...]:
        return self.image.shape[1:]

    def read(self, region: Any, level: int = 0) -> np.ndarray:
        return self.image[(slice(None), *region)]


def sliding_window(quick: bool) -> dict[str, Any]:
    from unetseg.inference import Predictor
    from unetseg.inference.stream.predictor import StreamPredictor
    from unetseg.io.ngff import LabelZarrWriter
    from unetseg.models import build_model

    out: dict[str, Any] = {}
    cases = [(2, (4096, 4096) if quick else (16384, 16384), (512, 512)),
             (3, (192,) * 3 if quick else (384,) * 3, (128, 128, 128))]
    for dims, shape, tile in cases:
        torch.manual_seed(0)
        model = build_model("unet", spatial_dims=dims, base_channels=32, depth=4 if dims == 2 else 3)
        image = np.random.default_rng(0).standard_normal((1, *shape), dtype=np.float32)
        pred = Predictor(model, tile=tile, batch_size=8 if dims == 2 else 2, device="cuda", precision="bf16")
        pred.predict(image[(slice(None), *(slice(0, t) for t in tile))])  # warm-up: cuDNN, allocator
        for mode in ("in memory", "streamed"):
            torch.cuda.reset_peak_memory_stats()
            _sync()
            start = time.perf_counter()
            if mode == "in memory":
                pred.predict(image)
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    writer = LabelZarrWriter(Path(tmp) / "out.ome.zarr", shape)
                    StreamPredictor(pred).predict_to(_Array(image), writer, normalize=lambda r: r)
                    writer.finish()
            _sync()
            seconds = time.perf_counter() - start
            out[f"{dims}D {mode}"] = {"shape": list(shape), "tile": list(tile), "seconds": seconds,
                                      "mpx_per_s": float(np.prod(shape)) / seconds / 1e6,
                                      "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30,
                                      "peak_rss_gib_so_far": peak_rss_mib() / 1024}
        del image
    return out


def section(res: dict[str, Any]) -> str:
    facts = machine_facts(torch.get_num_threads())
    lines = ["## GPU check (`benchmarks/gpu_check.sh`)", "",
             "; ".join(f"{k}: {v}" for k, v in facts.items()), "",
             "### bf16 training (AdamW, cross-entropy), widths 32..512", "",
             "| network | patch | batch | s / step | patches / s | peak GPU GiB |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, r in res["training"].items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} | | | | |")
        else:
            lines.append(f"| {name} | {r['size']} | {r['batch']} | {r['s_per_step']:.4f} | "
                         f"{r['patches_per_s']:.1f} | {r['peak_gpu_gib']:.2f} |")
    lines += ["", "### Sliding window (unet base 32, bf16, Gaussian blending)", "",
              "| case | image | tile | seconds | Mpx / s | peak GPU GiB | peak host RSS GiB (so far) |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in res["window"].items():
        lines.append(f"| {name} | {'x'.join(map(str, r['shape']))} | {'x'.join(map(str, r['tile']))} | "
                     f"{r['seconds']:.1f} | {r['mpx_per_s']:.1f} | {r['peak_gpu_gib']:.2f} | "
                     f"{r['peak_rss_gib_so_far']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke test)")
    ap.add_argument("--markdown", type=Path, default=None, help="write the section into this file")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_bench: no CUDA device here; nothing measured")
        return 0
    torch.backends.cudnn.benchmark = True  # a benchmark process: the CLI's setting
    res = {"training": training(args.quick), "window": sliding_window(args.quick)}
    text = section(res)
    print(text)
    if args.json:
        write_text(args.json, json.dumps(res, indent=1))
    if args.markdown:
        replace_section(args.markdown, "gpu_check", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

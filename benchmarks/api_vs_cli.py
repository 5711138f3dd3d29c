"""The Python API against the command line on the same model and images (issue 12), side by side in one run.

A base-32, depth-4 U-Net checkpoint (random weights with BatchNorm statistics: the speed does not depend on
what it learnt) predicts N grey images of SIZE x SIZE three ways, each in a fresh process:

* ``cli``: ``unetseg predict --checkpoint CKPT --input IMAGES --output OUT`` (the allocator setting on),
* ``api``: ``unetseg.predict(model, image, config=config)`` for each image, model from ``load_checkpoint``
  (BatchNorm folded on an internal copy, channels_last where it helps),
* ``api-plain``: the same through an engine that runs the module as it is (what ``unetseg.predict`` did
  before: no folding), to show what the internal copy buys.

Per-image seconds after a warm-up image; prints one table row per way. Run it alone:

    python benchmarks/api_vs_cli.py --size 1024 --images 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
import numpy as np
import unetseg
from unetseg.io.images import list_images, read_image
from unetseg.inference import Predictor, TorchEngine, predictor_for
from unetseg.data.normalize import normalize
way, ckpt, images = sys.argv[1], sys.argv[2], sys.argv[3]
model, config = unetseg.load_checkpoint(ckpt)
files = list_images(images)
arrays = [read_image(f)[0][0] for f in files]
if way == "api":
    run = lambda a: unetseg.predict(model, a, config=config)
else:
    engine = TorchEngine(model, precision="auto", own=False, channels_last="off")
    pred = predictor_for(engine, config)
    run = lambda a: pred.predict(normalize(a[None], config.data))
run(arrays[0])
t0 = time.perf_counter()
for a in arrays[1:]:
    run(a)
print("RESULT", json.dumps({"seconds_per_image": (time.perf_counter() - t0) / (len(arrays) - 1)}))
"""


def make_checkpoint(folder: Path) -> Path:
    import torch

    from unetseg.checkpoint import save_checkpoint
    from unetseg.config import Config
    from unetseg.models import build_model

    cfg = Config()
    cfg.data.patch_size, cfg.data.class_values = [256, 256], [0, 255]
    torch.manual_seed(0)
    model = build_model("unet", base_channels=32, depth=4).train()
    with torch.no_grad():  # BatchNorm statistics of data, as after training
        for _ in range(2):
            model(torch.randn(2, 1, 128, 128))
    return save_checkpoint(folder, model.eval(), cfg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--images", type=int, default=4)
    args = ap.parse_args()
    import numpy as np

    from unetseg.io.images import write_image

    env = {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count())}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ckpt = make_checkpoint(root / "ckpt")
        rng = np.random.default_rng(0)
        for i in range(args.images + 1):
            write_image(
                root / "images" / f"im{i}.png", (rng.random((args.size, args.size)) * 255).astype(np.uint8)
            )
        rows = {}
        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "unetseg",
                "predict",
                "--checkpoint",
                str(ckpt),
                "--input",
                str(root / "images" / "im0.png"),
                "--output",
                str(root / "warm"),
            ],
            env=env,
            check=True,
            capture_output=True,
        )
        warm = time.perf_counter() - t0  # start-up + one image
        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "unetseg",
                "predict",
                "--checkpoint",
                str(ckpt),
                "--input",
                str(root / "images"),
                "--output",
                str(root / "out"),
            ],
            env=env,
            check=True,
            capture_output=True,
        )
        rows["cli"] = (time.perf_counter() - t0 - warm) / args.images  # the start-up and one image subtracted
        for way in ("api", "api-plain"):
            out = subprocess.run(
                [sys.executable, "-c", CHILD, way, str(ckpt), str(root / "images")],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            rows[way] = json.loads(out.split("RESULT ", 1)[1])["seconds_per_image"]
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} threads, {args.size}x{args.size}, "
        f"{args.images} images, unet base 32 depth 4, tile 256"
    )
    print("| way | s / image | vs cli |\n| --- | --- | --- |")
    for way, sec in rows.items():
        print(f"| {way} | {sec:.2f} | {rows['cli'] / sec:.2f}x |")


if __name__ == "__main__":
    main()

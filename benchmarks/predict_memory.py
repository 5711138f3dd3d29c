"""Peak host memory of sliding-window prediction on one large 2D image (default 8192x8192).

Predicts a random image with a small U-Net through :class:`unetseg.inference.Predictor` and prints the
process's peak resident memory (``ru_maxrss``) next to the floor the design allows: the float32 image,
one float32 ``(classes, H, W)`` accumulator and the uint8 labels. Run it alone (it is not a unit test):

    python benchmarks/predict_memory.py --size 8192 8192
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from unetseg.inference import Predictor
from unetseg.models import build_model


def rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, nargs=2, default=[8192, 8192])
    ap.add_argument("--tile", type=int, nargs=2, default=[512, 512])
    ap.add_argument("--overlap", type=float, default=0.25)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--base-channels", type=int, default=8)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--classes", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--probabilities", action="store_true", help="also return the probabilities")
    args = ap.parse_args()

    torch.manual_seed(0)
    model = build_model("unet", base_channels=args.base_channels, depth=args.depth, num_classes=args.classes)
    image = np.random.default_rng(0).standard_normal((1, *args.size), dtype=np.float32)
    predictor = Predictor(model, tile=args.tile, overlap=args.overlap, batch_size=args.batch_size,
                          device=args.device, precision=args.precision)
    plan = predictor.plan(args.size)
    before = rss_mib()
    start = time.perf_counter()
    if args.probabilities:
        labels, _ = predictor.predict_both(image)
    else:
        labels = predictor.predict(image)
    seconds = time.perf_counter() - start
    h, w = args.size
    floor = (image.nbytes + 4 * max(2, args.classes) * h * w + labels.nbytes) / 2**20
    print(f"image {h}x{w}, unet base {args.base_channels} depth {args.depth}, {args.classes} classes, "
          f"tile {args.tile}, overlap {args.overlap}: {plan.num_tiles} tiles on {predictor.engine.device}")
    print(f"time {seconds:.1f} s; peak RSS {rss_mib():.0f} MiB (before predicting: {before:.0f} MiB; "
          f"image + accumulator + labels = {floor:.0f} MiB)")


if __name__ == "__main__":
    main()

"""Cellpose 3 from scratch on a folder of images and instance masks, for ``benchmarks/instances.py``; runs in
``.venv-cellpose`` (``cellpose<4`` on the project's CPU torch; ``make bench`` builds it). Cellpose 4's SAM
encoder is too slow on a CPU, hence 3.

``train_seg`` has no clock, so one calibration epoch is timed first (on a copy of the network), and the
real run gets as many epochs as fit in the minutes left (its learning-rate schedule is its own: warm-up,
then a step-down near the end). Cellpose's defaults for training from scratch otherwise (``cyto`` style
network with random weights, SGD, learning rate 0.2, batch 8, images rescaled to the labels' mean
diameter). Predictions use that diameter and are written as 16-bit PNG instance labels.

    .venv-cellpose/bin/python benchmarks/peer_cellpose.py --train DIR --predict DIR --out DIR --minutes 10
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _peer_io import Clock, images, pairs, peer_args, write_labels  # noqa: E402


def main() -> None:
    args = peer_args(__doc__.splitlines()[0])
    clock = Clock(args.minutes)

    from cellpose import models, train

    x, y = pairs(args.train)
    save = args.out.parent / "cellpose_model"
    save.mkdir(parents=True, exist_ok=True)
    model = models.CellposeModel(gpu=False, pretrained_model=False, model_type=None)
    kw = {"channels": [0, 0], "learning_rate": 0.2, "weight_decay": 1e-5, "SGD": True, "batch_size": 8,
          "min_train_masks": 1, "save_path": str(save)}
    t0 = time.monotonic()
    probe = copy.deepcopy(model.net)
    train.train_seg(probe, train_data=x, train_labels=y, n_epochs=1, model_name="calibration", **kw)
    per_epoch = time.monotonic() - t0
    epochs = max(1, math.floor(clock.left() / per_epoch))
    start = time.monotonic()
    out = train.train_seg(model.net, train_data=x, train_labels=y, n_epochs=epochs, model_name="cellpose",
                          **kw)
    trained = time.monotonic() - start
    path = out[0] if isinstance(out, (tuple, list)) else out
    model = models.CellposeModel(gpu=False, pretrained_model=str(path))
    diameter = float(getattr(model, "diam_labels", 30.0) or 30.0)
    for name, im in images(args.predict):
        labels = model.eval(im, channels=[0, 0], diameter=diameter)[0]
        write_labels(args.out / f"{name}.png", labels)
    print(json.dumps({"epochs": epochs, "calibration_seconds": round(per_epoch, 1),
                      "train_seconds": round(trained, 1), "diameter": diameter}))


if __name__ == "__main__":
    main()

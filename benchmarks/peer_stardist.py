"""StarDist 2D from scratch on a folder of images and instance masks, for ``benchmarks/instances.py``; runs in
``.venv-stardist`` (TensorFlow, stardist, csbdeep; ``make bench`` builds it).

Training stops when the minutes are spent (a Keras callback checks the clock after every batch); the
probability and NMS thresholds are then optimised on a tenth of the training images (StarDist's own
workflow; its seconds are reported, not counted in the budget). Settings are StarDist's example notebook
for DSB2018 (32 rays, grid 2x2, 256x256 patches, batch 4), the images normalised to their 1-99.8th
percentiles. Predictions are written as 16-bit PNG instance labels.

    .venv-stardist/bin/python benchmarks/peer_stardist.py --train DIR --predict DIR --out DIR --minutes 10
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _peer_io import Clock, images, pairs, peer_args, write_labels  # noqa: E402


def _pad(image: np.ndarray, labels: np.ndarray, patch: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    short = [(0, max(0, p - n)) for p, n in zip(patch, image.shape, strict=True)]
    if not any(after for _, after in short):
        return image, labels
    return np.pad(image, short, constant_values=float(np.median(image))), np.pad(labels, short)


def main() -> None:
    args = peer_args(__doc__.splitlines()[0])
    clock = Clock(args.minutes)

    import tensorflow as tf
    from csbdeep.utils import normalize
    from stardist import fill_label_holes
    from stardist.models import Config2D, StarDist2D

    x, y = pairs(args.train)
    x = [normalize(im, 1, 99.8, axis=(0, 1)) for im in x]
    y = [fill_label_holes(m) for m in y]
    patch = (256, 256)
    # StarDist samples patches inside each image: smaller ones are padded with background
    x, y = zip(*(_pad(im, m, patch) for im, m in zip(x, y, strict=True)), strict=True)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    n_val = max(1, len(x) // 10)
    val, train = order[:n_val], order[n_val:]
    conf = Config2D(n_rays=32, grid=(2, 2), n_channel_in=1, train_patch_size=patch, train_batch_size=4)
    model = StarDist2D(conf, name="stardist", basedir=str(args.out.parent / "stardist_model"))

    class TimeLimit(tf.keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if clock.left() <= 0:
                self.model.stop_training = True

    model.prepare_for_training()
    model.callbacks.append(TimeLimit())
    start = time.monotonic()
    history = model.train([x[i] for i in train], [y[i] for i in train],
                          validation_data=([x[i] for i in val], [y[i] for i in val]),
                          epochs=10_000, steps_per_epoch=50)
    epochs = len(history.history.get("loss", []))
    trained = time.monotonic() - start
    t0 = time.monotonic()
    model.optimize_thresholds([x[i] for i in val], [y[i] for i in val])
    tuned = time.monotonic() - t0
    for name, im in images(args.predict):
        labels, _ = model.predict_instances(normalize(im, 1, 99.8, axis=(0, 1)))
        write_labels(args.out / f"{name}.png", labels)
    print(json.dumps({"epochs_of_50_steps": epochs, "train_seconds": round(trained, 1),
                      "threshold_seconds": round(tuned, 1)}))


if __name__ == "__main__":
    main()

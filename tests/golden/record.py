"""Record (or check) the behaviour goldens: a fixed-seed, step-bounded tiny training on CPU, its predictions
and its evaluation JSON. Run once before a refactor: ``python tests/golden/record.py``; the test
``tests/test_golden.py`` re-runs the same pipeline and compares (bit-identical labels, metrics within 1e-6).

Everything runs in fp32, channels-first, one thread, no DataLoader workers, so the numbers depend only on
the code and not on the CPU's fast paths.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent


def run_pipeline(work: Path) -> dict[str, Any]:
    """Train, predict and evaluate into ``work``; return everything the goldens hold."""
    import torch

    torch.set_num_threads(1)
    import unetseg
    from unetseg.data.synthetic import make_dataset
    from unetseg.io.images import read_image, read_mask

    train_dir = make_dataset(work / "train", n=6, size=(64, 64), kind="cells", seed=11)
    test_dir = make_dataset(work / "test", n=2, size=(72, 60), kind="cells", seed=12)
    cfg = _config(train_dir, work / "run")
    _train(cfg)
    _predict(work / "run", test_dir / "images", work / "pred")
    result = _evaluate(work / "run", test_dir, work / "eval.json")
    model, config = unetseg.load_checkpoint(work / "run")
    image = read_image(sorted((test_dir / "images").iterdir())[0])[0][0]
    api_labels = unetseg.predict(model, image, config=config, precision="fp32")
    rows = [line.split(",") for line in (work / "run" / "metrics.csv").read_text().splitlines()]
    keep = [i for i, name in enumerate(rows[0]) if name not in ("patches_per_s", "minutes")]  # clocks
    metrics = [[r[i] for i in keep] for r in rows]
    return {
        "labels": {p.name: np.asarray(read_mask(p)[0]) for p in sorted((work / "pred").glob("*.png"))},
        "api_labels": api_labels,
        "evaluation": {k: result[k] for k in ("mean", "mean_foreground_dice", "num_images")}
        | {"per_image": [{k: v for k, v in r.items() if k != "overlay"} for r in result["per_image"]]},
        "metrics_csv": metrics,
    }


def _config(data: Path, out: Path):
    from unetseg.config import Config

    cfg = Config()
    cfg.data.data = str(data)
    cfg.data.patch_size = [32, 32]
    cfg.data.num_workers = 0
    cfg.data.val_fraction = 0.34
    cfg.model.base_channels = 4
    cfg.model.depth = 2
    cfg.train.out = str(out)
    cfg.train.epochs = 3
    cfg.train.iters_per_epoch = 6
    cfg.train.lr = 5e-3
    cfg.train.batch_size = 2
    cfg.train.precision = "fp32"
    cfg.train.channels_last = "off"
    cfg.train.seed = 5
    # the goldens lock the pipeline as recorded; the held-out temperature and post-processing chosen at the
    # end of training (issue 24) change the predictions on purpose and have their own tests
    cfg.train.calibrate = False
    return cfg


def _train(cfg) -> None:
    from unetseg.training import train

    train(cfg, quiet=True)


def _predict(run: Path, images: Path, out: Path) -> None:
    from unetseg.inference import predict_files

    predict_files(run, images, out, device="cpu", precision="fp32", progress=False)


def _evaluate(run: Path, data: Path, out: Path) -> dict:
    from unetseg.evaluation import evaluate

    return evaluate(run, data, out_json=out, device="cpu", precision="fp32", quiet=True)


def save(golden: dict[str, Any], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / "labels.npz", api=golden["api_labels"], **golden["labels"])
    (folder / "evaluation.json").write_text(json.dumps(golden["evaluation"], indent=1))
    (folder / "metrics.json").write_text(json.dumps(golden["metrics_csv"], indent=1))


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        save(run_pipeline(Path(tmp)), Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)

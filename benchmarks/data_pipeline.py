"""How many augmented training patches per second the data pipeline delivers (2D, synthetic cells).

Builds a synthetic dataset of 512x512 cell images, runs ``prepare_data`` and a ``PatchDataset`` with the
default augmentation (and, with ``--all``, every augmentation at probability 1), and times a DataLoader
with 0 and 2 workers. Prints one markdown table row per setting::

    python benchmarks/data_pipeline.py [--samples 384] [--patch 256] [--batch-size 8] [--all]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from unetseg.config import AugmentConfig, Config
from unetseg.data.prepare import prepare_data
from unetseg.data.sampling import PatchDataset
from unetseg.data.synthetic import make_dataset

ALL_ON = {k: 1.0 for k in ("flip_prob", "rot90_prob", "affine_prob", "elastic_prob", "brightness_prob",
                           "contrast_prob", "gamma_prob", "noise_prob", "blur_prob")}


def samples_per_second(ds: PatchDataset, workers: int, batch_size: int) -> float:
    """Patches/s of one pass over ``ds`` (the first batch, worker start-up included, is not timed)."""
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, drop_last=True)
    it = iter(loader)
    next(it)
    start, n = time.perf_counter(), 0
    for image, _ in it:
        n += image.shape[0]
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=384)
    ap.add_argument("--patch", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--all", action="store_true", help="also time every augmentation at probability 1")
    args = ap.parse_args()
    torch.set_num_threads(1)  # what a DataLoader worker gets
    with tempfile.TemporaryDirectory() as tmp:
        root = make_dataset(Path(tmp) / "cells", n=8, size=(512, 512), kind="cells", seed=0)
        cfg = Config()
        cfg.data.data = str(root)
        cfg.data.patch_size = [args.patch, args.patch]
        prep = prepare_data(cfg)
        settings = {"default augmentation": AugmentConfig()}
        if args.all:
            settings["every augmentation (p=1)"] = AugmentConfig(**ALL_ON)
        print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
              f"torch {torch.__version__}")
        print("| pipeline | patch | workers=0 (samples/s) | workers=2 (samples/s) |")
        print("| --- | --- | --- | --- |")
        for name, aug in settings.items():
            cases = prep.train_cases + prep.val_cases
            ds = PatchDataset(cases, (args.patch, args.patch), data_cfg=cfg.data, augment_cfg=aug,
                              class_map=prep.class_map, samples_per_epoch=args.samples, seed=0)
            rates = [samples_per_second(ds, w, args.batch_size) for w in (0, 2)]
            print(f"| {name} | {args.patch}x{args.patch} | {rates[0]:.0f} | {rates[1]:.0f} |")


if __name__ == "__main__":
    main()

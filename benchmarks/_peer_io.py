"""Reading and writing for the peer scripts (``peer_stardist.py``, ``peer_cellpose.py``), which run in their
own virtual environments without unetseg: grey images, instance masks, the training clock."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


def stem(path: Path) -> str:
    return path.name.split(".")[0]


def read(path: Path) -> np.ndarray:
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        return np.asarray(tifffile.imread(path))
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


def grey(image: np.ndarray) -> np.ndarray:
    """RGB(A) -> the mean of the colour channels; grey as it is (float32)."""
    image = np.asarray(image, dtype=np.float32)
    return image[..., :3].mean(-1) if image.ndim == 3 else image


def pairs(folder: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Grey images and integer instance masks of a dataset folder (``images/`` + ``masks/``)."""
    masks = {stem(p): p for p in (folder / "masks").iterdir() if p.suffix.lower() in SUFFIXES}
    images, labels = [], []
    for p in sorted((folder / "images").iterdir()):
        if p.suffix.lower() in SUFFIXES and stem(p) in masks:
            images.append(grey(read(p)))
            labels.append(read(masks[stem(p)]).astype(np.int32))
    return images, labels


def images(folder: Path) -> list[tuple[str, np.ndarray]]:
    return [(stem(p), grey(read(p))) for p in sorted(folder.iterdir()) if p.suffix.lower() in SUFFIXES]


def write_labels(path: Path, labels: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(labels).astype(np.uint16)).save(path)


class Clock:
    """Seconds left of a training budget that started when the clock was made."""

    def __init__(self, minutes: float) -> None:
        self.end = time.monotonic() + 60.0 * minutes

    def left(self) -> float:
        return self.end - time.monotonic()


def peer_args(description: str) -> argparse.Namespace:
    """The command line both peer scripts take: ``--train DIR --predict DIR --out DIR --minutes M``."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--train", type=Path, required=True)
    ap.add_argument("--predict", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--minutes", type=float, default=10.0)
    return ap.parse_args()

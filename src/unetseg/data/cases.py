"""The cases of a dataset folder (the contract layout or nnU-Net raw): finding and reading them (splitting:
:mod:`unetseg.data.splits`).

```
DATA/images/<stem>.<ext>    png, tif, tiff, jpg, jpeg (2D); nii, nii.gz, tif (3D)
DATA/masks/<stem>.<ext>     same stem; integer labels, same spatial size (png, tif, tiff, nii, nii.gz)
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unetseg.data import nnunet
from unetseg.errors import DataError
from unetseg.io.images import (
    IMAGE_SUFFIXES,
    MASK_SUFFIXES,
    SkipLog,
    channel_files,
    list_images,
    raise_or_skip,
    read_channels,
    read_mask,
    stem_of,
    suffix_of,
    unsupported,
)


@dataclass
class Case:
    """One sample: its name (the file stem), its image file(s) (one per channel for nnU-Net data) and its
    mask (None when unlabelled)."""

    name: str
    image_paths: list[Path] = field(default_factory=list)
    mask_path: Path | None = None

    @property
    def files(self) -> list[Path]:
        """Its image file(s) and its mask, when it has one."""
        return [*self.image_paths, *([self.mask_path] if self.mask_path else [])]


def _by_stem(folder: Path, allowed: tuple[str, ...], skip: SkipLog | None) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if not f.is_file() or f.name.startswith("."):
            continue
        if suffix_of(f) not in allowed:
            raise_or_skip(unsupported(f, allowed), skip)
            continue
        stem = stem_of(f)
        if stem in out:
            raise_or_skip(
                DataError(f"{f}: two files for {stem!r} ({out[stem].name}, {f.name}); keep one"), skip
            )
            out.pop(stem)
            continue
        out[stem] = f
    return out


def find_cases(
    folder: str | Path, *, require_masks: bool = True, skip_bad: bool = False, skip: SkipLog | None = None
) -> list[Case]:
    """List the cases of a dataset folder, sorted by name.

    Args:
        folder: ``DATA`` with ``images/`` and ``masks/``, an nnU-Net raw dataset (``imagesTr/``,
            ``labelsTr/``), or (with ``require_masks=False``) a plain folder of images.
        require_masks: every image needs a mask, and every mask an image.
        skip_bad: report bad files (one line each, on stderr) and leave them out instead of raising.
        skip: the :class:`SkipLog` that collects skipped files (a new one when None and ``skip_bad``).
    Raises:
        DataError: missing folder, no images, unsupported file, missing mask, mask without image.
    """
    root = Path(folder)
    if skip_bad and skip is None:
        skip = SkipLog()
    log = skip if skip_bad else None
    if not root.is_dir():
        raise DataError(f"{root}: {'not a folder' if root.exists() else 'no such folder'}")
    if nnunet.is_nnunet_dataset(root):
        found = nnunet.find_nnunet_cases(root, require_masks=require_masks, skip=log)
        cases = [Case(name, paths, mask) for name, paths, mask in found]
        return _nonempty(cases, root / "imagesTr")
    img_dir, mask_dir = root / "images", root / "masks"
    if not img_dir.is_dir():
        if require_masks:
            raise DataError(f"{root}: expected images/ and masks/ subfolders (or nnU-Net imagesTr/)")
        return [Case(stem_of(p), [p], None) for p in list_images(root)]
    images = _by_stem(img_dir, IMAGE_SUFFIXES, log)
    if not mask_dir.is_dir():
        if require_masks:
            raise DataError(f"{mask_dir}: folder not found (expected masks/<stem>.<ext> for each image)")
        masks: dict[str, Path] = {}
    else:
        masks = _by_stem(mask_dir, MASK_SUFFIXES, log)
    cases = []
    for stem, path in images.items():
        mask = masks.get(stem)
        if mask is None and require_masks:
            raise_or_skip(DataError(f"{path}: no mask found (expected masks/{stem}.<ext>)"), log)
            continue
        cases.append(Case(stem, [path], mask))
    if require_masks:
        for stem, path in masks.items():
            if stem not in images:
                raise_or_skip(DataError(f"{path}: mask without an image (no images/{stem}.<ext>)"), log)
    return _nonempty(cases, img_dir)


def _nonempty(cases: list[Case], folder: Path) -> list[Case]:
    if not cases:
        raise DataError(f"{folder}: no usable images found (supported: {', '.join(IMAGE_SUFFIXES)})")
    return cases


def read_pair(
    case: Case, *, read_labels: bool = True, max_bytes: float | None = None
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Read a case as stored: image ``(C, *spatial)`` float32 (channel files stacked), mask or None, meta.

    Checks that channel files agree in size, that the mask has the image's dimensionality and size, and
    resolves an unlabelled TIFF plane axis as channels when the mask is 2D. Raises DataError naming the file.
    """
    paths = case.image_paths if len(case.image_paths) > 1 else channel_files(case.image_paths[0])
    image, meta = read_channels(paths, max_bytes=max_bytes)
    if not read_labels or case.mask_path is None:
        return image, None, meta
    mask, mask_meta = read_mask(case.mask_path, max_bytes=max_bytes)
    first = case.image_paths[0].name
    if meta.get("planes_unlabelled") and mask.ndim == 2 and image.ndim == 4 and image.shape[0] == 1:
        image = image[0]  # a multi-page TIFF whose mask is 2D: the pages are channels
        meta = {**meta, "spatial_dims": 2, "spacing": meta["spacing"][1:], "shape": image.shape[1:]}
    if mask.ndim != image.ndim - 1:
        raise DataError(
            f"{case.mask_path}: mask is {mask.ndim}D {mask.shape} but image {first} is "
            f"{image.ndim - 1}D {image.shape[1:]}"
        )
    if mask.shape != image.shape[1:]:
        raise DataError(
            f"{case.mask_path}: mask size {mask.shape} does not match image {first} size {image.shape[1:]}"
        )
    meta["channels"] = int(image.shape[0])
    meta["mask_dtype"] = mask_meta.get("dtype")
    return image, mask, meta

"""Finding the image/mask pairs of a dataset folder (the contract layout or nnU-Net raw).

```
DATA/images/<stem>.<ext>    png, tif, tiff, jpg, jpeg (2D); nii, nii.gz, tif (3D)
DATA/masks/<stem>.<ext>     same stem; integer labels, same spatial size (png, tif, tiff, nii, nii.gz)
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from unetseg.data import nnunet
from unetseg.data.io import IMAGE_SUFFIXES, MASK_SUFFIXES, SkipLog, list_images, stem_of, suffix_of
from unetseg.errors import DataError


@dataclass
class Case:
    """One sample: its name (the file stem), its image file(s) (one per channel for nnU-Net data) and its
    mask (None when unlabelled)."""

    name: str
    image_paths: list[Path] = field(default_factory=list)
    mask_path: Path | None = None


def _by_stem(folder: Path, allowed: tuple[str, ...], skip: SkipLog | None) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if not f.is_file() or f.name.startswith("."):
            continue
        suffix = suffix_of(f)
        if suffix not in allowed:
            what = suffix or "(no extension)"
            extra = " (JPEG is lossy: save masks as PNG or TIFF)" if suffix in (".jpg", ".jpeg") else ""
            msg = f"{f}: unsupported file type {what}{extra}; supported: {', '.join(allowed)}"
            _fail(DataError(msg), skip)
            continue
        stem = stem_of(f)
        if stem in out:
            _fail(DataError(f"{f}: two files for {stem!r} ({out[stem].name}, {f.name}); keep one"), skip)
            out.pop(stem)
            continue
        out[stem] = f
    return out


def _fail(err: DataError, skip: SkipLog | None) -> None:
    if skip is None:
        raise err
    skip.skip(err)


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
            _fail(DataError(f"{path}: no mask found (expected masks/{stem}.<ext>)"), log)
            continue
        cases.append(Case(stem, [path], mask))
    if require_masks:
        for stem, path in masks.items():
            if stem not in images:
                _fail(DataError(f"{path}: mask without an image (no images/{stem}.<ext>)"), log)
    return _nonempty(cases, img_dir)


def _nonempty(cases: list[Case], folder: Path) -> list[Case]:
    if not cases:
        raise DataError(f"{folder}: no usable images found (supported: {', '.join(IMAGE_SUFFIXES)})")
    return cases

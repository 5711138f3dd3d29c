"""The nnU-Net raw dataset layout (Isensee et al., Nature Methods 18:203-211, 2021).

```
DatasetXXX_Name/
  dataset.json        channel_names, labels, numTraining, file_ending
  imagesTr/CASE_0000.nii.gz  CASE_0001.nii.gz ...   one file per input channel
  labelsTr/CASE.nii.gz
  imagesTs/           optional, unlabelled
```
The older Medical Segmentation Decathlon flavour (``imagesTr/CASE.nii.gz`` holding all channels in a 4D
volume, no ``_0000`` suffix) is read too. Region-based labels (lists of values) are not supported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unetseg.errors import DataError
from unetseg.io.images import (
    IMAGE_SUFFIXES,
    MASK_SUFFIXES,
    SkipLog,
    channel_index,
    raise_or_skip,
    suffix_of,
    unsupported,
)


def is_nnunet_dataset(folder: str | Path) -> bool:
    """True when ``folder`` holds an nnU-Net raw dataset (an ``imagesTr`` folder)."""
    return (Path(folder) / "imagesTr").is_dir()


def read_dataset_json(folder: str | Path) -> dict[str, Any] | None:
    """The parsed and checked ``dataset.json`` of an nnU-Net dataset, or None when there is none.

    ``labels`` may be nnU-Net v2's ``{"background": 0, "tumour": 1}`` or the Decathlon's
    ``{"0": "background", "1": "tumour"}``; ``channel_names`` (or ``modality``) a mapping of channel index to
    name. Anything else is one DataError line naming the file and the key.
    """
    p = Path(folder) / "dataset.json"
    if not p.is_file():
        return None
    try:
        d = json.loads(p.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{p}: not valid JSON ({' '.join(str(e).split())[:120]})") from None
    if not isinstance(d, dict):
        raise DataError(f"{p}: expected a JSON object at the top level, got {type(d).__name__}")
    for key in ("labels", "channel_names", "modality"):
        if key in d and not isinstance(d[key], dict):
            raise DataError(f"{p}: {key} must be an object (name -> value), got {type(d[key]).__name__}")
    if "file_ending" in d and not isinstance(d["file_ending"], str):
        raise DataError(f'{p}: file_ending must be text such as ".nii.gz"')
    return d


def class_values_from_json(
    info: dict[str, Any] | None, source: str | Path = "dataset.json"
) -> list[float] | None:
    """The label values of ``dataset.json`` in class order (v2 ``name: value``, Decathlon ``value: name``)."""
    labels = (info or {}).get("labels")
    if not labels:
        return None
    decathlon = all(isinstance(v, str) for v in labels.values())
    values = list(labels.keys()) if decathlon else list(labels.values())
    out = []
    for v in values:
        if isinstance(v, (list, tuple)):
            raise DataError(
                f"{source}: labels: region-based labels ({v!r}) are not supported; give --classes"
            )
        try:
            if isinstance(v, bool):
                raise TypeError
            out.append(float(v))
        except (TypeError, ValueError):
            raise DataError(f"{source}: labels: value {v!r} is not a number") from None
    return sorted(set(out))


def _group_channels(files: list[Path], skip: SkipLog | None) -> dict[str, list[Path]]:
    groups: dict[str, dict[int, Path]] = {}
    for f in files:
        ch = channel_index(f)
        case, k = ch if ch else (f.name[: -len(suffix_of(f))], 0)
        groups.setdefault(case, {})[k] = f
    out: dict[str, list[Path]] = {}
    for case, chans in sorted(groups.items()):
        missing = [k for k in range(max(chans) + 1) if k not in chans]
        if missing:
            raise_or_skip(
                DataError(
                    f"{chans[min(chans)]}: case {case} lacks channel file(s) "
                    + ", ".join(f"_{k:04d}" for k in missing)
                ),
                skip,
            )
            continue
        out[case] = [chans[k] for k in sorted(chans)]
    return out


def find_nnunet_cases(
    folder: str | Path, *, require_masks: bool = True, skip: SkipLog | None = None
) -> list[tuple[str, list[Path], Path | None]]:
    """``(case, channel files, label file or None)`` for every case in ``imagesTr``, sorted by name.

    Checks that every case has all its channel files (and as many as ``dataset.json`` names) and a label
    in ``labelsTr``, and that no label lacks its images. With ``skip`` bad cases are reported and left
    out instead of raising DataError.
    """
    root = Path(folder)
    info = read_dataset_json(root)
    img_dir, lab_dir = root / "imagesTr", root / "labelsTr"
    files = sorted(f for f in img_dir.iterdir() if f.is_file() and not f.name.startswith("."))
    for f in files:
        if suffix_of(f) not in IMAGE_SUFFIXES:
            raise_or_skip(unsupported(f, IMAGE_SUFFIXES), skip)
    files = [f for f in files if suffix_of(f) in IMAGE_SUFFIXES]
    names = {(channel_index(f) or (f.name[: -len(suffix_of(f))],))[0] for f in files}
    groups = _group_channels(files, skip)
    if not groups:
        raise DataError(f"{img_dir}: no images found (supported: {', '.join(IMAGE_SUFFIXES)})")
    n_channels = len((info or {}).get("channel_names") or (info or {}).get("modality") or {}) or None
    labels: dict[str, Path] = {}
    if lab_dir.is_dir():
        for f in sorted(lab_dir.iterdir()):
            if f.is_file() and not f.name.startswith(".") and suffix_of(f) in MASK_SUFFIXES:
                labels[f.name[: -len(suffix_of(f))]] = f
    elif require_masks:
        raise DataError(f"{lab_dir}: folder not found (expected labelsTr/<case>.<ext> for each case)")
    cases = []
    for case, paths in groups.items():
        if n_channels and len(paths) != n_channels and channel_index(paths[0]) is not None:
            raise_or_skip(
                DataError(
                    f"{paths[0]}: case {case} has {len(paths)} channel file(s), dataset.json "
                    f"names {n_channels}"
                ),
                skip,
            )
            continue
        label = labels.get(case)
        if label is None and require_masks:
            raise_or_skip(
                DataError(f"{paths[0]}: no label found (expected {lab_dir.name}/{case}.<ext>)"), skip
            )
            continue
        cases.append((case, paths, label))
    for name, f in labels.items():
        if name not in names and require_masks:
            raise_or_skip(
                DataError(f"{f}: label without an image (no {img_dir.name}/{name}_0000.<ext>)"), skip
            )
    return cases

"""``prepare_data``: read and check a whole dataset once, before training starts.

It finds the pairs, reads every image and mask (so a bad file stops the run at once, with one line
naming it, not hours later), works out the class map, the channels and dimensionality, splits off the
validation cases, keeps the decoded cases in memory when they fit (``data.cache``), and picks a patch size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unetseg.config import Config
from unetseg.data import nnunet
from unetseg.data.dataset import (
    MAX_INFERRED_CLASSES,
    CaseCache,
    ClassMap,
    Normalizer,
    cache_budget,
    case_cache,
    read_pair,
    split_cases,
    unique_values,
)
from unetseg.data.io import SkipLog
from unetseg.data.layout import Case, find_cases
from unetseg.errors import ConfigError, DataError

PATCH_BUDGET = {2: 256 * 256, 3: 96 * 96 * 96}  # voxels of the default patch
PATCH_CAP = {2: 256, 3: 192}  # per axis


@dataclass
class PreparedData:
    """What :func:`prepare_data` found: the cases of each split and the facts the model is built from.
    ``default_patch_size`` is the size :func:`default_patch_size` picks (``cfg.data.patch_size`` is set to it
    when it was None)."""

    train_cases: list[Case]
    val_cases: list[Case]
    class_map: ClassMap
    in_channels: int
    spatial_dims: int
    default_patch_size: tuple[int, ...]
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    skipped: int = 0

    def summary(self) -> str:
        """One line for the log."""
        return (f"{len(self.train_cases)} training / {len(self.val_cases)} validation case(s), "
                f"{self.spatial_dims}D, {self.in_channels} channel(s), class values "
                f"{ClassMap._fmt(self.class_map.values)}, patch {list(self.default_patch_size)}"
                + (f", {self.skipped} bad pair(s) skipped" if self.skipped else ""))


@dataclass
class _Scan:
    case: Case
    shape: tuple[int, ...]
    channels: int
    values: np.ndarray
    arrays: tuple | None  # (normalised image, raw mask, meta) when kept for the cache


def default_patch_size(shapes: list[tuple[int, ...]], multiple: int = 16) -> tuple[int, ...]:
    """A patch size for training: the median image size rounded down to ``multiple``, capped per axis
    (256 in 2D, 192 in 3D) and shrunk on its largest axis until it holds at most 256^2 (2D) / 96^3 (3D)
    voxels. Smaller images are padded to it by the sampler."""
    d = len(shapes[0])
    median = np.median(np.asarray(shapes, dtype=np.float64), axis=0)
    size = [min(max(multiple, int(m) // multiple * multiple), PATCH_CAP[d]) for m in median]
    while int(np.prod(size)) > PATCH_BUDGET[d] and max(size) > multiple:
        size[int(np.argmax(size))] -= multiple
    return tuple(size)


def _scan(cases: list[Case], norm: Normalizer, skip: SkipLog | None, budget: float, used: list[float]
          ) -> list[_Scan]:
    out = []
    for case in cases:
        try:
            image, mask, meta = read_pair(case)
        except DataError as e:
            if skip is None:
                raise
            skip.skip(e)
            continue
        keep = used[0] + image.nbytes + mask.nbytes <= budget
        if keep:
            used[0] += image.nbytes + mask.nbytes
        out.append(_Scan(case, tuple(mask.shape), int(image.shape[0]), unique_values(mask),
                         (norm(image), mask, meta) if keep else None))
    return out


def _consistent(scans: list[_Scan], ref: _Scan, skip: SkipLog | None) -> list[_Scan]:
    good = []
    for s in scans:
        err = None
        if len(s.shape) != len(ref.shape):
            err = (f"{s.case.image_paths[0]}: {len(s.shape)}D but {ref.case.image_paths[0].name} is "
                   f"{len(ref.shape)}D")
        elif s.channels != ref.channels:
            err = (f"{s.case.image_paths[0]}: {s.channels} channel(s) but {ref.case.image_paths[0].name} has "
                   f"{ref.channels}; all images need the same channels (grey or RGB)")
        if err is None:
            good.append(s)
        elif skip is None:
            raise DataError(err)
        else:
            skip.skip(err)
    return good


def _check_values(scans: list[_Scan], class_map: ClassMap, skip: SkipLog | None) -> list[_Scan]:
    good = []
    allowed = set(class_map.mask_values)
    for s in scans:
        bad = [float(v) for v in s.values if float(v) not in allowed]
        if not bad:
            good.append(s)
            continue
        err = DataError(f"{s.case.mask_path}: value(s) {ClassMap._fmt(bad[:5])} not in the class map "
                        f"{ClassMap._fmt(class_map.values)} (set --classes / data.class_values to change it)")
        if skip is None:
            raise err
        skip.skip(err)
    return good


def _require(scans: list[_Scan], folder: str, skip: SkipLog | None) -> None:
    if not scans:
        if skip is not None:
            skip.summary()
        raise DataError(f"{folder}: no usable image/mask pairs")


def prepare_data(cfg: Config) -> PreparedData:
    """Find, read and check every pair of ``cfg.data.data`` (and ``cfg.data.val_data``); split; cache.

    Fills ``cfg.data.class_values`` (when None: the sorted values of the ``--data`` masks, or the labels
    of an nnU-Net ``dataset.json``) and ``cfg.data.patch_size`` (when None, see
    :func:`default_patch_size` with multiples of ``2**cfg.model.depth``). With ``cfg.data.skip_bad``
    every bad pair is reported on stderr and left out, and the count is printed at the end; otherwise the
    first one raises :class:`DataError`.
    """
    d = cfg.data
    if d.data is None:
        raise DataError("no dataset given (--data DIR)")
    norm = Normalizer.from_config(d)
    budget = cache_budget(d)
    skip = SkipLog() if d.skip_bad else None
    used = [0.0]
    scans = _scan(find_cases(d.data, skip_bad=d.skip_bad, skip=skip), norm, skip, budget, used)
    val_scans = (_scan(find_cases(d.val_data, skip_bad=d.skip_bad, skip=skip), norm, skip, budget, used)
                 if d.val_data else [])
    _require(scans, d.data, skip)
    ref = scans[0]
    scans, val_scans = _consistent(scans, ref, skip), _consistent(val_scans, ref, skip)

    values = d.class_values
    if values is None and nnunet.is_nnunet_dataset(d.data):
        info = nnunet.read_dataset_json(d.data)
        values = nnunet.class_values_from_json(info, Path(d.data) / "dataset.json")
    if values is None:
        found = sorted({float(v) for s in scans for v in s.values})
        if len(found) > MAX_INFERRED_CLASSES:
            raise DataError(f"{d.data}: masks hold {len(found)} distinct values; that looks like an "
                            "intensity or instance image (give --classes to choose the class values)")
        values = found
    class_map = ClassMap(values)
    scans, val_scans = _check_values(scans, class_map, skip), _check_values(val_scans, class_map, skip)
    _require(scans, d.data, skip)

    if d.val_data:
        train, val = scans, val_scans
    else:
        names = [s.case.name for s in scans]
        tr, va = split_cases([s.case for s in scans], d.val_fraction, d.split_seed)
        by_name = dict(zip(names, scans, strict=True))
        train, val = [by_name[c.name] for c in tr], [by_name[c.name] for c in va]
        if not val and d.val_fraction > 0:
            val = train  # a single case: validate on it rather than not at all

    for s in [*train, *val]:
        if s.arrays is not None:
            image, mask, meta = s.arrays
            labels = class_map.encode(mask, source=s.case.mask_path,
                                      dtype=np.uint8 if class_map.num_classes <= 256 else np.int16)
            key = CaseCache.key(s.case, norm, class_map)
            case_cache.put(key, (image, labels, meta), budget)
            s.arrays = None

    default = default_patch_size([s.shape for s in train], 2 ** int(cfg.model.depth))
    if d.patch_size is not None and len(d.patch_size) != len(ref.shape):
        raise ConfigError(f"patch size {list(d.patch_size)} does not fit the {len(ref.shape)}D images "
                          f"of {d.data}")
    if d.class_values is None:
        # Whole numbers stay ints in config.json (0/255, not 0.0/255.0).
        d.class_values = [int(v) if float(v).is_integer() else v for v in class_map.values]
    if d.patch_size is None:
        d.patch_size = list(default)
    if skip is not None:
        skip.summary()
    return PreparedData(
        train_cases=[s.case for s in train],
        val_cases=[s.case for s in val],
        class_map=class_map,
        in_channels=ref.channels,
        spatial_dims=len(ref.shape),
        default_patch_size=default,
        shapes={s.case.name: s.shape for s in [*scans, *val_scans]},
        skipped=skip.count if skip is not None else 0,
    )

"""``prepare_data``: read and check a whole dataset once, before training starts.

It finds the pairs, reads every image and mask (so a bad file stops the run at once, with one line naming
it, not hours later), works out the class map, the channels and dimensionality, splits off the validation
cases, keeps the decoded cases in the dataset's :class:`~unetseg.data.store.CaseStore` when they fit, and
picks a patch size. It does not change the config: :meth:`PreparedData.apply_to` is the one place where
what the data says (channels, dimensionality, classes, patch size) is written into it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unetseg.config import Config, DataConfig
from unetseg.config.schema import as_spatial_dims
from unetseg.data import nnunet
from unetseg.data.cases import Case, find_cases, read_pair
from unetseg.data.instances import InstanceLabels
from unetseg.data.labels import ClassMap, LabelMap, fmt_values, infer_class_values, unique_values
from unetseg.data.normalize import Normalizer
from unetseg.data.resample import model_grid, shape_after
from unetseg.data.splits import case_groups, grouping, split_cases
from unetseg.data.store import GIB, CaseStore, DiskCache, cache_budget, to_training_space
from unetseg.errors import ConfigError, DataError
from unetseg.io.images import SkipLog, raise_or_skip

PATCH_BUDGET = {2: 256 * 256, 3: 96 * 96 * 96}  # voxels of the default patch
PATCH_CAP = {2: 256, 3: 192}  # per axis


@dataclass
class PreparedData:
    """What :func:`prepare_data` found: the cases of each split, the facts the model is built from, and
    the store of decoded cases. ``patch_size`` is the one to train with (given, or the default)."""

    train_cases: list[Case]
    val_cases: list[Case]
    class_map: LabelMap
    in_channels: int
    spatial_dims: int
    patch_size: tuple[int, ...]
    default_patch_size: tuple[int, ...]
    store: CaseStore
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    skipped: int = 0
    pixel_size: tuple[float, ...] | None = None  # µm, when every 2D training image records one
    split: str = ""  # how the validation cases were chosen (groups, a held-out fold), for the log

    def summary(self) -> str:
        """One line for the log."""
        return (
            f"{len(self.train_cases)} training / {len(self.val_cases)} validation case(s), "
            f"{self.spatial_dims}D, {self.in_channels} channel(s), class values "
            f"{fmt_values(self.class_map.values)}, patch {list(self.patch_size)}"
            + (f", {self.skipped} bad pair(s) skipped" if self.skipped else "")
        )

    def apply_to(self, cfg: Config) -> Config:
        """Write what the data says into ``cfg`` (in place; returned for chaining)."""
        if self.class_map.num_classes < 2:
            raise ConfigError(
                f"{cfg.data.data}: the training masks hold a single value "
                f"{fmt_values(self.class_map.values)}; nothing to segment"
            )
        cfg.model.in_channels = self.in_channels + cfg.data.prior_channels  # a cascade's prior after
        cfg.model.spatial_dims = as_spatial_dims(self.spatial_dims)
        cfg.model.num_classes = self.class_map.num_classes
        cfg.data.class_values = self.class_map.config_values()
        cfg.data.patch_size = list(self.patch_size)
        if cfg.data.pixel_size is None and self.pixel_size is not None:
            cfg.data.pixel_size = list(self.pixel_size)  # predict picks the matching pyramid level
        return cfg


@dataclass
class _Scan:
    case: Case
    shape: tuple[int, ...]
    channels: int
    values: np.ndarray
    mask_dtype: str
    arrays: tuple | None  # (normalised image, raw mask, meta) while kept for the store
    spacing: tuple[float, ...] | None = None
    pixel_size: tuple[float, ...] | None = None

    @property
    def mask_path(self) -> Path:
        assert self.case.mask_path is not None  # as for every training case
        return self.case.mask_path


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


def common_pixel_size(scans: list[_Scan], tolerance: float = 0.25) -> tuple[float, ...] | None:
    """The median physical pixel size of the training images when all record one and none differs
    from it by more than ``tolerance`` (relative); else None (unknown, or a mix of magnifications)."""
    sizes = [s.pixel_size for s in scans if s.pixel_size is not None]
    if not sizes or len(sizes) < len(scans) or len({len(p) for p in sizes}) != 1:
        return None
    arr = np.asarray(sizes, dtype=np.float64)
    median = np.median(arr, axis=0)
    if np.any(np.abs(arr / median - 1.0) > tolerance):
        return None
    return tuple(float(m) for m in median)


MAX_PADDING = 4  # a patch may be at most this many times the largest image on any axis (the rest: padding)


def _padded(extent: np.ndarray, depth: int) -> list[int]:
    step = 2**depth
    return [int(-(-int(e) // step) * step) for e in extent]


def check_geometry(patch: tuple[int, ...], depth: int, shapes: list[tuple[int, ...]], source: str) -> None:
    """Fail before training when the depth or the patch cannot work with these images, naming the largest
    value that fits: patches (at least 2**depth per axis) may be padded up to :data:`MAX_PADDING` times the
    largest image on each axis; beyond that a step would be mostly padding (and a huge depth or patch
    would run for ever on tiny images)."""
    extent = np.max(np.asarray(shapes), axis=0)
    biggest = "x".join(str(int(e)) for e in extent)
    limit = MAX_PADDING * extent
    if np.any(2**depth > limit):
        fits = int(np.floor(np.log2(limit.min())))
        raise ConfigError(f"--depth {depth} needs patches of at least {2**depth} px per axis, but the images "
                          f"of {source} are at most {biggest}; the largest depth that fits is {fits}")
    if np.any(np.maximum(np.asarray(patch), 2**depth) > limit):
        raise ConfigError(f"--patch-size {' '.join(map(str, patch))} is larger than the images of {source} "
                          f"allow (at most {biggest}); the largest patch that fits is "
                          f"{' '.join(map(str, _padded(extent, depth)))}")


def _scan(
    cases: list[Case], norm: Normalizer, skip: SkipLog | None, room: float, max_bytes: float
) -> tuple[list[_Scan], float]:
    """Read every case once; keep the arrays of those that fit in ``room`` bytes. Returns the scans and
    the room left."""
    out = []
    for case in cases:
        try:
            image, mask, meta = read_pair(case, max_bytes=max_bytes)
        except DataError as e:
            raise_or_skip(e, skip)
            continue
        assert mask is not None  # find_cases gave every training case its mask
        size = image.nbytes + mask.nbytes
        keep = size <= room
        room -= size if keep else 0
        out.append(
            _Scan(
                case,
                tuple(mask.shape),
                int(image.shape[0]),
                unique_values(mask),
                str(meta.get("mask_dtype")),
                (norm(image), mask, meta) if keep else None,
                tuple(meta.get("spacing") or ()) or None,
                meta.get("pixel_size"),
            )
        )
    return out, room


def _consistent(scans: list[_Scan], ref: _Scan, skip: SkipLog | None) -> list[_Scan]:
    good = []
    for s in scans:
        err = None
        if len(s.shape) != len(ref.shape):
            err = (
                f"{s.case.image_paths[0]}: {len(s.shape)}D but {ref.case.image_paths[0].name} is "
                f"{len(ref.shape)}D"
            )
        elif s.channels != ref.channels:
            err = (
                f"{s.case.image_paths[0]}: {s.channels} channel(s) but {ref.case.image_paths[0].name} has "
                f"{ref.channels}; all images need the same channels (grey or RGB)"
            )
        if err is None:
            good.append(s)
        else:
            raise_or_skip(DataError(err), skip)
    return good


def _check_values(scans: list[_Scan], class_map: LabelMap, skip: SkipLog | None) -> list[_Scan]:
    good = []
    for s in scans:
        try:
            class_map.check_values(s.values, s.case.mask_path)
            good.append(s)
        except DataError as e:
            raise_or_skip(e, skip)
    return good


def _require(scans: list[_Scan], folder: str, skip: SkipLog | None) -> None:
    if not scans:
        if skip is not None:
            skip.summary()
        raise DataError(f"{folder}: no usable image/mask pairs")


def class_map_of(cfg: Config, masks: list[tuple[Any, str, np.ndarray]]) -> LabelMap:
    """The class map of a training set: ``data.class_values``, else an nnU-Net ``dataset.json``'s labels,
    else the values found in ``masks`` (``(path, stored dtype, distinct values)`` per mask); object ids for
    an instance model."""
    d = cfg.data
    if d.task == "instances":
        return InstanceLabels(d.instance_target)  # ids per object: no class values to infer
    assert d.data is not None  # prepare_data checked it
    values: list[Any] | None = d.class_values
    if values is None and nnunet.is_nnunet_dataset(d.data):
        values = nnunet.class_values_from_json(
            nnunet.read_dataset_json(d.data), Path(d.data) / "dataset.json"
        )
    if values is None:
        values = infer_class_values(masks, d.data)
    return ClassMap(values)


def _split(cfg: Config, scans: list[_Scan], val_scans: list[_Scan], groups: dict[str, str] | None,
           holdout: list[str] | None) -> tuple[list[_Scan], list[_Scan], str]:
    """Training and validation scans, and how they were chosen: the held-out fold of a cross-validation
    (``holdout``: its stems), ``--val-data``, or whole groups held out of ``--data``."""
    d = cfg.data
    if holdout is not None:
        names, found = set(holdout), {s.case.name for s in scans}
        if names - found:
            raise DataError(f"{d.data}: {sorted(names - found)[0]!r}, a held-out case of this fold, is not "
                            "in the data any more (the folds were made from other data); start afresh with "
                            "--overwrite")
        return ([s for s in scans if s.case.name not in names], [s for s in scans if s.case.name in names],
                "validation on the fold held out of training")
    if d.val_data:
        return scans, val_scans, f"validation on --val-data {d.val_data}"
    tr, va = split_cases([s.case for s in scans], d.val_fraction, d.split_seed, groups)
    by_name = {s.case.name: s for s in scans}
    train, val = [by_name[c.name] for c in tr], [by_name[c.name] for c in va]
    note = grouping(d, groups) if d.val_fraction > 0 else "no validation (data.val_fraction is 0)"
    if not val and d.val_fraction > 0:
        val = train  # a single case (or group): validate on it rather than not at all
        note = "one image or group only: the validation images are the training images"
    return train, val, note


def _training_shape(s: _Scan, d: DataConfig) -> tuple[int, ...]:
    """A case's size on the model's grid (:func:`~unetseg.data.resample.model_grid`)."""
    grid = model_grid(s.spacing, d, len(s.shape))
    return tuple(shape_after(s.shape, *grid)) if grid is not None else s.shape


def _fill_store(store: CaseStore, scans: list[_Scan]) -> CaseStore:
    """Encode (and resample) the arrays the scan kept, into the store; drop them from the scans."""
    cm = store.class_map
    for s in scans:
        if s.arrays is not None:
            image, mask, meta = s.arrays
            labels = cm.encode(mask, s.case.mask_path, cm.compact_dtype())
            store.put(s.case, *to_training_space(image, labels, meta, store.data_cfg, cm.resample_classes))
            s.arrays = None
    return store


def prepare_data(cfg: Config, cache_dir: str | Path | None = None,
                 holdout: list[str] | None = None) -> PreparedData:
    """Find, read and check every pair of ``cfg.data.data`` (and ``cfg.data.val_data``); split; store.

    The class values are ``cfg.data.class_values``, else the labels of an nnU-Net ``dataset.json``, else
    the sorted values of the ``--data`` masks; the patch size ``cfg.data.patch_size`` or
    :func:`default_patch_size` with multiples of ``2**cfg.model.depth``. With ``cfg.data.skip_bad`` every
    bad pair is reported on stderr and left out, and the count is printed at the end; otherwise the first one
    raises :class:`DataError`. ``cfg`` is not changed (see :meth:`PreparedData.apply_to`). With
    ``cache_dir`` (the trainer passes ``RUN/cache``) cases the memory budget cannot hold are kept resampled
    and normalised on disk, memory-mapped. Validation: the cases named in ``holdout`` (a cross-validation
    fold), else ``--val-data``, else whole groups of ``--data`` (:func:`~unetseg.data.splits.split_cases`).
    """
    d = cfg.data
    if d.data is None:
        raise DataError("no dataset given (--data DIR)")
    norm = Normalizer.from_config(d)
    max_bytes = d.max_image_gib * GIB
    skip = SkipLog() if d.skip_bad else None
    cases = find_cases(d.data, skip_bad=d.skip_bad, skip=skip)
    groups = case_groups(cases, d) if holdout is None and not d.val_data else None  # before reading images
    scans, room = _scan(cases, norm, skip, cache_budget(d), max_bytes)
    val_scans = (
        _scan(find_cases(d.val_data, skip_bad=d.skip_bad, skip=skip), norm, skip, room, max_bytes)[0]
        if d.val_data
        else []
    )
    _require(scans, d.data, skip)
    ref = scans[0]
    scans, val_scans = _consistent(scans, ref, skip), _consistent(val_scans, ref, skip)
    class_map = class_map_of(cfg, [(s.case.mask_path, s.mask_dtype, s.values) for s in scans])
    scans, val_scans = _check_values(scans, class_map, skip), _check_values(val_scans, class_map, skip)
    _require(scans, d.data, skip)
    train, val, split = _split(cfg, scans, val_scans, groups, holdout)
    store = _fill_store(
        CaseStore(d, class_map, disk=DiskCache(cache_dir, d, class_map) if cache_dir else None),
        [*train, *val],
    )
    space = {s.case.name: _training_shape(s, d) for s in [*scans, *val_scans]}
    default = default_patch_size([space[s.case.name] for s in train], 2 ** int(cfg.model.depth))
    if d.patch_size is not None and len(d.patch_size) != len(ref.shape):
        raise ConfigError(
            f"--patch-size {' '.join(map(str, d.patch_size))} has {len(d.patch_size)} sizes "
            f"but the images of {d.data} are {len(ref.shape)}D"
        )
    patch = tuple(d.patch_size) if d.patch_size is not None else default
    check_geometry(patch, int(cfg.model.depth), list(space.values()), d.data)
    if skip is not None:
        skip.summary()
    return PreparedData(
        train_cases=[s.case for s in train],
        val_cases=[s.case for s in val],
        class_map=class_map,
        in_channels=ref.channels,
        spatial_dims=len(ref.shape),
        patch_size=patch,
        default_patch_size=default,
        store=store,
        shapes={s.case.name: s.shape for s in [*scans, *val_scans]},
        skipped=skip.count if skip is not None else 0,
        pixel_size=common_pixel_size(train),
        split=split,
    )

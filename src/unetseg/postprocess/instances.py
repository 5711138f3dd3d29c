"""Instance labels from predicted maps by seeded watershed, and stitching of labels made band by band.

Two network heads are supported: the 3-class map (background, interior, boundary; see
:func:`unetseg.data.instances.three_class_target`) and the normalised distance map
(:func:`unetseg.data.instances.distance_target`) with a foreground mask, given directly or as the
probabilities of its bins (:func:`unetseg.data.instances.distance_class_target`). All return labels with
ids 1..N (uint16, or uint32 beyond 65535 objects), 2D or 3D, with connectivity 1 (face neighbours) throughout.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
from scipy import ndimage
from skimage import morphology, segmentation

from unetseg.errors import ConfigError, DataError


def _check_int(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"{name}={value!r}: expected an integer >= {low}")


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ConfigError(f"{name}={value!r}: expected a number strictly between 0 and 1")


def _check_map(name: str, array: np.ndarray, spatial_ndim: tuple[int, ...] = (2, 3)) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim not in spatial_ndim:
        allowed = " or ".join(map(str, spatial_ndim))
        raise DataError(f"{name} must have {allowed} dimensions, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise DataError(f"{name} must be a float array, got dtype {array.dtype}")
    if not np.isfinite(array).all():
        raise DataError(f"{name} contains NaN or infinite values")
    return array


def _consecutive(labels: np.ndarray) -> np.ndarray:
    """Ids 1..N in the smallest unsigned dtype that holds N (uint16 or uint32)."""
    seq = segmentation.relabel_sequential(labels.astype(np.int64, copy=False))[0]
    return seq.astype(np.uint16 if seq.max(initial=0) <= np.iinfo(np.uint16).max else np.uint32)


def _fill_enclosed_background(labels: np.ndarray) -> np.ndarray:
    """Give each background region that touches exactly one object and no image border that object's id."""
    regions, n = ndimage.label(labels == 0)
    if n == 0:
        return labels
    # Pairs (background region, object id) from every face-neighbour pair, all axes, both directions.
    pairs = []
    for axis in range(labels.ndim):
        a = np.moveaxis(regions, axis, 0)
        b = np.moveaxis(labels, axis, 0)
        for r, o in ((a[:-1], b[1:]), (a[1:], b[:-1])):
            hit = (r > 0) & (o > 0)
            pairs.append(np.stack([r[hit], o[hit].astype(np.int64)]))
    region_ids, owners = np.unique(np.concatenate(pairs, axis=1), axis=1)
    n_owners = np.bincount(region_ids, minlength=n + 1)
    owner = np.zeros(n + 1, np.int64)
    owner[region_ids] = owners  # right for regions with one owner, the only ones used
    fill = n_owners == 1
    for axis in range(labels.ndim):
        edges = np.moveaxis(regions, axis, 0)
        fill[edges[0]] = False
        fill[edges[-1]] = False
    fill[0] = False
    filled = labels.copy()
    take = fill[regions]
    filled[take] = owner[regions[take]]
    return filled


def remove_small_and_fill(labels: np.ndarray, min_size: int = 10, fill_holes: bool = True) -> np.ndarray:
    """Drop objects of fewer than ``min_size`` pixels, then fill holes; ids become 1..N (uint16/uint32).

    A hole is a face-connected background region that touches neither the image border nor any object but
    one; it takes that object's id (so gaps shared by two objects and pixels of removed small objects inside
    a big one are handled without a loop per object). Removal comes first, so a small spurious object inside
    a big one becomes part of it.
    """
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer) or (labels.size and labels.min() < 0):
        raise DataError(f"labels must be non-negative integers, got dtype {labels.dtype}")
    _check_int("min_size", min_size, 0)
    seq = _consecutive(labels).astype(np.int64)
    sizes = np.bincount(seq.ravel())
    keep = sizes >= min_size
    keep[0] = False
    seq = np.where(keep[seq], seq, 0)
    if fill_holes:
        seq = _fill_enclosed_background(seq)
    return _consecutive(seq)


def instances_from_three_class(probs: np.ndarray, *, interior_threshold: float = 0.5,
                               foreground_threshold: float = 0.5, min_seed_size: int = 3,
                               min_size: int = 10, fill_holes: bool = True) -> np.ndarray:
    """Instances from ``(3, *spatial)`` background/interior/boundary probabilities by seeded watershed.

    Seeds are the connected components of ``interior > interior_threshold`` with at least ``min_seed_size``
    pixels (smaller ones are noise and would split objects). The mask is ``1 - background >
    foreground_threshold``. Seeds are flooded over ``boundary - interior`` inside the mask, so neighbouring
    objects meet where the boundary class peaks. Objects under ``min_size`` pixels are removed and holes
    filled (:func:`remove_small_and_fill`).
    """
    probs = _check_map("probs", probs, (3, 4))
    if probs.shape[0] != 3:
        raise DataError(f"probs must be (3, *spatial) background/interior/boundary, got {probs.shape}")
    _check_fraction("interior_threshold", interior_threshold)
    _check_fraction("foreground_threshold", foreground_threshold)
    _check_int("min_seed_size", min_seed_size, 1)
    mask = (1.0 - probs[0]) > foreground_threshold
    seeds, _ = ndimage.label((probs[1] > interior_threshold) & mask)
    sizes = np.bincount(seeds.ravel())
    big = sizes >= min_seed_size
    big[0] = False
    seeds = np.where(big[seeds], seeds, 0)
    labels = segmentation.watershed(probs[2] - probs[1], seeds, mask=mask)
    return remove_small_and_fill(labels, min_size, fill_holes)


def instances_from_distance(distance: np.ndarray, foreground: np.ndarray, *, h: float = 0.2,
                            min_distance: float = 3.0, min_size: int = 10,
                            fill_holes: bool = True) -> np.ndarray:
    """Instances from a predicted distance map (e.g. the normalised target, peaks near 1) and a foreground
    mask by seeded watershed on ``-distance``.

    Seeds are the regional maxima of dynamic at least ``h`` (``skimage.morphology.h_maxima``), so shallow
    bumps on one object do not split it; maxima regions closer than ``min_distance`` pixels to each other
    form one seed (0 disables this).
    """
    distance = _check_map("distance", distance)
    foreground = np.asarray(foreground)
    if foreground.shape != distance.shape:
        raise DataError(f"foreground shape {foreground.shape} != distance shape {distance.shape}")
    if not h > 0:
        raise ConfigError(f"h={h!r}: expected a number > 0")
    if not min_distance >= 0:
        raise ConfigError(f"min_distance={min_distance!r}: expected a number >= 0")
    mask = foreground.astype(bool)
    height = np.where(mask, distance, min(float(distance.min(initial=0.0)), 0.0)).astype(np.float64)
    peaks = morphology.h_maxima(height, h).astype(bool) & mask
    if min_distance > 0 and peaks.any():
        near = ndimage.distance_transform_edt(~peaks) <= min_distance / 2.0
        seeds = ndimage.label(near)[0] * peaks
    else:
        seeds = ndimage.label(peaks)[0]
    labels = segmentation.watershed(-height, seeds, mask=mask)
    return remove_small_and_fill(labels, min_size, fill_holes)


def expected_distance(probs: np.ndarray) -> np.ndarray:
    """The expected normalised distance ``sum_k p_k (k - 0.5) / K`` of ``(1 + K, *spatial)`` probabilities
    (class 0 background, at distance 0; class k the bin ``((k-1)/K, k/K]``, at its centre), float32."""
    probs = _check_map("probs", probs, (3, 4))
    bins = probs.shape[0] - 1
    if bins < 1:
        raise DataError(f"probs must be (1 + bins, *spatial) background and distance bins, got {probs.shape}")
    centres = np.concatenate([[0.0], (np.arange(1, bins + 1) - 0.5) / bins]).astype(np.float32)
    return np.tensordot(centres, probs, axes=1).astype(np.float32)


def instances_from_distance_classes(probs: np.ndarray, *, h: float = 0.2, foreground_threshold: float = 0.5,
                                    min_size: int = 10, fill_holes: bool = True) -> np.ndarray:
    """Instances from ``(1 + K, *spatial)`` background / distance-bin probabilities: the expected distance
    (:func:`expected_distance`) inside the mask ``1 - background > foreground_threshold``, seeded at its
    maxima of dynamic ``h`` (:func:`instances_from_distance`)."""
    _check_fraction("foreground_threshold", foreground_threshold)
    probs = np.asarray(probs)
    distance = expected_distance(probs)
    mask = (1.0 - probs[0]) > foreground_threshold
    return instances_from_distance(distance, mask, h=h, min_size=min_size, fill_holes=fill_holes)


def stitch_bands(previous_overlap: np.ndarray | None, band: np.ndarray, next_id: int,
                 *, min_iou: float = 0.5) -> tuple[np.ndarray, int]:
    """Give one band's new rows global ids consistent with the rows already written before it.

    Contract (bands are slabs along the first spatial axis, processed in order):

    - ``previous_overlap``: the final global labels of the first ``o`` rows of this band, exactly as already
      written to the output (``None`` or ``o == 0`` for the first band). They are not changed.
    - ``band``: this band's local labels (any ids, 0 = background), ``o + n`` rows; its first ``o`` rows
      cover the same pixels as ``previous_overlap``.
    - ``next_id``: the smallest global id not used yet (1 at the start).

    Returns ``(rows, next_id)``: global labels (uint32) of ``band[o:]`` only, to be written after the
    overlap, and the updated counter. A local object whose part in the overlap rows has IoU > ``min_iou``
    with a global object's part there takes that id (with ``min_iou >= 0.5`` each global id goes to at most
    one local object: no duplicates); every other local object that has pixels in the new rows gets a fresh
    id, in increasing local id order, so global ids stay consecutive. Local pixels in the overlap rows are
    discarded. The overlap rows come from the previous band's bottom edge, where it had least context:
    :func:`stitch_band_sequence` crops each band so that the seam lies mid-overlap instead.
    """
    if not 0.5 <= min_iou < 1.0:
        raise ConfigError(f"min_iou={min_iou!r}: expected a number in [0.5, 1)")
    _check_int("next_id", next_id, 1)
    band = np.asarray(band)
    if not np.issubdtype(band.dtype, np.integer) or (band.size and band.min() < 0):
        raise DataError(f"band labels must be non-negative integers, got dtype {band.dtype}")
    o = 0 if previous_overlap is None else len(previous_overlap)
    if (previous_overlap is not None and np.shape(previous_overlap)[1:] != band.shape[1:]) or o >= len(band):
        raise DataError(f"band of shape {band.shape} does not extend an overlap of shape "
                        f"{() if previous_overlap is None else np.shape(previous_overlap)}")
    local = segmentation.relabel_sequential(band.astype(np.int64, copy=False))[0]
    n_local = int(local.max(initial=0))
    mapping = np.zeros(n_local + 1, np.int64)
    if o:
        glob = np.asarray(previous_overlap).astype(np.int64).ravel()
        loc = local[:o].ravel()
        both = (glob > 0) & (loc > 0)
        pair, inter = np.unique(np.stack([loc[both], glob[both]]), axis=1, return_counts=True)
        if pair.size:
            loc_area = np.bincount(loc, minlength=n_local + 1)[pair[0]]
            glob_ids, glob_inverse = np.unique(glob, return_inverse=True)
            glob_area = np.bincount(glob_inverse)[np.searchsorted(glob_ids, pair[1])]
            match = inter / (loc_area + glob_area - inter) > min_iou
            mapping[pair[0][match]] = pair[1][match]
    present = np.zeros(n_local + 1, bool)
    present[np.unique(local[o:])] = True
    fresh = present & (mapping == 0)
    fresh[0] = False
    mapping[fresh] = next_id + np.arange(int(fresh.sum()))
    return mapping[local[o:]].astype(np.uint32), next_id + int(fresh.sum())


def stitch_band_sequence(bands: Iterable[np.ndarray], overlap: int, *,
                         min_iou: float = 0.5) -> Iterator[np.ndarray]:
    """Stitch local label bands into global labels, yielding final rows in order (one band in memory).

    ``bands`` are the local labels of consecutive slabs along the first axis; each band after the first
    starts ``overlap`` rows before the previous one ends. The concatenation of the yielded arrays covers the
    whole image exactly once, with global ids 1..N (uint32). Every band but the last loses its last
    ``overlap // 2`` rows before :func:`stitch_bands`, so each seam lies mid-overlap, where both bands saw
    ``overlap // 2`` rows of context; objects up to about ``overlap / 2`` rows tall then stitch exactly.
    """
    _check_int("overlap", overlap, 0)
    crop = overlap // 2
    previous: np.ndarray | None = None
    next_id = 1
    held: np.ndarray | None = None

    def emit(band: np.ndarray, last: bool) -> np.ndarray:
        nonlocal previous, next_id
        band = np.asarray(band)
        if len(band) <= overlap and not (last and previous is None):  # one band alone needs no seam
            raise DataError(f"a band has {len(band)} rows; each must be longer than the overlap ({overlap})")
        if not last:
            band = band[:len(band) - crop]
        rows, next_id = stitch_bands(previous, band, next_id, min_iou=min_iou)
        written = rows if previous is None else np.concatenate([previous, rows])
        previous = written[len(written) - (overlap - crop):] if overlap - crop else None
        return rows

    for band in bands:
        if held is not None:
            yield emit(held, last=False)
        held = band
    if held is not None:
        yield emit(held, last=True)

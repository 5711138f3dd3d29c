"""Training targets derived from label images: the targets of networks that must separate touching objects
(3-class map, distance bins) and the U-Net paper's weight maps, over objects and (:func:`unet_weight_map`)
over the connected components of class labels: one implementation for both.

An instance image holds 0 for background and one positive integer id per object (any integer dtype, ids up
to 2**32 - 1, not necessarily consecutive); 2D or 3D. Touching objects are different objects even when they
form one connected component, so every target here is computed per object id, never per component.

Depth: every object pixel's Euclidean distance (in pixels) to the nearest pixel that does not belong to the
same object (background or another object). Depth 1 are exactly the pixels with a face neighbour outside
the object, i.e. ``skimage.segmentation.find_boundaries(mode="inner")``. Pixels beyond the image border do
not count as "outside": an object cut by the border has no boundary along it, as in ``find_boundaries``.
Depths are computed with one ``distance_transform_edt`` per object on its bounding box plus one pixel.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import numpy as np
from scipy import ndimage
from skimage import segmentation

from unetseg.config.schema import DISTANCE_BINS, instance_classes
from unetseg.errors import ConfigError, DataError

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2


def _check_instances(instances: np.ndarray) -> np.ndarray:
    instances = np.asarray(instances)
    if instances.ndim not in (2, 3):
        raise DataError(f"instance labels must be 2D or 3D, got shape {instances.shape}")
    if instances.dtype == bool:
        return instances.astype(np.int32)
    if not np.issubdtype(instances.dtype, np.integer):
        raise DataError(f"instance labels must be integers, got dtype {instances.dtype}")
    if instances.size and (instances.min() < 0 or int(instances.max()) > np.iinfo(np.uint32).max):
        raise DataError(f"instance ids must be in [0, 2**32), got {instances.min()}..{instances.max()}")
    return instances


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Ids mapped to 1..N in increasing order of the original id (0 stays 0), as int32.

    Per-object loops (``find_objects``, lookup tables) need small consecutive ids.
    """
    labels = _check_instances(labels)
    return segmentation.relabel_sequential(labels.astype(np.int64, copy=False))[0].astype(np.int32)


def _window(box: tuple[slice, ...], shape: tuple[int, ...], margin: int) -> tuple[slice, ...]:
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, size))
                 for s, size in zip(box, shape, strict=True))


def _object_depth(seq: np.ndarray) -> np.ndarray:
    """Depth (see the module docstring) of every object pixel of consecutive-id labels; 0 on background."""
    depth = np.zeros(seq.shape, np.float32)
    for index, box in enumerate(ndimage.find_objects(seq), start=1):
        if box is None:
            continue
        # One pixel beyond the box is enough: it is outside the object, so the nearest outside pixel of
        # every object pixel lies inside the window.
        window = _window(box, seq.shape, 1)
        inside = seq[window] == index
        depth[window][inside] = ndimage.distance_transform_edt(inside)[inside]
    return depth


def three_class_target(instances: np.ndarray, boundary_width: int = 1) -> np.ndarray:
    """0 background, 1 interior, 2 boundary (uint8): the 3-class target that lets a network split touching
    objects.

    Boundary = object pixels whose depth is at most ``boundary_width`` (Euclidean distance to the nearest
    pixel outside the object; width 1 is ``find_boundaries(mode="inner")``). Between two touching objects
    both sides are boundary, so the interiors of different objects are never face neighbours (in 2D not
    even diagonal ones) and each object's interior is its own connected component. An object too thin to
    have any interior keeps its deepest pixels as interior, so no object vanishes from the interior class;
    only such tiny objects can have interiors that touch another object's.
    """
    if isinstance(boundary_width, bool) or not isinstance(boundary_width, (int, np.integer)) \
            or boundary_width < 1:
        raise ConfigError(f"boundary_width={boundary_width!r}: expected an integer >= 1")
    seq = relabel_sequential(instances)
    target = np.zeros(seq.shape, np.uint8)
    n = int(seq.max(initial=0))
    if n == 0:
        return target
    depth = _object_depth(seq)
    deepest = np.zeros(n + 1, np.float32)
    deepest[1:] = ndimage.maximum(depth, seq, np.arange(1, n + 1))
    # float32 depths of the same pixel distance compare equal, so "== deepest" picks the central pixels.
    tiny_core = (depth == deepest[seq]) & (deepest[seq] <= boundary_width)
    target[seq > 0] = BOUNDARY
    target[(depth > boundary_width) | (tiny_core & (seq > 0))] = INTERIOR
    return target


def distance_target(instances: np.ndarray) -> np.ndarray:
    """Each object's depth divided by its maximum (float32): 1 at every object's centre, 1/max at its
    boundary, 0 on background. A regression target whose maxima seed a watershed, one per object."""
    seq = relabel_sequential(instances)
    n = int(seq.max(initial=0))
    if n == 0:
        return np.zeros(seq.shape, np.float32)
    depth = _object_depth(seq)
    deepest = np.ones(n + 1, np.float32)
    deepest[1:] = ndimage.maximum(depth, seq, np.arange(1, n + 1))
    return (depth / deepest[seq]).astype(np.float32)


def distance_class_target(instances: np.ndarray, bins: int = DISTANCE_BINS) -> np.ndarray:
    """The distance target as classes (uint8): 0 background, ``k`` (1..``bins``) where the normalised depth
    (:func:`distance_target`) lies in ``((k-1)/bins, k/bins]``, so every object's centre is class ``bins``.

    A network trained on it with a softmax keeps everything a class map gets (blending, TTA, Dice); the
    expected distance of its probabilities (:func:`unetseg.postprocess.instances.expected_distance`) seeds
    the watershed. Object pixels never become background: their normalised depth is > 0, so class >= 1.
    """
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or not 1 <= bins <= 254:
        raise ConfigError(f"bins={bins!r}: expected an integer in [1, 254]")
    dist = distance_target(instances).astype(np.float64)
    # a small tolerance keeps depths exactly on a bin edge (2/4 = 0.5) in the lower bin despite rounding
    k = np.clip(np.ceil(dist * bins - 1e-6), 1, bins)
    return np.where(dist > 0, k, 0).astype(np.uint8)


def instance_target(instances: np.ndarray, kind: str) -> np.ndarray:
    """The class target an instance model of ``data.instance_target`` ``kind`` learns (uint8)."""
    instance_classes(kind)  # checks the name
    return distance_class_target(instances) if kind == "distance" else three_class_target(instances)


def _class_weights(target: np.ndarray, class_weights: str | Sequence[float] | None) -> np.ndarray:
    """``w_c`` per pixel: ``"balanced"`` (as scikit-learn), None (all 1) or one weight per class."""
    if class_weights is None:
        return np.ones(target.shape, np.float32)
    if isinstance(class_weights, str):
        if class_weights != "balanced":
            raise ConfigError(f"class_weights={class_weights!r}: expected 'balanced', None or a list")
        values, inverse, counts = np.unique(target, return_inverse=True, return_counts=True)
        per_value = target.size / (len(values) * counts)  # "balanced" as in scikit-learn
        return per_value[inverse].reshape(target.shape).astype(np.float32)
    table = np.asarray(class_weights, np.float32)
    if table.ndim != 1 or target.max(initial=0) >= len(table):
        raise ConfigError(f"class_weights has {table.size} entries but the target goes up to {target.max()}")
    return table[target]


def instance_weight_map(instances: np.ndarray, w0: float = 10.0, sigma: float = 5.0,
                        class_weights: str | Sequence[float] | None = "balanced",
                        target: np.ndarray | None = None, interior: np.ndarray | None = None) -> np.ndarray:
    """U-Net weight map (Ronneberger et al. 2015, eq. 2) over objects, not connected components (float32).

    ``w(x) = w_c(x) + w0 * exp(-(d1 + d2)^2 / (2 sigma^2))`` where ``d1``/``d2`` are the distances to the
    nearest and second-nearest object (0 inside an object for that object itself). The border term applies
    to background pixels and to boundary pixels of the 3-class target: there ``d1 = 0`` and ``d2`` is the
    distance to the nearest other object, so the boundary between touching objects (``d2 = 1``) weighs about
    ``w0`` while an isolated object's outline gains almost nothing. Interior pixels get ``w_c`` alone.

    Args:
        instances: instance labels ``(*spatial)``.
        w0, sigma: border weight and width in pixels (paper: 10 and 5).
        class_weights: ``"balanced"`` (total / (classes * count)), ``None`` (all 1) or one weight per class
            of ``target``.
        target: the class target the network is trained on (the classes of ``class_weights``);
            ``three_class_target(instances)`` if None.
        interior: pixels that get no border term (bool); ``target == 1`` (the 3-class interior) if None.
            A target of other classes (the distance bins) passes the 3-class interior here, so the border
            term lies on the same pixels whatever the network learns.

    Cost is capped: each object's distance transform covers its bounding box plus the distance beyond which
    the border term is below ``1e-4 * w0``; farther objects count as infinitely far.
    """
    if not (math.isfinite(w0) and w0 >= 0):
        raise ConfigError(f"w0={w0!r}: expected a finite number >= 0")
    if not (math.isfinite(sigma) and sigma > 0):
        raise ConfigError(f"sigma={sigma!r}: expected a finite number > 0")
    seq = relabel_sequential(instances)
    target = three_class_target(seq) if target is None else np.asarray(target)
    if target.shape != seq.shape or not np.issubdtype(target.dtype, np.integer) or target.min(initial=0) < 0:
        raise DataError(f"target must be a non-negative integer array of shape {seq.shape}, got "
                        f"{target.dtype} {target.shape}")
    interior = target == INTERIOR if interior is None else np.asarray(interior, bool)
    if interior.shape != seq.shape:
        raise DataError(f"interior must have shape {seq.shape}, got {interior.shape}")
    weights = _class_weights(target, class_weights)
    n = int(seq.max(initial=0))
    if n < 2 or w0 == 0:
        return weights
    margin = math.ceil(sigma * math.sqrt(2.0 * math.log(1e4)))
    d1 = np.full(seq.shape, np.inf, np.float32)
    d2 = np.full(seq.shape, np.inf, np.float32)
    for index, box in enumerate(ndimage.find_objects(seq), start=1):
        window = _window(box, seq.shape, margin)
        dist = ndimage.distance_transform_edt(seq[window] != index).astype(np.float32)
        near, second = d1[window], d2[window]
        second[...] = np.minimum(second, np.maximum(near, dist))
        near[...] = np.minimum(near, dist)
    border = w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * sigma**2))
    return (weights + np.where(interior, 0.0, border)).astype(np.float32)


def unet_weight_map(labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0,
                    class_weights: str | Sequence[float] | None = "balanced") -> np.ndarray:
    """Pixel-wise weight map of the U-Net paper (Ronneberger et al. 2015, eq. 2) for 2D or 3D class labels:
    :func:`instance_weight_map` over the connected components of the foreground ``labels > 0``, the class
    balance over ``labels``, the border term on the background (label 0).

    ``w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))`` on background pixels, where d1/d2 are the
    distances (in pixels) to the nearest and second-nearest object; foreground pixels get ``w_c`` alone.
    Returns float32 weights of the shape of ``labels``.
    """
    labels = np.asarray(labels)
    objects = ndimage.label(labels > 0)[0]
    return instance_weight_map(objects, w0, sigma, class_weights, target=labels, interior=labels > 0)


class InstanceLabels:
    """The labels of an instance task, where a :class:`~unetseg.data.labels.ClassMap` would stand: masks
    hold one id per object; training arrays keep the ids (made consecutive, int32), and the network learns
    the class target of ``target`` (:func:`instance_target`: the 3-class map or the distance bins) derived
    from them after augmentation, so elastic deformations keep targets and ids consistent."""

    resample_classes = None  # ids are resampled by nearest neighbour, never through a one-hot

    def __init__(self, target: str = "three_class") -> None:
        self.target = target
        self.num_classes = instance_classes(target)
        self.values = list(range(self.num_classes))
        self.groups = [[float(v)] for v in self.values]

    def encode(self, mask: np.ndarray, source: object = None, dtype: object = np.int32) -> np.ndarray:
        try:
            return relabel_sequential(mask)
        except DataError as e:
            raise DataError(f"{source or 'mask'}: {e}") from None

    def check_values(self, found: Collection[float], source: object) -> None:
        if len(found) and min(float(v) for v in found) < 0:
            raise DataError(f"{source}: negative instance ids; expected 0 (background) and one id per object")

    def compact_dtype(self) -> type:
        return np.int32

    def config_values(self) -> list[int]:
        return list(self.values)

    def decode(self, indices: np.ndarray) -> np.ndarray:
        return np.asarray(indices)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, InstanceLabels) and other.target == self.target

    def __repr__(self) -> str:
        return f"InstanceLabels({self.target!r})"

"""Synthetic microscopy-like images with exact masks: the demo's and the fast tests' data, no downloads.

Kinds:

* ``cells``: fluorescent cell/nucleus-like blobs of varied size, shape and brightness (some dim), many
  touching, on an uneven background, blurred (the optics) and noisy. Mask values {0, 255}.
* ``membranes``: an EM-like tissue of curved polygonal cells separated by thin dark membranes, with dark
  organelle-like blobs inside the cells as distractors. Mask as ISBI 2012: 255 = cell interior,
  0 = membrane.
* ``cells3d``: a 3D stack of touching ellipsoidal cells with a brighter nucleus. Mask values
  {0 background, 1 cytoplasm, 2 nucleus}; z spacing 2 (anisotropic, like confocal stacks).
* ``nuclei``: the ``cells`` images with instance masks (0 background, ids 1..N, one per blob): the
  instance task's data, touching objects included.
* ``lesions``: RGB dermoscopy-like images with one large irregular lesion (a third to two thirds of the
  image's side, sometimes cut by the border) that fades towards its rim, on textured skin with darker
  shadows as dark as a lesion's rim: locally a patch of lesion and a patch of shadow look alike, only a view
  of the whole object tells them apart. Mask values {0, 255}.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from unetseg.data.augment import elastic_displacement, rotation_matrix
from unetseg.errors import ConfigError
from unetseg.io.images import write_image, write_mask

KINDS = ("cells", "membranes", "cells3d", "nuclei", "lesions")
DEFAULT_SIZE = {"cells": (256, 256), "membranes": (256, 256), "cells3d": (32, 64, 64), "nuclei": (256, 256),
                "lesions": (192, 256)}
SPACING_3D = (2.0, 1.0, 1.0)


def _smooth(shape: tuple[int, ...], grid: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth random field with unit-ish amplitude (cubic interpolation of a coarse random lattice)."""
    return elastic_displacement(shape, grid, 1.0, rng)[0]


def _blobs(shape: tuple[int, ...], n: int, radius: tuple[float, float], rng: np.random.Generator,
           spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Random touching ellipsoids. Returns ``owner`` (index of the blob each pixel belongs to, -1 outside)
    and ``q`` (the pixel's normalised distance to its blob's centre, < 1 inside). Overlaps go to the blob
    whose surface is farther, which makes straight touching boundaries as between real cells."""
    d = len(shape)
    owner = np.full(shape, -1, dtype=np.int32)
    best = np.full(shape, np.inf, dtype=np.float32)
    wobble = 1.0 + 0.12 * _smooth(shape, 6, rng)
    sp = np.asarray(spacing)
    for k in range(n):
        r = rng.uniform(*radius)
        axes = r * rng.uniform(0.7, 1.3, size=d)
        rot = rotation_matrix(rng.uniform(0, np.pi, size=1 if d == 2 else 3))
        centre = rng.uniform(0, 1, size=d) * (np.asarray(shape) - 1)
        ext = np.ceil(axes.max() * 1.3 / sp).astype(int)
        lo = np.maximum(np.floor(centre).astype(int) - ext, 0)
        hi = np.minimum(np.floor(centre).astype(int) + ext + 1, shape)
        if np.any(hi <= lo):
            continue
        axes_pts = [(np.arange(a, b) - c) * s for a, b, c, s in zip(lo, hi, centre, sp, strict=True)]
        grids = np.meshgrid(*axes_pts, indexing="ij")
        local = np.tensordot(rot.T, np.stack(grids), axes=1)  # into the blob's own axes
        q = np.sqrt(sum((local[i] / axes[i]) ** 2 for i in range(d))).astype(np.float32)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        q = q * wobble[box]
        win = q < best[box]
        best[box][win] = q[win]
        owner[box][win] = k
    owner[best >= 1.0] = -1
    return owner, best


def _finish(signal: np.ndarray, rng: np.random.Generator, blur: float, noise: float, peak: int) -> np.ndarray:
    """Optics and camera: Gaussian blur, shot-like and read noise, quantisation to ``peak``."""
    img = ndimage.gaussian_filter(signal, blur)
    img = img + rng.normal(0.0, 1.0, img.shape) * np.sqrt(np.maximum(img, 0) * noise * 0.5 + noise**2)
    return np.clip(np.round(img * peak), 0, peak).astype(np.uint8 if peak <= 255 else np.uint16)


def _cells(shape: tuple[int, ...], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    image, owner = _cell_image(shape, rng)
    return image, np.where(owner >= 0, 255, 0).astype(np.uint8)


def _nuclei(shape: tuple[int, ...], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    image, owner = _cell_image(shape, rng)
    _, ids = np.unique(owner, return_inverse=True)  # -1 (outside) -> 0, the blobs present -> 1..N
    ids = ids.reshape(shape) + (0 if (owner < 0).any() else 1)
    return image, ids.astype(np.uint16)


def _cell_image(shape: tuple[int, ...], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The ``cells`` image and the blob owning each pixel (-1 outside)."""
    area = float(np.prod(shape))
    r = (5.0, 16.0)
    n = max(3, int(area * 0.45 / (np.pi * 10.0**2)))
    owner, q = _blobs(shape, n, r, rng, (1.0, 1.0))
    bright = rng.uniform(0.25, 0.9, size=n) * np.where(rng.random(n) < 0.2, 0.5, 1.0)  # some dim cells
    background = 0.12 + 0.06 * _smooth(shape, 4, rng)
    texture = 1.0 + 0.08 * ndimage.gaussian_filter(rng.normal(size=shape), 2.0) * 4
    inside = owner >= 0
    signal = background.copy()
    cell = bright[owner[inside]] * (1.0 - 0.35 * q[inside] ** 2) * texture[inside]  # brighter centres
    signal[inside] += cell.astype(np.float32)
    image = _finish(signal, rng, blur=rng.uniform(0.8, 1.6), noise=0.03, peak=255)
    return image, owner


def _spread_points(shape: tuple[int, ...], n: int, min_dist: float, rng: np.random.Generator) -> np.ndarray:
    """Up to ``n`` random points at least ``min_dist`` apart (dart throwing), ``(k, d)``."""
    pts: list[np.ndarray] = []
    for _ in range(30 * n):
        p = rng.uniform(0, 1, size=len(shape)) * np.asarray(shape)
        if all(np.sum((p - q) ** 2) >= min_dist**2 for q in pts):
            pts.append(p)
            if len(pts) == n:
                break
    return np.asarray(pts)


def _membranes(shape: tuple[int, ...], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = max(4, int(np.prod(shape) / 900))
    seeds = _spread_points(shape, n, 0.6 * np.sqrt(np.prod(shape) / n), rng)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"), axis=-1)
    grid += 5.0 * np.stack([_smooth(shape, 5, rng), _smooth(shape, 5, rng)], axis=-1)  # curved walls
    two, _ = cKDTree(seeds).query(grid.reshape(-1, 2), k=2)
    two = two.T.reshape(2, *shape)
    thickness = 1.2 + 0.8 * (1 + _smooth(shape, 4, rng))
    membrane = (two[1] - two[0]) < thickness
    organelles, _ = _blobs(shape, max(2, n // 3), (2.5, 6.0), rng, (1.0, 1.0))
    grain = 0.15 * ndimage.gaussian_filter(rng.normal(size=shape), 1.5)
    signal = 0.62 + 0.08 * _smooth(shape, 8, rng) + grain
    signal[(organelles >= 0) & ~membrane] -= 0.25
    signal[membrane] = 0.18 + 0.05 * rng.random(int(membrane.sum()))
    image = _finish(signal.astype(np.float32), rng, blur=rng.uniform(0.7, 1.2), noise=0.04, peak=255)
    return image, np.where(membrane, 0, 255).astype(np.uint8)


def _cells3d(shape: tuple[int, ...], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    vol = float(np.prod(np.asarray(shape) * np.asarray(SPACING_3D)))
    n = max(3, int(vol * 0.35 / (4.0 / 3.0 * np.pi * 9.0**3)))
    owner, q = _blobs(shape, n, (6.0, 12.0), rng, SPACING_3D)
    inside = owner >= 0
    nucleus = inside & (q < rng.uniform(0.45, 0.6))
    bright = rng.uniform(0.3, 0.6, size=n)
    signal = 0.08 + 0.04 * _smooth(shape, 3, rng)
    signal[inside] += bright[owner[inside]]
    signal[nucleus] += 0.35
    mask = np.zeros(shape, dtype=np.uint8)
    mask[inside], mask[nucleus] = 1, 2
    image = _finish(signal.astype(np.float32), rng, blur=1.0, noise=0.03, peak=4095)
    return image, mask


def _lesions(shape: tuple[int, ...], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    side = float(min(shape))
    yy, xx = np.indices(shape, dtype=np.float32)
    # skin: a smooth tone, fine texture and a few soft shadows as dark as a lesion's rim
    skin = 0.62 + 0.06 * _smooth(shape, 3, rng)
    skin += 0.05 * ndimage.gaussian_filter(rng.normal(size=shape), 1.2).astype(np.float32) * 3
    for _ in range(int(rng.integers(2, 5))):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        r = rng.uniform(0.06, 0.16) * side
        skin -= rng.uniform(0.12, 0.26) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    # the lesion: one irregular blob, darkest inside, fading to the skin's shadows at its rim
    radius = rng.uniform(0.18, 0.4) * side
    cy, cx = (rng.uniform(0.2, 0.8, size=2) * np.asarray(shape)).tolist()
    wobble = 1.0 + 0.18 * _smooth(shape, 4, rng)
    a = rng.uniform(0.75, 1.3)
    q = np.sqrt(((yy - cy) * a) ** 2 + ((xx - cx) / a) ** 2) / radius * wobble
    inside = q < 1.0
    depth = np.where(inside, 0.05 + 0.25 * (1.0 - q**2), 0.0).astype(np.float32)
    depth *= 1.0 + 0.25 * _smooth(shape, 6, rng)  # mottled pigment
    grey = skin - depth
    # colour: skin is pink-beige; pigment takes more blue and green than red
    rgb = np.stack([grey * 1.15 + 0.5 * depth, grey * 0.85, grey * 0.75 - 0.2 * depth])
    image = np.stack([_finish(ch, rng, blur=0.8, noise=0.02, peak=255) for ch in rgb.astype(np.float32)])
    return image, np.where(inside, 255, 0).astype(np.uint8)


def make_image(kind: str = "cells", size: tuple[int, ...] | None = None, *,
               seed: int | np.random.Generator = 0) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image and its exact mask.

    Args:
        kind: ``cells``, ``membranes``, ``nuclei``, ``lesions`` (2D) or ``cells3d`` (3D).
        size: spatial size; default 256x256 (2D) or 32x64x64 (3D).
        seed: an int or a numpy Generator.
    Returns:
        ``(image, mask)``: image uint8 (2D; ``(3, *size)`` RGB for ``lesions``) / uint16 (3D, 12-bit) of
        shape ``size``; mask uint8 with the
        kind's original values (see the module docstring), uint16 object ids for ``nuclei``.
    """
    if kind not in KINDS:
        raise ConfigError(f"synthetic kind {kind!r}: choose one of {', '.join(KINDS)}")
    shape = tuple(int(s) for s in (size or DEFAULT_SIZE[kind]))
    if len(shape) != (3 if kind == "cells3d" else 2) or min(shape) < 8:
        want = "3D" if kind == "cells3d" else "2D"
        raise ConfigError(f"synthetic {kind}: size {list(shape)} must be {want}, each side >= 8")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    make = {"cells": _cells, "membranes": _membranes, "cells3d": _cells3d, "nuclei": _nuclei,
            "lesions": _lesions}[kind]
    return make(shape, rng)


def make_dataset(out: str | Path, *, n: int = 8, size: tuple[int, ...] | None = None, kind: str = "cells",
                 seed: int = 0, ext: str | None = None) -> Path:
    """Write ``n`` synthetic pairs in the dataset-folder layout and return ``out``.

    ``out/images/case_000.png`` + ``out/masks/case_000.png`` (2D) or ``.nii.gz`` (3D; ``ext=".tif"`` for
    TIFF stacks), with spacing (2, 1, 1) in 3D. Image ``i`` is drawn from ``default_rng([seed, i])``, so a
    dataset is reproducible and its first images do not change when ``n`` grows.
    """
    root = Path(out)
    ext = ext or (".nii.gz" if kind == "cells3d" else ".png")
    meta = {"spacing": SPACING_3D, "spatial_dims": 3} if kind == "cells3d" else {"spatial_dims": 2}
    for i in range(int(n)):
        image, mask = make_image(kind, size, seed=np.random.default_rng([seed, i]))
        write_image(root / "images" / f"case_{i:03d}{ext}", image, meta)
        write_mask(root / "masks" / f"case_{i:03d}{ext}", mask, meta)
    return root

"""Coloured overlays of a segmentation on its image, written as PNG (for predict --overlay and evaluate)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from unetseg.fileio import atomic_write

# Class colours (class 1, 2, ...): the Tableau palette, distinct and colour-blind friendly enough.
PALETTE = np.array(
    [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ],
    dtype=np.float32,
)
FP_COLOUR, FN_COLOUR, WRONG_CLASS_COLOUR = (230, 30, 30), (40, 80, 255), (255, 215, 0)


def _slice2d(array: np.ndarray, index: int | None, spatial_dims: int) -> np.ndarray:
    if spatial_dims == 2:
        return array
    return array[..., index, :, :] if array.ndim == 4 else array[index]


def _display(image: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` float in [0, 1]: RGB images as colour, others by their first channel, each stretched
    between its 1st and 99th percentile."""
    img = image if image.ndim == 3 else image[None]
    img = img[:3] if img.shape[0] == 3 else img[:1]
    lo, hi = np.percentile(img, [1, 99])
    out = np.clip((img - lo) / max(hi - lo, 1e-8), 0, 1)
    return np.repeat(out, 3, axis=0).transpose(1, 2, 0) if out.shape[0] == 1 else out.transpose(1, 2, 0)


def colourise(grey: np.ndarray, labels: np.ndarray, alpha: float = 0.45, objects: bool = False) -> np.ndarray:
    """Blend class colours (class 0 left clear) over an ``(H, W, 3)`` [0, 1] image; returns uint8. With
    ``objects`` the labels are object ids: each object gets a colour (neighbouring ids differ: the palette is
    stepped by 3) and its outline is drawn opaque, so touching objects stay apart."""
    rgb = grey * 255.0
    fg = labels > 0
    ids = labels[fg].astype(np.int64) - 1
    colours = PALETTE[(3 * ids if objects else ids) % len(PALETTE)]
    rgb[fg] = (1 - alpha) * rgb[fg] + alpha * colours
    if objects:
        from skimage.segmentation import find_boundaries

        edge = find_boundaries(labels, mode="inner") & fg
        rgb[edge] = PALETTE[(3 * (labels[edge].astype(np.int64) - 1)) % len(PALETTE)]
    return np.clip(rgb, 0, 255).astype(np.uint8)


def error_map(grey: np.ndarray, labels: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """False positives red, false negatives blue, wrong foreground class yellow, over a dimmed image."""
    rgb = grey * 160.0
    fp = (labels > 0) & (truth == 0)
    fn = (labels == 0) & (truth > 0)
    wrong = (labels > 0) & (truth > 0) & (labels != truth)
    for m, colour in ((fp, FP_COLOUR), (fn, FN_COLOUR), (wrong, WRONG_CLASS_COLOUR)):
        rgb[m] = colour
    return rgb.astype(np.uint8)


def save_overlay(
    path: str | Path,
    image: np.ndarray,
    labels: np.ndarray,
    truth: np.ndarray | None = None,
    *,
    slice_index: int | None = None,
    objects: bool = False,
    beside: bool = False,
) -> Path:
    """Write :func:`overlay_panels` as a PNG (atomically)."""
    from PIL import Image

    picture = Image.fromarray(overlay_panels(image, labels, truth, slice_index=slice_index, objects=objects,
                                             beside=beside))
    return atomic_write(Path(path), lambda tmp: picture.save(tmp, format="PNG"))


def overlay_panels(
    image: np.ndarray,
    labels: np.ndarray,
    truth: np.ndarray | None = None,
    *,
    slice_index: int | None = None,
    objects: bool = False,
    beside: bool = False,
) -> np.ndarray:
    """An ``(H, W', 3)`` uint8 picture of ``labels`` over ``image``; with ``truth``, the panels image |
    truth | prediction | errors (FP red, FN blue, wrong class yellow) side by side.

    Args:
        image: ``(*spatial)`` or ``(C, *spatial)``, any range.
        labels: class indices ``(*spatial)``; ``truth`` likewise.
        slice_index: for 3D, the slice along the first axis; default the one with most foreground
            (of ``truth`` when given, else of ``labels``).
        objects: ``labels`` (and ``truth``) are object ids: one colour per object, outlines drawn.
        beside: without ``truth``: the image alone beside the overlay (image | prediction).
    """
    labels = np.asarray(labels)
    d = labels.ndim
    image = np.asarray(image, dtype=np.float32)
    if d == 3:
        ref = truth if truth is not None else labels
        if slice_index is None:
            counts = (np.asarray(ref) > 0).reshape(ref.shape[0], -1).sum(1)
            slice_index = int(np.argmax(counts)) if counts.any() else ref.shape[0] // 2
    grey = _display(_slice2d(image, slice_index, d))
    lab = _slice2d(labels, slice_index, d)
    panels = [colourise(grey, lab, objects=objects)]
    if truth is not None:
        tru = _slice2d(np.asarray(truth), slice_index, d)
        plain = colourise(grey, np.zeros_like(lab))
        errors = (
            error_map(grey, (lab > 0).astype(np.int64), (tru > 0).astype(np.int64))
            if objects
            else error_map(grey, lab, tru)
        )
        panels = [plain, colourise(grey, tru, objects=objects), panels[0], errors]
    elif beside:
        panels = [colourise(grey, np.zeros_like(lab)), panels[0]]
    gap = np.full((grey.shape[0], 4, 3), 255, dtype=np.uint8)
    row = [p for panel in panels for p in (panel, gap)][:-1]
    return np.concatenate(row, axis=1)

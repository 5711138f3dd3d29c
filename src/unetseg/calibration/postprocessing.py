"""Post-processing chosen on held-out predictions, by nnU-Net v2's rule
(``nnunetv2/postprocessing/remove_connected_components.py``, ``determine_postprocessing``):

1. With two or more foreground classes: keep only the largest component of the foreground as a whole (the
   union of the classes). Kept when the mean foreground Dice rises *and* no class's mean Dice falls.
2. Then for each foreground class on its own (on the labels step 1 left): nnU-Net tries keeping its largest
   component; unetseg also tries removing its components under ``N`` pixels for ``N`` in a small grid
   (:func:`size_grid`), and takes the candidate with the highest mean Dice of that class (the first on a
   tie: largest, then the smaller sizes). Kept when that class's mean Dice rises strictly (nnU-Net's
   ``>``: a step that changes nothing, or makes no difference, is not kept).

The Dice of a class is the mean over the held-out images, 1.0 where prediction and truth are both empty
(:func:`unetseg.metrics.dice`'s convention; nnU-Net leaves such images out of the mean). A step touches only
its own classes' pixels (they become background), so the classes' decisions do not interact.

Nothing is predicted twice: each image is summarised once (:func:`summarise`: every component of every
class with its size, its overlap with the truth and the foreground component it lies in), and the Dice of
any choice of kept components follows from those sums. So a whole cross-validation's out-of-fold
predictions stream through in one pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from unetseg.postprocess.semantic import kept_components, label_components

SIZE_FRACTIONS = (0.125, 0.25, 0.5, 1.0)  # of the 5th percentile of the true objects' sizes
SIZE_PERCENTILE = 5.0


@dataclass
class ClassComponents:
    """One class on one image: its predicted components (``sizes``, true pixels in each: ``hits``, the
    foreground component each lies in: ``parent``), its true pixel count and true components' sizes."""

    sizes: np.ndarray
    hits: np.ndarray
    parent: np.ndarray
    truth: int
    true_sizes: np.ndarray

    def dice(self, keep: np.ndarray) -> float:
        """Dice of the class when only the components in ``keep`` remain."""
        predicted, hit = int(self.sizes[keep].sum()), int(self.hits[keep].sum())
        return 1.0 if predicted + self.truth == 0 else 2.0 * hit / (predicted + self.truth)


@dataclass
class ImageComponents:
    """Every foreground class of one image (``classes[c]``) and the sizes of the foreground's components."""

    classes: dict[int, ClassComponents]
    union_sizes: np.ndarray


def summarise(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> ImageComponents:
    """The components of a predicted label image against its truth (both ``(*spatial)`` integers)."""
    union_ids, union_sizes = label_components(pred > 0)
    classes = {}
    for c in range(1, num_classes):
        mask, true = pred == c, truth == c
        ids, sizes = label_components(mask)
        n = len(sizes)
        hits = np.bincount(ids[true], minlength=n + 1)[1:]
        parent = np.zeros(n + 1, np.int64)
        parent[ids[mask]] = union_ids[mask]  # a class's component lies inside one foreground component
        classes[c] = ClassComponents(sizes, hits, parent[1:] - 1, int(true.sum()), label_components(true)[1])
    return ImageComponents(classes, union_sizes)


def size_grid(true_sizes: np.ndarray) -> list[int]:
    """Sizes to try for ``min_size``: fractions (:data:`SIZE_FRACTIONS`) of the 5th percentile of the
    sizes of the class's true objects in the held-out masks (out-of-fold: every training mask), so the
    smallest real objects survive the smaller candidates; none when the masks hold no such object."""
    if true_sizes.size == 0:
        return []
    q = float(np.percentile(true_sizes, SIZE_PERCENTILE))
    return sorted({max(2, int(round(q * f))) for f in SIZE_FRACTIONS})


def _after(op: str, size: int | None, sizes: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """``alive`` after an op on the components still alive."""
    keep = alive.copy()
    if alive.any():
        keep[alive] = kept_components(op, sizes[alive], size)
    return keep


@dataclass
class Choice:
    """What :func:`choose_postprocessing` decided: the steps kept (config form, with their ``gain``), every
    candidate tried with its mean Dice, and the mean Dice per foreground class before and after."""

    steps: list[dict[str, Any]]
    tried: list[dict[str, Any]]
    dice_before: list[float]
    dice_after: list[float]


def choose_postprocessing(images: list[ImageComponents], num_classes: int) -> Choice:
    """nnU-Net's decision (see the module doc) over the summaries of the held-out images."""
    fg = list(range(1, num_classes))
    alive = {c: [np.ones(len(im.classes[c].sizes), bool) for im in images] for c in fg}

    def mean_dice(c: int, keeps: list[np.ndarray]) -> float:
        return float(np.mean([im.classes[c].dice(k) for im, k in zip(images, keeps, strict=True)]))

    base = {c: mean_dice(c, alive[c]) for c in fg}
    before = [base[c] for c in fg]
    steps: list[dict[str, Any]] = []
    tried: list[dict[str, Any]] = []
    if len(fg) > 1 and images:
        kept = [kept_components("largest", im.union_sizes) for im in images]
        cand = {c: [k[im.classes[c].parent] for im, k in zip(images, kept, strict=True)] for c in fg}
        after = {c: mean_dice(c, cand[c]) for c in fg}
        gain = float(np.mean(list(after.values())) - np.mean(list(base.values())))
        tried.append({"classes": fg, "op": "largest", "dice": float(np.mean(list(after.values())))})
        if gain > 0 and all(after[c] >= base[c] for c in fg):
            steps.append({"classes": fg, "op": "largest", "gain": gain})
            alive, base = cand, after
    for c in fg if images else []:
        sizes = np.concatenate([im.classes[c].true_sizes for im in images])
        options: list[tuple[str, int | None]] = [("largest", None)]
        options += [("min_size", n) for n in size_grid(sizes)]
        best: tuple[float, str, int | None, list[np.ndarray]] | None = None
        for op, n in options:
            keeps = [_after(op, n, im.classes[c].sizes, a) for im, a in zip(images, alive[c], strict=True)]
            score = mean_dice(c, keeps)
            tried.append({"classes": [c], "op": op, **({"size": n} if n else {}), "dice": score})
            if best is None or score > best[0]:
                best = (score, op, n, keeps)
        assert best is not None
        if best[0] > base[c]:
            steps.append({"classes": [c], "op": best[1], **({"size": best[2]} if best[2] else {}),
                          "gain": best[0] - base[c]})
            alive[c], base[c] = best[3], best[0]
    return Choice(steps, tried, before, [base[c] for c in fg])

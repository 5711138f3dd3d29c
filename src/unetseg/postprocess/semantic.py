"""Post-processing of semantic labels by connected components, as nnU-Net applies it: keep only the largest
component of a class (or of a union of classes), or remove the components smaller than a size. Removed
pixels become class 0 (background); probabilities are left as they are.

Components are fully connected (8-neighbourhood in 2D, 26 in 3D: scikit-image's default, which nnU-Net's
``remove_all_but_largest_component`` uses); sizes are pixel (voxel) counts. Which steps a model uses is
chosen on held-out predictions (:mod:`unetseg.calibration`) and travels in ``config.infer.postprocess``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from scipy import ndimage


class Step(Protocol):
    """A post-processing step (:class:`unetseg.config.schema.PostprocessStep` is one)."""

    @property
    def classes(self) -> Sequence[int]: ...

    @property
    def op(self) -> str: ...

    @property
    def size(self) -> int | None: ...


def label_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(component ids, sizes)`` of a boolean mask: ids 1..n (0 outside), ``sizes[k]`` the pixel count of
    component ``k + 1``; full connectivity."""
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    ids, n = ndimage.label(mask, structure=structure)
    sizes = np.bincount(ids.ravel(), minlength=n + 1)[1:] if n else np.zeros(0, np.int64)
    return ids, sizes


def kept_components(op: str, sizes: np.ndarray, size: int | None = None) -> np.ndarray:
    """Which components an op keeps (bool per component): ``largest`` keeps every component of the largest
    size (ties all kept, as nnU-Net), ``min_size`` those of at least ``size`` pixels."""
    if op == "largest":
        return sizes == sizes.max() if sizes.size else np.zeros(0, bool)
    if op == "min_size":
        if size is None:
            raise ValueError("min_size needs a size")
        return sizes >= size
    raise ValueError(f"post-processing op {op!r}: expected largest or min_size")


def apply_step(labels: np.ndarray, classes: Sequence[int], op: str, size: int | None = None) -> np.ndarray:
    """``labels`` with the components of ``classes`` (their union) that ``op`` drops set to 0 (a copy when
    anything changes, else ``labels`` itself)."""
    mask = np.isin(labels, list(classes))
    if not mask.any():
        return labels
    ids, sizes = label_components(mask)
    keep = kept_components(op, sizes, size)
    if keep.all():
        return labels
    drop = np.concatenate([[False], ~keep])[ids]
    out = labels.copy()
    out[drop] = 0
    return out


def apply_postprocessing(labels: np.ndarray, steps: Sequence[Step]) -> np.ndarray:
    """Apply ``steps`` in order (config ``infer.postprocess``)."""
    for step in steps:
        labels = apply_step(labels, step.classes, step.op, step.size)
    return labels


def describe_step(step: Step) -> str:
    """``largest component of class 1`` / ``components under 40 px of class 2`` (for logs and reports)."""
    what = "class" if len(step.classes) == 1 else "classes"
    target = f"{what} {'+'.join(str(c) for c in step.classes)}"
    if step.op == "largest":
        return f"keep the largest component of {target}"
    return f"remove components under {step.size} px of {target}"

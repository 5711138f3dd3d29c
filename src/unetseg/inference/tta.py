"""Logits -> probabilities, and test-time augmentation by flips.

Flip TTA (as in nnU-Net's "mirroring"): every tile is also run flipped along each subset of its spatial
axes (4 variants in 2D, 8 in 3D), each prediction is flipped back and the probabilities are averaged.
For a network that commutes with flips this changes nothing; for a trained one it smooths the output.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

from unetseg.models.probabilities import to_probabilities


def flip_axes(spatial_dims: int) -> list[tuple[int, ...]]:
    """Every subset of the spatial axes of an ``(N, C, *spatial)`` tensor, the identity ``()`` first."""
    axes = range(2, 2 + spatial_dims)
    return [c for r in range(spatial_dims + 1) for c in itertools.combinations(axes, r)]


def logits_to_probs(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over classes; a single sigmoid channel becomes two rows ``[1 - p, p]`` so that labels are
    always the argmax over rows. Computed in float32 whatever the autocast dtype of the logits."""
    return to_probabilities(logits.float())


def predict_probs(
    forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, spatial_dims: int, tta: bool
) -> torch.Tensor:
    """Probabilities of the batch ``x`` under ``forward`` (which returns logits), averaged over all flips
    when ``tta`` is set. Each flipped variant runs as its own forward pass so memory does not multiply."""
    if not tta:
        return logits_to_probs(forward(x))
    total: torch.Tensor | None = None
    variants = flip_axes(spatial_dims)
    for axes in variants:
        xf = torch.flip(x, axes) if axes else x
        p = logits_to_probs(forward(xf))
        if axes:
            p = torch.flip(p, axes)
        total = p if total is None else total.add_(p)
    assert total is not None
    return total.div_(len(variants))

"""Logits -> probabilities, and the samples a prediction averages: flips (test-time augmentation) and, for
an ensemble, its members.

Flip TTA (as in nnU-Net's "mirroring"): every tile is also run flipped along each subset of its spatial
axes (4 variants in 2D, 8 in 3D), each prediction is flipped back and the probabilities are averaged.
For a network that commutes with flips this changes nothing; for a trained one it smooths the output.
Ensemble members are more samples of the same average: ``members x flips`` forward passes per tile.

**Temperature.** This is the one place where logits become probabilities, so the temperature
(``infer.temperature``, fitted on held-out predictions) divides the logits here, for every engine and
every path (in memory, streamed, ONNX Runtime), before each sample's softmax.

**Uncertainty.** With ``entropy=True`` the samples' ``sum_c p log p`` (minus their entropies) is summed
beside the probabilities, and the batch comes back with one more channel: the entropy of the samples'
mean minus their mean entropy, the mutual information (the samples' disagreement). The sliding window
blends that channel as it blends the probabilities, so overlapping tiles are not taken for disagreeing
samples (their disagreement is in the entropy of the blended mean, not in the mutual information); with
one sample (no TTA, one model) it is exactly 0. :func:`uncertainty_map` makes the final map.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from unetseg.models.probabilities import to_probabilities

Forward = Callable[[torch.Tensor], torch.Tensor]


def flip_axes(spatial_dims: int) -> list[tuple[int, ...]]:
    """Every subset of the spatial axes of an ``(N, C, *spatial)`` tensor, the identity ``()`` first."""
    axes = range(2, 2 + spatial_dims)
    return [c for r in range(spatial_dims + 1) for c in itertools.combinations(axes, r)]


def logits_to_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Softmax over classes of ``logits / temperature``; a single sigmoid channel becomes two rows
    ``[1 - p, p]`` so that labels are always the argmax over rows. Computed in float32 whatever the
    autocast dtype of the logits."""
    logits = logits.float()
    return to_probabilities(logits / temperature if temperature != 1.0 else logits)


def predict_probs(
    forward: Forward | Sequence[Forward], x: torch.Tensor, spatial_dims: int, tta: bool, *,
    temperature: float = 1.0, entropy: bool = False,
) -> torch.Tensor:
    """Probabilities ``(N, C, *spatial)`` of the batch ``x``, averaged over the samples: every member of
    ``forward`` (one function returning logits, or an ensemble's list of them) and, with ``tta``, every
    flip. Each sample runs as its own forward pass so memory does not multiply. ``entropy``: one more
    channel, the samples' mutual information (see the module doc)."""
    members = [forward] if callable(forward) else list(forward)
    variants = flip_axes(spatial_dims) if tta else [()]
    samples = len(members) * len(variants)
    total: torch.Tensor | None = None
    plogp: torch.Tensor | None = None
    for member in members:
        for axes in variants:
            xf = torch.flip(x, axes) if axes else x
            p = logits_to_probs(member(xf), temperature)
            if axes:
                p = torch.flip(p, axes)
            if entropy and samples > 1:
                term = torch.special.xlogy(p, p).sum(dim=1, keepdim=True)
                plogp = term if plogp is None else plogp.add_(term)
            total = p if total is None else total.add_(p)
    assert total is not None
    if samples > 1:
        total.div_(samples)
    if not entropy:
        return total
    if plogp is None:  # one sample: it agrees with itself
        return torch.cat([total, torch.zeros_like(total[:, :1])], dim=1)
    mutual = plogp.div_(samples).sub_(torch.special.xlogy(total, total).sum(dim=1, keepdim=True))
    return torch.cat([total, mutual.clamp_(min=0.0)], dim=1)


def uncertainty_map(probs: np.ndarray, mutual: np.ndarray) -> np.ndarray:
    """``(2, *spatial)`` float32 from the mean probabilities ``(C, *spatial)`` and the (blended) mutual
    information channel: the entropy of the mean probability and the mutual information, both divided by
    ``log C`` so 1 means "every class equally likely"."""
    p = torch.from_numpy(np.ascontiguousarray(probs, dtype=np.float32))
    scale = 1.0 / math.log(p.shape[0])
    total = torch.special.xlogy(p, p).sum(dim=0).mul_(-scale).clamp_(0.0, 1.0)
    mi = torch.from_numpy(np.array(mutual, dtype=np.float32)).mul_(scale).clamp_(0.0, 1.0)
    return torch.stack([total, torch.minimum(mi, total)]).numpy()

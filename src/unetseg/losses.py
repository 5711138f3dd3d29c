"""Segmentation losses for binary (one sigmoid channel) and multi-class (softmax) logits, 2D and 3D.

Every loss is called as ``loss(logits, target, weight=None)``: ``logits (N, C, *spatial)``, ``target (N,
*spatial)`` int64 class indices, ``weight (N, *spatial)`` an optional per-pixel weight (the U-Net weight map,
see :func:`unet_weight_map`). A single channel (C == 1) is a sigmoid output: it is handled as the two-class
softmax over ``[0, x]``, which equals ``[1 - sigmoid(x), sigmoid(x)]`` exactly, so CE is BCE and one code
path serves both. Losses run in float32 with autocast switched off, whatever the logits' dtype or memory
format (bf16 autocast, channels_last).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unetseg.errors import ConfigError

_REGION_OPTIONS = ("smooth", "batch_dice", "include_background")
LOSS_OPTIONS: dict[str, tuple[str, ...]] = {
    "dice": _REGION_OPTIONS,
    "ce": ("class_weights",),
    "dice_ce": ("dice_weight", "ce_weight", "class_weights", *_REGION_OPTIONS),
    "focal": ("gamma", "alpha"),
    "tversky": ("alpha", "beta", *_REGION_OPTIONS),
    "lovasz": (),
}


def _two_channel(x: torch.Tensor) -> torch.Tensor:
    """Sigmoid (N, 1, ...) -> softmax (N, 2, ...); softmax([0, x]) = [1 - sigmoid(x), sigmoid(x)]."""
    return torch.cat([torch.zeros_like(x), x], dim=1) if x.shape[1] == 1 else x


def _one_hot(target: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Class indices (N, *S) -> one-hot of the shape, dtype and memory format of ``like`` (N, K, *S)."""
    return torch.zeros_like(like).scatter_(1, target.unsqueeze(1), 1.0)


def _class_vector(values: Sequence[float] | None, k: int, what: str) -> torch.Tensor | None:
    if values is None:
        return None
    vec = torch.as_tensor([float(v) for v in values], dtype=torch.float32)
    if vec.numel() != k or bool((vec < 0).any()):
        raise ConfigError(f"loss {what}={list(values)}: expected {k} non-negative numbers, one per class")
    return vec


class SegmentationLoss(nn.Module):
    """Base class: checks shapes, switches autocast off, casts to float32 and calls :meth:`compute`.

    Args:
        num_classes: channels of the logits (1 = binary sigmoid output, >= 2 = softmax).
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"loss: num_classes={num_classes}, expected >= 1")
        self.num_classes = num_classes
        self.k = max(num_classes, 2)  # classes after the sigmoid -> two-class expansion

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Loss of ``logits (N, C, *S)`` against ``target (N, *S)``; ``weight (N, *S)``: CE/focal only."""
        spatial_match = target.shape == logits.shape[:1] + logits.shape[2:]
        if logits.dim() < 3 or logits.shape[1] != self.num_classes or not spatial_match:
            raise ValueError(
                f"{type(self).__name__}: logits {tuple(logits.shape)} (expected C={self.num_classes}) "
                f"do not match target {tuple(target.shape)}"
            )
        if weight is not None and weight.shape != target.shape:
            raise ValueError(f"{type(self).__name__}: weight {tuple(weight.shape)} != target "
                             f"{tuple(target.shape)}")
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return self.compute(logits.float(), target.long(), None if weight is None else weight.float())

    def compute(self, x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        """Loss from float32 logits; the default takes one log-softmax and calls :meth:`from_log_probs`."""
        return self.from_log_probs(F.log_softmax(_two_channel(x), dim=1), target, weight)

    def from_log_probs(
        self, logp: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None
    ) -> torch.Tensor:
        """Loss from log-probabilities ``(N, K, *S)`` (K >= 2)."""
        raise NotImplementedError


class CrossEntropyLoss(SegmentationLoss):
    """Cross-entropy (BCE for one sigmoid channel) with optional class weights and per-pixel weight map.

    ``loss = sum(w(x) * cw[t(x)] * -log p_t(x)) / sum(cw[t(x)])``: the class-weighted mean of PyTorch
    (a plain mean without class weights); the per-pixel weight ``w`` (U-Net eq. 1, Ronneberger et al. 2015)
    multiplies each pixel's term.

    Args:
        num_classes: logit channels (1 = BCE).
        class_weights: one weight per class (two for a sigmoid output: background, foreground).
    """

    def __init__(self, num_classes: int, class_weights: Sequence[float] | None = None) -> None:
        super().__init__(num_classes)
        cw = _class_vector(class_weights, self.k, "class_weights")
        self.register_buffer("class_weights", cw, persistent=False)

    def from_log_probs(self, logp, target, weight):
        nll = -logp.gather(1, target.unsqueeze(1)).squeeze(1)
        if weight is not None:
            nll = nll * weight
        if self.class_weights is None:
            return nll.mean()
        cw = self.class_weights.to(logp.device)[target]
        return (nll * cw).sum() / cw.sum().clamp_min(1e-12)


class _RegionLoss(SegmentationLoss):
    """Shared part of the soft Dice and Tversky losses: soft TP/FP/FN per class, reduced per sample or batch.

    The per-pixel ``weight`` is not used by region losses (it is a CE weighting).
    """

    def __init__(self, num_classes: int, smooth: float = 1e-5, batch_dice: bool = False,
                 include_background: bool = False) -> None:
        super().__init__(num_classes)
        if smooth < 0:
            raise ConfigError(f"loss option smooth={smooth}: expected >= 0")
        self.smooth, self.batch_dice = float(smooth), bool(batch_dice)
        self.include_background = bool(include_background)

    def score(self, tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def from_log_probs(self, logp, target, weight):
        probs = logp.exp()
        onehot = _one_hot(target, probs)
        dims = (0, *range(2, probs.dim())) if self.batch_dice else tuple(range(2, probs.dim()))
        tp = (probs * onehot).sum(dims)
        fp = probs.sum(dims) - tp
        fn = onehot.sum(dims) - tp
        s = self.score(tp, fp, fn)  # (N, K) or (K,)
        if not self.include_background:
            s = s[..., 1:]
        return 1.0 - s.mean()


class DiceLoss(_RegionLoss):
    """Soft Dice loss (Milletari et al. 2016; nnU-Net's form): ``1 - mean_c (2TP + s) / (2TP + FP + FN + s)``.

    Args:
        num_classes: logit channels (1 = sigmoid, scored as background/foreground).
        smooth: ``s`` in the formula (keeps a class absent from both prediction and truth at Dice 1).
        batch_dice: sum TP/FP/FN over the whole batch (nnU-Net "batch Dice") instead of per sample.
        include_background: also average class 0.
    """

    def score(self, tp, fp, fn):
        return (2 * tp + self.smooth) / (2 * tp + fp + fn + self.smooth).clamp_min(1e-8)


class TverskyLoss(_RegionLoss):
    """Tversky loss (Salehi et al. 2017): ``1 - mean_c (TP + s) / (TP + alpha FP + beta FN + s)``.

    ``alpha = beta = 0.5`` is the Dice loss; a larger ``beta`` penalises false negatives more (recall).
    Other arguments as :class:`DiceLoss`.
    """

    def __init__(self, num_classes: int, alpha: float = 0.3, beta: float = 0.7, **region: Any) -> None:
        super().__init__(num_classes, **region)
        if alpha < 0 or beta < 0:
            raise ConfigError(f"tversky options alpha={alpha}, beta={beta}: expected >= 0")
        self.alpha, self.beta = float(alpha), float(beta)

    def score(self, tp, fp, fn):
        return (tp + self.smooth) / (tp + self.alpha * fp + self.beta * fn + self.smooth).clamp_min(1e-8)


class DiceCELoss(SegmentationLoss):
    """``dice_weight * Dice + ce_weight * CE`` from one softmax: nnU-Net's default loss (Isensee et al. 2021).

    The per-pixel ``weight`` applies to the CE part. Other arguments as :class:`DiceLoss` and
    :class:`CrossEntropyLoss`.
    """

    def __init__(self, num_classes: int, dice_weight: float = 1.0, ce_weight: float = 1.0,
                 class_weights: Sequence[float] | None = None, **region: Any) -> None:
        super().__init__(num_classes)
        self.dice, self.ce = DiceLoss(num_classes, **region), CrossEntropyLoss(num_classes, class_weights)
        self.dice_weight, self.ce_weight = float(dice_weight), float(ce_weight)

    def from_log_probs(self, logp, target, weight):
        return (self.dice_weight * self.dice.from_log_probs(logp, target, None)
                + self.ce_weight * self.ce.from_log_probs(logp, target, weight))


class FocalLoss(SegmentationLoss):
    """Focal loss (Lin et al. 2017): ``mean(-alpha_t (1 - p_t)^gamma log p_t)``, times the per-pixel weight.

    Args:
        num_classes: logit channels (1 = sigmoid focal loss).
        gamma: focusing parameter (0 gives cross-entropy).
        alpha: ``None`` (no class balance), a float ``a`` (``a`` for foreground classes, ``1 - a`` for class
            0, as RetinaNet and MONAI) or one weight per class.
    """

    def __init__(
        self, num_classes: int, gamma: float = 2.0, alpha: float | Sequence[float] | None = None
    ) -> None:
        super().__init__(num_classes)
        if gamma < 0:
            raise ConfigError(f"focal option gamma={gamma}: expected >= 0")
        self.gamma = float(gamma)
        if isinstance(alpha, (int, float)):
            alpha = [1.0 - alpha] + [float(alpha)] * (self.k - 1)
        self.register_buffer("alpha", _class_vector(alpha, self.k, "alpha"), persistent=False)

    def from_log_probs(self, logp, target, weight):
        logpt = logp.gather(1, target.unsqueeze(1)).squeeze(1)
        loss = -(1.0 - logpt.exp()).clamp_min(0.0).pow(self.gamma) * logpt
        if self.alpha is not None:
            loss = loss * self.alpha.to(logp.device)[target]
        if weight is not None:
            loss = loss * weight
        return loss.mean()


def _lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of Lovasz extension of the Jaccard loss, along the last dim (Berman et al. 2018, Alg. 1)."""
    gts = gt_sorted.sum(-1, keepdim=True)
    intersection = gts - gt_sorted.cumsum(-1)
    union = gts + (1.0 - gt_sorted).cumsum(-1)  # >= 1 everywhere
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[..., :1], jaccard.diff(dim=-1)], dim=-1)


class LovaszLoss(SegmentationLoss):
    """Lovasz loss (Berman et al. 2018): surrogate of the Jaccard index, computed per image.

    One sigmoid channel: Lovasz hinge on the logits. Softmax: Lovasz-softmax averaged over the classes present
    in each image's truth, then over images. One batched sort per (image, class); the weight map is unused.
    """

    def compute(self, x, target, weight):
        n = x.shape[0]
        if self.num_classes == 1:
            gt = target.reshape(n, -1).float()
            errors = 1.0 - x.reshape(n, -1) * (2.0 * gt - 1.0)
            errors, perm = errors.sort(dim=-1, descending=True)
            return (F.relu(errors) * _lovasz_grad(gt.gather(-1, perm))).sum(-1).mean()
        probs = x.softmax(dim=1).reshape(n, self.k, -1)
        fg = _one_hot(target.reshape(n, -1), probs)
        errors, perm = (fg - probs).abs().sort(dim=-1, descending=True)
        losses = (errors * _lovasz_grad(fg.gather(-1, perm))).sum(-1)  # (N, K)
        present = (fg.sum(-1) > 0).float()
        return ((losses * present).sum(1) / present.sum(1)).mean()


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of a loss over several output heads (deep supervision, Lee et al. 2015; nnU-Net weights).

    Called with a list of logits ordered coarse..fine (the last head is the final output), e.g. a UNet++ with
    deep supervision. Heads smaller than the target get a nearest-neighbour downsampled target (and weight
    map). A plain tensor is passed straight to ``loss``.

    Args:
        loss: the per-head loss.
        weights: one weight per head; default nnU-Net's ``1 / 2**i`` counted from the finest head, normalised
            to sum to one (the last head weighs most).
    """

    def __init__(self, loss: nn.Module, weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.loss = loss
        self.weights = None if weights is None else [float(w) for w in weights]

    def head_weights(self, n: int) -> list[float]:
        """The normalised weight of each of ``n`` heads (coarse..fine)."""
        if self.weights is None:
            raw = [0.5 ** (n - 1 - i) for i in range(n)]
        elif len(self.weights) != n:
            raise ConfigError(f"deep supervision: {len(self.weights)} weights given for {n} output heads")
        else:
            raw = self.weights
        total = sum(raw)
        return [w / total for w in raw]

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor,
                weight: torch.Tensor | None = None) -> torch.Tensor:
        """Weighted loss over all heads (or the plain loss for a single tensor)."""
        if isinstance(outputs, torch.Tensor):
            return self.loss(outputs, target, weight)
        total: torch.Tensor | float = 0.0
        for w, logits in zip(self.head_weights(len(outputs)), outputs, strict=True):
            t, pw = target, weight
            if logits.shape[2:] != target.shape[1:]:
                size = logits.shape[2:]
                t = F.interpolate(target.unsqueeze(1).float(), size=size, mode="nearest").squeeze(1).long()
                if weight is not None:
                    pw = F.interpolate(weight.unsqueeze(1).float(), size=size, mode="nearest").squeeze(1)
            total = total + w * self.loss(logits, t, pw)
        return torch.as_tensor(total)  # the sum itself (a tensor) whenever there are heads


_LOSSES = {"dice": DiceLoss, "ce": CrossEntropyLoss, "dice_ce": DiceCELoss, "focal": FocalLoss,
           "tversky": TverskyLoss, "lovasz": LovaszLoss}


def available_losses() -> list[str]:
    """Names accepted by :func:`build_loss`."""
    return list(_LOSSES)


def build_loss(name: str, num_classes: int, **options: Any) -> SegmentationLoss:
    """Build a loss by name (``dice``, ``ce``, ``dice_ce``, ``focal``, ``tversky``, ``lovasz``).

    Args:
        name: the loss; see ``LOSS_OPTIONS`` for the options each accepts.
        num_classes: logit channels of the model (1 = binary sigmoid).
        **options: loss options (e.g. ``smooth``, ``batch_dice``, ``class_weights``, ``gamma``).

    Raises:
        ConfigError: unknown name or option (the message lists what is allowed) or a bad value.
    """
    if name not in _LOSSES:
        raise ConfigError(f"unknown loss {name!r}: expected one of {', '.join(_LOSSES)}")
    unknown = sorted(set(options) - set(LOSS_OPTIONS[name]))
    if unknown:
        allowed = ", ".join(LOSS_OPTIONS[name]) or "none"
        raise ConfigError(f"loss {name!r}: unknown option(s) {', '.join(unknown)} (allowed: {allowed})")
    try:
        return _LOSSES[name](num_classes, **options)
    except (TypeError, ValueError, OverflowError) as exc:  # e.g. a string where a number is needed
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"loss {name!r}: bad option value ({' '.join(str(exc).split())[:120]})") from None

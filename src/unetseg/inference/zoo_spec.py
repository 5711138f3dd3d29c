"""What a BioImage Model Zoo description (model spec 0.5; older ones converted by ``bioimageio.spec``) means
for unetseg's engines: the tensors' axes and sizes as a :class:`TensorLayout`, the input's preprocessing as
:mod:`unetseg.data.normalize` steps, and whether the output holds logits or probabilities. Whatever has no
exact counterpart is refused with one line (:class:`~unetseg.errors.CheckpointError`), never approximated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from unetseg.errors import CheckpointError

SPACE = ("z", "y", "x")
FLOAT_TYPES = ("float32", "float64")
TINY = 1e-12  # probabilities are clamped here before their log (a class given 0 stays far below the others)


@dataclass(frozen=True)
class TensorLayout:
    """How unetseg's ``(N, C, *spatial)`` tiles map to a package's one input and one output.

    ``inputs``/``outputs``: the package's axes in its order (``batch``, ``channel``, ``z``, ``y``, ``x``;
    batch or channel may be absent). ``sizes``: ``(min, step)`` per spatial axis in unetseg's order (step
    0: a fixed size). ``offsets``/``halos``: the output is ``input + offset`` per axis, of which ``halo``
    is cropped on each side. ``probabilities``: the output holds probabilities (made logits again for the
    predictor's softmax) rather than logits. ``batched``: its batch axis takes several tiles at once."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    sizes: tuple[tuple[int, int], ...]
    offsets: tuple[int, ...]
    halos: tuple[int, ...]
    channels: int
    classes: int
    probabilities: bool
    batched: bool = True

    @property
    def spatial_dims(self) -> int:
        return len(self.sizes)

    @property
    def divisors(self) -> tuple[int, ...]:
        return tuple(step or 1 for _, step in self.sizes)

    def valid_input_size(self, size: Sequence[int]) -> tuple[int, ...]:
        """The smallest size per axis ``>= size`` of the form ``min + n * step`` (a fixed axis: its size)."""
        return tuple(low if not step else low + max(0, math.ceil((int(s) - low) / step)) * step
                     for s, (low, step) in zip(size, self.sizes, strict=True))

    def output_size(self, size: Sequence[int]) -> tuple[int, ...]:
        return tuple(int(s) + o - 2 * h for s, o, h in zip(size, self.offsets, self.halos, strict=True))

    def run(self, forward: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
        """Logits ``(N, classes, *output)`` of the tiles ``x`` ``(N, C, *spatial)`` through ``forward`` (one
        call for the batch, or one per tile when the package has no batch axis)."""
        ours = ("batch", "channel", *SPACE[3 - self.spatial_dims:])
        if "batch" in self.inputs and self.batched:
            y = forward(np.ascontiguousarray(_to(x, ours, self.inputs)))
            out = _from(y, self.outputs, ours)
        else:
            parts = [_from(forward(np.ascontiguousarray(_to(t[None], ours, self.inputs))), self.outputs, ours)
                     for t in x]  # one tile at a time (no batch axis, or one of size 1)
            out = np.concatenate(parts)
        crop = (slice(None), slice(None), *(slice(h, out.shape[2 + k] - h) for k, h in enumerate(self.halos)))
        return self._logits(np.asarray(out[crop], dtype=np.float32))

    def _logits(self, out: np.ndarray) -> np.ndarray:
        if not self.probabilities:
            return out
        p = np.clip(out, TINY, 1.0)
        if out.shape[1] == 1:  # one probability channel: its logit, which the predictor's sigmoid inverts
            return (np.log(p) - np.log(np.clip(1.0 - out, TINY, 1.0))).astype(np.float32)
        return np.log(p).astype(np.float32)


def _to(x: np.ndarray, ours: tuple[str, ...], theirs: tuple[str, ...]) -> np.ndarray:
    """unetseg's ``(N, C, *spatial)`` in the package's axis order (a missing batch/channel axis dropped)."""
    if "channel" not in theirs:
        x = x[:, 0]
        ours = tuple(a for a in ours if a != "channel")
    if "batch" not in theirs:
        x = x[0]
        ours = ours[1:]
    return np.transpose(x, [ours.index(a) for a in theirs])


def _from(y: np.ndarray, theirs: tuple[str, ...], ours: tuple[str, ...]) -> np.ndarray:
    """The package's output back as ``(N, C, *spatial)``."""
    axes = list(theirs)
    for name in ("channel", "batch"):
        if name not in axes:
            y, axes = y[None], [name, *axes]
    return np.transpose(y, [axes.index(a) for a in ours])


def _axis_name(axis: Any, where: str) -> str:
    kind = str(axis.type)
    if kind in ("batch", "channel"):
        return kind
    if kind == "space" and str(axis.id) in SPACE:
        return str(axis.id)
    raise CheckpointError(f"its {where} has a {kind} axis {str(axis.id)!r}; unetseg runs batch, channel and "
                          "z/y/x space axes")


def _size(axis: Any) -> tuple[int, int]:
    from bioimageio.spec.model.v0_5 import ParameterizedSize

    size = axis.size
    if isinstance(size, int):
        return int(size), 0
    if isinstance(size, ParameterizedSize):
        return int(size.min), int(size.step)
    raise CheckpointError(f"input axis {axis.id!s} is sized by another axis or by the data; unetseg "
                          "takes fixed or min + n*step sizes")


def layout_of(descr: Any, probabilities: bool | None) -> TensorLayout:
    """The layout of a (0.5) model description; ``probabilities``: what the graph's last operation says
    (None: unknown, then the output's declared postprocessing decides)."""
    if len(descr.inputs) != 1 or len(descr.outputs) != 1:
        raise CheckpointError(f"{len(descr.inputs)} input(s) and {len(descr.outputs)} output(s); unetseg "
                              "runs models of one image in and one segmentation out")
    ipt, out = descr.inputs[0], descr.outputs[0]
    inputs = tuple(_axis_name(a, "input") for a in ipt.axes)
    outputs = tuple(_axis_name(a, "output") for a in out.axes)
    space = [a for a in SPACE if a in inputs]
    if len(space) not in (2, 3) or sorted(space) != sorted(a for a in outputs if a in SPACE):
        raise CheckpointError(f"input axes {list(inputs)} and output axes {list(outputs)}: unetseg runs 2D "
                              "(y, x) and 3D (z, y, x) images with the same space axes in and out")
    by_id = {str(a.id): a for a in ipt.axes}
    out_by_id = {str(a.id): a for a in out.axes}
    sizes = tuple(_size(by_id[a]) for a in space)
    offsets, halos = zip(*(_offset(out_by_id[a], by_id[a]) for a in space), strict=True)
    channels = _channels(by_id.get("channel"), "input")
    classes = _channels(out_by_id.get("channel"), "output")
    batched = "batch" in by_id and by_id["batch"].size is None  # a batch axis of size 1 takes one tile
    return TensorLayout(inputs, outputs, sizes, tuple(offsets), tuple(halos), channels, classes,
                        _output_kind(out, classes, probabilities), batched)


def _channels(axis: Any, where: str) -> int:
    if axis is None:
        return 1
    if isinstance(axis.size, int):
        return int(axis.size)
    raise CheckpointError(f"its {where} channel axis has no fixed size")


def _offset(axis: Any, ref: Any) -> tuple[int, int]:
    """``(offset, halo)`` of an output space axis against the input's."""
    from bioimageio.spec.model.v0_5 import SizeReference, WithHalo

    size, halo = axis.size, int(axis.halo) if isinstance(axis, WithHalo) else 0
    if float(axis.scale) != float(ref.scale):
        raise CheckpointError(f"output axis {axis.id!s} has another scale than the input's (a resampling "
                              "model); unetseg segments at the input's grid")
    if isinstance(size, int):
        low, step = _size(ref)
        if step:
            raise CheckpointError(f"output axis {axis.id!s} has a fixed size but its input axis does not")
        return size - low, halo
    if isinstance(size, SizeReference) and str(size.axis_id) == str(axis.id):
        return int(size.offset), halo
    raise CheckpointError(f"output axis {axis.id!s} is not sized by the input's {axis.id!s} axis")


def _output_kind(out: Any, classes: int, graph_probabilities: bool | None) -> bool:
    """True when the output holds probabilities, False for logits (a softmax, or a sigmoid of one
    channel, left to the postprocessing); refuses anything else."""
    steps = [p for p in out.postprocessing if not (p.id == "ensure_dtype" and p.kwargs.dtype in FLOAT_TYPES)]
    if not steps:
        if graph_probabilities is None:
            raise CheckpointError("its output is not declared as class probabilities (no softmax/sigmoid in "
                                  "its postprocessing, and its graph does not end in one)")
        return graph_probabilities
    if len(steps) == 1 and steps[0].id == "softmax" and str(steps[0].kwargs.axis) == "channel":
        return False
    if len(steps) == 1 and steps[0].id == "sigmoid" and classes == 1:
        return False
    raise CheckpointError(f"its output postprocessing ({', '.join(p.id for p in steps)}) is not class "
                          "probabilities; unetseg runs models whose output is a softmax over channels or "
                          "one sigmoid channel")


def steps_of(descr: Any) -> list[dict[str, Any]]:
    """The input's preprocessing as :mod:`unetseg.data.normalize` steps (refused: what has none)."""
    ipt = descr.inputs[0]
    types = {str(d.type) for d in (ipt.data if isinstance(ipt.data, (list, tuple)) else [ipt.data])}
    if not types <= set(FLOAT_TYPES):
        raise CheckpointError(f"its input is {', '.join(sorted(types))}; unetseg feeds float32 images")
    return [s for s in (_step(p) for p in ipt.preprocessing) if s is not None]


def _per_channel(kwargs: Any) -> bool:
    """Statistics per channel unless the axes reduce over ``channel`` too (None: every axis)."""
    axes = kwargs.axes
    return axes is not None and "channel" not in [str(a) for a in axes]


def _step(p: Any) -> dict[str, Any] | None:
    op, k = str(p.id), p.kwargs
    if op == "ensure_dtype":
        if k.dtype not in FLOAT_TYPES:
            raise CheckpointError(f"its preprocessing casts to {k.dtype}; unetseg feeds float32 images")
        return None
    if op == "scale_mean_variance" or (op == "scale_range" and k.reference_tensor not in (None, "input")):
        raise CheckpointError(f"its preprocessing step {op!r} refers to another tensor")
    if op == "zero_mean_unit_variance":
        return {"op": op, "per_channel": _per_channel(k), "eps": float(k.eps)}
    if op == "scale_range":
        return {"op": op, "per_channel": _per_channel(k), "eps": float(k.eps),
                "min_percentile": float(k.min_percentile), "max_percentile": float(k.max_percentile)}
    if op in ("scale_linear", "fixed_zero_mean_unit_variance"):
        along = str(k.axis) if "axis" in type(k).model_fields else "channel"
        if along != "channel":
            raise CheckpointError(f"its preprocessing step {op!r} varies along {along}, not the channels")
        keys = ("gain", "offset") if op == "scale_linear" else ("mean", "std")
        return {"op": op, **{n: _value(getattr(k, n)) for n in keys}}
    if op == "clip":
        names = ("min", "max", "min_percentile", "max_percentile")
        return {"op": op, "per_channel": _per_channel(k), **{n: getattr(k, n) for n in names}}
    raise CheckpointError(f"its preprocessing step {op!r} has no unetseg equivalent")


def _value(v: Any) -> float | list[float]:
    return [float(x) for x in v] if isinstance(v, (list, tuple)) else float(v)

"""Input/output size arithmetic: "same" padding to a multiple of 2**depth, and the unpadded ("valid")
U-Net of the 2015 paper, whose output is smaller than its input (572 -> 388 at depth 4).

For "valid" padding each level applies two unpadded 3x3 convs (-4 per side pair) and a 2x pool that needs
an even size; the decoder doubles and again loses 4. So the valid input sizes are
``n = 2**depth * b + 4 * (2**depth - 1)`` for a bottleneck input size ``b`` large enough that every
intermediate size stays positive, and the output is always ``n - 2 * valid_border(depth)``.
Overlap-tile inference (the paper's Fig. 2) feeds tiles of a valid size and keeps their whole output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import overload

from unetseg.errors import ConfigError
from unetseg.models.layers import check_positive

Size = int | Sequence[int]


def same_padding(size: int, multiple: int) -> tuple[int, int]:
    """(before, after) padding that brings ``size`` up to a multiple of ``multiple``, split evenly.

    Plain ``int`` arithmetic, so it also works on the symbolic sizes of ``torch.export``. The padded size is
    written as ``multiple * ceil(size / multiple)`` (not ``size + (-size) % multiple``) so the exporter can
    prove that pooled-then-upsampled sizes match the skips at every level."""
    total = multiple * ((size + multiple - 1) // multiple) - size
    return total // 2, total - total // 2


def _valid_chain(n: int, depth: int) -> int | None:
    """The output size for input ``n``, or ``None`` when some level gets an odd or non-positive size."""
    a = n
    for _ in range(depth):
        a -= 4
        if a < 2 or a % 2:
            return None
        a //= 2
    a -= 4
    if a < 1:
        return None
    for _ in range(depth):
        a = 2 * a - 4
        if a < 1:
            return None
    return a


def valid_border(depth: int) -> int:
    """Pixels lost on each side by the unpadded U-Net of ``depth`` (92 at depth 4: 572 -> 388)."""
    check_positive("depth", depth)
    return 6 * 2**depth - 4


def min_valid_input_size(depth: int) -> int:
    """The smallest input size the unpadded U-Net of ``depth`` accepts."""
    check_positive("depth", depth)
    step, offset = 2**depth, 4 * (2**depth - 1)
    b = 1
    while _valid_chain(step * b + offset, depth) is None:
        b += 1
    return step * b + offset


def valid_input_sizes(depth: int, max_size: int = 1024) -> list[int]:
    """Every valid input size of the unpadded U-Net of ``depth`` up to ``max_size``, ascending."""
    start, step = min_valid_input_size(depth), 2**depth
    return list(range(start, max_size + 1, step))


@overload
def nearest_valid_input_size(size: int, depth: int) -> int: ...
@overload
def nearest_valid_input_size(size: Sequence[int], depth: int) -> tuple[int, ...]: ...
def nearest_valid_input_size(size: Size, depth: int) -> int | tuple[int, ...]:
    """The smallest valid input size ``>= size`` (per dimension when ``size`` is a sequence)."""
    if not isinstance(size, int):
        return tuple(int(nearest_valid_input_size(int(s), depth)) for s in size)
    start, step = min_valid_input_size(depth), 2**depth
    return start if size <= start else start + -(-(size - start) // step) * step


@overload
def valid_output_size(input_size: int, depth: int) -> int: ...
@overload
def valid_output_size(input_size: Sequence[int], depth: int) -> tuple[int, ...]: ...
def valid_output_size(input_size: Size, depth: int) -> int | tuple[int, ...]:
    """The output size of the unpadded U-Net of ``depth`` for ``input_size`` (per dimension for a sequence).

    Raises :class:`ConfigError` naming the nearest valid sizes when ``input_size`` is not valid.
    """
    if not isinstance(input_size, int):
        return tuple(int(valid_output_size(int(s), depth)) for s in input_size)
    check_positive("depth", depth)
    out = _valid_chain(input_size, depth)
    if out is None:
        lo, up = min_valid_input_size(depth), nearest_valid_input_size(input_size, depth)
        below = f"{up - 2**depth} or " if up - 2**depth >= lo else ""
        raise ConfigError(
            f"input size {input_size} does not fit the unpadded (padding='valid') U-Net of depth {depth}; "
            f"use {below}{up} (valid sizes are {lo} + k*{2**depth}, minimum {lo})"
        )
    return out

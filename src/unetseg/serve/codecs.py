"""What goes over the wire: an upload's bytes decoded by the project's readers (one rule for axes,
channels and the decompression-bomb budget, :func:`unetseg.io.images.decode_image`), and a result encoded as
the upload's own format (by the project's writers) or as JSON with run-length-encoded masks.

**Run-length encoding** (``"rle"``): COCO's uncompressed RLE, as ``pycocotools`` writes it, extended to 3D:
``{"size": shape, "counts": [...]}``, where the mask is flattened in column-major (Fortran) order (the first
axis varies fastest: y in 2D, z in 3D) and ``counts`` are the lengths of alternating runs of 0s and 1s,
starting with 0s (so the first count may be 0); they sum to the number of pixels. Decoding:
``np.repeat(np.arange(len(counts)) % 2, counts).reshape(size, order="F")``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from unetseg.errors import DataError, TooLargeError, UnetsegError
from unetseg.io import formats
from unetseg.io.images import decode_image, encode_instances, encode_mask, instance_ids, match_channels

NAME = "upload"  # what messages call the uploaded file: a request never names a server path
FORMATS = ("json", "png", "tiff", "nifti")
_SUFFIX = {"png": ".png", "tiff": ".tif", "nifti": ".nii.gz"}
_MEDIA = {"png": "image/png", "tiff": "image/tiff", "nifti": "application/gzip", "json": "application/json"}


class RequestError(UnetsegError):
    """A request the server refuses, with its HTTP status (the message is one line for the client)."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


def status_of(error: UnetsegError) -> int:
    """The HTTP status of a user error: the request's own, 413 for an image over the pixel budget, 400 for
    other bad files, 422 for what the model cannot take."""
    if isinstance(error, RequestError):
        return error.status
    if isinstance(error, TooLargeError):
        return 413
    return 400 if isinstance(error, DataError) else 422


@dataclass
class Upload:
    """A decoded upload: ``image`` ``(C, *spatial)`` float32 with the model's channels, the reader's
    ``meta`` (spacing, NIfTI affine) and the format it came in (``png``, ``jpeg``, ``tiff``, ``nifti``)."""

    image: np.ndarray
    meta: dict[str, Any]
    kind: str
    gzipped: bool = False

    @property
    def spacing(self) -> tuple[float, ...] | None:
        spacing = self.meta.get("spacing")
        return None if spacing is None else tuple(float(s) for s in spacing)

    @property
    def reply_format(self) -> str:
        """The format answered by default: the upload's own (a JPEG is answered with a lossless PNG)."""
        return {"jpeg": "png"}.get(self.kind, self.kind)


def decode_upload(data: bytes, spatial_dims: int, channels: int, max_bytes: float) -> Upload:
    """An upload's bytes -> :class:`Upload` for a ``spatial_dims``-D model of ``channels`` channels, as
    ``unetseg predict`` reads a file (grey -> RGB repeats, RGB -> grey averages). Raises one-line errors:
    415 (not an image), 413 (over the pixel budget, from the header), 400 (truncated or corrupt), 422 (the
    wrong dimensionality or channels for the model)."""
    kind = formats.sniff(data[:16])
    if data and kind is None:
        raise RequestError(f"{NAME}: not a PNG, TIFF, NIfTI or JPEG image (unrecognised content)", 415)
    image, meta = decode_image(data, NAME, max_bytes=max_bytes)
    dims = int(meta.get("spatial_dims", image.ndim - 1))
    if dims != spatial_dims or image.ndim != dims + 1:
        raise RequestError(f"{NAME}: a {dims}D image, but the model is {spatial_dims}D", 422)
    try:
        image = match_channels(image, channels, NAME)
    except DataError as e:
        raise RequestError(str(e), 422) from None
    return Upload(image, meta, "nifti" if kind in ("nifti", "gzip") else str(kind), kind == "gzip")


def check_format(requested: str | None, spatial_dims: int) -> str | None:
    """The response format a request asks for (None: the upload's own); 400/422 for one that cannot be."""
    if requested is None:
        return None
    fmt = requested.lower()
    if fmt not in FORMATS:
        raise RequestError(f"format {requested!r}: expected one of {', '.join(FORMATS)}")
    if fmt == "png" and spatial_dims != 2:
        raise RequestError(f"format png holds 2D masks, the model is {spatial_dims}D: ask for tiff or nifti",
                           422)
    return fmt


@dataclass
class Encoded:
    body: bytes
    media_type: str
    filename: str


def encode_labels(labels: np.ndarray, upload: Upload, fmt: str, stem: str = "labels") -> Encoded:
    """Class indices (or mask values) as a PNG, TIFF or NIfTI file, the upload's spacing and affine kept
    (a NIfTI upload is answered gzipped or not, as it came)."""
    suffix = _SUFFIX[fmt]
    if fmt == "nifti" and upload.kind == "nifti" and not upload.gzipped:
        suffix = ".nii"
    media = "application/octet-stream" if suffix == ".nii" else _MEDIA[fmt]
    return Encoded(encode_mask(labels, suffix, upload.meta), media, f"{stem}{suffix}")


def encode_ids(ids: np.ndarray, upload: Upload, fmt: str) -> Encoded:
    """Object ids as a TIFF (uint16, uint32 beyond 65535 objects), a PNG (8 or 16-bit; a TIFF when they do
    not fit) or a NIfTI file."""
    ids = instance_ids(ids)
    if fmt == "tiff" or (fmt == "png" and ids.dtype != np.uint16):
        return Encoded(encode_instances(ids, upload.meta), _MEDIA["tiff"], "ids.tif")
    return encode_labels(ids, upload, fmt, "ids")


def rle_by_value(labels: np.ndarray) -> dict[int, list[int]]:
    """The COCO-style RLE counts (module doc) of the binary mask of every value present in ``labels``, in
    one pass over the runs of the column-major array."""
    flat = np.asarray(labels).ravel(order="F")
    if flat.size == 0:
        return {}
    starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
    lengths = np.diff(np.r_[starts, flat.size])
    order = np.argsort(flat[starts], kind="stable")  # the runs of each value together, in position order
    values, starts, lengths = flat[starts][order], starts[order], lengths[order]
    bounds = np.flatnonzero(np.r_[True, values[1:] != values[:-1], True])
    out: dict[int, list[int]] = {}
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        s, n = starts[a:b], lengths[a:b]
        counts = np.empty(2 * (b - a) + 1, dtype=np.int64)
        counts[0:-1:2] = s - np.r_[0, (s + n)[:-1]]  # the 0s before each run
        counts[1::2] = n
        counts[-1] = flat.size - (s[-1] + n[-1])
        out[int(values[a])] = counts[:-1].tolist() if counts[-1] == 0 else counts.tolist()
    return out


def _rle(counts: list[int] | None, shape: list[int]) -> dict[str, Any]:
    return {"size": shape, "counts": counts if counts is not None else [int(np.prod(shape))]}


def plain(value: Any) -> Any:
    """A JSON value: whole floats as ints (mask values 0.0/255.0 -> 0/255), lists kept."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    return value.item() if isinstance(value, np.generic) else value


def labels_json(labels: np.ndarray, classes: list[Any]) -> dict[str, Any]:
    """A semantic result: per class its index, mask value(s), pixel count and RLE mask."""
    shape = [int(s) for s in labels.shape]
    runs = rle_by_value(labels)
    rows = []
    for c, value in enumerate(classes):
        counts = runs.get(c)
        rows.append({"index": c, "value": plain(value), "pixels": int(sum(counts[1::2])) if counts else 0,
                     "rle": _rle(counts, shape)})
    return {"task": "semantic", "shape": shape, "classes": rows}


def instances_json(ids: np.ndarray, table: dict[str, np.ndarray]) -> dict[str, Any]:
    """An instance result: one row per object (the per-object table: id, area, centroid, bounding box, mean
    intensity per channel) with its RLE mask."""
    shape = [int(s) for s in ids.shape]
    runs = rle_by_value(ids)
    columns = list(table)
    objects = []
    for i in range(len(table["id"])):
        row = {name: plain(table[name][i]) for name in columns}
        row["rle"] = _rle(runs.get(int(row["id"])), shape)
        objects.append(row)
    return {"task": "instances", "shape": shape, "count": len(objects), "objects": objects}

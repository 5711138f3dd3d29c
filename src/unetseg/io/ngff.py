"""The streamed writer for predictions of any size: an OME-Zarr label pyramid (the OME-TIFF export is
:mod:`unetseg.io.ometiff`).

Format choices (why):

* **NGFF 0.4 on zarr v2 by default** (``version="0.5"`` gives zarr v3): napari-ome-zarr, QuPath, OMERO
  and Fiji/MoBIE read 0.4 today; 0.5 support is still arriving. The store's root is a multiscale label
  image with ``image-label`` metadata (a standalone label image: there is no source image beside it);
  optional per-class probabilities live in the ``probabilities`` sub-group as their own multiscale image
  ``(c, *spatial)``, quantised to uint8 (``p * 255``) or float16; an optional uncertainty map (entropy,
  mutual information) in the ``uncertainty`` sub-group, float16 ``(2, *spatial)``.
* **Blosc-zstd** (clevel 5, byte shuffle) from numcodecs: fast, well compressed, readable everywhere
  without imagecodecs. Chunks are 512x512 in 2D and 128^3 in 3D.
* **Pyramid rule**: each level halves y and x (labels: 2x2 mode, ties to the larger label so thin
  objects survive; probabilities: mean); in 3D z is halved too once its pixel size is below twice the
  finest in-plane size (so anisotropic stacks become isotropic first). Levels are added until the
  longest side is at most 1024 px. Odd sizes round up (edge pixels are replicated).

Writes are whole chunks: :meth:`LabelZarrWriter.write` accepts blocks that start on a chunk boundary
and end on one or at the image edge. A *row* is one chunk row along the first spatial axis (512 image
rows in 2D, a 128-slice slab in 3D); when all chunks of a row are written, the row is recorded in a
small JSON manifest replaced atomically; chunks of rows not yet complete (a strip-wise prediction writes
strip by strip) are recorded too, at most every :data:`SAVE_SECONDS`. ``resume=True`` trusts a recorded
row or chunk only if its chunk files exist and are non-empty (level 0 stores even all-background chunks
for that reason).
Everything is written under ``.<name>.tmp`` beside the output and renamed into place by ``finish``.
The record survives a killed process, not a power cut (nothing is fsynced but the manifest).

**Parts** (one slide on many processes): ``part=(a, b)`` opens the temporary store another writer
created and writes chunk rows ``a..b-1`` only (the others count as complete, so a
:class:`~unetseg.inference.stream.predictor.StreamPredictor` computes just the tiles those rows need).
Parts never
touch the manifest; the creating writer records their rows with :meth:`LabelZarrWriter.record_rows`
(verified on disk) and finishes the store.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from unetseg.errors import DataError
from unetseg.fileio import write_json
from unetseg.io.pyramid import PyramidBuilder, downsample_mean, downsample_mode, pyramid_factors

if TYPE_CHECKING:
    from zarr.core.array_spec import ArrayConfigParams

__all__ = ["MANIFEST", "LabelZarrWriter", "downsample_mean", "downsample_mode", "pyramid_factors"]

MANIFEST = ".unetseg-progress.json"
SAVE_SECONDS = 2.0  # the longest a written chunk of an unfinished row may go unrecorded
_LABEL_DTYPES = ("uint8", "uint16", "uint32")


def _swap_into_place(tmp: Path, final: Path) -> None:
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    if final.exists():
        os.replace(final, old)  # readers see the old output or the new one, never a half-written one
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old) if old.is_dir() else old.unlink()


class ChunkWriter(Protocol):
    """What streamed prediction writes into: whole chunk rows of labels (and probabilities), with the
    blocks it holds complete already (resume) and a flush that keeps them (:class:`LabelZarrWriter`)."""

    path: Any
    shape: tuple[int, ...]
    probabilities: int  # probability channels written beside the labels (0: none)
    uncertainty: int  # uncertainty channels written beside the labels (0: none; written as a 4th argument)

    @property
    def chunks(self) -> tuple[int, ...] | None:
        """The chunk shape rows are written in (None: any block of rows)."""
        ...

    def write(self, start: Sequence[int], labels: np.ndarray, probabilities: np.ndarray | None = None,
              uncertainty: np.ndarray | None = None, /) -> None: ...

    def done_rows(self, columns: Sequence[slice]) -> np.ndarray: ...

    def flush(self) -> None: ...


class LabelZarrWriter:
    """Stream a label image (and optional probabilities) into ``path`` (``OUT/<stem>.ome.zarr``).

    Args:
        path: the final store; data goes to ``.<name>.tmp`` beside it until :meth:`finish`.
        shape: spatial shape ``(y, x)`` or ``(z, y, x)``.
        dtype: uint8 class indices, uint16/uint32 instance ids.
        pixel_size: physical pixel size per spatial axis in ``unit`` (None: scale 1, no unit).
        chunks: chunk shape (default 512x512 or 128^3).
        levels: number of pyramid levels including level 0 (default: the size rule).
        resume: reopen an interrupted temporary store and keep its verified rows.
        probabilities: number of probability channels written beside the labels (0: none).
        prob_dtype: ``"uint8"`` (``p * 255``), ``"float16"`` or ``"float32"`` (exact: intermediate stores).
        uncertainty: number of uncertainty channels written beside the labels (0: none); ``unc_dtype``
            ``"float16"`` or ``"float32"``.
        part: ``(first, stop)`` chunk rows: write into the existing temporary store (see the module doc).
    """

    def __init__(self, path: str | Path, shape: Sequence[int], dtype: Any = "uint8",
                 pixel_size: Sequence[float] | None = None, chunks: Sequence[int] | None = None,
                 levels: int | None = None, resume: bool = False, *, probabilities: int = 0,
                 prob_dtype: str = "uint8", unit: str = "micrometer", version: str = "0.4",
                 name: str | None = None, colors: dict[int, Sequence[int]] | None = None,
                 part: tuple[int, int] | None = None, uncertainty: int = 0,
                 unc_dtype: str = "float16") -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        if len(self.shape) not in (2, 3) or min(self.shape) < 1:
            raise ValueError(f"shape must be 2D or 3D and non-empty, got {self.shape}")
        if self.dtype.name not in _LABEL_DTYPES or prob_dtype not in ("uint8", "float16", "float32") \
                or unc_dtype not in ("float16", "float32"):
            raise ValueError(f"labels are {'/'.join(_LABEL_DTYPES)}, probabilities uint8/float16/float32, "
                             "uncertainty float16/float32")
        if version not in ("0.4", "0.5"):
            raise ValueError(f"NGFF version must be '0.4' or '0.5', got {version!r}")
        default = (512, 512) if len(self.shape) == 2 else (128, 128, 128)
        self.chunks = tuple(min(int(c), s) for c, s in zip(chunks or default, self.shape, strict=True))
        self.pixel_size = None if pixel_size is None else tuple(float(p) for p in pixel_size)
        self.levels, self.unit, self.version = levels, unit, version
        self.name, self.colors = name or self.path.name.split(".")[0], colors
        self.probabilities, self.prob_dtype = int(probabilities), np.dtype(prob_dtype)
        self.uncertainty, self.unc_dtype = int(uncertainty), np.dtype(unc_dtype)
        self._grid = tuple(math.ceil(s / c) for s, c in zip(self.shape, self.chunks, strict=True))
        self._written = np.zeros(self._grid, dtype=bool)
        self._done: set[int] = set()
        self._finished = False
        self._saved_at = 0.0
        self._factors = pyramid_factors(self.shape, self.pixel_size, levels=levels)
        self._pyramid: PyramidBuilder | None = None  # None in a part: the creating writer builds it
        self._arrs: list[tuple[Any, int]] = []
        self.part = None if part is None else (int(part[0]), int(part[1]))
        if self.part is not None:
            self._attach(self.part)
        elif resume and (self.tmp / MANIFEST).is_file():
            self._reopen()
        else:
            self._create()

    # ------------------------------------------------------------------ store set-up
    def _settings(self) -> dict[str, Any]:
        unc = {"uncertainty": self.uncertainty, "unc_dtype": self.unc_dtype.name} if self.uncertainty else {}
        return {"shape": list(self.shape), "dtype": self.dtype.name, "chunks": list(self.chunks),
                "probabilities": self.probabilities, "prob_dtype": self.prob_dtype.name,
                "version": self.version, **unc}

    def _extras(self) -> list[tuple[str, int, np.dtype]]:
        """The sub-groups written beside the labels: ``(name, channels, dtype)``."""
        out = [("probabilities", self.probabilities, self.prob_dtype),
               ("uncertainty", self.uncertainty, self.unc_dtype)]
        return [e for e in out if e[1]]

    def _array_kw(self) -> dict[str, Any]:
        if self.version == "0.4":
            from numcodecs import Blosc

            return {"chunk_key_encoding": {"name": "v2", "separator": "/"},
                    "compressors": Blosc(cname="zstd", clevel=5, shuffle=Blosc.SHUFFLE)}
        from zarr.codecs import BloscCodec

        return {"compressors": BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")}

    def _create(self) -> None:
        import zarr

        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        kw = self._array_kw()
        root = zarr.open_group(str(self.tmp), mode="w", zarr_format=2 if self.version == "0.4" else 3)
        # Level 0 stores all-background chunks too: a row is complete when all its chunk files exist.
        cfg: ArrayConfigParams = {"write_empty_chunks": True}
        self._arrs = [(root.create_array("0", shape=self.shape, chunks=self.chunks, dtype=self.dtype,
                                         fill_value=0, config=cfg, **kw), 0)]
        groups = [root]
        for name, channels, dtype in self._extras():
            sub = root.create_group(name)
            self._arrs.append((sub.create_array(
                "0", shape=(channels, *self.shape), chunks=(channels, *self.chunks),
                dtype=dtype, fill_value=0, config=cfg, **kw), 1))
            groups.append(sub)
        for group, (level0, lead) in zip(groups, self._arrs, strict=True):
            shape = self.shape
            for level, f in enumerate(self._factors, start=1):
                shape = tuple(math.ceil(n / k) for n, k in zip(shape, f, strict=True))
                chunks = tuple(min(c, n) for c, n in zip(self.chunks, shape, strict=True))
                group.create_array(str(level), shape=(*level0.shape[:lead], *shape), dtype=level0.dtype,
                                   chunks=(*level0.shape[:lead], *chunks), fill_value=0, **kw)
        self._pyramid = self._builder()
        self._save_manifest()

    def _builder(self) -> PyramidBuilder:
        """Builds the pyramid from level-0 chunks as they are written (in the writer's thread)."""
        import zarr

        arrays = []
        for name in ["", *(e[0] for e in self._extras())]:
            arrays.append([zarr.open_array(str(self.tmp / name / str(level)), mode="r+")
                           for level in range(len(self._factors) + 1)])
        return PyramidBuilder(arrays, self._factors, self.chunks,
                              [downsample_mode] + [downsample_mean] * (len(arrays) - 1))

    def _saved(self, action: str) -> dict[str, Any]:
        """The manifest of the temporary store, checked against this writer's settings."""
        try:
            saved = json.loads((self.tmp / MANIFEST).read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"{self.tmp}: cannot {action}: unreadable progress record ({e})") from None
        mine = self._settings()
        diff = [f"{k} {saved.get(k)} != {v}" for k, v in mine.items() if saved.get(k) != v]
        if diff:
            raise DataError(f"{self.tmp}: cannot {action}: written with other settings ({'; '.join(diff)});"
                            " delete it or run without resume")
        return saved

    def _attach(self, part: tuple[int, int]) -> None:
        first, stop = part
        if not 0 <= first < stop <= self._grid[0]:
            raise ValueError(f"part {part}: chunk rows must lie in 0..{self._grid[0]}")
        self._saved("write a part")
        self._arrs = self._open_arrays()
        self._done = set(range(first)) | set(range(stop, self._grid[0]))
        for row in self._done:
            self._written[row] = True

    def record_rows(self, rows: Sequence[int]) -> None:
        """Record chunk rows that parts wrote, each only if all its chunk files are on disk."""
        for row in rows:
            if 0 <= row < self._grid[0] and all(self._row_on_disk(a, row, lead) for a, lead in self._arrs):
                self._done.add(int(row))
                self._written[row] = True
        self._save_manifest()

    def part_rows(self) -> list[int]:
        """The rows a part writer has written (its own range only)."""
        if self.part is None:
            return self.completed_rows()
        return [r for r in range(*self.part) if r in self._done]

    def _reopen(self) -> None:
        saved = self._saved("resume")
        self._arrs = self._open_arrays()
        for row in saved.get("rows_done", []):
            if 0 <= row < self._grid[0] and all(self._row_on_disk(a, row, lead) for a, lead in self._arrs):
                self._done.add(int(row))
                self._written[row] = True
        for flat in saved.get("chunks_done", []):  # chunks of rows a strip-wise run had not finished
            if 0 <= flat < self._written.size:
                idx = tuple(int(i) for i in np.unravel_index(int(flat), self._grid))
                if all(self._chunk_on_disk(a, idx, lead) for a, lead in self._arrs):
                    self._written[idx] = True
        self._pyramid = self._builder()
        self._save_manifest()

    def _open_arrays(self) -> list[tuple[Any, int]]:
        import zarr

        out = [(zarr.open_array(str(self.tmp / "0"), mode="r+"), 0)]
        for name, _, _ in self._extras():
            out.append((zarr.open_array(str(self.tmp / name / "0"), mode="r+"), 1))
        return [(a.with_config({"write_empty_chunks": True}), lead) for a, lead in out]

    def _row_on_disk(self, array: Any, row: int, lead: int) -> bool:
        return all(self._chunk_on_disk(array, (row, *idx), lead) for idx in np.ndindex(*self._grid[1:]))

    @staticmethod
    def _chunk_on_disk(array: Any, idx: Sequence[int], lead: int) -> bool:
        key = array.metadata.encode_chunk_key((0,) * lead + tuple(int(i) for i in idx))
        f = Path(array.store.root) / array.path / key
        return f.is_file() and f.stat().st_size > 0

    def _save_manifest(self) -> None:
        if self.part is not None:
            return  # the creating writer owns the manifest
        partial = [r for r in range(self._grid[0]) if r not in self._done and self._written[r].any()]
        chunks = [int(np.ravel_multi_index((r, *idx), self._grid)) for r in partial
                  for idx in zip(*np.nonzero(self._written[r]), strict=True)]
        write_json(self.tmp / MANIFEST, {**self._settings(), "rows_done": sorted(self._done),
                                         "chunks_done": chunks})
        self._saved_at = time.monotonic()

    # ------------------------------------------------------------------ progress
    @property
    def n_rows(self) -> int:
        """Number of chunk rows (along the first spatial axis)."""
        return self._grid[0]

    def row_region(self, row: int) -> tuple[slice, ...]:
        """The full-resolution region of chunk row ``row``."""
        c = self.chunks[0]
        return (slice(row * c, min((row + 1) * c, self.shape[0])), *(slice(0, s) for s in self.shape[1:]))

    def done_rows(self, columns: Sequence[slice]) -> np.ndarray:
        """Per image row: whether every chunk it shares with ``columns`` (slices of the axes after the
        first) is written."""
        cols = tuple(slice(c.start // k, -(-c.stop // k))
                     for c, k in zip(columns, self.chunks[1:], strict=True))
        rows = self._written[(slice(None), *cols)].reshape(self._grid[0], -1).all(axis=1)
        return np.repeat(rows, self.chunks[0])[: self.shape[0]]

    def completed_rows(self) -> list[int]:
        """Chunk rows written completely (after ``resume``: only those whose chunk files all exist)."""
        return sorted(self._done)

    def pending_rows(self) -> list[int]:
        """Chunk rows still to write."""
        return [r for r in range(self.n_rows) if r not in self._done]

    # ------------------------------------------------------------------ writing
    def write(self, region_start: Sequence[int], labels: np.ndarray,
              probabilities: np.ndarray | None = None, uncertainty: np.ndarray | None = None) -> None:
        """Write a block of full-resolution labels (and ``(C, *block)`` probabilities in 0..1, ``(U,
        *block)`` uncertainty).

        The block must start on a chunk boundary and end on one or at the image edge on every axis,
        so every chunk is written whole (no read-modify-write of half-written chunks).
        """
        if self._finished:
            raise RuntimeError(f"{self.path}: already finished")
        labels = np.asarray(labels)
        start = tuple(int(s) for s in region_start)
        stop = tuple(s + n for s, n in zip(start, labels.shape, strict=True))
        for s, e, c, n in zip(start, stop, self.chunks, self.shape, strict=True):
            if s < 0 or e > n or s % c or (e % c and e != n):
                raise ValueError(f"block {start}..{stop} must start on a chunk boundary (chunks "
                                 f"{self.chunks}) and end on one or at the image edge {self.shape}")
        if labels.size and (labels.min() < 0 or labels.max() > np.iinfo(self.dtype).max):
            raise ValueError(f"label values {labels.min()}..{labels.max()} do not fit {self.dtype}")
        region = tuple(slice(s, e) for s, e in zip(start, stop, strict=True))
        arrays = self._arrs
        arrays[0][0][region] = labels.astype(self.dtype, copy=False)
        given = {"probabilities": probabilities, "uncertainty": uncertainty}
        for (name, channels, dtype), (array, _) in zip(self._extras(), arrays[1:], strict=True):
            block = given[name]
            if block is None or block.shape != (channels, *labels.shape):
                raise ValueError(f"{name} must be {(channels, *labels.shape)}")
            array[(slice(None), *region)] = (self._quantise(block) if name == "probabilities"
                                             else np.asarray(block).astype(dtype, copy=False))
        grid = tuple(slice(s // c, -(-e // c)) for s, e, c in zip(start, stop, self.chunks, strict=True))
        self._written[grid] = True
        if self._pyramid is not None:
            self._pyramid.written(grid, self._written)
        rows = {r for r in range(grid[0].start, grid[0].stop) if self._written[r].all()} - self._done
        self._done |= rows
        # chunk files are on disk now (zarr writes synchronously): record them, a finished row at once,
        # the chunks of strips (rows not yet finished) at most every SAVE_SECONDS
        if rows or time.monotonic() - self._saved_at >= SAVE_SECONDS:
            self._save_manifest()

    def flush(self) -> None:
        """Record every chunk written so far (a stopped prediction calls it, so resume keeps them)."""
        if self.part is None and not self._finished:
            self._save_manifest()

    def _quantise(self, p: np.ndarray) -> np.ndarray:
        p = np.clip(np.asarray(p, dtype=np.float32), 0.0, 1.0)
        return np.rint(p * 255).astype(np.uint8) if self.prob_dtype == np.uint8 else p.astype(self.prob_dtype)

    # ------------------------------------------------------------------ finishing
    def finish(self) -> Path:
        """Build the pyramid chunk by chunk, write the NGFF metadata and move the store into place."""
        import zarr

        if self.part is not None:
            raise RuntimeError(f"{self.path}: a part writer cannot finish the store")
        missing = self.pending_rows()
        if missing:
            raise DataError(f"{self.path}: cannot finish: {len(missing)} of {self.n_rows} chunk row(s) not "
                            f"written (first: row {missing[0]})")
        assert self._pyramid is not None
        self._pyramid.finish(self._written)
        root = zarr.open_group(str(self.tmp), mode="r+")
        root.attrs.update(self.attributes(lead=0))
        if self.probabilities:
            sub = root["probabilities"]
            sub.attrs.update({**self.attributes(lead=1), "unetseg": {
                "encoding": "probability = value / 255" if self.prob_dtype == np.uint8
                else "probability = value"}})
        if self.uncertainty:
            root["uncertainty"].attrs.update({**self.attributes(lead=1, name="uncertainty"), "unetseg": {
                "channels": ["entropy of the mean probability / log C",
                             "mutual information (samples' disagreement) / log C"]}})
        (self.tmp / MANIFEST).unlink()
        _swap_into_place(self.tmp, self.path)
        self._finished = True
        return self.path

    def attributes(self, lead: int, name: str = "probabilities") -> dict[str, Any]:
        """The NGFF group attributes of the labels (``lead=0``) or of the probabilities (``lead=1``): what
        ``ome_zarr.writer``'s ``write_multiscales_metadata`` and ``add_metadata`` write, built here so that
        finishing a slide does not import ome-zarr and dask (half a second)."""
        names = "zyx"[3 - len(self.shape):]
        unit = {"unit": self.unit} if self.pixel_size is not None else {}
        axes = [{"name": "c", "type": "channel"}] * lead
        axes += [{"name": n, "type": "space", **unit} for n in names]
        scale = np.asarray(self.pixel_size or [1.0] * len(self.shape), dtype=np.float64)
        datasets = []
        for level in range(len(self._factors) + 1):
            if level:
                scale = scale * np.asarray(self._factors[level - 1], dtype=np.float64)
            datasets.append({"path": str(level), "coordinateTransformations": [
                {"type": "scale", "scale": [1.0] * lead + [float(s) for s in scale]}]})
        multiscale: dict[str, Any] = {"datasets": datasets, "name": name if lead else self.name,
                                      "axes": axes}
        top: dict[str, Any] = {"multiscales": [multiscale]}
        if not lead:
            label: dict[str, Any] = {"version": self.version}
            if self.colors:
                label["colors"] = [{"label-value": int(k), "rgba": [int(c) for c in v]}
                                   for k, v in sorted(self.colors.items())]
            top["image-label"] = label
        if self.version == "0.4":
            multiscale["version"] = "0.4"
            return top
        return {"ome": {"version": self.version, **top}}


# ---------------------------------------------------------------------------------------------- OME-TIFF

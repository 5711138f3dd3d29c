"""Writing the files a user keeps: atomically, never through a symlink, never over a file the command reads.

* :func:`atomic_write` is the one writer of every kept file: a new temporary file in the destination folder
  (created exclusively, so a planted link is never followed), fsync, ``os.replace`` (which replaces a
  symlink at the destination as a link, never its target); on any error the temporary file is removed and
  the old file (or nothing) remains. Disk full, read-only folder, a folder where a file should go: one
  :class:`~unetseg.errors.OutputError` line naming the path.
* :class:`OutputGuard` is told, before any work, what a command reads and what it will write; its
  :meth:`~OutputGuard.check` refuses outputs that would replace an input (or land inside a folder the
  command reads), outputs that collide with each other, and existing files the command did not write
  itself (each output folder keeps a small log of what unetseg wrote there, so re-running ``predict`` into
  its own earlier output folder stays allowed, but a hand-corrected mask is never replaced silently).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unetseg.errors import OutputError

WRITTEN_LOG = ".unetseg-written"  # per output folder: one line per file unetseg wrote (name, size, mtime)
_SUFFIXES = (".nii.gz", ".ome.tif", ".ome.tiff", ".ome.zarr", ".tar.gz")


def full_suffix(name: str) -> str:
    """``.nii.gz`` / ``.ome.tif`` as one suffix (writers pick the format by it), else the last one."""
    low = name.lower()
    return next((s for s in _SUFFIXES if low.endswith(s)), os.path.splitext(name)[1])


def _why(err: OSError) -> str:
    return err.strerror or str(err) or type(err).__name__


def ensure_dir(folder: str | Path, option: str = "") -> Path:
    """Create ``folder`` (and parents) or raise one OutputError line (a file in the way, no permission)."""
    p = Path(folder)
    if p.exists() and not p.is_dir():
        raise OutputError(f"{p}: exists and is not a folder{f'; choose another {option}' if option else ''}")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{p}: cannot create the folder ({_why(e)})") from None
    return p


def temp_path(path: Path) -> Path:
    """A fresh name beside ``path`` that keeps its suffix (so writers choose the right format)."""
    suffix = full_suffix(path.name)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    return path.with_name(f".{stem}.{secrets.token_hex(6)}.tmp{suffix}")


def fsync_dir(folder: str | Path) -> None:
    """Make a rename inside ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], Any], *, durable_dir: bool = False) -> Path:
    """Write ``path`` by calling ``write(temporary path)``, then fsync and rename into place.

    ``write`` may open the temporary path itself (Pillow, tifffile, nibabel, safetensors all take a path).
    Raises OutputError for OS errors (disk full, permission, read-only file system); other exceptions are
    re-raised after the temporary file is removed. ``durable_dir`` also fsyncs the folder after the rename.
    """
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        raise OutputError(f"{path}: is a folder; a file is to be written there")
    ensure_dir(path.parent)
    tmp = temp_path(path)
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # never through a planted link
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write ({_why(e)})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable_dir:
        fsync_dir(path.parent)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write UTF-8 text (undecodable file-name bytes are replaced, never a crash)."""
    data = text.encode("utf-8", "replace")
    return atomic_write(path, lambda p: p.write_bytes(data))


def write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write strict JSON (RFC 8259: NaN/Infinity are refused; convert them to null first)."""
    return write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def printable(text: str | os.PathLike) -> str:
    """A file name as valid text: bytes that are not UTF-8 (kept by Python as surrogates) become U+FFFD."""
    return os.fsencode(os.fspath(text)).decode("utf-8", "replace")


# ------------------------------------------------------------------------------------------- ownership
def _stat_key(path: Path) -> tuple[int, int] | None:
    try:
        st = path.lstat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def written_by_us(folder: Path) -> dict[str, tuple[int, int]]:
    """What unetseg wrote into ``folder``: name -> (size, mtime_ns) as it was right after writing."""
    log = folder / WRITTEN_LOG
    out: dict[str, tuple[int, int]] = {}
    try:
        lines = log.read_bytes().decode("utf-8", "replace").splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.rsplit("\t", 2)
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            out[parts[0]] = (int(parts[1]), int(parts[2]))
    return out


def record_written(paths: Iterable[str | Path]) -> None:
    """Note files this command has just written (appended to their folder's log; cheap per file)."""
    by_folder: dict[Path, list[str]] = {}
    for p in map(Path, paths):
        key = _stat_key(p)
        if key is not None and "\n" not in p.name and "\t" not in p.name:
            by_folder.setdefault(p.parent, []).append(f"{os.fsencode(p.name).decode('utf-8', 'replace')}"
                                                      f"\t{key[0]}\t{key[1]}\n")
    for folder, lines in by_folder.items():
        try:
            with open(folder / WRITTEN_LOG, "a", encoding="utf-8") as f:
                f.write("".join(lines))
        except OSError:
            pass  # the log only relaxes later checks; losing it never loses data


def is_store(path: Path) -> bool:
    """An output that is a folder by nature (an OME-Zarr store), owned and replaced as a whole."""
    return path.name.lower().endswith(".zarr")


def is_ours(path: Path, known: dict[str, tuple[int, int]] | None = None) -> bool:
    """True when ``path`` is a file (or an OME-Zarr store) unetseg wrote and nobody changed since (size and
    mtime as logged)."""
    if path.is_symlink() or not (path.is_file() or (is_store(path) and path.is_dir())):
        return False
    known = written_by_us(path.parent) if known is None else known
    name = os.fsencode(path.name).decode("utf-8", "replace")
    return known.get(name) == _stat_key(path)


# ----------------------------------------------------------------------------------------------- guard
def _real(path: Path) -> str:
    return os.path.realpath(path)


@dataclass
class OutputGuard:
    """Checks, before any work, that a command's outputs leave its inputs and the user's files alone.

    ``read(path, option)``: a file the command reads, or a folder whose files it reads (not recursively).
    ``write(path, option, source)``: a file it will write (``source``: the input it comes from, for the
    collision message). :meth:`check` raises one OutputError line naming the file and the option.
    """

    files: dict[str, tuple[Path, str]] = field(default_factory=dict)
    folders: dict[str, tuple[Path, str]] = field(default_factory=dict)
    outputs: dict[str, tuple[Path, str, str]] = field(default_factory=dict)

    def read(self, path: str | Path | None, option: str) -> None:
        if path is None:
            return
        p = Path(path)
        target = self.folders if p.is_dir() else self.files
        target.setdefault(_real(p), (p, option))

    def read_all(self, paths: Iterable[str | Path], option: str) -> None:
        for p in paths:
            self.read(p, option)

    def write(self, path: str | Path, option: str, source: str | Path | None = None) -> None:
        p = Path(path)
        key = os.path.join(_real(p.parent), p.name)
        if key in self.outputs:
            other = self.outputs[key]
            first, second = printable(other[2] or other[0]), printable(source or p)
            raise OutputError(f"{p}: {first} and {second} would both write this file; rename one input or "
                              f"choose another {option}")
        self.outputs[key] = (p, option, str(source or ""))

    def check(self, *, overwrite: bool = False, among: Iterable[str | Path] | None = None) -> None:
        """Refuse (before any work) what would destroy an input, an earlier result or a user's file.
        ``among``: check existing files only for these outputs (the inputs are checked for all)."""
        known: dict[Path, dict[str, tuple[int, int]]] = {}
        mine = None if among is None else {os.path.join(_real(Path(a).parent), Path(a).name) for a in among}
        for key, (p, option, _) in self.outputs.items():
            hit = self.files.get(key) or self.files.get(_real(p))
            if hit is not None:
                raise OutputError(f"{p}: {option} would write over {printable(hit[0])}, which this command "
                                  f"reads ({hit[1]}); choose another {option}")
            inside = self.folders.get(os.path.dirname(key))
            if inside is not None:
                raise OutputError(f"{p}: {option} points into {printable(inside[0])}, which this command "
                                  f"reads ({inside[1]}); choose another {option}")
            if overwrite or (mine is not None and key not in mine) or not (p.exists() or p.is_symlink()):
                continue
            if p.is_dir() and not p.is_symlink() and not is_store(p):
                raise OutputError(f"{p}: a folder is in the way of an output file; choose another {option}")
            folder_log = known.setdefault(p.parent, written_by_us(p.parent))
            if not is_ours(p, folder_log):
                what = "a link" if p.is_symlink() else "a file unetseg did not write (or changed since)"
                raise OutputError(f"{p}: exists and is {what}; choose another {option} or pass --overwrite "
                                  "to replace it")

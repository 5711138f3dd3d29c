"""The fingerprint cache: one JSON file per dataset under the user's cache directory (never in the dataset
folder, which may be read-only), keyed by every file's path, size and modification time and by the class map,
so a changed dataset is fingerprinted afresh and an unchanged one in no time."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

from unetseg.data.cases import Case
from unetseg.data.labels import ClassMap
from unetseg.errors import DataError, OutputError
from unetseg.fileio import printable, write_json
from unetseg.io.images import channel_files
from unetseg.planning.fingerprint import FORMAT_VERSION, Fingerprint, compute_fingerprint
from unetseg.planning.fingerprint_stats import SAMPLES_PER_CASE


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/unetseg/fingerprints`` (an absolute XDG_CACHE_HOME only, as the XDG spec says),
    else ``~/.cache/unetseg/fingerprints``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "unetseg" / "fingerprints"


def cache_path(folder: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The cache file of a dataset folder: named by a hash of the folder's real path."""
    digest = hashlib.sha256(os.fsencode(os.path.realpath(folder))).hexdigest()[:24]
    return Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"{digest}.json"


def _case_files(case: Case) -> list[Path]:
    """The files :func:`read_pair` reads for a case (its channel files, then the mask)."""
    images = case.image_paths if len(case.image_paths) > 1 else channel_files(case.image_paths[0])
    return [*images, *([case.mask_path] if case.mask_path is not None else [])]


def cache_key(cases: list[Case], class_values: list[Any] | None = None, instances: bool = False) -> str:
    """A hash of everything the fingerprint depends on: the format version, the sample size, the class
    map and each case's name and files (absolute path, size, mtime_ns). DataError for a missing file."""
    files = []
    for case in cases:
        entry: list[Any] = [case.name]
        for p in _case_files(case):
            try:
                st = os.stat(p)
            except OSError as e:
                raise DataError(f"{p}: cannot read ({e.strerror or e})") from None
            entry.append([os.path.abspath(p), st.st_size, st.st_mtime_ns])
        files.append(entry)
    cmap = ClassMap(class_values).config_values() if class_values is not None else None
    text = json.dumps(
        {"version": FORMAT_VERSION, "samples": SAMPLES_PER_CASE, "class_values": cmap, "cases": files,
         **({"instances": True} if instances else {})},
        default=str,
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _load(path: Path, key: str) -> Fingerprint | None:
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        return Fingerprint.from_dict(stored["fingerprint"]) if stored.get("key") == key else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # absent, unreadable, corrupt or of another version: recompute


def _inside(path: Path, folder: str | Path) -> bool:
    real, root = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([real, root]) == root


def cached_fingerprint(
    folder: str | Path, cases: list[Case], cache_dir: str | Path | None = None, **kw: Any
) -> Fingerprint:
    """:func:`compute_fingerprint` of ``cases`` (the current :func:`find_cases` of ``folder``), cached.

    The cache is one JSON file per dataset folder under :func:`default_cache_dir` (or ``cache_dir``),
    reused while :func:`cache_key` matches: a file added, removed or rewritten, another class map or
    another format version recomputes it. The dataset folder is never written to (it may be read-only):
    a cache inside it is not used. A cache that cannot be written only warns; the fingerprint is returned.
    ``kw``: ``max_bytes``, ``class_values`` as for :func:`compute_fingerprint`.
    """
    key = cache_key(cases, kw.get("class_values"), bool(kw.get("instances")))
    path = cache_path(folder, cache_dir)
    usable = not _inside(path, folder)
    if usable and (fp := _load(path, key)) is not None:
        return fp
    fp = compute_fingerprint(cases, **kw)
    if not usable:
        warnings.warn(f"{path}: inside the dataset folder; the fingerprint is not cached", stacklevel=2)
        return fp
    try:
        write_json(
            path, {"key": key, "folder": printable(os.path.realpath(folder)), "fingerprint": fp.to_dict()}
        )
    except OutputError as e:
        warnings.warn(f"fingerprint not cached: {e}", stacklevel=2)
    return fp

"""Splitting a dataset: the validation split and the folds of cross-validation, by group.

Images of one patient, slide or video sequence are near-duplicates: one on each side of a split makes the
validation score lie. A *group* is what must stay whole; every split here holds out whole groups:

* ``data.groups`` (``--groups FILE``): a CSV of ``stem,group`` rows (a header row is fine: rows whose stem
  is no image of the dataset are ignored; ``stem`` may carry the image's extension);
* ``data.groups_pattern`` (``--groups-pattern REGEX``): the first capture group of the stem, e.g.
  ``^(P\\d+)_`` puts ``P07_slice12`` in group ``P07``;
* neither: every image is its own group (taken as independent).

Every image needs a group; one without is a single :class:`~unetseg.errors.DataError` line naming the stem
and the file. :func:`split_cases` (the validation split) and :func:`fold_cases` (K folds, stratified by the
classes each case holds) are deterministic for a seed; without groups :func:`split_cases` holds out
exactly the cases the case-level split of earlier versions held out.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unetseg.config import DataConfig, read_text
from unetseg.data.cases import Case, find_cases
from unetseg.data.labels import unique_values
from unetseg.errors import ConfigError, DataError
from unetseg.io.images import (
    IMAGE_SUFFIXES,
    MASK_SUFFIXES,
    SkipLog,
    raise_or_skip,
    read_mask,
    stem_of,
    suffix_of,
)

INDEPENDENT = ("no --groups or --groups-pattern: images are taken as independent (frames of one patient, "
               "slide or sequence on both sides of a split make validation scores optimistic)")


def read_groups(path: str | Path) -> dict[str, str]:
    """``stem -> group`` from a CSV file of ``stem,group`` rows (extra columns ignored; blank lines
    skipped). A row with one cell, an empty group or a stem given two groups is one error line."""
    p = Path(path)
    text = read_text(p, "groups file")
    out: dict[str, tuple[str, int]] = {}
    for line, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [c.strip() for c in row]
        if not any(cells):
            continue
        if len(cells) < 2 or not cells[0] or not cells[1]:
            raise DataError(f"{p}: line {line}: expected 'stem,group', got {','.join(row)!r}")
        stem = stem_of(cells[0]) if suffix_of(cells[0]) in (*IMAGE_SUFFIXES, *MASK_SUFFIXES) else cells[0]
        if stem in out and out[stem][0] != cells[1]:
            raise DataError(f"{p}: line {line}: {stem!r} is in group {cells[1]!r} here and in group "
                            f"{out[stem][0]!r} on line {out[stem][1]}")
        out[stem] = (cells[1], line)
    return {stem: group for stem, (group, _) in out.items()}


def _pattern(text: str) -> re.Pattern[str]:
    try:
        pattern = re.compile(text)
    except re.error as e:
        raise ConfigError(f"--groups-pattern {text!r}: not a regular expression ({e})") from None
    if pattern.groups < 1:
        raise ConfigError(f"--groups-pattern {text!r}: has no capture group; put the part of the stem that "
                          r"names the group in parentheses, e.g. ^(P\d+)_")
    return pattern


def check_grouping(d: DataConfig) -> None:
    """The grouping options alone (before any file is read)."""
    if d.groups and d.groups_pattern:
        raise ConfigError("give --groups FILE or --groups-pattern REGEX (data.groups / data.groups_pattern), "
                          "not both")
    if d.groups_pattern:
        _pattern(d.groups_pattern)


def check_groups(d: DataConfig) -> None:
    """The grouping options, and (when ``--data`` is set) that every image of ``--data`` has a group:
    one line before any image is read."""
    check_grouping(d)
    if d.data and (d.groups or d.groups_pattern):
        quiet = SkipLog(stream=io.StringIO())  # bad files are reported when the data is read
        case_groups(find_cases(d.data, skip_bad=d.skip_bad, skip=quiet), d)


def case_groups(cases: Sequence[Case], d: DataConfig) -> dict[str, str] | None:
    """The group of every case (None without grouping options: each case is its own group)."""
    check_grouping(d)
    if d.groups:
        table = read_groups(d.groups)
        for case in cases:
            if case.name not in table:
                raise DataError(f"{d.groups}: no group for {case.name!r} ({case.image_paths[0]}); every "
                                "image needs a row 'stem,group'")
        return {c.name: table[c.name] for c in cases}
    if d.groups_pattern:
        pattern, out = _pattern(d.groups_pattern), {}
        for case in cases:
            found = pattern.search(case.name)
            if found is None or found.group(1) is None:
                raise DataError(f"{case.image_paths[0]}: its stem {case.name!r} does not match "
                                f"--groups-pattern {d.groups_pattern!r} (data.groups_pattern); every image "
                                "needs a group")
            out[case.name] = found.group(1)
        return out
    return None


def grouping(d: DataConfig, groups: Mapping[str, str] | None) -> str:
    """How the split treats the images, for the log and the run's records."""
    if groups is None:
        return INDEPENDENT
    how = f"--groups {d.groups}" if d.groups else f"--groups-pattern {d.groups_pattern!r}"
    return f"{len(set(groups.values()))} groups ({how}): each stays on one side of every split"


def _units(cases: Sequence[Case], groups: Mapping[str, str] | None) -> list[list[int]]:
    """Indices of the cases of each group, groups in the order of their first case."""
    if groups is None:
        return [[i] for i in range(len(cases))]
    units: dict[str, list[int]] = {}
    for i, c in enumerate(cases):
        units.setdefault(groups[c.name], []).append(i)
    return list(units.values())


def split_cases(cases: list[Case], val_fraction: float, seed: int,
                groups: Mapping[str, str] | None = None) -> tuple[list[Case], list[Case]]:
    """Hold out whole groups holding close to ``round(n * val_fraction)`` cases (at least one group, leaving
    at least one for training), the groups taken in an order drawn with ``seed``: each is held out when
    that brings the count closer to the target. Both lists keep the input order. ``val_fraction=0`` or a
    single group gives no validation. Without ``groups`` every case is a group of one: the held-out cases
    are the first ``round(n * val_fraction)`` of the seed's permutation, as before groups existed."""
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ConfigError(f"data.val_fraction: must be in [0, 1), got {val_fraction}")
    n, units = len(cases), _units(cases, groups)
    if val_fraction == 0 or len(units) < 2:
        return list(cases), []
    target = min(max(1, int(round(n * val_fraction))), n - 1)
    held: list[int] = []
    count = 0
    for u in np.random.default_rng(seed).permutation(len(units)).tolist():
        if len(held) == len(units) - 1:
            break
        size = len(units[u])
        if not held or abs(count + size - target) < abs(count - target):
            held.append(u)
            count += size
    out = {i for u in held for i in units[u]}
    return [c for i, c in enumerate(cases) if i not in out], [c for i, c in enumerate(cases) if i in out]


@dataclass(frozen=True)
class MaskFacts:
    """What a case's mask holds: its stored type and distinct values (for the class map and the strata)."""

    case: Case
    dtype: str
    values: np.ndarray


def mask_facts(cases: Sequence[Case], d: DataConfig, skip: SkipLog | None = None) -> list[MaskFacts]:
    """Read every mask once (the images are not read); a bad mask raises, or is skipped with ``skip``."""
    out = []
    for case in cases:
        assert case.mask_path is not None  # training cases have masks (find_cases checked)
        try:
            mask, meta = read_mask(case.mask_path, max_bytes=d.max_image_gib * 2**30)
        except DataError as e:
            raise_or_skip(e, skip)
            continue
        out.append(MaskFacts(case, str(meta.get("dtype")), unique_values(mask)))
    return out


def strata(facts: Sequence[MaskFacts], task: str) -> dict[str, frozenset[str]]:
    """What each case holds, to balance the folds by: its mask values (semantic), or whether it holds any
    object (instance masks, whose values are object ids)."""
    if task == "instances":
        return {f.case.name: frozenset({"objects"} if np.any(f.values > 0) else ()) for f in facts}
    return {f.case.name: frozenset(f"{float(v):g}" for v in f.values) for f in facts}


def fold_cases(cases: Sequence[Case], folds: int, seed: int, groups: Mapping[str, str] | None = None,
               holds: Mapping[str, frozenset[str]] | None = None,
               what: str = "the dataset") -> list[list[Case]]:
    """``folds`` disjoint folds covering ``cases``, whole groups each, balanced greedily: the groups (in an
    order drawn with ``seed``, those holding the rarest label first, larger before smaller) go one by one to
    the fold where the squared deviations from the even share of cases and of cases holding each label
    (``holds``: labels per case), each relative to its share, grow least; an empty fold takes a group
    while it still can. Each fold keeps the input order."""
    units = _units(cases, groups)
    if not 2 <= folds <= len(units):
        kind = "groups" if groups is not None else "images"
        raise ConfigError(f"--folds {folds}: {what} holds {len(units)} {kind}; K-fold cross-validation needs "
                          f"2 <= K <= {len(units)} (one {kind[:-1]} or more per fold)")
    labels = sorted({x for s in (holds or {}).values() for x in s})
    vec = np.array([[len(u), *[sum(x in (holds or {}).get(cases[i].name, ()) for i in u) for x in labels]]
                    for u in units], dtype=np.float64)
    share = vec.sum(axis=0) / folds
    scale = np.maximum(share, 1.0) ** 2
    rare = np.array([max([1.0 / share[j] for j in range(1, vec.shape[1]) if v[j] > 0], default=0.0)
                     for v in vec])
    shuffled: list[int] = np.random.default_rng(seed).permutation(len(units)).tolist()
    order = sorted(shuffled, key=lambda u: (-rare[u], -vec[u, 0]))
    members: list[list[int]] = [[] for _ in range(folds)]
    load = np.zeros((folds, vec.shape[1]))
    for placed, u in enumerate(order):
        empty = [f for f in range(folds) if not members[f]]
        pick = empty if len(empty) >= len(order) - placed else range(folds)  # no fold may stay empty
        growth = [(float(((load[f] + vec[u] - share) ** 2 - (load[f] - share) ** 2) @ (1 / scale)),
                   load[f, 0], f) for f in pick]
        f = min(growth)[2]
        load[f] += vec[u]
        members[f].append(u)
    return [[cases[i] for i in sorted(i for u in m for i in units[u])] for m in members]

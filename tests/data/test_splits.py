"""Splits by group: the validation split and the folds hold out whole groups (patients, slides, sequences),
the folds partition the cases and balance a rare class, every image needs a group (one error line)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_DATASETS
from unetseg.config import DataConfig
from unetseg.data import find_cases, fold_cases, split_cases
from unetseg.data.cases import Case
from unetseg.data.splits import case_groups, check_groups, mask_facts, read_groups, strata
from unetseg.errors import ConfigError, DataError
from unetseg.io.images import write_image, write_mask

CVC = SHARED_DATASETS / "cvc_clinicdb_polyp"


def _cases(n: int) -> list[Case]:
    return [Case(f"P{i // 3:02d}_s{i % 3}", [Path(f"images/P{i // 3:02d}_s{i % 3}.png")]) for i in range(n)]


def _old_split(cases: list[Case], fraction: float, seed: int) -> list[str]:
    """The case-level split of earlier versions (benchmark splits must not move)."""
    n = len(cases)
    n_val = min(max(1, int(round(n * fraction))), n - 1)
    held = set(np.random.default_rng(seed).permutation(n)[:n_val].tolist())
    return [c.name for i, c in enumerate(cases) if i in held]


@pytest.mark.parametrize(("n", "fraction", "seed"), [(8, 0.2, 0), (20, 0.25, 3), (475, 0.2, 0), (5, 0.5, 7)])
def test_without_groups_the_split_is_the_case_level_one_of_before(n, fraction, seed):
    cases = _cases(n)
    assert [c.name for c in split_cases(cases, fraction, seed)[1]] == _old_split(cases, fraction, seed)


def test_the_validation_split_holds_out_whole_groups_close_to_the_fraction():
    cases = _cases(30)  # 10 patients of 3 images
    groups = case_groups(cases, DataConfig(groups_pattern=r"^(P\d+)_"))
    for seed in range(5):
        train, val = split_cases(cases, 0.2, seed, groups)
        assert {groups[c.name] for c in train}.isdisjoint({groups[c.name] for c in val})
        assert len(val) == 6 and len(train) + len(val) == 30
        assert [c.name for c in split_cases(cases, 0.2, seed, groups)[1]] == [c.name for c in val]  # seeded
    one = {c.name: "all" for c in cases}
    assert split_cases(cases, 0.2, 0, one) == (cases, [])  # one group: nothing to hold out


def test_folds_partition_the_cases_and_never_split_a_group():
    cases = _cases(31)
    groups = case_groups(cases, DataConfig(groups_pattern=r"^(P\d+)_"))
    folds = fold_cases(cases, 4, seed=1, groups=groups)
    names = [c.name for f in folds for c in f]
    assert sorted(names) == sorted(c.name for c in cases) and len(names) == len(set(names))
    owners = {groups[c.name]: k for k, f in enumerate(folds) for c in f}
    assert all(owners[groups[c.name]] == k for k, f in enumerate(folds) for c in f)
    assert sorted(len(f) for f in folds) == [6, 7, 9, 9]  # 10 groups of 3 and 1: as even as whole groups go
    assert fold_cases(cases, 4, seed=1, groups=groups) == folds  # deterministic for a seed
    with pytest.raises(ConfigError, match="--folds 12: the dataset holds 11 groups"):
        fold_cases(cases, 12, seed=1, groups=groups)


def test_uneven_groups_leave_no_fold_empty():
    cases = _cases(12)
    groups = {c.name: ("big" if i < 10 else c.name) for i, c in enumerate(cases)}
    folds = fold_cases(cases, 3, seed=0, groups=groups)
    assert sorted(len(f) for f in folds) == [1, 1, 10]


def test_stratification_spreads_a_rare_class_over_the_folds():
    cases = _cases(20)
    rare = {c.name for c in cases[3:7]}  # 4 cases hold class 2: one per fold
    holds = {c.name: frozenset({"0", "1", "2"} if c.name in rare else {"0", "1"}) for c in cases}
    for seed in range(10):
        folds = fold_cases(cases, 4, seed=seed, holds=holds)
        assert [sum(c.name in rare for c in f) for f in folds] == [1, 1, 1, 1]
        assert [len(f) for f in folds] == [5, 5, 5, 5]
    # without the strata the same seeds put two rare cases in one fold at least once
    plain = [fold_cases(cases, 4, seed=s) for s in range(10)]
    assert any(max(sum(c.name in rare for c in f) for f in folds) > 1 for folds in plain)


def test_the_strata_come_from_the_masks(tmp_path):
    root = tmp_path / "data"
    for i, values in enumerate([(0, 1), (0, 1, 2), (0,)]):
        write_image(root / "images" / f"c{i}.png", np.zeros((8, 8), np.uint8))
        mask = np.zeros((8, 8), np.uint8)
        mask.flat[: len(values)] = values
        write_mask(root / "masks" / f"c{i}.png", mask)
    facts = mask_facts(find_cases(root), DataConfig())
    assert strata(facts, "semantic") == {"c0": {"0", "1"}, "c1": {"0", "1", "2"}, "c2": {"0"}}
    assert strata(facts, "instances") == {"c0": {"objects"}, "c1": {"objects"}, "c2": frozenset()}


def test_a_groups_csv_with_a_header_extensions_and_extra_rows(tmp_path):
    cases = _cases(4)
    table = tmp_path / "groups.csv"
    table.write_text("stem,patient\nP00_s0.png,a\nP00_s1,a\n\nP00_s2,b\nP01_s0,b\nnot_here,c\n")
    assert case_groups(cases, DataConfig(groups=str(table))) == {"P00_s0": "a", "P00_s1": "a", "P00_s2": "b",
                                                                "P01_s0": "b"}


@pytest.mark.parametrize(("text", "needle"), [
    ("P00_s0,a\nP00_s1,a\nP00_s2,a\n", "no group for 'P01_s0' (images/P01_s0.png)"),
    ("P00_s0,a\nP00_s0,b\n", "line 2: 'P00_s0' is in group 'b' here and in group 'a' on line 1"),
    ("P00_s0\n", "line 1: expected 'stem,group'"),
    ("P00_s0,\n", "line 1: expected 'stem,group'"),
])
def test_a_bad_groups_file_is_one_line_naming_the_file(tmp_path, text, needle):
    table = tmp_path / "groups.csv"
    table.write_text(text)
    with pytest.raises(DataError) as e:
        case_groups(_cases(4), DataConfig(groups=str(table)))
    assert str(e.value).startswith(str(table)) and needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(("options", "error", "needle"), [
    ({"groups_pattern": "^(P"}, ConfigError, "not a regular expression"),
    ({"groups_pattern": r"^P\d+_"}, ConfigError, "has no capture group"),
    ({"groups_pattern": r"^(Q\d+)_"}, DataError, "images/P00_s0.png: its stem 'P00_s0' does not match"),
    ({"groups_pattern": r"^(P\d+)_", "groups": "g.csv"}, ConfigError, "not both"),
    ({"groups": "missing.csv"}, ConfigError, "missing.csv: groups file not found"),
])
def test_bad_grouping_options_are_one_line(options, error, needle):
    with pytest.raises(error, match=None) as e:
        case_groups(_cases(3), DataConfig(**options))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_check_groups_finds_an_image_without_a_group_before_any_image_is_read(tmp_path):
    root = tmp_path / "data"
    for name in ("a_1", "a_2", "b_1"):
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "images" / f"{name}.png").write_bytes(b"not a png")  # never read
        (root / "masks").mkdir(exist_ok=True)
        (root / "masks" / f"{name}.png").write_bytes(b"not a png")
    table = tmp_path / "g.csv"
    table.write_text("a_1,a\na_2,a\n")
    with pytest.raises(DataError, match=r"g.csv: no group for 'b_1' \(.*b_1.png\)"):
        check_groups(DataConfig(data=str(root), groups=str(table)))


@pytest.mark.skipif(not CVC.is_dir(), reason="the shared CVC-ClinicDB dataset is absent")
def test_the_cvc_sequences_keep_each_video_on_one_side():
    cases = find_cases(CVC)
    groups = case_groups(cases, DataConfig(groups=str(CVC / "extra" / "sequences.csv")))
    assert len(set(groups.values())) == 23 and read_groups(CVC / "extra" / "sequences.csv")["612"] == "29"
    train, val = split_cases(cases, 0.2, 0, groups)
    assert {groups[c.name] for c in train}.isdisjoint({groups[c.name] for c in val})
    assert abs(len(val) - 95) <= 10  # whole sequences of 6-26 frames, close to a fifth of 475
    folds = fold_cases(cases, 5, 0, groups)
    assert sorted(c.name for f in folds for c in f) == sorted(c.name for c in cases)
    assert all(80 <= len(f) <= 110 for f in folds)

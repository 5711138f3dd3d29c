"""The recipes in ``configs/`` and the real-data benchmark script's own parts (split, scoring, BENCHMARKS.md).

The fast tests need no data; the slow ones read ``../shared/datasets`` and skip when it is absent.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from unetseg.config import Config, apply_overrides, load_yaml
from unetseg.errors import ConfigError
from unetseg.io.images import write_mask

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
DATASETS = REPO / ".." / "shared" / "datasets"
RECIPES = {"isbi2012": "isbi2012_em", "dsb2018": "dsb2018_stage1_test", "drive": "drive_retina",
           "brats3d": "brats2013_deepmedic_3d"}


def _real_data_module():
    """``benchmarks/real_data.py`` imported by path (benchmarks/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("real_data", REPO / "benchmarks" / "real_data.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("real_data", module)
    spec.loader.exec_module(module)
    return module


def _recipe(name: str) -> Config:
    path = CONFIGS / f"{name}.yaml"
    return apply_overrides(Config(), load_yaml(path), source=str(path))


def test_every_yaml_in_configs_parses() -> None:
    names = {p.stem for p in CONFIGS.glob("*.yaml")}
    assert set(RECIPES) <= names
    for name in names:
        _recipe(name)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_parses_into_the_config(name: str) -> None:
    cfg = _recipe(name)
    # It runs as it is, within the CPU budget, and says how to split.
    assert cfg.train.max_minutes is not None and 0 < cfg.train.max_minutes <= 20
    assert 0 < cfg.data.val_fraction < 1
    dims = 3 if name == "brats3d" else 2
    assert cfg.data.patch_size is not None and len(cfg.data.patch_size) == dims
    # Every key of the file reached the Config, and survives the YAML the trainer writes into the run.
    written = yaml.safe_load(yaml.safe_dump(cfg.to_dict()))
    for section, values in load_yaml(CONFIGS / f"{name}.yaml").items():
        for key, value in values.items():
            assert getattr(getattr(cfg, section), key) == value
            assert written[section][key] == value


def test_isbi_recipe_makes_the_membrane_the_foreground() -> None:
    assert _recipe("isbi2012").data.class_values == [255, 0]


def test_a_misspelt_recipe_key_fails(tmp_path: Path) -> None:
    text = (CONFIGS / "drive.yaml").read_text().replace("foreground_fraction", "foreground_frac")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match="foreground_frac"):
        apply_overrides(Config(), load_yaml(bad), source=str(bad))


def test_write_section_replaces_only_its_own_block(tmp_path: Path) -> None:
    rd = _real_data_module()
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\nintro\n\n<!-- other:start -->\nkeep me\n<!-- other:end -->\n")
    rd.write_section(md, "drive", "first\n")
    rd.write_section(md, "isbi2012", "isbi\n")
    rd.write_section(md, "drive", "second\n")
    text = md.read_text()
    assert "keep me" in text and "intro" in text and "isbi" in text
    assert "second" in text and "first" not in text
    assert text.count("<!-- real_data:drive:start -->") == 1


def _case(root: Path, name: str, mask: np.ndarray, suffix: str = ".png"):
    """A Case whose mask is ``mask`` (scoring reads only the mask)."""
    from unetseg.data.cases import Case

    path = write_mask(root / "masks" / f"{name}{suffix}", mask)
    return Case(name=name, image_paths=[path], mask_path=path)


def test_score_isbi_perfect_and_swapped(tmp_path: Path) -> None:
    rd = _real_data_module()
    mask = np.full((32, 32), 255, np.uint8)
    mask[:, 15:17] = 0  # a membrane splitting two cells
    mask[15:17, :] = 0
    case = _case(tmp_path, "a", mask)
    values = [255.0, 0.0]  # membrane = class 1
    pred = tmp_path / "pred"
    write_mask(pred / "a.png", (mask == 0).astype(np.uint8))
    s = rd.score(pred, [case], values, "isbi2012", tmp_path)
    assert s["dice/membrane"] == 1.0 and s["dice/cell"] == 1.0
    assert s["rand_error"] == 0.0 and s["pixel_error"] == 0.0
    write_mask(pred / "a.png", np.zeros((32, 32), np.uint8))  # no membrane: the four cells merge into one
    s = rd.score(pred, [case], values, "isbi2012", tmp_path)
    assert s["dice/membrane"] == 0.0 and s["rand_error"] > 0.5


def test_score_brats_whole_tumour_merges_labels(tmp_path: Path) -> None:
    rd = _real_data_module()
    truth = np.zeros((8, 8, 8), np.uint8)
    truth[2:6, 2:6, 2:6] = 2
    truth[3:5, 3:5, 3:5] = 4
    case = _case(tmp_path, "b", truth, ".nii.gz")
    pred = np.where(truth > 0, 1, 0).astype(np.uint8)  # every tumour voxel as class 1 ("necrosis")
    write_mask(tmp_path / "pred" / "b.nii.gz", pred)
    s = rd.score(tmp_path / "pred", [case], [0.0, 1.0, 2.0, 3.0, 4.0], "brats3d", tmp_path)
    assert s["whole_tumour_dice"] == 1.0 and s["dice/oedema"] == 0.0
    # the recipe's map: every label > 0 is one class, so the binary prediction scores on it directly
    s = rd.score(tmp_path / "pred", [case], [0.0, [1.0, 2.0, 3.0, 4.0]], "brats3d", tmp_path)
    assert s["whole_tumour_dice"] == 1.0 and s["dice/necrosis+oedema+non-enhancing+enhancing"] == 1.0
    write_mask(tmp_path / "pred" / "b.nii.gz", np.zeros_like(pred))
    s = rd.score(tmp_path / "pred", [case], [0.0, [1.0, 2.0, 3.0, 4.0]], "brats3d", tmp_path)
    assert s["whole_tumour_dice"] == 0.0


def test_brats_recipe_trains_the_whole_tumour() -> None:
    assert _recipe("brats3d").data.class_values == [0, [1, 2, 3, 4]]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RECIPES))
@pytest.mark.skipif(not DATASETS.is_dir(), reason="../shared/datasets is absent")
def test_recipe_fits_its_dataset(name: str, tmp_path: Path) -> None:
    """The recipe's class map, patch and split work on the real data, and the benchmark's symlink split
    is exactly the split the trainer makes from the whole folder."""
    from unetseg.data.prepare import prepare_data

    data = DATASETS / RECIPES[name]
    if not data.is_dir():
        pytest.skip(f"{data} is absent")
    cfg = _recipe(name)
    cfg.data.data = str(data)
    cfg.data.cache = "lazy"
    prepared = prepare_data(cfg)
    assert prepared.spatial_dims == len(cfg.data.patch_size)
    assert prepared.class_map.num_classes >= 2 and prepared.val_cases
    train_dir, val_dir, val_cases = _real_data_module().write_split(data, cfg, tmp_path)
    assert sorted(c.name for c in val_cases) == sorted(c.name for c in prepared.val_cases)
    assert len(list((train_dir / "images").iterdir())) == len(prepared.train_cases)
    assert all(p.is_symlink() for p in (val_dir / "masks").iterdir())

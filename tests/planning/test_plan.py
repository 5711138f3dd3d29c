"""The planner end to end: precedence command line > YAML > plan, the plan written into the run and read
back by ``train --config``, and a 3D anisotropic set resampled, pooled per axis and predicted back on each
image's own grid with its own affine."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from reliability.helpers import run_inprocess
from unetseg.config import Config
from unetseg.errors import ConfigError
from unetseg.io.images import write_image, write_mask
from unetseg.planning import make_plan, rules
from unetseg.validate import check_config

from .builders import fingerprint

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets"


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> Path:
    from unetseg.data.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("plan") / "cells", n=6, size=(64, 64), kind="cells", seed=3)


def _saved(run: Path) -> dict:
    return json.loads((run / "best" / "config.json").read_text())


def test_command_line_beats_yaml_beats_the_plan(cells, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("train: {lr: 0.01, batch_size: 3}\naugment: {flip_prob: 0.1}\n")
    run = tmp_path / "RUN"
    code, err = run_inprocess(
        "train",
        "--data",
        cells,
        "--out",
        run,
        "--config",
        recipe,
        "--batch-size",
        "2",
        "--max-minutes",
        "0.1",
        "--workers",
        "0",
        capsys=capsys,
    )
    assert code == 0, err
    saved = _saved(run)
    assert saved["train"]["batch_size"] == 2  # command line
    assert saved["train"]["lr"] == 0.01 and saved["augment"]["flip_prob"] == 0.1  # YAML
    assert saved["data"]["patch_size"] == [64, 64] and saved["model"]["depth"] == 3  # the plan
    assert "option" in err and "why" in err and "this run: about" in err  # the table and the estimate
    plan = (run / "plan.yaml").read_text()
    assert "# train.lr: given" in plan and "# data.patch_size: median image [64, 64]" in plan


def test_the_plan_in_the_run_is_a_recipe_train_reads_back(cells, tmp_path, capsys):
    first, second = tmp_path / "A", tmp_path / "B"
    assert (
        run_inprocess(
            "train", "--data", cells, "--out", first, "--max-minutes", "0.1", "--workers", "0", capsys=capsys
        )[0]
        == 0
    )
    code, err = run_inprocess(
        "train",
        "--config",
        first / "plan.yaml",
        "--data",
        cells,
        "--out",
        second,
        "--max-minutes",
        "0.1",
        capsys=capsys,
    )
    assert code == 0, err
    a, b = _saved(first), _saved(second)
    for section in ("model", "augment"):
        assert a[section] == b[section]
    for key in ("patch_size", "normalization", "foreground_fraction"):
        assert a["data"][key] == b["data"][key]
    assert yaml.safe_load((first / "plan.yaml").read_text())["train"]["max_minutes"] == 0.1


def test_a_planned_resolution_is_recorded_predicted_back_and_read_again(tmp_path, capsys):
    """Lesions that fill most of a 575x700 image: the plan trains at a coarser resolution (no probe: the
    rules are sure), plan.yaml records it, ``train --config plan.yaml`` keeps it, and predictions come
    back at each input's own size."""
    from unetseg.data.synthetic import make_dataset

    data = make_dataset(tmp_path / "lesions", n=5, size=(575, 700), kind="lesions", seed=2)
    first, second = tmp_path / "A", tmp_path / "B"
    code, err = run_inprocess("train", "--data", data, "--out", first, "--max-minutes", "0.1",
                              "--workers", "0", capsys=capsys)
    assert code == 0, err
    plan = yaml.safe_load((first / "plan.yaml").read_text())
    factor = plan["data"]["downsample"]
    assert factor is not None and factor[0] == factor[1] >= 2.0
    assert "# data.downsample: the objects want a view of [575, 700] px" in (first / "plan.yaml").read_text()
    assert _saved(first)["data"]["downsample"] == factor
    assert "probe" not in (first / "log.txt").read_text()  # sure: nothing to probe
    code, err = run_inprocess("train", "--config", first / "plan.yaml", "--data", data, "--out", second,
                              "--max-minutes", "0.1", "--workers", "0", capsys=capsys)
    assert code == 0, err
    assert _saved(second)["data"]["downsample"] == factor
    assert _saved(second)["data"]["patch_size"] == plan["data"]["patch_size"]
    assert "# data.downsample: given" in (second / "plan.yaml").read_text()
    out = tmp_path / "pred"
    code, err = run_inprocess("predict", "--checkpoint", second, "--input", data / "images", "--output", out,
                              capsys=capsys)
    assert code == 0, err
    from unetseg.io.images import read_mask

    assert read_mask(out / "case_000.png")[0].shape == (575, 700)


def test_the_plan_says_what_a_probe_will_try(tmp_path, capsys):
    """Lesions that fill most of a 288x384 image: a coarser grid sees them whole, full resolution sees most
    of them; the rules leave it to the probe, and `plan` says so in its table and its recipe."""
    from unetseg.data.synthetic import make_dataset

    data = make_dataset(tmp_path / "lesions", n=4, size=(288, 384), kind="lesions", seed=5)
    out = tmp_path / "plan.yaml"
    code, err = run_inprocess("plan", "--data", data, "--max-minutes", "5", "--out", out, capsys=capsys)
    assert code == 0, err
    assert "probe: train will also try full (full resolution" in " ".join(err.split())
    text = out.read_text()
    assert text.startswith("# probe: train will also try full")
    assert yaml.safe_load(text)["data"]["downsample"][0] > 1.0  # the recipe holds the rules' own choice


def test_a_resumed_planned_run_keeps_its_plan(cells, tmp_path, capsys):
    """--resume goes on with the planned values (not the built-in defaults); what the resume command gives,
    a longer budget, applies."""
    run = tmp_path / "RUN"
    code, err = run_inprocess("train", "--data", cells, "--out", run, "--max-minutes", "0.05",
                              "--workers", "0", capsys=capsys)
    assert code == 0, err
    planned = json.loads((run / "last" / "config.json").read_text())
    assert planned["train"]["lr"] == 0.002 != 1e-3  # the plan's, not the default
    code, err = run_inprocess("train", "--data", cells, "--out", run, "--max-minutes", "0.1",
                              "--workers", "0", "--resume", capsys=capsys)
    assert code == 0, err
    resumed = json.loads((run / "last" / "config.json").read_text())
    assert resumed["train"]["max_minutes"] == 0.1
    for section in ("model", "augment", "infer"):
        assert resumed[section] == planned[section]
    for key in ("lr", "batch_size", "iters_per_epoch", "loss_options", "val_interval"):
        assert resumed["train"][key] == planned["train"][key]


def test_plan_command_writes_a_recipe_and_refuses_to_replace_a_users_file(cells, tmp_path, capsys):
    out = tmp_path / "plan.yaml"
    code, err = run_inprocess("plan", "--data", cells, "--max-minutes", "5", "--out", out, capsys=capsys)
    assert code == 0, err
    recipe = yaml.safe_load(out.read_text())
    assert recipe["train"]["max_minutes"] == 5 and recipe["data"]["patch_size"] == [64, 64]
    assert run_inprocess("plan", "--data", cells, "--out", out, capsys=capsys)[0] == 0  # our own file again
    mine = tmp_path / "mine.yaml"
    mine.write_text("# my notes\n")
    code, err = run_inprocess("plan", "--data", cells, "--out", mine, capsys=capsys)
    assert code == 2 and "unetseg did not write" in err and mine.read_text() == "# my notes\n"


def test_the_plan_of_an_instance_task_chooses_the_target_and_keeps_a_given_one(tmp_path, capsys):
    from unetseg.data.synthetic import make_dataset

    nuclei = make_dataset(tmp_path / "nuclei", n=4, size=(64, 64), kind="nuclei", seed=1)
    out = tmp_path / "plan.yaml"
    code, err = run_inprocess("plan", "--data", nuclei, "--task", "instances", "--max-minutes", "1",
                              "--out", out, capsys=capsys)
    assert code == 0, err
    text = out.read_text()
    planned = rules.INSTANCE_TARGET  # the measured choice (BENCHMARKS.md)
    assert yaml.safe_load(text)["data"]["instance_target"] == planned
    assert f"# data.instance_target: {rules.INSTANCE_TARGET_WHY[planned]}" in text
    other = next(t for t in rules.INSTANCE_TARGET_WHY if t != planned)
    given = tmp_path / "other.yaml"
    given.write_text(f"data: {{instance_target: {other}}}\n")
    code, err = run_inprocess("plan", "--data", nuclei, "--task", "instances", "--max-minutes", "1",
                              "--config", given, "--out", out, capsys=capsys)
    assert code == 0, err
    text = out.read_text()
    assert yaml.safe_load(text)["data"]["instance_target"] == other
    assert "# data.instance_target: given" in text


@pytest.mark.parametrize("extra, needle", [
    (["--depth", "12"], "the largest depth that fits is 8"),
    (["--patch-size", "4096", "4096"], "the largest patch that fits"),
    (["--downsample", "2", "2", "2"], "data.downsample [2.0, 2.0, 2.0] has 3 values but the images in"),
    (["--downsample", "8", "1"], "leaves the median image of"),
    (["--downsample", "0.5", "2"], "factors of at least 1"),
])
def test_options_that_cannot_work_fail_before_the_plan_is_shown(extra, needle, cells, tmp_path, capsys):
    from reliability.helpers import assert_refused

    code, err = run_inprocess("train", "--data", cells, "--out", tmp_path / "R", *extra, capsys=capsys)
    assert_refused(code, err, needle)
    assert not (tmp_path / "R").exists()


def _given(**values: object) -> tuple[Config, set[str]]:
    cfg = Config()
    cfg.data.data, cfg.train.device = "DATA", "cpu"  # the fingerprint is given: no folder is read
    for key, value in values.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    return cfg, {key.replace("__", ".") for key in values}


def test_a_fingerprint_is_planned_whole_and_what_was_given_stays():
    cfg, given = _given(train__max_minutes=1.0, model__base_channels=4)  # one width to time: fast
    plan = make_plan(cfg, given, fingerprint=fingerprint([(64, 64)] * 6))
    reasons = {d.key: d.reason for d in plan.decisions}
    assert reasons["train.max_minutes"] == reasons["model.base_channels"] == "given"
    assert plan.name == "full" and plan.alternatives == [] and plan.fine is None
    assert cfg.data.patch_size is None and cfg.model.depth == 4  # planning leaves the caller's config alone
    planned = check_config(plan.apply(cfg))
    assert (planned.data.patch_size, planned.model.depth, planned.infer.tile) == ([64, 64], 3, [64, 64])
    assert planned.model.options["norm"] == "instance"  # a patch holds a whole image
    assert (planned.model.base_channels, planned.train.max_minutes) == (4, 1.0)


def test_a_given_resolution_that_leaves_too_few_pixels_is_refused_before_any_timing():
    cfg, given = _given(data__downsample=[8.0, 1.0])
    with pytest.raises(ConfigError, match=r"data.downsample \[8.0, 1.0\] leaves the median image of DATA "
                                          r"\[12, 300\] px at the model's grid; at most \[6.25, 18.75\]"):
        make_plan(cfg, given, fingerprint=fingerprint([(100, 300)] * 4))


def test_a_3d_recipe_that_gives_only_the_patch_is_planned_around_it(cells_3d, tmp_path, capsys):
    """Per-axis options of a recipe are checked against the data's dimensions once the plan knows them: a
    3D patch (or resolution) given without ``model.spatial_dims`` trains, and the plan keeps it."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {patch_size: [16, 32, 32], downsample: [1, 2, 2]}\n")
    code, err = run_inprocess("train", "--data", cells_3d, "--out", tmp_path / "R", "--config", recipe,
                              "--max-minutes", "0.05", "--workers", "0", "--precision", "fp32", capsys=capsys)
    assert code == 0, err
    saved = _saved(tmp_path / "R")
    assert saved["model"]["spatial_dims"] == 3 and saved["data"]["patch_size"] == [16, 32, 32]
    assert saved["data"]["downsample"] == [1.0, 2.0, 2.0]


def _aniso(root: Path, spacings: list[tuple[float, float, float]]) -> Path:
    rng = np.random.default_rng(0)
    for i, sp in enumerate(spacings):
        z = int(round(40 / sp[0]))
        grid = np.indices((z, 48, 48)).astype(np.float32)
        grid[0] *= sp[0]
        ball = ((grid[0] - 20) ** 2 + (grid[1] - 24) ** 2 + (grid[2] - 24) ** 2) < 12**2
        image = (ball * 100 + rng.normal(0, 5, ball.shape)).astype(np.float32)
        meta = {"spatial_dims": 3, "spacing": sp}
        write_image(root / "images" / f"c{i}.nii.gz", image, meta)
        write_mask(root / "masks" / f"c{i}.nii.gz", ball.astype(np.uint8), meta)
    return root


def test_an_anisotropic_volume_is_resampled_pooled_per_axis_and_predicted_back_on_its_grid(tmp_path, capsys):
    data = _aniso(tmp_path / "aniso", [(4.0, 1.0, 1.0), (4.0, 1.0, 1.0), (5.0, 1.0, 1.0), (4.0, 1.0, 1.0)])
    run = tmp_path / "RUN"
    code, err = run_inprocess(
        "train", "--data", data, "--out", run, "--max-minutes", "0.15", "--workers", "0", capsys=capsys
    )
    assert code == 0, err
    cfg = _saved(run)
    assert cfg["data"]["spacing"][1:] == [1.0, 1.0] and cfg["data"]["spacing"][0] == pytest.approx(
        4.0, abs=0.3
    )
    assert cfg["model"]["options"]["strides"][0] == [1, 2, 2]  # the coarse z is not pooled at first
    test = _aniso(tmp_path / "test", [(5.0, 1.0, 1.0)]) / "images" / "c0.nii.gz"
    out = tmp_path / "pred"
    code, err = run_inprocess("predict", "--checkpoint", run, "--input", test, "--output", out, capsys=capsys)
    assert code == 0, err
    src, pred = nib.load(str(test)), nib.load(str(out / "c0.nii.gz"))
    assert pred.shape == src.shape  # back on the image's own grid (8 slices of 5 mm), not the training one
    np.testing.assert_allclose(pred.affine, src.affine)
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1}


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "brats2013_deepmedic_3d" / "images").is_dir(), reason="BraTS not present")
def test_brats_is_isotropic_and_keeps_its_grid():
    from unetseg.data.cases import find_cases
    from unetseg.planning import rules
    from unetseg.planning.fingerprint import compute_fingerprint

    fp = compute_fingerprint(find_cases(SHARED / "brats2013_deepmedic_3d")[:2])
    assert rules.spacing(fp)[0].value is None
    d = {x.key: x.value for x in rules.geometry(fp, rules.Device("cpu"), None)}
    assert d["model.options.strides"] is None  # 2 on every axis

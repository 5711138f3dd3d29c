"""The Python API a notebook user meets: ``unetseg.train(...)`` plans like the command line and returns the
run; ``unetseg.load(RUN)`` predicts labels, probabilities, instances and files as ``predict`` does; importing
``unetseg`` (and ``unetseg --help``) loads no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import unetseg
from reliability.helpers import run_inprocess
from unetseg.errors import ConfigError
from unetseg.io.images import read_image


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, unetseg.TrainedRun]:
    from unetseg.data.synthetic import make_dataset

    root = tmp_path_factory.mktemp("api")
    data = make_dataset(root / "cells", n=6, size=(64, 64), kind="cells", seed=4)
    return data, unetseg.train(data=data, out=root / "RUN", max_minutes=0.1, workers=0, quiet=True)


def test_train_plans_like_the_command_line_and_returns_the_run(planned, tmp_path):
    data, run = planned
    assert (run.path / "plan.yaml").is_file() and (run.path / "best" / "config.json").is_file()
    assert run.metrics and run.best is not None and 0.0 <= run.best <= 1.0
    assert run.best == max(float(r["val_dice"]) for r in run.metrics if r["val_dice"])
    np.random.seed(7)
    torch.manual_seed(7)
    bare = unetseg.train(data, tmp_path / "BARE", plan=False, epochs=1, iters_per_epoch=2, workers=0,
                         model="unet", base_channels=8, depth=2, quiet=True)
    after = (np.random.rand(), torch.rand(1).item())
    np.random.seed(7)
    torch.manual_seed(7)
    assert after == (np.random.rand(), torch.rand(1).item())  # the caller's random state is given back
    assert not (bare.path / "plan.yaml").exists() and len(bare.metrics) == 1  # the options given, no plan
    with pytest.raises(ConfigError, match="learning_rate"):
        unetseg.train(data, tmp_path / "X", learning_rate=0.1)


def test_load_predicts_as_the_checkpoint_with_its_config(planned):
    data, run = planned
    seg = run.load()
    assert isinstance(seg, unetseg.Segmenter) and seg.task == "semantic" and seg.classes == [0, 255]
    image = read_image(next((data / "images").iterdir()))[0]
    labels, probs = seg.predict(image), seg.predict_proba(image)
    model, config = unetseg.load_checkpoint(run.path)
    np.testing.assert_array_equal(labels, unetseg.predict(model, image, config=config))
    assert labels.shape == image.shape[-2:] and probs.shape == (2, *image.shape[-2:])
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(labels, probs.argmax(0))
    assert "semantic" in repr(seg)
    with pytest.raises(ConfigError, match="predict_instances needs an instance model"):
        seg.predict_instances(image)


def test_predict_file_writes_what_the_command_line_writes(planned, tmp_path, capsys):
    data, run = planned
    result = unetseg.load(run.path).predict_file(data / "images", tmp_path / "api")
    code, err = run_inprocess("predict", "--checkpoint", run.path, "--input", data / "images", "--output",
                              tmp_path / "cli", capsys=capsys)
    assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "cli").iterdir() if not p.name.startswith("."))
    assert names == sorted(Path(w).name for w in result.written) and len(names) == 6
    for name in names:
        assert (tmp_path / "api" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes()


def test_an_instance_model_gives_ids_and_a_table(cells_2d, tmp_path):
    run = unetseg.train(cells_2d, tmp_path / "RUN", plan=False, task="instances", epochs=1, iters_per_epoch=3,
                        workers=0, base_channels=8, depth=2, patch_size=[64, 64], quiet=True)
    seg = run.load()
    image = read_image(next((cells_2d / "images").iterdir()))[0]
    ids, table = seg.predict_instances(image)
    assert ids.shape == image.shape[-2:] and np.issubdtype(ids.dtype, np.integer)
    assert list(table["id"]) == sorted(set(np.unique(ids)) - {0})
    assert set(table) >= {"area", "centroid_0", "bbox_1_stop", "mean_intensity_c0"}
    np.testing.assert_array_equal(seg.predict(image), ids)  # an instance model's labels are its objects


def test_predict_without_a_config_says_what_it_does_not_know():
    model = unetseg.build_model("unet", base_channels=8, depth=2)
    with pytest.warns(UserWarning, match="no normalisation"):
        unetseg.predict(model, np.zeros((32, 32), np.float32))


def test_importing_unetseg_or_asking_for_help_loads_no_torch():
    code = ("import sys, runpy, unetseg\n"
            "assert 'torch' not in sys.modules, 'import unetseg'\n"
            "sys.argv = ['unetseg', '--help']\n"
            "try:\n    runpy.run_module('unetseg', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False"
    assert "Usage" in proc.stdout

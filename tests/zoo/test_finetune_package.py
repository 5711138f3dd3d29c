"""``train --init-from model.zip``: a BioImage Model Zoo package of a unetseg architecture starts a fine-tune
(its network kept in RUN/init_source); a package whose network only ONNX can run is refused in one line."""

from __future__ import annotations

import json

import pytest
import torch

import unetseg
from reliability.helpers import assert_refused, run_inprocess
from unetseg import checkpoint as ckpt
from zoo.helpers import foreign_package

pytest.importorskip("bioimageio.core")


def test_a_package_starts_a_fine_tune_with_every_tensor_copied(exported, tmp_path):
    data, run, package = exported
    out = tmp_path / "RUN"
    unetseg.train(data=data, out=out, init_from=package, epochs=1, iters_per_epoch=2, workers=0,
                  precision="fp32", plan=False, quiet=True)
    source = out / "init_source"
    record = json.loads((out / "init.json").read_text())
    assert record["source"] == str(source.resolve()) and record["reinitialised"] == []
    # the package's network is the run's own, tensor for tensor
    theirs = ckpt.read_weights(source / ckpt.MODEL_FILE)
    mine = ckpt.read_weights(ckpt.find_checkpoint(run) / ckpt.MODEL_FILE)
    assert theirs.keys() == mine.keys() and all(torch.equal(theirs[k], mine[k]) for k in mine)
    saved = ckpt.read_config(out)
    assert (saved.model.name, saved.model.depth, saved.model.base_channels) == ("unet", 2, 4)


def test_an_onnx_only_package_cannot_be_fine_tuned(exported, tmp_path, capsys):
    import numpy as np

    data = exported[0]
    onnx_only = foreign_package(tmp_path / "foreign.zip", np.random.default_rng(0))
    code, err = run_inprocess("train", "--data", data, "--out", tmp_path / "RUN", "--init-from", onnx_only,
                              "--no-plan", capsys=capsys)
    assert_refused(code, err, "foreign.zip", "ONNX")
    assert not (tmp_path / "RUN").exists()  # rolled back: the run had no checkpoint

"""Fine-tuning (``train --init-from``): a new run starts from a trained model of the same architecture; the
layers that fit are copied, the stem is adapted or new when the image channels differ, the head is new when
the classes differ; the planner keeps the source's architecture and plans a gentler schedule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import unetseg
from reliability.helpers import assert_refused, run_inprocess
from unetseg import checkpoint as ckpt
from unetseg.config import Config
from unetseg.data.synthetic import make_dataset
from unetseg.errors import ConfigError
from unetseg.models import build_model
from unetseg.training import train


def _config(data: Path, out: Path, steps: int, **train: object) -> Config:
    cfg = Config()
    cfg.data.data, cfg.data.num_workers, cfg.data.val_fraction = str(data), 0, 0.25
    cfg.model.base_channels, cfg.model.depth = 8, 2
    cfg.data.patch_size = [64, 64]
    cfg.train.out, cfg.train.precision, cfg.train.lr = str(out), "fp32", 3e-3
    cfg.train.batch_size, cfg.train.iters_per_epoch, cfg.train.epochs = 4, steps, 1
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("finetune")
    make_dataset(root / "cells", n=8, size=(64, 64), kind="cells", seed=1)
    make_dataset(root / "new", n=4, size=(64, 64), kind="cells", seed=7)
    return root


@pytest.fixture(scope="module")
def source(sets: Path) -> Path:
    torch.manual_seed(0)
    return train(_config(sets / "cells", sets / "SRC", 120), quiet=True)


def test_rgb_weights_adapted_to_grey_give_the_same_response(tmp_path):
    torch.manual_seed(0)
    for name in ("unet", "res_unet"):  # res_unet: two tensors see the image (body and shortcut)
        rgb = build_model(name, spatial_dims=2, in_channels=3, base_channels=4, depth=2).eval()
        grey = build_model(name, spatial_dims=2, in_channels=1, base_channels=4, depth=2).eval()
        ckpt.save_checkpoint(tmp_path / name, rgb, Config())
        done = ckpt.transfer_weights(grey, tmp_path / name / ckpt.MODEL_FILE, channels=(3, 1))
        assert done.adapted and not done.new
        x = torch.randn(2, 1, 32, 32)
        with torch.no_grad():  # a grey image as three equal channels: the same response
            assert torch.allclose(grey(x), rgb(x.repeat(1, 3, 1, 1)), atol=1e-5)


def test_a_new_class_map_gets_a_new_head_and_everything_else_is_copied(tmp_path):
    torch.manual_seed(0)
    src = build_model("unet", spatial_dims=2, num_classes=2, base_channels=4, depth=2)
    ckpt.save_checkpoint(tmp_path / "src", src, Config())
    new = build_model("unet", spatial_dims=2, num_classes=3, base_channels=4, depth=2)
    done = ckpt.transfer_weights(new, tmp_path / "src" / ckpt.MODEL_FILE)
    assert sorted(done.new) == ["head.bias", "head.weight"]
    theirs, mine = src.state_dict(), new.state_dict()
    assert all(torch.equal(theirs[k], mine[k]) for k in done.copied)
    # same class count but other meaning (keep_head=False): the head is new all the same
    same = build_model("unet", spatial_dims=2, num_classes=2, base_channels=4, depth=2)
    done = ckpt.transfer_weights(same, tmp_path / "src" / ckpt.MODEL_FILE, keep_head=False)
    assert sorted(done.new) == ["head.bias", "head.weight"]
    assert not torch.equal(same.state_dict()["head.weight"], theirs["head.weight"])


def test_fine_tuning_starts_where_the_source_is_and_beats_random_weights(source, sets):
    """Ten steps from the source beat ten steps from scratch by far on new images of the same kind."""
    scores = {}
    for name, init in (("tuned", str(source)), ("scratch", None)):
        torch.manual_seed(1)
        cfg = _config(sets / "new", sets / name, 10, init_from=init, lr=5e-4)
        run = train(cfg, quiet=True)
        scores[name] = json.loads((run / "best" / ckpt.CONFIG_FILE).read_text())["metrics"]["val_dice"]
    assert scores["tuned"] > 0.8 and scores["tuned"] > scores["scratch"] + 0.2, scores
    record = json.loads((sets / "tuned" / "init.json").read_text())
    assert record["copied"] == len(build_model("unet", spatial_dims=2, base_channels=8, depth=2).state_dict())
    assert record["reinitialised"] == [] and Path(record["source"]) == (source / "best").resolve()


def test_a_frozen_encoder_keeps_the_copied_filters_while_the_rest_learns(source, sets):
    cfg = _config(sets / "new", sets / "frozen", 4, init_from=str(source), freeze_encoder=0.9)
    cfg.data.class_values = [0, 255]
    run = train(cfg, quiet=True)
    before = ckpt.read_weights(ckpt.find_checkpoint(source) / ckpt.MODEL_FILE)
    after = ckpt.read_weights(run / "last" / ckpt.MODEL_FILE)
    enc = [k for k in before if k.startswith("encoder.") and k.endswith("weight")]
    dec = [k for k in before if k.startswith("decoder.") and k.endswith("weight")]
    assert all(torch.equal(before[k], after[k]) for k in enc)
    assert any(not torch.equal(before[k], after[k]) for k in dec)


def test_the_planner_keeps_the_sources_architecture_and_plans_a_gentle_schedule(source, sets, capsys):
    run = unetseg.train(data=sets / "new", out=sets / "planned", init_from=source, max_minutes=0.1,
                        workers=0, quiet=True)
    saved = ckpt.read_config(run.path)
    src = ckpt.read_config(source)
    assert (saved.model.name, saved.model.base_channels, saved.model.depth) == ("unet", 8, 2)
    assert saved.model.options == src.model.options
    assert saved.train.lr == pytest.approx(0.25 * 2e-3)
    assert saved.train.freeze_encoder > 0  # three training images: a tiny set
    assert saved.train.init_from == str(source)
    # the planner's table says where each architectural value came from
    plan = (run.path / "plan.yaml").read_text()
    assert "model.depth: from the model in" in plan


def test_what_cannot_start_a_fine_tune_is_refused_in_one_line(source, sets, tmp_path, capsys):
    code, err = run_inprocess("train", "--data", sets / "new", "--out", tmp_path / "a", "--init-from",
                              source, "--depth", "3", capsys=capsys)
    assert_refused(code, err, "model.depth 3", "conflicts with --init-from")
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"x")
    code, err = run_inprocess("train", "--data", sets / "new", "--out", tmp_path / "b", "--init-from", onnx,
                              capsys=capsys)
    assert_refused(code, err, "m.onnx", "no trainable weights")
    code, err = run_inprocess("train", "--data", sets / "new", "--out", tmp_path / "c", "--init-from",
                              tmp_path / "missing", capsys=capsys)
    assert_refused(code, err, "missing", "not found")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_grey_to_rgb_fine_tune_from_the_command_line(source, tmp_path, capsys):
    rgb = tmp_path / "rgb"
    make_dataset(rgb, n=4, size=(64, 64), kind="cells", seed=3)
    from PIL import Image

    for p in sorted((rgb / "images").iterdir()):
        Image.open(p).convert("RGB").save(p)
    code, err = run_inprocess("train", "--data", rgb, "--out", tmp_path / "RUN", "--init-from", source,
                              "--max-minutes", "0.1", "--workers", "0", capsys=capsys)
    assert code == 0, err
    record = json.loads((tmp_path / "RUN" / "init.json").read_text())
    assert record["adapted"] == ["encoder.0.0.0.weight"] and record["source_channels"] == 1
    assert ckpt.read_config(tmp_path / "RUN").model.in_channels == 3


def test_open_source_refuses_a_cascade_second_stage(tmp_path):
    from unetseg.planning.finetune import open_source

    cfg = Config()
    cfg.data.prior_channels, cfg.model.in_channels, cfg.data.class_values = 1, 2, [0, 1]
    cfg.data.patch_size = [32, 32]
    ckpt.save_checkpoint(tmp_path / "c", build_model("unet", spatial_dims=2, in_channels=2, base_channels=4,
                                                     depth=2), cfg)
    with pytest.raises(ConfigError, match="first stage"):
        open_source(tmp_path / "c")


def test_a_fine_tune_that_only_gets_worse_keeps_the_source_as_its_best(source, sets):
    """The source's score on the new validation images is the one to beat: a learning rate that wrecks the
    network leaves RUN/best as the source, tensor for tensor."""
    torch.manual_seed(2)
    cfg = _config(sets / "new", sets / "wrecked", 6, init_from=str(source), lr=50.0, grad_clip=None)
    cfg.train.epochs = 2
    run = train(cfg, quiet=True)
    best = json.loads((run / "best" / ckpt.CONFIG_FILE).read_text())["metrics"]
    assert best["source"] is True and best["epoch"] == 0
    before = ckpt.read_weights(ckpt.find_checkpoint(source) / ckpt.MODEL_FILE)
    kept = ckpt.read_weights(run / "best" / ckpt.MODEL_FILE)
    assert all(torch.equal(before[k], kept[k]) for k in before)
    last = ckpt.read_weights(run / "last" / ckpt.MODEL_FILE)
    assert any(not torch.equal(before[k], last[k]) for k in before)  # training did move the weights

"""The temperature and the post-processing travel with the model: a checkpoint's config keeps them, an ONNX
export carries them in its metadata, and every way of loading the model applies them alike."""

from __future__ import annotations

import numpy as np
import pytest

import unetseg
from inference.helpers import make_checkpoint  # tests/ is on sys.path (rootdir conftest)
from unetseg.checkpoint import load_checkpoint, read_config, read_metrics, rewrite_config
from unetseg.config.schema import PostprocessStep
from unetseg.errors import ConfigError
from unetseg.postprocess.semantic import label_components

STEPS = [PostprocessStep(classes=[1], op="largest", gain=0.02),
         PostprocessStep(classes=[2], op="min_size", size=12, gain=0.001)]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory):
    folder = make_checkpoint(tmp_path_factory.mktemp("rt") / "best", num_classes=3)
    cfg = read_config(folder)
    cfg.infer.temperature, cfg.infer.postprocess = 2.5, list(STEPS)
    return rewrite_config(folder, cfg, {"heldout": {"temperature": 2.5}})


def test_the_checkpoint_keeps_the_temperature_and_the_postprocessing(ckpt) -> None:
    _, cfg = load_checkpoint(ckpt)
    assert cfg.infer.temperature == 2.5 and cfg.infer.postprocess == STEPS
    assert read_metrics(ckpt) == {"heldout": {"temperature": 2.5}}
    seg = unetseg.load(ckpt, device="cpu", precision="fp32")
    x = np.random.default_rng(0).normal(size=(40, 44)).astype(np.float32)
    plain = unetseg.load(ckpt, device="cpu", precision="fp32")
    plain.predictor.temperature = 1.0
    sharp, soft = plain.predict_proba(x), seg.predict_proba(x)
    assert soft.max(axis=0).mean() < sharp.max(axis=0).mean()  # T > 1 softens
    labels = seg.predict(x)
    sizes = label_components(labels == 1)[1]
    assert len(sizes) and (sizes == sizes.max()).all()
    assert all(s >= 12 for s in label_components(labels == 2)[1])


def test_onnx_export_carries_and_applies_them(ckpt, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from unetseg.export import export_model
    from unetseg.inference import OnnxEngine

    out = tmp_path / "model.onnx"
    export_model(ckpt, "onnx", out)
    engine = OnnxEngine(out)
    assert engine.config.infer.temperature == 2.5 and engine.config.infer.postprocess == STEPS
    x = np.random.default_rng(1).normal(size=(40, 44)).astype(np.float32)
    a, b = unetseg.load(ckpt, device="cpu", precision="fp32"), unetseg.load(out, device="cpu")
    np.testing.assert_allclose(b.predict_proba(x), a.predict_proba(x), atol=1e-4)
    la, lb = a.predict(x), b.predict(x)
    assert (la == lb).mean() > 0.999
    sizes = label_components(lb == 1)[1]
    assert (sizes == sizes.max()).all()
    np.testing.assert_allclose(b.predict_uncertainty(x), a.predict_uncertainty(x), atol=1e-4)


def test_bad_postprocessing_entries_are_one_line(ckpt) -> None:
    from unetseg.config import build_config

    with pytest.raises(ConfigError, match="min_size needs size"):
        build_config([({"infer.postprocess": [{"classes": [1], "op": "min_size"}]}, "recipe.yaml")])
    with pytest.raises(ConfigError, match="temperature"):
        build_config([({"infer.temperature": 0}, "recipe.yaml")])


def test_a_checkpoint_whose_postprocessing_names_a_missing_class_is_refused(ckpt, tmp_path) -> None:
    from unetseg.checkpoint import copy_checkpoint
    from unetseg.errors import CheckpointError

    bad = copy_checkpoint(ckpt, tmp_path / "bad")
    text = (bad / "config.json").read_text().replace('"classes": [\n          2\n        ]',
                                                     '"classes": [\n          7\n        ]')
    assert '"classes": [\n          7' in text
    (bad / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match="infer.postprocess.1: class 7 is not a foreground class"):
        load_checkpoint(bad)

"""Export to ONNX (run through a real ONNX Runtime) and TorchScript, with the parity check, for every
architecture; the exported files carry their config and predict like the checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest

from inference.helpers import make_checkpoint  # tests/ is on sys.path (rootdir conftest)
from unetseg.checkpoint import load_checkpoint
from unetseg.errors import ConfigError, UnetsegError
from unetseg.export import export_model
from unetseg.inference import OnnxEngine, Predictor, load_engine
from unetseg.inference.engines import TorchEngine
from unetseg.models import available_models

pytest.importorskip("onnxruntime")


def _predict_both_ways(ckpt, exported, shape):
    """Labels and probabilities of a tiled prediction through the checkpoint and through the export."""
    torch_engine, cfg = load_engine(ckpt, "cpu", "fp32")
    other, other_cfg = load_engine(exported, "cpu", "fp32", trust_torchscript=True)
    assert other_cfg.to_dict()["model"] == cfg.to_dict()["model"]
    x = np.random.default_rng(0).normal(size=(cfg.model.in_channels, *shape)).astype(np.float32)
    tile = (16,) * len(shape)
    a = Predictor(torch_engine, tile=tile, overlap=0.5, batch_size=3).predict_both(x)
    b = Predictor(other, tile=tile, overlap=0.5, batch_size=3).predict_both(x)
    return a, b


@pytest.mark.parametrize("name", available_models())
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_every_architecture_exports_with_parity(name, fmt, tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "ckpt", name, num_classes=3)
    out = tmp_path / f"model.{'onnx' if fmt == 'onnx' else 'pt'}"
    diff = export_model(ckpt, fmt, out)
    assert 0 <= diff <= 1e-4
    assert f"max abs difference: {diff:.3g}" in capsys.readouterr().out
    (la, pa), (lb, pb) = _predict_both_ways(ckpt, out, (23, 37))
    np.testing.assert_allclose(pa, pb, atol=1e-4)
    assert (la == lb).mean() > 0.999


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("spatial_dims,options", [(3, {}), (2, {"padding": "valid"}),
                                                  (2, {"upsample": "bilinear"})])
def test_3d_valid_and_interpolating_models_export(spatial_dims, options, fmt, tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt", "unet", spatial_dims, in_channels=2, **options)
    out = tmp_path / f"m.{'onnx' if fmt == 'onnx' else 'ts'}"
    assert export_model(ckpt, fmt, out) <= 1e-4
    shape = (9, 21, 14) if spatial_dims == 3 else (30, 43)
    (la, pa), (lb, pb) = _predict_both_ways(ckpt, out, shape)
    assert pa.shape == (2, *shape)
    np.testing.assert_allclose(pa, pb, atol=1e-4)


def test_onnx_has_dynamic_axes_and_the_config_in_its_metadata(tmp_path):
    import onnx

    ckpt = make_checkpoint(tmp_path / "ckpt", "unet")
    out = tmp_path / "m.onnx"
    export_model(ckpt, "onnx", out, opset=17)
    proto = onnx.load(str(out))
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {17}
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True]  # batch, C fixed, H, W
    meta = {p.key: p.value for p in proto.metadata_props}
    cfg = json.loads(meta["unetseg_config"])
    assert cfg["model"]["name"] == "unet" and cfg["data"]["class_values"] == [0.0, 255.0]
    assert cfg["infer"]["tile"] == [16, 16]  # the training patch, made explicit for deployment
    engine = OnnxEngine(out)
    assert (engine.spatial_dims, engine.in_channels, engine.num_classes, engine.size_divisor) == (2, 1, 2, 4)


def test_dynamo_exporter_at_opset_18(tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt", "unet")
    out = tmp_path / "m.onnx"
    assert export_model(ckpt, "onnx", out, opset=18, exporter="dynamo") <= 1e-4
    (la, pa), (lb, pb) = _predict_both_ways(ckpt, out, (21, 30))
    np.testing.assert_allclose(pa, pb, atol=1e-4)


def test_parity_failure_raises_and_reports_the_difference(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "ckpt", "res_unet")
    with pytest.raises(UnetsegError, match="differs from PyTorch"):
        # ORT sums in another order than PyTorch, so a zero tolerance cannot be met
        export_model(ckpt, "onnx", tmp_path / "m.onnx", atol=1e-12, exporter="torchscript")
    assert "max abs difference" in capsys.readouterr().out
    assert not (tmp_path / "m.onnx").exists()


def test_torchscript_loads_as_an_engine_with_its_config(tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt", "attention_unet", num_classes=1)
    out = tmp_path / "m.pt"
    export_model(ckpt, "torchscript", out)
    engine, cfg = load_engine(out, "cpu", "fp32", trust_torchscript=True)  # auto: bf16 on AVX-512-bf16
    assert isinstance(engine, TorchEngine) and cfg.model.name == "attention_unet" and engine.num_classes == 1
    model, _ = load_checkpoint(ckpt)
    x = np.random.default_rng(1).normal(size=(1, 19, 26)).astype(np.float32)
    a = Predictor(model, tile=(16, 16), precision="fp32").predict_proba(x)
    b = Predictor(engine, tile=(16, 16)).predict_proba(x)
    assert a.shape == (2, 19, 26)
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("fmt,opset,name,err", [
    ("tflite", 17, "m.x", "format"),
    ("onnx", 13, "m.onnx", "opset"),
    ("onnx", 17, "m.pt", "must end in .onnx"),
    ("torchscript", 17, "m.onnx", "must end in .pt"),
])
def test_bad_format_opset_or_extension_is_a_config_error(fmt, opset, name, err, tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt", "unet")
    with pytest.raises(ConfigError, match=err):
        export_model(ckpt, fmt, tmp_path / name, opset=opset)


def test_an_onnx_model_at_a_coarser_resolution_predicts_at_the_inputs_size(tmp_path):
    """The resolution travels with the exported model: ONNX Runtime predicts on the model's coarser grid and
    the labels come back at the input's size, as the checkpoint's do."""
    import unetseg
    from inference.helpers import tiny_config, tiny_model
    from unetseg.checkpoint import save_checkpoint

    cfg = tiny_config()
    cfg.data.downsample = [2.0, 2.0]
    ckpt = save_checkpoint(tmp_path / "ckpt", tiny_model(cfg), cfg)
    export_model(ckpt, "onnx", tmp_path / "model.onnx")
    image = np.random.default_rng(1).normal(size=(45, 61)).astype(np.float32) * 50 + 100
    want = unetseg.predict(str(ckpt), image, device="cpu", precision="fp32")
    got = unetseg.predict(str(tmp_path / "model.onnx"), image, device="cpu", precision="fp32")
    assert got.shape == want.shape == (45, 61) and len(np.unique(want)) == 2
    assert (got == want).mean() > 0.999

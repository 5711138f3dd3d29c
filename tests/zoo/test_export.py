"""``unetseg export --format bioimageio``: a model spec 0.5 package that bioimageio.core's own test passes for
every weight format, that describes the run, and that loads back into unetseg predicting as the run did."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import unetseg
from inference.helpers import tiny_config, tiny_model
from reliability.helpers import assert_refused, run_inprocess
from unetseg.checkpoint import load_checkpoint, package_version, read_config, save_checkpoint
from unetseg.data.normalize import normalize
from unetseg.io.images import read_image, read_mask
from unetseg.models import min_valid_input_size, valid_border
from unetseg.models.probabilities import ClassProbabilities
from unetseg.zoo import export_bioimageio
from zoo.helpers import read_rdf

pytest.importorskip("bioimageio.core")
pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("weights", ["pytorch_state_dict", "onnx", "torchscript"])
def test_bioimageio_core_test_passes_for_each_weight_format(exported, weights):
    from bioimageio.core import test_model

    summary = test_model(exported[2], weight_format=weights, devices=["cpu"])
    assert summary.status == "passed", summary.format()
    names = [d.name for d in summary.details if d.status == "passed"]
    assert any("Reproduce test outputs" in n for n in names)  # the test tensors came back within tolerance


def test_package_is_spec_05_with_unetseg_architecture_and_onnx(exported):
    from bioimageio.spec import load_description

    descr = load_description(exported[2])
    assert descr.format_version.startswith("0.5.")
    w = descr.weights
    assert w.onnx.opset_version >= 17 and w.onnx.parent == w.torchscript.parent == "pytorch_state_dict"
    arch = w.pytorch_state_dict.architecture
    assert (arch.import_from, arch.callable) == ("unetseg.models.probabilities", "class_probabilities")
    kwargs = dict(arch.kwargs)
    # the run's calibration goes into the network's softmax, so Fiji/QuPath see unetseg's probabilities
    assert kwargs.pop("temperature", 1.0) == read_config(exported[1]).infer.temperature
    assert kwargs == {"name": "unet", "spatial_dims": 2, "in_channels": 1, "num_classes": 2,
                      "base_channels": 4, "depth": 2}
    with zipfile.ZipFile(exported[2]) as zf:
        assert f"unetseg=={package_version()}" in zf.read("environment.yaml").decode()
        state = torch.load(zf.open("weights.pt"), weights_only=True)  # a plain tensor dict: no pickled code
        import onnx

        meta = {p.key for p in onnx.load_from_string(zf.read("model.onnx")).metadata_props}
    assert "unetseg_config" not in meta  # its graph gives probabilities: a bare unetseg load must refuse it
    assert all(k.startswith("net.") and isinstance(v, torch.Tensor) for k, v in state.items())
    assert str(descr.license) == "MIT" and [a.name for a in descr.authors] == ["Jane Doe", "Joe Bloggs"]
    assert "10.1007/978-3-319-24574-4_28" in [str(c.doi) for c in descr.cite]


def test_axes_sizes_preprocessing_and_test_tensors_follow_the_run(exported):
    data, run, package = exported
    rdf = read_rdf(package)
    ipt, out = rdf["inputs"][0], rdf["outputs"][0]
    assert [a["type"] for a in ipt["axes"]] == ["batch", "channel", "space", "space"]
    assert [a["size"] for a in ipt["axes"][2:]] == [{"min": 4, "step": 4}] * 2  # depth 2: multiples of 4
    steps = [p["id"] for p in ipt["preprocessing"]]
    assert steps == ["ensure_dtype", "zero_mean_unit_variance", "ensure_dtype"]
    assert ipt["preprocessing"][1]["kwargs"]["axes"] == ["y", "x"]  # per image and channel: unetseg's zscore
    assert out["axes"][1]["channel_names"] == ["value_0", "value_255"]
    assert out["data"]["range"] == [0.0, 1.0]
    with zipfile.ZipFile(package) as zf:
        x, y = np.load(zf.open("test_input.npy")), np.load(zf.open("test_output.npy"))
    model, config = load_checkpoint(run)
    with torch.no_grad():
        want = ClassProbabilities(model.eval(), config.infer.temperature)(
            torch.from_numpy(normalize(x[0], config.data))[None]).numpy()
    np.testing.assert_allclose(y, want, atol=1e-6)
    assert x.shape == (1, 1, 64, 64) and np.allclose(y.sum(1), 1.0, atol=1e-5)


def test_readme_and_cover_describe_the_run_without_its_paths(exported):
    data, run, package = exported
    with zipfile.ZipFile(package) as zf:
        readme, rdf = zf.read("README.md").decode(), zf.read("rdf.yaml").decode()
        from PIL import Image

        cover = Image.open(zf.open("cover.png"))
        cover.load()
    best = unetseg.load_checkpoint(run)[1]
    assert "## Validation" in readme and "val_dice" in readme and "`cells`" in readme
    assert "## Training data" in readme and "5 for training, 1 for validation" in readme
    for tool in ("unetseg predict --checkpoint model.zip", "Fiji", "QuPath", "napari"):
        assert tool in readme
    assert str(data.parent) not in rdf + readme  # this machine's folders stay out of a published package
    assert best.data.class_values == [0, 255]
    assert cover.format == "PNG" and cover.width > 1.8 * cover.height and cover.height >= 128


def test_load_and_predict_cli_give_the_runs_predictions(exported, tmp_path, capsys):
    data, run, package = exported
    seg, ref = unetseg.load(package), unetseg.load(run)
    image = read_image(next((data / "images").iterdir()))[0]
    np.testing.assert_allclose(seg.predict_proba(image), ref.predict_proba(image), atol=1e-6)
    assert seg.classes == ref.classes and seg.config.infer.tile == [64, 64]
    for source, out in ((package, tmp_path / "zip"), (run, tmp_path / "run")):
        code, err = run_inprocess("predict", "--checkpoint", source, "--input", data / "images",
                                  "--output", out, capsys=capsys)
        assert code == 0, err
    for f in sorted((tmp_path / "run").glob("*.png")):
        np.testing.assert_array_equal(read_mask(tmp_path / "zip" / f.name)[0], read_mask(f)[0])


def _checkpoint(folder: Path, classes: int = 2, **data_options) -> Path:
    task = data_options.pop("task", "semantic")
    cfg = tiny_config("unet", num_classes=3 if task == "instances" else classes,
                      **({"padding": "valid"} if data_options.pop("valid", False) else {}))
    cfg.data.task = task
    if task == "instances":
        cfg.data.class_values = [0, 1, 2]
    for key, value in data_options.items():
        setattr(cfg.data, key, value)
    return save_checkpoint(folder, tiny_model(cfg), cfg)


def test_unpadded_unet_declares_its_border_and_instances_keep_the_watershed_outside(exported, tmp_path):
    sample = next((exported[0] / "images").iterdir())
    valid = _checkpoint(tmp_path / "valid", classes=1, valid=True, patch_size=[44, 44],
                        window=[0.0, 200.0], normalization="window")  # one sigmoid logit: 2 probabilities
    np.random.seed(7)
    torch.manual_seed(7)
    package = export_bioimageio(valid, tmp_path / "valid.zip", authors=["A B"], license="CC-BY-4.0",
                                sample=sample)  # returns only after bioimageio.core's test passed
    after = (np.random.rand(), torch.rand(1).item())
    np.random.seed(7)
    torch.manual_seed(7)
    assert after == (np.random.rand(), torch.rand(1).item())  # bioimageio.core's seeding is undone
    rdf = read_rdf(package)
    border, low = valid_border(2), min_valid_input_size(2)
    assert [a["size"] for a in rdf["inputs"][0]["axes"][2:]] == [{"min": low, "step": 4}] * 2
    assert [a["size"]["offset"] for a in rdf["outputs"][0]["axes"][2:]] == [-2 * border] * 2
    assert [p["id"] for p in rdf["inputs"][0]["preprocessing"]][1:3] == ["clip", "scale_linear"]
    assert rdf["outputs"][0]["axes"][1]["channel_names"] == ["value_0", "value_255"]
    image = read_image(sample)[0]
    np.testing.assert_allclose(unetseg.load(package).predict_proba(image),
                               unetseg.load(valid).predict_proba(image), atol=1e-6)

    instances = _checkpoint(tmp_path / "inst", task="instances", window=[0.0, 200.0],
                            intensity_stats=[90.0, 40.0], normalization="ct")
    package = export_bioimageio(instances, tmp_path / "inst.zip", authors=["A B"], license="MIT",
                                sample=sample)
    rdf = read_rdf(package)
    assert rdf["outputs"][0]["axes"][1]["channel_names"] == ["background", "interior", "boundary"]
    steps = [p["id"] for p in rdf["inputs"][0]["preprocessing"]][1:3]
    assert steps == ["clip", "fixed_zero_mean_unit_variance"]
    with zipfile.ZipFile(package) as zf:
        assert "watershed" in zf.read("README.md").decode()
    ids, _ = unetseg.load(package).predict_instances(image)
    np.testing.assert_array_equal(ids, unetseg.load(instances).predict_instances(image)[0])


def test_what_cannot_be_one_exact_package_is_refused_in_one_line(exported, tmp_path, capsys):
    run = exported[1]
    out = tmp_path / "m.zip"
    export = ("export", "--checkpoint", run, "--format", "bioimageio", "--output", out)
    assert_refused(*run_inprocess(*export, "--author", "A", capsys=capsys), "--license is required")
    assert_refused(*run_inprocess(*export, "--author", "A", "--license", "Proprietary-ish", capsys=capsys),
                   "not an SPDX")
    assert_refused(*run_inprocess(*export, "--license", "MIT", capsys=capsys), "--author is required")
    assert_refused(*run_inprocess("export", "--checkpoint", run, "--format", "onnx", "--output",
                                  tmp_path / "m.onnx", "--license", "MIT", capsys=capsys),
                   "--license is for --format bioimageio")
    percentile = _checkpoint(tmp_path / "pct", normalization="percentile")
    options = ("--format", "bioimageio", "--output", out, "--author", "A", "--license", "MIT")
    assert_refused(*run_inprocess("export", "--checkpoint", percentile, *options, capsys=capsys),
                   "'percentile'", "zscore")
    cascade = _checkpoint(tmp_path / "cascade")
    (cascade / "stage1").mkdir()
    assert_refused(*run_inprocess("export", "--checkpoint", cascade, *options, capsys=capsys), "cascade")
    mine = tmp_path / "mine.zip"
    mine.write_bytes(b"a user's file")
    assert_refused(*run_inprocess("export", "--checkpoint", run, "--format", "bioimageio", "--output", mine,
                                  "--author", "A", "--license", "MIT", capsys=capsys), "--overwrite")
    assert mine.read_bytes() == b"a user's file" and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cascade", "mine.zip", "pct"]  # no temporary left


def test_the_readme_says_what_the_package_leaves_to_unetseg():
    """Post-processing runs after the network (Fiji/QuPath do not get it); the temperature is inside it."""
    from unetseg.config.schema import PostprocessStep
    from unetseg.zoo.readme import RunFacts, readme_text

    cfg = tiny_config(num_classes=2)
    facts = RunFacts({}, {}, [], None, "sample", "64x64", ["onnx"], "0.5.12")
    kwargs = {"name": "m", "description": "d", "package": "m.zip", "citations": [], "authors": ["A"],
              "license_id": "MIT"}
    plain = readme_text(cfg, facts, **kwargs)
    assert "**Post-processing**" not in plain and "**Calibration**" not in plain
    cfg.infer.postprocess = [PostprocessStep(classes=[1], op="largest", gain=0.01)]
    cfg.infer.temperature = 1.4
    text = readme_text(cfg, facts, **kwargs)
    assert "**Post-processing**" in text and "largest" in text and "give the labels without them" in text
    assert "temperature 1.4 inside the network" in text

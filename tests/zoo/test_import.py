"""Packages from the zoo: another tool's ONNX package predicts as bioimageio.core predicts it; a package of a
unetseg architecture loads into unetseg's own network; nothing in a package runs, and unsafe zips are
refused in one line before any work."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile

import numpy as np
import pytest
import torch

import unetseg
from reliability.helpers import assert_refused, run_inprocess
from unetseg.inference.zoo_spec import TensorLayout
from unetseg.io.images import read_image
from zoo.helpers import core_prediction, foreign_package, legacy_package, rewrite

pytest.importorskip("bioimageio.core")
pytest.importorskip("onnxruntime")


def test_another_tools_onnx_package_predicts_as_bioimageio_core(tmp_path, capsys):
    rng = np.random.default_rng(0)
    package = foreign_package(tmp_path / "foreign.zip", rng)
    image = rng.gamma(2.0, 40.0, size=(2, 40, 48)).astype(np.float32)  # (C, y, x): unetseg's order
    want = core_prediction(package, image.transpose(1, 2, 0)[None])[0].transpose(2, 0, 1)
    seg = unetseg.load(package)
    assert "another tool segmenter (ONNX)" in repr(seg) and seg.channels == 2 and len(seg.classes) == 3
    steps = [s["op"] for s in seg.config.data.preprocessing]
    assert steps == ["scale_range", "clip", "scale_linear"]  # its own preprocessing, as unetseg steps
    np.testing.assert_allclose(seg.predict_proba(image), want, atol=1e-5)
    np.testing.assert_array_equal(seg.predict(image), want.argmax(0))
    (tmp_path / "in").mkdir()
    import tifffile

    tifffile.imwrite(tmp_path / "in" / "two.ome.tif", image, metadata={"axes": "CYX"})
    code, err = run_inprocess("predict", "--checkpoint", package, "--input", tmp_path / "in",
                              "--output", tmp_path / "out", capsys=capsys)
    assert code == 0, err  # an OME input is streamed: the package's statistics come from a streaming pass
    import zarr

    labels = zarr.open_array(str(tmp_path / "out" / "two.ome.zarr" / "0"), mode="r")[...]
    np.testing.assert_array_equal(labels, want.argmax(0))


def test_a_spec_04_package_with_a_fixed_shape_halo_and_sigmoid_runs(tmp_path):
    package, net = legacy_package(tmp_path / "legacy.zip")
    seg = unetseg.load(package)
    assert seg.config.infer.tile == [64, 64] and not seg.engine.layout.batched  # its graph takes one tile
    image = np.random.default_rng(2).random((150, 100), dtype=np.float32)
    probs = seg.predict_proba(image)  # tiles of 64 keep their 48 x 48 centre (the halo of 8 cropped)
    x = (image - image.mean()) / (image.std() + 1e-6)
    with torch.no_grad():
        want = torch.sigmoid(net(torch.from_numpy(x)[None, None]))[0, 0].numpy()
    inner = (slice(1, -1), slice(1, -1))  # the outermost ring sees the mirrored image, not zero padding
    np.testing.assert_allclose(probs[1][inner], want[inner], atol=1e-5)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)


def test_layout_maps_axes_crops_the_halo_and_turns_probabilities_into_logits():
    layout = TensorLayout(inputs=("y", "x", "channel"), outputs=("batch", "channel", "y", "x"),
                          sizes=((16, 8), (10, 0)), offsets=(0, 0), halos=(2, 1), channels=2, classes=3,
                          probabilities=True)
    seen = []

    def forward(a: np.ndarray) -> np.ndarray:  # no batch axis: one tile at a time, channels last
        seen.append(a.shape)
        p = np.stack([a[..., 0] * 0 + 0.2, a[..., 0] * 0 + 0.3, a[..., 0] * 0 + 0.5])
        return p[None]

    x = np.zeros((3, 2, 24, 10), np.float32)
    logits = layout.run(forward, x)
    assert seen == [(24, 10, 2)] * 3
    assert logits.shape == (3, 3, 20, 8)  # the halo cropped on both sides of each axis
    probs = torch.softmax(torch.from_numpy(logits), 1)
    np.testing.assert_allclose(probs[0, :, 0, 0], [0.2, 0.3, 0.5], atol=1e-6)
    assert layout.valid_input_size((30, 99)) == (32, 10) and layout.output_size((32, 10)) == (28, 8)


def test_a_hand_made_package_of_a_unetseg_architecture_loads_into_unetseg(exported, tmp_path):
    data, run, package = exported

    def bare(rdf):  # no unetseg config, only the state dict: what someone could write by hand
        del rdf["config"]["unetseg"]
        rdf["weights"] = {"pytorch_state_dict": rdf["weights"]["pytorch_state_dict"]}

    hand = rewrite(package, tmp_path / "hand.zip", bare, drop=("model.onnx", "model_torchscript.pt"))
    seg = unetseg.load(hand)
    assert seg.engine.label is None and seg.config.data.normalization == "steps"
    image = read_image(next((data / "images").iterdir()))[0]
    np.testing.assert_allclose(seg.predict_proba(image), unetseg.load(run).predict_proba(image), atol=1e-4)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch MARKER",))


def test_nothing_in_a_package_runs(exported, tmp_path, capsys, monkeypatch):
    package = exported[2]
    monkeypatch.chdir(tmp_path)
    arch_file = b"import pathlib\npathlib.Path('MARKER').touch()\nclass Net: pass\n"

    def other_library(rdf):
        rdf["weights"] = {"pytorch_state_dict": rdf["weights"]["pytorch_state_dict"]}
        rdf["weights"]["pytorch_state_dict"]["architecture"] = {
            "callable": "system", "import_from": "os", "kwargs": {"command": "touch MARKER"}}

    def from_file(rdf):
        other_library(rdf)
        rdf["weights"]["pytorch_state_dict"]["architecture"] = {
            "callable": "Net", "source": "arch.py", "sha256": _sha(arch_file), "kwargs": {}}

    def torchscript_only(rdf):
        rdf["weights"] = {"torchscript": {**rdf["weights"]["torchscript"], "parent": None}}

    pickled = io.BytesIO()
    torch.save({"net.x": _Evil()}, pickled)

    def evil_state(rdf):
        rdf["weights"]["pytorch_state_dict"]["sha256"] = _sha(pickled.getvalue())

    cases = {
        "os.zip": (other_library, {}, "neither unetseg's architecture nor ONNX"),
        "file.zip": (from_file, {"arch.py": arch_file}, "neither unetseg's architecture nor ONNX"),
        "ts.zip": (torchscript_only, {}, "(torchscript)"),
        "pickle.zip": (evil_state, {"weights.pt": pickled.getvalue()}, "not plain tensors"),
    }
    for name, (edit, files, why) in cases.items():
        bad = rewrite(package, tmp_path / name, edit, files=files)
        code, err = run_inprocess("predict", "--checkpoint", bad, "--input", exported[0] / "images",
                                  "--output", tmp_path / "out", capsys=capsys)
        assert_refused(code, err, name, why)
    assert not (tmp_path / "MARKER").exists() and not (tmp_path / "out").exists()


def test_unsafe_or_damaged_zips_are_refused_before_any_work(exported, tmp_path, capsys):
    package = exported[2]
    with zipfile.ZipFile(package) as zf:
        weights = zf.read("weights.pt")
    bomb = tmp_path / "bomb.zip"
    rewrite(package, bomb)
    with zipfile.ZipFile(bomb, "a", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("zeros.bin", bytes(64 << 20))
    twice = tmp_path / "twice.zip"
    rewrite(package, twice)
    with zipfile.ZipFile(twice, "a") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        zf.writestr("weights.pt", weights)
    (tmp_path / "text.zip").write_text("not a zip")

    def wider(rdf):  # an architecture twice as wide as its weights (built on the meta device: no memory)
        del rdf["config"]["unetseg"]
        rdf["weights"]["pytorch_state_dict"]["architecture"]["kwargs"]["base_channels"] = 512

    cases = {
        rewrite(package, tmp_path / "wider.zip", wider): "do not fit its architecture",
        rewrite(package, tmp_path / "escape.zip", files={"../escape.txt": b"x"}): "points outside",
        bomb: "expands",
        twice: "share a name",
        rewrite(package, tmp_path / "tampered.zip", files={"weights.pt": weights[:-8] + bytes(8)}): "SHA-256",
        rewrite(package, tmp_path / "none.zip", drop=("rdf.yaml",)): "no rdf.yaml",
        tmp_path / "text.zip": "not a readable zip",
    }
    for bad, why in cases.items():
        code, err = run_inprocess("predict", "--checkpoint", bad, "--input", exported[0] / "images",
                                  "--output", tmp_path / "out", capsys=capsys)
        assert_refused(code, err, bad.name, why)
    assert not (tmp_path / "out").exists()

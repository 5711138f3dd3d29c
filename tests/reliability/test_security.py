"""No code runs from a file a user hands us (issue 11, part 3): TorchScript is refused without an explicit
opt-in, an exported ONNX file's metadata is checked against its graph, and its external data must stay in
its own folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from .helpers import assert_refused, run_inprocess

onnx = pytest.importorskip("onnx")


class _Evil(torch.nn.Module):
    """A 'model' whose forward writes a file on the host (torch.from_file with shared=True creates it)."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.from_file(self.target, shared=True, size=16)
        return x


def test_a_torchscript_program_is_refused_without_the_trust_flag(ckpt, data, tmp_path, capsys):
    from unetseg.checkpoint import read_config

    pwned = tmp_path / "pwned"
    evil = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(_Evil(str(pwned))), str(evil),
                   _extra_files={"config.json": read_config(ckpt).to_json()})
    code, err = run_inprocess("predict", "--checkpoint", evil, "--input", data / "images", "--output",
                              tmp_path / "o", capsys=capsys)
    line = assert_refused(code, err, str(evil), "a TorchScript file is a program", "--trust-torchscript",
                          "ONNX")
    assert "checkpoint folder" in line
    assert not pwned.exists() and not (tmp_path / "o").exists()


def test_trusted_torchscript_and_the_help_that_says_the_risk(ckpt, data, tmp_path, capsys):
    from unetseg.export import export_model

    own = tmp_path / "mine.pt"
    export_model(ckpt, "torchscript", own)
    code, err = run_inprocess("predict", "--checkpoint", own, "--input", data / "images", "--output",
                              tmp_path / "o", "--trust-torchscript", capsys=capsys)
    assert code == 0, err
    assert len(list((tmp_path / "o").glob("*.png"))) == 4
    from unetseg.cli.commands import run

    capsys.readouterr()
    assert run(["predict", "--help"]) == 0
    assert "can run any code" in " ".join(capsys.readouterr().out.split())


@pytest.fixture(scope="module")
def exported(ckpt, tmp_path_factory) -> Path:
    from unetseg.export import export_model

    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_model(ckpt, "onnx", path)
    return path


def _with_metadata(src: Path, dst: Path, edit) -> Path:
    proto = onnx.load(str(src))
    for entry in proto.metadata_props:
        if entry.key == "unetseg_config":
            entry.value = edit(entry.value)
    onnx.save(proto, str(dst))
    return dst


def _set(section: str, key: str, value, **more):
    def edit(text: str) -> str:
        cfg = json.loads(text)
        cfg[section][key] = value
        for dotted, v in more.items():
            s, k = dotted.split("__")
            cfg[s][k] = v
        return json.dumps(cfg)
    return edit


@pytest.mark.parametrize("edit, needle", [
    (lambda t: "[1, 2, 3]", "expected a mapping of options at the top level"),
    (_set("model", "spatial_dims", "x"), "model.spatial_dims"),
    (_set("model", "in_channels", 3), "the graph takes 1 channels, the config says 3"),
    (_set("model", "num_classes", 5, data__class_values=[0, 1, 2, 3, 4]),
     "the graph gives 2 classes, the config says 5"),
    (lambda t: "{not json", "not valid JSON"),
])
def test_onnx_metadata_is_checked_against_its_graph(edit, needle, exported, data, tmp_path, capsys):
    bad = _with_metadata(exported, tmp_path / "bad.onnx", edit)
    code, err = run_inprocess("predict", "--checkpoint", bad, "--input", data / "images", "--output",
                              tmp_path / "o", capsys=capsys)
    assert_refused(code, err, str(bad), needle)


def test_onnx_external_data_must_stay_inside_the_models_folder(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    from unetseg.errors import CheckpointError
    from unetseg.inference.engines import check_onnx_external_data

    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(4, dtype=np.float32).tobytes())
    folder = tmp_path / "model"
    folder.mkdir()
    weight = numpy_helper.from_array(np.zeros(4, np.float32), "w")
    weight.data_location = TensorProto.EXTERNAL
    del weight.external_data[:]
    for k, v in (("location", "../secret.bin"), ("offset", "0"), ("length", "16")):
        entry = weight.external_data.add()
        entry.key, entry.value = k, v
    weight.ClearField("raw_data")
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [weight])
    path = folder / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(CheckpointError, match=r"m.onnx: external data '../secret.bin' .* outside the model"):
        check_onnx_external_data(path)
    shutil.copy(secret, folder / "inside.bin")
    for entry in weight.external_data:
        if entry.key == "location":
            entry.value = "inside.bin"
    onnx.save(helper.make_model(graph.__class__(name="g", node=graph.node, input=graph.input,
                                                output=graph.output, initializer=[weight])), str(path))
    check_onnx_external_data(path)  # data beside the model is fine

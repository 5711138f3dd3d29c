"""Packages for the zoo tests: a tiny trained run, rewritten copies of a package, and a package made by
"another tool" (ONNX weights, its own axes order and preprocessing, no unetseg in it)."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn


def tiny_run(root: Path) -> tuple[Path, Path]:
    """A base-4, depth-2 U-Net trained for two short epochs on six synthetic cell images: (data, run)."""
    import unetseg
    from unetseg.data.synthetic import make_dataset

    data = make_dataset(root / "cells", n=6, size=(64, 64), kind="cells", seed=4)
    run = unetseg.train(data, root / "RUN", plan=False, epochs=2, iters_per_epoch=2, workers=0, model="unet",
                        base_channels=4, depth=2, quiet=True)
    return data, run.path


def read_rdf(package: Path) -> dict[str, Any]:
    with zipfile.ZipFile(package) as zf:
        return yaml.safe_load(zf.read("rdf.yaml"))


def rewrite(package: Path, out: Path, edit: Callable[[dict[str, Any]], None] | None = None,
            files: dict[str, bytes] | None = None, drop: tuple[str, ...] = ()) -> Path:
    """A copy of ``package`` whose rdf.yaml went through ``edit``, with ``files`` added or replaced and the
    entries in ``drop`` left out (what a tampered or hand-made package looks like)."""
    files = dict(files or {})
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        rdf = yaml.safe_load(src.read("rdf.yaml"))
        if edit is not None:
            edit(rdf)
        if "rdf.yaml" not in drop:
            dst.writestr("rdf.yaml", yaml.safe_dump(rdf, sort_keys=False))
        for info in src.infolist():
            if info.filename not in ("rdf.yaml", *files, *drop):
                dst.writestr(info.filename, src.read(info))
        for name, data in files.items():
            dst.writestr(name, data)
    return out


class Foreign(nn.Module):
    """Another tool's network: channels last in and out (axes b, y, x, c), 2 channels -> 3 class logits."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.body = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


FOREIGN_PREPROCESSING = [
    {"id": "scale_range", "kwargs": {"axes": ["y", "x"], "min_percentile": 1.0, "max_percentile": 99.8}},
    {"id": "clip", "kwargs": {"min": 0.0, "max": 1.0}},
    {"id": "scale_linear", "kwargs": {"axis": "channel", "gain": [1.0, 2.0], "offset": [0.0, -1.0]}},
]


def foreign_package(out: Path, rng: np.random.Generator) -> Path:
    """A package another tool could have made: ONNX weights only, axes (b, y, x, c), per-channel
    preprocessing, logits with a softmax postprocessing, sizes 16 + 8n, test tensors by bioimageio.core."""
    from bioimageio.spec.model.v0_5 import ModelDescr

    model = Foreign().eval()
    onnx_bytes = io.BytesIO()
    torch.onnx.export(model, (torch.randn(1, 24, 32, 2),), onnx_bytes, dynamo=False, opset_version=17,
                      input_names=["raw"], output_names=["seg"],
                      dynamic_axes={"raw": {0: "b", 1: "h", 2: "w"}, "seg": {0: "b", 1: "h", 2: "w"}})
    x = rng.gamma(2.0, 40.0, size=(1, 24, 32, 2)).astype(np.float32)
    space = [{"type": "space", "id": a, "size": {"min": 16, "step": 8}} for a in ("y", "x")]
    out_space = [{"type": "space", "id": a, "size": {"tensor_id": "raw", "axis_id": a}} for a in ("y", "x")]
    rdf = {
        "type": "model", "format_version": str(ModelDescr.implemented_format_version),
        "name": "another tool segmenter", "description": "a test package with ONNX weights only",
        "authors": [{"name": "Someone Else"}], "cite": [{"text": "none", "doi": "10.1000/182"}],
        "license": "MIT", "documentation": {"source": "README.md"},
        "inputs": [{"id": "raw", "axes": [{"type": "batch"}, *space,
                                          {"type": "channel", "channel_names": ["a", "b"]}],
                    "data": {"type": "float32"}, "test_tensor": {"source": "in.npy"},
                    "preprocessing": FOREIGN_PREPROCESSING}],
        "outputs": [{"id": "seg", "axes": [{"type": "batch"}, *out_space,
                                           {"type": "channel", "channel_names": ["bg", "a", "b"]}],
                     "data": {"type": "float32"}, "test_tensor": {"source": "out.npy"},
                     "postprocessing": [{"id": "softmax", "kwargs": {"axis": "channel"}}]}],
        "weights": {"onnx": {"source": "net.onnx", "opset_version": 17}},
    }
    files = {"rdf.yaml": yaml.safe_dump(rdf, sort_keys=False).encode(), "README.md": b"# Validation\nnone\n",
             "net.onnx": onnx_bytes.getvalue(), "in.npy": _npy(x),
             "out.npy": _npy(np.zeros((1, 24, 32, 3), np.float32))}
    _write_zip(out, files)
    files["out.npy"] = _npy(core_prediction(out, x))  # the test output as the reference implementation gives
    return _write_zip(out, files)


def _write_zip(out: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return out


def core_prediction(package: Path, x: np.ndarray) -> np.ndarray:
    """What ``bioimageio.core.predict`` gives for ``x`` (the package's own axes order)."""
    from bioimageio.core import predict
    from bioimageio.spec import load_description

    descr = load_description(package, perform_io_checks=False)
    result = predict(model=descr, inputs={descr.inputs[0].id: x})
    return np.asarray(result.members[descr.outputs[0].id].data.to_numpy(), np.float32)


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def legacy_package(out: Path) -> tuple[Path, nn.Module]:
    """A spec 0.4 package: a fixed 1x1x64x64 ONNX graph (batch fixed at 1), an output halo of 8 to crop,
    one sigmoid channel, per-sample z-score. Returns it and the network in it."""
    torch.manual_seed(5)
    net = nn.Conv2d(1, 1, 3, padding=1).eval()
    graph = io.BytesIO()
    torch.onnx.export(net, (torch.randn(1, 1, 64, 64),), graph, dynamo=False, opset_version=17,
                      input_names=["raw"], output_names=["fg"])
    rdf = {
        "format_version": "0.4.10", "type": "model", "name": "legacy nuclei", "description": "spec 0.4",
        "authors": [{"name": "Someone"}], "cite": [{"text": "none", "doi": "10.1000/182"}], "license": "MIT",
        "documentation": "README.md", "timestamp": "2020-01-01T00:00:00", "tags": ["segmentation"],
        "inputs": [{"name": "raw", "axes": "bcyx", "data_type": "float32", "shape": [1, 1, 64, 64],
                    "preprocessing": [{"name": "zero_mean_unit_variance",
                                       "kwargs": {"mode": "per_sample", "axes": "yx"}}]}],
        "outputs": [{"name": "fg", "axes": "bcyx", "data_type": "float32", "halo": [0, 0, 8, 8],
                     "shape": {"reference_tensor": "raw", "scale": [1.0, 1.0, 1.0, 1.0],
                               "offset": [0, 0, 0, 0]},
                     "postprocessing": [{"name": "sigmoid"}]}],
        "test_inputs": ["in.npy"], "test_outputs": ["out.npy"],
        "weights": {"onnx": {"source": "net.onnx", "opset_version": 17}},
    }
    x = np.random.default_rng(1).random((1, 1, 64, 64), dtype=np.float32)
    with torch.no_grad():
        y = torch.sigmoid(net(torch.from_numpy((x - x.mean()) / (x.std() + 1e-6)))).numpy()
    files = {"rdf.yaml": yaml.safe_dump(rdf, sort_keys=False).encode(), "README.md": b"# Validation\n",
             "net.onnx": graph.getvalue(), "in.npy": _npy(x), "out.npy": _npy(y)}
    return _write_zip(out, files), net

"""Random JSON values in every field of ``config.json``, a YAML recipe and ONNX metadata: only unetseg's own
error types may come out (a one-line message), never a traceback (issue 11, part 4)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unetseg.config import Config, build_config, section_fields
from unetseg.errors import UnetsegError
from unetseg.losses import LOSS_OPTIONS
from unetseg.models import model_options

# every option of every section, and every model and loss option inside model.options / train.loss_options
FIELDS = [(s, k) for s, names in section_fields().items() for k in names]
FIELDS += [("model.options", k) for k in {**model_options("unet"), **model_options("unet_pp")}]
FIELDS += [("train.loss_options", k) for k in sorted({k for ks in LOSS_OPTIONS.values() for k in ks})]
scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
json_values = st.recursive(
    scalars | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
SETTINGS = settings(max_examples=80, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def _with(base: dict, section: str, key: str, value) -> dict:
    out = json.loads(json.dumps(base))
    if "." in section:
        top, sub = section.split(".")
        out[top][sub] = {**out[top][sub], key: value}
    else:
        out[section][key] = value
    return out


@pytest.fixture(scope="module")
def saved(ckpt) -> dict:
    return json.loads((ckpt / "config.json").read_text())


@SETTINGS
@given(field=st.sampled_from(FIELDS), value=json_values)
def test_checkpoint_config_json(field, value, saved, ckpt, tmp_path_factory):
    from unetseg.checkpoint import load_checkpoint

    folder = tmp_path_factory.mktemp("prop") / "ckpt"
    shutil.copytree(ckpt, folder)
    (folder / "config.json").write_text(json.dumps(_with(saved, *field, value)))
    try:
        load_checkpoint(folder)
    except UnetsegError as e:
        assert "\n" not in str(e) and str(folder) in str(e)


@SETTINGS
@given(field=st.sampled_from(FIELDS), value=json_values)
def test_yaml_recipe(field, value, tmp_path_factory):
    from unetseg.config import load_yaml
    from unetseg.validate import check_config

    path = tmp_path_factory.mktemp("yaml") / "recipe.yaml"
    top, *sub = field[0].split(".")
    path.write_text(yaml.safe_dump({top: {sub[0]: {field[1]: value}} if sub else {field[1]: value}}))
    try:
        check_config(build_config([(load_yaml(path), str(path))]), str(path))
    except UnetsegError as e:
        assert "\n" not in str(e) and str(path) in str(e)


@pytest.fixture(scope="module")
def exported(ckpt, tmp_path_factory) -> Path:
    pytest.importorskip("onnxruntime")
    from unetseg.export import export_model

    path = tmp_path_factory.mktemp("onnx_prop") / "model.onnx"
    export_model(ckpt, "onnx", path)
    return path


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(FIELDS), value=json_values)
def test_onnx_metadata(field, value, exported, tmp_path_factory):
    import onnx

    from unetseg.inference.engines import OnnxEngine

    proto = onnx.load(str(exported))
    for entry in proto.metadata_props:
        if entry.key == "unetseg_config":
            entry.value = json.dumps(_with(json.loads(entry.value), *field, value))
    path = tmp_path_factory.mktemp("onnx_bad") / "m.onnx"
    onnx.save(proto, str(path))
    try:
        OnnxEngine(path, "cpu")
    except UnetsegError as e:
        assert "\n" not in str(e) and str(path) in str(e)


def test_the_defaults_are_valid():
    assert build_config([]) == Config()

"""Bad input, from every source, is one ``error:`` line naming the file and the key, before any work, never
a traceback (issue 11, part 4)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from safetensors.torch import load_file, save_file

from .conftest import train_args
from .helpers import assert_refused, md5_tree, run_inprocess


def _copy(ckpt: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(ckpt, tmp_path / "ckpt"))


def _predict(ckpt: Path, data: Path, tmp_path: Path, capsys, *extra: str) -> tuple[int, str]:
    out = tmp_path / "o"
    return run_inprocess("predict", "--checkpoint", ckpt, "--input", data / "images", "--output", out, *extra,
                         capsys=capsys)


def _edit_config(ckpt: Path, edit) -> None:
    path = ckpt / "config.json"
    cfg = json.loads(path.read_text())
    path.write_text(json.dumps(edit(cfg)))


@pytest.mark.parametrize("case, needle", [
    ("list", "expected a mapping of options at the top level"),
    ("bytes", "not UTF-8"),
    ("class_values_null", "data.class_values is missing"),
    ("tile_big", "infer.tile: Input should be a valid list (got 'big')"),
    ("lr_text", "train.lr: Input should be a valid number"),
])
def test_a_damaged_checkpoint_config_is_one_line(case, needle, ckpt, data, tmp_path, capsys):
    c = _copy(ckpt, tmp_path)
    if case == "list":
        (c / "config.json").write_text("[1, 2]")
    elif case == "bytes":
        (c / "config.json").write_bytes(b'{"model": {"name": "\xff\xfe"}}')
    elif case == "class_values_null":
        _edit_config(c, lambda d: {**d, "data": {**d["data"], "class_values": None}})
    elif case == "tile_big":
        _edit_config(c, lambda d: {**d, "infer": {**d["infer"], "tile": "big"}})
    else:
        _edit_config(c, lambda d: {**d, "train": {**d["train"], "lr": "fast"}})
    before = md5_tree(data, c)
    code, err = _predict(c, data, tmp_path, capsys)
    assert_refused(code, err, str(c / "config.json"), needle)
    assert md5_tree(data, c) == before and not (tmp_path / "o").exists()


def test_weights_that_do_not_fit_or_are_not_finite_are_refused(ckpt, data, tmp_path, capsys):
    c = _copy(ckpt, tmp_path)
    _edit_config(c, lambda d: {**d, "model": {**d["model"], "base_channels": 8}})  # the weights are base 4
    code, err = _predict(c, data, tmp_path, capsys)
    assert_refused(code, err, str(c / "model.safetensors"), "weights do not fit", "the model needs")
    c2 = Path(shutil.copytree(ckpt, tmp_path / "nan"))
    tensors = load_file(str(c2 / "model.safetensors"))
    nan = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(nan, str(c2 / "model.safetensors"))
    code, err = _predict(c2, data, tmp_path, capsys)
    assert_refused(code, err, str(c2 / "model.safetensors"), "NaN/inf")


@pytest.fixture
def run(data, tmp_path, capsys) -> Path:
    run = tmp_path / "RUN"
    assert run_inprocess(*train_args(data, run), capsys=capsys)[0] == 0
    return run


def test_resume_from_truncated_weights_or_a_damaged_state(run, data, capsys):
    weights = run / "last" / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    code, err = run_inprocess(*train_args(data, run, "--resume", "--epochs", "2"), capsys=capsys)
    assert_refused(code, err, str(weights), "unreadable weights")
    weights.write_bytes(good)
    state = torch.load(run / "last" / "state.pt", weights_only=True)
    del state["optimizer"]
    torch.save(state, run / "last" / "state.pt")
    code, err = run_inprocess(*train_args(data, run, "--resume", "--epochs", "2"), capsys=capsys)
    assert_refused(code, err, "state.pt", "training state lacks optimizer")


@pytest.mark.parametrize("text, needle", [
    (b"train:\n  lr: fast\n", "train.lr: Input should be a valid number"),
    (b"lr: \xff\xfe\n", "not UTF-8"),
    (b"- 1\n- 2\n", "expected a mapping"),
    (b"loss: dicee\n", "unknown loss 'dicee'"),
    (b"train: {schedule: foo}\n", "train.schedule: Input should be 'poly', 'cosine' or 'constant'"),
    (b"data: {class_values: 7}\n", "data.class_values"),
    (b"!!python/object/apply:os.system ['touch pwned']\n", "not valid YAML"),
])
def test_a_bad_recipe_is_one_line_naming_the_file_and_key(text, needle, data, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes(text)
    code, err = run_inprocess(*train_args(data, tmp_path / "RUN", "--config", str(recipe)), capsys=capsys)
    assert_refused(code, err, needle)
    assert not (tmp_path / "RUN").exists() and not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("extra, needle", [
    (["--seed", "-1"], "train.seed"),
    (["--max-minutes", "-1"], "train.max_minutes"),
    (["--patience", "-1"], "train.patience"),
    (["--workers", "-3"], "data.num_workers"),
    (["--schedule", "foo"], "train.schedule"),
    (["--lr", "nan"], "train.lr"),
    (["surplus"], "unexpected extra argument"),
    (["--depth", "12"], "the largest depth that fits is"),
    (["--patch-size", "4096", "4096"], "the largest patch that fits is 48 48"),
    (["--model", "vnet"], "unknown model 'vnet'"),
    (["--option", "norm=layer"], "norm='layer' is not allowed"),
])
def test_options_that_cannot_work_are_refused_before_training(extra, needle, data, tmp_path, capsys):
    before = md5_tree(data)
    args = train_args(data, tmp_path / "RUN", *extra)
    if "--patch-size" in extra:  # replace the default patch of train_args
        i = args.index("--patch-size")
        del args[i : i + 3]
    code, err = run_inprocess(*args, capsys=capsys)
    assert_refused(code, err, needle)
    assert md5_tree(data) == before and not (tmp_path / "RUN").exists()


def test_predict_batch_size_zero_and_a_bad_tile(ckpt, data, tmp_path, capsys):
    assert_refused(*_predict(ckpt, data, tmp_path, capsys, "--batch-size", "0"), "infer.batch_size")
    assert_refused(*_predict(ckpt, data, tmp_path, capsys, "--overlap", "1.5"), "infer.overlap")
    assert not (tmp_path / "o").exists()


def _nnunet(root: Path, labels, channels) -> Path:
    from unetseg.io.images import write_image, write_mask

    rng = np.random.default_rng(0)
    for i in range(2):
        write_image(root / "imagesTr" / f"c{i}_0000.nii.gz", rng.random((4, 8, 8)).astype(np.float32),
                    {"spatial_dims": 3})
        write_mask(root / "labelsTr" / f"c{i}.nii.gz", rng.integers(0, 2, (4, 8, 8)))
    (root / "dataset.json").write_text(json.dumps({"labels": labels, "channel_names": channels}))
    return root


@pytest.mark.parametrize("labels, channels, needle", [
    (["background", "tumour"], {"0": "T1"}, "labels must be an object"),
    ({"background": 0, "tumour": 1}, 3, "channel_names must be an object"),
    ({"background": 0, "tumour": [1, 2]}, {"0": "T1"}, "region-based labels"),
])
def test_a_bad_nnunet_dataset_json(labels, channels, needle, tmp_path, capsys):
    root = _nnunet(tmp_path / "Dataset001", labels, channels)
    code, err = run_inprocess(*train_args(root, tmp_path / "RUN"), capsys=capsys)
    assert_refused(code, err, str(root / "dataset.json"), needle)


@pytest.fixture(scope="session")
def bomb(tmp_path_factory) -> Path:
    """A 2 MB zlib TIFF that declares 46000 x 46000 pixels (7.9 GiB as float32), as image and mask."""
    root = tmp_path_factory.mktemp("bomb")
    tile = np.zeros((2048, 2048), np.uint8)
    count = (-(-46000 // 2048)) ** 2
    for folder in ("images", "masks"):
        (root / folder).mkdir()
        tifffile.imwrite(root / folder / "slide.tif", (tile for _ in range(count)), shape=(46000, 46000),
                         dtype=np.uint8, tile=(2048, 2048), compression="zlib")
    return root / "images" / "slide.tif"


def test_a_decompression_bomb_is_refused_from_its_header(bomb, tmp_path, capsys):
    """Readers that decode whole images refuse it before decoding; predict streams it instead (flat
    memory, tests/inference/test_slide.py), so there it is a slide, not a bomb."""
    assert bomb.stat().st_size < 4e6
    code, err = run_inprocess(*train_args(bomb.parent.parent, tmp_path / "RUN"), capsys=capsys)
    assert_refused(code, err, "slide.tif", "46000x46000", "7.9 GiB", "--max-image-gib")
    assert not (tmp_path / "RUN").exists()
    from unetseg.errors import DataError
    from unetseg.inference.stream.slides import is_streamed
    from unetseg.io.images import read_image

    with pytest.raises(DataError, match="over the 2 GiB limit"):
        read_image(bomb)  # every reader: the budget is the decoded float32 bytes, before decoding
    assert is_streamed(bomb, "auto")


def test_mask_values_that_suggest_a_mistake_are_reported_with_the_files(data, tmp_path, capsys):
    from PIL import Image

    mask = data / "masks" / "case_002.png"
    values = np.asarray(Image.open(mask))
    mask.unlink()
    tifffile.imwrite(data / "masks" / "case_002.tif", (values > 0).astype(np.uint16) * 65535)
    code, err = run_inprocess(*train_args(data, tmp_path / "RUN"), capsys=capsys)
    line = assert_refused(code, err, "different values", "{0, 255} in case_000.png (uint8)",
                          "{0, 65535} in case_002.tif (uint16)")
    assert "--classes 0,255+65535" in line


def test_evaluate_writes_strict_json_with_null_for_infinite_distances(ckpt, data, tmp_path, capsys):
    c = _copy(ckpt, tmp_path)
    tensors = load_file(str(c / "model.safetensors"))
    tensors["head.bias"] = torch.tensor([50.0, -50.0])  # predicts background everywhere
    save_file(tensors, str(c / "model.safetensors"))
    out = tmp_path / "m.json"
    code, err = run_inprocess("evaluate", "--checkpoint", c, "--data", data, "--out", out, capsys=capsys)
    assert code == 0, err

    def refuse(token: str):
        raise AssertionError(f"{token} in the JSON")

    result = json.loads(out.read_text(), parse_constant=refuse)
    first = result["per_image"][0]
    assert first["hd95"][1] is None and first["infinite"] == {"hd95": [1], "msd": [1]}
    assert result["mean"]["hd95"][1] is None and result["mean_counts"]["hd95"] == [4, 0]
    assert "null_means" in result


def test_a_file_name_that_is_not_utf8_still_gets_its_report(ckpt, data, tmp_path, capsys):
    odd = "case_\udcff"  # the byte 0xff in a file name, as Python keeps it
    for sub in ("images", "masks"):
        (data / sub / "case_003.png").rename(data / sub / f"{odd}.png")
    report = tmp_path / "r.html"
    code, err = run_inprocess("evaluate", "--checkpoint", ckpt, "--data", data, "--report", report,
                              capsys=capsys)
    assert code == 0, err
    assert "case_\ufffd" in report.read_text(encoding="utf-8")

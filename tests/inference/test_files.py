"""``predict_files`` / ``unetseg predict`` end to end: masks, original values, probabilities, overlays,
ONNX checkpoints, 3D volumes and bad inputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from unetseg.cli import app, expand_multi
from unetseg.errors import DataError, OutputError
from unetseg.inference import load_engine, predict, predict_files
from unetseg.inference.jobs.file import Routing
from unetseg.io.images import list_images, read_image, read_mask

from .helpers import make_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "best", "unet")


@pytest.fixture()
def images(cells_2d: Path, tmp_path: Path) -> Path:
    """Three of the synthetic cell images (64x64 PNG), in a folder the test may spoil."""
    folder = tmp_path / "in"
    folder.mkdir()
    for f in sorted((cells_2d / "images").iterdir())[:3]:
        shutil.copy(f, folder / f.name)
    return folder


def test_predict_folder_writes_masks_probabilities_and_overlays(ckpt, images, tmp_path, capsys):
    out = tmp_path / "out"
    result = predict_files(ckpt, images, out, tile=[32, 32], overlap=0.5, probabilities=True, overlay=True,
                           device="cpu", precision="fp32", progress=False)
    files = list_images(images)
    assert result["images"] == 3 and result["skipped"] == []
    model, cfg = load_engine(ckpt, "cpu", "fp32")
    for f in files:
        mask, _ = read_mask(out / f"{f.stem}.png")
        assert mask.shape == (64, 64) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        probs = tifffile.imread(out / f"{f.stem}_probs.tif")
        assert probs.shape == (2, 64, 64) and probs.dtype == np.float16  # calibrated, float16 (issue 24)
        np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=2e-3)  # float16 rounding
        clear = np.abs(probs[1].astype(np.float32) - probs[0]) > 4e-3  # not a tie after rounding
        np.testing.assert_array_equal(probs.argmax(0)[clear], mask[clear])
        assert (out / f"{f.stem}_overlay.png").stat().st_size > 0
        # the same as the Python API with the checkpoint's config
        image, _ = read_image(f)
        np.testing.assert_array_equal(predict(model, image, config=cfg, tile=(32, 32), overlap=0.5), mask)
    assert result.images == 3 and len(result.written) == 9 and result.skipped == []


def test_original_mask_values(ckpt, images, tmp_path):
    predict_files(ckpt, images, tmp_path / "idx", device="cpu", progress=False)
    predict_files(ckpt, images, tmp_path / "orig", mask_values="original", device="cpu", progress=False)
    for f in list_images(images):
        idx, _ = read_mask(tmp_path / "idx" / f"{f.stem}.png")
        orig, _ = read_mask(tmp_path / "orig" / f"{f.stem}.png")
        np.testing.assert_array_equal(orig, idx.astype(np.uint8) * 255)
        assert 0.01 < idx.mean() < 0.99  # both classes occur, so the mapping was really exercised


def test_onnx_model_predicts_the_same_labels_as_the_checkpoint(ckpt, images, tmp_path):
    pytest.importorskip("onnxruntime")
    from unetseg.export import export_model

    export_model(ckpt, "onnx", tmp_path / "model.onnx")
    predict_files(ckpt, images, tmp_path / "torch", device="cpu", precision="fp32", progress=False)
    predict_files(tmp_path / "model.onnx", images, tmp_path / "onnx", device="cpu", progress=False)
    for f in list_images(images):
        a, _ = read_mask(tmp_path / "torch" / f"{f.stem}.png")
        b, _ = read_mask(tmp_path / "onnx" / f"{f.stem}.png")
        assert (a == b).mean() > 0.999


def test_3d_volumes_keep_their_format_and_size(cells_3d, tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt3d", "unet", spatial_dims=3)
    one = sorted((cells_3d / "images").iterdir())[0]
    result = predict_files(ckpt, one, tmp_path / "out", tile=[8, 16, 16], device="cpu", progress=False,
                           probabilities=True)
    mask, meta = read_mask(tmp_path / "out" / one.name)
    image, image_meta = read_image(one)
    assert one.name.endswith(".nii.gz") and mask.shape == image.shape[1:] and mask.dtype == np.uint8
    assert np.allclose(meta["spacing"], image_meta["spacing"])
    assert tifffile.imread(tmp_path / "out" / f"{one.name[:-7]}_probs.tif").shape == (2, *image.shape[1:])
    assert len(result["written"]) == 2


def test_bad_file_stops_with_its_name_or_is_skipped_and_counted(ckpt, images, tmp_path, capsys):
    bad = images / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(DataError, match="broken.png"):
        predict_files(ckpt, images, tmp_path / "a", device="cpu", progress=False)
    result = predict_files(ckpt, images, tmp_path / "b", device="cpu", progress=False, skip_bad=True)
    assert result["images"] == 4 and len(result["skipped"]) == 1 and "broken.png" in result["skipped"][0]
    assert len(list((tmp_path / "b").glob("*.png"))) == 3
    err = capsys.readouterr().err
    assert "broken.png" in err and "skipped 1 bad input(s)" in err


def test_two_inputs_with_one_output_name_are_refused(ckpt, images, tmp_path):
    f = sorted(images.iterdir())[0]
    image, _ = read_image(f)
    tifffile.imwrite(images / f"{f.stem}.tif", image[0].astype(np.uint8))
    with pytest.raises(OutputError, match=rf"{f.stem}.png and .*{f.stem}.tif would both write"):
        predict_files(ckpt, images, tmp_path / "out", device="cpu", progress=False)
    assert not (tmp_path / "out").exists()  # refused before any work


def test_cli_predict(ckpt, images, tmp_path):
    out = tmp_path / "out"
    args = ["predict", "--checkpoint", str(ckpt), "--input", str(images), "--output", str(out),
            "--tile", "32", "32", "--overlap", "0.5", "--tta", "--device", "cpu"]
    result = CliRunner().invoke(app, expand_multi(args))
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("*.png"))) == 3
    missing = CliRunner().invoke(app, expand_multi([*args[:4], str(tmp_path / "nope"), *args[5:7]]))
    assert missing.exit_code == 2 and "nope" in missing.output


def test_torchrun_shards_the_inputs_across_processes(ckpt, cells_2d, tmp_path):
    import subprocess
    import sys

    folder = tmp_path / "in"
    folder.mkdir()
    for f in sorted((cells_2d / "images").iterdir())[:5]:
        shutil.copy(f, folder / f.name)
    single = predict_files(ckpt, folder, tmp_path / "single", device="cpu", precision="fp32", progress=False)
    out = tmp_path / "sharded"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
         "unetseg", "predict", "--checkpoint", str(ckpt), "--input", str(folder), "--output", str(out),
         "--device", "cpu", "--precision", "fp32"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    counts = sorted(int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("wrote "))
    assert counts == [2, 3]  # every 2nd input from RANK: 3 for rank 0, 2 for rank 1
    assert sorted(p.name for p in out.glob("*.png")) == sorted(Path(p).name for p in single.written)
    for p in map(Path, single.written):
        np.testing.assert_array_equal(read_mask(out / p.name)[0], read_mask(p)[0])
    again = predict_files(ckpt, folder, out, device="cpu", precision="fp32", progress=False, routing=Routing(
        resume=True))
    assert len(again.complete) == 5  # both processes recorded their outputs as unetseg's own

"""The napari plugin in a real, headless ``napari.Viewer`` (Qt offscreen; an X server from pytest-xvfb for the
OpenGL canvas): segment a sample, correct the labels, fine-tune, cancel, and open unetseg's outputs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
napari = pytest.importorskip("napari", reason="the [napari] extra is not installed")
if not os.environ.get("DISPLAY"):
    pytest.skip("no X server for napari's OpenGL canvas (apt-get install xvfb; pytest-xvfb starts it)",
                allow_module_level=True)

from unetseg.config import Config  # noqa: E402
from unetseg.data.synthetic import make_dataset, make_image  # noqa: E402
from unetseg.training import train  # noqa: E402
from unetseg.viewer import readers  # noqa: E402
from unetseg.viewer.sample import touching_cells  # noqa: E402
from unetseg.viewer.widget import SegmentWidget  # noqa: E402

WAIT_MS = 240_000


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small, briefly trained semantic model of the synthetic cells (values 0/255)."""
    root = tmp_path_factory.mktemp("napari")
    data = make_dataset(root / "cells", n=6, size=(64, 64), kind="cells", seed=1)
    cfg = Config()
    cfg.data.data, cfg.data.num_workers, cfg.data.val_fraction = str(data), 0, 0.0
    cfg.model.base_channels, cfg.model.depth, cfg.data.patch_size = 8, 2, [64, 64]
    cfg.train.out, cfg.train.precision = str(root / "RUN"), "fp32"
    cfg.train.batch_size, cfg.train.iters_per_epoch, cfg.train.epochs = 4, 40, 1
    torch.manual_seed(0)
    return train(cfg, quiet=True)


@pytest.fixture
def widget(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    qtbot.addWidget(w)
    yield w
    if w.busy:
        w.request_cancel()
        qtbot.waitUntil(lambda: not w.busy, timeout=WAIT_MS)


def _wait(qtbot, w: SegmentWidget) -> None:
    qtbot.waitUntil(lambda: not w.busy, timeout=WAIT_MS)
    assert w.error is None, w.error


def test_segment_a_sample_then_fine_tune_on_corrections_changes_the_labels_where_edited(
        widget, model, qtbot, tmp_path):
    viewer = widget.viewer
    image, _ = make_image("cells", (96, 96), seed=3)
    viewer.add_image(image, name="cells")
    widget.model.value, widget.image.value = str(model), "cells"
    widget.probabilities.value = True
    widget.segment()
    assert widget.busy  # a worker thread: the viewer's thread is free
    _wait(qtbot, widget)
    first = viewer.layers["cells labels (RUN)"]
    assert first.data.shape == (96, 96) and set(np.unique(first.data)) <= {0, 1}
    assert sum("probabilities" in layer.name for layer in viewer.layers) == 2  # one channel per class
    assert widget.progress.value == 100
    # the user paints a square of class 1 where the model saw background, and fine-tunes on it
    corrected = first.data.copy()
    region = (slice(4, 28), slice(4, 28))
    corrected[region] = 1
    first.data = corrected
    widget.labels.value = first.name
    widget.rounds.value = str(tmp_path / "rounds")
    widget.minutes.value = 0.15
    widget.fine_tune()
    _wait(qtbot, widget)
    assert widget.rounds_done == [tmp_path / "rounds" / "round_001" / "run"]
    assert (tmp_path / "rounds" / "round_001" / "run" / "init.json").is_file()
    again = viewer.layers[-1]
    assert again is not first and again.data.shape == (96, 96)
    assert again.data[region].mean() > 0.5, again.data[region].mean()  # learned where the edit was
    assert first.data[region].mean() == 1.0  # the user's corrected layer is left as painted
    assert widget.loss_curve, "the loss curve was read while training"
    # a second round never writes over the first
    widget.fine_tune()
    _wait(qtbot, widget)
    assert widget.rounds_done[-1] == tmp_path / "rounds" / "round_002" / "run"


def test_cancel_stops_a_running_fine_tune(widget, model, qtbot, tmp_path):
    viewer = widget.viewer
    image, mask = make_image("cells", (64, 64), seed=4)
    viewer.add_image(image, name="img")
    viewer.add_labels((mask > 0).astype(np.uint8), name="fixed")
    widget.model.value, widget.image.value, widget.labels.value = str(model), "img", "fixed"
    widget.rounds.value, widget.minutes.value = str(tmp_path / "rounds"), 30.0
    widget.fine_tune()
    qtbot.waitUntil(lambda: (tmp_path / "rounds" / "round_001" / "run" / "log.txt").exists(), timeout=WAIT_MS)
    widget.request_cancel()
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    assert widget.error == "cancelled" and widget.status.value == "cancelled"
    assert not widget.rounds_done


def test_a_missing_model_is_one_clear_line_not_a_crash(widget, tmp_path):
    widget.viewer.add_image(np.zeros((32, 32), np.uint8), name="x")
    widget.model.value, widget.image.value = str(tmp_path / "nope"), "x"
    widget.segment()
    assert not widget.busy and "nope" in widget.error and "not found" in widget.error


def test_readers_open_an_ome_zarr_output_and_an_objects_table(widget, model, tmp_path):
    import unetseg

    image, _ = make_image("cells", (96, 96), seed=5)
    from unetseg.io.images import write_image

    write_image(tmp_path / "img.tif", image, {"spatial_dims": 2})
    from unetseg.inference.jobs.file import Routing

    unetseg.load(model).predict_file(tmp_path / "img.tif", tmp_path / "out", probabilities=True,
                                     routing=Routing(output_format="ome-zarr"))
    store = tmp_path / "out" / "img.ome.zarr"
    assert readers.get_reader(str(store)) is readers.read_ngff
    layers = widget.viewer.open(str(store), plugin="unetseg")
    labels = [la for la in layers if la.__class__.__name__ == "Labels"][0]
    truth = unetseg.load(model).predict(image)
    assert np.array_equal(np.asarray(labels.data if not labels.multiscale else labels.data[0]), truth)
    csv = tmp_path / "cells_objects.csv"
    csv.write_text("label,area,centroid_y,centroid_x\n1,10,5.5,6.0\n2,12,20.0,30.5\n")
    points = widget.viewer.open(str(csv), plugin="unetseg")[0]
    assert np.allclose(points.data, [[5.5, 6.0], [20.0, 30.5]])
    assert list(points.features["area"]) == [10, 12]
    assert readers.get_reader(str(tmp_path / "img.tif")) is None  # other files: napari's own readers


def test_the_sample_data_and_the_manifest():
    import npe2

    layers = touching_cells()
    assert layers[0][0].shape == (256, 256) and layers[1][0].max() > 5  # many touching objects
    manifest = npe2.PluginManifest.from_distribution("unetseg")
    ids = {c.id: c.python_name for c in manifest.contributions.commands}
    assert ids["unetseg.segment_widget"] == "unetseg.viewer.widget:SegmentWidget"
    for python_name in ids.values():  # every contribution resolves to real code
        module, attr = python_name.split(":")
        assert callable(getattr(__import__(module, fromlist=[attr]), attr))

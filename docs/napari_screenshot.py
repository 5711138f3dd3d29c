"""Make docs/napari.png, the README's picture of the napari plugin in use: a small model trained on the
synthetic cells segments a new image in a headless viewer; the widget is docked beside it.

    xvfb-run -a env QT_QPA_PLATFORM=offscreen .venv/bin/python docs/napari_screenshot.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import napari
import torch
from qtpy.QtWidgets import QApplication

from unetseg.config import Config
from unetseg.data.synthetic import make_dataset, make_image
from unetseg.io.images import write_image
from unetseg.training import train
from unetseg.viewer.widget import SegmentWidget

OUT = Path(__file__).with_name("napari.png")


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="unetseg-shot-"))
    cfg = Config()
    cfg.data.data = str(make_dataset(root / "cells", n=8, size=(128, 128), kind="cells", seed=1))
    cfg.data.num_workers, cfg.model.base_channels, cfg.model.depth = 0, 8, 3
    cfg.train.out, cfg.train.max_minutes, cfg.train.epochs = str(root / "RUN"), 0.5, 100
    torch.manual_seed(0)
    run = train(cfg, quiet=True)
    viewer = napari.Viewer(show=False)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="unetseg", area="right")
    image, _ = make_image("cells", (256, 256), seed=11)
    write_image(root / "new.tif", image, {"spatial_dims": 2})
    viewer.add_image(image, name="cells")
    widget.model.value, widget.image.value = str(run), "cells"
    widget.rounds.value = str(root / "rounds")
    widget.segment()
    while widget.busy:
        QApplication.processEvents()
        time.sleep(0.05)
    viewer.window._qt_window.resize(1200, 800)
    QApplication.processEvents()
    shot = viewer.screenshot(canvas_only=False, flash=False)
    from PIL import Image

    Image.fromarray(shot).save(OUT)
    print(f"wrote {OUT} ({shot.shape[1]}x{shot.shape[0]})")
    viewer.close()


if __name__ == "__main__":
    main()

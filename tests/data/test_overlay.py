"""Overlay PNGs: class colours over the image; with truth, four panels and the error colours."""

from __future__ import annotations

import numpy as np
from PIL import Image

from unetseg.data.overlay import FN_COLOUR, FP_COLOUR, PALETTE, save_overlay


def test_overlay_single_panel(tmp_path):
    image = np.linspace(0, 1, 20 * 30, dtype=np.float32).reshape(20, 30)
    labels = np.zeros((20, 30), np.int64)
    labels[5:10, 5:10] = 1
    out = np.asarray(Image.open(save_overlay(tmp_path / "o" / "a.png", image, labels)))
    assert out.shape == (20, 30, 3)
    assert out[7, 7, 2] > out[7, 7, 0]  # class 1 is tinted blue (the first palette colour)
    assert out[15, 25, 0] == out[15, 25, 1] == out[15, 25, 2]  # background stays grey


def test_each_class_gets_its_own_palette_colour_blended_over_the_image(tmp_path):
    black = np.zeros((4, 6), np.float32)  # the display stretch keeps an all-zero image black
    labels = np.array([[0, 1, 2, 3, 0, 0]] * 4)
    out = np.asarray(Image.open(save_overlay(tmp_path / "p.png", black, labels))).astype(int)
    for c in (1, 2, 3):
        want = np.clip(0.45 * PALETTE[c - 1], 0, 255).astype(int)  # alpha 0.45 over black
        np.testing.assert_array_equal(out[0, c], want)
    assert len({tuple(out[0, c]) for c in (1, 2, 3)}) == 3 and tuple(out[0, 0]) == (0, 0, 0)


def test_overlay_with_truth_shows_errors(tmp_path):
    image = np.zeros((3, 16, 16), np.float32)  # RGB
    truth = np.zeros((16, 16), np.int64)
    truth[2:6, 2:6] = 1
    pred = np.zeros_like(truth)
    pred[10:12, 10:12] = 1  # all false positive; the truth square is missed
    out = np.asarray(Image.open(save_overlay(tmp_path / "b.png", image, pred, truth)))
    assert out.shape == (16, 4 * 16 + 3 * 4, 3)
    errors = out[:, 3 * (16 + 4):]
    assert tuple(errors[11, 11]) == FP_COLOUR and tuple(errors[3, 3]) == FN_COLOUR


def test_overlay_3d_takes_the_slice_with_most_foreground(tmp_path):
    labels = np.zeros((5, 8, 8), np.int64)
    labels[3, 2:6, 2:6] = 2
    out = np.asarray(Image.open(save_overlay(tmp_path / "c.png", np.ones((1, 5, 8, 8)), labels)))
    assert out.shape == (8, 8, 3) and out[3, 3, 0] != out[3, 3, 2]

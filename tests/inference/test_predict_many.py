"""Several images of one shape through one predictor at once (a server's micro-batch)."""

from __future__ import annotations

import numpy as np
import pytest

from inference.helpers import make_checkpoint
from unetseg.errors import DataError
from unetseg.inference.segmenter import load


def test_images_predicted_together_match_each_predicted_alone(tmp_path):
    seg = load(make_checkpoint(tmp_path / "ckpt"), device="cpu", batch_size=3)
    rng = np.random.default_rng(0)
    images = [rng.random((37, 45)).astype(np.float32) for _ in range(3)]
    alone = [seg.predict(im) for im in images]
    together = seg.predict_many(images)
    assert all((a == b).mean() > 0.999 for a, b in zip(alone, together, strict=True))
    predictor = seg.predictor
    for p, im in zip(predictor.predict_proba_many([im[None] for im in images]), images, strict=True):
        np.testing.assert_allclose(p, predictor.predict_proba(im[None]), atol=1e-5)
    with pytest.raises(DataError, match="one shape"):
        seg.predict_many([images[0], images[1][:30]])


def test_instance_models_take_several_images_too(tmp_path):
    seg = load(make_checkpoint(tmp_path / "ckpt", num_classes=3), device="cpu")
    seg.config.data.task = "instances"
    rng = np.random.default_rng(1)
    images = [rng.random((40, 40)).astype(np.float32) for _ in range(2)]
    together = seg.predict_instances_many(images)
    for (ids, table), im in zip(together, images, strict=True):
        want_ids, want_table = seg.predict_instances(im)
        assert np.array_equal(ids, want_ids) and list(table) == list(want_table)

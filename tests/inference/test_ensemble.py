"""The folds of a K-fold run as one model: the mean of their probabilities, in memory, streamed and on Dask,
through ``unetseg.load``, ``predict --folds`` and export (one ONNX graph)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import unetseg
from unetseg.checkpoint import save_checkpoint
from unetseg.errors import CheckpointError, ConfigError
from unetseg.export import export_model
from unetseg.inference import TorchEngine, load_engine, predict_files
from unetseg.inference.engines import EnsembleEngine, mean_log_probs
from unetseg.inference.jobs.file import Routing
from unetseg.inference.segmenter import Segmenter
from unetseg.inference.tta import logits_to_probs
from unetseg.io.images import read_mask

from .helpers import tiny_config, tiny_model


def fold_run(root: Path, seeds: list[int], states: list[str] | None = None, num_classes: int = 3) -> Path:
    """A K-fold run folder as ``train --folds`` leaves it: ``fold_<k>/best`` and ``folds.json``."""
    cfg = tiny_config(num_classes=num_classes)
    for k, seed in enumerate(seeds):
        save_checkpoint(root / f"fold_{k}" / "best", tiny_model(cfg, seed), cfg)
    folds = [{"cases": [], "groups": [], "state": s} for s in (states or ["done"] * len(seeds))]
    (root / "folds.json").write_text(json.dumps({"folds": folds}))
    return root


def _image(seed: int = 0, size: tuple[int, int] = (40, 52)) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=size).astype(np.float32)


def test_the_log_of_mean_probabilities_gives_back_the_mean_probabilities():
    gen = torch.Generator().manual_seed(0)
    a, b, c = (4 * torch.randn(2, 3, 5, 6, generator=gen) for _ in range(3))
    want = (logits_to_probs(a) + logits_to_probs(b) + logits_to_probs(c)) / 3
    torch.testing.assert_close(logits_to_probs(mean_log_probs([a, b, c])), want, rtol=0, atol=1e-6)
    s, t = (torch.randn(2, 1, 5, 6, generator=gen) for _ in range(2))  # one sigmoid channel
    torch.testing.assert_close(logits_to_probs(mean_log_probs([s, t])),
                               (logits_to_probs(s) + logits_to_probs(t)) / 2, rtol=0, atol=1e-6)
    # averaging logits instead would not give the mean probabilities
    assert not torch.allclose(logits_to_probs((a + b + c) / 3), want, atol=1e-3)


def test_two_identical_members_predict_exactly_what_one_does(tmp_path):
    run = fold_run(tmp_path / "run", [3])
    shutil.copytree(run / "fold_0", run / "fold_1")
    (run / "folds.json").write_text(json.dumps({"folds": [{"state": "done"}] * 2}))
    pair = unetseg.load(run, precision="fp32", tile=(16, 16), tta=True)
    one = unetseg.load(run / "fold_0", precision="fp32", tile=(16, 16), tta=True)
    assert isinstance(pair.engine, EnsembleEngine) and pair.engine.folds == [0, 1]
    image = _image()
    np.testing.assert_array_equal(pair.predict(image), one.predict(image))
    np.testing.assert_allclose(pair.predict_proba(image), one.predict_proba(image), rtol=0, atol=1e-6)


def test_an_ensemble_predicts_the_mean_of_its_members_probabilities(tmp_path):
    run = fold_run(tmp_path / "run", [1, 2, 3])
    members = [unetseg.load(run / f"fold_{k}", precision="fp32", tile=(16, 16)) for k in range(3)]
    ensemble = unetseg.load(run, precision="fp32", tile=(16, 16))
    image = _image(1)
    want = np.mean([m.predict_proba(image) for m in members], axis=0)
    np.testing.assert_allclose(ensemble.predict_proba(image), want, rtol=0, atol=2e-6)
    assert not np.allclose(members[0].predict_proba(image), want, atol=1e-3)  # the members differ
    np.testing.assert_array_equal(ensemble.predict(image), want.argmax(axis=0))
    picked = unetseg.load(run, precision="fp32", tile=(16, 16), folds=[0, 2])
    np.testing.assert_allclose(picked.predict_proba(image), (members[0].predict_proba(image)
                                                              + members[2].predict_proba(image)) / 2,
                               rtol=0, atol=2e-6)
    alone, _ = load_engine(run, "cpu", "fp32", folds=(1,))  # one fold: its own engine
    assert isinstance(alone, TorchEngine)


def test_predict_folds_picks_members_streamed_too(tmp_path):
    run = fold_run(tmp_path / "run", [1, 2, 3])
    folder = tmp_path / "in"
    folder.mkdir()
    from unetseg.io.images import write_image

    write_image(folder / "a.png", (np.clip(_image(2, (48, 60)), -2, 2) * 60 + 128).astype(np.uint8))
    options = {"device": "cpu", "precision": "fp32", "tile": [16, 16], "progress": False}
    predict_files(run, folder, tmp_path / "all", **options)
    predict_files(run, folder, tmp_path / "two", folds=(0, 2), **options)
    predict_files(run / "fold_1", folder, tmp_path / "one", **options)
    predict_files(run, folder, tmp_path / "just1", folds=[1], **options)
    streamed = predict_files(run, folder, tmp_path / "zarr", routing=Routing(output_format="ome-zarr"),
                             **options)
    labels = {d: read_mask(tmp_path / d / "a.png")[0] for d in ("all", "two", "one", "just1")}
    np.testing.assert_array_equal(labels["just1"], labels["one"])
    assert not (np.array_equal(labels["all"], labels["two"]) and np.array_equal(labels["all"], labels["one"]))
    import zarr

    stored = zarr.open_array(str(Path(streamed.written[0]) / "0"), mode="r")[...]
    np.testing.assert_array_equal(np.squeeze(stored), labels["all"])  # streamed: the same labels


def test_unfinished_folds_and_wrong_picks_are_one_line(tmp_path):
    run = fold_run(tmp_path / "run", [1, 2, 3], states=["done", "training", "pending"])
    unfinished = r"fold\(s\) 1, 2 have not finished; resume the run .* --folds 0$"
    with pytest.raises(CheckpointError, match=unfinished):
        load_engine(run, "cpu")
    assert isinstance(load_engine(run, "cpu", folds=(0, 1))[0], EnsembleEngine)  # picked: the user's call
    with pytest.raises(ConfigError, match="--folds 0,7: .* has folds 0 to 2"):
        load_engine(run, "cpu", folds=(0, 7))
    with pytest.raises(ConfigError, match="is not a K-fold run"):
        load_engine(run / "fold_0", "cpu", folds=(0,))
    with pytest.raises(CheckpointError, match="a K-fold run holds one model per fold"):
        unetseg.load_checkpoint(run)


def test_members_that_do_not_segment_alike_are_refused(tmp_path):
    run = fold_run(tmp_path / "run", [1, 2], num_classes=2)
    cfg = tiny_config(num_classes=2)
    cfg.data.class_values = [0, 1]  # the other fold read its masks as 0/1, not 0/255
    save_checkpoint(run / "fold_1" / "best", tiny_model(cfg, 2), cfg)
    with pytest.raises(CheckpointError, match=r"fold_1/best: data.class_values \[0, 1\] differs"):
        load_engine(run, "cpu")


def test_onnx_export_of_an_ensemble_is_one_graph_that_predicts_as_the_run(tmp_path):
    pytest.importorskip("onnxruntime")
    run = fold_run(tmp_path / "run", [1, 2, 3])
    export_model(run, "onnx", tmp_path / "cv.onnx")
    exported = unetseg.load(tmp_path / "cv.onnx", tile=(16, 16))
    ensemble = unetseg.load(run, precision="fp32", tile=(16, 16))
    image = _image(3)
    np.testing.assert_allclose(exported.predict_proba(image), ensemble.predict_proba(image), rtol=0,
                               atol=1e-4)
    export_model(run, "onnx", tmp_path / "two.onnx", folds=[0, 2])
    picked = unetseg.load(run, precision="fp32", tile=(16, 16), folds=[0, 2])
    np.testing.assert_allclose(unetseg.load(tmp_path / "two.onnx", tile=(16, 16)).predict_proba(image),
                               picked.predict_proba(image), rtol=0, atol=1e-4)


def test_an_ensemble_predicts_on_dask_workers(tmp_path):
    pytest.importorskip("distributed")
    from unetseg.inference.jobs.cohort import predict_cohort

    run = fold_run(tmp_path / "run", [1, 2])
    folder = tmp_path / "in"
    folder.mkdir()
    from unetseg.io.images import write_image

    for i in range(2):
        write_image(folder / f"{i}.png", (np.clip(_image(i, (32, 40)), -2, 2) * 60 + 128).astype(np.uint8))
    settings = {"device": "cpu", "precision": "fp32", "tile": [16, 16], "folds": (0, 1)}
    single = predict_files(run, folder, tmp_path / "single", progress=False, **settings)
    cluster = predict_cohort(run, folder, tmp_path / "cluster", cluster="local:1", **settings)
    assert len(cluster.done) == 2 and cluster.model_loads == 1
    for p in map(Path, single.written):
        assert (tmp_path / "cluster" / p.name).read_bytes() == p.read_bytes()


def test_each_member_keeps_its_own_calibration_and_the_folds_agreeing_post_processing(tmp_path):
    from unetseg.config.schema import PostprocessStep
    from unetseg.inference.engines import consensus_postprocess

    run = fold_run(tmp_path / "run", [1, 2])
    for k, (temperature, size) in enumerate([(2.0, 10), (0.5, 30)]):
        cfg = tiny_config(num_classes=3)
        cfg.infer.temperature = temperature
        cfg.infer.postprocess = [PostprocessStep(classes=[1], op="min_size", size=size, gain=0.01),
                                 *([PostprocessStep(classes=[2], op="largest", gain=0.02)] if k else [])]
        save_checkpoint(run / f"fold_{k}" / "best", tiny_model(cfg, k + 1), cfg)
    members = [unetseg.load(run / f"fold_{k}", precision="fp32", tile=(16, 16)) for k in range(2)]
    ensemble = unetseg.load(run, precision="fp32", tile=(16, 16))
    image = _image(2)
    # the mean of the members' calibrated probabilities (each at its own temperature), not of raw ones
    want = np.mean([m.predict_proba(image) for m in members], axis=0)
    np.testing.assert_allclose(ensemble.predict_proba(image), want, rtol=0, atol=2e-6)
    assert ensemble.config.infer.temperature == 1.0
    # only the step both folds chose, at the median size
    [step] = ensemble.config.infer.postprocess
    assert (step.classes, step.op, step.size) == ([1], "min_size", 20)
    assert consensus_postprocess([[step], []]) == []


def test_the_pooled_out_of_fold_choices_replace_the_members_own_and_one_fold_keeps_its_own(tmp_path):
    from unetseg.config.schema import PostprocessStep

    run = fold_run(tmp_path / "run", [1, 2])
    for k, temperature in enumerate([2.0, 0.5]):
        cfg = tiny_config(num_classes=3)
        cfg.infer.temperature = temperature
        cfg.infer.postprocess = [PostprocessStep(classes=[1], op="min_size", size=10, gain=0.01)]
        save_checkpoint(run / f"fold_{k}" / "best", tiny_model(cfg, k + 1), cfg)
    record = json.loads((run / "folds.json").read_text())
    pooled_step = {"classes": [2], "op": "largest", "size": None, "gain": 0.03}
    record["pooled"] = {"temperature": 3.0, "postprocess": [pooled_step], "fit": {}}
    (run / "folds.json").write_text(json.dumps(record))
    image = _image(5)
    # every member at the pooled temperature: the same as members whose own temperature is 3
    as_pooled = []
    for k in range(2):
        engine, cfg = load_engine(run / f"fold_{k}", "cpu", "fp32")
        cfg.infer.temperature = 3.0
        as_pooled.append(Segmenter(run, engine, cfg, tile=(16, 16)).predict_proba(image))
    ensemble = unetseg.load(run, precision="fp32", tile=(16, 16))
    np.testing.assert_allclose(ensemble.predict_proba(image), np.mean(as_pooled, axis=0), rtol=0, atol=2e-6)
    [step] = ensemble.config.infer.postprocess
    assert (step.classes, step.op, step.gain) == ([2], "largest", 0.03)  # the pooled choice, not the folds'
    # one fold picked is that fold's model: its own temperature and post-processing
    alone = unetseg.load(run, folds=[1], precision="fp32", tile=(16, 16))
    own = unetseg.load(run / "fold_1", precision="fp32", tile=(16, 16))
    assert alone.config.infer.temperature == 0.5 and alone.config.infer.postprocess[0].size == 10
    np.testing.assert_allclose(alone.predict_proba(image), own.predict_proba(image), rtol=0, atol=1e-6)
    # a damaged pooled record is one error, not a silent fallback
    for damaged in ({"temperature": -1}, {"postprocess": [{"classes": [1], "op": "explode"}]}):
        record["pooled"] = damaged
        (run / "folds.json").write_text(json.dumps(record))
        with pytest.raises(CheckpointError, match="folds.json"):
            unetseg.load(run, precision="fp32")


def test_labels_with_probabilities_are_post_processed_as_predict_gives_them(tmp_path):
    """``Segmenter.predict_with_proba`` (the napari widget's call): the labels of ``predict`` (here a
    post-processing step that removes everything of class 1), the probabilities of ``predict_proba``."""
    from unetseg.config.schema import PostprocessStep

    cfg = tiny_config(num_classes=2)
    cfg.infer.postprocess = [PostprocessStep(classes=[1], op="min_size", size=10**6)]
    save_checkpoint(tmp_path / "m", tiny_model(cfg, 4), cfg)
    seg = unetseg.load(tmp_path / "m", precision="fp32", tile=(16, 16))
    image = _image(3)
    labels, probs = seg.predict_with_proba(image)
    np.testing.assert_array_equal(labels, seg.predict(image))
    np.testing.assert_allclose(probs, seg.predict_proba(image), rtol=0, atol=1e-6)
    assert (probs.argmax(0) == 1).any() and not (labels == 1).any()  # the step ran on the labels only

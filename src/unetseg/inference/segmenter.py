"""``unetseg.load(RUN)``: a trained model bound to what it was trained with, as nnU-Net's predictor is bound
to its trained folder and Cellpose's and StarDist's models are to theirs::

    seg = unetseg.load("RUN")            # run/checkpoint folder, .onnx, bioimage.io .zip, trusted TorchScript
    labels = seg.predict(image)          # classes (an instance model: object ids), at the image's size
    probs = seg.predict_proba(image)     # float32 (C, *spatial), calibrated by the model's temperature
    maps = seg.predict_uncertainty(image)  # float32 (2, *spatial): entropy, mutual information (/ log C)
    ids, table = seg.predict_instances(image)   # instance models: ids and the per-object table
    many = seg.predict_many([a, b])      # images of one shape: their tiles share the forward passes
    seg.predict_file("slide.ome.tif", "out/")   # the command line's path: files, streamed slides, OME-Zarr

Normalisation, tile, overlap, TTA, resolution, temperature and post-processing come from the model's
config (the first few may be overridden at load time); a cascade runs both its stages, a K-fold run the
ensemble of its folds. The model is loaded once and kept warm.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetseg.config import Config
from unetseg.data.normalize import normalize
from unetseg.errors import ConfigError
from unetseg.inference.api import as_channels_first, predict_full, predict_images, predictor_for
from unetseg.inference.engines import Engine, load_engine
from unetseg.inference.jobs.file import Routing, job_for
from unetseg.inference.jobs.folder import PredictResult, run_job
from unetseg.inference.predictor import Progress

Image = np.ndarray | torch.Tensor


class Segmenter:
    """A trained model ready to segment images of any size (see the module doc); made by :func:`load`."""

    def __init__(self, source: str | Path, engine: Engine, config: Config, **overrides: Any) -> None:
        self.source, self.engine, self.config = Path(source), engine, config
        self.overrides = {k: v for k, v in overrides.items() if v is not None}
        self.predictor = predictor_for(engine, config, **self.overrides)

    def __repr__(self) -> str:
        what = self.engine.label or self.config.model.name
        return (f"Segmenter({str(self.source)!r}: {what}, {self.spatial_dims}D, "
                f"{self.channels} channel(s), {self.task}, classes {self.classes})")

    @property
    def task(self) -> str:
        """``semantic`` or ``instances``."""
        return self.config.data.task

    @property
    def classes(self) -> list[Any]:
        """The mask value(s) of each class, in class order (``[0, 255]``; a merged class is a list)."""
        return list(self.config.data.class_values or range(max(2, self.engine.num_classes)))

    @property
    def spatial_dims(self) -> int:
        return self.engine.spatial_dims

    @property
    def channels(self) -> int:
        """The channels an image must have (a one-channel model also takes ``(*spatial)``)."""
        return self.engine.image_channels

    def _input(self, image: Image) -> np.ndarray:
        return normalize(as_channels_first(image, self.engine), self.config.data)

    def _run(self, images: Sequence[Image], spacing: Sequence[float] | None, probabilities: bool,
             progress: Progress | None = None) -> list[tuple[np.ndarray, np.ndarray | None]]:
        outs = predict_images(self.predictor, [self._input(image) for image in images], spacing, self.config,
                              probabilities=probabilities, progress=progress)
        return [(out.labels, out.probabilities) for out in outs]

    def predict_with_proba(self, image: Image, *, spacing: Sequence[float] | None = None,
                           progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(labels, probabilities)`` of a semantic model from one pass over the tiles: the labels as
        :meth:`predict` gives them (post-processed as the model says), the probabilities as
        :meth:`predict_proba`."""
        labels, probs = self._run([image], spacing, probabilities=True, progress=progress)[0]
        assert probs is not None  # asked for
        return labels, probs

    def predict_proba(self, image: Image, *, spacing: Sequence[float] | None = None,
                      progress: Progress | None = None) -> np.ndarray:
        """Class probabilities ``(max(2, classes), *spatial)`` float32 at the image's size (``spacing``: a
        3D volume's voxel size, when the model was trained at another). ``progress(done, total)``: called
        after each batch of tiles; an exception it raises stops the prediction (a viewer's cancel)."""
        probs = self._run([image], spacing, probabilities=True, progress=progress)[0][1]
        assert probs is not None
        return probs

    def predict_uncertainty(self, image: Image, *, spacing: Sequence[float] | None = None,
                            progress: Progress | None = None) -> np.ndarray:
        """Per-pixel uncertainty ``(2, *spatial)`` float32 at the image's size: the entropy of the mean
        probability over the samples (the flips with TTA), and their disagreement (mutual information:
        entropy of the mean minus mean entropy; 0 with one sample, i.e. without TTA), each divided by
        ``log C`` so 1 means "every class equally likely"."""
        maps = predict_full(self.predictor, self._input(image), spacing, self.config, uncertainty=True,
                            progress=progress, postprocess=False).uncertainty
        assert maps is not None
        return maps

    def predict(self, image: Image, *, spacing: Sequence[float] | None = None,
                progress: Progress | None = None) -> np.ndarray:
        """Class indices at the image's size (uint8); for an instance model the object ids (as
        :meth:`predict_instances`)."""
        return self.predict_many([image], spacing=spacing, progress=progress)[0]

    def predict_many(self, images: Sequence[Image], *, spacing: Sequence[float] | None = None,
                     progress: Progress | None = None) -> list[np.ndarray]:
        """:meth:`predict` of several images of one shape and spacing at once, their tiles sharing the
        forward passes (what ``unetseg serve`` runs a micro-batch of requests with). Each result equals
        the image's own :meth:`predict` up to the float rounding of a differently filled batch."""
        if self.task == "instances":
            return [ids for ids, _ in self.predict_instances_many(images, spacing=spacing, progress=progress)]
        return [labels for labels, _ in self._run(images, spacing, probabilities=False, progress=progress)]

    def predict_instances(self, image: Image, *, spacing: Sequence[float] | None = None,
                          progress: Progress | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(object ids, table)`` of an instance model: ids 1..N (0 background) by the watershed the model
        was validated with, and one row per object (id, area, centroid, bounding box, mean intensity per
        channel) as a dict of arrays."""
        return self.predict_instances_many([image], spacing=spacing, progress=progress)[0]

    def predict_instances_many(self, images: Sequence[Image], *, spacing: Sequence[float] | None = None,
                               progress: Progress | None = None
                               ) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """:meth:`predict_instances` of several images of one shape and spacing (as :meth:`predict_many`)."""
        from unetseg.inference.instances import instances_of
        from unetseg.postprocess.objects import object_table

        if self.task != "instances":
            raise ConfigError(f"{self.source}: a semantic model ({len(self.classes)} classes); "
                              "predict_instances needs an instance model (train --task instances)")
        out = []
        runs = self._run(images, spacing, probabilities=True, progress=progress)
        for image, (_, probs) in zip(images, runs, strict=True):
            assert probs is not None
            ids = instances_of(probs, self.config)
            raw = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
            out.append((ids, object_table(ids, raw, spacing)))
        return out

    def predict_file(self, input: str | Path, output: str | Path, *, probabilities: bool = False,
                     uncertainty: bool = False, overlay: bool = False, mask_values: str = "index",
                     skip_bad: bool = False, overwrite: bool = False, progress: bool = False,
                     routing: Routing = Routing(), max_image_gib: float | None = None) -> PredictResult:
        """What ``unetseg predict`` does with this model: an image, an OME-Zarr store or a folder of them
        into ``output`` (big and OME inputs streamed; every output planned and checked first)."""
        job = job_for(self.engine, self.config, probabilities=probabilities, uncertainty=uncertainty,
                      overlay=overlay, mask_values=mask_values, max_image_gib=max_image_gib,
                      routing=routing, **self.overrides)
        return run_job(job, self.source, input, output, skip_bad=skip_bad, progress=progress,
                       overwrite=overwrite)


def load(path: str | Path, *, device: str | torch.device = "auto", precision: str = "auto",
         trust_torchscript: bool = False, tile: Sequence[int] | None = None, overlap: float | None = None,
         tta: bool | None = None, batch_size: int | None = None, blend: str | None = None,
         folds: Sequence[int] | None = None) -> Segmenter:
    """Load a trained model for prediction: a run folder (its ``best``), a checkpoint folder, an ``.onnx``
    file, a BioImage Model Zoo ``.zip`` (unetseg's own, a unetseg architecture's, or one with ONNX weights)
    or a TorchScript file (``trust_torchscript``: it is a program); a K-fold run predicts with the mean
    probabilities of its folds (``folds``: only these). ``tile``, ``overlap``, ``tta``, ``batch_size``,
    ``blend``: override the model's inference settings (None: its own)."""
    engine, config = load_engine(path, device, precision, trust_torchscript=trust_torchscript,
                                 folds=tuple(folds) if folds is not None else None)
    return Segmenter(path, engine, config, tile=tile, overlap=overlap, tta=tta, batch_size=batch_size,
                     blend=blend)

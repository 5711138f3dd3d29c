"""The napari dock widget: segment an image layer with a unetseg model, correct the labels by hand, fine-tune
the model on the corrections and segment again.

Prediction and training run in worker threads (napari's ``create_worker``), so the viewer keeps drawing;
the progress bar follows the tiles, Cancel stops between two batches of tiles or after the current training
step (the round's last checkpoint is kept). Each fine-tune is a new round folder (:mod:`.rounds`); the widget
then loads the new model and segments the image again into a new layer, so the rounds can be compared.
"""

from __future__ import annotations

import csv
import threading
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.types import FileDialogMode
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
)
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import QVBoxLayout, QWidget

from unetseg.errors import UnetsegError
from unetseg.inference.segmenter import Segmenter, load
from unetseg.training.interrupt import Termination
from unetseg.viewer.rounds import Correction, channels_first, fine_tune_round

LOSS_POLL_MS = 500


class Cancelled(Exception):
    """Raised inside a worker when the user pressed Cancel."""


class _Bridge(QObject):
    """Signals a worker thread emits; Qt delivers them in the viewer's thread."""

    progress = Signal(int, int)


class SegmentWidget(QWidget):
    """Segment, correct, fine-tune (see the module doc). ``napari_viewer`` is given by napari."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.segmenter: Segmenter | None = None
        self.worker: Any = None
        self.cancel = threading.Event()
        self.stop: Termination | None = None
        self.error: str | None = None  # the last failure, as shown (tests and users read it)
        self.rounds_done: list[Path] = []
        self.bridge = _Bridge()
        self.bridge.progress.connect(self._on_progress)
        self._build()
        self.timer = QTimer(self)
        self.timer.setInterval(LOSS_POLL_MS)
        self.timer.timeout.connect(self._poll_loss)
        self.loss_curve: list[float] = []  # the running (or last) round's training loss per epoch
        self.last_labels: Any = None  # the newest labels layer this widget added
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self._refresh_layers)
        self._refresh_layers()

    # -- layout -------------------------------------------------------------------------------------
    def _build(self) -> None:
        self.model = LineEdit(label="model", tooltip="a run or checkpoint folder, or an .onnx file")
        self.browse = FileEdit(label="or browse", mode=FileDialogMode.EXISTING_FILE)
        self.browse.changed.connect(lambda v: setattr(self.model, "value", str(v)))
        self.image = ComboBox(label="image", choices=[])
        self.probabilities = CheckBox(text="also the probabilities (an image layer)")
        self.segment_button = PushButton(text="Segment")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(min=0, max=100, value=0, label="progress")
        self.status = Label(value="")
        self.labels = ComboBox(label="corrected labels", choices=[])
        self.rounds = FileEdit(label="rounds folder", mode=FileDialogMode.EXISTING_DIRECTORY)
        self.training = LineEdit(label="training folder", tooltip="optional: pairs to train on as well")
        self.minutes = FloatSpinBox(label="minutes", value=2.0, min=0.01, max=600.0, step=0.5)
        self.finetune_button = PushButton(text="Fine-tune on my corrections")
        self.loss = Label(value="")
        self.segment_button.changed.connect(self.segment)
        self.cancel_button.changed.connect(self.request_cancel)
        self.finetune_button.changed.connect(self.fine_tune)
        self.form = Container(widgets=[
            self.model, self.browse, self.image, self.probabilities, self.segment_button,
            self.labels, self.rounds, self.training, self.minutes, self.finetune_button,
            self.cancel_button, self.progress, self.loss, self.status])
        layout = QVBoxLayout(self)
        layout.addWidget(self.form.native)

    def _refresh_layers(self, *_: Any) -> None:
        from napari.layers import Image, Labels

        images = [layer.name for layer in self.viewer.layers if isinstance(layer, Image)]
        labels = [layer.name for layer in self.viewer.layers if isinstance(layer, Labels)]
        keep_image, keep_labels = self.image.value, self.labels.value
        self.image.choices, self.labels.choices = images, labels
        if keep_image in images:
            self.image.value = keep_image
        if keep_labels in labels:
            self.labels.value = keep_labels

    @property
    def busy(self) -> bool:
        return self.worker is not None

    # -- segmenting ---------------------------------------------------------------------------------
    def _model(self) -> Segmenter:
        path = str(self.model.value).strip()
        if not path:
            raise UnetsegError("choose a model first (a run folder, checkpoint folder or .onnx file)")
        if self.segmenter is None or str(self.segmenter.source) != path:
            self.segmenter = load(path)
        return self.segmenter

    def segment(self) -> None:
        """Segment the chosen image layer in a worker thread; the result is a new Labels layer."""
        if self.busy:
            return
        try:
            seg = self._model()
            layer = self.viewer.layers[self.image.value]
        except (UnetsegError, KeyError, ValueError) as e:
            return self._fail(e)
        want = bool(self.probabilities.value)
        self._start(self._segment_job, seg, np.asarray(layer.data), layer.name, want,
                    done=self._show_segmentation)

    def _segment_job(self, seg: Segmenter, image: np.ndarray, name: str, want_probs: bool) -> dict[str, Any]:
        def progress(done: int, total: int) -> None:
            if self.cancel.is_set():
                raise Cancelled
            self.bridge.progress.emit(done, total)

        x = channels_first(image, seg)
        out: dict[str, Any] = {"name": name, "model": seg.source}
        if seg.task == "instances":
            out["labels"], out["table"] = seg.predict_instances(x, progress=progress)
        elif want_probs:
            out["labels"], out["probs"] = seg.predict_with_proba(x, progress=progress)
        else:
            out["labels"] = seg.predict(x, progress=progress)
        return out

    def _show_segmentation(self, out: dict[str, Any]) -> None:
        name = f"{out['name']} labels ({Path(out['model']).name})"
        kwargs: dict[str, Any] = {"name": name}
        if "table" in out:
            kwargs["features"] = {k: np.asarray(v) for k, v in out["table"].items()}
        self.last_labels = self.viewer.add_labels(np.asarray(out["labels"]), **kwargs)
        if "probs" in out:
            self.viewer.add_image(out["probs"], name=f"{out['name']} probabilities", channel_axis=0,
                                  visible=False)
        self.labels.value = self.last_labels.name
        self.status.value = f"segmented {out['name']}"

    # -- fine-tuning ------------------------------------------------------------------------------------
    def fine_tune(self) -> None:
        """Fine-tune the current model on the chosen image and its corrected labels in a worker thread;
        then segment the image again with the new round's model."""
        if self.busy:
            return
        try:
            seg = self._model()
            image = self.viewer.layers[self.image.value]
            labels = self.viewer.layers[self.labels.value]
            rounds = Path(str(self.rounds.value))
            if not str(self.rounds.value).strip() or rounds == Path("."):
                raise UnetsegError("choose a rounds folder: each fine-tune is saved there as a new round")
        except (UnetsegError, KeyError, ValueError) as e:
            return self._fail(e)
        corr = Correction(image.name.replace(" ", "_"), np.asarray(image.data), np.asarray(labels.data))
        self.stop = Termination()
        training = str(self.training.value).strip() or None
        self._start(self._fine_tune_job, seg, corr, rounds, float(self.minutes.value), training, self.stop,
                    done=self._show_round)
        self.timer.start()

    def _fine_tune_job(self, seg: Segmenter, corr: Correction, rounds: Path, minutes: float,
                       training: str | None, stop: Termination) -> dict[str, Any]:
        run = fine_tune_round(seg, [corr], rounds, minutes=minutes, training=training, cancel=stop)
        if self.cancel.is_set():
            raise Cancelled
        new = load(run.path)
        out = self._segment_job(new, corr.image, corr.name, False)
        out["run"] = run.path
        return out

    def _show_round(self, out: dict[str, Any]) -> None:
        self.rounds_done.append(Path(out["run"]))
        self.segmenter = None
        self.model.value = str(out["run"])
        out["name"] = self.image.value
        self._show_segmentation(out)
        self.status.value = f"fine-tuned: {out['run']} (now the model)"

    def _poll_loss(self) -> None:
        """The curve of the running round: the loss per epoch from its metrics.csv."""
        runs = sorted(Path(str(self.rounds.value)).glob("round_*/run/metrics.csv"))
        if not runs:
            return
        try:
            with open(runs[-1], newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        except OSError:  # replaced between the glob and the open: next time
            return
        losses = [float(r["train_loss"]) for r in rows if r.get("train_loss")]
        self.loss.value = "loss " + " ".join(f"{v:.3f}" for v in losses[-8:])
        self.loss_curve = losses

    # -- workers --------------------------------------------------------------------------------------
    def _start(self, fn: Any, *args: Any, done: Any) -> None:
        from napari.qt.threading import create_worker

        self.cancel.clear()
        self.error = None
        self.progress.value = 0
        self.status.value = "working..."
        self.worker = create_worker(self._guarded, fn, *args, _start_thread=False)
        self.worker.returned.connect(lambda out: self._fail(out["error"]) if "error" in out else done(out))
        self.worker.errored.connect(self._fail)  # a bug: napari also reports it
        self.worker.finished.connect(self._finished)
        self.segment_button.enabled = self.finetune_button.enabled = False
        self.cancel_button.enabled = True
        self.worker.start()

    def _guarded(self, fn: Any, *args: Any) -> dict[str, Any]:
        """Run a job; what a user causes (a cancel, a bad model or label) comes back as ``{"error": e}``
        instead of an exception through Qt's event loop."""
        from unetseg.training.run import TrainingInterrupted

        try:
            return dict(fn(*args))
        except (Cancelled, TrainingInterrupted, UnetsegError) as e:
            return {"error": e}

    def request_cancel(self) -> None:
        """Stop the running job: between two batches of tiles, or after the current training step."""
        self.cancel.set()
        if self.stop is not None:
            self.stop.request(0)

    def _on_progress(self, done: int, total: int) -> None:
        self.progress.value = int(100 * done / max(total, 1))

    def _fail(self, error: BaseException) -> None:
        from unetseg.training.run import TrainingInterrupted

        if isinstance(error, (Cancelled, TrainingInterrupted)) and self.cancel.is_set():
            self.error = "cancelled"
        else:
            self.error = str(error) if isinstance(error, UnetsegError) else f"{type(error).__name__}: {error}"
        self.status.value = f"error: {self.error}" if self.error != "cancelled" else "cancelled"

    def _finished(self) -> None:
        self.worker, self.stop = None, None
        if self.timer.isActive():  # a fine-tune: its last epochs' loss
            self.timer.stop()
            self._poll_loss()
        self.segment_button.enabled = self.finetune_button.enabled = True
        self.cancel_button.enabled = False

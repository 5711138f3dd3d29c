"""What a run writes while it trains: ``log.txt``, ``metrics.csv``, ``curves.png`` and the live bar."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from unetseg.errors import OutputError
from unetseg.fileio import atomic_write, ensure_dir, write_text
from unetseg.training.trackers import Tracker

CSV_FIELDS = [
    "epoch",
    "step",
    "train_loss",
    "val_dice",
    "val_dice_per_class",
    "lr",
    "patches_per_s",
    "minutes",
]

TRACKED = ("train_loss", "val_dice", "val_dsb", "lr", "patches_per_s", "minutes")


class RunLogger:
    """Appends to the run's log and metrics files and redraws the curves each epoch.

    ``enabled=False`` (ranks other than 0) turns every method into a no-op, so only one set of files exists.
    """

    def __init__(self, run: Path, enabled: bool = True, quiet: bool = False, instances: bool = False) -> None:
        self.run = Path(run)
        # instance runs also log the DSB score of their objects (what picks their best checkpoint)
        self.fields = [*CSV_FIELDS[:4], "val_dsb", *CSV_FIELDS[4:]] if instances else list(CSV_FIELDS)
        self.enabled = enabled
        self.console = Console(stderr=True, quiet=quiet or not enabled)
        self.history: list[dict[str, Any]] = []
        self.trackers: list[Tracker] = []  # TensorBoard / MLflow (train.log), rank 0 only

    def track(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers if self.enabled else []

    def image(self, step: int, name: str, rgb: np.ndarray | None) -> None:
        if rgb is not None:
            for tracker in self.trackers:
                tracker.image(step, name, rgb)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []

    def log(self, message: str, echo: bool = True) -> None:
        """Append a line to ``log.txt`` (the run folder is made on the first one) and show it."""
        if not self.enabled:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        path = ensure_dir(self.run, "--out") / "log.txt"
        try:
            with open(path, "a", encoding="utf-8", errors="replace") as f:
                f.write(f"{stamp} {message}\n")
        except OSError as e:
            raise OutputError(f"{path}: cannot write ({e.strerror or e})") from None
        if echo:
            self.console.print(message, highlight=False)

    def load_history(self) -> None:
        """Re-read metrics.csv on --resume so the curves go on from where they were."""
        path = self.run / "metrics.csv"
        if not path.is_file():
            return
        with open(path) as f:
            for row in csv.DictReader(f):
                self.history.append({k: _num(v) for k, v in row.items()})

    def truncate_history(self, last_epoch: int) -> None:
        """Drop rows after the epoch a resumed run restarts from (a killed run may have written more)."""
        self.history = [r for r in self.history if int(r["epoch"]) <= last_epoch]
        self._write_csv()

    def epoch_end(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.history.append(row)
        self._write_csv()
        self.plot()
        values = {k: float(v) for k in TRACKED if isinstance(v := row.get(k), (int, float))}
        for tracker in self.trackers:
            tracker.scalars(int(row["step"]), values)

    def _write_csv(self) -> None:
        if not self.enabled:
            return
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.fields, extrasaction="ignore", lineterminator="\r\n")
        w.writeheader()
        for r in self.history:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in self.fields})
        write_text(self.run / "metrics.csv", buf.getvalue())

    def plot(self) -> None:
        plot_curves(self.history, self.run / "curves.png")

    def progress(self) -> Progress:
        """The live bar; its ETA field is the trainer's estimate of the real end of the run (the time budget
        or the remaining steps at the measured speed), not the upper bound of the epochs."""
        return Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            TextColumn(
                "loss {task.fields[loss]}  val Dice {task.fields[dice]}  {task.fields[speed]} patches/s"
            ),
            TimeElapsedColumn(),
            TextColumn("ETA {task.fields[eta]}"),
            console=self.console,
            disable=not self.enabled,
            transient=False,
        )


def _num(v: str) -> Any:
    if v == "":
        return None
    try:
        f = float(v)
    except ValueError:
        return v
    return int(f) if f.is_integer() and "." not in v else f


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Training loss and validation Dice per epoch, side by side (atomic write). Uses a bare Agg canvas:
    no pyplot, no global backend switch in the caller's process."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in history]
    loss = [r.get("train_loss") for r in history]
    val = [(r["epoch"], r["val_dice"]) for r in history if r.get("val_dice") not in (None, "")]
    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    a1, a2 = fig.subplots(1, 2)
    a1.plot(epochs, loss, marker="o", ms=3)
    a1.set(title="training loss", xlabel="epoch", ylabel="loss")
    if val:
        a2.plot([e for e, _ in val], [d for _, d in val], marker="o", ms=3, color="tab:green")
    a2.set(title="validation mean foreground Dice", xlabel="epoch", ylabel="Dice", ylim=(0, 1))
    for a in (a1, a2):
        a.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))

"""Experiment trackers a run can also write to (``train.log``; ``--log tensorboard,mlflow``), off by default:
the run folder's own ``metrics.csv``, ``curves.png`` and ``log.txt`` stay the record.

* ``tensorboard`` (extra ``unetseg[tensorboard]``): event files in ``RUN/tensorboard/`` (``tensorboard
  --logdir RUN``): every epoch's scalars, and after each validation an overlay of the first validation
  image's prediction.
* ``mlflow`` (extra ``unetseg[mlflow]``): a run in the experiment ``unetseg`` of the tracking server that
  ``MLFLOW_TRACKING_URI`` names, else of ``RUN/mlflow.db`` (SQLite; ``mlflow ui --backend-store-uri
  sqlite:///RUN/mlflow.db``), with the config as parameters, the scalars per epoch and the overlays as
  images. The client is explicit (``MlflowClient``): nothing is set process-wide.

Only rank 0 writes. A tracker that cannot start is one clear error before training.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from unetseg.config import Config
from unetseg.errors import ConfigError

TRACKERS = ("tensorboard", "mlflow")


class Tracker(Protocol):
    def scalars(self, step: int, values: dict[str, float]) -> None: ...

    def image(self, step: int, name: str, rgb: np.ndarray) -> None: ...

    def close(self) -> None: ...


class TensorBoardTracker:
    def __init__(self, run: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("--log tensorboard needs TensorBoard: pip install 'unetseg[tensorboard]'"
                              ) from None
        self.writer = SummaryWriter(log_dir=str(run / "tensorboard"))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def image(self, step: int, name: str, rgb: np.ndarray) -> None:
        self.writer.add_image(name, rgb, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MlflowTracker:
    def __init__(self, run: Path, cfg: Config) -> None:
        try:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ConfigError("--log mlflow needs MLflow: pip install 'unetseg[mlflow]'") from None
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(run / 'mlflow.db').resolve()}"
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name("unetseg")
        experiment = found.experiment_id if found is not None else self.client.create_experiment(
            "unetseg", artifact_location=None if "MLFLOW_TRACKING_URI" in os.environ
            else (run / "mlflow-artifacts").resolve().as_uri())
        self.run_id = self.client.create_run(experiment, run_name=run.name).info.run_id
        params = [Param(k, str(v)[:500]) for k, v in sorted(_flat(cfg.to_dict()).items())[:500]]
        for i in range(0, len(params), 100):  # a few writes, not one per key (MLflow: <= 100 params a batch)
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def scalars(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric  # imported (and checked) when the tracker opened

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def image(self, step: int, name: str, rgb: np.ndarray) -> None:
        self.client.log_image(self.run_id, rgb, key=name, step=step)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def open_trackers(names: Sequence[str], run: Path, cfg: Config) -> list[Tracker]:
    """The trackers ``train.log`` names (rank 0 only; the caller decides)."""
    trackers: list[Tracker] = []
    for name in names:
        trackers.append(TensorBoardTracker(run) if name == "tensorboard" else MlflowTracker(run, cfg))
    return trackers

"""A fine-tune's start inside a run (``train.init_from``): the source's tensors copied into the new model, the
record of what was copied (``RUN/init.json``), and the frozen encoder of the run's first share.

What the run takes from the source (architecture, input scaling) is decided before, by
:mod:`unetseg.planning.finetune`; this module only moves weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from unetseg import checkpoint as ckpt
from unetseg.config import Config
from unetseg.fileio import write_text
from unetseg.planning.finetune import head_is_new, open_source
from unetseg.training.runlog import RunLogger

PACKAGE_SOURCE = "init_source"  # RUN/init_source: a BioImage Model Zoo package's network as a checkpoint


def unpack_package(package: str | Path, folder: Path, resume: bool, main: bool) -> Path:
    """``--init-from model.zip``: the network of a BioImage Model Zoo package of a unetseg architecture (ours,
    or anyone's that names one; never the package's own code) saved as a checkpoint in ``folder`` (kept in
    the run folder, so the run says what it started from). Packages whose weights only ONNX can run are
    refused in one line: they hold no trainable network."""
    import tempfile

    from unetseg.errors import ConfigError
    from unetseg.inference.zoo import open_package

    if resume and (folder / ckpt.MODEL_FILE).is_file():
        return folder
    if main:
        with tempfile.TemporaryDirectory(prefix="unetseg-package-") as tmp:
            pkg = open_package(package, Path(tmp))
        if pkg.module is None:
            raise ConfigError(f"--init-from {package}: its network is another tool's ONNX graph; fine-tuning "
                              "needs a package of a unetseg architecture (pytorch_state_dict)")
        ckpt.save_checkpoint(folder, pkg.module, pkg.config)
    return folder


def start_from(model: torch.nn.Module, cfg: Config, run: Path, log: RunLogger, main: bool) -> set[str]:
    """Copy the source's tensors into ``model`` where they fit (the stem adapted to other image channels where
    it can be, the head new when the classes differ); log and record which. Returns the copied names."""
    source = open_source(str(cfg.train.init_from))
    src = source.config
    channels = (src.model.in_channels, cfg.model.in_channels)
    done = ckpt.transfer_weights(model, source.path / ckpt.MODEL_FILE, keep_head=not head_is_new(cfg, source),
                                 channels=channels if channels[0] != channels[1] else None)
    parts = sorted({n.rsplit(".", 1)[0] for n in done.new})
    log.log(f"fine-tuning from {source.path}: {len(done.copied)} of {len(model.state_dict())} tensors copied"
            + (f", {', '.join(done.adapted)} adapted from {channels[0]} to {channels[1]} channels"
               if done.adapted else "") + (f"; new: {', '.join(parts)}" if parts else ""))
    if main:
        record = {"source": str(source.path.resolve()), "source_classes": src.data.class_values,
                  "source_channels": src.model.in_channels, "source_task": src.data.task, **done.to_dict()}
        write_text(run / "init.json", json.dumps(record, indent=2) + "\n")
    return set(done.copied) | set(done.adapted)


class FrozenEncoder:
    """The encoder's copied parameters, held still for the first ``share`` of the run (of its minutes under
    a budget, else of its steps): their gradients are dropped before the optimiser step, so AdamW leaves
    them exactly as they came (no update, no weight decay)."""

    def __init__(self, model: torch.nn.Module, copied: set[str], share: float) -> None:
        self.share = share
        self.params = [p for n, p in model.named_parameters() if n.startswith("encoder.") and n in copied]

    def active(self, minutes: float, deadline: float | None, step: int, total_steps: int) -> bool:
        if not self.params or not self.share:
            return False
        return minutes < self.share * deadline if deadline else step < self.share * total_steps

    def hold(self) -> None:
        for p in self.params:
            p.grad = None

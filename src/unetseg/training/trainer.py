"""The training loop: patches in, checkpoints out.

One function, :func:`train`, drives a small :class:`Trainer` whose parts (data, model, optimisation,
validation, checkpoints) are plain methods over the config tree; nothing is configured by subclassing.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetseg._runtime import configure_device
from unetseg.config import Config
from unetseg.errors import ConfigError, TrainingError
from unetseg.losses import DeepSupervisionLoss, build_loss
from unetseg.models import build_model
from unetseg.training import checkpoint as ckpt
from unetseg.training.data import build_loader, prepare
from unetseg.training.distributed import DistInfo, average_buffers, broadcast_value, cleanup, init_distributed
from unetseg.training.logging import RunLogger
from unetseg.training.optim import build_optimizer, lr_factor
from unetseg.training.validation import Validator
from unetseg.utils import autocast, autocast_dtype, memory_format, resolve_device, use_channels_last


def train(cfg: Config, resume: bool = False, quiet: bool = False) -> Path:
    """Train the model ``cfg`` describes on ``cfg.data.data``; return the run folder.

    Under ``torchrun`` every process calls this; DDP, sharded sampling and synchronised validation follow
    from the environment, and only rank 0 writes files.
    """
    info, device = init_distributed(resolve_device(cfg.train.device))
    try:
        return Trainer(cfg, device, info, resume=resume, quiet=quiet).fit()
    finally:
        cleanup(info)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2])},
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    keys = state["numpy"]["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy"]["pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Owns one run: builds everything from ``cfg``, then :meth:`fit` loops over epochs."""

    def __init__(self, cfg: Config, device: torch.device, info: DistInfo, resume: bool, quiet: bool) -> None:
        self.cfg, self.device, self.info = cfg, device, info
        self.run = Path(cfg.train.out)
        self.log = RunLogger(self.run, enabled=info.is_main, quiet=quiet)
        check_config(cfg)
        self.state = self._resume_state() if resume else None
        torch.manual_seed(cfg.train.seed)
        np.random.seed(cfg.train.seed % 2**32)
        random.seed(cfg.train.seed)

        self.data = prepare(cfg, self.log)
        configure_device(device)
        self.model = build_model(cfg.model.name, **cfg.model.build_kwargs()).to(device)
        self.amp_dtype = autocast_dtype(cfg.train.precision, device)
        self.channels_last = use_channels_last(cfg.train.channels_last, device, cfg.model.spatial_dims)
        if self.channels_last:
            self.model.to(memory_format=memory_format(cfg.model.spatial_dims))
        self.net: torch.nn.Module = self.model
        if info.enabled:
            ids = [device.index] if device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if cfg.train.compile:
            self.net = torch.compile(self.net)

        loss_opts = dict(cfg.train.loss_options)
        loss_opts.pop("weight_map", None)
        self.loss = DeepSupervisionLoss(build_loss(cfg.train.loss, cfg.model.num_classes, **loss_opts))
        self.optimizer = build_optimizer(self.model.parameters(), cfg.train)
        fp16 = self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(device.type, enabled=fp16)
        self.loader = build_loader(self.data, cfg, device, info)
        self.validator = Validator(self.data, cfg, device, info, self.amp_dtype, self.channels_last)
        self.total_steps = cfg.train.epochs * cfg.train.iters_per_epoch

        self.epoch, self.step, self.best, self.stale, self.minutes_before = 0, 0, -1.0, 0, 0.0
        if self.state is not None:
            self._load_state(self.state)

    # -- resume ---------------------------------------------------------------------------------------
    def _resume_state(self) -> dict[str, Any] | None:
        last = self.run / "last"
        try:
            folder = ckpt.find_checkpoint(last)
        except Exception:  # noqa: BLE001 - nothing to resume from: start afresh, say so
            self.log.log(f"--resume: no checkpoint in {last}; starting a new run")
            return None
        saved = ckpt.read_config(folder)
        # The class map, patch size and architecture are facts of the run; keep them.
        self.cfg.data.class_values = saved.data.class_values
        self.cfg.data.patch_size = saved.data.patch_size
        self.cfg.model = saved.model
        state = ckpt.load_training_state(folder)
        state["folder"] = folder
        return state

    def _load_state(self, state: dict[str, Any]) -> None:
        from safetensors.torch import load_file

        self.model.load_state_dict(load_file(str(state["folder"] / ckpt.MODEL_FILE), device=str(self.device)))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.best, self.stale = float(state["best"]), int(state["stale"])
        self.minutes_before = float(state["minutes"])
        _set_rng_state(state["rng"])
        self.log.load_history()
        self.log.truncate_history(self.epoch)
        self.log.log(f"resumed from {state['folder']} at epoch {self.epoch}, step {self.step}")

    def _training_state(self, minutes: float) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "best": self.best,
            "stale": self.stale,
            "minutes": minutes,
            "rng": _rng_state(),
        }

    # -- the loop -------------------------------------------------------------------------------------
    def _set_lr(self, minutes: float) -> float:
        cfg = self.cfg.train
        factor = lr_factor(self.step, self.total_steps, cfg.warmup_epochs * cfg.iters_per_epoch, cfg.schedule)
        if cfg.max_minutes:
            # With a time budget the schedule also follows the clock, so it decays fully by the deadline.
            warm = cfg.warmup_epochs * cfg.iters_per_epoch
            if self.step >= warm:
                by_time = lr_factor(int(1000 * minutes / cfg.max_minutes), 1000, 0, cfg.schedule)
                factor = min(factor, by_time)
        lr = cfg.lr * factor
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return lr

    def _train_step(self, batch: list[torch.Tensor], minutes: float) -> float:
        x, y = batch[0].to(self.device, non_blocking=True), batch[1].to(self.device, non_blocking=True)
        w = batch[2].to(self.device, non_blocking=True) if len(batch) > 2 else None
        if self.channels_last:
            x = x.contiguous(memory_format=memory_format(self.cfg.model.spatial_dims))
        lr = self._set_lr(minutes)
        with autocast(self.device, self.amp_dtype):
            out = self.net(x)
        loss = self.loss(out, y, weight=w)
        value = float(loss.detach())
        if not np.isfinite(value):
            raise TrainingError(
                f"loss became {value} at step {self.step + 1} (epoch {self.epoch + 1}, lr {lr:.3g}); "
                f"the last good checkpoint is {self.run / 'last'}; try a lower --lr or --precision fp32"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.train.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        return value

    def fit(self) -> Path:
        cfg, log = self.cfg, self.log
        log.log(
            f"training {cfg.model.name} ({cfg.model.spatial_dims}D, {cfg.model.num_classes} classes, "
            f"values {cfg.data.class_values}) on {len(self.data.train_cases)} train / "
            f"{len(self.data.val_cases)} val cases, patch {cfg.data.patch_size}, device {self.device}, "
            f"precision {self.amp_dtype or torch.float32}, channels_last {self.channels_last}, "
            f"world size {self.info.world_size}"
        )
        if self.info.is_main:
            cfg.to_yaml(self.run / "config.yaml")
        start = time.monotonic()

        def minutes() -> float:
            return self.minutes_before + (time.monotonic() - start) / 60

        def agreed_minutes() -> float:
            # under a budget, rank 0's clock rules every rank: same learning rate, same last step
            return broadcast_value(minutes(), self.info) if cfg.train.max_minutes else minutes()

        patches_per_step = cfg.train.batch_size * self.info.world_size
        out_of_time, speed = False, 0.0
        with log.progress() as bar:
            task = bar.add_task(
                "train",
                total=self.total_steps,
                completed=self.step,
                epoch=self.epoch + 1,
                loss="-",
                dice="-",
                speed="-",
            )
            while self.epoch < cfg.train.epochs and not out_of_time:
                self.net.train()
                self.loader.sampler.set_epoch(self.epoch)
                t0, losses, now = time.monotonic(), [], agreed_minutes()
                for batch in self.loader:
                    losses.append(self._train_step(batch, now))
                    speed = patches_per_step * len(losses) / (time.monotonic() - t0)
                    bar.update(
                        task,
                        advance=1,
                        epoch=self.epoch + 1,
                        loss=f"{np.mean(losses):.4f}",
                        speed=f"{speed:.1f}",
                    )
                    now = agreed_minutes()
                    out_of_time = bool(cfg.train.max_minutes) and now >= cfg.train.max_minutes
                    if out_of_time:
                        break
                self.epoch += 1
                average_buffers(self.model, self.info)
                done = out_of_time or self.epoch >= cfg.train.epochs
                row = self._end_epoch(
                    losses, speed, minutes(), validate=done or self.epoch % cfg.train.val_interval == 0
                )
                if row.get("val_dice") is not None:
                    bar.update(task, dice=f"{row['val_dice']:.4f}")
                if cfg.train.patience and self.stale >= cfg.train.patience:
                    log.log(f"early stop: no improvement in {self.stale} validations")
                    break
        if out_of_time:
            log.log(f"stopped at the {cfg.train.max_minutes}-minute budget after {self.step} steps")
        log.log(f"best validation mean foreground Dice {self.best:.4f}; checkpoints in {self.run}")
        return self.run

    def _end_epoch(self, losses: list[float], speed: float, minutes: float, validate: bool) -> dict[str, Any]:
        row: dict[str, Any] = {
            "epoch": self.epoch,
            "step": self.step,
            "train_loss": float(np.mean(losses)) if losses else None,
            "lr": self.optimizer.param_groups[0]["lr"],
            "patches_per_s": round(speed, 3),
            "minutes": round(minutes, 3),
        }
        metrics: dict[str, Any] = {"epoch": self.epoch, "step": self.step}
        if validate and self.data.val_cases:
            per_class = self.validator.run(self.model)
            score = float(np.mean(per_class[1:])) if len(per_class) > 1 else float(per_class[0])
            row["val_dice"] = round(score, 5)
            row["val_dice_per_class"] = " ".join(f"{d:.4f}" for d in per_class)
            metrics.update(val_dice=score, val_dice_per_class=[float(d) for d in per_class])
            if score > self.best:
                self.best, self.stale = score, 0
                if self.info.is_main:
                    ckpt.save_checkpoint(self.run / "best", self.model, self.cfg, metrics)
            else:
                self.stale += 1
        elif not self.data.val_cases and self.info.is_main:
            # Without validation cases the latest weights are the best we know of.
            ckpt.save_checkpoint(self.run / "best", self.model, self.cfg, metrics)
        if self.info.is_main:
            ckpt.save_checkpoint(
                self.run / "last", self.model, self.cfg, metrics, self._training_state(minutes)
            )
            self.log.epoch_end(row)
            self.log.log(
                f"epoch {self.epoch}: loss {row['train_loss']:.4f}"
                + (f", val Dice {row['val_dice']:.4f}" if "val_dice" in row else "")
                + f", {speed:.1f} patches/s",
                echo=False,
            )
        return row


def check_config(cfg: Config) -> None:
    """Fail early, with one line, on training options that cannot work."""
    t = cfg.train
    if t.epochs < 1 or t.iters_per_epoch < 1 or t.batch_size < 1:
        raise ConfigError("epochs, iters_per_epoch and batch_size must be >= 1")
    if t.lr <= 0:
        raise ConfigError(f"lr must be > 0, got {t.lr}")
    with torch.device("meta"):  # validates the architecture name and options before any data is read
        build_model(cfg.model.name, **cfg.model.build_kwargs())

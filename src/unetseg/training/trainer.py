"""The training loop: patches in, checkpoints out.

A small :class:`Trainer` whose parts (data, model, optimisation, validation, checkpoints) are plain methods
over the config tree; nothing is configured by subclassing. :func:`unetseg.training.session.train` checks,
plans and probes before it drives one.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetseg import checkpoint as ckpt
from unetseg.config import Config, dump_yaml
from unetseg.data.prepare import prepare_data
from unetseg.data.store import ExtraChannels
from unetseg.errors import CheckpointError, TrainingError
from unetseg.fileio import write_text
from unetseg.losses import DeepSupervisionLoss, build_loss
from unetseg.models import build_model
from unetseg.runtime import (
    autocast,
    autocast_dtype,
    memory_format,
    precision_name,
    to_channels_last,
    use_channels_last,
)
from unetseg.training.distributed import (
    DistInfo,
    average_buffers,
    synchronize,
)
from unetseg.training.finetune import FrozenEncoder, start_from
from unetseg.training.interrupt import GRACE_S, Termination
from unetseg.training.loader import build_loader, epoch_sampler
from unetseg.training.optim import build_optimizer, lr_factor
from unetseg.training.run import RunFolder, TrainingInterrupted, interrupted_message
from unetseg.training.runlog import RunLogger
from unetseg.training.state import Clock, resumable, rng_state, set_rng_state
from unetseg.training.trackers import open_trackers
from unetseg.training.validation import Validator
from unetseg.validate import check_axes

# Non-finite gradients in this many steps in a row stop the run (fewer are skipped one by one).
MAX_BAD_GRAD_STEPS = 5


@dataclass(frozen=True)
class Start:
    """Where the run continues from: the winning trial's last checkpoint and the minutes already spent."""

    checkpoint: Path
    minutes: float
    name: str


def keep_saved(cfg: Config, saved: Config, *, planned: bool, given: set[str]) -> None:
    """A resumed run goes on as it was: the class map, the grid (patch, spacing, resolution) and the
    architecture are facts of the run; a planned run also keeps every planned value (what the user gives
    on the resume command, e.g. a longer budget, still applies)."""
    if planned:
        now = cfg.copy_deep()
        for section in ("data", "augment", "train", "infer"):
            setattr(cfg, section, getattr(saved, section).model_copy(deep=True))
        for key in given:
            part, name = key.split(".")[:2]
            if part != "model":
                setattr(getattr(cfg, part), name, getattr(getattr(now, part), name))
    cfg.data.class_values, cfg.data.patch_size = saved.data.class_values, saved.data.patch_size
    cfg.data.spacing, cfg.data.downsample = saved.data.spacing, saved.data.downsample
    cfg.model = saved.model


class Trainer:
    """Owns one run: builds everything from ``cfg``, then :meth:`fit` loops over epochs."""

    def __init__(
        self,
        cfg: Config,
        device: torch.device,
        info: DistInfo,
        run: RunFolder,
        *,
        resume: bool,
        quiet: bool,
        stop: Termination | None = None,
        hint: str | None = None,
        fixed: set[str] | None = None,
        start: Start | None = None,
        lr_minutes: float | None = None,
        until: float | None = None,
        extra: ExtraChannels | None = None,
        previous: Path | None = None,
        init: Path | None = None,
        holdout: list[str] | None = None,
        cache: Path | None = None,
        calibrate: bool = False,
    ) -> None:
        self.cfg, self.device, self.info, self.folder = cfg, device, info, run
        # the run's model (not a probe's trial): its best checkpoint is calibrated on the validation
        # images at the end (training.heldout), and the budget keeps the time for it
        self.calibrate = calibrate and cfg.train.calibrate and cfg.data.task == "semantic"
        self.fixed = fixed or set()  # options the user set: never calibrated
        # where the clock stops: the budget, or earlier (a cascade's first stage leaves the rest to stage 2)
        self.deadline = until if until is not None else cfg.train.max_minutes
        # the budget the learning rate decays over (a probe's trial: the whole run's, so its winner goes on
        # with the learning rate it would have had)
        self.lr_minutes = lr_minutes or self.deadline
        self.previous = previous  # a cascade's first stage, saved inside every checkpoint of its second
        self.copied: set[str] = set()  # a fine-tune's tensors taken from its source
        self.run = run.path
        self.stop, self.hint = stop or Termination(), hint
        instances = cfg.data.task == "instances"
        self.log = RunLogger(self.run, enabled=info.is_main, quiet=quiet, instances=instances)
        found = resumable(self.run, self.log) if resume else None
        if found is None and start is not None:  # the probe's winner goes on where its trial stopped
            found = resumable(start.checkpoint.parent, self.log)
        if found is not None:
            keep_saved(cfg, found[1], planned=resume and fixed is not None and start is None,
                        given=self.fixed)
        torch.manual_seed(cfg.train.seed)
        np.random.seed(cfg.train.seed % 2**32)
        random.seed(cfg.train.seed)
        # a cross-validation fold validates on the cases it holds out; its folds share one cache
        self.data = prepare_data(cfg, cache_dir=cache or self.run / "cache", holdout=holdout)
        if extra is not None:  # a cascade's second stage: the first stage's prediction after the image
            self.data.store.add_channels(extra)
        self.data.apply_to(cfg)
        check_axes(cfg, self.data.spatial_dims, what=f"the images in {cfg.data.data} are")
        self.log.log(
            f"data: {len(self.data.train_cases)} training and {len(self.data.val_cases)} validation cases"
            + (f" ({self.data.split})" if self.data.split else "")
        )
        self._build(cfg, device, info)
        self.epoch, self.step, self.best, self.stale, self.minutes_before = 0, 0, -1.0, 0, 0.0
        self.bad_grads = 0  # steps in a row whose gradients were not finite (skipped)
        self.batch_in_epoch, self.save_seconds, self.val_minutes = 0, 0.0, 0.0
        self.last_score: float | None = None  # the latest validation's score
        self.minutes_done = 0.0  # the clock when fit() returned
        if found is not None:
            self._load_state(found[0], found[2], found[3], history=start is None)
        elif init is not None:
            self._init_from(init)
        elif cfg.train.init_from:
            self.copied = start_from(self.model, cfg, self.run, self.log, info.is_main)
            whole = self.copied == set(self.model.state_dict())
            if whole and self.data.val_cases and start is None:
                self._score_source()
        self.frozen = FrozenEncoder(self.model, self.copied, cfg.train.freeze_encoder)
        if start is not None and found is not None:
            # the clock counts every trial of the probe; best and patience are this run's own
            self.minutes_before, self.best, self.stale = start.minutes, -1.0, 0
            self.log.log(f"continuing the probe's {start.name} trial (step {self.step}) with "
                         f"{start.minutes:.1f} of {cfg.train.max_minutes:g} minutes spent")

    def _build(self, cfg: Config, device: torch.device, info: DistInfo) -> None:
        self.model = build_model(cfg.model.name, **cfg.model.build_kwargs()).to(device)
        self.amp_dtype = autocast_dtype(cfg.train.precision, device)
        self.channels_last = use_channels_last(cfg.train.channels_last, device, cfg.model.spatial_dims)
        if self.channels_last:
            to_channels_last(self.model, cfg.model.spatial_dims)
        self.net: torch.nn.Module = self.model
        if info.enabled:
            ids = [device.index] if device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if cfg.train.compile:
            compiled = torch.compile(self.net)
            assert isinstance(compiled, torch.nn.Module)  # a compiled Module is one (its stubs say Callable)
            self.net = compiled
        loss_opts = {k: v for k, v in cfg.train.loss_options.items() if k != "weight_map"}
        self.loss = DeepSupervisionLoss(build_loss(cfg.train.loss, cfg.model.num_classes, **loss_opts))
        self.optimizer = build_optimizer(self.model.parameters(), cfg.train)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.loader = build_loader(self.data, cfg, device, info)
        self.validator = Validator(self.data, cfg, device, info, precision_name(self.amp_dtype),
                                   self.channels_last, fixed=frozenset(self.fixed))
        self.total_steps = cfg.train.epochs * cfg.train.iters_per_epoch

    # -- resume ---------------------------------------------------------------------------------------
    def _load_state(self, folder: Path, state: dict[str, Any], tensors: dict[str, torch.Tensor],
                    history: bool = True) -> None:
        ckpt.load_weights(self.model, folder / ckpt.MODEL_FILE, tensors=tensors)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"])
        except (KeyError, ValueError, RuntimeError, TypeError) as e:
            raise CheckpointError(
                f"{folder / ckpt.STATE_FILE}: training state does not fit this run "
                f"({' '.join(str(e).split())[:120]})"
            ) from None
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.best, self.stale = float(state["best"]), int(state["stale"])
        self.minutes_before = float(state["minutes"])
        self.batch_in_epoch = int(state.get("batch_in_epoch", 0))
        if history:
            self.log.load_history()
            self.log.truncate_history(self.epoch)
            row = state.get("row")
            if isinstance(row, dict) and not any(int(r["epoch"]) == self.epoch for r in self.log.history):
                self.log.epoch_end(row)  # killed after the checkpoint, before its row
        self.log.log(f"resumed from {folder} at epoch {self.epoch}, step {self.step}")

    def _init_from(self, folder: Path) -> None:
        """A new run's weights from a checkpoint of the same architecture (a cascade's second stage from the
        probe's full-resolution trial; new input channels start at zero)."""
        widened = ckpt.load_widened(self.model, ckpt.find_checkpoint(folder) / ckpt.MODEL_FILE)
        if widened is None:
            self.log.log(f"{folder}: another architecture; starting from new weights")
        else:
            self.log.log(f"weights from {folder}" + (f" ({', '.join(widened)} widened)" if widened else ""))

    def _scored(self, per_class: np.ndarray, row: dict[str, Any], metrics: dict[str, Any]) -> float:
        """The validation score that picks the best checkpoint (an instance model's: the DSB score of its
        objects, with the watershed options the validation chose), written into ``row`` and ``metrics``."""
        if self.cfg.data.task == "instances":  # [foreground Dice, DSB score, AP@0.5]: the DSB score rules
            for key, value in self.validator.chosen.items():  # saved with the checkpoints
                setattr(self.cfg.infer, key, value)
                metrics[f"infer.{key}"] = value
            score = float(per_class[1])
            row["val_dice"], row["val_dsb"] = round(float(per_class[0]), 5), round(score, 5)
        else:
            score = float(np.mean(per_class[1:])) if len(per_class) > 1 else float(per_class[0])
            row["val_dice"] = round(score, 5)
        row["val_dice_per_class"] = " ".join(f"{d:.4f}" for d in per_class)
        self.last_score = score
        metrics.update(val_dice=score if "val_dsb" not in row else float(per_class[0]), val_score=score,
                       val_dice_per_class=[float(d) for d in per_class])
        return score

    def _score_source(self) -> None:
        """A fine-tune whose network is wholly the source's (no new stem or head): its score on the new
        validation images is the one to beat, and ``RUN/best`` starts as the source, so a fine-tune that
        only gets worse (a few unlike images, a checkpoint picked on one of them) ends with the source."""
        row: dict[str, Any] = {}
        metrics: dict[str, Any] = {"epoch": 0, "step": 0, "source": True}
        self.best = self._scored(self.validator.run(self.model), row, metrics)
        self.log.log(f"the source model scores {self.best:.4f} on the validation images: the score to beat")
        if self.info.is_main:
            self._save("best", metrics)

    def _training_state(self, minutes: float) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "best": self.best,
            "stale": self.stale,
            "minutes": minutes,
            "rng": rng_state(),
            "batch_in_epoch": self.batch_in_epoch,
        }

    def _save(self, name: str, metrics: dict[str, Any], state: dict[str, Any] | None = None) -> None:
        t0 = time.monotonic()
        ckpt.save_checkpoint(self.run / name, self.model, self.cfg, metrics, state, previous=self.previous)
        self.save_seconds = time.monotonic() - t0
        if name == "last":
            self.folder.committed()

    # -- the loop -------------------------------------------------------------------------------------
    def _set_lr(self, minutes: float) -> float:
        cfg = self.cfg.train
        factor = lr_factor(self.step, self.total_steps, cfg.warmup_epochs * cfg.iters_per_epoch, cfg.schedule)
        if self.lr_minutes:
            # With a time budget the schedule also follows the clock, so it decays fully by the deadline.
            warm = cfg.warmup_epochs * cfg.iters_per_epoch
            if self.step >= warm:
                by_time = lr_factor(int(1000 * minutes / self.lr_minutes), 1000, 0, cfg.schedule)
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
        if self.frozen.active(minutes, self.deadline, self.step, self.total_steps):
            self.frozen.hold()
        norm = None
        if self.cfg.train.grad_clip:
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        if self.scaler.is_enabled() or self._finite_grads(lr, norm):
            self.scaler.step(self.optimizer)  # fp16's scaler skips non-finite steps itself
        self.scaler.update()
        self.step += 1
        return value

    def _finite_grads(self, lr: float, norm: torch.Tensor | None) -> bool:
        """Whether this step's gradients are finite; a non-finite one is skipped (weights unchanged) so one
        bad backward (a kernel fault, a freak batch) cannot put NaN into every weight, and a run that keeps
        making them stops like a NaN loss. DDP ranks hold the same reduced gradients and so agree."""
        if norm is None:  # clipping computed it already when on
            grads = [torch.linalg.vector_norm(p.grad) for p in self.model.parameters() if p.grad is not None]
            norm = torch.stack(grads).sum() if grads else torch.zeros(())
        if bool(torch.isfinite(norm)):
            self.bad_grads = 0
            return True
        self.bad_grads += 1
        where = f"step {self.step + 1} (epoch {self.epoch + 1}, lr {lr:.3g})"
        if self.bad_grads >= MAX_BAD_GRAD_STEPS:
            raise TrainingError(
                f"gradients were NaN/inf in {self.bad_grads} steps in a row up to {where}; the last good "
                f"checkpoint is {self.run / 'last'}; try a lower --lr or --precision fp32"
            )
        self.log.log(f"gradients were NaN/inf at {where}: step skipped, weights unchanged")
        return False

    def fit(self) -> Path:
        cfg, log = self.cfg, self.log
        log.log(
            f"training {cfg.model.name} ({cfg.model.spatial_dims}D, {cfg.model.num_classes} classes, "
            f"values {cfg.data.class_values}) on {len(self.data.train_cases)} train / "
            f"{len(self.data.val_cases)} val cases, patch {cfg.data.patch_size}, device {self.device}, "
            f"precision {self.amp_dtype or torch.float32}, channels_last {self.channels_last}, "
            f"world size {self.info.world_size}"
            + (f" ({torch.distributed.get_backend()})" if torch.distributed.is_initialized() else "")
        )
        recipe = self.run / "config.yaml"
        if self.info.is_main and self.folder.may_write(recipe):
            write_text(
                recipe, dump_yaml(cfg, "the configuration of this run (unetseg train --config reads it)")
            )
        clock = Clock(self.minutes_before, self.info, bool(self.deadline), self.stop)
        out_of_time = False
        if self.info.is_main and cfg.train.log:
            log.track(open_trackers(cfg.train.log, self.run, cfg))
        with log.progress() as bar, contextlib.closing(log):
            task = bar.add_task(
                "train",
                total=self.total_steps,
                completed=self.step,
                epoch=self.epoch + 1,
                loss="-",
                dice="-",
                speed="-",
                eta="-",
            )
            while self.epoch < cfg.train.epochs and not out_of_time:
                out_of_time = self._epoch(bar, task, clock)
                if self.stale and cfg.train.patience and self.stale >= cfg.train.patience:
                    log.log(f"early stop: no improvement in {self.stale} validations")
                    break
        if out_of_time:
            log.log(f"stopped at the {self.deadline:.3g}-minute budget after {self.step} steps")
        log.log(f"best validation mean foreground Dice {self.best:.4f}; checkpoints in {self.run}")
        if self.calibrate and self.info.is_main:
            from unetseg.training.heldout import calibrate_best

            calibrate_best(self.run, self.cfg, self.data, self.device, precision_name(self.amp_dtype),
                           self.channels_last, log)
        self.minutes_done = clock.read()[0]
        synchronize(self.info)  # every rank leaves together, after rank 0's last writes
        return self.run

    def _epoch(self, bar: Any, task: Any, clock: Clock) -> bool:
        """One epoch (or its remainder after a mid-epoch resume); returns True when the budget is spent."""
        cfg = self.cfg.train
        self.net.train()
        epoch_sampler(self.loader).set_epoch(self.epoch, self.batch_in_epoch)
        t0, losses, (now, _, _) = time.monotonic(), [], clock.read()
        out_of_time = speed = 0.0
        for batch in self.loader:
            losses.append(self._train_step(batch, now))
            self.batch_in_epoch += 1
            speed = cfg.batch_size * self.info.world_size * len(losses) / (time.monotonic() - t0)
            # the held-out calibration predicts the validation images once more
            now, stop, reserve = clock.read(self.val_minutes * (2 if self.calibrate else 1))
            # stop early enough for the final validation (as long as the last one took) inside the budget
            out_of_time = bool(self.deadline and now + reserve >= self.deadline)
            bar.update(
                task,
                advance=1,
                epoch=self.epoch + 1,
                loss=f"{np.mean(losses):.4f}",
                speed=f"{speed:.1f}",
                eta=self._eta(now, len(losses) / max(time.monotonic() - t0, 1e-9)),
            )
            if stop:
                self._terminate(now)
            if out_of_time:
                break
        self.epoch += 1
        self.batch_in_epoch = 0
        average_buffers(self.model, self.info)
        done = bool(out_of_time) or self.epoch >= cfg.epochs
        row = self._end_epoch(
            losses, speed, clock.read()[0], validate=done or self.epoch % cfg.val_interval == 0
        )
        if row.get("val_dice") is not None:
            bar.update(task, dice=f"{row['val_dice']:.4f}")
        return bool(out_of_time)

    def _eta(self, minutes: float, steps_per_s: float) -> str:
        """The real end of the run: the time budget, or the remaining steps at the measured speed."""
        left = (self.total_steps - self.step) / max(steps_per_s, 1e-9)
        if self.deadline:
            left = min(left, max(0.0, (self.deadline - minutes) * 60))
        return time.strftime("%H:%M:%S", time.gmtime(left)) if left < 86400 else f"{left / 86400:.1f} days"

    def _terminate(self, minutes: float) -> None:
        """SIGTERM: save the current step when it fits in the grace period, then stop with exit 143."""
        saved = self.info.is_main and self.save_seconds < GRACE_S
        if saved:
            average_buffers(self.model, self.info)
            self._save("last", {"epoch": self.epoch, "step": self.step}, self._training_state(minutes))
        name = signal.Signals(self.stop.signum).name if self.stop.signum else "cancelled"
        raise TrainingInterrupted(interrupted_message(self.run, self.hint, name, saved), 143)

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
            t0 = time.monotonic()
            per_class = self.validator.run(self.model)
            self.val_minutes = (time.monotonic() - t0) / 60
            score = self._scored(per_class, row, metrics)
            if self.log.trackers:
                self.log.image(self.step, "validation", self.validator.preview(self.model))
            if score > self.best:
                self.best, self.stale = score, 0
                if self.info.is_main:
                    self._save("best", metrics)
            else:
                self.stale += 1
        elif not self.data.val_cases and self.info.is_main:
            self._save("best", metrics)  # without validation cases the latest weights are the best we know
        if self.info.is_main:
            # the checkpoint carries its epoch's row: a kill between the two writes loses no row on resume
            plain = json.loads(json.dumps(row, default=float))  # plain types: the state loads weights_only
            self._save("last", metrics, {**self._training_state(minutes), "row": plain})
            self.log.epoch_end(row)
            self.log.log(
                f"epoch {self.epoch}: loss {row['train_loss']:.4f}"
                + (f", val Dice {row['val_dice']:.4f}" if "val_dice" in row else "")
                + f", {speed:.1f} patches/s",
                echo=False,
            )
        return row

"""Checkpoints: a folder with ``model.safetensors`` + ``config.json`` (+ ``state.pt`` for --resume; + the
first stage's checkpoint in ``stage1/`` for a cascade's second stage, so the folder is whole on its own).

Loading for inference never unpickles anything; training state is read with ``weights_only=True``. Every
file is written to a temporary folder beside the checkpoint, fsynced, and the folder is swapped in by
rename (then the parent folder is fsynced), so a kill at any moment leaves the previous checkpoint
loadable; a temporary folder is never taken for a checkpoint. Also the keys under which exported models
carry their config (:data:`ONNX_CONFIG_KEY`, :data:`TORCHSCRIPT_CONFIG_FILE`).
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from unetseg.config import Config, config_from_dict, load_json, read_text
from unetseg.config.schema import PostprocessStep
from unetseg.errors import CheckpointError, ConfigError, first_line
from unetseg.fileio import atomic_write, fsync_dir, write_text
from unetseg.validate import check_config

if TYPE_CHECKING:
    from unetseg.models.base import SegmentationModel

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "state.pt"
ONNX_CONFIG_KEY = "unetseg_config"
TORCHSCRIPT_CONFIG_FILE = "config.json"
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".jit")
STAGE1 = "stage1"  # a cascade's first stage: a sub-folder of the checkpoint, or an export's ".stage1" twin
STATE_KEYS = ("optimizer", "scaler", "epoch", "step", "best", "stale", "minutes", "rng")
FOLDS_FILE = "folds.json"  # a K-fold run's record (RUN/fold_<k>/ hold its folds' runs)
CALIBRATION_FILE = "calibration.json"  # a K-fold run's ensemble temperature, fitted by `unetseg calibrate`


def package_version() -> str:
    try:
        return metadata.version("unetseg")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def versions() -> dict[str, str]:
    import numpy

    return {"unetseg": package_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module behind DDP / torch.compile wrappers."""
    # torch's wrappers (DistributedDataParallel, DataParallel; compile's OptimizedModule) keep the wrapped
    # module under these names, and a caller's model may be any of them or none
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def stage1_of(path: str | Path) -> Path:
    """Where a cascade's first stage lies beside its second: ``CKPT/stage1`` for a checkpoint folder,
    ``model.stage1.onnx`` beside ``model.onnx`` (any export suffix)."""
    p = Path(path)
    if p.is_dir() or p.name in (MODEL_FILE, CONFIG_FILE):
        return find_checkpoint(p) / STAGE1
    return p.with_name(f"{p.stem}.{STAGE1}{p.suffix}")


def save_checkpoint(folder: str | Path, model: torch.nn.Module, config: Config | dict[str, Any],
                    metrics: dict[str, Any] | None = None, state: dict[str, Any] | None = None,
                    previous: str | Path | None = None) -> Path:
    """Write a checkpoint folder atomically: files go to ``folder.tmp``, which then replaces ``folder``.
    ``previous``: a cascade's first-stage checkpoint, copied into ``stage1/``."""
    folder = Path(folder)
    tmp = _fresh_tmp(folder)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in unwrap(model).state_dict().items()}
    atomic_write(tmp / MODEL_FILE, lambda p: save_file(tensors, str(p)))
    cfg = config.to_dict() if isinstance(config, Config) else dict(config)
    cfg["versions"] = versions()
    cfg["metrics"] = metrics or {}
    write_text(tmp / CONFIG_FILE, json.dumps(cfg, indent=2, default=float))
    if state is not None:
        atomic_write(tmp / STATE_FILE, lambda p: torch.save(state, p))
    if previous is not None:
        (tmp / STAGE1).mkdir()
        for name in (MODEL_FILE, CONFIG_FILE):
            atomic_write(tmp / STAGE1 / name, functools.partial(shutil.copyfile, Path(previous) / name))
        fsync_dir(tmp / STAGE1)
    fsync_dir(tmp)
    return _swap_in(tmp, folder)


def _fresh_tmp(folder: Path) -> Path:
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists() or tmp.is_symlink():
        shutil.rmtree(tmp) if tmp.is_dir() and not tmp.is_symlink() else tmp.unlink()
    tmp.mkdir(parents=True)
    return tmp


def _swap_in(tmp: Path, folder: Path) -> Path:
    """folder -> folder.old, tmp -> folder, drop old. A kill between the renames leaves folder.old
    complete; find_checkpoint() falls back to it (never to folder.tmp, which may be incomplete)."""
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(folder, old)
    os.replace(tmp, folder)
    fsync_dir(folder.parent)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
    return folder


def copy_checkpoint(source: str | Path, folder: str | Path, *, state: bool = False) -> Path:
    """Copy a checkpoint (its weights, config and a cascade's ``stage1/``; the training state only with
    ``state``) to ``folder`` with the same atomic swap as :func:`save_checkpoint`."""
    source, folder = find_checkpoint(source), Path(folder)
    tmp = _fresh_tmp(folder)
    names = [MODEL_FILE, CONFIG_FILE, *([STATE_FILE] if state and (source / STATE_FILE).is_file() else [])]
    subs = [STAGE1] if (source / STAGE1).is_dir() else []
    for sub in ["", *subs]:
        (tmp / sub).mkdir(exist_ok=True)
        for name in names if not sub else [MODEL_FILE, CONFIG_FILE]:
            atomic_write(tmp / sub / name, functools.partial(shutil.copyfile, source / sub / name))
        fsync_dir(tmp / sub)
    return _swap_in(tmp, folder)


def read_metrics(folder: str | Path) -> dict[str, Any]:
    """The metrics a checkpoint was saved with (``config.json``'s ``metrics``; empty when unreadable)."""
    try:
        raw = json.loads((find_checkpoint(folder) / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, CheckpointError):
        return {}
    metrics = raw.get("metrics") if isinstance(raw, dict) else None
    return metrics if isinstance(metrics, dict) else {}


def _copier(source: Path) -> Callable[[Path], object]:
    """Writes ``source``'s bytes to the path it is given (for :func:`atomic_write`)."""
    return lambda path: shutil.copyfile(source, path)


def rewrite_config(folder: str | Path, config: Config, metrics: dict[str, Any]) -> Path:
    """Replace a checkpoint's config and metrics (weights, training state and ``stage1/`` kept) with the same
    atomic swap as :func:`save_checkpoint`: a kill leaves the old checkpoint or the new one."""
    source = find_checkpoint(folder)
    tmp = _fresh_tmp(Path(folder))
    cfg = config.to_dict()
    cfg["versions"] = versions()
    cfg["metrics"] = metrics
    write_text(tmp / CONFIG_FILE, json.dumps(cfg, indent=2, default=float))
    names = [n for n in (MODEL_FILE, STATE_FILE) if (source / n).is_file()]
    for name in names:
        atomic_write(tmp / name, _copier(source / name))
    if (source / STAGE1).is_dir():
        (tmp / STAGE1).mkdir()
        for name in (MODEL_FILE, CONFIG_FILE):
            atomic_write(tmp / STAGE1 / name, _copier(source / STAGE1 / name))
        fsync_dir(tmp / STAGE1)
    fsync_dir(tmp)
    return _swap_in(tmp, Path(folder))


def _complete(folder: Path) -> bool:
    return (folder / MODEL_FILE).is_file() and (folder / CONFIG_FILE).is_file()


def find_checkpoint(path: str | Path) -> Path:
    """Resolve what a user passed: a checkpoint folder, a run folder (-> ``RUN/best``) or a model file."""
    p = Path(path)
    if p.is_file() and p.name in (MODEL_FILE, CONFIG_FILE):
        p = p.parent
    if p.is_dir() and not (p / CONFIG_FILE).is_file():
        for sub in ("best", "last"):
            for cand in (p / sub, p / f"{sub}.old"):
                if _complete(cand):
                    return cand
    if p.is_dir() and _complete(p):
        return p
    old = p.with_name(p.name + ".old")
    if _complete(old):
        return old
    if not p.exists():
        raise CheckpointError(f"{p}: checkpoint not found")
    if is_fold_run(p):
        raise CheckpointError(f"{p}: a K-fold run holds one model per fold; predict, evaluate and export "
                              f"take it whole (an ensemble), elsewhere name one fold ({p / 'fold_0'})")
    raise CheckpointError(f"{p}: not a checkpoint (expected a folder with {MODEL_FILE} and {CONFIG_FILE})")


def is_fold_run(path: str | Path) -> bool:
    """Whether ``path`` is the folder of a K-fold cross-validation run."""
    return (Path(path) / FOLDS_FILE).is_file()


def fold_checkpoints(run: str | Path,
                     folds: list[int] | tuple[int, ...] | None = None) -> list[tuple[int, Path]]:
    """``(fold, checkpoint folder)`` of the members of a K-fold run's ensemble: the folds picked (``folds``),
    or all of them, each of which must have finished (an unfinished one is one error line saying how to
    resume or what to pick)."""
    run = Path(run)
    try:
        record = json.loads((run / FOLDS_FILE).read_text(encoding="utf-8"))
        states = [str(f["state"]) for f in record["folds"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"{run / FOLDS_FILE}: damaged or unreadable K-fold record") from None
    picks = list(range(len(states))) if folds is None else list(dict.fromkeys(int(k) for k in folds))
    wrong = [k for k in picks if not 0 <= k < len(states)]
    if wrong or not picks:
        given = ",".join(map(str, folds or []))
        raise ConfigError(f"--folds {given}: {run} has folds 0 to {len(states) - 1}")
    if folds is None and any(s != "done" for s in states):
        done = [str(k) for k, s in enumerate(states) if s == "done"]
        left = ", ".join(str(k) for k, s in enumerate(states) if s != "done")
        pick = f", or pick finished folds with --folds {','.join(done)}" if done else ""
        raise CheckpointError(f"{run}: fold(s) {left} have not finished; resume the run (train --resume)"
                              + pick)
    return [(k, find_checkpoint(run / f"fold_{k}")) for k in picks]


@dataclass(frozen=True)
class PooledChoices:
    """What a K-fold run chose for its ensemble on all its out-of-fold predictions (``folds.json``'s
    ``pooled``): one temperature for every member and the post-processing; None where it chose nothing (an
    instance model, ``train.calibrate: false``, a value the user gave, a run that did not finish)."""

    temperature: float | None = None
    postprocess: list[PostprocessStep] | None = None


def pooled_choices(run: str | Path) -> PooledChoices:
    """A K-fold run's :class:`PooledChoices` (empty when it has none)."""
    path = Path(run) / FOLDS_FILE
    try:
        pooled = json.loads(path.read_text(encoding="utf-8")).get("pooled") or {}
        temperature, steps = pooled.get("temperature"), pooled.get("postprocess")
        if temperature is not None and not (math.isfinite(float(temperature)) and float(temperature) > 0):
            raise ValueError(temperature)
        return PooledChoices(None if temperature is None else float(temperature),
                             None if steps is None else [PostprocessStep(**s) for s in steps])
    except (OSError, ValueError, AttributeError, TypeError):
        raise CheckpointError(f"{path}: damaged or unreadable K-fold record") from None


@dataclass(frozen=True)
class EnsembleCalibration:
    """``RUN/calibration.json``: the temperature that divides the log of the mean probabilities of the
    ensemble of ``folds``, fitted on a labelled set no fold saw (``unetseg calibrate``)."""

    temperature: float
    folds: tuple[int, ...]


def ensemble_calibration(run: str | Path) -> EnsembleCalibration | None:
    """A K-fold run's :class:`EnsembleCalibration` (None when it has none)."""
    path = Path(run) / CALIBRATION_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        temperature, folds = float(record["temperature"]), tuple(int(k) for k in record["folds"])
        if not (math.isfinite(temperature) and temperature > 0) or len(folds) < 2:
            raise ValueError(temperature)
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"{path}: damaged or unreadable calibration record (unetseg calibrate "
                              "--overwrite fits it again)") from None
    return EnsembleCalibration(temperature, folds)


def parse_config(text: str, source: str) -> Config:
    """A trained model's config from JSON text, fully validated (schema and registries)."""
    raw = load_json(text, source)
    try:
        return check_config(config_from_dict(raw, source=source), source, trained=True)
    except ConfigError as e:
        raise CheckpointError(str(e)) from None


def read_config(folder: str | Path) -> Config:
    folder = find_checkpoint(folder)
    path = folder / CONFIG_FILE
    try:
        text = read_text(path, "checkpoint config")
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    return parse_config(text, str(path))


def check_weights(tensors: dict[str, torch.Tensor], source: str | Path) -> None:
    """Refuse weights with NaN or infinite values (a diverged or damaged checkpoint)."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{source}: weight {name} holds NaN/inf values; this checkpoint is damaged "
                                  "or its training diverged")


def read_weights(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of ``model.safetensors`` (no unpickling), refused when unreadable or not finite."""
    try:
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable weights ({first_line(e)})") from None
    check_weights(tensors, path)
    return tensors


def load_weights(model: torch.nn.Module, path: Path, device: str | torch.device = "cpu",
                 tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Load ``model.safetensors`` (or its already read ``tensors``) into ``model``; every mismatch is one
    CheckpointError line."""
    tensors = read_weights(path, device) if tensors is None else tensors
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    shapes = [k for k in own if k in tensors and tuple(own[k].shape) != tuple(tensors[k].shape)]
    if missing or unexpected or shapes:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                  else f"{shapes[0]} is {tuple(tensors[shapes[0]].shape)}, the model needs "
                  f"{tuple(own[shapes[0]].shape)}")
        raise CheckpointError(f"{path}: weights do not fit the model its config describes ({detail})")
    model.load_state_dict(tensors)


def load_widened(model: torch.nn.Module, path: Path) -> list[str] | None:
    """Start ``model`` from the weights in ``path`` where every tensor fits, but some take more input
    channels (a cascade's second stage from a full-resolution model of the image alone): those keep the
    stored weights for the first channels and zeros for the new ones, so the model starts as the stored one.
    Returns the widened tensors' names, or None (nothing loaded) when the two are other architectures."""
    tensors, own = read_weights(path), model.state_dict()
    if set(tensors) != set(own):
        return None
    widened = []
    for name, mine in own.items():
        theirs = tensors[name]
        if tuple(theirs.shape) == tuple(mine.shape):
            continue
        if (theirs.ndim != mine.ndim or theirs.ndim < 3 or theirs.shape[0] != mine.shape[0]
                or theirs.shape[2:] != mine.shape[2:] or theirs.shape[1] > mine.shape[1]):
            return None
        grown = torch.zeros_like(mine)
        grown[:, : theirs.shape[1]] = theirs
        tensors[name] = grown
        widened.append(name)
    model.load_state_dict(tensors)
    return widened


@dataclass
class Transfer:
    """What :func:`transfer_weights` did, tensor by tensor (names of the model's state dict)."""

    copied: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)  # input weights brought to another channel count
    new: list[str] = field(default_factory=list)  # kept at their fresh initialisation

    def to_dict(self) -> dict[str, Any]:
        return {"copied": len(self.copied), "adapted": self.adapted, "reinitialised": self.new}


def _adapt_input(theirs: torch.Tensor, mine: torch.Tensor) -> torch.Tensor | None:
    """A first convolution's weights for another number of image channels, as timm adapts RGB models: RGB
    -> grey sums the channels (a grey image given as three equal channels gives the same response), grey
    -> N repeats the weights divided by N. Other pairs: None (the layer is new)."""
    if theirs.shape[0] != mine.shape[0] or theirs.shape[2:] != mine.shape[2:]:
        return None
    if mine.shape[1] == 1:
        return theirs.sum(dim=1, keepdim=True)
    if theirs.shape[1] == 1:
        return theirs.repeat(1, mine.shape[1], *([1] * (mine.ndim - 2))) / mine.shape[1]
    return None


STEM = "encoder.0."  # every architecture's first level: the tensors that see the image channels


def transfer_weights(model: torch.nn.Module, path: Path, *, keep_head: bool = True,
                     channels: tuple[int, int] | None = None) -> Transfer:
    """Start ``model`` from the weights in ``path`` wherever a tensor of the same name and shape exists
    (fine-tuning from a model of the same architecture). ``channels``: the stored and the new model's image
    channels when they differ: the first level's input weights are adapted where :func:`_adapt_input` can;
    ``keep_head=False`` leaves the output head new even when its shape fits (the classes mean something
    else). The rest stays as initialised; the returned :class:`Transfer` says which is which."""
    tensors, own = read_weights(path), model.state_dict()
    done, state = Transfer(), {}
    for name, mine in own.items():
        theirs = tensors.get(name)
        head = name.split(".")[0] in ("head", "heads")
        if theirs is None or (head and not keep_head) or theirs.dtype != mine.dtype:
            done.new.append(name)
        elif tuple(theirs.shape) == tuple(mine.shape):
            state[name] = theirs
            done.copied.append(name)
        elif (channels and name.startswith(STEM) and theirs.ndim >= 3 and theirs.shape[1] == channels[0]
              and mine.shape[1] == channels[1] and (grown := _adapt_input(theirs, mine)) is not None):
            state[name] = grown
            done.adapted.append(name)
        else:
            done.new.append(name)
    model.load_state_dict(state, strict=False)
    return done


def check_shapes(model: torch.nn.Module, path: Path) -> None:
    """Compare ``model``'s parameter shapes (a meta-device skeleton: nothing allocated) with the shapes in the
    weights file's header, so a config that describes a far bigger model than its weights is refused
    before anything that size is allocated."""
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable weights ({first_line(e)})") from None
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    wrong = [k for k in own if k in stored and own[k] != stored[k]]
    missing = sorted(set(own) - set(stored))
    if wrong or missing:
        detail = (f"{wrong[0]} is {stored[wrong[0]]}, the model needs {own[wrong[0]]}" if wrong
                  else f"missing {missing[:3]}")
        raise CheckpointError(f"{path}: weights do not fit the model its config describes ({detail})")


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[SegmentationModel, Config]:
    """Build the model a checkpoint describes and load its weights (safetensors: no unpickling)."""
    from unetseg.models import build_model

    folder = find_checkpoint(path)
    config = read_config(folder)
    with torch.device("meta"):
        check_shapes(build_model(config.model.name, **config.model.build_kwargs()), folder / MODEL_FILE)
    model = build_model(config.model.name, **config.model.build_kwargs())
    load_weights(model, folder / MODEL_FILE, device)
    model.to(device).eval()
    return model, config


def load_training_state(folder: str | Path) -> dict[str, Any]:
    """Optimizer/scaler/RNG state for --resume, read without unpickling arbitrary objects."""
    path = Path(folder) / STATE_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means the state is unusable
        raise CheckpointError(f"{path}: training state unreadable ({first_line(e)})") from None
    found = state if isinstance(state, dict) else {}
    missing = [k for k in STATE_KEYS if k not in found]
    if missing:
        raise CheckpointError(f"{path}: training state lacks {', '.join(missing)}; resume from another run "
                              "or start afresh with --overwrite")
    return found

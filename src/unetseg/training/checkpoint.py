"""Checkpoints: a folder with ``model.safetensors`` + ``config.json`` (+ ``state.pt`` for --resume).

Loading for inference never unpickles anything; training state is read with ``weights_only=True``.
Every file is written to a temporary name in the same folder and renamed, and the folder itself is
swapped in by rename, so a kill at any moment leaves the previous checkpoint loadable.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from unetseg.config import Config
from unetseg.errors import CheckpointError

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "state.pt"


def versions() -> dict[str, str]:
    import numpy

    from unetseg import __version__

    return {
        "unetseg": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def _fsync_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module behind DDP / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def save_checkpoint(
    folder: str | Path,
    model: torch.nn.Module,
    config: Config | dict[str, Any],
    metrics: dict[str, Any] | None = None,
    state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder atomically: files go to ``folder.tmp``, which then replaces ``folder``."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    old = folder.with_name(folder.name + ".old")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in unwrap(model).state_dict().items()}
    _fsync_write(tmp / MODEL_FILE, lambda p: save_file(tensors, str(p)))
    cfg = config.to_dict() if isinstance(config, Config) else dict(config)
    cfg["versions"] = versions()
    cfg["metrics"] = metrics or {}
    _fsync_write(tmp / CONFIG_FILE, lambda p: p.write_text(json.dumps(cfg, indent=2, default=float)))
    if state is not None:
        _fsync_write(tmp / STATE_FILE, lambda p: torch.save(state, p))
    # Swap: folder -> folder.old, tmp -> folder, drop old. A kill between the renames leaves
    # folder.old (or folder.tmp) complete; find_checkpoint() falls back to them.
    if folder.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
    return folder


def find_checkpoint(path: str | Path) -> Path:
    """Resolve what a user passed: a checkpoint folder, a run folder (-> ``RUN/best``) or a model file."""
    p = Path(path)
    if p.is_file() and p.name in (MODEL_FILE, CONFIG_FILE):
        p = p.parent
    if p.is_dir() and not (p / CONFIG_FILE).is_file():
        for sub in ("best", "last"):
            if (p / sub / CONFIG_FILE).is_file():
                return p / sub
    if p.is_dir() and (p / CONFIG_FILE).is_file():
        return p
    for sibling in (p.with_name(p.name + ".old"), p.with_name(p.name + ".tmp")):
        if (sibling / MODEL_FILE).is_file() and (sibling / CONFIG_FILE).is_file():
            return sibling
    if not p.exists():
        raise CheckpointError(f"{p}: checkpoint not found")
    raise CheckpointError(f"{p}: not a checkpoint (expected a folder with {MODEL_FILE} and {CONFIG_FILE})")


def read_config(folder: str | Path) -> Config:
    folder = find_checkpoint(folder)
    try:
        raw = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{folder / CONFIG_FILE}: unreadable ({e})") from None
    return Config.from_dict(raw, source=str(folder / CONFIG_FILE))


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Config]:
    """Build the model a checkpoint describes and load its weights (safetensors: no unpickling)."""
    from unetseg.models import build_model

    folder = find_checkpoint(path)
    config = read_config(folder)
    model = build_model(config.model.name, **config.model.build_kwargs())
    try:
        tensors = load_file(str(folder / MODEL_FILE), device=str(device))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{folder / MODEL_FILE}: unreadable weights ({e})") from None
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{folder / MODEL_FILE}: weights do not fit {config.model.name} "
            f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})"
        )
    model.to(device).eval()
    return model, config


def load_training_state(folder: str | Path) -> dict[str, Any]:
    """Optimizer/scheduler/scaler/RNG state for --resume, read without unpickling arbitrary objects."""
    path = Path(folder) / STATE_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means the state is unusable
        raise CheckpointError(f"{path}: training state unreadable ({e})") from None

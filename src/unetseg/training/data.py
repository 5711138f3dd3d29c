"""From a prepared dataset to the training DataLoader (patches, epoch-aware sampling, weight maps)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from unetseg.config import Config
from unetseg.data.dataset import PatchDataset, PreparedData, prepare_data
from unetseg.errors import ConfigError
from unetseg.training.distributed import DistInfo
from unetseg.training.logging import RunLogger


def prepare(cfg: Config, log: RunLogger) -> PreparedData:
    """Read and check the dataset once, then fix the facts the model depends on in ``cfg``."""
    data = prepare_data(cfg)
    cfg.model.in_channels = data.in_channels
    cfg.model.spatial_dims = data.spatial_dims
    cfg.model.num_classes = data.class_map.num_classes
    if cfg.data.patch_size is None:
        cfg.data.patch_size = list(data.default_patch_size)
    if len(cfg.data.patch_size) != data.spatial_dims:
        raise ConfigError(
            f"patch size {cfg.data.patch_size} has {len(cfg.data.patch_size)} sizes but the data is "
            f"{data.spatial_dims}D"
        )
    if data.class_map.num_classes < 2:
        raise ConfigError(f"{cfg.data.data}: the training masks hold a single value {cfg.data.class_values}")
    log.log(f"data: {len(data.train_cases)} training and {len(data.val_cases)} validation cases")
    return data


class EpochSampler(Sampler[int]):
    """Yields global sample indices ``epoch * n + i`` (this rank's share), so each sample's random draw is a
    function of (seed, epoch, i) alone: the same with 0 or N workers, persistent workers, and after resume."""

    def __init__(self, n: int, info: DistInfo) -> None:
        self.n, self.info, self.epoch = n, info, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        base = self.epoch * self.n
        return iter(range(base + self.info.rank, base + self.n, self.info.world_size))

    def __len__(self) -> int:
        return len(range(self.info.rank, self.n, self.info.world_size))


class WithWeightMap(Dataset):
    """Adds the U-Net paper's pixel-wise weight map (computed on the augmented patch) to each sample."""

    def __init__(self, base: Dataset, w0: float, sigma: float) -> None:
        self.base, self.w0, self.sigma = base, w0, sigma

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from unetseg.losses import unet_weight_map

        image, label = self.base[idx]
        w = unet_weight_map(label.numpy(), w0=self.w0, sigma=self.sigma)
        return image, label, torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))


def _weight_map_options(cfg: Config) -> dict[str, Any] | None:
    opt = cfg.train.loss_options.get("weight_map")
    if not opt:
        return None
    return {"w0": 10.0, "sigma": 5.0, **(opt if isinstance(opt, dict) else {})}


def build_loader(data: PreparedData, cfg: Config, device: torch.device, info: DistInfo) -> DataLoader:
    """Patches for one epoch per pass (``iters_per_epoch * batch_size`` samples across all ranks)."""
    per_epoch = cfg.train.iters_per_epoch * cfg.train.batch_size * info.world_size
    dataset: Dataset = PatchDataset(
        data.train_cases,
        cfg.data.patch_size,
        data_cfg=cfg.data,
        augment_cfg=cfg.augment,
        class_map=data.class_map,
        samples_per_epoch=per_epoch,
        seed=cfg.train.seed,
        cache=cfg.data.cache,
    )
    wm = _weight_map_options(cfg)
    if wm is not None:
        dataset = WithWeightMap(dataset, **wm)
    workers = max(0, int(cfg.data.num_workers))
    return DataLoader(
        dataset,
        batch_size=cfg.train.batch_size,
        sampler=EpochSampler(per_epoch, info),
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
        drop_last=True,
        prefetch_factor=4 if workers > 0 else None,
    )

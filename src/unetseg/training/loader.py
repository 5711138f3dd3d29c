"""From a prepared dataset to the training DataLoader (patches, epoch-aware sampling, weight maps)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from unetseg.config import Config
from unetseg.data.prepare import PreparedData
from unetseg.data.sampling import PatchDataset
from unetseg.training.distributed import DistInfo


class EpochSampler(Sampler[int]):
    """Yields global sample indices ``epoch * n + i`` (this rank's share), so each sample's random draw is a
    function of (seed, epoch, i) alone: the same with 0 or N workers, persistent workers, and after resume.
    ``set_epoch(epoch, skip)`` starts after the first ``skip`` batches' worth of this rank's samples (a run
    resumed from a checkpoint saved in the middle of an epoch)."""

    def __init__(self, n: int, info: DistInfo, batch_size: int = 1) -> None:
        self.n, self.info, self.batch_size = n, info, batch_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_batches * self.batch_size

    def _indices(self) -> range:
        base = self.epoch * self.n
        return range(base + self.info.rank, base + self.n, self.info.world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.skip :])

    def __len__(self) -> int:
        return len(self._indices()[self.skip :])


class WithWeightMap(Dataset):
    """Adds the U-Net paper's pixel-wise weight map (computed on the augmented patch) to each sample."""

    def __init__(self, base: PatchDataset, w0: float, sigma: float) -> None:
        self.base, self.w0, self.sigma = base, w0, sigma

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from unetseg.data.instances import unet_weight_map

        image, label = self.base[idx]
        w = unet_weight_map(label.numpy(), w0=self.w0, sigma=self.sigma)
        return image, label, torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))


class InstanceTargets(Dataset):
    """Instance patches -> the class target of ``data.instance_target`` (the 3-class map or the distance
    bins) and, with ``weight``, the U-Net paper's weight map over objects, both derived after augmentation
    (so a deformation moves ids and targets together)."""

    def __init__(self, base: PatchDataset, weight: dict[str, float] | None,
                 target: str = "three_class") -> None:
        self.base, self.weight, self.target = base, weight, target

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, ...]:
        from unetseg.data.instances import INTERIOR, instance_target, instance_weight_map, three_class_target

        image, labels = self.base[idx]
        ids = labels.numpy()
        target = instance_target(ids, self.target)
        out = (image, torch.from_numpy(target.astype(np.int64)))
        if self.weight is None:
            return out
        # the border term lies on the 3-class map's boundaries whatever the network learns
        interior = (target if self.target == "three_class" else three_class_target(ids)) == INTERIOR
        w = instance_weight_map(ids, self.weight["w0"], self.weight["sigma"], target=target,
                                interior=interior)
        return (*out, torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)))


def weight_map_options(cfg: Config) -> dict[str, float] | None:
    opt = cfg.train.loss_options.get("weight_map")
    if not opt:
        return None
    return {"w0": 10.0, "sigma": 5.0, **(opt if isinstance(opt, dict) else {})}


def epoch_sampler(loader: DataLoader) -> EpochSampler:
    """The sampler of a :func:`build_loader` loader (to start an epoch)."""
    assert isinstance(loader.sampler, EpochSampler)
    return loader.sampler


def build_loader(data: PreparedData, cfg: Config, device: torch.device, info: DistInfo) -> DataLoader:
    """Patches for one epoch per pass (``iters_per_epoch * batch_size`` samples across all ranks)."""
    per_epoch = cfg.train.iters_per_epoch * cfg.train.batch_size * info.world_size
    patches = PatchDataset(
        data.train_cases,
        data.patch_size,
        data_cfg=cfg.data,
        augment_cfg=cfg.augment,
        samples_per_epoch=per_epoch,
        seed=cfg.train.seed,
        store=data.store,
    )
    dataset: Dataset = patches
    wm = weight_map_options(cfg)
    if cfg.data.task == "instances":
        dataset = InstanceTargets(patches, wm, cfg.data.instance_target)
    elif wm is not None:
        dataset = WithWeightMap(patches, **wm)
    workers = int(cfg.data.num_workers)
    return DataLoader(
        dataset,
        batch_size=cfg.train.batch_size,
        sampler=EpochSampler(per_epoch, info, cfg.train.batch_size),
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
        drop_last=True,
        prefetch_factor=4 if workers > 0 else None,
    )

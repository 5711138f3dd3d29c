"""Run by test_distributed.py under torchrun: train, then save this rank's weights for comparison."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from unetseg.config import Config
from unetseg.training.distributed import cleanup, init_distributed
from unetseg.training.trainer import Trainer

data, run, dump = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
cfg = Config()
cfg.data.data = str(data)
cfg.data.patch_size = [32, 32]
cfg.data.num_workers = 0
cfg.model.base_channels = 4
cfg.model.depth = 2
cfg.model.options = {"dropout": 0.1}  # rank-local randomness must not make the replicas drift apart
cfg.train.out = str(run)
cfg.train.epochs = 2
cfg.train.iters_per_epoch = 3
cfg.train.batch_size = 2
cfg.train.precision = "fp32"
info, device = init_distributed(torch.device("cpu"))
trainer = Trainer(cfg, device, info, resume=False, quiet=True)
trainer.fit()
save_file(
    {k: v.contiguous() for k, v in trainer.model.state_dict().items()},
    str(dump / f"rank{info.rank}.safetensors"),
)
cleanup(info)

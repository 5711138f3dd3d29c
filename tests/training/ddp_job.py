"""Run by test_distributed.py under torchrun: train, then save this rank's weights for comparison.

Arguments: DATA RUN DUMP [budget]. With ``budget`` the run has a few seconds' time budget and many epochs,
and rank 1's clock runs ahead of rank 0's, as on nodes that started apart: only rank 0's clock may decide
the learning rate and the last step, or the replicas would drift apart or rank 1 would leave alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from unetseg.config import Config
from unetseg.runtime import leave_process
from unetseg.training.distributed import cleanup, init_distributed, synchronize
from unetseg.training.run import open_run
from unetseg.training.trainer import Trainer

data, run, dump = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
budget = sys.argv[4:] == ["budget"]
cfg = Config()
cfg.data.data = str(data)
cfg.data.patch_size = [32, 32]
cfg.data.num_workers = 0
cfg.model.base_channels = 4
cfg.model.depth = 2
cfg.model.options = {"dropout": 0.1}  # rank-local randomness must not make the replicas drift apart
cfg.train.out = str(run)
cfg.train.epochs = 10_000 if budget else 2
cfg.train.max_minutes = 0.05 if budget else None
cfg.train.iters_per_epoch = 3
cfg.train.batch_size = 2
cfg.train.precision = "fp32"
info, device = init_distributed(torch.device("cpu"))
folder = open_run(run, resume=False, overwrite=False, inputs=[], main=info.is_main)
synchronize(info)  # as train(): every rank has checked the folder before rank 0 writes into it
trainer = Trainer(cfg, device, info, folder, resume=False, quiet=True)
if budget and info.rank == 1:
    trainer.minutes_before = 0.03
trainer.fit()
save_file(
    {k: v.contiguous() for k, v in trainer.model.state_dict().items()},
    str(dump / f"rank{info.rank}.safetensors"),
)
del trainer
cleanup(info, finished=True)
leave_process(0)  # as the command line does: torch's teardown of the group DDP kept can abort a rank

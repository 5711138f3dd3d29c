"""Run by test_crossval.py under torchrun: a 2-fold cross-validation, unplanned and tiny.

Arguments: DATA RUN.
"""

from __future__ import annotations

import sys

from unetseg.config import Config
from unetseg.runtime import leave_process
from unetseg.training import train

cfg = Config()
cfg.data.data, cfg.train.out = sys.argv[1], sys.argv[2]
cfg.data.patch_size, cfg.data.num_workers = [32, 32], 0
cfg.model.base_channels, cfg.model.depth = 4, 2
cfg.train.folds, cfg.train.epochs, cfg.train.iters_per_epoch = 2, 2, 3
cfg.train.batch_size, cfg.train.precision = 2, "fp32"
train(cfg, quiet=True)
leave_process(0)  # as the command line does (see unetseg.runtime)

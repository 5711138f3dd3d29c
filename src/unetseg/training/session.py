"""A training session: :func:`train` checks the whole configuration and the run folder before any data is
read, plans what the user did not give, lets a timed probe settle what the planner's rules could not, then
drives a :class:`~unetseg.training.trainer.Trainer`; Ctrl-C and SIGTERM end it with the resume command."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from unetseg import checkpoint as ckpt
from unetseg.config import Config
from unetseg.data.splits import check_groups
from unetseg.errors import CheckpointError, TrainingError
from unetseg.inference.zoo import is_package
from unetseg.planning.finetune import adopt, check_conflicts, open_source
from unetseg.planning.plan import FoldBudget
from unetseg.runtime import configure_process, resolve_device
from unetseg.training import crossval
from unetseg.training.cascade import plan_cascade, second_stage
from unetseg.training.distributed import DistInfo, broadcast_object, cleanup, init_distributed, synchronize
from unetseg.training.finetune import PACKAGE_SOURCE, unpack_package
from unetseg.training.interrupt import Termination, caused_by_ctrl_c, termination
from unetseg.training.probe import Trial, run_probe
from unetseg.training.run import RunFolder, TrainingInterrupted, interrupted_message, open_run, write_plan
from unetseg.training.state import rng_state, set_rng_state
from unetseg.training.trainer import Trainer
from unetseg.validate import check_config


def train(
    cfg: Config,
    resume: bool = False,
    quiet: bool = False,
    *,
    overwrite: bool = False,
    config_file: str | Path | None = None,
    resume_hint: str | None = None,
    given: set[str] | None = None,
    cancel: Termination | None = None,
) -> Path:
    """Train the model ``cfg`` describes on ``cfg.data.data``; return the run folder.

    ``resume`` continues ``RUN/last``; ``overwrite`` replaces an earlier run in ``cfg.train.out`` (kept until
    the new run's first checkpoint); ``config_file`` is the recipe the config came from (never rewritten).
    ``given``: the dotted keys the user set (command line and YAML); when it is not None, the planner
    (:mod:`unetseg.planning`) chooses every other option from the data, the device and the time budget,
    prints its table and writes ``RUN/plan.yaml``.
    Under ``torchrun`` every process calls this; DDP, sharded sampling and synchronised validation follow
    from the environment, and only rank 0 writes files. While it runs, the global RNGs (torch, numpy,
    random) are seeded with ``train.seed`` and SIGTERM is handled; both are given back when it returns.
    ``cfg`` itself is never changed (the plan and the probe fill in a copy). Ctrl-C or SIGTERM raise
    :class:`~unetseg.training.run.TrainingInterrupted` with the resume command (``resume_hint``), and so does
    ``cancel.request(...)`` from another thread (the last step is saved as on SIGTERM). ``train.folds`` K > 1
    trains a K-fold cross-validation in the run folder (:mod:`unetseg.training.crossval`).
    """
    # every option, before any data is read; the per-axis sizes once the data's dimensions are known (the
    # plan, or the trainer's data), unless the dimensionality was given
    check_config(cfg, "configuration", dims=given is not None and "model.spatial_dims" in given)
    cfg = cfg.copy_deep()  # the plan and the probe fill in values: never in the caller's Config
    if cfg.train.out is None:
        raise TrainingError("train needs an output folder (--out RUN / train.out)")
    check_groups(cfg.data)  # every image has a group, before any image is read
    crossval.check_request(cfg)
    package = cfg.train.init_from if cfg.train.init_from and is_package(cfg.train.init_from) else None
    if cfg.train.init_from and not resume and package is None:  # checked before any data is read
        _adopt_source(cfg, given)
    info, device = init_distributed(resolve_device(cfg.train.device))
    finished = False  # every rank got to the end: they leave the process group together
    run, caller_rng = None, rng_state()  # the run seeds the global RNGs; the caller gets its own back
    try:
        inputs = [(cfg.data.data, "--data"), (cfg.data.val_data, "--val-data"), (config_file, "--config")]
        run = open_run(cfg.train.out, resume=resume, overwrite=overwrite, inputs=inputs, main=info.is_main)
        synchronize(info)  # every rank has checked --out before rank 0 writes into it
        if package is not None:  # a bioimage.io package: its network as a checkpoint in the run folder
            unpacked = unpack_package(package, run.path / PACKAGE_SOURCE, resume, info.is_main)
            cfg.train.init_from = str(unpacked)
            synchronize(info)
            if not resume:
                _adopt_source(cfg, given)
        configure_process(device)
        if crossval.requested(cfg, run.path, resume):
            with termination(cancel) as stop:
                done = crossval.cross_validate(cfg, run, device, info, quiet=quiet, stop=stop,
                                               hint=resume_hint, given=given, resume=resume, plan=_plan)
                finished = True
                return done
        # a resumed run without a checkpoint (stopped while planning or probing) plans again
        fresh = not (resume and _has_checkpoint(run.path))
        candidates, fine = _plan(cfg, given, run, info, quiet) if given is not None and fresh else ([], None)
        with termination(cancel) as stop:
            try:
                start = run_probe(cfg, candidates, device, info, run, quiet, stop, resume_hint,
                                  given or set())
                spent = start.minutes if start else 0.0
                cascade = plan_cascade(cfg, run, info, quiet, fine=fine, spent=spent, fresh=fresh)
                if cascade is None or cascade.stage == "1":
                    trainer = Trainer(cfg, device, info, run, resume=resume and start is None, quiet=quiet,
                                      stop=stop, hint=resume_hint, fixed=given, start=start,
                                      until=cascade.stage1_until if cascade else None, calibrate=True)
                    trainer.fit()
                    if cascade is not None:
                        cascade.stage1_minutes = trainer.minutes_done
                        cascade.stage1_score = trainer.best if trainer.best >= 0 else None
                if cascade is not None and cascade.stage != "done":
                    second_stage(cfg, cascade, run, device, info, quiet, stop, resume_hint)
                finished = True
                return run.path
            except BaseException as e:
                if not caused_by_ctrl_c(e):  # also a Ctrl-C that an extension's import wrapped
                    raise
                raise TrainingInterrupted(
                    interrupted_message(run.path, resume_hint, "interrupted (Ctrl-C)", False), 130
                ) from None
    except BaseException:
        if run is not None and info.is_main:
            run.roll_back()  # only while the new run has no checkpoint of its own
        raise
    finally:
        set_rng_state(caller_rng)
        cleanup(info, finished=finished)


def _adopt_source(cfg: Config, given: set[str] | None) -> None:
    """A fine-tune's source, refused in one line when it cannot start this run; without a plan, its
    architecture set on ``cfg`` (the planner does it with reasons)."""
    source = open_source(str(cfg.train.init_from))
    check_conflicts(cfg, given or set(), source)
    if given is None:
        adopt(cfg, set(), source)


def _has_checkpoint(run: Path) -> bool:
    try:
        ckpt.find_checkpoint(run / "last")
        return True
    except CheckpointError:
        return False


def _plan(cfg: Config, given: set[str], run: RunFolder, info: DistInfo, quiet: bool,
          budget: FoldBudget | None = None) -> tuple[list[Trial], dict[str, Any] | None]:
    """Plan what the user did not give (rank 0 plans; under torchrun every rank applies rank 0's values,
    so the replicas are the same network); print the table; keep the recipe in RUN/plan.yaml. Returns the
    candidates a probe should compare (the plan's choice first; none when the rules are sure) and a coarse
    plan's full-resolution values for a cascade's second stage (or None). ``budget``: a K-fold run's, whose
    per-fold share ``cfg.train.max_minutes`` is: the table says why, the recipe keeps the whole budget."""
    from rich.console import Console

    from unetseg.planning import make_plan
    from unetseg.planning.plan import apply_values
    from unetseg.planning.report import describe, show_plan

    plan = make_plan(cfg, given) if info.is_main else None
    if plan is not None and budget is not None:
        plan.explain("train.max_minutes", budget.reason)
        plan.estimate = f"each of {cfg.train.folds} folds {plan.estimate}"
    shared = broadcast_object(
        ([(p.name, p.planned(), describe(p), p.header()) for p in [plan, *plan.alternatives]],
         plan.fine.planned() if plan.fine is not None else None)
        if plan is not None else None,
        info,
    )
    assert isinstance(shared, tuple)
    rows, fine = shared
    apply_values(cfg, rows[0][1])
    check_config(cfg, "the plan")
    if plan is not None:
        show_plan(plan, Console(stderr=True, quiet=quiet, width=None if sys.stderr.isatty() else 140))
        recipe = cfg.copy_deep()
        if budget is not None:  # the recipe of the whole K-fold run
            recipe.train.max_minutes = budget.whole
        write_plan(run, plan.recipe(recipe))
    return ([Trial(*row) for row in rows] if len(rows) > 1 else []), fine

"""``unetseg calibrate``: the temperature of a K-fold run's ensemble, fitted on a labelled set no fold saw.

A K-fold run calibrates nothing for its ensemble: its out-of-fold predictions each come from one fold, and
the mean of several folds' probabilities is less sure than any one of them, so a temperature fitted on
them would make the ensemble under-confident (measured in BENCHMARKS.md). The members therefore predict at
temperature 1 and the ensemble is as sure as its average. This command predicts a labelled set with the
ensemble (as ``predict`` does, TTA included, without temperature), fits one temperature on a pixel sample
of it by the rules a single model's validation fit follows (:func:`~unetseg.calibration.fit_heldout`: kept
only when it lowers the calibration error and is not at the search bound) and writes it to
``RUN/calibration.json``. From then on ``predict``, ``evaluate``, ``unetseg.load(RUN)`` and exports divide
the ensemble's logits, the log of its members' mean probabilities, by it, whenever they use the same folds.

Images whose names are among the run's training cases are refused: calibrated on what the members saw, the
ensemble would be made more sure of itself, not less.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from unetseg.calibration import HeldOutFit, fit_heldout
from unetseg.checkpoint import CALIBRATION_FILE, FOLDS_FILE, fold_checkpoints, is_fold_run, package_version
from unetseg.config import Config
from unetseg.data.cases import Case, find_cases
from unetseg.data.store import label_map, load_case
from unetseg.errors import CheckpointError, ConfigError, DataError
from unetseg.fileio import OutputGuard, printable, record_written, write_json
from unetseg.inference.api import predict_full, predictor_for
from unetseg.inference.engines import load_engine
from unetseg.inference.predictor import Predictor
from unetseg.io.images import SkipLog


def calibrate(
    run: str | Path,
    data: str | Path,
    *,
    folds: Sequence[int] | None = None,
    tta: bool | None = None,
    device: str = "auto",
    precision: str = "auto",
    skip_bad: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
) -> HeldOutFit:
    """Fit the temperature of the ensemble of ``run``'s folds (``folds``: of these, at least two) on the
    labelled images of ``data`` and write it to ``RUN/calibration.json`` (see the module doc). ``tta``: as
    the ensemble will predict (None: its own setting). Returns what the fit measured."""
    run = Path(run)
    if not is_fold_run(run):
        raise ConfigError(f"{run}: not a K-fold run ({FOLDS_FILE} missing); a single model is calibrated on "
                          "its validation images when it trains, calibrate fits a K-fold run's ensemble")
    members = fold_checkpoints(run, tuple(folds) if folds is not None else None)
    if len(members) < 2:
        raise ConfigError(f"--folds: one fold is a single model, calibrated when it trained; calibrate fits "
                          f"an ensemble of two or more folds of {run}")
    out = run / CALIBRATION_FILE
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise ConfigError(f"{out}: the ensemble is calibrated already; pass --overwrite to fit it again")
    skipped = SkipLog()
    cases = find_cases(data, require_masks=True, skip_bad=skip_bad, skip=skipped)
    _refuse_training_cases(run, cases)
    guard = OutputGuard()
    for case in cases:
        guard.read_all(case.files, "--data")
    guard.write(out, "--checkpoint")
    guard.check(overwrite=True)  # an earlier record was refused above unless --overwrite
    engine, cfg = load_engine(run, device, precision, folds=tuple(k for k, _ in members))
    if cfg.data.task != "semantic":
        raise ConfigError(f"{run}: an instance model's ensemble gives object ids, not probabilities to "
                          "calibrate")
    predictor = predictor_for(engine, cfg, tta=tta, temperature=1.0)  # the ensemble as it is, uncalibrated
    fit = fit_heldout(_pairs(cases, predictor, cfg, skipped, skip_bad), label_map(cfg.data).num_classes,
                      postprocess=False, source=f"calibration set {printable(data)}")
    if fit.images == 0:
        raise DataError(f"{data}: no image could be read to calibrate on")
    record: dict[str, Any] = {
        "temperature": fit.temperature, "folds": [k for k, _ in members], "data": str(data),
        "tta": predictor.tta, "unetseg": package_version(), "fit": fit.to_dict()}
    write_json(out, record)
    record_written([out])
    console = Console(stderr=True, quiet=quiet)
    skipped.summary()
    line = summary_line(fit, [k for k, _ in members], out)
    console.print(line, soft_wrap=True, markup=False, highlight=False)  # one line, paths as they are
    return fit


def summary_line(fit: HeldOutFit, folds: list[int], out: Path) -> str:
    """What the fit found, in one line."""
    head = (f"ensemble of folds {','.join(map(str, folds))} on {fit.images} image(s), {fit.pixels} pixels: "
            f"temperature {fit.temperature_fitted:.3g}")
    if fit.temperature_note:
        return f"{head} {fit.temperature_note}; the ensemble predicts as it is (1). Wrote {printable(out)}"
    return (f"{head}, calibration error {fit.ece_before:.4f} -> {fit.ece_after:.4f}. Wrote {printable(out)}")


def _pairs(cases: list[Case], predictor: Predictor, cfg: Config, skipped: SkipLog, skip_bad: bool
           ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(probabilities, true class indices) of each case at its own grid, one at a time."""
    labels_of = label_map(cfg.data)
    for case in cases:
        try:
            image, labels, meta = load_case(case, cfg.data, labels_of)
        except DataError as e:
            if not skip_bad:
                raise
            skipped.skip(e)
            continue
        assert labels is not None  # find_cases(require_masks=True)
        got = predict_full(predictor, image, meta.get("spacing"), cfg, probabilities=True, postprocess=False)
        assert got.probabilities is not None
        yield got.probabilities, labels


def _refuse_training_cases(run: Path, cases: list[Case]) -> None:
    """One line naming a calibration image the run trained on (by its case name)."""
    try:
        record = json.loads((run / FOLDS_FILE).read_text(encoding="utf-8"))
        seen = {str(name) for fold in record["folds"] for name in fold["cases"]}
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"{run / FOLDS_FILE}: damaged or unreadable K-fold record") from None
    for case in cases:
        if case.name in seen:
            raise DataError(f"{case.image_paths[0]}: case {case.name!r} is one the run trained on; calibrate "
                            "needs labelled images that no fold saw")

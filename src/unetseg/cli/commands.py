"""The ``unetseg`` command: a thin Typer layer that parses options into a Config and calls the Python API.

User mistakes (:class:`UnetsegError`, and the command line's own usage errors) print one ``error:`` line and
exit with status 2; an interrupted training prints where its checkpoint is and exits 130 (Ctrl-C) or 143
(SIGTERM). Tracebacks are for bugs. Choices in the help come from the registries and the config schema.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer

try:  # typer >= 0.22 carries its own copy of click
    from typer._click import exceptions as usage
except ImportError:  # pragma: no cover - older typer on click
    from click import exceptions as usage  # type: ignore[no-redef]  # the same module, from click: mypy sees two

from unetseg.cli.parsing import (
    TRAIN_KEYS,
    expand_multi,
    fold_option,
    resume_hint,
    size_option,
    train_sources,
)
from unetseg.config import build_config, given_keys
from unetseg.config.schema import choices
from unetseg.errors import UnetsegError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Biomedical image segmentation with the U-Net family.",
)
Opt = typer.Option
P = ParamSpec("P")
R = TypeVar("R")


def _one_of(section: str, name: str) -> str:
    return " | ".join(str(c) for c in choices(section, name))


def user_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """The one place where user errors become one line and an exit status."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from unetseg.training.run import TrainingInterrupted

        try:
            return fn(*args, **kwargs)
        except TrainingInterrupted as e:
            typer.echo(str(e), err=True)
            raise typer.Exit(e.exit_code) from None
        except UnetsegError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None

    return wrapper


@app.command()
@user_errors
def models() -> None:
    """List the architectures with their parameter counts (default configuration, 2D, 1 -> 2 classes)."""
    import torch
    from rich.console import Console
    from rich.table import Table

    from unetseg.models import available_models, build_model, count_parameters, describe_model

    table = Table(title="unetseg architectures (2D, in=1, classes=2, base 32, depth 4)")
    for col in ("name", "parameters", "3D parameters", "description"):
        table.add_column(col, justify="right" if "param" in col else "left")
    for name in available_models():
        with torch.device("meta"):  # counting needs shapes only, not initialised weights
            p2 = count_parameters(build_model(name, spatial_dims=2))
            p3 = count_parameters(build_model(name, spatial_dims=3))
        table.add_row(name, f"{p2:,}", f"{p3:,}", describe_model(name))
    Console().print(table)


@app.command()
@user_errors
def train(
    ctx: typer.Context,
    data: Annotated[Path | None, Opt(help="dataset folder (images/ + masks/, or nnU-Net raw)")] = None,
    out: Annotated[
        Path | None, Opt(help="run folder (best/, last/, metrics.csv, curves.png, log.txt)")
    ] = None,
    # help texts name no registry: listing one would load torch for every --help
    model: Annotated[str | None, Opt(help="architecture (`unetseg models` lists them)")] = None,
    config: Annotated[Path | None, Opt(help="YAML recipe; command-line options override it")] = None,
    val_data: Annotated[Path | None, Opt(help="separate validation folder")] = None,
    val_fraction: Annotated[
        float | None, Opt(help="share of cases held out when --val-data is absent")
    ] = None,
    base_channels: Annotated[int | None, Opt(help="width of the first level, doubled per level")] = None,
    depth: Annotated[int | None, Opt(help="number of down-steps")] = None,
    option: Annotated[list[str] | None, Opt(help="any other model option, KEY=VALUE (repeatable)")] = None,
    epochs: Annotated[int | None, Opt(help="an upper bound when --max-minutes is given")] = None,
    iters_per_epoch: Annotated[int | None, Opt(help="training batches per epoch")] = None,
    max_minutes: Annotated[float | None, Opt(help="stop cleanly after this many minutes")] = None,
    patch_size: Annotated[list[int] | None, Opt(help="H W or D H W")] = None,
    downsample: Annotated[list[float] | None, Opt(
        help="train at a coarser resolution: a factor per axis (H W or D H W), e.g. 2 2")] = None,
    probe: Annotated[str | None, Opt(
        help="auto | on | off: time the candidate resolutions when the rules are not sure")] = None,
    cascade: Annotated[str | None, Opt(
        help="auto | on | off: after a coarse run, a full-resolution stage that sees its prediction "
             "(auto: 3D, 4x fewer voxels, 15 minutes left); kept when it validates better")] = None,
    init_from: Annotated[Path | None, Opt(
        help="fine-tune: start from this run or checkpoint (its architecture; new stem/head when the "
             "channels or classes differ)")] = None,
    log: Annotated[str | None, Opt(
        help="also log to tensorboard and/or mlflow (comma-separated; extras [tensorboard], [mlflow])"
    )] = None,
    folds: Annotated[int | None, Opt(
        help="K-fold cross-validation: K models sharing --max-minutes, out-of-fold predictions, RUN/cv.json; "
             "the run predicts with their ensemble")] = None,
    groups: Annotated[Path | None, Opt(
        help="CSV of stem,group rows: images of one group (patient, slide, sequence) stay on one side of "
             "every split")] = None,
    groups_pattern: Annotated[str | None, Opt(
        help="the group is the stem's first capture group, e.g. '^(P\\d+)_'")] = None,
    batch_size: Annotated[int | None, Opt()] = None,
    loss: Annotated[str | None, Opt(help="loss: dice_ce, dice, ce, focal, tversky, lovasz, ...")] = None,
    lr: Annotated[float | None, Opt(help="peak learning rate")] = None,
    optimizer: Annotated[str | None, Opt(help=_one_of("train", "optimizer"))] = None,
    schedule: Annotated[str | None, Opt(help=_one_of("train", "schedule"))] = None,
    device: Annotated[str | None, Opt(help="auto | cpu | cuda | cuda:N")] = None,
    precision: Annotated[str | None, Opt(help=_one_of("train", "precision"))] = None,
    classes: Annotated[
        str | None, Opt(help="mask values in class order, e.g. 0,128,255; 0,1+2+3 merges")
    ] = None,
    task: Annotated[str | None, Opt(help=_one_of("data", "task"))] = None,
    normalization: Annotated[str | None, Opt(help=_one_of("data", "normalization"))] = None,
    seed: Annotated[int | None, Opt()] = None,
    patience: Annotated[int | None, Opt(help="early stopping: validations without improvement")] = None,
    workers: Annotated[int | None, Opt(help="DataLoader worker processes")] = None,
    max_image_gib: Annotated[float | None, Opt(help="largest image to decode, as float32 GiB")] = None,
    compile: Annotated[bool, Opt("--compile", help="torch.compile the model")] = False,
    skip_bad: Annotated[bool, Opt("--skip-bad", help="report and skip bad image/mask pairs")] = False,
    resume: Annotated[bool, Opt("--resume", help="continue the run in --out from RUN/last")] = False,
    overwrite: Annotated[bool, Opt("--overwrite", help="replace an earlier run in --out")] = False,
    no_plan: Annotated[bool, Opt("--no-plan", help="built-in defaults instead of the planner")] = False,
) -> None:
    """Train a segmentation model on a dataset folder; every option not given (here or in --config) is
    planned from the data, the device and the time budget (see `unetseg plan`)."""
    from unetseg.training import train as run_training

    opts = dict(locals())
    sources = train_sources(opts)
    cfg = build_config(sources)
    if cfg.data.data is None:
        raise UnetsegError("train needs --data DIR (or data: in the YAML config)")
    if cfg.train.out is None:
        raise UnetsegError("train needs --out RUN (or out: in the YAML config)")
    run_training(
        cfg,
        resume=resume,
        overwrite=overwrite,
        config_file=config,
        given=None if no_plan else given_keys(sources),
        resume_hint=resume_hint((ctx.obj or {}).get("argv", sys.argv[1:])),
    )


@app.command()
@user_errors
def plan(
    data: Annotated[Path, Opt(help="dataset folder (images/ + masks/, or nnU-Net raw)")],
    max_minutes: Annotated[float | None, Opt(help="the training budget to plan for")] = None,
    device: Annotated[str | None, Opt(help="auto | cpu | cuda | cuda:N")] = None,
    out: Annotated[Path | None, Opt(help="write the plan as a YAML recipe (train --config reads it)")] = None,
    config: Annotated[Path | None, Opt(help="YAML recipe: its values are kept, the rest is planned")] = None,
    classes: Annotated[
        str | None, Opt(help="mask values in class order, e.g. 0,128,255; 0,1+2+3 merges")
    ] = None,
    task: Annotated[str | None, Opt(help=_one_of("data", "task"))] = None,
    folds: Annotated[int | None, Opt(help="plan a K-fold run: --max-minutes is shared by the folds")] = None,
    overwrite: Annotated[
        bool, Opt("--overwrite", help="replace an --out file unetseg did not write")
    ] = False,
) -> None:
    """Fingerprint a dataset and plan a recipe for it: every choice with its reason, as a table and YAML."""
    from rich.console import Console

    from unetseg.fileio import OutputGuard, record_written, write_text
    from unetseg.planning import make_plan
    from unetseg.planning.plan import fold_budget
    from unetseg.planning.report import probe_notes, show_plan

    opts: dict[str, Any] = {name: None for name in TRAIN_KEYS} | {"patch_size": None, "downsample": None,
                                                                  "option": None, "config": config}
    opts.update(data=data, max_minutes=max_minutes, device=device, classes=classes, task=task, folds=folds)
    sources = train_sources(opts)
    cfg, given = build_config(sources), given_keys(sources)
    if out is not None:
        guard = OutputGuard()
        guard.read(data, "--data")
        guard.read(config, "--config")
        guard.write(out, "--out")
        guard.check(overwrite=overwrite)
    budget = fold_budget(cfg, given) if cfg.train.folds > 1 else None
    if budget is not None:  # a K-fold run: each fold is planned for its share
        cfg.train.max_minutes, given = budget.per_fold, given | {"train.max_minutes"}
    result = make_plan(cfg, given)
    if budget is not None:
        result.explain("train.max_minutes", budget.reason)
    result.apply(cfg)
    if budget is not None:
        cfg.train.max_minutes = budget.whole  # the recipe of the whole run
    show_plan(result, Console(stderr=True, width=None if sys.stderr.isatty() else 140))
    if out is not None:
        record_written([write_text(out, result.recipe(cfg, probe_notes(result)))])
        typer.echo(f"wrote {out}; train with: unetseg train --config {out} --out RUN")


def _infer_overrides(
    tile: list[int] | None, overlap: float | None, batch_size: int | None, blend: str | None
) -> dict[str, Any]:
    """Validate predict/evaluate's inference options with the schema (one rule for every source)."""
    values = {
        "infer.tile": size_option(tile, "--tile"),
        "infer.overlap": overlap,
        "infer.batch_size": batch_size,
        "infer.blend": blend,
    }
    build_config([({k: v for k, v in values.items() if v is not None}, "command line")])
    return {"tile": values["infer.tile"], "overlap": overlap, "batch_size": batch_size, "blend": blend}


@app.command()
@user_errors
def evaluate(
    checkpoint: Annotated[Path, Opt(help="checkpoint or run folder (-> best/), .onnx or bioimage.io .zip")],
    data: Annotated[Path, Opt(help="dataset folder with images/ and masks/")],
    out: Annotated[Path | None, Opt(help="write metrics as strict JSON")] = None,
    overlays: Annotated[Path | None, Opt(help="write side-by-side PNGs here")] = None,
    report: Annotated[Path | None, Opt(help="write a self-contained HTML report")] = None,
    tile: Annotated[list[int] | None, Opt(help="tile size H W or D H W; default: the checkpoint's")] = None,
    overlap: Annotated[float | None, Opt(help="tile overlap in [0, 1)")] = None,
    blend: Annotated[str | None, Opt(help=_one_of("infer", "blend"))] = None,
    tta: Annotated[bool, Opt("--tta", help="average over flips")] = False,
    batch_size: Annotated[int | None, Opt(help="tiles per forward pass")] = None,
    device: Annotated[str, Opt(help="auto | cpu | cuda")] = "auto",
    precision: Annotated[str, Opt(help=_one_of("train", "precision"))] = "auto",
    skip_bad: Annotated[bool, Opt("--skip-bad", help="report bad pairs and go on")] = False,
    overwrite: Annotated[
        bool, Opt("--overwrite", help="replace existing outputs unetseg did not write")
    ] = False,
    trust_torchscript: Annotated[
        bool,
        Opt(
            "--trust-torchscript",
            help="load a TorchScript file: it is a program and can run any code; only for files you made",
        ),
    ] = False,
    folds: Annotated[str | None, Opt(
        help="a K-fold run: predict with these folds only, e.g. 0,2 (default: the ensemble of all)")] = None,
) -> None:
    """Segment a labelled dataset and report per-image and mean metrics per class."""
    from unetseg.evaluation import evaluate as run_evaluate

    run_evaluate(
        checkpoint,
        data,
        out_json=out,
        overlays=overlays,
        report=report,
        tta=tta,
        device=device,
        precision=precision,
        skip_bad=skip_bad,
        overwrite=overwrite,
        trust_torchscript=trust_torchscript,
        folds=fold_option(folds),
        **_infer_overrides(tile, overlap, batch_size, blend),
    )


@app.command()
@user_errors
def calibrate(
    checkpoint: Annotated[Path, Opt(help="a K-fold run folder (train --folds K)")],
    data: Annotated[Path, Opt(help="labelled images no fold saw: a folder with images/ and masks/")],
    folds: Annotated[str | None, Opt(
        help="the ensemble of these folds only, e.g. 0,2 (default: all); predict with the same")] = None,
    tta: Annotated[bool | None, Opt(
        "--tta/--no-tta", help="as the ensemble will predict (default: the run's own setting)")] = None,
    device: Annotated[str, Opt(help="auto | cpu | cuda")] = "auto",
    precision: Annotated[str, Opt(help=_one_of("train", "precision"))] = "auto",
    skip_bad: Annotated[bool, Opt("--skip-bad", help="report bad pairs and go on")] = False,
    overwrite: Annotated[bool, Opt("--overwrite", help="fit again over RUN/calibration.json")] = False,
) -> None:
    """Fit a K-fold ensemble's temperature on held-out labelled images (RUN/calibration.json)."""
    from unetseg.evaluation.calibrate import calibrate as run_calibrate

    run_calibrate(checkpoint, data, folds=fold_option(folds), tta=tta, device=device, precision=precision,
                  skip_bad=skip_bad, overwrite=overwrite)


@app.command()
@user_errors
def predict(
    checkpoint: Annotated[Path, Opt(help="checkpoint or run folder (-> best/), .onnx or bioimage.io .zip")],
    input: Annotated[Path, Opt(help="an image file, an OME-Zarr store or a folder of images")],
    output: Annotated[Path, Opt(help="folder for the masks")],
    tile: Annotated[list[int] | None, Opt(help="tile size H W or D H W; default: training patch")] = None,
    overlap: Annotated[float | None, Opt(help="tile overlap in [0, 1); default 0.25 (2D), 0.5 (3D)")] = None,
    blend: Annotated[str | None, Opt(help=_one_of("infer", "blend"))] = None,
    tta: Annotated[bool, Opt("--tta", help="average over flips")] = False,
    probabilities: Annotated[
        bool, Opt("--probabilities", help="also write per-class probabilities (float16, calibrated)")
    ] = False,
    uncertainty: Annotated[
        bool,
        Opt("--uncertainty", help="also write a float16 uncertainty map: entropy, mutual information over "
            "the TTA flips (0 without --tta)"),
    ] = False,
    overlay: Annotated[bool, Opt("--overlay", help="also write a coloured overlay PNG")] = False,
    mask_values: Annotated[str, Opt(help="index (0..C-1) | original (the training mask values)")] = "index",
    batch_size: Annotated[int | None, Opt(help="tiles per forward pass")] = None,
    device: Annotated[str, Opt(help="auto | cpu | cuda")] = "auto",
    precision: Annotated[str, Opt(help=_one_of("train", "precision"))] = "auto",
    output_format: Annotated[
        str, Opt(help="auto (big and OME inputs -> OME-Zarr) | ome-zarr | ome-tiff")
    ] = "auto",
    level: Annotated[
        int | None, Opt(help="pyramid level to predict (default: the training pixel size's)")
    ] = None,
    skip_background: Annotated[
        bool, Opt("--skip-background", help="no tiles over glass (whole slides)")
    ] = False,
    resume: Annotated[
        bool, Opt("--resume", help="continue interrupted slides; keep finished outputs")
    ] = False,
    dask: Annotated[str | None, Opt(help="local:N (worker processes) or tcp://HOST:PORT (a cluster)")] = None,
    skip_bad: Annotated[bool, Opt("--skip-bad", help="report unreadable inputs and go on")] = False,
    overwrite: Annotated[
        bool, Opt("--overwrite", help="replace existing outputs unetseg did not write")
    ] = False,
    max_image_gib: Annotated[float | None, Opt(help="largest image to decode in memory, float32 GiB")] = None,
    trust_torchscript: Annotated[
        bool,
        Opt(
            "--trust-torchscript",
            help="load a TorchScript file: it is a program and can run any code; only for files you made",
        ),
    ] = False,
    folds: Annotated[str | None, Opt(
        help="a K-fold run: predict with these folds only, e.g. 0,2 (default: the ensemble of all)")] = None,
) -> None:
    """Segment an image or a folder of images of any size with sliding-window inference; whole slides and
    huge volumes are streamed in flat memory to OME-Zarr; `--dask` spreads a cohort over a cluster."""
    from unetseg.inference import predict_files
    from unetseg.inference.jobs.file import Routing

    if max_image_gib is not None:
        build_config([({"data.max_image_gib": max_image_gib}, "command line")])
    if level is not None and level < 0:
        raise UnetsegError(f"--level {level}: expected a level >= 0")
    routing = Routing(output_format, level, skip_background, resume)
    result = predict_files(
        checkpoint, input, output, skip_bad=skip_bad, overwrite=overwrite, routing=routing, dask=dask,
        tta=tta, probabilities=probabilities, uncertainty=uncertainty, overlay=overlay,
        mask_values=mask_values, device=device,
        precision=precision, trust_torchscript=trust_torchscript, max_image_gib=max_image_gib,
        folds=fold_option(folds), **_infer_overrides(tile, overlap, batch_size, blend),
    )
    extra = f"; {len(result.complete)} complete already" if result.complete else ""
    what = " and ".join(w for w, on in (("probabilities", probabilities), ("uncertainty", uncertainty)) if on)
    what = f" with {what}" if what else ""
    typer.echo(f"wrote {len(result.done)} output(s){what} to {result.output}{extra}")


@app.command()
@user_errors
def export(
    checkpoint: Annotated[Path, Opt(help="checkpoint folder or run folder (-> best/)")],
    format: Annotated[str, Opt(help="onnx | torchscript | bioimageio (a BioImage Model Zoo .zip)")],
    output: Annotated[Path, Opt(help="file to write (.onnx, .pt, .zip)")],
    opset: Annotated[int, Opt(help="ONNX opset (17 or newer)")] = 17,
    author: Annotated[
        list[str] | None, Opt(help="bioimageio: an author's name (repeatable; required)")
    ] = None,
    license: Annotated[
        str | None, Opt(help="bioimageio: SPDX licence id, e.g. CC-BY-4.0 or MIT (required; no default)")
    ] = None,
    name: Annotated[str | None, Opt(help="bioimageio: the model's name (default: from the model)")] = None,
    description: Annotated[
        str | None, Opt(help="bioimageio: one paragraph (default: from the model)")
    ] = None,
    sample: Annotated[
        Path | None,
        Opt(help="bioimageio: image for the test tensors and cover (default: a validation image)"),
    ] = None,
    overwrite: Annotated[
        bool, Opt("--overwrite", help="replace an existing file unetseg did not write")
    ] = False,
    folds: Annotated[str | None, Opt(help="a K-fold run: export these folds only, e.g. 0,2")] = None,
) -> None:
    """Export a checkpoint to ONNX or TorchScript (checked against PyTorch: max abs diff <= 1e-4; a K-fold
    run exports the ensemble of its folds as one model), or as a BioImage Model Zoo package for Fiji
    (deepImageJ), QuPath, ilastik and napari (tested by bioimageio.core)."""
    bioimageio_only = {"--author": author, "--license": license, "--name": name, "--description": description,
                       "--sample": sample}
    if format.lower() == "bioimageio":
        if folds:
            raise UnetsegError("--folds: a BioImage Model Zoo package holds one network; export a fold's "
                               "run folder (RUN/fold_k) instead")
        from unetseg.zoo import export_bioimageio

        export_bioimageio(checkpoint, output, authors=author, license=license, name=name,
                          description=description, sample=sample, opset=opset, overwrite=overwrite)
        return
    given = [k for k, v in bioimageio_only.items() if v]
    if given:
        raise UnetsegError(f"{given[0]} is for --format bioimageio only")
    from unetseg.export import export_model

    export_model(checkpoint, format, output, opset=opset, overwrite=overwrite, folds=fold_option(folds))


@app.command()
@user_errors
def serve(
    checkpoint: Annotated[Path, Opt(help="run or checkpoint folder, .onnx file or BioImage Model Zoo .zip")],
    host: Annotated[str, Opt(help="address to listen on; anything but loopback is reachable by others")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, Opt(help="port (0: a free one, printed)")] = 8000,
    token_file: Annotated[
        Path | None, Opt(help="file holding the bearer token every request but /health must carry")
    ] = None,
    max_upload_mib: Annotated[float, Opt(help="largest request body, MiB (413 beyond)")] = 256.0,
    max_image_gib: Annotated[
        float | None, Opt(help="largest decoded image, float32 GiB (413 beyond); default: the model's")
    ] = None,
    queue_size: Annotated[int, Opt(help="requests waiting at most; one more is answered 503")] = 16,
    max_batch: Annotated[int, Opt(help="requests run together at most (micro-batch)")] = 8,
    batch_wait_ms: Annotated[float, Opt(help="wait for more requests of a batch, ms")] = 5.0,
    tile: Annotated[list[int] | None, Opt(help="tile size H W or D H W; default: the checkpoint's")] = None,
    overlap: Annotated[float | None, Opt(help="tile overlap in [0, 1)")] = None,
    blend: Annotated[str | None, Opt(help=_one_of("infer", "blend"))] = None,
    tta: Annotated[bool, Opt("--tta", help="average over flips")] = False,
    batch_size: Annotated[int | None, Opt(help="tiles per forward pass")] = None,
    device: Annotated[str, Opt(help="auto | cpu | cuda")] = "auto",
    precision: Annotated[str, Opt(help=_one_of("train", "precision"))] = "auto",
    log_level: Annotated[str, Opt(help="uvicorn's: critical | error | warning | info | debug")] = "info",
    trust_torchscript: Annotated[
        bool,
        Opt(
            "--trust-torchscript",
            help="load a TorchScript file: it is a program and can run any code; only for files you made",
        ),
    ] = False,
) -> None:
    """Serve a model over HTTP until Ctrl-C/SIGTERM: POST /predict, GET /model, GET /health
    (`pip install 'unetseg[serve]'`)."""
    from unetseg.serve import Limits
    from unetseg.serve import serve as run_server

    if max_image_gib is not None:
        build_config([({"data.max_image_gib": max_image_gib}, "command line")])
    limits = Limits(
        max_upload_bytes=int(max_upload_mib * 2**20),
        max_image_bytes=None if max_image_gib is None else max_image_gib * 2**30,
        queue_size=queue_size,
        max_batch=max_batch,
        batch_wait_s=batch_wait_ms / 1000,
    )
    run_server(
        checkpoint, host=host, port=port, token_file=token_file, limits=limits, device=device,
        precision=precision, trust_torchscript=trust_torchscript, tta=True if tta else None,
        log_level=log_level, **_infer_overrides(tile, overlap, batch_size, blend),
    )


@app.command()
@user_errors
def demo(
    out: Annotated[Path, Opt(help="folder for the synthetic data and the run")] = Path("demo_out"),
    minutes: Annotated[float, Opt(help="training budget")] = 2.0,
    device: Annotated[str, Opt()] = "auto",
    seed: Annotated[int, Opt()] = 0,
    overwrite: Annotated[bool, Opt("--overwrite", help="replace an earlier demo in --out")] = False,
) -> None:
    """Synthesize a dataset, train a small U-Net, evaluate, predict and plot: the whole workflow."""
    from unetseg.demo import run_demo

    run_demo(out, minutes=minutes, device=device, seed=seed, overwrite=overwrite)


def run(argv: list[str]) -> int:
    """Run one command line (without the process-wide settings of :func:`main`); return the exit status.
    Usage errors are one ``error:`` line too."""
    try:
        code = app(
            args=expand_multi(list(argv)),
            prog_name="unetseg",
            standalone_mode=False,
            obj={"argv": list(argv)},
        )
    except usage.NoArgsIsHelpError as e:
        typer.echo(e.ctx.get_help() if e.ctx else str(e))
        code = 0
    except usage.UsageError as e:
        typer.echo(f"error: {' '.join(e.format_message().split())} (see `unetseg --help`)", err=True)
        code = 2
    except typer.Exit as e:
        code = e.exit_code
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        code = 130
    except Exception as e:
        from unetseg.training.interrupt import caused_by_ctrl_c

        if not caused_by_ctrl_c(e):  # a Ctrl-C that an extension's import wrapped is still a Ctrl-C
            raise
        typer.echo("interrupted", err=True)
        code = 130
    return code if isinstance(code, int) else 0


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script and ``python -m unetseg``: the process-wide settings of a
    command-line run (allocator, quiet readers), then the command; a process torchrun started ends without
    the interpreter's teardown (:func:`unetseg.runtime.leave_process`)."""
    args = sys.argv[1:] if argv is None else argv
    settings = bool(args) and not {"--help", "-h"} & set(args)  # help and usage load no torch
    if settings:
        from unetseg.runtime import configure_process

        configure_process(allocator=True, quiet_readers=True)  # before any large tensor exists
    code = run(args)
    if settings:
        from unetseg.runtime import launched_by_torchrun, leave_process

        if launched_by_torchrun():  # a rank that finished must not abort in torch's teardown
            leave_process(code)
    # A Ctrl-C that ends any string exec (dataclasses and namedtuples build classes that way) sets a flag in
    # CPython that makes `python -m unetseg` die of SIGINT after it exits, whatever the status, even when the
    # KeyboardInterrupt was caught; a string exec clears it, so the status is the one chosen here.
    exec("None", {})
    sys.exit(code)

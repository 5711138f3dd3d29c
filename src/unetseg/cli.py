"""The ``unetseg`` command: a thin Typer layer that parses options into a Config and calls the Python API.

User mistakes (:class:`UnetsegError`) print one line and exit with status 2; tracebacks are for bugs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from unetseg.errors import UnetsegError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Biomedical image segmentation with the U-Net family.",
    pretty_exceptions_enable=False,
)

Opt = typer.Option


def _fail(err: Exception) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(2)


@app.command()
def models() -> None:
    """List the architectures with their parameter counts (default configuration, 2D, 1 -> 2 classes)."""
    from rich.console import Console
    from rich.table import Table

    from unetseg.models import available_models, build_model, count_parameters, describe_model

    table = Table(title="unetseg architectures (2D, in=1, classes=2, base 32, depth 4)")
    for col in ("name", "parameters", "3D parameters", "description"):
        table.add_column(col, justify="right" if "param" in col else "left")
    import torch

    for name in available_models():
        with torch.device("meta"):  # counting needs shapes only, not initialised weights
            p2 = count_parameters(build_model(name, spatial_dims=2))
            p3 = count_parameters(build_model(name, spatial_dims=3))
        table.add_row(name, f"{p2:,}", f"{p3:,}", describe_model(name))
    Console().print(table)


def _shape(values: list[int] | None, what: str) -> list[int] | None:
    if not values:
        return None
    if len(values) not in (2, 3) or any(v < 1 for v in values):
        raise UnetsegError(f"{what} takes 2 (H W) or 3 (D H W) positive sizes, got {values}")
    return list(values)


def _parse_classes(text: str) -> list[Any]:
    def number(v: str) -> float | int:
        f = float(v)
        return int(f) if f.is_integer() else f

    try:
        groups = [[number(v) for v in item.split("+")] for item in text.split(",")]
    except ValueError:
        raise UnetsegError(
            f"--classes {text!r}: expected numbers separated by commas (1+2 merges values into one class)"
        ) from None
    return [g[0] if len(g) == 1 else g for g in groups]


def _parse_options(options: list[str] | None) -> dict[str, Any]:
    from unetseg.config import parse_option_value

    out: dict[str, Any] = {}
    for item in options or []:
        if "=" not in item:
            raise UnetsegError(f"--option expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = parse_option_value(v)
    return out


@app.command(context_settings={"allow_extra_args": True})
def train(
    ctx: typer.Context,
    data: Annotated[Path | None, Opt(help="dataset folder (images/ + masks/, or nnU-Net raw)")] = None,
    out: Annotated[
        Path | None, Opt(help="run folder (best/, last/, metrics.csv, curves.png, log.txt)")
    ] = None,
    model: Annotated[str | None, Opt(help="architecture, see `unetseg models`")] = None,
    config: Annotated[Path | None, Opt(help="YAML recipe; command-line options override it")] = None,
    val_data: Annotated[Path | None, Opt(help="separate validation folder")] = None,
    val_fraction: Annotated[
        float | None, Opt(help="share of cases held out when --val-data is absent")
    ] = None,
    base_channels: Annotated[int | None, Opt()] = None,
    depth: Annotated[int | None, Opt()] = None,
    option: Annotated[list[str] | None, Opt(help="any other model option, KEY=VALUE (repeatable)")] = None,
    epochs: Annotated[int | None, Opt()] = None,
    iters_per_epoch: Annotated[int | None, Opt(help="training batches per epoch")] = None,
    max_minutes: Annotated[float | None, Opt(help="stop cleanly after this many minutes")] = None,
    patch_size: Annotated[
        list[int] | None, Opt(help="H W or D H W (give the option once per number)")
    ] = None,
    batch_size: Annotated[int | None, Opt()] = None,
    loss: Annotated[str | None, Opt(help="dice | ce | dice_ce | focal | tversky | lovasz")] = None,
    lr: Annotated[float | None, Opt()] = None,
    optimizer: Annotated[str | None, Opt(help="adamw | sgd")] = None,
    schedule: Annotated[str | None, Opt(help="poly | cosine | constant")] = None,
    device: Annotated[str | None, Opt(help="auto | cpu | cuda")] = None,
    precision: Annotated[str | None, Opt(help="auto | fp32 | bf16 | fp16")] = None,
    classes: Annotated[
        str | None, Opt(help="mask values in class order, e.g. 0,128,255; 0,1+2+3 merges 1-3 into class 1")
    ] = None,
    normalization: Annotated[str | None, Opt(help="zscore | percentile | window | none")] = None,
    seed: Annotated[int | None, Opt()] = None,
    patience: Annotated[int | None, Opt(help="early stopping: validations without improvement")] = None,
    workers: Annotated[int | None, Opt(help="DataLoader worker processes")] = None,
    compile: Annotated[bool, Opt("--compile", help="torch.compile the model")] = False,
    skip_bad: Annotated[bool, Opt("--skip-bad", help="report and skip bad image/mask pairs")] = False,
    resume: Annotated[bool, Opt("--resume", help="continue from RUN/last")] = False,
) -> None:
    """Train a segmentation model on a dataset folder."""
    from unetseg.config import Config, apply_overrides, load_yaml
    from unetseg.training import train as run_training

    try:
        cfg = Config()
        if config is not None:
            apply_overrides(cfg, load_yaml(config), source=str(config))
        given: dict[str, Any] = {
            "data.data": str(data) if data else None,
            "train.out": str(out) if out else None,
            "model.name": model,
            "data.val_data": str(val_data) if val_data else None,
            "data.val_fraction": val_fraction,
            "model.base_channels": base_channels,
            "model.depth": depth,
            "train.epochs": epochs,
            "train.iters_per_epoch": iters_per_epoch,
            "train.max_minutes": max_minutes,
            "data.patch_size": _shape(patch_size, "--patch-size"),
            "train.batch_size": batch_size,
            "train.loss": loss,
            "train.lr": lr,
            "train.optimizer": optimizer,
            "train.schedule": schedule,
            "train.device": device,
            "train.precision": precision,
            "data.normalization": normalization,
            "train.seed": seed,
            "train.patience": patience,
            "data.num_workers": workers,
        }
        if classes:
            given["data.class_values"] = _parse_classes(classes)
        if compile:
            given["train.compile"] = True
        if skip_bad:
            given["data.skip_bad"] = True
        apply_overrides(cfg, {k: v for k, v in given.items() if v is not None}, source="command line")
        apply_overrides(cfg, {"model.options": _parse_options(option)}, source="--option")
        if cfg.data.data is None:
            raise UnetsegError("train needs --data DIR (or data: in the YAML config)")
        if cfg.train.out is None:
            raise UnetsegError("train needs --out RUN (or out: in the YAML config)")
        run_training(cfg, resume=resume)
    except UnetsegError as e:
        _fail(e)


@app.command()
def evaluate(
    checkpoint: Annotated[Path, Opt(help="checkpoint folder, run folder (-> best/) or .onnx file")],
    data: Annotated[Path, Opt(help="dataset folder with images/ and masks/")],
    out: Annotated[Path | None, Opt(help="write metrics as JSON")] = None,
    overlays: Annotated[Path | None, Opt(help="write side-by-side PNGs here")] = None,
    report: Annotated[Path | None, Opt(help="write a self-contained HTML report")] = None,
    tile: Annotated[list[int] | None, Opt()] = None,
    overlap: Annotated[float | None, Opt()] = None,
    tta: Annotated[bool, Opt("--tta")] = False,
    batch_size: Annotated[int | None, Opt()] = None,
    device: Annotated[str, Opt()] = "auto",
    skip_bad: Annotated[bool, Opt("--skip-bad")] = False,
) -> None:
    """Segment a labelled dataset and report per-image and mean metrics per class."""
    from unetseg.training.evaluate import evaluate as run_evaluate

    try:
        run_evaluate(
            checkpoint,
            data,
            out_json=out,
            overlays=overlays,
            report=report,
            tile=_shape(tile, "--tile"),
            overlap=overlap,
            tta=tta,
            batch_size=batch_size,
            device=device,
            skip_bad=skip_bad,
        )
    except UnetsegError as e:
        _fail(e)


@app.command()
def predict(
    checkpoint: Annotated[Path, Opt(help="checkpoint folder, run folder (-> best/) or .onnx file")],
    input: Annotated[Path, Opt(help="an image file or a folder of images")],
    output: Annotated[Path, Opt(help="folder for the masks")],
    tile: Annotated[list[int] | None, Opt(help="tile size H W or D H W; default: training patch")] = None,
    overlap: Annotated[float | None, Opt(help="tile overlap in [0, 1); default 0.25 (2D), 0.5 (3D)")] = None,
    blend: Annotated[str, Opt(help="gaussian | constant")] = "gaussian",
    tta: Annotated[bool, Opt("--tta", help="average over flips")] = False,
    probabilities: Annotated[bool, Opt("--probabilities", help="also write per-class float TIFFs")] = False,
    overlay: Annotated[bool, Opt("--overlay", help="also write a coloured overlay PNG")] = False,
    mask_values: Annotated[str, Opt(help="index (0..C-1) | original (the training mask values)")] = "index",
    batch_size: Annotated[int | None, Opt(help="tiles per forward pass")] = None,
    device: Annotated[str, Opt(help="auto | cpu | cuda")] = "auto",
    precision: Annotated[str, Opt(help="auto | fp32 | bf16 | fp16")] = "auto",
    skip_bad: Annotated[bool, Opt("--skip-bad", help="report unreadable inputs and go on")] = False,
) -> None:
    """Segment an image or a folder of images of any size with sliding-window inference."""
    from unetseg.inference import predict_files

    try:
        predict_files(
            checkpoint,
            input,
            output,
            tile=_shape(tile, "--tile"),
            overlap=overlap,
            blend=blend,
            tta=tta,
            probabilities=probabilities,
            overlay=overlay,
            mask_values=mask_values,
            batch_size=batch_size,
            device=device,
            precision=precision,
            skip_bad=skip_bad,
        )
    except UnetsegError as e:
        _fail(e)


@app.command()
def export(
    checkpoint: Annotated[Path, Opt(help="checkpoint folder or run folder (-> best/)")],
    format: Annotated[str, Opt(help="onnx | torchscript")],
    output: Annotated[Path, Opt(help="file to write")],
    opset: Annotated[int, Opt(help="ONNX opset (17 or newer)")] = 17,
) -> None:
    """Export a checkpoint to ONNX or TorchScript and check it against PyTorch (max abs diff <= 1e-4)."""
    from unetseg.export import export_model

    try:
        export_model(checkpoint, format, output, opset=opset)
    except UnetsegError as e:
        _fail(e)


@app.command()
def demo(
    out: Annotated[Path, Opt(help="folder for the synthetic data and the run")] = Path("demo_out"),
    minutes: Annotated[float, Opt(help="training budget")] = 2.0,
    device: Annotated[str, Opt()] = "auto",
    seed: Annotated[int, Opt()] = 0,
) -> None:
    """Synthesize a dataset, train a small U-Net, evaluate, predict and plot: the whole workflow."""
    from unetseg.demo import run_demo

    try:
        run_demo(out, minutes=minutes, device=device, seed=seed)
    except UnetsegError as e:
        _fail(e)


_MULTI_INT = ("--patch-size", "--tile")


def expand_multi(argv: list[str]) -> list[str]:
    """``--patch-size 64 128`` -> ``--patch-size 64 --patch-size 128`` (Typer lists repeat the flag)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        out.append(a)
        i += 1
        if a in _MULTI_INT:
            first = True
            while i < len(argv) and argv[i].lstrip("-").isdigit() and not argv[i].startswith("--"):
                if not first:
                    out.append(a)
                out.append(argv[i])
                first = False
                i += 1
    return out


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script and ``python -m unetseg``."""
    from unetseg._runtime import tune_allocator

    tune_allocator()  # before any large tensor: keeps activations on the heap (see unetseg/_runtime.py)
    args = sys.argv[1:] if argv is None else argv
    app(args=expand_multi(list(args)), prog_name="unetseg")

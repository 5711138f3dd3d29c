"""``unetseg predict``: segment an image file or a folder of them and write one mask per input.

Outputs (CONTRACT.md): ``OUT/<stem>.png`` for 2D, ``OUT/<stem>.nii.gz`` (NIfTI inputs) or
``OUT/<stem>.tif`` (other 3D inputs) holding uint8 class indices (or the original mask values with
``mask_values="original"``), the input's spatial size and spacing; optionally ``OUT/<stem>_probs.tif``
(float32 ``(C, *spatial)``) and ``OUT/<stem>_overlay.png``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unetseg.config import Config
from unetseg.errors import ConfigError, DataError, UnetsegError
from unetseg.inference.api import predictor_for
from unetseg.inference.engines import Engine, load_engine
from unetseg.inference.sliding_window import Predictor

MASK_VALUES = ("index", "original")


def output_name(path: Path, spatial_dims: int) -> str:
    """The mask file name for input ``path``: ``<stem>.png`` in 2D; in 3D ``<stem>.nii.gz`` for NIfTI
    inputs and ``<stem>.tif`` otherwise."""
    from unetseg.data.io import stem_of, suffix_of

    if spatial_dims == 2:
        return f"{stem_of(path)}.png"
    return f"{stem_of(path)}{'.nii.gz' if suffix_of(path) in ('.nii', '.nii.gz') else '.tif'}"


def _decoder(config: Config, mask_values: str) -> Any:
    if mask_values not in MASK_VALUES:
        raise ConfigError(f"--mask-values {mask_values!r}: expected one of {', '.join(MASK_VALUES)}")
    if mask_values == "index":
        return None
    if not config.data.class_values:
        raise ConfigError("this checkpoint does not record its mask values; use --mask-values index")
    from unetseg.data.dataset import ClassMap

    return ClassMap(list(config.data.class_values))


def _check_unique(files: list[Path], spatial_dims: int) -> None:
    seen: dict[str, Path] = {}
    for f in files:
        name = output_name(f, spatial_dims)
        if name in seen:
            raise DataError(f"{f}: would overwrite the mask of {seen[name]} (both give {name}); rename one")
        seen[name] = f


def predict_one(
    path: Path,
    out_dir: Path,
    engine: Engine,
    config: Config,
    predictor: Predictor,
    *,
    probabilities: bool = False,
    overlay: bool = False,
    class_map: Any = None,
) -> list[Path]:
    """Read, normalise, predict and write the outputs of one image; returns the files written.
    Any user-facing problem is raised as an UnetsegError whose message starts with ``path``."""
    from unetseg.data.dataset import normalize
    from unetseg.data.io import match_channels, read_image, stem_of, write_mask, write_probabilities

    image, meta = read_image(path)
    dims = int(meta.get("spatial_dims", image.ndim - 1))
    if dims != engine.spatial_dims or image.ndim != dims + 1:
        raise DataError(f"{path}: a {dims}D image, but the model is {engine.spatial_dims}D")
    try:
        x = normalize(match_channels(image, engine.in_channels, path), config.data)
        if not overlay:
            del image  # large images: keep only the normalised copy while predicting
        labels, probs = predictor.predict_both(x) if probabilities else (predictor.predict(x), None)
    except UnetsegError as e:
        raise type(e)(str(e) if str(e).startswith(str(path)) else f"{path}: {e}") from None
    values = class_map.decode(labels) if class_map is not None else labels
    written = [write_mask(out_dir / output_name(path, dims), values, meta)]
    stem = stem_of(path)
    if probs is not None:
        written.append(write_probabilities(out_dir / f"{stem}_probs.tif", probs, meta))
    if overlay:
        from unetseg.data.io import save_overlay

        written.append(Path(save_overlay(out_dir / f"{stem}_overlay.png", image, labels)))
    return written


def predict_files(
    checkpoint: str | Path,
    input: str | Path,
    output: str | Path,
    *,
    tile: Sequence[int] | None = None,
    overlap: float | None = None,
    blend: str = "gaussian",
    tta: bool = False,
    probabilities: bool = False,
    overlay: bool = False,
    mask_values: str = "index",
    batch_size: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    skip_bad: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Segment an image or every image of a folder with a checkpoint / ``.onnx`` / TorchScript model.

    Args:
        checkpoint: checkpoint folder, run folder (-> ``best/``), ``.onnx`` or TorchScript file.
        input: an image file or a folder of images (nnU-Net ``_0000`` channel files are grouped per case).
        output: folder for the outputs (created).
        tile, overlap, blend, tta, batch_size: sliding-window settings; ``None`` takes the checkpoint's.
        probabilities: also write ``<stem>_probs.tif`` (float32, one plane per class).
        overlay: also write ``<stem>_overlay.png``.
        mask_values: ``index`` (0..C-1) or ``original`` (the training mask values, e.g. 0/255).
        device, precision: where and how the model runs.
        skip_bad: report unreadable inputs, go on, and print how many were skipped (exit status stays 0);
            otherwise the first bad input stops with a DataError naming it.
        progress: show a progress bar.

    Returns:
        ``{"output": folder, "written": [paths], "skipped": [messages], "images": n}``.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from unetseg.data.io import SkipLog, list_images

    engine, config = load_engine(checkpoint, device, precision)
    predictor = predictor_for(engine, config, tile=tile, overlap=overlap, blend=blend,
                              batch_size=batch_size, tta=tta)
    class_map = _decoder(config, mask_values)
    files = list_images(input)
    _check_unique(files, engine.spatial_dims)
    out_dir = Path(output)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{out_dir}: cannot create the output folder ({e.strerror or e})") from None
    log = SkipLog()
    written: list[Path] = []
    columns = (TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
               TextColumn("{task.description}"))
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("", total=len(files))
        for path in files:
            bar.update(task, description=path.name)
            try:
                written += predict_one(path, out_dir, engine, config, predictor, probabilities=probabilities,
                                       overlay=overlay, class_map=class_map)
            except UnetsegError as e:
                if not skip_bad:
                    raise
                log.skip(e)
            bar.advance(task)
    done = len(files) - log.count
    print(f"wrote {done} mask(s){' with probabilities' if probabilities else ''} to {out_dir}")
    log.summary("input")
    return {"output": str(out_dir), "written": [str(p) for p in written], "skipped": list(log.messages),
            "images": len(files)}


"""Export a checkpoint to ONNX or TorchScript, with the config inside and a parity check against PyTorch.

* ONNX: ``torch.onnx.export`` with dynamic batch and spatial axes, by the dynamo exporter or the
  TorchScript-based one (see :func:`exporter_order`; the other is the fallback). The checkpoint's config
  (normalisation, class map, tile size, model geometry) goes into the model's ``metadata_props`` under
  ``unetseg_config``, so ``unetseg predict --checkpoint model.onnx`` runs through ONNX Runtime with the
  same tiling code, without the training stack.
* A cascade's second stage is written with its first stage beside it (``model.stage1.onnx`` beside
  ``model.onnx``), where ``predict`` looks for it.
* A K-fold run is exported as one model holding every fold (or those picked): :class:`EnsembleModule`, whose
  output is the log of the folds' mean probabilities, so ``predict``'s softmax gives the ensemble's
  probabilities from the ONNX or TorchScript file as from the run folder.
* TorchScript: a trace of the model's padded core wrapped in a small scripted module that pads to a
  multiple of the model's divisor (``2**depth``) at run time; the config travels as the archive's extra
  file ``config.json``.

After writing, the exported model and the PyTorch model (fp32, CPU) are run on random inputs of spatial
sizes *different* from the export example, one of which needs the model's internal padding, and with a
batch size different from the example's. The max abs difference is printed; above ``atol`` (1e-4) the
export fails.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn

from unetseg.checkpoint import (
    ONNX_CONFIG_KEY,
    TORCHSCRIPT_CONFIG_FILE,
    TORCHSCRIPT_SUFFIXES,
    find_checkpoint,
    fold_checkpoints,
    is_fold_run,
    load_checkpoint,
    stage1_of,
)
from unetseg.config import Config, config_from_dict
from unetseg.errors import ConfigError, UnetsegError, first_line
from unetseg.fileio import OutputGuard, ensure_dir, record_written, temp_path
from unetseg.inference.engines import (
    OnnxEngine,
    load_torchscript,
    mean_log_probs,
    run_ensemble_config,
    scaled,
)
from unetseg.models.sizes import same_padding

if TYPE_CHECKING:
    from unetseg.models.base import SegmentationModel
    from unetseg.models.probabilities import ClassProbabilities

FORMATS = ("onnx", "torchscript")
ATOL = 1e-4
Size = tuple[int, ...]


def example_sizes(model: Exportable) -> list[Size]:
    """Spatial sizes: ``[export example, check 1, check 2]``, all different, distinct per axis so no two
    axes can be confused. For "same" models the example and the second check are not multiples of
    2**depth (internal padding), the first check is; for the valid U-Net all are valid sizes."""
    dims, div = model.spatial_dims, max(model.divisors)
    if model.padding == "valid":
        base = model.valid_input_size((1,) * dims)[0]
        return [tuple(base + div * (k + i) for i in range(dims)) for k in (1, 0, 2)]
    return [
        tuple(2 * div + 1 + 2 * i for i in range(dims)),
        tuple(div * (1 + i) for i in range(dims)),
        tuple(div + 3 + 2 * i for i in range(dims)),
    ]


def _eager(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    return (out[-1] if isinstance(out, (list, tuple)) else out).float()


def parity(model: Exportable, run: Callable[[torch.Tensor], torch.Tensor], sizes: list[Size]) -> float:
    """Max abs difference between ``run`` (the exported model) and ``model`` over random inputs of ``sizes``
    (batch 1 for the first size, 3 for the others)."""
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for k, size in enumerate(sizes):
        x = torch.randn((1 if k == 0 else 3, model.in_channels, *size), generator=gen)
        got = run(x).float()
        want = _eager(model, x)
        if got.shape != want.shape:
            return float("inf")
        worst = max(worst, float((got - want).abs().max()))
    return worst


def _last(out: torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
    return out[-1] if isinstance(out, (list, tuple)) else out


class EnsembleModule(nn.Module):
    """The folds of a K-fold run as one network: the log of the members' mean probabilities
    (:func:`~unetseg.inference.engines.mean_log_probs`, as
    :class:`~unetseg.inference.engines.EnsembleEngine` returns them), with the first member's geometry."""

    def __init__(self, members: Sequence[SegmentationModel],
                 temperatures: Sequence[float] | None = None) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.temperatures = [float(t) for t in (temperatures or [1.0] * len(members))]  # as EnsembleEngine
        first = members[0]
        self.spatial_dims, self.in_channels, self.num_classes = (first.spatial_dims, first.in_channels,
                                                                 first.num_classes)
        self.divisors, self.padding = first.divisors, first.padding

    def _member(self, i: int) -> SegmentationModel:
        return cast("SegmentationModel", self.members[i])  # ModuleList indexes as Module

    def valid_input_size(self, size: Sequence[int]) -> Size:
        return tuple(self._member(0).valid_input_size(tuple(size)))

    def output_size(self, size: Sequence[int]) -> Size:
        return tuple(self._member(0).output_size(tuple(size)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mean_log_probs([scaled(_last(m(x)), t) for m, t in zip(self.members, self.temperatures,
                                                                        strict=True)])

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        return mean_log_probs([scaled(_last(self._member(i).forward_padded(x)), t)
                               for i, t in enumerate(self.temperatures)])


if TYPE_CHECKING:
    # what the exporters take: one of our networks, one giving class probabilities (a zoo package's), or
    # the folds of a K-fold run as one
    Exportable = SegmentationModel | ClassProbabilities | EnsembleModule


def load_model(checkpoint: str | Path, folds: list[int] | tuple[int, ...] | None = None
               ) -> tuple[Exportable, Config]:
    """The network to export and its config: a checkpoint's, or a K-fold run's folds as one
    :class:`EnsembleModule` (``folds``: some of them)."""
    if not is_fold_run(checkpoint):
        if folds is not None:
            raise ConfigError(f"--folds: {checkpoint} is not a K-fold run (it has no folds.json)")
        return load_checkpoint(checkpoint, "cpu")
    members = fold_checkpoints(checkpoint, folds)
    loaded = [load_checkpoint(path, "cpu") for _, path in members]
    config, temperatures = run_ensemble_config(checkpoint, members, [c for _, c in loaded])
    models = [m for m, _ in loaded]
    if len(models) == 1:
        return models[0], config
    return EnsembleModule(models, temperatures), config


# ---------------------------------------------------------------------------------------------- ONNX
def _onnx_dynamo(model: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    dyn = {i: torch.export.Dim.DYNAMIC for i in [0, *range(2, example.ndim)]}
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            dynamic_shapes=(dyn,),
            opset_version=opset,
            input_names=["image"],
            output_names=["logits"],
            verbose=False,
        )
    assert program is not None  # dynamo=True always returns the program
    program.save(str(path))


def _onnx_legacy(model: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    axes = {0: "batch", **{i: f"size{i - 2}" for i in range(2, example.ndim)}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation and tracer notes; the parity check is the judge
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": axes, "logits": axes},
        )


EXPORTERS: dict[str, Callable[[nn.Module, torch.Tensor, Path, int], None]] = {
    "dynamo": _onnx_dynamo,
    "torchscript": _onnx_legacy,
}


def exporter_order(exporter: str, opset: int) -> list[str]:
    """Which ONNX exporters to try, in order. ``auto``: the dynamo exporter for opset >= 18; for opset 17
    the TorchScript-based one first, because the dynamo exporter emits opset 18 and cannot convert its
    ``Pad`` down to 17 (torch 2.13 / onnxscript 0.7)."""
    if exporter == "auto":
        return ["dynamo", "torchscript"] if opset >= 18 else ["torchscript", "dynamo"]
    if exporter not in EXPORTERS:
        raise ConfigError(f"ONNX exporter {exporter!r}: expected auto, {', '.join(EXPORTERS)}")
    return [exporter]


def _add_metadata(path: Path, config: Config) -> int:
    """Store the config in ``metadata_props``; returns the file's default-domain opset."""
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in ((ONNX_CONFIG_KEY, config.to_json()), ("producer", "unetseg")):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def write_onnx(
    model: Exportable, config: Config, path: Path, opset: int, atol: float, exporter: str
) -> tuple[float, str]:
    """Write ``model`` as ONNX with ``config`` in its metadata, by the first exporter whose parity check
    passes (else the closest); returns the max abs difference and how it was written."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise UnetsegError("ONNX export needs onnx and onnxruntime: pip install 'unetseg[onnx]'") from None
    sizes = example_sizes(model)
    example = torch.randn(2, model.in_channels, *sizes[0])
    errors: list[str] = []
    results: list[tuple[float, str]] = []
    name = ""
    for name in exporter_order(exporter, opset):
        try:
            EXPORTERS[name](model, example, path, opset)
            written = _add_metadata(path, config)
            diff = parity(model, OnnxEngine(path, "cpu"), sizes[1:])
        except Exception as e:  # noqa: BLE001 - try the other exporter, report both if both fail
            errors.append(f"{name} exporter: {first_line(e)}")
            continue
        how = f"ONNX opset {written}, {name}-based exporter"
        if diff <= atol:
            return diff, how
        errors.append(f"{name} exporter: max abs difference {diff:.3g}")
        results.append((diff, name))
    if not results:
        raise UnetsegError(f"{path}: ONNX export failed ({'; '.join(errors)})")
    diff, best = min(results)
    if best != name:  # the file on disk is from the last exporter tried: rewrite the closer one
        EXPORTERS[best](model, example, path, opset)
        _add_metadata(path, config)
    return diff, f"{best}-based exporter"


# ---------------------------------------------------------------------------------------- TorchScript
class _SamePad(nn.Module):
    """Pads to a multiple of the model's divisor per axis and crops back, at run time: the scriptable
    counterpart of :meth:`SegmentationModel.forward` around a traced ``forward_padded`` (whose shapes the
    trace keeps), with the same arithmetic (:func:`~unetseg.models.sizes.same_padding`)."""

    def __init__(self, core: nn.Module, multiples: list[int]) -> None:
        super().__init__()
        self.core = core
        self.multiples = multiples

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        for d in range(x.dim() - 1, 1, -1):  # F.pad: last dim first
            before, after = same_padding(x.shape[d], self.multiples[d - 2])
            pads += [before, after]
        y = self.core(F.pad(x, pads))
        for d in range(2, x.dim()):
            before = pads[2 * (x.dim() - 1 - d)]
            y = y.narrow(d, before, x.shape[d])
        return y


class _PaddedCore(nn.Module):
    def __init__(self, model: Exportable) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model.forward_padded(x)
        return out[-1] if isinstance(out, (list, tuple)) else out


def _trace(model: Exportable, example: torch.Tensor) -> torch.jit.ScriptModule:
    """TorchScript of ``model``. The models are not scriptable and a trace bakes in the "same" pad amounts,
    so the padded core is traced (its ops follow the input shape) inside a scripted :class:`_SamePad`."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes; the parity check is the judge
        if model.padding == "valid":
            return torch.jit.trace(model, example, check_trace=False)
        divs = list(model.divisors)
        sizes = (-(-s // d) * d for s, d in zip(example.shape[2:], divs, strict=True))
        padded = torch.randn(*example.shape[:2], *sizes)
        core = torch.jit.trace(_PaddedCore(model), padded, check_trace=False)
        return torch.jit.script(_SamePad(core, divs))


def write_torchscript(model: Exportable, config: Config, path: Path) -> float:
    """Write ``model`` as TorchScript with ``config`` inside; returns the parity check's max abs
    difference."""
    sizes = example_sizes(model)
    example = torch.randn(2, model.in_channels, *sizes[0])
    try:
        module = _trace(model, example)
        torch.jit.save(module, str(path), _extra_files={TORCHSCRIPT_CONFIG_FILE: config.to_json()})
    except Exception as e:  # noqa: BLE001 - report any exporter failure as one line
        raise UnetsegError(f"{path}: TorchScript export failed ({first_line(e)})") from None
    loaded, _ = load_torchscript(path, torch.device("cpu"), trust=True)  # the file we just wrote
    loaded.eval()
    with torch.no_grad():
        return parity(model, lambda x: _eager(loaded, x), sizes[1:])


def _check_request(checkpoint: str | Path, fmt: str, output: Path, opset: int, overwrite: bool) -> None:
    """Every option checked, and the output against the checkpoint's files, before any work."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)} (a bioimage.io package: "
                          "unetseg.zoo.export_bioimageio)")
    if fmt == "onnx" and opset < 17:
        raise ConfigError(f"--opset {opset}: unetseg exports ONNX opset 17 or newer")
    suffixes = (".onnx",) if fmt == "onnx" else TORCHSCRIPT_SUFFIXES
    if output.suffix.lower() not in suffixes:  # predict picks the engine by the extension
        raise ConfigError(f"--output {output}: a {fmt} file must end in {' or '.join(suffixes)}")
    guard = OutputGuard()
    guard.read(checkpoint, "--checkpoint")
    if not is_fold_run(checkpoint):
        guard.read(find_checkpoint(checkpoint), "--checkpoint")
    guard.write(output, "--output")
    guard.check(overwrite=overwrite)


def export_model(
    checkpoint: str | Path,
    fmt: str,
    output: str | Path,
    opset: int = 17,
    *,
    atol: float = ATOL,
    exporter: str = "auto",
    overwrite: bool = False,
    folds: list[int] | tuple[int, ...] | None = None,
) -> float:
    """Export ``checkpoint`` as ``fmt`` (``onnx`` | ``torchscript``) to ``output`` and check it.

    Args:
        checkpoint: checkpoint or run folder; a K-fold run: the ensemble of its folds (``folds``: of these)
            as one model (:class:`EnsembleModule`).
        fmt: ``onnx`` (opset >= 17, dynamic batch and spatial axes) or ``torchscript``.
        output: the file to write (parent folders are created).
        opset: ONNX opset version.
        atol: largest allowed max abs difference between the export and PyTorch (fp32, CPU).
        exporter: ONNX only: ``auto`` | ``dynamo`` | ``torchscript`` (see :func:`exporter_order`).
        overwrite: replace an existing ``output`` that unetseg did not write.

    The model is written under a temporary name beside ``output`` and renamed into place only after the
    parity check passed, so a failed export never leaves a file that ``predict`` could pick up.

    Returns:
        The max abs difference, which is also printed. Raises :class:`UnetsegError` above ``atol``.
    """
    fmt, output = fmt.lower(), Path(output)
    _check_request(checkpoint, fmt, output, opset, overwrite)
    model, config = load_model(checkpoint, folds)
    if config.data.prior_channels:  # a cascade: its first stage goes beside it, as predict looks for it
        export_model(stage1_of(checkpoint), fmt, stage1_of(output), opset, atol=atol, exporter=exporter,
                     overwrite=overwrite)
    model = model.float().eval()
    ensure_dir(output.parent, "--output")
    config = with_inference_defaults(config)
    tmp = temp_path(output)
    try:
        if fmt == "onnx":
            diff, how = write_onnx(model, config, tmp, opset, atol, exporter)
        else:
            diff, how = write_torchscript(model, config, tmp), "TorchScript"
        print(f"max abs difference: {diff:.3g}")
        if not diff <= atol:
            raise UnetsegError(
                f"{output}: exported model differs from PyTorch by {diff:.3g} (max abs), more "
                f"than {atol:g}; nothing written"
            )
        _fsync(tmp)
        tmp.replace(output)
    finally:
        tmp.unlink(missing_ok=True)
    record_written([output])
    print(f"wrote {output} ({how}); use it with: unetseg predict --checkpoint {output} ...")
    return diff


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def with_inference_defaults(config: Config) -> Config:
    """A copy whose ``infer.tile`` is set (the training patch size when not given) so the export is
    self-describing for deployment."""
    cfg = config_from_dict(config.to_dict())
    if cfg.infer.tile is None and cfg.data.patch_size:
        cfg.infer.tile = list(cfg.data.patch_size)
    return cfg

"""Inference engines: one interface over a PyTorch module, a TorchScript file and an ONNX Runtime session.

An engine takes a batch of tiles ``(N, C, *tile)`` (a torch tensor on the host or on ``engine.device``)
and returns float32 logits ``(N, num_classes, *output)`` as a torch tensor. It also knows the network's
geometry: ``spatial_dims``, ``in_channels``, ``num_classes``, ``divisors`` (the total down-step per axis,
2**depth unless the strides say otherwise: tiles of a multiple of it need no internal padding), and
``output_size`` / ``valid_input_size`` (which differ from
the identity only for the valid-padding U-Net). The sliding-window code is the same for all engines;
:func:`load_engine` picks the engine by the file it is given.

The folds of a K-fold run load as one :class:`EnsembleEngine` (the log of the members' mean probabilities).

Which files are safe to accept from strangers: checkpoint folders (safetensors weights + JSON config: data
only) and ONNX files (a graph of standard operators, run by ONNX Runtime; external data must lie inside the
model's folder). A TorchScript file is a program: loading it can run any code, so it is refused unless the
caller says it trusts the file (``trust_torchscript=True``, ``--trust-torchscript``).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from unetseg.checkpoint import (
    ONNX_CONFIG_KEY,
    TORCHSCRIPT_CONFIG_FILE,
    TORCHSCRIPT_SUFFIXES,
    PooledChoices,
    check_weights,
    ensemble_calibration,
    fold_checkpoints,
    is_fold_run,
    load_checkpoint,
    parse_config,
    pooled_choices,
    stage1_of,
    unwrap,
)
from unetseg.config import Config
from unetseg.config.schema import PostprocessStep
from unetseg.errors import CheckpointError, ConfigError, UnetsegError, first_line
from unetseg.inference.zoo_spec import TensorLayout
from unetseg.runtime import (
    autocast,
    autocast_dtype,
    memory_format,
    resolve_device,
    to_channels_last,
    use_channels_last,
)

if TYPE_CHECKING:
    from unetseg.models.base import SegmentationModel

TORCHSCRIPT_RISK = (
    "a TorchScript file is a program, not weights: loading it can run any code it holds "
    "(write files, start processes)"
)


@runtime_checkable
class Geometry(Protocol):
    """What a network says of itself: our models do (:class:`~unetseg.models.base.SegmentationModel`), and so
    may a user's module, which then needs no config."""

    spatial_dims: int
    in_channels: int
    num_classes: int


@runtime_checkable
class Divisible(Protocol):
    """A network that pads each axis up to a multiple of its ``divisors`` inside (tiles of such sizes need
    no padding)."""

    divisors: Sequence[int]


@runtime_checkable
class OutputSize(Protocol):
    """A network whose output is smaller than its input (unpadded convolutions)."""

    def output_size(self, size: Sequence[int], /) -> Sequence[int]: ...


@runtime_checkable
class ValidInputSize(Protocol):
    """A network that takes only some input sizes."""

    def valid_input_size(self, size: Sequence[int], /) -> Sequence[int]: ...


class Engine:
    """Base class: geometry of the network plus ``__call__(batch) -> logits`` (see the module doc).

    A cascade's second stage takes ``prior_channels`` more channels than the image has (its first stage's
    prediction, :func:`unetseg.inference.api.prior_of`); ``previous`` is that first stage when loaded with
    the model."""

    device: torch.device = torch.device("cpu")
    spatial_dims: int
    in_channels: int
    num_classes: int
    divisors: tuple[int, ...] = (1, 1)
    prior_channels: int = 0
    previous: Stage | None = None
    label: str | None = None  # what runs, when not the config's architecture (an imported package's graph)
    _sizes: OutputSize | ValidInputSize | None = None  # the model, or a weightless skeleton of it

    @property
    def image_channels(self) -> int:
        """The channels of the images it segments (:attr:`in_channels` less a cascade's prior)."""
        return self.in_channels - self.prior_channels

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def output_size(self, size: tuple[int, ...]) -> tuple[int, ...]:
        """Spatial size of the logits for an input tile of ``size`` (the identity for "same" padding)."""
        if isinstance(self._sizes, OutputSize):
            return tuple(int(s) for s in self._sizes.output_size(tuple(size)))
        return tuple(size)

    def valid_input_size(self, size: tuple[int, ...]) -> tuple[int, ...]:
        """The smallest input size >= ``size`` the network accepts (``size`` itself for "same" padding)."""
        if isinstance(self._sizes, ValidInputSize):
            return tuple(int(s) for s in self._sizes.valid_input_size(tuple(size)))
        return tuple(size)

    def _set_geometry(self, source: nn.Module | None, config: Config | None, **given: int | None) -> None:
        """Geometry from explicit values, else what the module declares, else the config."""
        m = config.model if config is not None else None
        # A module that declares no Geometry (a bare convolution, a third-party network) may still name its
        # channels as torch's layers do: read them where they are
        channels = getattr(source, "in_channels", None), getattr(source, "out_channels", None)
        declared: tuple[int | None, ...] = (None, channels[0], None)
        if isinstance(source, Geometry):
            declared = (source.spatial_dims, source.in_channels, source.num_classes)
        fallbacks = (m.spatial_dims, m.in_channels, m.num_classes) if m else (_conv_dims(source), *channels)
        names = ("spatial_dims", "in_channels", "num_classes")
        for name, stated, fallback in zip(names, declared, fallbacks, strict=True):
            value = given.get(name) or stated or fallback
            if value is None:
                raise ConfigError(f"cannot tell the model's {name}; pass {name}= explicitly")
            setattr(self, name, int(value))
        self.prior_channels = config.data.prior_channels if config is not None else 0
        own = source.divisors if isinstance(source, Divisible) else None
        if own is None and m is not None:
            strides = m.options.get("strides") or [[2] * self.spatial_dims] * m.depth
            own = tuple(math.prod(s[a] for s in strides) for a in range(self.spatial_dims))
        self.divisors = tuple(int(d) for d in own) if own is not None else (1,) * self.spatial_dims

    @property
    def size_divisor(self) -> int:
        """The largest of :attr:`divisors` (2**depth for isotropic strides)."""
        return max(self.divisors)


@dataclass(frozen=True)
class Stage:
    """A model that runs before another: a cascade's first stage and the config it was trained with."""

    engine: Engine
    config: Config


def _conv_dims(module: nn.Module | None) -> int | None:
    """Spatial dims of a bare convolution (toy models in tests and user code)."""
    for cls, dims in ((nn.Conv1d, 1), (nn.Conv2d, 2), (nn.Conv3d, 3)):
        if isinstance(module, cls):
            return dims
    return None


def _module_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm that directly follows a convolution in a ``Sequential`` into that convolution
    (inference only: uses the running statistics). Saves the normalisation pass, ~10% of CPU time."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for seq in model.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if (
                isinstance(conv, (nn.Conv2d, nn.Conv3d))
                and isinstance(bn, nn.modules.batchnorm._BatchNorm)
                and bn.track_running_stats
                and bn.running_mean is not None
            ):
                seq[i], seq[i + 1] = fuse_conv_bn_eval(conv, bn), nn.Identity()
    return model


def model_skeleton(config: Config) -> SegmentationModel | None:
    """A weightless instance of the configured model (on the meta device) for its size arithmetic;
    ``None`` for "same"-padding models, whose output size equals their input size."""
    if config.model.options.get("padding", "same") != "valid":
        return None
    from unetseg.models import build_model

    with torch.device("meta"):
        return build_model(config.model.name, **config.model.build_kwargs())


class TorchEngine(Engine):
    """A PyTorch module (eager or TorchScript) as an engine.

    Args:
        model: the network.
        device: where to run; ``None`` keeps the module where it is, otherwise it runs there.
        precision: ``auto`` | ``fp32`` | ``bf16`` | ``fp16`` (autocast).
        config: the checkpoint's config; needed for TorchScript modules, which have no geometry attributes.
        channels_last: ``auto`` | ``on`` | ``off``.
        own: the engine may change ``model`` in place (eval mode, device, layout, folded BatchNorm), as for
            models it loaded itself or the trainer's live model. Otherwise (a module a caller handed in) it
            works on a copy, so the caller's module is left exactly as it was.
        fuse: fold BatchNorm into the preceding convolutions (on the engine's own module).
        spatial_dims, in_channels, num_classes: override what is read from the module or config.
    """

    def __init__(
        self,
        model: nn.Module,
        device: str | torch.device | None = None,
        precision: str = "auto",
        *,
        config: Config | None = None,
        channels_last: str | bool = "auto",
        own: bool = True,
        fuse: bool = False,
        spatial_dims: int | None = None,
        in_channels: int | None = None,
        num_classes: int | None = None,
    ) -> None:
        base = unwrap(model)  # DDP / torch.compile wrappers run as given; the geometry is on the plain module
        self._set_geometry(
            base, config, spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes
        )
        self.device = _module_device(model) if device is None else resolve_device(device)
        self.dtype = autocast_dtype(precision, self.device)
        self.channels_last = self.spatial_dims in (2, 3) and use_channels_last(
            channels_last, self.device, self.spatial_dims, inference=True
        )
        is_script = isinstance(model, torch.jit.ScriptModule)
        if not own and not is_script:
            model = copy.deepcopy(base)
        model = model.to(self.device).eval()
        if fuse and not is_script:
            model = fuse_conv_bn(model)
        if self.channels_last:
            to_channels_last(model, self.spatial_dims)
        self.model = model
        if is_script:  # a TorchScript module has no methods but forward: its config tells the sizes
            self._sizes = model_skeleton(config) if config is not None else None
        elif isinstance(base, (OutputSize, ValidInputSize)):
            self._sizes = base

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x).to(self.device, torch.float32, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=memory_format(self.spatial_dims))
        with torch.inference_mode(), autocast(self.device, self.dtype):
            out: torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...] = self.model(x)
        if isinstance(out, (list, tuple)):  # deep supervision: the last head is the full-resolution one
            out = out[-1]
        return out.float()


def mean_log_probs(logits: list[torch.Tensor]) -> torch.Tensor:
    """An ensemble's output from its members' logits: the log of the mean of their probabilities (softmax;
    one sigmoid channel: the logit of the mean probability), computed stably in float32. The tile runner's
    softmax (:func:`~unetseg.inference.tta.logits_to_probs`) of it gives back the mean probabilities
    exactly (log-probabilities that sum to one are their own log-softmax), so an ensemble runs wherever one
    model's logits do. Probabilities are averaged, not logits, as nnU-Net does: a confident member is not
    outvoted by the scale of another's logits."""
    z = torch.stack([t.float() for t in logits])
    if z.shape[2] == 1:
        f = nn.functional.logsigmoid
        return torch.logsumexp(f(z), dim=0) - torch.logsumexp(f(-z), dim=0)
    return torch.logsumexp(torch.log_softmax(z, dim=2), dim=0) - math.log(len(logits))


def scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits divided by a member's temperature (1: as they are)."""
    return logits if temperature == 1.0 else logits.float() / temperature


class EnsembleEngine(Engine):
    """Several engines of one geometry as one: each runs on the batch and the output is
    :func:`mean_log_probs` of theirs, so tiling, TTA, streaming and Dask workers need nothing of their own
    (a worker that loads a K-fold run holds the whole ensemble). ``folds``: which folds the members are."""

    def __init__(self, members: list[Engine], folds: list[int] | None = None,
                 temperatures: list[float] | None = None) -> None:
        first = members[0]
        for m in members[1:]:
            if (m.spatial_dims, m.in_channels, m.num_classes, m.divisors) != (
                    first.spatial_dims, first.in_channels, first.num_classes, first.divisors):
                raise CheckpointError("the members of an ensemble must take the same images and give the "
                                      "same classes at the same grid")
        if any(m.previous is not None or m.prior_channels for m in members):
            raise CheckpointError("an ensemble of cascades is not supported")
        self.members, self.folds = list(members), list(folds or range(len(members)))
        # the members' temperatures, applied before the mean (a K-fold run's ensemble: 1, see
        # unetseg.training.crossval; an ensemble without that record: each member's own)
        self.temperatures = list(temperatures or [1.0] * len(members))
        self.device, self.divisors = first.device, first.divisors
        self.spatial_dims, self.in_channels = first.spatial_dims, first.in_channels
        self.num_classes = first.num_classes

    def output_size(self, size: tuple[int, ...]) -> tuple[int, ...]:
        return self.members[0].output_size(size)

    def valid_input_size(self, size: tuple[int, ...]) -> tuple[int, ...]:
        return self.members[0].valid_input_size(size)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return mean_log_probs([scaled(m(x), t) for m, t in zip(self.members, self.temperatures, strict=True)])


# what the members of an ensemble must share: their inputs, classes and grid
ENSEMBLE_KEYS = ("model.spatial_dims", "model.in_channels", "model.num_classes", "data.task",
                 "data.instance_target", "data.class_values", "data.normalization", "data.percentiles",
                 "data.window", "data.intensity_stats", "data.spacing", "data.downsample",
                 "data.prior_channels")
WATERSHED_KEYS = ("foreground_threshold", "interior_threshold", "distance_h")


def ensemble_config(configs: list[Config], paths: list[Path], pooled: PooledChoices | None = None
                    ) -> tuple[Config, list[float]]:
    """The config an ensemble predicts with and its members' temperatures, after checking that every member
    reads images and gives classes alike. One member is that fold's model, with its own config. Several:
    the members' temperature and the post-processing a K-fold run chose for its ensemble on its pooled
    out-of-fold predictions (``pooled``), else each member's own temperature and the post-processing every
    member chose; an instance model's watershed options (each calibrated on its fold's validation images)
    are the members' medians."""
    def get(c: Config, key: str) -> Any:
        section, name = key.split(".")
        return getattr(getattr(c, section), name)

    for c, path in zip(configs[1:], paths[1:], strict=True):
        for key in ENSEMBLE_KEYS:
            if get(c, key) != get(configs[0], key):
                raise CheckpointError(f"{path}: {key} {get(c, key)!r} differs from {get(configs[0], key)!r} "
                                      f"in {paths[0]}; the members of an ensemble must read images and give "
                                      "classes alike")
    if len(configs) == 1:
        return configs[0], [1.0]  # its temperature applies as a single model's
    pooled = pooled or PooledChoices()
    config = configs[0].copy_deep()
    if config.data.task == "instances":
        for key in WATERSHED_KEYS:
            setattr(config.infer, key, float(np.median([getattr(c.infer, key) for c in configs])))
    temperatures = ([pooled.temperature] * len(configs) if pooled.temperature is not None
                    else [c.infer.temperature for c in configs])
    config.infer.temperature = 1.0  # the members' are applied inside the ensemble (EnsembleEngine)
    config.infer.postprocess = (list(pooled.postprocess) if pooled.postprocess is not None
                                else consensus_postprocess([c.infer.postprocess for c in configs]))
    return config, temperatures


def run_ensemble_config(run: str | Path, members: list[tuple[int, Path]], configs: list[Config]
                        ) -> tuple[Config, list[float]]:
    """:func:`ensemble_config` of a K-fold run's ``(fold, checkpoint)`` members with the run's pooled
    choices and, for exactly these folds, the temperature ``unetseg calibrate`` fitted on the ensemble."""
    config, temperatures = ensemble_config(configs, [p for _, p in members], pooled_choices(run))
    fitted = ensemble_calibration(run) if len(members) > 1 else None
    if fitted is not None and fitted.folds == tuple(k for k, _ in members):
        config.infer.temperature = fitted.temperature  # divides log(mean p): the ensemble's logits
    return config, temperatures


def consensus_postprocess(chosen: list[list[PostprocessStep]]) -> list[PostprocessStep]:
    """An ensemble's post-processing from its members' (each chosen on the fold it did not see): a step
    every member chose (same classes and operation), with the median of their sizes and the mean of their
    gains; a step only some folds found useful is left out, as a step that does not help is."""
    if not chosen or any(not c for c in chosen):
        return []
    out = []
    for step in chosen[0]:
        same = [[s for s in c if s.classes == step.classes and s.op == step.op] for c in chosen]
        if all(same):
            sizes = [m[0].size for m in same if m[0].size is not None]
            gains = [m[0].gain for m in same if m[0].gain is not None]
            out.append(step.model_copy(update={
                "size": int(np.median(sizes)) if sizes else None,
                "gain": float(np.mean(gains)) if gains else None}))
    return out


def load_ensemble(run: str | Path, folds: list[int] | tuple[int, ...] | None, device: str | torch.device,
                  precision: str) -> tuple[Engine, Config]:
    """The folds of a K-fold run (all, or those in ``folds``) as one engine and its config (one fold: its
    own engine)."""
    members = fold_checkpoints(run, folds)
    loaded = [_load_one(path, device, precision, False) for _, path in members]
    config, temperatures = run_ensemble_config(run, members, [c for _, c in loaded])
    if len(loaded) == 1:
        return loaded[0][0], config
    return EnsembleEngine([e for e, _ in loaded], [k for k, _ in members], temperatures), config


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise UnetsegError(
            "ONNX models need onnxruntime: pip install 'unetseg[onnx]' (or pip install onnxruntime)"
        ) from None
    return onnxruntime


def check_onnx_external_data(path: Path) -> None:
    """Refuse an ONNX file whose external tensor data points outside its own folder (an ONNX file may name
    any path; ONNX Runtime would read it)."""
    try:
        import onnx
    except ImportError:
        return  # onnxruntime alone: it enforces its own rules on external data
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - a malformed file is reported by ONNX Runtime below
        raise CheckpointError(f"{path}: not a loadable ONNX model ({first_line(e)})") from None
    folder = os.path.realpath(path.parent)
    for tensor in onnx.external_data_helper._get_all_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        where = {e.key: e.value for e in tensor.external_data}.get("location", "")
        target = os.path.realpath(os.path.join(folder, where))
        if os.path.isabs(where) or os.path.commonpath([folder, target]) != folder:
            raise CheckpointError(
                f"{path}: external data {where!r} of tensor {tensor.name!r} lies outside the "
                "model's folder; refused"
            )


class OnnxEngine(Engine):
    """An exported ``.onnx`` model run by ONNX Runtime; its config comes from the file's metadata
    (written by :func:`unetseg.export.export_model`) and is checked against the graph. Uses CUDA when
    asked for and available."""

    def __init__(self, path: str | Path, device: str | torch.device = "auto", *, config: Config | None = None,
                 layout: TensorLayout | None = None) -> None:
        ort = _import_ort()
        path = Path(path)
        check_onnx_external_data(path)
        providers = ["CPUExecutionProvider"]
        if resolve_device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as e:  # noqa: BLE001 - ORT raises many types for a bad file
            raise CheckpointError(f"{path}: not a loadable ONNX model ({first_line(e)})") from None
        self.layout = layout
        self.config = config if config is not None else self._own_config(path)
        self._set_geometry(None, self.config)
        if layout is not None:  # a package's graph: its geometry is the package's, checked by the spec
            self.divisors, self._sizes = layout.divisors, layout
        else:
            self._sizes = model_skeleton(self.config)
            self._check_graph(path)
        self.input_name = self.session.get_inputs()[0].name
        self.providers = self.session.get_providers()

    def _own_config(self, path: Path) -> Config:
        meta = self.session.get_modelmeta().custom_metadata_map
        if ONNX_CONFIG_KEY not in meta:
            raise CheckpointError(f"{path}: no unetseg config in its metadata (export with `unetseg export`)")
        return parse_config(meta[ONNX_CONFIG_KEY], f"{path} (metadata {ONNX_CONFIG_KEY})")

    def _check_graph(self, path: Path) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        rank = self.spatial_dims + 2
        shape_in, shape_out = list(inputs[0].shape), list(outputs[-1].shape)
        problems = []
        if len(inputs) != 1 or len(shape_in) != rank:
            problems.append(f"the graph takes {len(shape_in)}-D input, the config says {rank}-D")
        elif isinstance(shape_in[1], int) and shape_in[1] != self.in_channels:
            problems.append(f"the graph takes {shape_in[1]} channels, the config says {self.in_channels}")
        if len(shape_out) == rank and isinstance(shape_out[1], int) and shape_out[1] != self.num_classes:
            problems.append(f"the graph gives {shape_out[1]} classes, the config says {self.num_classes}")
        if problems:
            raise CheckpointError(f"{path}: metadata does not match the graph ({problems[0]})")
        if not isinstance(shape_out[1] if len(shape_out) > 1 else None, int):
            self._probe(path, inputs[0].name)  # dynamic channel dims: run one tiny tile and look

    def _probe(self, path: Path, name: str) -> None:
        size = self.valid_input_size(tuple(max(2 * d, 8) for d in self.divisors))
        x = np.zeros((1, self.in_channels, *size), np.float32)
        try:
            out = self.session.run(None, {name: x})[-1]
        except Exception as e:  # noqa: BLE001 - ORT raises many types for a graph that does not fit
            raise CheckpointError(f"{path}: metadata does not match the graph (a {self.in_channels}-channel "
                                  f"input fails: {first_line(e)})") from None
        if out.ndim != self.spatial_dims + 2 or out.shape[1] != self.num_classes:
            raise CheckpointError(f"{path}: metadata does not match the graph (the graph gives "
                                  f"{out.shape[1] if out.ndim > 1 else '?'} classes, the config says "
                                  f"{self.num_classes})")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = torch.as_tensor(x).detach().to("cpu", torch.float32).contiguous().numpy()
        if self.layout is not None:
            try:
                out = self.layout.run(lambda a: self.session.run(None, {self.input_name: a})[0], arr)
            except Exception as e:  # noqa: BLE001 - ORT raises many types for input its graph refuses
                raise CheckpointError(f"the package's ONNX graph does not run on a tile of its declared axes "
                                      f"and sizes {tuple(arr.shape)} ({first_line(e)})") from None
        else:
            out = self.session.run(None, {self.input_name: arr})[-1]
        return torch.from_numpy(out).float()


def load_torchscript(
    path: str | Path, device: torch.device, *, trust: bool = False
) -> tuple[torch.jit.ScriptModule, Config]:
    """Load a TorchScript file written by ``unetseg export --format torchscript`` and its embedded config.

    Refused unless ``trust`` (see the module docstring: TorchScript is code)."""
    path = Path(path)
    if not trust:
        raise CheckpointError(
            f"{path}: {TORCHSCRIPT_RISK}; pass --trust-torchscript (trust=True) only for "
            "files you made yourself, or use the ONNX export or the checkpoint folder"
        )
    extra = {TORCHSCRIPT_CONFIG_FILE: ""}
    try:
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as e:  # noqa: BLE001 - any failure means the file is not usable TorchScript
        raise CheckpointError(
            f"{path}: not a TorchScript model ({first_line(e)}); "
            "checkpoints are folders with model.safetensors + config.json"
        ) from None
    text = extra[TORCHSCRIPT_CONFIG_FILE]
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not text:
        raise CheckpointError(f"{path}: no unetseg config inside (export it with `unetseg export`)")
    check_weights(dict(module.state_dict()), path)
    return module, parse_config(text, f"{path} ({TORCHSCRIPT_CONFIG_FILE})")


def load_engine(
    path: str | Path,
    device: str | torch.device = "auto",
    precision: str = "auto",
    *,
    trust_torchscript: bool = False,
    folds: list[int] | tuple[int, ...] | None = None,
) -> tuple[Engine, Config]:
    """Open a model for inference, choosing the engine by the file: ``.onnx`` -> ONNX Runtime,
    ``.pt``/``.ts``/``.torchscript`` -> TorchScript (only with ``trust_torchscript``), a ``.zip``
    bioimage.io package -> unetseg's network or ONNX Runtime (:mod:`unetseg.inference.zoo`), a folder
    (checkpoint or run) -> PyTorch + safetensors, a K-fold run -> the ensemble of its folds (``folds``: some
    of them).

    Returns the engine and the config that travels with the model (normalisation, class map, tile size).
    A cascade's second stage comes with its first (:attr:`Engine.previous`), found beside it
    (:func:`~unetseg.checkpoint.stage1_of`).
    """
    if is_fold_run(path):
        return load_ensemble(path, folds, device, precision)
    if folds is not None:
        raise ConfigError(f"--folds: {path} is not a K-fold run (it has no folds.json)")
    engine, config = _load_one(path, device, precision, trust_torchscript)
    if config.data.prior_channels:
        first = stage1_of(path)
        if not first.exists():
            raise CheckpointError(f"{path}: a cascade's second stage, but its first stage {first} is missing "
                                  "(export or copy the two together)")
        engine.previous = Stage(*_load_one(first, device, precision, trust_torchscript))
        _check_stages(engine, engine.previous, first)
    return engine, config


def _check_stages(engine: Engine, stage: Stage, path: Path) -> None:
    """The first stage segments the same images into the same classes, and is not a cascade itself."""
    first = stage.engine
    if (first.prior_channels or first.spatial_dims != engine.spatial_dims
            or first.in_channels != engine.image_channels or first.num_classes != engine.num_classes):
        raise CheckpointError(
            f"{path}: does not fit its second stage (a {first.spatial_dims}D model of {first.in_channels} "
            f"channel(s) and {first.num_classes} classes; the second stage needs "
            f"{engine.spatial_dims}D, {engine.image_channels} and {engine.num_classes}, and no prior)"
        )


def _load_package(path: Path, device: str | torch.device, precision: str) -> tuple[Engine, Config]:
    """A BioImage Model Zoo package: unetseg's network on its weights, or its ONNX graph through its axes
    (:mod:`unetseg.inference.zoo`: checked, extracted to a private folder, nothing in it run)."""
    import tempfile

    from unetseg.inference.zoo import open_package

    with tempfile.TemporaryDirectory(prefix="unetseg-package-") as tmp:
        pkg = open_package(path, Path(tmp))
        if pkg.module is not None:
            dev = resolve_device(device)
            layout = pkg.config.train.channels_last
            return TorchEngine(pkg.module, dev, precision, config=pkg.config, channels_last=layout,
                               fuse=True), pkg.config
        assert pkg.onnx is not None
        engine = OnnxEngine(pkg.onnx, device, config=pkg.config, layout=pkg.layout)
        engine.label = pkg.label
        return engine, pkg.config


def _load_one(path: str | Path, device: str | torch.device, precision: str,
              trust_torchscript: bool) -> tuple[Engine, Config]:
    p = Path(path)
    if p.suffix.lower() == ".zip":
        return _load_package(p, device, precision)
    if p.suffix.lower() == ".onnx":
        if not p.is_file():
            raise CheckpointError(f"{p}: ONNX model not found")
        engine = OnnxEngine(p, device)
        return engine, engine.config
    dev = resolve_device(device)
    if p.is_file() and p.suffix.lower() in TORCHSCRIPT_SUFFIXES:
        module, config = load_torchscript(p, dev, trust=trust_torchscript)
        return TorchEngine(
            module, dev, precision, config=config, channels_last=config.train.channels_last
        ), config
    model, config = load_checkpoint(p, dev)
    layout = config.train.channels_last
    return TorchEngine(model, dev, precision, config=config, channels_last=layout, fuse=True), config


def as_engine(
    model_or_engine: nn.Module | Engine | str | Path,
    device: str | torch.device | None = None,
    precision: str = "auto",
    *,
    spatial_dims: int | None = None,
    in_channels: int | None = None,
    num_classes: int | None = None,
) -> Engine:
    """Wrap what a user passed (module, engine, or a path to a checkpoint/exported model) as an engine.

    A module is run from an internal copy with BatchNorm folded and the layout that is fastest on the
    device, so the Python API predicts as fast as the command line and leaves the caller's module alone."""
    if isinstance(model_or_engine, Engine):
        return model_or_engine
    if isinstance(model_or_engine, (str, Path)):
        return load_engine(model_or_engine, device or "auto", precision)[0]
    if isinstance(model_or_engine, nn.Module):
        return TorchEngine(model_or_engine, device, precision, own=False, fuse=True,
                           spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes)
    kind = type(model_or_engine).__name__
    raise ConfigError(f"expected a torch.nn.Module, an Engine or a model path, got {kind}")

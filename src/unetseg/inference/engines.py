"""Inference engines: one interface over a PyTorch module, a TorchScript file and an ONNX Runtime session.

An engine takes a batch of tiles ``(N, C, *tile)`` (a torch tensor on the host or on ``engine.device``)
and returns float32 logits ``(N, num_classes, *output)`` as a torch tensor. It also knows the network's
geometry: ``spatial_dims``, ``in_channels``, ``num_classes``, ``size_divisor`` (2**depth: tiles of a
multiple of it need no internal padding), and ``output_size`` / ``valid_input_size`` (which differ from
the identity only for the valid-padding U-Net). The sliding-window code is the same for all engines;
:func:`load_engine` picks the engine by the file it is given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unetseg._runtime import configure_device
from unetseg.config import Config
from unetseg.errors import CheckpointError, ConfigError, UnetsegError
from unetseg.training.checkpoint import unwrap
from unetseg.utils import autocast, autocast_dtype, memory_format, resolve_device, use_channels_last

ONNX_CONFIG_KEY = "unetseg_config"
TORCHSCRIPT_CONFIG_FILE = "config.json"
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".jit")


class Engine:
    """Base class: geometry of the network plus ``__call__(batch) -> logits`` (see the module doc)."""

    device: torch.device = torch.device("cpu")
    spatial_dims: int
    in_channels: int
    num_classes: int
    size_divisor: int = 1
    _sizes: Any = None  # an object with output_size/valid_input_size (the model, or a skeleton of it)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def output_size(self, size: tuple[int, ...]) -> tuple[int, ...]:
        """Spatial size of the logits for an input tile of ``size`` (the identity for "same" padding)."""
        fn = getattr(self._sizes, "output_size", None)
        return tuple(int(s) for s in fn(tuple(size))) if fn else tuple(size)

    def valid_input_size(self, size: tuple[int, ...]) -> tuple[int, ...]:
        """The smallest input size >= ``size`` the network accepts (``size`` itself for "same" padding)."""
        fn = getattr(self._sizes, "valid_input_size", None)
        return tuple(int(s) for s in fn(tuple(size))) if fn else tuple(size)

    def _set_geometry(self, source: Any, config: Config | None, **given: int | None) -> None:
        """Geometry from explicit values, else the module's attributes, else the config."""
        m = config.model if config is not None else None
        fallbacks = {
            "spatial_dims": m.spatial_dims if m else _conv_dims(source),
            "in_channels": m.in_channels if m else getattr(source, "in_channels", None),
            "num_classes": m.num_classes if m else getattr(source, "out_channels", None),
        }
        for name, fallback in fallbacks.items():
            value = given.get(name) or getattr(source, name, None) or fallback
            if value is None:
                raise ConfigError(f"cannot tell the model's {name}; pass {name}= explicitly")
            setattr(self, name, int(value))
        depth = getattr(source, "depth", None) or (m.depth if m else 0)
        self.size_divisor = 2 ** int(depth)


def _conv_dims(module: Any) -> int | None:
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
            if (isinstance(conv, (nn.Conv2d, nn.Conv3d)) and isinstance(bn, nn.modules.batchnorm._BatchNorm)
                    and bn.track_running_stats and bn.running_mean is not None):
                seq[i], seq[i + 1] = fuse_conv_bn_eval(conv, bn), nn.Identity()
    return model


def model_skeleton(config: Config) -> nn.Module | None:
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
        model: the network; it is put in eval mode (and, where it helps, channels_last) in place.
        device: where to run; ``None`` keeps the module where it is, otherwise it is moved there.
        precision: ``auto`` | ``fp32`` | ``bf16`` | ``fp16`` (autocast).
        config: the checkpoint's config; needed for TorchScript modules, which have no geometry attributes.
        channels_last: ``auto`` | ``on`` | ``off``.
        fuse: fold BatchNorm into the preceding convolutions (changes ``model`` in place, so only for
            models the engine owns, as :func:`load_engine`'s).
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
        fuse: bool = False,
        spatial_dims: int | None = None,
        in_channels: int | None = None,
        num_classes: int | None = None,
    ) -> None:
        base = unwrap(model)  # DDP / torch.compile wrappers run as given; the geometry is on the plain module
        self._set_geometry(base, config, spatial_dims=spatial_dims, in_channels=in_channels,
                           num_classes=num_classes)
        self.device = _module_device(model) if device is None else resolve_device(device)
        self.dtype = autocast_dtype(precision, self.device)
        self.channels_last = self.spatial_dims in (2, 3) and use_channels_last(
            channels_last, self.device, self.spatial_dims, inference=True
        )
        configure_device(self.device)
        model = model.to(self.device).eval()
        if fuse and not isinstance(model, torch.jit.ScriptModule):
            model = fuse_conv_bn(model)
        if self.channels_last:
            model = model.to(memory_format=memory_format(self.spatial_dims))
        self.model = model
        is_script = isinstance(model, torch.jit.ScriptModule)
        self._sizes = model_skeleton(config) if (is_script and config is not None) else base

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x).to(self.device, torch.float32, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=memory_format(self.spatial_dims))
        with torch.inference_mode(), autocast(self.device, self.dtype):
            out = self.model(x)
        if isinstance(out, (list, tuple)):  # deep supervision: the last head is the full-resolution one
            out = out[-1]
        return out.float()


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (library errors can span pages), or its type."""
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise UnetsegError(
            "ONNX models need onnxruntime: pip install 'unetseg[onnx]' (or pip install onnxruntime)"
        ) from None
    return onnxruntime


class OnnxEngine(Engine):
    """An exported ``.onnx`` model run by ONNX Runtime; its config comes from the file's metadata
    (written by :func:`unetseg.export.export_model`). Uses CUDA when asked for and available."""

    def __init__(self, path: str | Path, device: str | torch.device = "auto") -> None:
        ort = _import_ort()
        path = Path(path)
        providers = ["CPUExecutionProvider"]
        if resolve_device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as e:  # noqa: BLE001 - ORT raises many types for a bad file
            raise CheckpointError(f"{path}: not a loadable ONNX model ({first_line(e)})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if ONNX_CONFIG_KEY not in meta:
            raise CheckpointError(f"{path}: no unetseg config in its metadata (export with `unetseg export`)")
        self.config = _parse_config(meta[ONNX_CONFIG_KEY], path)
        self._set_geometry(None, self.config)
        self._sizes = model_skeleton(self.config)
        self.input_name = self.session.get_inputs()[0].name
        self.providers = self.session.get_providers()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = torch.as_tensor(x).detach().to("cpu", torch.float32).contiguous().numpy()
        out = self.session.run(None, {self.input_name: arr})[-1]
        return torch.from_numpy(out).float()


def _parse_config(text: str, source: Path) -> Config:
    try:
        return Config.from_dict(json.loads(text), source=str(source))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{source}: embedded unetseg config is not valid JSON ({e})") from None


def load_torchscript(path: str | Path, device: torch.device) -> tuple[torch.jit.ScriptModule, Config]:
    """Load a TorchScript file written by ``unetseg export --format torchscript`` and its embedded config."""
    path = Path(path)
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
        text = text.decode()
    if not text:
        raise CheckpointError(f"{path}: no unetseg config inside (export it with `unetseg export`)")
    return module, _parse_config(text, path)


def load_engine(
    path: str | Path, device: str | torch.device = "auto", precision: str = "auto"
) -> tuple[Engine, Config]:
    """Open a model for inference, choosing the engine by the file: ``.onnx`` -> ONNX Runtime,
    ``.pt``/``.ts``/``.torchscript`` -> TorchScript, a folder (checkpoint or run) -> PyTorch + safetensors.

    Returns the engine and the config that travels with the model (normalisation, class map, tile size).
    """
    p = Path(path)
    if p.suffix.lower() == ".onnx":
        if not p.is_file():
            raise CheckpointError(f"{p}: ONNX model not found")
        engine = OnnxEngine(p, device)
        return engine, engine.config
    dev = resolve_device(device)
    if p.is_file() and p.suffix.lower() in TORCHSCRIPT_SUFFIXES:
        module, config = load_torchscript(p, dev)
        channels_last = config.train.channels_last
        return TorchEngine(module, dev, precision, config=config, channels_last=channels_last), config
    from unetseg.training.checkpoint import load_checkpoint

    model, config = load_checkpoint(p, dev)
    layout = config.train.channels_last
    return TorchEngine(model, dev, precision, config=config, channels_last=layout, fuse=True), config


def as_engine(
    model_or_engine: nn.Module | Engine | str | Path,
    device: str | torch.device | None = None,
    precision: str = "auto",
    **geometry: int | None,
) -> Engine:
    """Wrap what a user passed (module, engine, or a path to a checkpoint/exported model) as an engine."""
    if isinstance(model_or_engine, Engine):
        return model_or_engine
    if isinstance(model_or_engine, (str, Path)):
        return load_engine(model_or_engine, device or "auto", precision)[0]
    if isinstance(model_or_engine, nn.Module):
        return TorchEngine(model_or_engine, device, precision, **geometry)
    kind = type(model_or_engine).__name__
    raise ConfigError(f"expected a torch.nn.Module, an Engine or a model path, got {kind}")

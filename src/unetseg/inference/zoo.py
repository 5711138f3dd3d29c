"""BioImage Model Zoo packages (``model.zip``) as models unetseg predicts with, and nothing from them runs.

A package is read in three checked steps:

1. **The zip** (:func:`safe_zip`): at most :data:`MAX_MEMBERS` entries, no absolute or ``..`` names, no
   links, at most :data:`MAX_BYTES` uncompressed in all and a compression ratio of at most
   :data:`MAX_RATIO` per entry (zip bombs), a description of at most 1 MiB; only the weights are
   extracted, by name, into a private folder, their bytes counted as they come and their SHA-256 checked
   against the description's.
2. **The description**, parsed by ``bioimageio.spec`` (safe YAML; no file checks, no network; spec 0.4
   descriptions converted to 0.5).
3. **The weights**, in this order:

   * ``pytorch_state_dict`` whose architecture is unetseg's (``import_from: unetseg.models.probabilities``,
     callable ``class_probabilities``, or ``unetseg.models`` ``build_model``, with one of unetseg's
     architecture names): the network is built by unetseg's own registry from the keyword arguments
     (never by importing what the package names, never from its ``architecture.source``), and the
     state dict is read with ``torch.load(weights_only=True)``: the spec stores it as a torch pickle, and
     this loader only rebuilds tensors and plain containers (no classes, no code). The model's config is
     the one a unetseg package carries (``config.unetseg``), checked against the architecture, or one made
     from the description.
   * ``onnx``: run by ONNX Runtime (external data only inside the private folder) through the package's
     axes (:class:`~unetseg.inference.zoo_spec.TensorLayout`), its preprocessing applied as unetseg
     normalisation steps.
   * anything else (TorchScript alone, TensorFlow, Keras, another library's architecture): refused in one
     line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import stat
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from torch import nn

from unetseg.checkpoint import check_weights, load_weights, parse_config
from unetseg.config import Config
from unetseg.errors import CheckpointError, UnetsegError, first_line
from unetseg.inference.zoo_spec import TensorLayout, layout_of, steps_of

PACKAGE_SUFFIXES = (".zip",)
MAX_MEMBERS = 4096
MAX_BYTES = 8 << 30  # uncompressed, all entries
MAX_RATIO = 1000  # uncompressed / compressed size of one entry
MAX_RDF = 1 << 20
# (import_from, callable) -> whether the callable's output is probabilities (unetseg's wrapper) or logits
ARCHITECTURES = {("unetseg.models.probabilities", "class_probabilities"): True,
                 ("unetseg.models", "build_model"): False, ("unetseg", "build_model"): False,
                 ("unetseg.models.registry", "build_model"): False}
EXTRA = "pip install 'unetseg[bioimageio]'"


@dataclass
class PackageModel:
    """A package ready for an engine: ``module`` (unetseg's network, giving logits) or ``onnx`` (an
    extracted graph, run through ``layout``), and the config it predicts with."""

    config: Config
    module: nn.Module | None = None
    onnx: Path | None = None
    layout: TensorLayout | None = None
    label: str | None = None  # the package's name, when its graph is not a unetseg architecture


def is_package(path: str | Path) -> bool:
    return Path(path).suffix.lower() in PACKAGE_SUFFIXES


def _bad_name(name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    return p.is_absolute() or ".." in p.parts or (len(name) > 1 and name[1] == ":")


def safe_zip(path: Path) -> zipfile.ZipFile:
    """The package opened after its entries passed the checks of step 1 (module doc)."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{path}: not a readable zip file ({first_line(e)})") from None
    entries = zf.infolist()
    total = sum(e.file_size for e in entries)
    problem = (f"{len(entries)} entries (at most {MAX_MEMBERS})" if len(entries) > MAX_MEMBERS
               else f"{total / 2**30:.1f} GiB uncompressed (at most {MAX_BYTES >> 30})" if total > MAX_BYTES
               else "")
    if not problem and len({e.filename for e in entries}) != len(entries):
        problem = "two entries share a name"
    for entry in entries:
        if problem:
            break
        if _bad_name(entry.filename):
            problem = f"entry {entry.filename!r} points outside the package"
        elif stat.S_ISLNK(entry.external_attr >> 16):
            problem = f"entry {entry.filename!r} is a link"
        elif entry.file_size > MAX_RATIO * max(entry.compress_size, 1) and entry.file_size > 1 << 20:
            ratio = entry.file_size // max(entry.compress_size, 1)
            problem = f"entry {entry.filename!r} expands {ratio}-fold (a zip bomb?)"
    rdf = [e for e in entries if e.filename in ("rdf.yaml", "bioimageio.yaml") or
           (e.filename.endswith(".bioimageio.yaml") and "/" not in e.filename)]
    if not problem and (not rdf or rdf[0].file_size > MAX_RDF):
        problem = "no rdf.yaml at its top" if not rdf else "its rdf.yaml is larger than 1 MiB"
    if problem:
        zf.close()
        raise CheckpointError(f"{path}: refused as a bioimage.io package: {problem}")
    return zf


def extract(zf: zipfile.ZipFile, source: Any, sha256: Any, folder: Path, package: Path) -> Path:
    """One file the description names, copied into ``folder`` (its size counted while copying, its
    SHA-256 checked when the description gives one)."""
    from bioimageio.spec.common import RelativeFilePath

    name = str(source.path) if isinstance(source, RelativeFilePath) else str(source)
    if not isinstance(source, RelativeFilePath) or _bad_name(name):
        raise CheckpointError(f"{package}: its weights {name!r} are not inside the package; unetseg "
                              "downloads nothing")
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise CheckpointError(f"{package}: its weights file {name!r} is missing") from None
    target, digest, copied = folder / PurePosixPath(name).name, hashlib.sha256(), 0
    with zf.open(info) as src, open(target, "wb") as dst:
        while chunk := src.read(1 << 20):
            copied += len(chunk)
            if copied > info.file_size:
                raise CheckpointError(f"{package}: entry {name!r} is longer than its header says")
            digest.update(chunk)
            dst.write(chunk)
    if sha256 is not None and digest.hexdigest() != str(sha256):
        raise CheckpointError(f"{package}: {name} does not match the SHA-256 in its description (damaged?)")
    return target


def read_description(zf: zipfile.ZipFile, package: Path) -> Any:
    """The model description, as spec 0.5 (step 2 of the module doc)."""
    try:
        from bioimageio.spec import InvalidDescr, load_description
    except ImportError:
        raise UnetsegError(f"{package}: reading bioimage.io packages needs bioimageio.spec: {EXTRA}") \
            from None
    try:
        with warnings.catch_warnings():  # notes on converting spec 0.4: a graph that disagrees fails later
            warnings.simplefilter("ignore")
            descr = load_description(zf, format_version="latest", perform_io_checks=False)
    except Exception as e:  # noqa: BLE001 - the spec library raises many kinds for a broken description
        why = first_line(e)
        raise CheckpointError(f"{package}: not a readable bioimage.io description ({why})") from None
    if isinstance(descr, InvalidDescr):
        detail = next((f"{'.'.join(map(str, err.loc))}: {one_line(err.msg)}"
                       for d in descr.validation_summary.details for err in d.errors), "invalid")
        raise CheckpointError(f"{package}: not a valid bioimage.io description ({detail})")
    if descr.type != "model":
        raise CheckpointError(f"{package}: a bioimage.io {descr.type}, not a model")
    return descr


def one_line(text: str, limit: int = 200) -> str:
    """A validation message as one line."""
    return " ".join(str(text).split())[:limit]


def _unetseg_config(descr: Any, package: Path) -> Config | None:
    extra = descr.config.model_extra or {}
    own = extra.get("unetseg")
    if not isinstance(own, dict) or "config" not in own:
        return None
    return parse_config(json.dumps(own["config"]), f"{package} (config.unetseg)")


def _our_architecture(descr: Any) -> tuple[dict[str, Any], bool] | None:
    """The keyword arguments and output kind of a unetseg architecture, or None for any other."""
    from bioimageio.spec.model.v0_5 import ArchitectureFromLibraryDescr

    from unetseg.models import available_models

    entry = descr.weights.pytorch_state_dict
    if entry is None or not isinstance(entry.architecture, ArchitectureFromLibraryDescr):
        return None
    arch = entry.architecture
    wrapped = ARCHITECTURES.get((str(arch.import_from), str(arch.callable)))
    kwargs = dict(arch.kwargs)
    if wrapped is None or kwargs.get("name") not in available_models():
        return None
    return kwargs, wrapped


def open_package(path: str | Path, folder: Path) -> PackageModel:
    """Read the package at ``path`` (see the module doc); extracted weights go into ``folder``."""
    package = Path(path)
    if not package.is_file():
        raise CheckpointError(f"{package}: package not found")
    with safe_zip(package) as zf:
        descr = read_description(zf, package)
        own = _unetseg_config(descr, package)
        ours = _our_architecture(descr)
        if ours is not None:
            entry = descr.weights.pytorch_state_dict
            weights = extract(zf, entry.source, entry.sha256, folder, package)
            return _torch_model(package, weights, *ours, own, descr)
        if descr.weights.onnx is not None:
            entry = descr.weights.onnx
            graph = extract(zf, entry.source, entry.sha256, folder, package)
            if entry.external_data is not None:
                extract(zf, entry.external_data.source, entry.external_data.sha256, folder, package)
            return _onnx_model(package, graph, own, descr)
    formats = ", ".join(name for name, w in descr.weights if w is not None)
    raise CheckpointError(f"{package}: its weights ({formats}) are neither unetseg's architecture nor ONNX; "
                          "unetseg runs packages made by unetseg, of a unetseg architecture, or with ONNX "
                          "weights")


def _torch_model(package: Path, weights: Path, kwargs: dict[str, Any], wrapped: bool, own: Config | None,
                 descr: Any) -> PackageModel:
    from unetseg.models import build_model
    from unetseg.models.probabilities import with_probabilities
    from unetseg.validate import check_config

    state = read_state_dict(weights, package)
    kwargs = dict(kwargs)
    temperature = kwargs.pop("temperature", 1.0) if wrapped else 1.0  # class_probabilities' own argument
    try:
        with torch.device("meta"):  # the shapes first: a stranger's arguments allocate nothing yet
            skeleton = build_model(**kwargs)
            config = own if own is not None else check_config(derived_config(descr, skeleton, kwargs,
                                                                             temperature),
                                                              str(package), trained=True)
        _check_shapes(with_probabilities(skeleton) if wrapped else skeleton, state, package)
        net = build_model(**kwargs)
    except UnetsegError as e:
        raise CheckpointError(f"{package}: its architecture does not fit unetseg ({e})") from None
    if own is not None and {"name": config.model.name, **config.model.build_kwargs()} != kwargs:
        raise CheckpointError(f"{package}: config.unetseg describes another model than its architecture")
    load_weights(with_probabilities(net) if wrapped else net, package, "cpu", tensors=state)
    return PackageModel(config, module=net.eval())


def _check_shapes(model: nn.Module, state: dict[str, torch.Tensor], package: Path) -> None:
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    wrong = sorted(k for k in own if k not in state or tuple(state[k].shape) != own[k])
    if wrong or set(state) - set(own):
        what = wrong[0] if wrong else sorted(set(state) - set(own))[0]
        raise CheckpointError(f"{package}: its weights do not fit its architecture ({what})")


def read_state_dict(path: Path, package: Path) -> dict[str, torch.Tensor]:
    """A package's state dict: ``torch.load(weights_only=True)`` (tensors and plain containers only, no
    code), which must give a flat mapping of names to tensors with finite values."""
    try:
        state = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - anything but plain tensors is refused by the safe loader
        raise CheckpointError(f"{package}: its state dict is not plain tensors ({first_line(e)})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise CheckpointError(f"{package}: its state dict is not a mapping of names to tensors")
    check_weights(state, package)
    return state


def _onnx_model(package: Path, graph: Path, own: Config | None, descr: Any) -> PackageModel:
    from unetseg.validate import check_config

    try:
        probabilities, single = graph_facts(graph)
        layout = layout_of(descr, True if own is not None else probabilities)
        if single and "batch" in layout.inputs:  # the graph takes one tile whatever the description says
            layout = dataclasses.replace(layout, batched=False)
        config = own if own is not None else check_config(derived_config(descr, layout), str(package),
                                                          trained=True)
    except CheckpointError as e:
        raise CheckpointError(f"{package}: {e}") from None
    label = None if own is not None else f"{descr.name} (ONNX)"
    return PackageModel(config, onnx=graph, layout=layout, label=label)


def graph_facts(path: Path) -> tuple[bool | None, bool]:
    """``(probabilities, single)``: True when the graph's output comes from a Softmax or Sigmoid node (None
    otherwise), and whether its input's first axis is fixed at 1 (spec 0.4 descriptions lose that)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - a damaged graph is one line
        raise CheckpointError(f"not a loadable ONNX model ({first_line(e)})") from None
    name = proto.graph.output[0].name
    last = next((n for n in proto.graph.node if name in n.output), None)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    single = bool(dims) and dims[0].HasField("dim_value") and dims[0].dim_value == 1
    return (True if last is not None and last.op_type in ("Softmax", "Sigmoid") else None), single


def derived_config(descr: Any, geometry: Any, kwargs: dict[str, Any] | None = None,
                   temperature: Any = 1.0) -> Config:
    """The config of a package unetseg did not make: its network (unetseg's, built from ``kwargs``, or the
    package's :class:`TensorLayout`), its preprocessing as normalisation steps, class indices as the class
    values, and a tile of about 256 (2D) / 96 (3D) pixels per axis that the network takes."""
    steps = steps_of(descr)
    cfg = Config()
    if isinstance(geometry, TensorLayout):
        dims, classes = geometry.spatial_dims, geometry.classes
        cfg.model.spatial_dims, cfg.model.in_channels = (3 if dims == 3 else 2), geometry.channels
        cfg.model.num_classes = classes
    else:
        rest = dict(kwargs or {})
        for key in ("name", "spatial_dims", "in_channels", "num_classes", "base_channels", "depth"):
            if key in rest:
                setattr(cfg.model, key, rest.pop(key))
        cfg.model.options = rest
        dims, classes = cfg.model.spatial_dims, cfg.model.num_classes
    cfg.data.class_values = [float(v) for v in range(max(2, classes))]
    if steps:
        cfg.data.preprocessing, cfg.data.normalization = steps, "steps"
    else:
        cfg.data.normalization = "none"
    want = (256, 256) if dims == 2 else (96, 96, 96)
    tile = [int(t) for t in geometry.valid_input_size(tuple(
        -(-w // d) * d for w, d in zip(want, geometry.divisors, strict=True)))]
    cfg.data.patch_size, cfg.infer.tile = tile, tile
    cfg.infer.temperature = float(temperature)  # validated by the schema: a positive finite number
    return cfg

"""``unetseg export --format bioimageio``: a checkpoint as a BioImage Model Zoo package (model spec 0.5).

The package holds the network with a softmax on top (class probabilities: what Fiji, QuPath and ilastik show
without a postprocessing step of their own) in three weight formats of the same network:

* ``pytorch_state_dict`` (the parent): unetseg's own architecture by ``import_from:
  unetseg.models.probabilities`` with the registry's keyword arguments; unetseg's version is pinned in its
  ``environment.yaml``. ``bioimageio.core``, ilastik and unetseg load it.
* ``onnx`` (opset >= 17), written and parity-checked by :func:`unetseg.export.write_onnx`: deepImageJ 3
  (JDLL) and ilastik run it without unetseg installed.
* ``torchscript``: what QuPath's deep learning extension (DJL) needs, and deepImageJ's PyTorch engine.

The preprocessing is the model's own normalisation written with the spec's operations
(:func:`unetseg.zoo.describe.preprocessing`), the test tensors and cover come from one of the run's images
(:mod:`unetseg.zoo.samples`), the README from the run (:mod:`unetseg.zoo.readme`); unetseg's whole config
travels under ``config.unetseg`` so that ``unetseg.load("model.zip")`` predicts as the run did. Before the
package is renamed into place it is validated by ``bioimageio.spec`` and passes ``bioimageio.core``'s own
test (each weight format reproduces the test output; every declared size runs).
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetseg.checkpoint import (
    CONFIG_FILE,
    ONNX_CONFIG_KEY,
    STAGE1,
    find_checkpoint,
    load_checkpoint,
    package_version,
    read_config,
)
from unetseg.config import Config
from unetseg.errors import CheckpointError, ConfigError, UnetsegError
from unetseg.export import ATOL, with_inference_defaults, write_onnx, write_torchscript
from unetseg.fileio import OutputGuard, atomic_write, ensure_dir, record_written, write_text
from unetseg.inference.zoo import one_line
from unetseg.models.probabilities import ClassProbabilities, with_probabilities
from unetseg.models.registry import describe_model
from unetseg.training.state import rng_state, set_rng_state
from unetseg.zoo import describe
from unetseg.zoo.readme import RunFacts, read_rows, readme_text
from unetseg.zoo.samples import Sample, make_sample, write_cover

WEIGHTS = {"pytorch_state_dict": "weights.pt", "onnx": "model.onnx", "torchscript": "model_torchscript.pt"}
NAME_CHARS = re.compile(r"[^A-Za-z0-9_+\- ()]")
EXTRA = "pip install 'unetseg[bioimageio]'"


def require_bioimageio() -> None:
    """One line when the extra is missing."""
    try:
        import bioimageio.core  # noqa: F401
        import bioimageio.spec  # noqa: F401
    except ImportError:
        raise UnetsegError(f"BioImage Model Zoo packages need bioimageio.spec and bioimageio.core: {EXTRA}") \
            from None


def check_license(license: str | None) -> str:
    """An SPDX identifier the model spec knows; unetseg never picks one for the user."""
    from bioimageio.spec.model.v0_5 import DeprecatedLicenseId, LicenseId

    if not license:
        raise ConfigError("--license is required: the package must say under which licence others may use "
                          "the model (an SPDX identifier such as CC-BY-4.0, MIT or BSD-3-Clause)")
    for kind in (LicenseId, DeprecatedLicenseId):
        try:
            return str(kind(license))
        except ValueError:
            continue
    raise ConfigError(f"--license {license!r}: not an SPDX licence identifier (e.g. CC-BY-4.0, MIT, "
                      "BSD-3-Clause; the list is at spdx.org/licenses)")


def check_authors(authors: list[str] | None) -> list[str]:
    names = [a.strip() for a in authors or [] if a and a.strip()]
    if not names:
        raise ConfigError("--author is required (repeatable): the package names who made the model")
    bad = next((a for a in names if "/" in a), None)
    if bad is not None:
        raise ConfigError(f"--author {bad!r}: a name may not contain '/'")
    return names


def refuse_unsupported(config: Config, checkpoint: Path) -> None:
    """A cascade is two networks (the second also sees the first's prediction): not one package."""
    if config.data.prior_channels or (checkpoint / STAGE1).is_dir():
        raise ConfigError(f"{checkpoint}: a cascade's second stage (it needs its first stage's prediction as "
                          "input), which one bioimage.io model cannot describe; export the first stage, or "
                          "retrain with --cascade off")


def default_name(config: Config) -> str:
    task = "instance" if config.data.task == "instances" else "semantic"
    folder = NAME_CHARS.sub("", Path(config.data.data).name)[:40] if config.data.data else ""
    name = f"unetseg {config.model.name} {config.model.spatial_dims}D {task} segmentation"
    return f"{name} ({folder})" if folder.strip() else name


def check_name(name: str) -> str:
    if not 5 <= len(name) <= 128 or NAME_CHARS.search(name):
        raise ConfigError(f"--name {name!r}: 5 to 128 letters, digits, spaces and _ + - ( ) (the model "
                          "spec's rule)")
    return name


def default_description(config: Config) -> str:
    what = describe_model(config.model.name).split(" (")[0]
    classes = ", ".join(describe.class_names(config))
    target = "objects (per-pixel classes for a watershed)" if config.data.task == "instances" else "classes"
    return (f"{what}, {config.model.spatial_dims}D, trained with unetseg to segment {target}: {classes}. "
            "Outputs class probabilities.")[:1000]


def _check_request(checkpoint: str | Path, output: Path, sample: str | Path | None, overwrite: bool) -> Path:
    if output.suffix.lower() != ".zip":
        raise ConfigError(f"--output {output}: a bioimage.io package is a .zip file")
    folder = find_checkpoint(checkpoint)
    guard = OutputGuard()
    guard.read(checkpoint, "--checkpoint")
    guard.read(folder, "--checkpoint")
    guard.read(sample, "--sample")
    guard.write(output, "--output")
    guard.check(overwrite=overwrite)
    return folder


def export_bioimageio(
    checkpoint: str | Path,
    output: str | Path,
    *,
    authors: list[str] | None,
    license: str | None,
    name: str | None = None,
    description: str | None = None,
    sample: str | Path | None = None,
    opset: int = 17,
    atol: float = ATOL,
    overwrite: bool = False,
) -> Path:
    """Write ``checkpoint`` as a bioimage.io package ``output`` (.zip), tested by ``bioimageio.core``.

    Args:
        checkpoint: checkpoint or run folder (a cascade is refused).
        output: the .zip to write (replaced only if unetseg wrote it, or with ``overwrite``).
        authors: the model's authors (at least one).
        license: an SPDX identifier (required: no default claims a licence for you).
        name, description: defaults from the model and its data.
        sample: the image for the test tensors and cover (default: the run's first validation image).
        opset: ONNX opset (>= 17). atol: the ONNX/TorchScript parity bound (max abs, probabilities).
    """
    output = Path(output)
    require_bioimageio()
    with callers_state():
        return _export(checkpoint, output, authors, license, name, description, sample, opset, atol,
                       overwrite)


@contextlib.contextmanager
def callers_state() -> Iterator[None]:
    """The caller's random generators and torch's deterministic mode, given back afterwards: the export
    draws random inputs for its parity checks, and ``bioimageio.core``'s test seeds numpy and torch and
    sets torch's deterministic mode."""
    state = rng_state()
    deterministic = (torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        yield
    finally:
        set_rng_state(state)
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])


def _export(checkpoint: str | Path, output: Path, authors: list[str] | None, license: str | None,
            name: str | None, description: str | None, sample: str | Path | None, opset: int, atol: float,
            overwrite: bool) -> Path:
    license_id, names = check_license(license), check_authors(authors)
    if opset < 17:
        raise ConfigError(f"--opset {opset}: unetseg exports ONNX opset 17 or newer")
    folder = _check_request(checkpoint, output, sample, overwrite)
    config = read_config(folder)
    refuse_unsupported(config, folder)
    describe.preprocessing(config)  # refuses a normalisation the spec cannot express, before any work
    name = check_name(name) if name else default_name(config)
    model, config = load_checkpoint(folder, "cpu")
    wrapped = with_probabilities(model.float().eval(), config.infer.temperature).eval()
    config = with_inference_defaults(config)
    ensure_dir(output.parent, "--output")
    with tempfile.TemporaryDirectory(prefix="unetseg-package-") as tmp:
        work = Path(tmp)
        example = make_sample(wrapped, config, sample)
        diffs = _write_weights(wrapped, config, work, opset, atol)
        rdf = _write_files(work, wrapped, config, folder, example, names, license_id, name,
                           description or default_description(config), output.name)
        descr = _validated(rdf, work)
        atomic_write(output, lambda p: _package_and_test(descr, p))
    record_written([output])
    print(f"max abs difference: ONNX {diffs['onnx']:.3g}, TorchScript {diffs['torchscript']:.3g}")
    print(f"wrote {output} (bioimage.io model spec {rdf['format_version']}: {', '.join(WEIGHTS)}; passed "
          f"bioimageio.core's test); use it with: unetseg predict --checkpoint {output} ...")
    return output


def _write_weights(model: ClassProbabilities, config: Config, work: Path, opset: int,
                   atol: float) -> dict[str, float]:
    """The three weight files; ONNX and TorchScript each checked against PyTorch (max abs <= ``atol``)."""
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    torch.save(state, work / WEIGHTS["pytorch_state_dict"])  # the spec's format: a plain tensor dict
    probs = config.copy_deep()  # what the parity checks read: the graph gives max(2, classes) channels
    probs.model.num_classes = model.num_classes
    diffs = {"onnx": write_onnx(model, probs, work / WEIGHTS["onnx"], opset, atol, "auto")[0],
             "torchscript": write_torchscript(model, probs, work / WEIGHTS["torchscript"])}
    _without_unetseg_config(work / WEIGHTS["onnx"], work / WEIGHTS["torchscript"])
    for fmt, diff in diffs.items():
        if not diff <= atol:
            raise UnetsegError(f"the {fmt} weights differ from PyTorch by {diff:.3g} (max abs), more than "
                               f"{atol:g}; nothing written")
    return diffs


def _without_unetseg_config(graph: Path, script: Path) -> None:
    """The package's networks give probabilities, not the logits of unetseg's own ONNX and TorchScript
    exports: without the config inside, ``unetseg predict`` refuses the bare files instead of misreading
    them (the package itself carries the config)."""
    import onnx

    torch.jit.save(torch.jit.load(str(script)), str(script))  # the file just written: no extra files
    proto = onnx.load(str(graph))
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key != ONNX_CONFIG_KEY]
    del proto.metadata_props[:]
    for key, value in kept:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(graph))


def _environment() -> str:
    torch_version = torch.__version__.split("+")[0]
    return ("name: unetseg\nchannels:\n  - conda-forge\n  - nodefaults\ndependencies:\n  - python>=3.10\n"
            f"  - pytorch>={torch_version}\n  - pip\n  - pip:\n      - unetseg=={package_version()}\n")


def _facts(folder: Path, config: Config, sample: Sample, model: ClassProbabilities) -> RunFacts:
    raw = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    run = folder.parent if (folder.parent / "metrics.csv").is_file() else None
    sizes = [f"{a['id']}: {a['size']['min']} + n*{a['size']['step']}"
             for a in describe.input_axes(model, config)[2:]]
    return RunFacts(metrics=dict(raw.get("metrics") or {}), versions=dict(raw.get("versions") or {}),
                    rows=read_rows(run), cases=_case_counts(config), sample=sample.source.name,
                    input_sizes=", ".join(sizes), weights=list(WEIGHTS), spec_version=_spec_version())


def _case_counts(config: Config) -> tuple[int, int] | None:
    from unetseg.data.cases import find_cases
    from unetseg.data.splits import split_cases

    d = config.data
    try:
        cases = find_cases(d.data, require_masks=False) if d.data else []
        if d.val_data:
            return len(cases), len(find_cases(d.val_data, require_masks=False))
        train, val = split_cases(cases, d.val_fraction, d.split_seed)
    except UnetsegError:
        return None
    return (len(train), len(val)) if cases else None


def _spec_version() -> str:
    from bioimageio.spec.model.v0_5 import ModelDescr

    return str(ModelDescr.implemented_format_version)


def _write_files(work: Path, model: ClassProbabilities, config: Config, folder: Path, sample: Sample,
                 authors: list[str], license_id: str, name: str, description: str,
                 package: str) -> dict[str, Any]:
    """Test tensors, cover, README and environment into ``work``; returns the description (a dict)."""
    np.save(work / "test_input.npy", sample.image)
    np.save(work / "test_output.npy", sample.output)
    write_cover(work / "cover.png", sample, config)
    facts = _facts(folder, config, sample, model)
    cites = describe.citations(config)
    write_text(work / "README.md", readme_text(config, facts, name=name, description=description,
                                               package=package, citations=cites, authors=authors,
                                               license_id=license_id))
    write_text(work / "environment.yaml", _environment())
    rdf = _rdf(model, config, facts, authors=authors, license_id=license_id, name=name,
               description=description, citations=cites)
    rdf["weights"] = _weights_entries(config, work)
    return rdf


def _weights_entries(config: Config, work: Path) -> dict[str, Any]:
    torch_version = torch.__version__.split("+")[0]
    pin = f"unetseg=={package_version()}"
    return {
        "pytorch_state_dict": {
            "source": WEIGHTS["pytorch_state_dict"], "architecture": describe.architecture(config),
            "pytorch_version": torch_version, "dependencies": {"source": "environment.yaml"},
            "comment": f"the network of {pin} (pip install {pin}) with a softmax: class probabilities"},
        "onnx": {"source": WEIGHTS["onnx"], "opset_version": onnx_opset(work / WEIGHTS["onnx"]),
                 "parent": "pytorch_state_dict",
                 "comment": f"exported by {pin}; max abs difference to PyTorch checked"},
        "torchscript": {"source": WEIGHTS["torchscript"], "pytorch_version": torch_version,
                        "parent": "pytorch_state_dict",
                        "comment": f"exported by {pin} (for QuPath, deepImageJ)"},
    }


def onnx_opset(path: Path) -> int:
    """The default-domain opset the ONNX file was written with."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _rdf(model: ClassProbabilities, config: Config, facts: RunFacts, *, authors: list[str], license_id: str,
         name: str, description: str, citations: list[dict[str, str]]) -> dict[str, Any]:
    t = config.train
    training = {"training_epochs": float(len(facts.rows)) if facts.rows else None,
                "training_batch_size": float(t.batch_size), "initial_learning_rate": float(t.lr),
                "learning_rate_schedule": t.schedule, "loss_function": t.loss, "optimizer": t.optimizer,
                "training_preprocessing": f"unetseg normalisation {config.data.normalization!r}"}
    return {
        "type": "model", "format_version": facts.spec_version, "name": name, "description": description,
        "authors": [{"name": a} for a in authors], "cite": citations, "license": license_id,
        "tags": describe.tags(config), "documentation": {"source": "README.md"},
        "covers": [{"source": "cover.png"}],
        "inputs": [{"id": describe.INPUT, "description": "the image (raw intensities)",
                    "axes": describe.input_axes(model, config), "data": {"type": "float32"},
                    "test_tensor": {"source": "test_input.npy"},
                    "preprocessing": describe.preprocessing(config)}],
        "outputs": [{"id": describe.OUTPUT, "description": "class probabilities (softmax)",
                     "axes": describe.output_axes(model, config),
                     "data": {"type": "float32", "range": [0.0, 1.0]},
                     "test_tensor": {"source": "test_output.npy"}}],
        "config": {"unetseg": {"config": published_config(config), "versions": facts.versions,
                               "metrics": facts.metrics},
                   "bioimageio": {"training": {k: v for k, v in training.items() if v is not None}}},
    }


def published_config(config: Config) -> dict[str, Any]:
    """The config as it travels in the package: everything prediction needs, not this machine's paths."""
    cfg = config.to_dict()
    cfg["data"]["data"] = cfg["data"]["val_data"] = cfg["train"]["out"] = None
    return cfg


def _validated(rdf: dict[str, Any], work: Path) -> Any:
    """The description, validated by ``bioimageio.spec`` with its file checks (hashes, test tensors)."""
    from bioimageio.spec import InvalidDescr, ValidationContext, build_description

    with ValidationContext(root=work, perform_io_checks=True):
        descr = build_description(rdf)
    if isinstance(descr, InvalidDescr):
        raise UnetsegError(f"the package does not validate: {_first_error(descr.validation_summary)}")
    return descr


def _first_error(summary: Any) -> str:
    """The first error of a ``bioimageio.spec`` validation summary, as one line."""
    for detail in summary.details:
        for err in detail.errors:
            return f"{detail.name}: {'.'.join(str(x) for x in err.loc)}: {one_line(err.msg)}"
    return str(summary.status)


def _package_and_test(descr: Any, path: Path) -> None:
    """Zip the package to ``path`` and run ``bioimageio.core``'s test of it (CPU) on the written file."""
    from bioimageio.core import test_model
    from bioimageio.spec import save_bioimageio_package

    save_bioimageio_package(descr, output_path=path)
    summary = test_model(path, devices=["cpu"])
    if summary.status != "passed":
        raise CheckpointError(f"the package fails bioimageio.core's test: {_first_error(summary)}")

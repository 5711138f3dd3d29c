"""Turning command-line values into config sources: the option -> config key table of ``train``, the
``--classes`` and ``--option`` syntaxes, multi-number options and the exact command that resumes a run."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from unetseg.config import load_yaml, parse_option_value
from unetseg.config.sources import TRAIN_KEYS, parse_classes
from unetseg.errors import UnetsegError


def train_sources(opts: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """The config sources of ``unetseg train``, lowest precedence first: the YAML recipe, the command line,
    ``--option``. Flags that are off and options not given are left out (so YAML and the plan apply)."""
    given = {
        key: str(opts[name]) if isinstance(opts[name], Path) else opts[name]
        for name, key in TRAIN_KEYS.items()
        if opts[name] not in (None, False)
    }
    if opts["patch_size"]:
        given["data.patch_size"] = size_option(opts["patch_size"], "--patch-size")
    if opts["downsample"]:
        given["data.downsample"] = factor_option(opts["downsample"], "--downsample")
    if opts["classes"]:
        given["data.class_values"] = parse_classes(opts["classes"])
    sources = [(load_yaml(opts["config"]), str(opts["config"]))] if opts["config"] is not None else []
    return [*sources, (given, "command line"), ({"model.options": parse_options(opts["option"])}, "--option")]


def fold_option(text: str | None) -> tuple[int, ...] | None:
    """``--folds 0,2``: the members of a K-fold run's ensemble to predict with."""
    if text is None:
        return None
    try:
        folds = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UnetsegError(f"--folds {text!r}: expected fold numbers separated by commas, e.g. 0,2") from None
    if any(k < 0 for k in folds):
        raise UnetsegError(f"--folds {text!r}: fold numbers start at 0")
    return folds


def parse_options(options: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in options or []:
        if "=" not in item:
            raise UnetsegError(f"--option expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = parse_option_value(v)
    return out


def size_option(values: list[int] | None, option: str) -> list[int] | None:
    if not values:
        return None
    if len(values) not in (2, 3) or any(v < 1 for v in values):
        raise UnetsegError(f"{option} takes 2 (H W) or 3 (D H W) positive sizes, got {values}")
    return list(values)


def factor_option(values: list[float], option: str) -> list[float]:
    if len(values) not in (2, 3) or any(v < 1 for v in values):
        raise UnetsegError(f"{option} takes 2 (H W) or 3 (D H W) factors of at least 1, got {values}")
    return list(values)


def resume_hint(argv: list[str]) -> str:
    kept = [a for a in argv if a not in ("--overwrite", "--resume")]
    return "unetseg " + shlex.join(kept + ["--resume"])


_MULTI = ("--patch-size", "--tile", "--downsample")


def _number(arg: str) -> bool:
    try:
        float(arg)
    except ValueError:
        return False
    return not arg.startswith("--")


def expand_multi(argv: list[str]) -> list[str]:
    """``--patch-size 64 128`` -> ``--patch-size 64 --patch-size 128`` (Typer lists repeat the flag)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        out.append(a)
        i += 1
        if a in _MULTI:
            first = True
            while i < len(argv) and _number(argv[i]):
                if not first:
                    out.append(a)
                out.append(argv[i])
                first = False
                i += 1
    return out

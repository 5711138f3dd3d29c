"""The ``unetseg`` command line (:mod:`.commands`) and the parsing of its values (:mod:`.parsing`)."""

from __future__ import annotations

from unetseg.cli.commands import app, main
from unetseg.cli.parsing import expand_multi, parse_classes

_parse_classes = parse_classes  # the name earlier tests import

__all__ = ["app", "main", "expand_multi", "parse_classes"]

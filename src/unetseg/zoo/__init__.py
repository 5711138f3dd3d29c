"""BioImage Model Zoo packages: ``unetseg export --format bioimageio`` (:func:`export_bioimageio`).

Reading packages back (``unetseg.load("model.zip")``, ``predict --checkpoint model.zip``, packages from the
zoo) is :mod:`unetseg.inference.zoo`, one layer down, where the engines are. ``bioimageio.spec`` and
``bioimageio.core`` (the ``unetseg[bioimageio]`` extra) are imported only when a package is written.
"""

from __future__ import annotations

from unetseg.zoo.export import export_bioimageio

__all__ = ["export_bioimageio"]

"""napari sample data: the demo's synthetic touching cells (an image and its exact object ids)."""

from __future__ import annotations

from typing import Any

from unetseg.data.synthetic import make_image


def touching_cells() -> list[tuple[Any, dict[str, Any], str]]:
    """A 256x256 image of touching cells and its object ids (made here, no download)."""
    image, ids = make_image("nuclei", (256, 256), seed=0)
    return [(image, {"name": "touching cells"}, "image"),
            (ids, {"name": "touching cells (truth)", "visible": False}, "labels")]

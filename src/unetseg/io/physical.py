"""Physical pixel sizes from image metadata, in micrometres (the unit of ``data.pixel_size``)."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from typing import Any

_UM_PER_UNIT = {
    "m": 1e6, "meter": 1e6, "cm": 1e4, "centimeter": 1e4, "mm": 1e3, "millimeter": 1e3,
    "um": 1.0, "µm": 1.0, "μm": 1.0, "\\u00b5m": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
    "micrometre": 1.0, "nm": 1e-3, "nanometer": 1e-3, "å": 1e-4, "angstrom": 1e-4, "pm": 1e-6,
    "picometer": 1e-6,
}
_RESUNIT_UM = {2: 25400.0, 3: 1e4, 4: 1e3, 5: 1.0}  # TIFF inch, cm; tifffile's mm and µm extensions


def um(value: Any, unit: Any) -> float | None:
    factor = _UM_PER_UNIT.get(str(unit).strip().lower()) if unit is not None else None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v * factor if factor and v > 0 and math.isfinite(v) else None


def _known(sizes: list[float | None]) -> tuple[float, ...] | None:
    """``sizes`` when every one is known, else None."""
    known = tuple(s for s in sizes if s)
    return known if len(known) == len(sizes) else None


def tiff_pixel_size(tif: Any, spatial_dims: int) -> tuple[float, ...] | None:
    """Pixel size in µm per spatial axis of an open ``tifffile.TiffFile``: OME ``PhysicalSize*``, ImageJ's
    unit and spacing, or the TIFF resolution tags with a physical unit; None when unknown."""
    if tif.ome_metadata:
        try:
            px = next(e for e in ET.fromstring(tif.ome_metadata).iter() if e.tag.endswith("Pixels"))
            sizes = [um(px.get(f"PhysicalSize{a}"), px.get(f"PhysicalSize{a}Unit", "µm")) for a in "ZYX"]
            known = _known(sizes[3 - spatial_dims:])
            if known is not None:
                return known
        except (ET.ParseError, StopIteration):
            pass
    page = tif.pages.first
    xres, yres = page.resolution
    ij = tif.imagej_metadata or {}
    if ij.get("unit") and xres > 1e-12 and yres > 1e-12:
        sizes = [um(1.0 / yres, ij["unit"]), um(1.0 / xres, ij["unit"])]
        if spatial_dims == 3:
            sizes.insert(0, um(ij.get("spacing", 1.0), ij["unit"]))
    elif int(page.resolutionunit) in _RESUNIT_UM and xres > 1e-12 and yres > 1e-12 and spatial_dims == 2:
        f = _RESUNIT_UM[int(page.resolutionunit)]
        sizes = [f / yres, f / xres]
    else:
        return None
    return _known(sizes)

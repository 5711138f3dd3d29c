"""Data augmentation for 2D and 3D patches: image and mask transformed together.

Geometry: flips and 90-degree rotations (array views, exact), a random affine (rotation, isotropic scale)
and the elastic deformation of the U-Net paper (Ronneberger et al., MICCAI 2015: random displacements on
a coarse 3x3 grid with 10 px standard deviation, interpolated bicubically). Affine and elastic are folded
into ONE coordinate grid that points straight into the source image, so cutting the patch out and
deforming it is a single resampling pass (``grid_sample``; linear for the image, nearest for the mask,
which therefore never gets values that were not there). Intensity: brightness, contrast,
gamma, Gaussian noise and Gaussian blur (nnU-Net's set, Isensee et al. 2021). A cascade's prior channels
(the first stage's one-hot prediction, the last input channels) move with the image but get no intensity
change; instead they are damaged as nnU-Net's cascade does (:func:`perturb_prior`), so the second stage
learns to correct its first stage rather than to copy it.

Every draw comes from the ``numpy.random.Generator`` passed in, so a seed fixes the result.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from unetseg.config import AugmentConfig
from unetseg.config.schema import PAD_MODES
from unetseg.errors import ConfigError


def crop(array: np.ndarray, origin: tuple[int, ...], size: tuple[int, ...], pad_mode: str = "reflect",
         lead: int = 0) -> np.ndarray:
    """Cut ``size`` at ``origin`` (may be negative or reach past the end) from the trailing axes of
    ``array`` (``lead`` leading axes, e.g. channels, are kept), padding what lies outside by reflection or
    zeros. Without padding the result is a view."""
    spatial = array.shape[lead:]
    src: list[slice] = [slice(None)] * lead
    pad = [(0, 0)] * lead
    for o, s, n in zip(origin, size, spatial, strict=True):
        o = int(min(max(o, 1 - s), n - 1))  # keep at least one pixel of overlap
        lo, hi = max(o, 0), min(o + s, n)
        src.append(slice(lo, hi))
        pad.append((lo - o, o + s - hi))
    out = array[tuple(src)]
    if any(p != (0, 0) for p in pad):
        out = np.pad(out, pad, mode="reflect" if pad_mode == "reflect" else "constant")
    return out


def rotation_matrix(angles: np.ndarray) -> np.ndarray:
    """Rotation by one angle (2D) or by three angles about the three axes in turn (3D), in radians."""
    if len(angles) == 1:
        c, s = np.cos(angles[0]), np.sin(angles[0])
        return np.array([[c, -s], [s, c]])
    m = np.eye(3)
    for axis, a in enumerate(angles):
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i] = r[j, j] = np.cos(a)
        r[i, j], r[j, i] = -np.sin(a), np.sin(a)
        m = r @ m
    return m


@functools.lru_cache(maxsize=64)
def cubic_upsampler(coarse: int, n: int) -> np.ndarray:
    """``(n, coarse)`` matrix of cubic-spline interpolation from a coarse grid to ``n`` points (corners
    aligned): ``ndimage.zoom`` of each unit vector, so applying it per axis equals ``zoom(order=3)``."""
    eye = np.eye(coarse)
    return np.stack([ndimage.zoom(e, n / coarse, order=3, mode="nearest") for e in eye], axis=1)


def elastic_displacement(size: tuple[int, ...], grid: int, sigma: float,
                         rng: np.random.Generator) -> np.ndarray:
    """``(d, *size)`` smooth displacements: N(0, sigma) on a ``grid``^d lattice, cubic-interpolated."""
    d = len(size)
    field = rng.normal(0.0, sigma, size=(d, *([grid] * d)))
    for axis, n in enumerate(size):
        w = cubic_upsampler(grid, n)
        field = np.moveaxis(np.tensordot(w, field, axes=([1], [axis + 1])), 0, axis + 1)
    return field.astype(np.float32)


def _support(coords: np.ndarray, spatial: tuple[int, ...], pad_mode: str) -> tuple[list[int], list[int]]:
    """Per axis, the index range ``[lo, hi)`` of the source that sampling at ``coords`` reads. When the
    coordinates leave the image the range reaches that border, and far enough inwards that a reflection
    at the border lands inside it, so reflecting at the range's edge equals reflecting at the image's."""
    lo_out, hi_out = [], []
    for a, n in enumerate(spatial):
        cmin, cmax = float(coords[a].min()), float(coords[a].max())
        lo, hi = int(np.floor(cmin)), int(np.ceil(cmax)) + 1
        if pad_mode == "reflect":
            if lo < 0:
                lo, hi = 0, max(hi, -lo + 1)
            if hi > n:
                lo, hi = min(lo, 2 * (n - 1) - (hi - 1)), n
        lo, hi = min(max(lo, 0), n - 2), min(max(hi, 2), n)  # >= 2 wide: a 1-wide range loses positions
        lo = max(lo, 0)
        lo_out.append(lo)
        hi_out.append(max(hi, lo + 1))
    return lo_out, hi_out


@dataclass
class SpatialParams:
    """A drawn geometric transform: ``matrix`` maps output offsets (from the patch centre) to source
    offsets; ``displacement`` adds per-pixel source offsets. Both None: a plain crop."""

    matrix: np.ndarray | None = None
    displacement: np.ndarray | None = None

    @property
    def identity(self) -> bool:
        return self.matrix is None and self.displacement is None


# nnU-Net's cascade augmentation (its MoveSegAsOneHotToData, ApplyRandomBinaryOperatorTransform and
# RemoveRandomConnectedComponentFromOneHotEncodingTransform): the prior seen in training was predicted on
# the training images themselves, better than on new ones
MORPH_PROB = 0.4  # a random dilation, erosion, opening or closing of each prior channel
MORPH_RADIUS = (1, 8)  # its size, in pixels of the patch
DROP_PROB = 0.2  # one random connected component of each prior channel removed ...
DROP_MAX_SHARE = 0.15  # ... among those covering at most this share of the patch


def _uniform(rng: np.random.Generator, bounds: list[float]) -> float:
    """One draw from ``[lo, hi)`` of a validated ``[lo, hi]`` range."""
    lo, hi = bounds
    return rng.uniform(lo, hi)


def perturb_prior(prior: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Damage a cascade's prior ``(P, *spatial)`` (one-hot foreground classes, in place): with
    :data:`MORPH_PROB` a random binary operator per channel, with :data:`DROP_PROB` a random small
    component per channel removed. Values become 0/1 (the patch's interpolation is thresholded at 0.5)."""
    morph, drop = rng.random() < MORPH_PROB, rng.random() < DROP_PROB
    if not (morph or drop):
        return prior
    cross = ndimage.generate_binary_structure(prior.ndim - 1, 1)
    ops = (ndimage.binary_dilation, ndimage.binary_erosion, ndimage.binary_opening, ndimage.binary_closing)
    for c in rng.permutation(prior.shape[0]):
        mask = prior[c] > 0.5
        if morph and mask.any():
            op = ops[int(rng.integers(len(ops)))]
            radius = int(rng.integers(MORPH_RADIUS[0], MORPH_RADIUS[1] + 1))
            mask = op(mask, structure=cross, iterations=radius)
        if drop and mask.any():
            parts = ndimage.label(mask)[0]
            sizes = np.bincount(parts.ravel())[1:]
            small = np.flatnonzero(sizes <= DROP_MAX_SHARE * mask.size) + 1
            if small.size:
                mask &= parts != small[int(rng.integers(small.size))]
        prior[c] = mask
    return prior


class Augmenter:
    """Random augmentation of an image ``(C, *spatial)`` and its mask ``(*spatial)``.

    Args:
        cfg: probabilities and ranges (:class:`AugmentConfig`); None means no augmentation.
        spatial_dims: 2 or 3.
        pad_mode: ``reflect`` (mirror the image at its border, as the U-Net paper) or ``constant`` (zeros;
            the mask gets class 0) for samples beyond the border.
        prior_channels: the last channels are a cascade's prior: no intensity change, :func:`perturb_prior`
            instead (only when augmenting: ``cfg`` not None).
    """

    def __init__(self, cfg: AugmentConfig | None, spatial_dims: int, pad_mode: str = "reflect",
                 prior_channels: int = 0) -> None:
        if spatial_dims not in (2, 3):
            raise ConfigError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if pad_mode not in PAD_MODES:
            raise ConfigError(f"data.pad_mode: unknown {pad_mode!r}; choose {' or '.join(PAD_MODES)}")
        # ranges and probabilities were validated by the schema
        self.cfg = cfg if cfg is not None else AugmentConfig.model_validate(dict.fromkeys(_PROBS, 0.0))
        self.spatial_dims = spatial_dims
        self.pad_mode = pad_mode
        self.prior = int(prior_channels) if cfg is not None else 0

    def __call__(self, image: np.ndarray, mask: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Augment a patch; the output has the input's shape."""
        return self.extract(image, mask, (0,) * self.spatial_dims, tuple(image.shape[1:]), rng)

    def extract(self, image: np.ndarray, mask: np.ndarray, origin: tuple[int, ...], size: tuple[int, ...],
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Cut the patch of ``size`` at ``origin`` out of a whole image and augment it, in one resampling
        pass when an affine or elastic transform is drawn. Returns new contiguous arrays."""
        size = tuple(int(s) for s in size)
        params = self.sample_spatial(size, rng)
        if params.identity:
            img = crop(image, origin, size, self.pad_mode, lead=1)
            msk = crop(mask, origin, size, self.pad_mode)
        else:
            coords = self.coordinates(params, origin, size)
            img, msk = self.resample(image, coords, order=1), self.resample(mask, coords, order=0)
        img, msk = self._flip_rotate(img, msk, rng)
        img = np.array(img, dtype=np.float32) if np.may_share_memory(img, image) else img
        img = np.ascontiguousarray(img, dtype=np.float32)
        if self.prior:
            self.intensity(img[: -self.prior], rng)
            perturb_prior(img[-self.prior :], rng)
        else:
            img = self.intensity(img, rng)
        return img, np.array(msk) if np.may_share_memory(msk, mask) else np.ascontiguousarray(msk)

    def sample_spatial(self, size: tuple[int, ...], rng: np.random.Generator) -> SpatialParams:
        """Draw the affine and elastic parts (each with its probability)."""
        c, d = self.cfg, self.spatial_dims
        params = SpatialParams()
        if rng.random() < c.affine_prob:
            angles = rng.uniform(-1, 1, size=1 if d == 2 else 3) * np.deg2rad(c.rotation_degrees)
            scale = _uniform(rng, c.scale_range)
            params.matrix = rotation_matrix(angles) / scale
        if rng.random() < c.elastic_prob:
            params.displacement = elastic_displacement(size, int(c.elastic_grid), float(c.elastic_sigma), rng)
        return params

    @staticmethod
    def coordinates(params: SpatialParams, origin: tuple[int, ...], size: tuple[int, ...]) -> np.ndarray:
        """``(d, *size)`` source coordinates of every output pixel (transform about the patch centre)."""
        d = len(size)
        centre = np.asarray(origin, dtype=np.float64) + (np.asarray(size) - 1) / 2.0
        offsets = [np.reshape(np.arange(n, dtype=np.float32) - (n - 1) / 2.0,
                              [-1 if i == a else 1 for i in range(d)]) for a, n in enumerate(size)]
        m = np.eye(d) if params.matrix is None else params.matrix
        coords = np.empty((d, *size), dtype=np.float32)
        for a in range(d):
            acc = np.float32(centre[a]) + sum(np.float32(m[a, i]) * offsets[i] for i in range(d)
                                              if m[a, i] != 0)
            coords[a] = acc if params.displacement is None else acc + params.displacement[a]
        return coords

    def resample(self, array: np.ndarray, coords: np.ndarray, order: int) -> np.ndarray:
        """Sample ``array`` (``(C, *spatial)`` image for order 1, ``(*spatial)`` mask for order 0: nearest,
        so only existing values come out) at ``coords``. Beyond the border: reflection or zeros.

        Runs on ``torch.nn.functional.grid_sample`` (CPU), about 10x faster than
        ``scipy.ndimage.map_coordinates`` for a 256x256 patch, on just the region the coordinates reach.
        """
        d = coords.shape[0]
        spatial = array.shape[-d:]
        lead = array.ndim - d
        lo, hi = _support(coords, spatial, self.pad_mode)
        region = array[(slice(None),) * lead + tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
        grid = np.empty((*coords.shape[1:], d), dtype=np.float32)
        for a in range(d):
            n = hi[a] - lo[a]
            # grid_sample wants (x, y[, z]) order in [-1, 1], corner pixel centres at +-1 (align_corners).
            grid[..., d - 1 - a] = (coords[a] - lo[a]) * (2.0 / (n - 1) if n > 1 else 0.0) - 1.0
        src = torch.from_numpy(np.ascontiguousarray(region, dtype=np.float32))
        src = src.reshape(1, -1, *region.shape[lead:])
        out = F.grid_sample(src, torch.from_numpy(grid)[None], mode="bilinear" if order else "nearest",
                            padding_mode="reflection" if self.pad_mode == "reflect" else "zeros",
                            align_corners=True)[0].numpy()
        return out if order else out[0].astype(array.dtype)

    def _flip_rotate(self, img: np.ndarray, msk: np.ndarray, rng: np.random.Generator) -> tuple:
        c, d = self.cfg, self.spatial_dims
        for axis in range(d):
            if rng.random() < c.flip_prob:
                img, msk = np.flip(img, axis + 1), np.flip(msk, axis)
        if rng.random() < c.rot90_prob:
            # Only planes with equal sides keep the patch shape.
            planes = [(a, b) for a in range(d) for b in range(a + 1, d) if msk.shape[a] == msk.shape[b]]
            k, pick = int(rng.integers(1, 4)), int(rng.integers(0, max(len(planes), 1)))
            if planes:
                a, b = planes[pick]
                img, msk = np.rot90(img, k, axes=(a + 1, b + 1)), np.rot90(msk, k, axes=(a, b))
        return img, msk

    def intensity(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Brightness, contrast, gamma, noise, blur (each with its probability), in place on ``img``."""
        c = self.cfg
        spatial = tuple(range(1, img.ndim))
        if rng.random() < c.brightness_prob:
            img += np.float32(_uniform(rng, c.brightness_range))
        if rng.random() < c.contrast_prob:
            mean = img.mean(axis=spatial, keepdims=True)
            img -= mean
            img *= np.float32(_uniform(rng, c.contrast_range))
            img += mean
        if rng.random() < c.gamma_prob:
            # nnU-Net's gamma: rescale to [0, 1], apply, scale back (the range is kept).
            gamma = _uniform(rng, c.gamma_range)
            lo, hi = img.min(axis=spatial, keepdims=True), img.max(axis=spatial, keepdims=True)
            span = np.maximum(hi - lo, 1e-7)
            img[...] = np.power((img - lo) / span, gamma, dtype=np.float32) * span + lo
        if rng.random() < c.noise_prob:
            std = _uniform(rng, c.noise_std)
            img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(std)
        if rng.random() < c.blur_prob:
            sigma = _uniform(rng, c.blur_sigma)
            for ch in range(img.shape[0]):
                ndimage.gaussian_filter(img[ch], sigma, output=img[ch], mode="mirror")
        return img


_PROBS = ("flip_prob", "rot90_prob", "affine_prob", "elastic_prob", "brightness_prob", "contrast_prob",
          "gamma_prob", "noise_prob", "blur_prob")

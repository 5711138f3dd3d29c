"""Data: reading and writing images and masks, datasets, patch sampling, augmentation, synthetic data.

The pieces, in the order data flows through them: :mod:`~unetseg.data.io` (files, one error type),
:mod:`~unetseg.data.dataset` (cases, class map, normalisation, cache), :mod:`~unetseg.data.prepare`
(reads and checks a dataset once), :mod:`~unetseg.data.sampling` (patches) and
:mod:`~unetseg.data.augment` (2D/3D augmentation). :mod:`~unetseg.data.synthetic` makes test data.
"""

from __future__ import annotations

from unetseg.data.augment import Augmenter
from unetseg.data.dataset import ClassMap, Normalizer, load_case, normalize, split_cases
from unetseg.data.io import (
    IMAGE_SUFFIXES,
    list_images,
    read_image,
    read_mask,
    stem_of,
    write_mask,
    write_probabilities,
)
from unetseg.data.layout import Case, find_cases
from unetseg.data.overlay import save_overlay
from unetseg.data.prepare import PreparedData, prepare_data
from unetseg.data.sampling import PatchDataset

__all__ = [
    "IMAGE_SUFFIXES", "Augmenter", "Case", "ClassMap", "Normalizer", "PatchDataset", "PreparedData",
    "find_cases", "list_images", "load_case", "normalize", "prepare_data", "read_image", "read_mask",
    "save_overlay", "split_cases", "stem_of", "write_mask", "write_probabilities",
]

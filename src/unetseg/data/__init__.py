"""Data: reading and writing images and masks, datasets, patch sampling, augmentation, synthetic data.

The pieces, in the order data flows through them: :mod:`~unetseg.io.images` and :mod:`~unetseg.io.formats`
(files, one error type), :mod:`~unetseg.io.lazy` (whole slides and volumes, read by region),
:mod:`~unetseg.data.cases` (the pairs of a dataset folder), :mod:`~unetseg.data.splits` (validation
split and folds, by group), :mod:`~unetseg.data.labels` (class map),
:mod:`~unetseg.data.normalize`, :mod:`~unetseg.data.store` (a case as training arrays; the in-memory store),
:mod:`~unetseg.data.prepare` (reads and checks a dataset once), :mod:`~unetseg.data.sampling` (patches),
:mod:`~unetseg.data.augment` (2D/3D augmentation) and :mod:`~unetseg.data.instances` (instance targets).
:mod:`~unetseg.data.synthetic` makes test data.
"""

from __future__ import annotations

from unetseg.data.augment import Augmenter
from unetseg.data.cases import Case, find_cases, read_pair
from unetseg.data.labels import ClassMap
from unetseg.data.normalize import Normalizer, normalize
from unetseg.data.overlay import save_overlay
from unetseg.data.prepare import PreparedData, prepare_data
from unetseg.data.sampling import PatchDataset
from unetseg.data.splits import fold_cases, split_cases
from unetseg.data.store import CaseStore, load_case
from unetseg.io.images import (
    IMAGE_SUFFIXES,
    list_images,
    read_image,
    read_mask,
    stem_of,
    write_mask,
    write_probabilities,
)

__all__ = [
    "IMAGE_SUFFIXES", "Augmenter", "Case", "CaseStore", "ClassMap", "Normalizer", "PatchDataset",
    "PreparedData", "find_cases", "fold_cases", "list_images", "load_case", "normalize", "prepare_data",
    "read_image",
    "read_mask", "read_pair", "save_overlay", "split_cases", "stem_of", "write_mask", "write_probabilities",
]

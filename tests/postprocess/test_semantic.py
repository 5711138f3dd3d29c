"""Connected-component post-processing of semantic labels, in 2D and 3D, as nnU-Net applies it."""

from __future__ import annotations

import numpy as np

from unetseg.config.schema import PostprocessStep
from unetseg.postprocess.semantic import apply_postprocessing, apply_step, describe_step, label_components


def test_largest_component_per_class_with_full_connectivity() -> None:
    labels = np.zeros((10, 10), np.uint8)
    labels[0:4, 0:4] = 1  # 16 px
    labels[6, 6] = labels[7, 7] = 1  # diagonal neighbours: one component of 2 (8-connectivity)
    labels[8:10, 0:3] = 2
    out = apply_step(labels, [1], "largest")
    assert (out[6:8, 6:8] == 0).all() and (out[0:4, 0:4] == 1).all() and (out[8:10, 0:3] == 2).all()
    assert label_components(labels == 1)[1].tolist() == [16, 2]
    assert apply_step(out, [1], "largest") is out  # nothing to change: the same array


def test_min_size_and_the_union_of_classes_in_3d() -> None:
    labels = np.zeros((6, 8, 8), np.uint8)
    labels[0:3, 0:3, 0:3] = 1
    labels[0:3, 3:5, 0:3] = 2  # touches class 1: one foreground component of 45 voxels
    labels[5, 7, 7] = 2  # a lone voxel
    labels[4, 6, 6] = 1  # corner-touching the lone voxel (26-connectivity): a pair
    union = apply_step(labels, [1, 2], "largest")
    assert union[5, 7, 7] == 0 and union[4, 6, 6] == 0 and (union[0:3, 0:5, 0:3] > 0).all()
    small = apply_step(labels, [2], "min_size", 2)
    assert small[5, 7, 7] == 0 and small[4, 6, 6] == 1  # class 2 alone: the lone voxel is a component of 1
    steps = [PostprocessStep(classes=[1], op="min_size", size=27), PostprocessStep(classes=[2], op="largest")]
    out = apply_postprocessing(labels, steps)
    assert out[4, 6, 6] == 0 and out[5, 7, 7] == 0 and (out[0:3, 0:3, 0:3] == 1).all()
    assert describe_step(steps[0]) == "remove components under 27 px of class 1"
    assert describe_step(PostprocessStep(classes=[1, 2], op="largest")) == \
        "keep the largest component of classes 1+2"

"""Per-object tables and their CSV text, with values checked by hand on a tiny image."""

from __future__ import annotations

import numpy as np
import pytest

from unetseg.errors import DataError
from unetseg.postprocess.objects import ObjectAccumulator, object_table, table_to_csv_text

LABELS = np.array([
    [2, 2, 0, 0, 0],
    [2, 2, 0, 7, 7],
    [0, 0, 0, 7, 0],
    [0, 0, 0, 0, 0],
], np.uint16)


def _image() -> np.ndarray:
    return np.stack([np.arange(20.0).reshape(4, 5), np.full((4, 5), 2.0)])


def test_object_table_by_hand() -> None:
    table = object_table(LABELS, image=_image(), spacing=(0.5, 3.0))
    assert list(table) == ["id", "area", "area_physical", "centroid_0", "centroid_1", "bbox_0_start",
                           "bbox_0_stop", "bbox_1_start", "bbox_1_stop", "mean_intensity_c0",
                           "mean_intensity_c1"]
    np.testing.assert_array_equal(table["id"], [2, 7])
    np.testing.assert_array_equal(table["area"], [4, 3])
    np.testing.assert_allclose(table["area_physical"], [4 * 1.5, 3 * 1.5])
    # id 7 is at (1, 3), (1, 4), (2, 3): centroid (4/3, 10/3)
    np.testing.assert_allclose(table["centroid_0"], [0.5, 4 / 3])
    np.testing.assert_allclose(table["centroid_1"], [0.5, 10 / 3])
    np.testing.assert_array_equal(table["bbox_0_start"], [0, 1])
    np.testing.assert_array_equal(table["bbox_0_stop"], [2, 3])
    np.testing.assert_array_equal(table["bbox_1_start"], [0, 3])
    np.testing.assert_array_equal(table["bbox_1_stop"], [2, 5])
    # channel 0 is the flat index: (0 + 1 + 5 + 6) / 4 and (8 + 9 + 13) / 3
    np.testing.assert_allclose(table["mean_intensity_c0"], [3.0, 10.0])
    np.testing.assert_allclose(table["mean_intensity_c1"], [2.0, 2.0])
    assert table["id"].dtype == np.int64 and table["area"].dtype == np.int64


def test_csv_text_by_hand() -> None:
    text = table_to_csv_text(object_table(LABELS, image=_image(), spacing=(0.5, 3.0)))
    assert text == (
        "id,area,area_physical,centroid_0,centroid_1,bbox_0_start,bbox_0_stop,bbox_1_start,bbox_1_stop,"
        "mean_intensity_c0,mean_intensity_c1\n"
        "2,4,6,0.5,0.5,0,2,0,2,3,2\n"
        "7,3,4.5,1.33333,3.33333,1,3,3,5,10,2\n"
    )


def test_single_channel_image_and_3d() -> None:
    labels = np.zeros((3, 4, 5), np.int32)
    labels[1, 1:3, 1:4] = 5
    table = object_table(labels, image=np.full(labels.shape, 7.0))
    assert [k for k in table if k.startswith("centroid")] == ["centroid_0", "centroid_1", "centroid_2"]
    assert table["area"].tolist() == [6] and table["mean_intensity_c0"].tolist() == [7.0]
    assert table["centroid_2"].tolist() == [2.0] and table["bbox_2_stop"].tolist() == [4]
    assert "area_physical" not in table


def test_empty_labels_give_zero_rows() -> None:
    table = object_table(np.zeros((4, 5), np.uint8), image=_image(), spacing=(1.0, 1.0))
    assert "mean_intensity_c1" in table and "bbox_1_stop" in table and "area_physical" in table
    assert all(len(column) == 0 for column in table.values())
    assert table_to_csv_text(table) == ",".join(table) + "\n"


def test_bad_input() -> None:
    with pytest.raises(DataError):
        object_table(LABELS, image=np.zeros((2, 4, 4)))
    with pytest.raises(DataError):
        object_table(LABELS, spacing=(1.0,))
    with pytest.raises(DataError):
        object_table(LABELS.astype(float))
    with pytest.raises(DataError):
        table_to_csv_text({"a": np.arange(2), "b": np.arange(3)})


@pytest.mark.parametrize("shape,cuts", [((60, 45), [0, 7, 8, 30, 60]), ((12, 20, 16), [0, 5, 12])])
def test_the_table_accumulated_in_slabs_equals_the_whole_image_table(shape, cuts) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 9, shape).astype(np.uint32) * (rng.random(shape) < 0.5)
    labels[labels == 4] = 0  # an id that is absent
    image = rng.random((2, *shape))
    spacing = (0.5,) * len(shape)
    acc = ObjectAccumulator(len(shape), 2, spacing)
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        acc.add(labels[a:b], (a, *(0,) * (len(shape) - 1)), image[:, a:b])
    got, want = acc.table(), object_table(labels, image, spacing)
    assert list(got) == list(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-12, err_msg=key)
    assert list(ObjectAccumulator(2).table()) == list(object_table(np.zeros((3, 3), np.uint8)))

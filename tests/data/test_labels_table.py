"""The label table must be cityscapesscripts' own, in every derived form."""

import numpy as np
from cityscapesscripts.helpers.labels import labels as official

from attnseg.data import labels as L


def test_lookup_tables_follow_the_official_table():
    for label in official:
        if label.id < 0:
            continue
        expected = label.trainId if 0 <= label.trainId < 255 else 255
        assert L.id_to_train_id[label.id] == expected, label.name
    assert np.all(L.id_to_train_id[34:] == 255)  # ids outside the table are ignored, not wrapped
    train_ids = np.arange(19, dtype=np.uint8)
    assert np.array_equal(L.id_to_train_id[L.train_id_to_id[train_ids]], train_ids)
    assert L.train_id_to_id[255] == 0  # ignore goes to "unlabeled" in submissions


def test_names_palette_and_categories():
    assert len(L.CITYSCAPES_CLASSES) == 19
    assert L.CITYSCAPES_CLASSES[0] == "road" and L.CITYSCAPES_CLASSES[-1] == "bicycle"
    assert L.CITYSCAPES_PALETTE.shape == (19, 3) and L.CITYSCAPES_PALETTE.dtype == np.uint8
    assert tuple(L.CITYSCAPES_PALETTE[13]) == (0, 0, 142)  # car
    assert L.CITYSCAPES_CATEGORIES == ("flat", "construction", "object", "nature", "sky", "human", "vehicle")
    assert L.CITYSCAPES_CATEGORIES[L.TRAIN_ID_TO_CATEGORY[L.CITYSCAPES_CLASSES.index("rider")]] == "human"
    assert L.ID_TO_CATEGORY_ID[7] == 1 and L.ID_TO_CATEGORY_ID[0] == 0


def test_conversions_handle_wide_dtypes_and_unknown_values():
    ids = np.array([[7, 26, 0, 300], [-1, 33, 34, 255]], dtype=np.int32)
    assert L.label_ids_to_train_ids(ids).tolist() == [[0, 13, 255, 255], [255, 18, 255, 255]]
    assert L.train_ids_to_label_ids(np.array([0, 18, 255, 19])).tolist() == [7, 33, 0, 0]
    rgb = L.colorize_train_ids(np.array([[0, 255]], dtype=np.uint8))
    assert rgb.tolist() == [[[128, 64, 128], [0, 0, 0]]]
    assert L.colorize_label_ids(np.array([[23]], dtype=np.uint8)).tolist() == [[[70, 130, 180]]]

"""Label values are checked whenever a dataset reads a label (train and eval), also inside DataLoader workers."""

import shutil

import cv2
import numpy as np
import pytest
from torch.utils.data import DataLoader

from attnseg.config import DataConfig, TrainConfig
from attnseg.config.build import build_eval_dataset, build_eval_loader
from attnseg.data.base import values_outside
from attnseg.data.cityscapes import CityscapesDataset
from attnseg.data.labels import id_to_train_id
from attnseg.data.prepare import prepare_cityscapes
from attnseg.data.synthetic import make_synthetic_dataset
from attnseg.config.train_data import build_train_data
from attnseg.errors import ConfigError, DatasetError

TRAIN_ID_MESSAGE = r"label values \[40, 41\] are not trainIds of the 19 classes \(0..18\) or the ignore value 255"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = make_synthetic_dataset(tmp_path_factory.mktemp("cs"), num_train=2, num_val=2, height=32, width=64, seed=3)
    prepare_cityscapes(root, workers=1, progress=False)
    return root


@pytest.fixture
def copy(prepared, tmp_path):
    return shutil.copytree(prepared, tmp_path / "cityscapes")


def _poison(path, values=(40, 41)):
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    for k, value in enumerate(values):
        label[1, k] = value
    assert cv2.imwrite(str(path), label)


def _only_items(items):
    return items


def test_values_outside():
    label = np.array([[0, 18, 255], [40, 41, 40]], np.uint8)
    allowed = frozenset(range(19)) | {255}
    assert values_outside(label, allowed) == [40, 41]
    assert values_outside(label[:1], allowed) == []
    assert values_outside(label[:, ::2], allowed) == [40]  # a non-contiguous view
    assert values_outside(np.array([[3, 300]], np.uint16), allowed) == [300]
    assert values_outside(np.array([-1, 5], np.int32), frozenset({-1, 5})) == []
    assert values_outside(np.zeros((0, 4), np.uint8), allowed) == []


def test_train_id_40_in_training_names_the_file(copy):
    victim = sorted(copy.glob("gtFine/train/*/*_labelTrainIds.png"))[1]
    _poison(victim)
    dataset = CityscapesDataset(copy, "train")
    dataset[0]  # the other file is fine
    with pytest.raises(DatasetError, match=rf"^{victim}: {TRAIN_ID_MESSAGE}$"):
        dataset[1]
    loader = DataLoader(dataset, batch_size=1, num_workers=1, collate_fn=_only_items)
    with pytest.raises(DatasetError) as caught:  # torch re-raises it in the main process, wrapped in its traceback
        list(loader)
    assert str(caught.value) == f"{victim}: label values [40, 41] are not trainIds of the 19 classes (0..18) or the " \
                                "ignore value 255"


def test_train_id_40_through_the_training_loader(copy):
    victim = sorted(copy.glob("gtFine/train/*/*_labelTrainIds.png"))[0]
    _poison(victim, (40,))
    data_cfg = DataConfig(root=str(copy), crop_size=(16, 16), num_workers=1)
    data = build_train_data(data_cfg, TrainConfig(batch_size=2), num_classes=19, progress=False)
    data.sampler.set_epoch(0)
    with pytest.raises(DatasetError) as caught:
        next(iter(data.loader))
    message = str(caught.value)
    assert message.startswith(f"{victim}: label values [40] are not trainIds") and "\n" not in message


def test_label_id_outside_the_cityscapes_table(copy):
    for path in copy.glob("gtFine/*/*/*_labelTrainIds.png"):
        path.unlink()  # read the labelIds, mapped on the fly
    victim = sorted(copy.glob("gtFine/val/*/*_labelIds.png"))[0]
    _poison(victim, (40,))
    dataset = CityscapesDataset(copy, "val")
    expected = rf"^{victim}: label values \[40\] are not labelIds of the Cityscapes label table \(0..33\)$"
    with pytest.raises(DatasetError, match=expected):
        dataset[0]
    with pytest.raises(DatasetError, match=expected):
        dataset.validate("all")
    clean = cv2.imread(str(dataset.samples[1].label), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(dataset[1]["label"], id_to_train_id[clean])  # a clean labelIds file still maps


def test_eval_reads_check_the_same(copy):
    victim = sorted(copy.glob("gtFine/val/*/*_labelTrainIds.png"))[1]
    _poison(victim)
    data_cfg = DataConfig(root=str(copy), num_workers=1)
    dataset = build_eval_dataset(data_cfg, "val")
    assert dataset[0]["label"].shape == (32, 64)
    with pytest.raises(DatasetError, match=rf"^{victim}: {TRAIN_ID_MESSAGE}$"):
        dataset[1]
    with pytest.raises(DatasetError) as caught:
        list(build_eval_loader(data_cfg, "val", num_workers=1))
    assert str(caught.value).startswith(str(victim)) and "Traceback" not in str(caught.value)


def test_wrapped_worker_messages_are_unwrapped():
    wrapped = ("Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in <module>\nattnseg.errors.DatasetError: a.png: bad\nsecond line\n')
    assert str(DatasetError(wrapped)) == "a.png: bad\nsecond line"
    assert str(ConfigError(wrapped.replace("DatasetError", "ConfigError"))) == "a.png: bad\nsecond line"
    assert str(DatasetError("Caught nothing: a.png")) == "Caught nothing: a.png"
    assert DatasetError("a", "b").args == ("a", "b")

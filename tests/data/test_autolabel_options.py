"""NVIDIA's autolabelled-coarse options (custom_coarse_prob, custom_coarse_dropout_classes, mask_out_cityscapes):
the pure label function against an independent labelId-space replay of the reference loader, the dataset on a tiny
fake tree (raw refinement_final and prepared convert_autolabelled), and the config plumbing."""

import shutil

import cv2
import numpy as np
import pytest

from attnseg.config.schema import DataConfig
from attnseg.data.cityscapes import CityscapesDataset, ego_border_region, refine_autolabel
from attnseg.data.labels import id_to_train_id
from attnseg.data.prepare import prepare_autolabelled
from attnseg.data.synthetic import make_synthetic_dataset
from attnseg.config.train_data import build_train_datasets, label_loader
from attnseg.errors import DatasetError

TRUCK, BUS, TRAIN = 27, 28, 31  # labelIds of trainIds 14, 15, 16
ROAD, CAR = 7, 26


def nvidia_replay(label_ids, prob, coarse_ids, threshold, dropout_train_ids, mask_out):
    """The reference loader's steps on one 1024x2048 frame, in labelId space: float multiply by the fixed drop mask,
    in-place id -> trainId loop in id order with the gtCoarse union for dropout classes, then the prob threshold."""
    mask = label_ids.astype(np.float64)
    if mask_out:
        drop = np.zeros((1024, 2048))
        drop[15:840, 14:2030] = 1.0
        mask = drop * mask
    for label_id in range(34):
        train_id = int(id_to_train_id[label_id])
        selected = mask == label_id
        if train_id in dropout_train_ids and selected.sum() > 0:
            selected = selected | (coarse_ids == label_id)
            mask[selected] = coarse_ids[selected]
        mask[selected] = train_id
    mask = mask.astype(np.uint8)
    mask[prob / 255.0 < threshold] = 255
    return mask


def blocky(rng, values, shape, block):
    small = rng.choice(values, size=(shape[0] // block, shape[1] // block))
    return np.kron(small, np.ones((block, block), dtype=small.dtype)).astype(np.uint8)


@pytest.mark.parametrize("mask_out", [False, True])
def test_refine_equals_reference_replay_at_full_size(mask_out):
    rng = np.random.default_rng(0)
    ids = np.array([ROAD, 8, 11, CAR, TRUCK, BUS, TRAIN, 33, 0, 255])
    label_ids = blocky(rng, ids, (1024, 2048), 16)
    coarse_ids = blocky(rng, np.array([0, ROAD, TRUCK, BUS, TRAIN, CAR]), (1024, 2048), 32)
    label_ids[label_ids == TRAIN] = ROAD  # train absent from the autolabel: its gtCoarse pixels must not enter
    prob = rng.integers(0, 256, size=(1024, 2048), dtype=np.uint8)
    expected = nvidia_replay(label_ids, prob, coarse_ids, 0.5, (14, 15, 16), mask_out)
    ours = refine_autolabel(
        id_to_train_id[label_ids], confidence=prob, min_confidence=0.5, coarse_train_ids=id_to_train_id[coarse_ids],
        gtcoarse_classes=(14, 15, 16), mask_border=mask_out,
    )
    assert np.array_equal(ours, expected)
    assert not (ours == 16).any() and (ours == 14).sum() > (id_to_train_id[label_ids] == 14).sum() * 0.5


def test_refine_limiting_cases():
    rng = np.random.default_rng(1)
    train_ids = rng.integers(0, 19, size=(8, 16), dtype=np.uint8)
    coarse = rng.integers(0, 19, size=(8, 16), dtype=np.uint8)
    assert np.array_equal(refine_autolabel(train_ids), train_ids)
    everything = np.full((8, 16), 255, np.uint8)
    assert np.array_equal(refine_autolabel(train_ids, confidence=rng.integers(0, 256, (8, 16), dtype=np.uint8),
                                           min_confidence=0.0), train_ids)
    assert (refine_autolabel(train_ids, confidence=np.full((8, 16), 254, np.uint8), min_confidence=1.0) == 255).all()
    assert np.array_equal(refine_autolabel(train_ids, confidence=everything, min_confidence=1.0), train_ids)
    # 0.5 falls between 127/255 and 128/255
    confidence = np.full((8, 16), 128, np.uint8)
    confidence[:, :8] = 127
    thresholded = refine_autolabel(train_ids, confidence=confidence, min_confidence=0.5)
    assert (thresholded[:, :8] == 255).all() and np.array_equal(thresholded[:, 8:], train_ids[:, 8:])
    # union only where the autolabel has the class; other gtCoarse classes never enter
    label = np.zeros((8, 16), np.uint8)
    label[0, 0] = 14
    coarse = np.zeros((8, 16), np.uint8)
    coarse[4:, :] = 14
    coarse[:2, 8:] = 15
    union = refine_autolabel(label, coarse_train_ids=coarse, gtcoarse_classes=(14, 15))
    assert union[0, 0] == 14 and (union[4:] == 14).all() and (union[:2, 8:] == 0).all()
    assert np.array_equal(refine_autolabel(label, coarse_train_ids=coarse, gtcoarse_classes=(15,)), label)
    # low confidence wins over the union
    low = np.full((8, 16), 255, np.uint8)
    low[7, 0] = 0
    assert refine_autolabel(label, confidence=low, min_confidence=0.5, coarse_train_ids=coarse,
                            gtcoarse_classes=(14,))[7, 0] == 255
    assert label[0, 0] == 14 and (label[4:] == 0).all()  # input untouched


def test_ego_border_region():
    assert ego_border_region(1024, 2048) == (15, 840, 14, 2030)
    assert ego_border_region(512, 1024) == (8, 420, 7, 1015)
    assert ego_border_region(2048, 4096) == (30, 1680, 28, 4060)
    assert ego_border_region(1, 1) == (0, 1, 0, 1)
    label = refine_autolabel(np.zeros((64, 128), np.uint8), mask_border=True)
    top, bottom, left, right = ego_border_region(64, 128)
    assert (label[top:bottom, left:right] == 0).all() and (label == 255).sum() == 64 * 128 - (bottom - top) * (
        right - left
    )


# ---------------------------------------------------------------------------------------------------------------------
# The dataset on a fake tree
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_tree(tmp_path_factory):
    """train_extra images (synthetic), refinement_final labelIds + *_prob.png, gtCoarse/train_extra labelIds."""
    root = make_synthetic_dataset(tmp_path_factory.mktemp("auto"), num_train=2, num_val=0, height=64, width=128,
                                  seed=3)
    rng = np.random.default_rng(2)
    frames = {}
    for image in sorted(root.glob("leftImg8bit/train/*/*_leftImg8bit.png")):
        city, stem = image.parent.name, image.name[: -len("_leftImg8bit.png")]
        for folder in ("leftImg8bit_trainextra/leftImg8bit/train_extra", "refinement_final/train_extra",
                       "gtCoarse/train_extra"):
            (root / folder / city).mkdir(parents=True, exist_ok=True)
        shutil.copy(image, root / "leftImg8bit_trainextra/leftImg8bit/train_extra" / city / image.name)
        label_ids = np.full((64, 128), ROAD, np.uint8)
        label_ids[10:20, 10:30] = TRUCK
        label_ids[40:50, 60:90] = CAR
        label_ids[0, 0] = 255
        coarse_ids = np.zeros((64, 128), np.uint8)
        coarse_ids[30:40, 10:40] = TRUCK  # joins (the autolabel has trucks)
        coarse_ids[30:40, 90:120] = BUS  # stays out (the autolabel has no bus)
        prob = np.full((64, 128), 200, np.uint8)
        prob[55:60, :] = rng.integers(0, 120, size=(5, 128))
        cv2.imwrite(str(root / "refinement_final/train_extra" / city / image.name), label_ids)
        cv2.imwrite(str(root / "refinement_final/train_extra" / city / f"{stem}_leftImg8bit_prob.png"), prob)
        cv2.imwrite(str(root / "gtCoarse/train_extra" / city / f"{stem}_gtCoarse_labelIds.png"), coarse_ids)
        frames[stem] = (label_ids, prob, coarse_ids)
    return root, frames


OPTIONS = dict(autolabel_min_confidence=0.5, autolabel_gtcoarse_classes=[16, 14, 15], autolabel_mask_border=True)


def expected_label(label_ids, prob, coarse_ids, border=True, threshold=0.5):
    return refine_autolabel(id_to_train_id[label_ids], confidence=prob, min_confidence=threshold,
                            coarse_train_ids=id_to_train_id[coarse_ids], gtcoarse_classes=(14, 15, 16),
                            mask_border=border)


def test_dataset_applies_the_options(fake_tree):
    root, frames = fake_tree
    plain = CityscapesDataset(root, "train_extra", mode="autolabelled")
    dataset = CityscapesDataset(root, "train_extra", mode="autolabelled", **OPTIONS)
    assert len(dataset) == 2 and dataset.autolabel_gtcoarse_classes == (14, 15, 16)
    assert plain.label_options == () and len(dataset.label_options) == 3
    top, bottom, left, right = ego_border_region(64, 128)
    for index in range(len(dataset)):
        item, raw = dataset[index], plain[index]
        label_ids, prob, coarse_ids = frames[item["name"]]
        assert np.array_equal(raw["label"], id_to_train_id[label_ids])
        assert np.array_equal(item["label"], expected_label(label_ids, prob, coarse_ids))
        label = item["label"]
        assert (label[:top] == 255).all() and (label[bottom:] == 255).all() and (label[:, :left] == 255).all()
        assert (label[30:40, 10:40] == 14).all()  # gtCoarse trucks joined
        assert (label[30:40, 90:120] == 0).all()  # gtCoarse bus did not (none in the autolabel): road stays
        assert (label[55:58, left:right] == 255).all()  # confidence < 0.5
        assert (label[45, 70]) == 13  # car untouched
        centroid = dataset.centroid_label(dataset.samples[index])  # union only, as uniform.class_centroids_image
        assert np.array_equal(centroid, expected_label(label_ids, prob, coarse_ids, border=False, threshold=None))


def test_prepared_labels_give_the_same_result(fake_tree, tmp_path):
    root, _ = fake_tree
    copy = shutil.copytree(root, tmp_path / "cs")
    summary = prepare_autolabelled(copy, workers=1, progress=False)
    assert summary.written == 2 + 2  # 2 autolabels (not their *_prob.png) + 2 gtCoarse
    assert not list(copy.glob("convert_autolabelled/*/*_prob.png"))
    assert len(list(copy.glob("gtCoarse/train_extra/*/*_gtCoarse_labelTrainIds.png"))) == 2
    prepared = CityscapesDataset(copy, "train_extra", mode="autolabelled", **OPTIONS)
    assert {s.encoding for s in prepared.samples} == {"trainIds"}
    raw = CityscapesDataset(root, "train_extra", mode="autolabelled", **OPTIONS)
    for index in range(2):
        assert np.array_equal(prepared[index]["label"], raw[index]["label"])


def test_missing_companion_files_are_named(fake_tree, tmp_path):
    copy = shutil.copytree(fake_tree[0], tmp_path / "cs")
    victim = sorted(copy.glob("refinement_final/train_extra/*/*_prob.png"))[1]
    victim.unlink()
    with pytest.raises(DatasetError, match=rf"{victim.name}: confidence map not found"):
        CityscapesDataset(copy, "train_extra", mode="autolabelled", autolabel_min_confidence=0.5)
    CityscapesDataset(copy, "train_extra", mode="autolabelled", autolabel_mask_border=True)  # not needed there
    coarse = sorted(copy.glob("gtCoarse/train_extra/*/*_labelIds.png"))[0]
    coarse.unlink()
    with pytest.raises(DatasetError, match=rf"{coarse.name}: gtCoarse label not found"):
        CityscapesDataset(copy, "train_extra", mode="autolabelled", autolabel_gtcoarse_classes=(14,))
    shutil.rmtree(copy / "gtCoarse")
    with pytest.raises(DatasetError, match=r"gtCoarse[/\\]train_extra: folder not found"):
        CityscapesDataset(copy, "train_extra", mode="autolabelled", autolabel_gtcoarse_classes=(14,))


def test_bad_option_values(fake_tree):
    root, _ = fake_tree
    with pytest.raises(ValueError, match="mode 'autolabelled' only"):
        CityscapesDataset(root, "train", mode="fine", autolabel_mask_border=True)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        CityscapesDataset(root, "train_extra", mode="autolabelled", autolabel_min_confidence=1.5)
    with pytest.raises(ValueError, match="trainIds 0..18"):
        CityscapesDataset(root, "train_extra", mode="autolabelled", autolabel_gtcoarse_classes=(19,))
    with pytest.raises(ValueError, match="coarse 'autolabelled' only"):
        DataConfig(coarse="coarse", autolabel_min_confidence=0.5)


def test_config_plumbing(fake_tree):
    root, frames = fake_tree
    cfg = DataConfig(root=str(root), coarse="autolabelled", autolabel_min_confidence=0.5,
                     autolabel_gtcoarse_classes=(14, 15, 16), autolabel_mask_border=True)
    fine, coarse = build_train_datasets(cfg)
    assert len(fine) == 2 and coarse.label_options == CityscapesDataset(root, "train_extra", "autolabelled",
                                                                        **OPTIONS).label_options
    name = coarse[0]["name"]
    assert np.array_equal(coarse[0]["label"], expected_label(*frames[name]))
    # class-uniform centroids are computed on the union-only label, not the thresholded one
    assert np.array_equal(label_loader(coarse)(0), expected_label(*frames[name], border=False, threshold=None))

"""`prepare` checks every frame before writing anything and lists every bad file in one error."""

import json
import shutil

import cv2
import numpy as np
import pytest

from attnseg.cli.main import main
from attnseg.data import checking
from attnseg.data.prepare import prepare_autolabelled, prepare_cityscapes, train_ids_from_label_ids
from attnseg.data.synthetic import make_synthetic_dataset
from attnseg.errors import DatasetError


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("cs"), num_train=3, num_val=2, height=32, width=64, seed=5)


@pytest.fixture
def copy(synthetic, tmp_path):
    return shutil.copytree(synthetic, tmp_path / "cityscapes")


def _break_four_files(root):
    """(a) a truncated image, (b) a label of the wrong size, (c) a polygon json of the wrong size, (d) labelId 40."""
    images = sorted(root.glob("leftImg8bit/*/*/*_leftImg8bit.png"))
    labels = sorted(root.glob("gtFine/*/*/*_gtFine_labelIds.png"))
    jsons = sorted(root.glob("gtFine/*/*/*_gtFine_polygons.json"))
    truncated = images[0]
    truncated.write_bytes(truncated.read_bytes()[:200])
    wrong_size = labels[1]
    cv2.imwrite(str(wrong_size), np.zeros((16, 64), np.uint8))
    wrong_json = jsons[2]
    annotation = json.loads(wrong_json.read_text())
    annotation["imgHeight"] = 48
    wrong_json.write_text(json.dumps(annotation))
    label_40 = labels[3]
    label = cv2.imread(str(label_40), cv2.IMREAD_UNCHANGED)
    label[3, 4] = 40
    cv2.imwrite(str(label_40), label)
    return truncated, wrong_size, wrong_json, label_40


def test_every_bad_file_is_listed_and_nothing_is_written(copy):
    truncated, wrong_size, wrong_json, label_40 = _break_four_files(copy)
    with pytest.raises(DatasetError) as caught:
        prepare_cityscapes(copy, workers=2, progress=False)
    message = str(caught.value)
    first, *lines = message.splitlines()
    assert first.startswith(f"4 bad files under {copy}, nothing was converted or listed")
    assert len(lines) == 4
    assert any(line.startswith(f"  {truncated}: cannot be decoded as an image") for line in lines)
    assert any(line.startswith(f"  {wrong_size}: label is 64x16 but its image") and line.endswith("is 64x32")
               for line in lines)  # fmt: skip
    assert any(line.startswith(f"  {wrong_json}: imgWidth x imgHeight is 64x48 but") for line in lines)
    assert f"  {label_40}: label values [40] are not labelIds of the Cityscapes label table (0..33)" in lines
    assert not list(copy.glob("*.txt")) or [p.name for p in copy.glob("*.txt")] == ["prepare_errors.txt"]
    assert not list(copy.glob("gtFine/*/*/*_labelTrainIds.png"))
    report = (copy / "prepare_errors.txt").read_text().splitlines()
    assert report == [line.strip() for line in lines]


def test_a_rerun_rechecks_only_what_changed(copy, synthetic):
    truncated, *_ = _break_four_files(copy)
    with pytest.raises(DatasetError, match="^4 bad files"):
        prepare_cityscapes(copy, workers=1, progress=False)
    for broken in _break_four_files_paths(copy, synthetic):
        shutil.copy(synthetic / broken, copy / broken)
    summary = prepare_cityscapes(copy, workers=1, progress=False)
    assert (summary.checked, summary.unchanged) == (4, 1)  # the one good frame passed before
    assert summary.lists == {"train.txt": 3, "val.txt": 2} and not (copy / "prepare_errors.txt").exists()
    again = prepare_cityscapes(copy, workers=1, progress=False)
    assert (again.checked, again.unchanged, again.written, again.skipped) == (0, 5, 0, 5)
    truncated.write_bytes(truncated.read_bytes()[:200])  # a file damaged after it passed is checked again
    with pytest.raises(DatasetError, match=rf"^1 bad file under .*\n  {truncated}: cannot be decoded"):
        prepare_cityscapes(copy, workers=1, progress=False)


def _break_four_files_paths(copy, synthetic):
    return [p.relative_to(synthetic) for p in sorted(synthetic.glob("**/*")) if p.is_file()
            and p.read_bytes() != (copy / p.relative_to(synthetic)).read_bytes()]  # fmt: skip


def test_missing_label_and_missing_image(copy):
    image = sorted(copy.glob("leftImg8bit/train/*/*_leftImg8bit.png"))[0]
    for label in image.parent.parent.parent.parent.glob(f"gtFine/train/*/{image.name[:-16]}_gtFine_*"):
        label.unlink()
    orphan_image = sorted(copy.glob("leftImg8bit/val/*/*_leftImg8bit.png"))[0]
    orphan_image.unlink()
    with pytest.raises(DatasetError) as caught:
        prepare_cityscapes(copy, workers=1, progress=False)
    lines = str(caught.value).splitlines()
    assert lines[0].startswith("2 bad files")
    assert any(line.startswith(f"  {image}: no label; expected") for line in lines)
    assert any(": no image; expected " + str(orphan_image) in line for line in lines)


def test_the_printed_list_is_capped(copy, monkeypatch):
    monkeypatch.setattr(checking, "MAX_LISTED_PROBLEMS", 2)
    for label in sorted(copy.glob("gtFine/*/*/*_gtFine_labelIds.png")):
        cv2.imwrite(str(label), np.full((32, 64), 99, np.uint8))
    with pytest.raises(DatasetError) as caught:
        prepare_cityscapes(copy, workers=1, progress=False)
    lines = str(caught.value).splitlines()
    assert lines[0].startswith("5 bad files") and len(lines) == 4 and lines[-1] == "  ... and 3 more"
    assert len((copy / "prepare_errors.txt").read_text().splitlines()) == 5


def test_cli_prints_the_list_and_exits_2(copy, capsys):
    _break_four_files(copy)
    assert main(["prepare", "cityscapes", str(copy), "--workers", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("attnseg prepare: error: 4 bad files") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 5
    assert main(["prepare", "cityscapes", str(copy), "--workers", "0"]) == 2
    assert "--workers 0: must be at least 1" in capsys.readouterr().err


def test_autolabelled_values_are_checked(copy):
    refinement = copy / "refinement_final" / "train_extra"
    extra_images = copy / "leftImg8bit_trainextra" / "leftImg8bit" / "train_extra"
    sources = []
    for image in sorted(copy.glob("leftImg8bit/train/*/*_leftImg8bit.png")):
        (refinement / image.parent.name).mkdir(parents=True, exist_ok=True)
        (extra_images / image.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(image, extra_images / image.parent.name / image.name)
        sources.append(refinement / image.parent.name / image.name)
        cv2.imwrite(str(sources[-1]), np.full((32, 64), 7, np.uint8))
    cv2.imwrite(str(sources[0]), np.full((32, 64), 40, np.uint8))
    cv2.imwrite(str(sources[1]), np.full((30, 64), 255, np.uint8))  # 255 is allowed there, the size is not
    with pytest.raises(DatasetError) as caught:
        prepare_autolabelled(copy, workers=1, progress=False)
    lines = str(caught.value).splitlines()
    assert lines[0].startswith("2 bad files") and not (copy / "convert_autolabelled").exists()
    assert f"  {sources[0]}: label values [40] are not labelIds of the Cityscapes label table (0..33) or 255 " \
           "(unlabelled autolabel pixels)" in lines
    assert any(line.startswith(f"  {sources[1]}: label is 64x30") for line in lines)


def test_label_ids_conversion_checks_values():
    assert train_ids_from_label_ids(np.array([[-1, 7, 26]], np.int16)).tolist() == [[255, 0, 13]]
    with pytest.raises(DatasetError, match=r"^x.png: label values \[34, 40\] are not labelIds"):
        train_ids_from_label_ids(np.array([[34, 40, 7]], np.uint8), "x.png")
    with pytest.raises(DatasetError, match=r"\[-2\]"):
        train_ids_from_label_ids(np.array([[-2, 7]], np.int32), "x.png")


def test_coarse_labels_are_checked_and_train_extra_images_need_no_fine_label(copy):
    for label in sorted(copy.glob("gtFine/train/*/*_gtFine_labelIds.png")):
        target = copy / "gtCoarse" / "train" / label.parent.name / label.name.replace("gtFine", "gtCoarse")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(label, target)
    bad = sorted(copy.glob("gtCoarse/train/*/*_gtCoarse_labelIds.png"))[0]
    cv2.imwrite(str(bad), np.full((32, 64), 40, np.uint8))
    extra = copy / "leftImg8bit" / "train_extra" / "x"  # where the trainextra zip unpacks when merged into the root
    extra.mkdir(parents=True)
    cv2.imwrite(str(extra / "x_000000_000019_leftImg8bit.png"), np.zeros((32, 64, 3), np.uint8))
    assert prepare_cityscapes(copy, workers=1, progress=False).written == 5  # gtCoarse not asked for
    with pytest.raises(DatasetError, match=rf"^1 bad file under .*\n  {bad}: label values \[40\] are not labelIds"):
        prepare_cityscapes(copy, workers=1, progress=False, include_coarse=True)

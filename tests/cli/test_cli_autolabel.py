"""attnseg autolabel end to end, in miniature: teacher run -> pseudo-labels of unlabelled scenes -> a student trains
on fine + autolabelled data. Labels are checked against the teacher's probabilities computed independently."""

import json

import cv2
import numpy as np
import pytest

from attnseg.cli.main import main
from attnseg.inference.predictor import Predictor

SIZE = ["--height", "64", "--width", "128"]
TRAIN = ["model.name=mscale_ocr_hrnet_w18_small", "model.kwargs={}", "data.crop_size=[64,128]",
         "data.class_uniform_tile=32", "data.num_workers=0", "train.batch_size=2", "train.iters=2",
         "train.eval_interval=2", "train.save_interval=2", "train.log_interval=1", "train.precision=fp32",
         "eval.scales=[0.5,1.0]", "eval.flip=true", "eval.num_workers=0"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    folder = tmp_path_factory.mktemp("autolabel")
    assert main(["make-synthetic", str(folder / "cs"), "--train", "4", "--val", "2", *SIZE, "--seed", "0"]) == 0
    assert main(["make-synthetic", str(folder / "unlabelled"), "--train", "3", "--val", "0", *SIZE,
                 "--seed", "5"]) == 0  # fmt: skip
    assert main(["train", "configs/synthetic_mscale_cpu.yaml", "--out", str(folder / "teacher"),
                 f"data.root={folder / 'cs'}", *TRAIN]) == 0  # fmt: skip
    return folder


def test_autolabel_writes_thresholded_labels_where_training_reads_them(teacher, capsys):
    out = teacher / "cs"
    images = sorted((teacher / "unlabelled" / "leftImg8bit" / "train").rglob("*.png"))
    predictor = Predictor.from_weights(teacher / "teacher", scales=(0.5, 1.0), flip=True, device="cpu")
    teacher_probabilities = [predictor(image, return_probabilities=True)[1] for image in images]
    # A threshold inside this barely trained teacher's confidence range, so that it keeps some pixels only.
    threshold = round(float(np.median(np.concatenate([p.max(0).ravel() for p in teacher_probabilities]))), 4)
    assert main(["autolabel", str(teacher / "teacher"), str(teacher / "unlabelled" / "leftImg8bit" / "train"),
                 "--out", str(out), "--threshold", str(threshold), "--no-progress"]) == 0  # fmt: skip
    assert "labelled 3 images (0 already done)" in capsys.readouterr().out
    sidecar = json.loads((out / "convert_autolabelled" / "autolabel.json").read_text())
    # The run's eval recipe is the default: its scales, hierarchical fusion and flip.
    assert sidecar["scales"] == [0.5, 1.0] and sidecar["flip"] is True and sidecar["threshold"] == threshold
    pixels = labelled = 0
    for image, probabilities in zip(images, teacher_probabilities):
        city = image.parent.name
        label = cv2.imread(str(out / "convert_autolabelled" / city / image.name), cv2.IMREAD_UNCHANGED)
        confidence = cv2.imread(str(out / "convert_autolabelled" / city / image.name.replace(".png", "_prob.png")),
                                cv2.IMREAD_UNCHANGED)  # fmt: skip
        expected = probabilities.argmax(0).astype(np.uint8)
        expected[probabilities.max(0) < threshold] = 255
        np.testing.assert_array_equal(label, expected)
        np.testing.assert_array_equal(confidence, np.rint(probabilities.max(0) * 255).astype(np.uint8))
        placed = out / "leftImg8bit_trainextra" / "leftImg8bit" / "train_extra" / city / image.name
        np.testing.assert_array_equal(cv2.imread(str(placed)), cv2.imread(str(image)))
        record = sidecar["per_image"][f"{city}/{image.name[: -len('_leftImg8bit.png')]}"]
        assert record["class_pixels"] == np.bincount(label.ravel(), minlength=256)[:19].tolist()
        pixels, labelled = pixels + label.size, labelled + int((label < 19).sum())
    assert sidecar["coverage"] == pytest.approx(labelled / pixels)
    assert 0 < labelled < pixels  # the threshold removed some pixels and kept others
    assert len((out / "train_extra.txt").read_text().splitlines()) == 3

    # Re-running resumes: nothing is labelled again and the files are untouched.
    stamps = {p: p.stat().st_mtime_ns for p in (out / "convert_autolabelled").rglob("*_leftImg8bit.png")}
    assert main(["autolabel", str(teacher / "teacher"), str(teacher / "unlabelled" / "leftImg8bit" / "train"),
                 "--out", str(out), "--threshold", str(threshold), "--no-progress"]) == 0  # fmt: skip
    assert "labelled 0 images (3 already done)" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # The student reads them as autolabelled coarse data with no conversion, confidence threshold included.
    assert main(["train", "configs/synthetic_mscale_cpu.yaml", "--out", str(teacher / "student"),
                 f"data.root={out}", "data.coarse=autolabelled", f"data.autolabel_min_confidence={threshold + 0.01}", *TRAIN]) == 0
    from attnseg.data.cityscapes import CityscapesDataset

    coarse = CityscapesDataset(out, "train_extra", mode="autolabelled", autolabel_min_confidence=threshold + 0.01)
    assert len(coarse) == 3
    written = cv2.imread(str(coarse.samples[0].label), cv2.IMREAD_UNCHANGED)
    assert (coarse.load_label(coarse.samples[0]) == 255).sum() > (written == 255).sum()  # the _prob.png was read


def test_autolabel_refine_coarse_keeps_the_coarse_classes(teacher, tmp_path, capsys):
    from attnseg.inference.autolabel import refine_with_coarse

    teacher_label = np.array([[1, 2], [255, 4]], np.uint8)
    coarse = np.array([[7, 255], [8, 255]], np.uint8)
    np.testing.assert_array_equal(refine_with_coarse(teacher_label, coarse), [[7, 2], [8, 4]])


@pytest.mark.parametrize("arguments, message", [
    (["--threshold", "1.5"], "--threshold 1.5: a probability in [0, 1]"),
    (["--threshold", "x"], "--threshold x: not a number"),
])  # fmt: skip
def test_autolabel_user_errors_are_one_line(teacher, tmp_path, capsys, arguments, message):
    code = main(["autolabel", str(teacher / "teacher"), str(teacher / "unlabelled"), "--out", str(tmp_path / "o"),
                 *arguments])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and not (tmp_path / "o").exists()


def test_autolabel_measures_pseudo_label_accuracy_against_the_truth(teacher, tmp_path, capsys):
    from attnseg.data.labels import label_ids_to_train_ids

    out = tmp_path / "root"
    assert main(["autolabel", str(teacher / "teacher"), str(teacher / "unlabelled" / "leftImg8bit" / "train"),
                 "--out", str(out), "--threshold", "0", "--truth", str(teacher / "unlabelled"),
                 "--no-progress"]) == 0  # fmt: skip
    assert "of labelled pixels correct against --truth" in capsys.readouterr().out
    checked = correct = 0
    for label_path in sorted((out / "convert_autolabelled").rglob("*_leftImg8bit.png")):
        stem = label_path.name[: -len("_leftImg8bit.png")]
        truth_path = teacher / "unlabelled" / "gtFine" / "train" / label_path.parent.name / f"{stem}_gtFine_labelIds.png"
        truth = label_ids_to_train_ids(cv2.imread(str(truth_path), cv2.IMREAD_UNCHANGED))
        label = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
        judged = (label < 19) & (truth < 19)
        checked, correct = checked + judged.sum(), correct + (label[judged] == truth[judged]).sum()
    sidecar = json.loads((out / "convert_autolabelled" / "autolabel.json").read_text())
    assert checked > 0 and sidecar["accuracy_against_truth"] == pytest.approx(correct / checked)

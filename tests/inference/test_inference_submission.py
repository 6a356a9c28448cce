import cv2
import numpy as np
import pytest
import torch

from attnseg.data.labels import CITYSCAPES_PALETTE, train_id_to_id
from attnseg.errors import DatasetError
from attnseg.inference.dump import PredictionDumper, colorize, overlay
from attnseg.inference.preprocess import normalize_image
from attnseg.inference.submission import SubmissionWriter, check_submission, frame_key, submission_file_name
from attnseg.models.outputs import SegmentationOutput

SIZE = (8, 16)
NAMES = ["aachen_000000_000019", "aachen_000001_000019", "bonn_000002_000007_leftImg8bit"]


def _write_good(tmp_path):
    writer = SubmissionWriter(tmp_path / "sub")
    predictions = np.stack([np.full(SIZE, i, np.uint8) for i in range(3)])
    predictions[0, 0, 0] = 255  # ignore -> labelId 0, still valid
    writer(NAMES, predictions)
    return writer


def test_writer_names_and_label_ids(tmp_path):
    writer = _write_good(tmp_path)
    assert sorted(p.name for p in writer.written) == [
        "aachen_000000_000019_leftImg8bit.png", "aachen_000001_000019_leftImg8bit.png",
        "bonn_000002_000007_leftImg8bit.png",
    ]
    image = cv2.imread(str(writer.written[1]), cv2.IMREAD_UNCHANGED)
    assert image.dtype == np.uint8 and image.shape == SIZE
    assert int(image[1, 1]) == int(train_id_to_id[1]) == 8  # trainId 1 sidewalk -> labelId 8
    assert check_submission(tmp_path / "sub", NAMES, expected_size=SIZE, verbose=False) == 3
    assert frame_key("aachen_000000_000019_leftImg8bit.png") == "aachen_000000_000019"
    with pytest.raises(DatasetError):
        submission_file_name("not-a-cityscapes-name")


def test_check_submission_prints_ready(tmp_path, capsys):
    _write_good(tmp_path)
    check_submission(tmp_path / "sub", NAMES, expected_size=SIZE)
    assert "ready" in capsys.readouterr().out


def _corrupt(tmp_path, how):
    sub = tmp_path / "sub"
    first = sub / "aachen_000000_000019_leftImg8bit.png"
    if how == "count":
        first.unlink()
    elif how == "name":
        cv2.imwrite(str(sub / "zurich_000000_000001_leftImg8bit.png"), np.zeros(SIZE, np.uint8))
    elif how == "size":
        cv2.imwrite(str(first), np.zeros((SIZE[0], SIZE[1] + 1), np.uint8))
    elif how == "value":
        cv2.imwrite(str(first), np.full(SIZE, 200, np.uint8))
    elif how == "channels":
        cv2.imwrite(str(first), np.zeros((*SIZE, 3), np.uint8))
    elif how == "duplicate":
        cv2.imwrite(str(sub / "aachen_000000_000019_copy.png"), np.zeros(SIZE, np.uint8))


@pytest.mark.parametrize(
    "how, message",
    [("count", "no PNG"), ("name", "matches no expected"), ("size", "size 17x8"), ("value", "not Cityscapes labelIds"),
     ("channels", "channels"), ("duplicate", "second file")],
)
def test_check_submission_rejects(tmp_path, capsys, how, message):
    _write_good(tmp_path)
    _corrupt(tmp_path, how)
    with pytest.raises(DatasetError, match=message):
        check_submission(tmp_path / "sub", NAMES, expected_size=SIZE)
    assert "ready" not in capsys.readouterr().out


def test_check_submission_from_cityscapes_root(tmp_path):
    for name in NAMES:
        key = frame_key(name)
        path = tmp_path / "cs" / "leftImg8bit" / "test" / key.split("_")[0] / f"{key}_leftImg8bit.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    _write_good(tmp_path)
    assert check_submission(tmp_path / "sub", tmp_path / "cs", expected_size=SIZE, split="test", verbose=False) == 3


def test_dumper_writes_every_kind(tmp_path):
    mean, std = (120.0, 110.0, 100.0), (50.0, 50.0, 50.0)
    image = np.random.default_rng(0).integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    batch = {"image": normalize_image(image, mean, std)[None], "label": torch.full((1, *SIZE), 255, dtype=torch.long),
             "name": ["frankfurt_000000_000294"], "image_path": [""]}
    output = SegmentationOutput(
        logits=torch.zeros(1, 19, *SIZE), scale_logits={0.5: torch.randn(1, 19, 4, 8), 1.0: torch.randn(1, 19, *SIZE)},
        scale_attention={0.5: torch.rand(1, 1, 4, 8)},
    )
    dumper = PredictionDumper(tmp_path, CITYSCAPES_PALETTE, mean, std, kinds=("color", "overlay", "trainIds",
                              "labelIds", "compare", "scales"), train_id_to_label_id=train_id_to_id, alpha=0.5)
    prediction = np.full((1, *SIZE), 2, np.uint8)
    dumper(batch["name"], prediction, {"batch": batch, "output": output})
    stem = "frankfurt_000000_000294"
    color = cv2.cvtColor(cv2.imread(str(tmp_path / "color" / f"{stem}.png")), cv2.COLOR_BGR2RGB)
    assert (color == CITYSCAPES_PALETTE[2]).all()
    assert (cv2.imread(str(tmp_path / "labelIds" / f"{stem}.png"), cv2.IMREAD_UNCHANGED) == 11).all()  # building
    assert (cv2.imread(str(tmp_path / "trainIds" / f"{stem}.png"), cv2.IMREAD_UNCHANGED) == 2).all()
    blended = cv2.cvtColor(cv2.imread(str(tmp_path / "overlay" / f"{stem}.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_allclose(blended, overlay(image, color, 0.5), atol=1)
    compare = cv2.imread(str(tmp_path / "compare" / f"{stem}.png"))
    assert compare.shape == (SIZE[0], 3 * SIZE[1], 3)
    assert (tmp_path / "scales" / f"{stem}_attn_0.5x.png").is_file()
    assert cv2.imread(str(tmp_path / "scales" / f"{stem}_pred_0.5x.png")).shape == (4, 8, 3)
    assert colorize(np.array([[255]]), CITYSCAPES_PALETTE).tolist() == [[[0, 0, 0]]]

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from attnseg.cli.main import main
from attnseg.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
from attnseg.models import MODEL_BUILDERS
from attnseg.models.outputs import SegmentationOutput
from attnseg.weights import save_checkpoint


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 19):
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 1)

    def forward(self, x):
        return SegmentationOutput(logits=self.conv(x))


@pytest.fixture()
def weights(tmp_path):
    MODEL_BUILDERS["h6_predict_tiny"] = lambda num_classes=19: TinyNet(num_classes)
    torch.manual_seed(1)
    save_checkpoint(tmp_path / "w" / "model", TinyNet(), "h6_predict_tiny", {}, CITYSCAPES_CLASSES,
                    CITYSCAPES_PALETTE, (123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
    yield tmp_path / "w" / "model"
    MODEL_BUILDERS.pop("h6_predict_tiny", None)


def _image(seed, shape=(20, 30, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_folder_with_corrupt_file_and_glob(tmp_path, weights, capsys):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    cv2.imwrite(str(folder / "a.png"), _image(0))
    cv2.imwrite(str(folder / "sub" / "b.jpg"), _image(1, (17, 23, 3)))
    cv2.imwrite(str(folder / "gray.png"), _image(2, (12, 12)))
    (folder / "broken.png").write_bytes(b"\x89PNG garbage")
    (folder / "notes.txt").write_text("ignored")
    other = tmp_path / "glob"
    other.mkdir()
    cv2.imwrite(str(other / "c.png"), _image(3))
    out = tmp_path / "out"
    code = main(["predict", str(weights), str(folder), str(other / "*.png"), "--out", str(out), "--overlay",
                 "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1  # something was skipped
    assert "broken.png" in captured.err and "cannot be decoded" in captured.err
    assert "predicted 4 of 5 inputs" in captured.out
    labels = cv2.imread(str(out / "sub" / "b_labels.png"), cv2.IMREAD_UNCHANGED)
    assert labels.shape == (17, 23) and labels.dtype == np.uint8 and labels.max() < 19
    color = cv2.imread(str(out / "sub" / "b_color.png"))[:, :, ::-1]
    assert np.array_equal(color, CITYSCAPES_PALETTE[labels])
    for name in ("a", "gray", "c"):
        assert (out / f"{name}_overlay.png").is_file()
    assert not (out / "broken_labels.png").exists()


def test_video_gets_overlay_video(tmp_path, weights, capsys):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (32, 24))
    for seed in range(3):
        writer.write(_image(seed, (24, 32, 3)))
    writer.release()
    code = main(["predict", str(weights), str(video), "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    capture = cv2.VideoCapture(str(tmp_path / "out" / "clip_overlay.mp4"))
    frames = 0
    while capture.read()[0]:
        frames += 1
    capture.release()
    assert frames == 3


def test_missing_input_is_reported(tmp_path, weights, capsys):
    code = main(["predict", str(weights), str(tmp_path / "nothing*.png"), "--out", str(tmp_path / "o"),
                 "--no-progress"])
    assert code == 1 and "no such file" in capsys.readouterr().err

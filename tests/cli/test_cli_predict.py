from pathlib import Path

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


def _labels(path):
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, f"{path} missing or unreadable"
    return image


def test_folder_with_corrupt_file_and_glob(tmp_path, weights, capsys):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    cv2.imwrite(str(folder / "a.png"), _image(0))
    cv2.imwrite(str(folder / "sub" / "b.jpg"), _image(1, (17, 23, 3)))
    cv2.imwrite(str(folder / "gray.png"), _image(2, (12, 12)))
    (folder / "broken.png").write_bytes(b"\x89PNG garbage")
    (folder / "notes.txt").write_text("not an image")
    other = tmp_path / "glob"
    other.mkdir()
    cv2.imwrite(str(other / "c.png"), _image(3))
    out = tmp_path / "out"
    code = main(["predict", str(weights), str(folder), str(other / "*.png"), "--out", str(out), "--overlay",
                 "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1  # one input failed
    assert "broken.png" in captured.err and "cannot be decoded" in captured.err
    assert "predicted 4 of 5 inputs" in captured.out and "1 of 5 inputs failed" in captured.out
    assert "notes.txt: not an image or video file" in captured.out  # skipped, and said so
    # the common folder of in/ and glob/c.png is tmp_path; the folder argument keeps its own name
    labels = _labels(out / "in" / "sub" / "b_labels.png")
    assert labels.shape == (17, 23) and labels.dtype == np.uint8 and labels.max() < 19
    color = cv2.imread(str(out / "in" / "sub" / "b_color.png"))[:, :, ::-1]
    assert np.array_equal(color, CITYSCAPES_PALETTE[labels])
    for name in ("in/a", "in/gray", "glob/c"):
        assert (out / f"{name}_overlay.png").is_file()
    assert not list(out.rglob("broken*"))


def test_same_stem_in_two_folders_keeps_folders(tmp_path, weights, capsys):
    for index, name in enumerate(("a", "b")):
        (tmp_path / name).mkdir()
        cv2.imwrite(str(tmp_path / name / "img.png"), _image(index, (10 + index, 12, 3)))
    out = tmp_path / "out"
    code = main(["predict", str(weights), str(tmp_path / "a" / "img.png"), str(tmp_path / "b" / "img.png"),
                 "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert _labels(out / "a" / "img_labels.png").shape == (10, 12)
    assert _labels(out / "b" / "img_labels.png").shape == (11, 12)
    # folders as arguments: each keeps its name, so `predict a/ b/` does not merge them either
    code = main(["predict", str(weights), str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "o2"),
                 "--no-progress"])
    assert code == 0
    assert sorted(p.relative_to(tmp_path / "o2").as_posix() for p in (tmp_path / "o2").rglob("*_labels.png")) == [
        "a/img_labels.png", "b/img_labels.png"]


def test_same_stem_other_extension_keeps_full_names(tmp_path, weights, capsys):
    cv2.imwrite(str(tmp_path / "x.png"), _image(0, (10, 12, 3)))
    cv2.imwrite(str(tmp_path / "x.jpg"), _image(1, (14, 12, 3)))
    cv2.imwrite(str(tmp_path / "x.png.jpg"), _image(2, (16, 12, 3)))  # its stem is the other's full name
    cv2.imwrite(str(tmp_path / "y.png"), _image(3, (8, 12, 3)))
    writer = cv2.VideoWriter(str(tmp_path / "y.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (32, 24))
    for seed in range(2):
        writer.write(_image(seed, (24, 32, 3)))
    writer.release()
    out = tmp_path / "out"
    code = main(["predict", str(weights), str(tmp_path / "x.*"), str(tmp_path / "y.*"), "--out", str(out),
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert _labels(out / "x.png_labels.png").shape == (10, 12)
    assert _labels(out / "x.jpg_labels.png").shape == (14, 12)
    assert _labels(out / "x.png.jpg_labels.png").shape == (16, 12)
    assert _labels(out / "y.png_labels.png").shape == (8, 12)  # the video y.avi shares the stem
    assert (out / "y.avi_overlay.mp4").stat().st_size > 0
    assert len(list(out.glob("*_labels.png"))) == 4


def test_output_names_never_collide():
    from attnseg.cli.predict import InputItem, assign_output_names

    names = ["a/img.png", "b/img.png", "x.png", "x.jpg", "X.bmp", "x.png.jpg", "x.png.jpg.tif", "v.mp4", "v.png",
             "w.png", "w"]
    items = [InputItem(Path(name), Path(name)) for name in names]
    assign_output_names(items)
    outputs = [item.output(Path("out"), "labels.png").as_posix().lower() for item in items]
    assert len(set(outputs)) == len(outputs)
    by_name = {item.relative.as_posix(): item.out_name for item in items}  # clashes cascade: x.png.jpg.tif too
    assert by_name["a/img.png"] == "img" and by_name["w.png"] == "w.png" and by_name["x.png.jpg.tif"] == "x.png.jpg.tif"


def test_gif_broken_link_and_failure_are_named(tmp_path, weights, capsys):
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(3):
        cv2.imwrite(str(folder / f"ok{index}.png"), _image(index))
    Image.fromarray(_image(5)).save(folder / "anim.gif")
    (folder / "dangling.png").symlink_to(tmp_path / "missing.png")
    (folder / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / "out"
    code = main(["predict", str(weights), str(folder), "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1
    assert "predicted 3 of 4 inputs" in captured.out and "1 of 4 inputs failed" in captured.out
    assert "bad.jpg: " in captured.out and "cannot be decoded" in captured.out
    assert "skipped 2 files" in captured.out
    assert "anim.gif: GIF" in captured.out and "dangling.png: broken symbolic link" in captured.out
    for index in range(3):
        assert _labels(out / "in" / f"ok{index}_labels.png").shape == (20, 30)


def test_exit_code_counts_failures(tmp_path, weights, capsys):
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), _image(0))
    bad = []
    for index in range(3):
        bad.append(tmp_path / f"bad{index}.png")
        bad[-1].write_bytes(b"junk")
    code = main(["predict", str(weights), str(good), *map(str, bad), str(tmp_path / "none*.png"), "--out",
                 str(tmp_path / "o"), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 4 and "4 of 5 inputs failed" in captured.out
    assert (tmp_path / "o" / "good_labels.png").is_file()


def test_help_states_naming_and_exit_code(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "x.png_labels.png" in text and "the number of inputs that failed" in text and "--max-memory" in text


def test_video_gets_overlay_video(tmp_path, weights, capsys):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (32, 24))
    for seed in range(3):
        writer.write(_image(seed, (24, 32, 3)))
    writer.release()
    code = main(["predict", str(weights), str(video), "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert not list((tmp_path / "out").glob(".*attnseg-tmp*"))
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


def test_confidence_with_and_without_windows_and_attention_refused_for_a_plain_model(tmp_path, weights, capsys):
    from attnseg.inference.confidence import unit_to_uint8
    from attnseg.inference.predictor import Predictor

    cv2.imwrite(str(tmp_path / "a.png"), _image(0)[..., ::-1])
    for extra in ([], ["--slide", "--crop", "12,12", "--stride", "8,8"]):
        out = tmp_path / f"out{len(extra)}"
        assert main(["predict", str(weights), str(tmp_path / "a.png"), "--out", str(out), "--confidence",
                     "--no-progress", *extra]) == 0, capsys.readouterr().err
        predictor = Predictor.from_weights(weights, device="cpu", slide=bool(extra), crop_size=(12, 12) if extra
                                           else None, stride=(8, 8) if extra else None)  # fmt: skip
        expected = predictor.predict(_image(0), confidence=True).confidence
        confidence = _labels(out / "a_confidence.png")
        assert confidence.shape == (20, 30) and np.array_equal(confidence, unit_to_uint8(expected))
        assert confidence.min() >= 255 // 19 and len(np.unique(confidence)) > 10
    capsys.readouterr()
    code = main(["predict", str(weights), str(tmp_path / "a.png"), "--out", str(tmp_path / "no"), "--attention",
                 "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--attention" in err[0] and "TinyNet does not fuse scales" in err[0]
    assert not (tmp_path / "no").exists()


def test_attention_maps_of_an_mscale_checkpoint(tmp_path, capsys):
    from attnseg.models import create_model

    torch.manual_seed(0)
    model = create_model("mscale_ocr_hrnet_w18_small", num_classes=19, eval_scales=(0.5, 1.0))
    save_checkpoint(tmp_path / "m" / "best", model, "mscale_ocr_hrnet_w18_small", {"eval_scales": [0.5, 1.0]},
                    CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, (123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
    cv2.imwrite(str(tmp_path / "a.png"), _image(4)[..., ::-1])
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "m" / "best"), str(tmp_path / "a.png"), "--out", str(out), "--attention",
                 "--no-progress"]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["a_attn_0.5x.png", "a_color.png", "a_labels.png",
                                                     "a_pred_0.5x.png", "a_pred_1x.png"]
    from attnseg.inference.confidence import unit_to_uint8
    from attnseg.inference.predictor import Predictor

    expected = Predictor.from_weights(tmp_path / "m" / "best", device="cpu").predict(_image(4), attention=True)
    attention = _labels(out / "a_attn_0.5x.png")
    assert attention.shape == (10, 15) and np.array_equal(attention, unit_to_uint8(expected.attention[0.5]))
    assert np.array_equal(_labels(out / "a_pred_1x.png")[..., ::-1], CITYSCAPES_PALETTE[expected.scale_labels[1.0]])
    code = main(["predict", str(tmp_path / "m" / "best"), str(tmp_path / "a.png"), "--out", str(tmp_path / "s"),
                 "--attention", "--scales", "1.0", "--no-progress"])
    assert code == 2 and "single scale" in capsys.readouterr().err

"""`attnseg make-synthetic` and `attnseg prepare` end to end through the CLI entry point."""

from attnseg.cli.main import main


def test_make_synthetic_then_prepare(tmp_path, capsys):
    root = tmp_path / "cs"
    assert main(["make-synthetic", str(root), "--train", "2", "--val", "2", "--height", "64", "--width", "128",
                 "--workers", "1"]) == 0  # fmt: skip
    assert "wrote 2 train + 2 val images of 64x128" in capsys.readouterr().out
    assert main(["prepare", "cityscapes", str(root), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "4 from polygons" in out and "val.txt: 2 image/label pairs" in out
    assert len((root / "train.txt").read_text().splitlines()) == 2


def test_prepare_reports_a_missing_folder(tmp_path, capsys):
    assert main(["prepare", "cityscapes", str(tmp_path)]) == 2
    assert "leftImg8bit: folder not found" in capsys.readouterr().err
    assert main(["prepare", "mapillary", str(tmp_path)]) == 2

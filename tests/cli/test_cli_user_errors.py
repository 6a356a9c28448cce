"""Every user error of the command line ends in exit code 2 and one line naming the argument and the value.

The inputs are real and otherwise valid (a tiny synthetic Cityscapes tree, tiny checkpoints, a config that trains
and evaluates), so each case fails for the reason it names; and nothing may be written or changed when refused.
"""

import json

import pytest
import torch
from torch import nn

from attnseg.cli import main as cli_main
from attnseg.cli.arguments import split_overrides
from attnseg.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
from attnseg.data.synthetic import make_synthetic_dataset
from attnseg.models import MODEL_BUILDERS
from attnseg.models.outputs import SegmentationOutput
from attnseg.weights import save_checkpoint

MODEL = "clitrust_tiny"


class TinyHierarchicalNet(nn.Module):
    """A 3x3 conv on the scales seam (`FUSES_SCALES`), so evaluation treats it as MscaleOCR-like."""

    FUSES_SCALES = True
    eval_scales = (1.0,)

    def __init__(self, num_classes: int = 19):
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 3, padding=1)

    def forward(self, x, scales=None, keep_scale_outputs=False):
        return SegmentationOutput(logits=self.conv(x))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    base = tmp_path_factory.mktemp("usererr")
    root = make_synthetic_dataset(base / "cs", num_train=2, num_val=2, height=64, width=128)
    MODEL_BUILDERS[MODEL] = lambda num_classes=19: TinyHierarchicalNet(num_classes)
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    save_checkpoint(base / "run" / "checkpoints" / "best", TinyHierarchicalNet(), MODEL, {}, CITYSCAPES_CLASSES,
                    CITYSCAPES_PALETTE, mean, std)
    save_checkpoint(base / "run7" / "checkpoints" / "best", TinyHierarchicalNet(7), MODEL, {},
                    [f"class_{i}" for i in range(7)], CITYSCAPES_PALETTE[:7], mean, std)
    config = base / "config.yaml"
    config.write_text(
        f"model:\n  name: {MODEL}\ndata:\n  root: {root}\n  crop_size: [32, 64]\n  num_workers: 0\n"
        f"train:\n  iters: 1\n  batch_size: 1\n  out_dir: {base / 'trainrun'}\neval:\n  num_workers: 0\n"
    )
    (base / "jsondir").mkdir()
    (base / "preds").mkdir()
    image = next((root / "leftImg8bit" / "val").rglob("*.png"))
    yield {"cfg": str(config), "run": str(base / "run"), "run7": str(base / "run7"), "root": str(root),
           "img": str(image), "out": str(base / "out"), "json": str(base / "metrics.json"),
           "jsondir": str(base / "jsondir"), "preds": str(base / "preds"), "base": base}
    MODEL_BUILDERS.pop(MODEL, None)


@pytest.fixture(autouse=True)
def _no_cuda(monkeypatch):
    # The `--device cuda` cases must fail the same way on a machine with a GPU.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


EVAL = ["eval", "{cfg}", "--weights", "{run}", "--no-progress", "--json", "{json}", "--dump", "{out}"]
TRAIN = ["train", "{cfg}", "--out", "{out}", "--no-progress"]
PREDICT = ["predict", "{run}", "{img}", "--out", "{out}", "--no-progress"]
EXPORT = ["export", "{run}", "--out", "{out}/model.onnx"]
BENCHMARK = ["benchmark", MODEL, "--out", "{out}/table.txt", "--routes", "torch-fp32"]
SCORE = ["score", "--gt", "{root}", "--pred", "{preds}"]

# (argv, fragments that the one-line message must all contain)
CASES = [
    (EVAL + ["--split", "nosuch"], ["--split", "nosuch", "train, val, test"]),
    (EVAL + ["--slide", "--crop", "32,64", "--stride", "40,64"], ["--stride", "40,64", "crop_size"]),
    (EVAL + ["--batch-size", "0"], ["--batch-size", "'0'", "positive"]),
    (EVAL + ["--workers", "-2"], ["--workers", "'-2'", ">= 0"]),
    (EVAL + ["--device", "tpu"], ["--device", "'tpu'", "cpu, cuda"]),
    (EVAL + ["--device", "cuda"], ["--device", "'cuda'", "no cuda device"]),
    (EVAL + ["--scales", "0.5,2.0"], ["--scales", "0.5,2", "needs 1.0"]),
    (EVAL + ["--scales", "0.5,1.0,1.0"], ["--scales", "0.5,1.0,1.0", "more than once"]),
    (EVAL + ["--scales", "1000"], ["--scales", "1000", "16384 px per side"]),
    (EVAL + ["eval.scales=[0.5,2.0]"], ["eval.scales", "0.5, 2.0", "needs 1.0"]),
    (EVAL + ["model.num_classes=0"], ["model.num_classes=0", "at least 1"]),
    (EVAL[:3] + ["{run7}"] + EVAL[4:], ["7 classes", "cityscapes:val evaluates 19"]),
    (EVAL + ["data.num_workers=-1"], ["data.num_workers=-1", ">= 0"]),
    (EVAL + ["data.crop_size=[100000,100000]"], ["data.crop_size=(100000, 100000)", "16384 px per side"]),
    (EVAL + ["--multi-scale", "nosuch"], ["--multi-scale", "'nosuch'", "hierarchical"]),
    (EVAL[:2] + ["--no-progress"], ["--weights", "required"]),
    ([*EVAL[:-4], "--json", "{jsondir}"], ["--json", "{jsondir}", "is a folder"]),
    (TRAIN + ["train.weight_decay=-1"], ["train.weight_decay=-1", ">= 0"]),
    (TRAIN + ["train.save_interval=-5"], ["train.save_interval=-5", ">= 0"]),
    (TRAIN + ["--save-interval", "-5"], ["--save-interval", "'-5'", ">= 0"]),
    (TRAIN + ["data.ignore_index=-7"], ["data.ignore_index=-7", "0..255"]),
    (TRAIN + ["train.lr=.nan"], ["train.lr=nan", "positive finite"]),
    (TRAIN + ["train.lr=fast"], ["train.lr", "'fast'", "expected a number"]),
    (TRAIN + ["model.num_classes=7"], ["model.num_classes=7", "19 classes"]),
    (TRAIN + ["model.num_classes=0"], ["model.num_classes=0", "at least 1"]),
    (TRAIN + ["data.num_workers=-1"], ["data.num_workers=-1", ">= 0"]),
    (TRAIN + ["data.crop_size=[100000,100000]"], ["data.crop_size=(100000, 100000)", "16384 px per side"]),
    (TRAIN + ["--device", "tpu"], ["--device", "'tpu'", "auto, cpu, cuda"]),
    (TRAIN + ["--device", "cuda"], ["--device", "'cuda'", "no cuda device"]),
    (PREDICT + ["--device", "tpu"], ["--device", "'tpu'", "cpu, cuda"]),
    (PREDICT + ["--device", "cuda"], ["--device", "'cuda'", "no cuda device"]),
    (PREDICT + ["--scales", "0.5,2.0"], ["--scales", "0.5,2", "needs 1.0"]),
    (PREDICT + ["--scales", "1.0,1.0"], ["--scales", "1.0,1.0", "more than once"]),
    (PREDICT + ["--scales", "1000"], ["--scales", "1000", "16384 px per side"]),
    (PREDICT + ["--slide", "--crop", "32,64", "--stride", "40,64"], ["--stride", "40,64", "larger than --crop"]),
    (PREDICT + ["--max-memory", "lots"], ["--max-memory", "'lots'", "K, M, G or T"]),
    (PREDICT + ["--precision", "fp16"], ["--precision fp16", "needs a CUDA device", "use fp32 or bf16 on CPU"]),
    (PREDICT + ["--precision", "fp16", "--backend", "onnxruntime"], ["--precision fp16", "onnxruntime backend"]),
    (PREDICT + ["--attention", "--slide"], ["--attention with --slide", "not assembled"]),
    (PREDICT + ["--attention"], ["--attention ({run})", "single scale [1.0]", "--scales 0.5,1.0"]),
    (EVAL + ["--precision", "fp16"], ["--precision fp16", "needs a CUDA device", "use fp32 or bf16 on CPU"]),
    (EVAL + ["eval.precision=fp16"], ["eval.precision fp16", "needs a CUDA device"]),
    (EVAL + ["--dump-topn", "0"], ["--dump-topn", "'0'", "positive"]),
    (EVAL + ["--dump-kinds", "color,nosuch"], ["--dump-kinds color,nosuch", "unknown nosuch", "confidence"]),
    (EXPORT + ["--scales", "1000"], ["--scales", "1000", "16384 px per side"]),
    (EXPORT + ["--input-shape", "1", "3", "100000", "100000"], ["--input-shape", "100000", "16384 px per side"]),
    (EXPORT + ["--input-shape", "1", "3", "1024", "2048", "--scales", "1,16"],
     ["--scales", "scale 16 makes a 16384x32768 input", "16384 px per side"]),
    (EXPORT + ["--input-shape", "1", "3", "0", "64"], ["--input-shape", "'0'", "positive"]),
    (BENCHMARK + ["--batch", "0"], ["--batch", "'0'", "positive"]),
    (BENCHMARK + ["--threads", "0"], ["--threads", "'0'", "positive"]),
    (BENCHMARK + ["--scales", "1000"], ["--scales", "1000", "16384 px per side"]),
    (BENCHMARK + ["--size", "100000", "100000"], ["--size", "100000", "16384 px per side"]),
    (BENCHMARK + ["--size", "1024", "2048", "--scales", "1,16"], ["--scales", "scale 16 makes a 16384x32768"]),
    (SCORE + ["--json", "{jsondir}"], ["--json", "{jsondir}", "is a folder"]),
    (SCORE + ["--workers", "0"], ["--workers", "'0'", "positive"]),
    (["print-config", "{cfg}", "model.num_classes=0"], ["model.num_classes=0", "at least 1"]),
    (["nosuch"], ["'nosuch'", "invalid choice"]),
]


def _fill(tokens: list[str], inputs: dict) -> list[str]:
    return [token.format(**{k: v for k, v in inputs.items() if k != "base"}) for token in tokens]


def _snapshot(folder) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("argv, fragments", CASES, ids=[" ".join(argv[:1] + argv[-2:]) for argv, _ in CASES])
def test_user_error_is_one_line_with_exit_code_2(inputs, capsys, argv, fragments):
    before = _snapshot(inputs["base"])
    code = cli_main.main(_fill(argv, inputs))
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err + captured.out
    for fragment in _fill(fragments, inputs):
        assert fragment in lines[0], (fragment, lines[0])
    assert _snapshot(inputs["base"]) == before  # nothing written or changed: no --out, --json, --dump, caches


def test_overrides_anywhere_on_the_line_as_the_readme_writes_them(inputs, tmp_path, capsys):
    """README: `attnseg eval CONFIG --weights W --scales 0.5,1.0,2.0 data.root=...`; overrides before, between
    and after options all apply (data.root is wrong in this config, so only the override makes it run)."""
    config = tmp_path / "noroot.yaml"
    config.write_text(f"model:\n  name: {MODEL}\ndata:\n  root: {tmp_path / 'missing'}\n  num_workers: 0\n")
    target = tmp_path / "m.json"
    code = cli_main.main(["eval", str(config), "eval.flip=true", "--weights", inputs["run"], "--scales", "0.5,1.0,2.0",
                          f"data.root={inputs['root']}", "--no-progress", "--json", str(target), "eval.num_workers=0"])
    assert code == 0, capsys.readouterr().err
    recipe = json.loads(target.read_text())["recipe"]
    assert recipe["scales"] == [0.5, 1.0, 2.0] and recipe["flip"] is True


def test_an_option_value_that_looks_like_an_override_stays_a_value():
    parser = cli_main._subcommand_parsers(cli_main.build_parser())["eval"]
    rest, overrides = split_overrides(parser, ["cfg.yaml", "--weights", "runs.v2=x", "train.lr=1", "--flip", "a.b=2"])
    assert rest == ["cfg.yaml", "--weights", "runs.v2=x", "--flip"] and overrides == ["train.lr=1", "a.b=2"]
    predict = cli_main._subcommand_parsers(cli_main.build_parser())["predict"]
    assert split_overrides(predict, ["w", "img.v2=x.png"]) == (["w", "img.v2=x.png"], [])  # no config, no overrides


def test_a_sub_command_module_that_fails_to_import_is_not_skipped(monkeypatch):
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", (*cli_main.COMMAND_MODULES, "no_such_command"))
    with pytest.raises(ModuleNotFoundError, match="no_such_command"):
        cli_main.build_parser()


def test_fp16_passes_the_check_on_cuda_only_with_the_torch_backend():
    from attnseg.cli.arguments import check_fp16
    from attnseg.errors import ConfigError

    check_fp16("fp16", "cuda")  # the CUDA run itself needs a GPU, which these tests do not have
    check_fp16("bf16", "cpu")
    check_fp16(None, "cpu")
    with pytest.raises(ConfigError, match="openvino backend"):
        check_fp16("fp16", "cuda", "openvino")

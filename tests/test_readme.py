"""Every command block of the README runs as written, so the README cannot drift from the CLI.

The commands run in a scratch folder laid out as a user's would be after following the README: a tiny Cityscapes
tree in the real layout (with the trainextra images, NVIDIA's autolabelled `refinement_final/` and gtCoarse), a tiny
Mapillary Vistas tree, stand-ins for the released checkpoints in their exact key layouts (filled by the parity rule),
a demo run folder, photos, a video and a glob. What a user would change to make a command small — iteration counts,
crop sizes, a narrow model, the number of torchrun processes — is substituted through the same overrides and options
a user would use; everything else is the README's text. The two set-up commands at the top of the README (venv,
pip, demo, pytest) are what `.ci/run` itself runs, and installation lines are not re-run here.
"""

from __future__ import annotations

import os
import pickle
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from parity import nvidia_filled_checkpoint, paddle_filled_checkpoint

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

# Commands the test does not run, with the reason.
NOT_RUN = {
    "python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 && .venv/bin/pip install -e . && "
    ".venv/bin/attnseg demo": "set-up + demo: the first README command, run from a fresh clone before each stop; "
    "tests/test_demo.py runs the demo itself",
    "python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 && .venv/bin/pip install -e '.[dev]' && "
    ".venv/bin/python -m pytest": "set-up + tests: what .ci/run runs",
    "pip install -e '.[export,openvino]'": "installation (.ci/run installs both extras)",
    "pip install -e '.[int8]'": "installation (.ci/run installs it for its second step)",
}

# Narrow stand-ins for the recipes' full-size training (a user trying a recipe on a laptop would do the same).
_TINY_TRAIN = ["model.pretrained=null", "model.kwargs={}", "data.crop_size=[64,128]", "data.class_uniform_tile=32",
               "data.num_workers=0", "train.batch_size=2", "train.iters=2", "train.eval_interval=2",
               "train.save_interval=1", "train.log_interval=1", "train.precision=fp32", "eval.scales=[1.0]"]
_MSCALE_TRAIN = ["model.name=mscale_ocr_hrnet_w18_small", *_TINY_TRAIN]
_TINY_EVAL = ["eval.num_workers=0"]
_DEMO_TRAIN = ("data.crop_size=[32,64]", "data.class_uniform_tile=32", "train.batch_size=2", "train.log_interval=1")


@dataclass(frozen=True)
class Run:
    """How one README command runs here: token replacements, then extra arguments appended."""

    replace: dict[str, str] = field(default_factory=dict)
    append: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()  # optional packages (the test skips without them; .ci/run's second step has them)


RUNS: dict[str, Run] = {
    "attnseg prepare cityscapes data/cityscapes --workers 8": Run({"8": "2"}),
    "attnseg prepare autolabelled data/cityscapes": Run(),
    "attnseg prepare mapillary data/mapillary": Run(),
    "attnseg convert-weights cityscapes_ocrnet.HRNet_Mscale_outstanding-turtle.pth weights/nvidia_mscale": Run(),
    "attnseg convert-weights model.pdparams weights/paddle_mscale": Run(),
    "attnseg convert-weights psanet_model.pdparams weights/psanet_r50_vd": Run(),
    "attnseg eval configs/nvidia_cityscapes_sota.yaml --weights weights/nvidia_mscale --scales 0.5,1.0,2.0 "
    "data.root=data/cityscapes": Run(append=tuple(_TINY_EVAL)),
    "attnseg eval configs/paddle_cityscapes_sota.yaml --weights weights/paddle_mscale --scales 0.5,1.0,2.0 --flip":
        Run(append=tuple(_TINY_EVAL)),
    "attnseg eval configs/paddle_cityscapes_sota.yaml --weights weights/paddle_mscale --scales diff:0.5:2.5:0.5 "
    "--flip": Run(append=tuple(_TINY_EVAL)),
    "attnseg eval configs/psanet_r50_cityscapes_80k.yaml --weights weights/psanet_r50_vd": Run(append=tuple(_TINY_EVAL)),
    "attnseg eval configs/psanet_r50_cityscapes_80k.yaml --weights weights/psanet_r50_vd --dump dumps/psanet "
    "--dump-kinds none --dump-topn 5": Run(append=tuple(_TINY_EVAL)),
    "attnseg train configs/nvidia_cityscapes_fine.yaml --out runs/fine": Run(append=tuple(_MSCALE_TRAIN)),
    "torchrun --nproc_per_node=8 -m attnseg train configs/nvidia_cityscapes_sota.yaml --out runs/sota":
        Run({"--nproc_per_node=8": "--standalone --nproc_per_node=2"},
            (*_MSCALE_TRAIN, "train.batch_size=1", "data.autolabel_mask_border=false")),
    "torchrun --nproc_per_node=8 -m attnseg train configs/paddle_cityscapes_sota.yaml --out runs/paddle":
        Run({"--nproc_per_node=8": "--standalone --nproc_per_node=2"}, (*_MSCALE_TRAIN, "train.batch_size=1")),
    "torchrun --nproc_per_node=1 -m attnseg train configs/psanet_r50_cityscapes_80k.yaml --out runs/psanet":
        Run({"--nproc_per_node=1": "--standalone --nproc_per_node=1"}, ("model.name=psanet_r18_narrow", *_TINY_TRAIN)),
    # The resume continues the first training run; train.iters is a change a resume may make.
    "attnseg train configs/nvidia_cityscapes_fine.yaml --out runs/fine --resume":
        Run(append=(*_MSCALE_TRAIN, "train.iters=3")),
    "attnseg print-config configs/paddle_cityscapes_sota.yaml train.lr=0.005": Run(),
    "attnseg predict runs/demo photos/ clip.mp4 'more/*.jpg' --out predictions --overlay": Run(),
    "attnseg predict runs/demo photos/ --out maps --confidence --attention": Run(),
    "attnseg export runs/demo --format onnx --out model.onnx --output argmax --scales 0.5,1.0,2.0 --dynamic":
        Run(append=("--input-shape", "1", "3", "64", "128")),
    "attnseg predict model.onnx images/ --backend onnxruntime --out predictions": Run(),
    "attnseg autolabel runs/fine data/cityscapes --out data/cityscapes --refine-coarse": Run(append=("--no-progress",)),
    "attnseg make-synthetic data/few --train 10 --val 30": Run({"10": "3", "30": "2"}, ("--height", "64", "--width",
                                                                                          "128")),
    "attnseg make-synthetic data/unlabelled --train 290 --val 0 --seed 11": Run({"290": "3"}, ("--height", "64",
                                                                                                "--width", "128")),
    "attnseg train configs/demo_mscale.yaml --out runs/teacher data.root=data/few train.iters=1250":
        Run({"train.iters=1250": "train.iters=2"}, _DEMO_TRAIN),
    "attnseg autolabel runs/teacher data/unlabelled/leftImg8bit/train --out data/few --truth data/unlabelled":
        Run(append=("--no-progress",)),
    "attnseg train configs/demo_mscale.yaml --out runs/student data.root=data/few data.coarse=autolabelled "
    "train.iters=1250": Run({"train.iters=1250": "train.iters=2"}, _DEMO_TRAIN),
    "attnseg eval configs/demo_mscale.yaml --weights runs/student data.root=data/few": Run(append=tuple(_TINY_EVAL)),
    "attnseg train configs/demo_mscale.yaml --out runs/student_ft data.root=data/few data.coarse=autolabelled "
    "data.autolabel_min_confidence=0.9 model.pretrained=runs/teacher/checkpoints/last.safetensors train.iters=600":
        Run({"train.iters=600": "train.iters=2"}, _DEMO_TRAIN),
    "attnseg train configs/demo_mscale.yaml --out runs/teacher_ft data.root=data/few "
    "model.pretrained=runs/teacher/checkpoints/last.safetensors train.iters=600":
        Run({"train.iters=600": "train.iters=2"}, _DEMO_TRAIN),
    "attnseg quantize runs/demo --calib split:val --calib-count 16 --out model_int8.xml": Run(needs=("openvino", "nncf")),
    "attnseg quantize runs/demo --calib split:train --calib-count 16 --finetune-steps 100 --out model_int8_qat.xml":
        Run({"100": "2"}, needs=("openvino", "nncf")),
    "attnseg eval runs/demo/run/config.yaml --weights model_int8.xml --backend openvino eval.flip=false":
        Run(append=tuple(_TINY_EVAL), needs=("openvino", "nncf")),
    "attnseg benchmark runs/demo --size 1024 2048 --scales 0.5,1.0,2.0":
        Run({"1024": "64", "2048": "128"}, ("--runs", "1", "--warmup", "0", "--routes", "torch-fp32,onnxruntime",
                                            "--no-memory-check")),
}


def readme_commands() -> list[str]:
    """The shell commands of the README's bash blocks, in order, comments and continuation lines removed."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            if tokens:
                commands.append(" ".join(token if token == "&&" else shlex.quote(token) for token in tokens))
    return commands


def readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_every_readme_command_is_run_or_explained():
    commands = readme_commands()
    assert set(commands) == set(RUNS) | set(NOT_RUN), (
        f"README commands without a test: {sorted(set(commands) - set(RUNS) - set(NOT_RUN))}; "
        f"tested commands no longer in the README: {sorted((set(RUNS) | set(NOT_RUN)) - set(commands))}")


# ---------------------------------------------------------------- the user's folder


def _write_vistas(root: Path) -> None:
    from attnseg.data.mapillary import VISTAS_CLASSES

    rng = np.random.default_rng(0)
    for split in ("training", "validation"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir()
        for k in range(2):
            cv2.imwrite(str(root / split / "images" / f"im{k}.jpg"), rng.integers(0, 255, (12, 20, 3), np.uint8))
            label = Image_palette(rng.integers(0, len(VISTAS_CLASSES), (12, 20)))
            label.save(root / split / "labels" / f"im{k}.png")
    config = {"labels": [{"readable": name, "color": [i, i, i], "evaluate": True}
                         for i, name in enumerate(VISTAS_CLASSES)]}
    import json

    (root / "config.json").write_text(json.dumps(config))


def Image_palette(values: np.ndarray):  # noqa: N802 - a small PIL helper
    from PIL import Image

    image = Image.fromarray(values.astype(np.uint8), mode="P")
    image.putpalette([(i * 37) % 256 for i in range(768)])
    return image


def _write_autolabelled(root: Path) -> None:
    """NVIDIA's refinement_final (labelIds + confidence) and gtCoarse for trainextra copies of the train images."""
    rng = np.random.default_rng(1)
    for image in sorted(root.glob("leftImg8bit/train/*/*_leftImg8bit.png")):
        city = image.parent.name
        extra = root / "leftImg8bit_trainextra" / "leftImg8bit" / "train_extra" / city
        refined = root / "refinement_final" / "train_extra" / city
        coarse = root / "gtCoarse" / "train_extra" / city
        for folder in (extra, refined, coarse):
            folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, extra / image.name)
        label_ids = cv2.imread(str(image).replace("leftImg8bit", "gtFine", 1).replace("_leftImg8bit.png",
                                                                                      "_gtFine_labelIds.png"), -1)
        cv2.imwrite(str(refined / image.name), label_ids)
        cv2.imwrite(str(refined / image.name.replace(".png", "_prob.png")),
                    rng.integers(100, 256, label_ids.shape, np.uint8))
        cv2.imwrite(str(coarse / image.name.replace("_leftImg8bit.png", "_gtCoarse_labelIds.png")), label_ids)


def _write_media(root: Path) -> None:
    rng = np.random.default_rng(2)
    for folder, names in (("photos", ["a.png", "sub/b.jpg"]), ("more", ["c.jpg", "d.jpg"]), ("images", ["e.png"])):
        for name in names:
            (root / folder / name).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / folder / name), rng.integers(0, 255, (48, 96, 3), np.uint8))
    cv2.imwrite(str(root / "street.png"), rng.integers(0, 255, (48, 96, 3), np.uint8))
    writer = cv2.VideoWriter(str(root / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 5, (96, 48))
    for _ in range(3):
        writer.write(rng.integers(0, 255, (48, 96, 3), np.uint8))
    writer.release()


def _write_released_weights(root: Path) -> None:
    torch.save({"state_dict": nvidia_filled_checkpoint(), "epoch": 175},
               root / "cityscapes_ocrnet.HRNet_Mscale_outstanding-turtle.pth")
    for name, model in (("model.pdparams", "mscale_ocrnet"), ("psanet_model.pdparams", "psanet")):
        with open(root / name, "wb") as stream:
            pickle.dump(paddle_filled_checkpoint(model), stream, protocol=2)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from attnseg.cli.main import main
    from attnseg.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("user")
    shutil.copytree(REPO / "configs", root / "configs")
    make_synthetic_dataset(root / "data" / "cityscapes", num_train=4, num_val=2, height=64, width=128, seed=3)
    _write_autolabelled(root / "data" / "cityscapes")
    _write_vistas(root / "data" / "mapillary")
    _write_released_weights(root)
    _write_media(root)
    assert main(["demo", "--out", str(root / "runs" / "demo"), "--minutes", "5", "--train-images", "2",
                 "--val-images", "1", "--size", "32x64", "--pictures", "1", "--no-progress", "train.iters=2",
                 "train.batch_size=2", "data.crop_size=[32,64]", "data.class_uniform_tile=32"]) == 0  # fmt: skip
    return root


def _substituted(command: str) -> list[str]:
    run = RUNS[command]
    tokens = shlex.split(command)
    out = []
    for token in tokens:
        out += run.replace.get(token, token).split(" ") if token in run.replace else [token]
    return out + list(run.append)


@pytest.mark.parametrize("command", [c for c in readme_commands() if c in RUNS])
def test_readme_command_runs(command, workspace, monkeypatch, capsys):
    for package in RUNS[command].needs:
        pytest.importorskip(package)
    monkeypatch.chdir(workspace)
    argv = _substituted(command)
    if argv[0] == "torchrun":
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", *argv[1:]], cwd=workspace, env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return
    assert argv[0] == "attnseg"
    if RUNS[command].needs:
        # OpenVINO's CPU plugin, loaded in this process by earlier tests, can crash a later in-process run (SIGSEGV
        # seen after the INT8 tests); a user's command has a process of its own.
        result = subprocess.run([sys.executable, "-m", "attnseg", *argv[1:]], cwd=workspace, capture_output=True,
                                text=True, timeout=600)  # fmt: skip
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "Traceback" not in result.stderr
        return
    from attnseg.cli.main import main

    code = main(argv[1:])
    captured = capsys.readouterr()
    assert code == 0, captured.out[-3000:] + captured.err[-3000:]
    assert "Traceback" not in captured.err


def test_readme_python_example_runs(workspace, monkeypatch):
    """The README's Python example with the same stand-ins (the NVIDIA release's layout, the demo run folder) and a
    small image in place of the 1024x2048 tensor."""
    monkeypatch.chdir(workspace)
    (block,) = readme_python_blocks()
    assert "torch.randn(1, 3, 1024, 2048)" in block
    namespace: dict = {}
    exec(compile(block.replace("torch.randn(1, 3, 1024, 2048)", "torch.randn(1, 3, 64, 128)"), "README", "exec"),
         namespace)
    assert namespace["out"].logits.shape == (1, 19, 64, 128)
    assert namespace["labels"].shape == (48, 96) and namespace["labels"].dtype == np.uint8

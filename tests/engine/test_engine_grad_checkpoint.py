"""`train.grad_checkpoint` through the one build path: the trainer switches the model's checkpointing on from the
config (and trains with it, accumulating), and a model without it is refused in one line naming the model."""

from pathlib import Path

import pytest
import torch
from torch import nn

from attnseg.cli.main import main as cli_main
from attnseg.config import load_config
from attnseg.config.training import build_training
from attnseg.data.synthetic import make_synthetic_dataset
from attnseg.engine.trainer import Trainer
from attnseg.errors import AttnsegError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("gradckpt") / "cs", num_train=2, num_val=1, height=64,
                                  width=128)  # fmt: skip


def _overrides(root: Path) -> list[str]:
    return [f"data.root={root}", "data.crop_size=[64,128]", "data.num_workers=0", "data.class_uniform_fraction=0",
            "train.iters=1", "train.batch_size=2", "train.precision=fp32", "train.channels_last=false",
            "eval.precision=fp32"]  # fmt: skip


def test_build_training_applies_grad_checkpoint_from_the_config(synthetic_root, tmp_path):
    overrides = _overrides(synthetic_root) + ["model.name=mscale_ocr_hrnet_w18_small_v1", "train.grad_checkpoint=true",
                                              "train.accumulate=2"]  # fmt: skip
    config = load_config(CONFIGS / "synthetic_mscale_cpu.yaml", overrides)
    setup = build_training(config, tmp_path / "run", progress=False)
    model = setup.model
    assert model.backbone.grad_checkpointing and model.ocr.grad_checkpointing
    assert setup.trainer.accumulate == 2 and setup.data.loader.batch_size == 1
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert setup.trainer.train()["iteration"] == 1
    after = model.state_dict()
    assert not torch.equal(after["ocr.cls_head.weight"], before["ocr.cls_head.weight"])
    # One update of the running statistics per forward (2 micro-batches x 2 training scales), none from recomputation.
    assert int(after["backbone.bn1.num_batches_tracked"]) == 4

    plain = build_training(load_config(CONFIGS / "synthetic_mscale_cpu.yaml", _overrides(synthetic_root)),
                           tmp_path / "plain", progress=False)  # fmt: skip
    assert not plain.model.backbone.grad_checkpointing


def test_a_model_without_checkpointing_is_refused_in_one_line(synthetic_root, tmp_path, capsys):
    run = tmp_path / "run"
    code = cli_main(["train", str(CONFIGS / "synthetic_psanet_cpu.yaml"), *_overrides(synthetic_root),
                     "train.grad_checkpoint=true", "--out", str(run), "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "train.grad_checkpoint" in lines[0] and "psanet_r18_narrow" in lines[0], err


def test_the_trainer_refuses_grad_checkpoint_for_a_model_without_it(tmp_path):
    model = nn.Conv2d(3, 2, 1)
    with pytest.raises(AttnsegError, match="train.grad_checkpoint: Conv2d does not support activation checkpointing"):
        Trainer(model, lambda output, labels: {}, torch.optim.SGD(model.parameters(), lr=0.1), [], None, max_iters=1,
                run_dir=tmp_path, progress=False, tensorboard=False, grad_checkpoint=True)

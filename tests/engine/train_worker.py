"""A tiny, deterministic training run used by the engine tests (run in-process or as a subprocess/torchrun).

Not a test module itself (no ``test_`` prefix). Usage::

    python train_worker.py RUN_DIR --iters 8 --batch 2 [--accumulate 2] [--save-interval 3] [--resume] [--kill-after 5]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import numpy as np
import torch
from torch import nn

from attnseg.config import DataConfig, TrainConfig
from attnseg.engine import distributed
from attnseg.config.train_data import build_train_data
from attnseg.config.training import build_optimizer, seed_everything
from attnseg.engine.trainer import Trainer
from attnseg.losses import CrossEntropyLoss, LossTerm, SegmentationCriterion
from attnseg.models.outputs import SegmentationOutput

NUM_CLASSES = 4


class TinySegNet(nn.Module):
    """Conv-BN-ReLU stack with dropout and an aux head: exercises BN statistics, SyncBN and the RNG."""

    def __init__(self, num_classes: int = NUM_CLASSES, dropout: float = 0.1):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.dropout = nn.Dropout2d(dropout)
        self.head = nn.Conv2d(8, num_classes, 1)
        self.aux = nn.Conv2d(8, num_classes, 1)

    def forward(self, x):
        features = self.body(x)
        return SegmentationOutput(logits=self.head(self.dropout(features)), aux_logits=self.aux(features))


def make_samples(count: int = 12, height: int = 24, width: int = 32, seed: int = 0) -> list[dict]:
    """Images whose colour predicts the label: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    colours = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40]], np.uint8)
    samples = []
    for _ in range(count):
        label = np.zeros((height, width), np.uint8)
        for _ in range(4):
            y, x = rng.integers(0, height - 6), rng.integers(0, width - 8)
            label[y:y + rng.integers(3, 7), x:x + rng.integers(4, 9)] = rng.integers(1, NUM_CLASSES)
        image = colours[label] + rng.integers(0, 30, (height, width, 3), dtype=np.uint8)
        samples.append({"image": image, "label": label})
    return samples


def criterion() -> SegmentationCriterion:
    return SegmentationCriterion([LossTerm("logits", CrossEntropyLoss(), 1.0, "main"),
                                  LossTerm("aux_logits", CrossEntropyLoss(), 0.4, "aux")])


def build(run_dir: str, *, iters: int, batch: int, save_interval: int = 0, data_cfg: DataConfig | None = None,
          dropout: float = 0.1, sync_bn: bool = True, workers: int = 0, hook=None,
          deterministic: bool = False, accumulate: int = 1) -> Trainer:
    rank, world = distributed.get_rank(), distributed.get_world_size()
    train_cfg = TrainConfig(iters=iters, batch_size=batch, lr=0.05, seed=3, save_interval=save_interval,
                            accumulate=accumulate)
    data_cfg = data_cfg or DataConfig(crop_size=(16, 24), scale_range=(0.75, 1.25), color_jitter=0.2,
                                      num_workers=workers, class_uniform_fraction=0.5, class_uniform_tile=16,
                                      centroid_cache_dir=os.path.join(run_dir, "cache"))
    seed_everything(train_cfg.seed, rank, deterministic=deterministic)
    torch.manual_seed(train_cfg.seed)  # identical initial weights on every process
    model = TinySegNet(dropout=dropout)
    torch.manual_seed(train_cfg.seed + rank)
    if world > 1 and sync_bn:
        model = distributed.convert_sync_batchnorm(model)
    optimizer = build_optimizer(model, train_cfg)
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model)
    data = build_train_data(data_cfg, train_cfg, num_classes=NUM_CLASSES, fine=make_samples(), rank=rank,
                            world_size=world, progress=False)
    trainer = Trainer(model, criterion(), optimizer, data.loader, data.sampler, max_iters=iters, run_dir=run_dir,
                      poly_power=2.0, save_interval=save_interval, log_interval=2, progress=False, tensorboard=False,
                      accumulate=accumulate)
    if hook is not None:
        original = trainer.run_step

        def step_with_hook(batch):
            losses = original(batch)
            hook(trainer, losses)
            return losses

        trainer.run_step = step_with_hook
    return trainer


def final_weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    from attnseg.models import unwrap_model as unwrap

    return {k: v.detach().clone() for k, v in unwrap(trainer.model).state_dict().items()}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--save-interval", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill-after", type=int, default=0, help="SIGKILL this process after that many steps")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--accumulate", type=int, default=1, help="micro-batches per step (--batch is the step's)")
    parser.add_argument("--out", help="write the final weights (rank r writes OUT.r) here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    context = distributed.init_distributed("cpu")

    def kill(trainer, losses):
        if args.kill_after and trainer.iteration + 1 >= args.kill_after:  # run_step runs before the counter moves
            os.kill(os.getpid(), signal.SIGKILL)

    trainer = build(args.run_dir, iters=args.iters, batch=args.batch, save_interval=args.save_interval,
                    dropout=args.dropout, workers=args.workers, hook=kill if args.kill_after else None,
                    deterministic=True, accumulate=args.accumulate)
    if args.resume:
        assert trainer.resume(), "nothing to resume"
    trainer.train()
    if args.out:
        torch.save(final_weights(trainer), f"{args.out}.{context.rank}")
    distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

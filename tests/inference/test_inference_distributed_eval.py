"""Sharded evaluation over 2 gloo processes gives exactly the single-process confusion matrix."""

import os

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from attnseg.config.build import EvalSampleDataset, build_eval_loader
from attnseg.config.schema import DataConfig
from attnseg.inference.evaluate import evaluate_model


class _Raw(torch.utils.data.Dataset):
    def __len__(self):
        return 5  # odd: shards of 3 and 2 images, nothing padded or counted twice

    def __getitem__(self, index):
        rng = np.random.default_rng(index)
        label = rng.integers(0, 3, (6, 8)).astype(np.uint8)
        image = np.repeat((label * 80 + rng.integers(0, 60, (6, 8))).astype(np.uint8)[:, :, None], 3, axis=2)
        return {"image": image, "label": label, "name": f"n{index}"}


def _model():
    torch.manual_seed(0)
    return torch.nn.Conv2d(3, 3, 1)


def _evaluate():
    dataset = EvalSampleDataset(_Raw(), mean=(100.0,) * 3, std=(50.0,) * 3)
    loader = build_eval_loader(DataConfig(num_workers=0), dataset=dataset)
    return evaluate_model(_model(), loader, 3, progress=False)


def _worker(rank, init_file, out_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        metrics = _evaluate()
        if rank == 0:
            np.save(out_file, np.append(metrics.confusion.ravel(), metrics.num_images))
    finally:
        dist.destroy_process_group()


def test_two_process_evaluation_equals_one_process(tmp_path):
    single = _evaluate()
    out_file = str(tmp_path / "confusion.npy")
    mp.spawn(_worker, args=(str(tmp_path / "init"), out_file), nprocs=2, join=True)
    result = np.load(out_file)
    assert result[-1] == 5
    assert np.array_equal(result[:-1].reshape(3, 3), single.confusion)
    assert single.confusion.sum() == 5 * 6 * 8

"""Gradient accumulation (`train.accumulate`): one step of batch 4 equals 2 accumulated micro-batches of 2 on a model
without batch statistics; what BatchNorm and ignored pixels change; the loader, DDP and resume with micro-batches."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import train_worker
from attnseg.config import DataConfig, TrainConfig
from attnseg.config.train_data import build_train_data
from attnseg.engine.trainer import Trainer
from attnseg.errors import AttnsegError
from attnseg.losses import CrossEntropyLoss, LossTerm, SegmentationCriterion
from attnseg.models.outputs import SegmentationOutput

NUM_CLASSES = train_worker.NUM_CLASSES
WORKER = Path(__file__).parent / "train_worker.py"


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[2] / "src"), env.get("PYTHONPATH", "")])
    return env


class GroupNormNet(nn.Module):
    """Conv-GN-ReLU with an aux head: no statistic depends on which images share a batch."""

    def __init__(self, norm: str = "group"):
        super().__init__()
        norm_layer = nn.GroupNorm(2, 8) if norm == "group" else nn.BatchNorm2d(8)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), norm_layer, nn.ReLU())
        self.head = nn.Conv2d(8, NUM_CLASSES, 1)
        self.aux = nn.Conv2d(8, NUM_CLASSES, 1)

    def forward(self, x):
        features = self.body(x)
        return SegmentationOutput(logits=self.head(features), aux_logits=self.aux(features))


def _criterion() -> SegmentationCriterion:
    return SegmentationCriterion([LossTerm("logits", CrossEntropyLoss(), 1.0, "main"),
                                  LossTerm("aux_logits", CrossEntropyLoss(), 0.4, "aux")])


def _trainer(model: nn.Module, tmp_path: Path, name: str, **options) -> Trainer:
    # SGD with momentum and weight decay: the step uses the gradient in more than one place.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    return Trainer(model, _criterion(), optimizer, [], None, max_iters=1, run_dir=tmp_path / name, progress=False,
                   tensorboard=False, **options)


def _batch(count: int = 4, ignored_rows: tuple[int, ...] = (0, 0, 0, 0), seed: int = 0) -> dict[str, torch.Tensor]:
    """Images and labels; image i has its first `ignored_rows[i]` label rows ignored (255)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_CLASSES, (count, 8, 12), generator=generator)
    for index, rows in enumerate(ignored_rows[:count]):
        labels[index, :rows] = 255
    return {"image": torch.randn(count, 3, 8, 12, generator=generator), "label": labels}


def _split(batch: dict[str, torch.Tensor], parts: int) -> list[dict[str, torch.Tensor]]:
    size = batch["image"].shape[0] // parts
    return [{key: value[k * size:(k + 1) * size] for key, value in batch.items()} for k in range(parts)]


def _max_difference(a: nn.Module, b: nn.Module) -> float:
    return max((pa - pb).abs().max().item() for pa, pb in zip(a.parameters(), b.parameters()))


def test_two_accumulated_micro_batches_equal_one_step_of_the_whole_batch(tmp_path):
    torch.manual_seed(0)
    whole = GroupNormNet()
    accumulated, initial = copy.deepcopy(whole), copy.deepcopy(whole)
    batch = _batch()
    losses_whole = _trainer(whole, tmp_path, "a").run_step(batch)
    losses_accumulated = _trainer(accumulated, tmp_path, "b", accumulate=2).run_step(_split(batch, 2))
    assert _max_difference(whole, initial) > 1e-3  # the step did move the weights
    assert _max_difference(whole, accumulated) < 1e-6
    # Equal valid-pixel counts per micro-batch: the mean of the micro-batch means is the whole batch's mean.
    assert losses_accumulated.keys() == losses_whole.keys()
    for name, value in losses_whole.items():
        assert losses_accumulated[name] == pytest.approx(value, rel=1e-6), name


def test_with_unequal_ignored_pixels_each_micro_batch_is_averaged_on_its_own(tmp_path):
    """The documented difference: a loss averaged over valid pixels is averaged per micro-batch, so the step follows
    the mean of the micro-batch losses, not the loss over all valid pixels of the batch."""
    torch.manual_seed(0)
    model = GroupNormNet()
    batch = _batch(ignored_rows=(6, 6, 0, 0))  # micro-batch 1 keeps 2 of 8 rows, micro-batch 2 all of them
    micro_batches = _split(batch, 2)
    whole, accumulated, by_hand = copy.deepcopy(model), copy.deepcopy(model), copy.deepcopy(model)
    _trainer(whole, tmp_path, "a").run_step(batch)
    _trainer(accumulated, tmp_path, "b", accumulate=2).run_step(micro_batches)
    criterion, optimizer = _criterion(), _trainer(by_hand, tmp_path, "c").optimizer
    mean_of_means = sum(criterion(by_hand(m["image"]), m["label"])["loss"] for m in micro_batches) / 2
    optimizer.zero_grad()
    mean_of_means.backward()
    optimizer.step()
    assert _max_difference(accumulated, by_hand) < 1e-6
    assert _max_difference(accumulated, whole) > 1e-4


def test_batchnorm_normalises_and_updates_statistics_per_micro_batch(tmp_path):
    """What BatchNorm changes: statistics over 2 images instead of 4, and two running-stat updates per step."""
    torch.manual_seed(0)
    model = GroupNormNet(norm="batch")
    batch = _batch()
    accumulated, whole, two_forwards = copy.deepcopy(model), copy.deepcopy(model), copy.deepcopy(model)
    _trainer(accumulated, tmp_path, "a", accumulate=2).run_step(_split(batch, 2))
    _trainer(whole, tmp_path, "b").run_step(batch)
    for micro_batch in _split(batch, 2):  # the running statistics of two forwards of 2 images each
        two_forwards(micro_batch["image"])
    norm, norm_whole, norm_two = accumulated.body[1], whole.body[1], two_forwards.body[1]
    assert int(norm.num_batches_tracked) == 2 and int(norm_whole.num_batches_tracked) == 1
    torch.testing.assert_close(norm.running_mean, norm_two.running_mean, rtol=0, atol=1e-7)
    torch.testing.assert_close(norm.running_var, norm_two.running_var, rtol=0, atol=1e-7)
    assert not torch.allclose(norm.running_var, norm_whole.running_var, atol=1e-4)
    assert _max_difference(accumulated, whole) > 1e-6  # the gradients differ too: other batch statistics


class _SyncRecorder(nn.Module):
    """Stands in for DistributedDataParallel: records whether each forward ran under `no_sync`."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.inside_no_sync = False
        self.calls: list[bool] = []

    def forward(self, x):
        self.calls.append(self.inside_no_sync)
        return self.module(x)

    def no_sync(self):
        recorder = self

        class _NoSync:
            def __enter__(self):
                recorder.inside_no_sync = True

            def __exit__(self, *exc_info):
                recorder.inside_no_sync = False

        return _NoSync()


def test_only_the_last_micro_batch_synchronises_gradients(tmp_path):
    wrapped = _SyncRecorder(GroupNormNet())
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    trainer = Trainer(wrapped, _criterion(), optimizer, [], None, max_iters=1, run_dir=tmp_path, progress=False,
                      tensorboard=False, accumulate=3)
    trainer.run_step(_split(_batch(count=3), 3))
    assert wrapped.calls == [True, True, False]


def _accumulating_data(tmp_path: Path, batch: int, accumulate: int):
    # Scale 1 and no padding: every crop has the same number of valid pixels (see the unequal-pixels test).
    data_cfg = DataConfig(crop_size=(16, 24), scale_range=(1.0, 1.0), color_jitter=0.2, num_workers=0,
                          class_uniform_fraction=0.5, class_uniform_tile=16, centroid_cache_dir=str(tmp_path / "cache"))
    train_cfg = TrainConfig(batch_size=batch, accumulate=accumulate, seed=3)
    return build_train_data(data_cfg, train_cfg, num_classes=NUM_CLASSES, fine=train_worker.make_samples(),
                            progress=False)


class _Killed(Exception):
    pass


def _loop_trainer(tmp_path: Path, name: str, accumulate: int, iters: int, seen: list, kill_at: int = 0) -> Trainer:
    """A GroupNorm net on the planned loader; records each step's sample indices; `kill_at` > 0 ends the run with
    an exception before that step (a crash after the checkpoint of step `kill_at` - 1, saved every 2 steps)."""
    torch.manual_seed(1)
    model = GroupNormNet()
    data = _accumulating_data(tmp_path, batch=4, accumulate=accumulate)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    trainer = Trainer(model, _criterion(), optimizer, data.loader, data.sampler, max_iters=iters,
                      run_dir=tmp_path / name, progress=False, tensorboard=False, log_interval=1, save_interval=2,
                      accumulate=accumulate)  # fmt: skip
    step = trainer.run_step

    def recording_step(batch):
        if kill_at and trainer.iteration + 1 == kill_at:
            raise _Killed
        micro_batches = [batch] if isinstance(batch, dict) else batch
        seen.append(sorted(int(i) for m in micro_batches for i in m["index"]))
        assert all(m["image"].shape[0] == 4 // accumulate for m in micro_batches)
        return step(batch)

    trainer.run_step = recording_step
    return trainer


def test_loader_yields_micro_batches_and_training_matches_the_whole_batch(tmp_path):
    """3 epochs' worth of steps (12 samples, 4 per step): same samples per step, same weights, one log line per step."""
    seen_whole, seen_accumulated = [], []
    whole = _loop_trainer(tmp_path, "whole", 1, 7, seen_whole)
    accumulated = _loop_trainer(tmp_path, "accumulated", 2, 7, seen_accumulated)
    assert accumulated.loader.batch_size == 2 and whole.loader.batch_size == 4
    whole.train()
    accumulated.train()
    assert seen_accumulated == seen_whole and len(seen_whole) == 7
    assert _max_difference(whole.model, accumulated.model) < 1e-5
    records = [json.loads(line) for line in accumulated.metrics_path.read_text().splitlines()]
    assert [r["iter"] for r in records] == list(range(1, 8)) and accumulated.epoch == 2


def test_resume_with_another_accumulate_continues_with_the_same_samples(tmp_path):
    """`train.accumulate` may change on resume: the sampler counts whole steps, so every step keeps its samples."""
    seen_reference, seen_resumed = [], []
    reference = _loop_trainer(tmp_path, "reference", 1, 5, seen_reference)
    reference.train()
    with pytest.raises(_Killed):
        _loop_trainer(tmp_path, "run", 1, 5, seen_resumed, kill_at=3).train()
    resumed = _loop_trainer(tmp_path, "run", 2, 5, seen_resumed)
    assert resumed.resume() and resumed.iteration == 2
    resumed.train()
    assert seen_resumed == seen_reference
    assert _max_difference(reference.model, resumed.model) < 1e-5


def test_a_loader_of_whole_batches_with_accumulate_is_refused(tmp_path):
    data = _accumulating_data(tmp_path, batch=4, accumulate=1)
    with pytest.raises(AttnsegError, match="batch of 4 x accumulate 2 is not the sampler's batch of 4"):
        Trainer(GroupNormNet(), _criterion(), torch.optim.SGD(GroupNormNet().parameters(), lr=0.1), data.loader,
                data.sampler, max_iters=1, run_dir=tmp_path, progress=False, tensorboard=False, accumulate=2)


def test_torchrun_two_processes_accumulating_match_one_process(tmp_path):
    """DDP with `no_sync` on the first micro-batch: 2 processes x (2 micro-batches of 1) == 1 process x (2 of 2), with
    SyncBN (each micro-step normalises the same 2 images in both runs)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER),
               tmp_path / "ddp", "--iters", 4, "--batch", 2, "--accumulate", 2, "--dropout", 0,
               "--out", tmp_path / "ddp.pt"]  # fmt: skip
    try:
        result = subprocess.run(list(map(str, command)), env=_env(), capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as error:
        raise AssertionError(f"torchrun timed out; its output so far:\n{error.stderr!s:.3000}") from None
    assert result.returncode == 0, result.stderr[-3000:]
    command = [sys.executable, str(WORKER), tmp_path / "one", "--iters", 4, "--batch", 4, "--accumulate", 2,
               "--dropout", 0, "--out", tmp_path / "one.pt"]  # fmt: skip
    result = subprocess.run(list(map(str, command)), env=_env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = torch.load(tmp_path / "ddp.pt.0"), torch.load(tmp_path / "ddp.pt.1")
    single = torch.load(tmp_path / "one.pt.0")
    for name in single:
        assert torch.equal(rank0[name], rank1[name]), name
        reference = single[name].double()
        error = (rank0[name].double() - reference).abs().max().item()
        assert error <= 1e-5 * max(reference.abs().max().item(), 1e-12), (name, error)

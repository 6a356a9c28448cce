"""The one training loop, for every model and recipe.

`Trainer.train()` runs::

    for each iteration until max_iters:
        batch  <- loader: `accumulate` micro-batches (the sampler's plan for this epoch, resumed mid-epoch if needed)
        lr     <- poly_lr(iteration)                     (pure function of the iteration)
        losses <- run_step(batch)                        (per micro-batch forward under autocast, criterion and
                                                          backward; then one optimiser step)
        every log_interval:  reduce losses over processes, write metrics.jsonl / TensorBoard (rank 0)
        every eval_interval: evaluate_fn(model) -> mIoU, keep the best weights
        every save_interval: training state (exact resume) + last weights

Where to extend: a new loss or output is a criterion change (`attnseg.losses`), not a loop change; a different
step (e.g. gradient accumulation, extra forward passes) overrides `run_step`; extra logging goes in `log_metrics`;
anything that needs to survive a restart goes into `state_dict` / `load_state_dict`.

The model is any module returning `SegmentationOutput` (possibly wrapped in DistributedDataParallel); the
criterion maps ``(output, labels)`` to a dict of named weighted terms plus ``"loss"``; `evaluate_fn` takes the
unwrapped model and returns an object with a ``miou`` attribute (or a dict with ``"miou"``).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from attnseg.engine import distributed
from attnseg.engine.checkpoint import (
    TRAINING_STATE_FORMAT,
    capture_rng_state,
    load_training_state,
    restore_rng_state,
    save_training_state,
    training_state_path,
)
from attnseg.engine.ema import ModelEma
from attnseg.engine.optim import poly_lr
from attnseg.engine.step_memory import check_micro_batches, enable_grad_checkpointing, grouped
from attnseg.engine.thread_watch import ThreadWatch
from attnseg.errors import AttnsegError
from attnseg.fileio import atomic_write_text, remove_stale_temporaries
from attnseg.models import unwrap_model as unwrap

Precision = Literal["fp32", "bf16", "fp16"]


def _print_to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class TrainingDiverged(AttnsegError):
    """The loss became NaN or infinite."""


def to_channels_last(model: nn.Module) -> nn.Module:
    """Stores the conv weights of `model` (unwrapped from DDP) NHWC in place, so oneDNN and cuDNN run their fast
    kernels without layout reorders; parameters stay the same objects, so an optimizer built before still holds
    them. Under DistributedDataParallel call it before wrapping: DDP lays out its gradient buckets at construction."""
    return unwrap(model).to(memory_format=torch.channels_last)


def autocast_context(device: torch.device, precision: Precision):
    """bf16 autocast on CPU or CUDA, fp16 on CUDA only; fp32 runs without autocast."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise AttnsegError("train.precision=fp16 needs a CUDA device; use bf16 on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class Trainer:
    """Trains `model` for `max_iters` steps; resumable exactly from its training-state file.

    Args:
        model: the network (DDP-wrapped when distributed), on `device`.
        criterion: ``criterion(output, labels) -> {"name": weighted term, ..., "loss": total}``.
        optimizer: e.g. from `attnseg.engine.optim.build_sgd`; group ``initial_lr`` values are the base rates.
        loader: yields dicts with ``image`` (N, 3, H, W) and ``label`` (N, H, W); its sampler must be `sampler`.
        sampler: a `DistributedPlanSampler` (``set_epoch(epoch, start_batch)``, ``num_batches()``).
        max_iters: total optimisation steps.
        run_dir: output folder (checkpoints/, metrics.jsonl, tensorboard/).
        device: where the model runs.
        precision: "fp32", "bf16" (autocast) or "fp16" (autocast + GradScaler, CUDA only).
        poly_power, end_lr, warmup_iters, warmup_start_factor: the learning-rate schedule (see `poly_lr`).
        grad_clip_norm: clip the global gradient norm to this value; None disables clipping.
        ema_decay: keep an exponential moving average of the weights (evaluated and saved instead of the raw
            weights); None disables it.
        evaluate_fn: ``evaluate_fn(model) -> metrics`` run on every process; None disables evaluation.
        eval_interval, save_interval, log_interval: in iterations (0 disables; the last iteration always saves
            and evaluates).
        save_weights: ``save_weights(model, name, info)`` writes deployable weights ("last", "best"); called on
            rank 0 only.
        progress: show a tqdm bar with it/s and ETA (rank 0).
        tensorboard: also write TensorBoard events when the `tensorboard` package is importable.
        palette: (K, 3) uint8 colours for TensorBoard overlays.
        channels_last: train in channels-last memory format (`to_channels_last`, applied before the EMA copy is
            made; a no-op for a model already converted). Checkpoints are saved contiguous either way.
        thread_watch: re-plans torch's threads after steps as other processes' load changes
            (`attnseg.engine.thread_watch`); None keeps the count.
        grad_checkpoint: switch on the model's activation checkpointing (``set_grad_checkpointing``, HRNet-OCR
            models): less memory for a recomputed forward per step; gradients and BatchNorm statistics stay those of
            the plain run. A model without the method is refused.
        accumulate: micro-batches per optimisation step (gradient accumulation). The loader yields micro-batches of
            ``sampler.batch_size / accumulate`` samples; the sampler still counts whole steps, so its resume position
            and the samples of every step do not depend on `accumulate`. See `run_step` for what stays equal.
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: Callable[[Any, torch.Tensor], dict[str, torch.Tensor]],
        optimizer: torch.optim.Optimizer,
        loader: Iterable[dict[str, Any]],
        sampler: Any,
        *,
        max_iters: int,
        run_dir: str | Path,
        device: torch.device | str = "cpu",
        precision: Precision = "fp32",
        poly_power: float = 0.9,
        end_lr: float = 0.0,
        warmup_iters: int = 0,
        warmup_start_factor: float = 0.1,
        grad_clip_norm: float | None = None,
        ema_decay: float | None = None,
        evaluate_fn: Callable[[nn.Module], Any] | None = None,
        eval_interval: int = 0,
        save_interval: int = 0,
        log_interval: int = 20,
        save_weights: Callable[[nn.Module, str, dict[str, Any]], None] | None = None,
        progress: bool = True,
        tensorboard: bool = True,
        palette: Any = None,
        channels_last: bool = False,
        thread_watch: ThreadWatch | None = None,
        grad_checkpoint: bool = False,
        accumulate: int = 1,
    ):
        check_micro_batches(loader, sampler, accumulate)
        if grad_checkpoint:
            enable_grad_checkpointing(model)
        if channels_last:
            to_channels_last(model)
        self.channels_last = channels_last
        self.model = model
        self.criterion = criterion
        self.optimizer = optimizer
        self.loader = loader
        self.sampler = sampler
        self.max_iters = max_iters
        self.run_dir = Path(run_dir)
        self.device = torch.device(device)
        self.precision = precision
        autocast_context(self.device, precision)  # validates the combination early
        self.schedule = dict(max_iters=max_iters, power=poly_power, end_lr=end_lr, warmup_iters=warmup_iters,
                             warmup_start_factor=warmup_start_factor)
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.grad_clip_norm = grad_clip_norm
        self.scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
        self.ema = ModelEma(unwrap(model), ema_decay) if ema_decay else None
        self.evaluate_fn = evaluate_fn
        self.eval_interval = eval_interval
        self.save_interval = save_interval
        self.log_interval = max(1, log_interval)
        self.save_weights = save_weights
        self.progress = progress
        self.palette = palette
        self.rank = distributed.get_rank()
        self.is_main = self.rank == 0
        # progress counters: what a restart must restore
        self.iteration = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best_miou = -math.inf
        self.best_iteration = -1
        self._loss_sums: dict[str, float] = {}
        self._loss_count = 0
        self._interval_start = time.perf_counter()
        self._data_time = 0.0
        self._writer = self._open_tensorboard() if tensorboard and self.is_main else None
        self.thread_watch = thread_watch
        self.accumulate = accumulate

    # ------------------------------------------------------------------------------------------------------------
    # The loop
    # ------------------------------------------------------------------------------------------------------------

    def train(self) -> dict[str, Any]:
        """Runs until `max_iters`; returns a summary (final iteration, best mIoU and where it was reached)."""
        self.model.train()
        if self.is_main:
            remove_stale_temporaries(self.run_dir)
            # A fresh run (iteration 0) in a folder whose earlier run died before its first checkpoint starts the
            # log over; a resumed one already dropped what followed its checkpoint. Either way each iteration
            # appears once.
            self._truncate_records_after(self.iteration)
        bar = self._progress_bar()
        if self.thread_watch is not None and self.thread_watch.log is None:
            self.thread_watch.log = bar.write if bar is not None else _print_to_stderr
        try:
            while self.iteration < self.max_iters:
                self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
                batches = self.sampler.num_batches()
                if batches <= 0:
                    raise AttnsegError(
                        f"an epoch holds no complete batch (plan of {len(self.sampler.epoch_plan(self.epoch))} "
                        f"samples, batch {self.sampler.batch_size} x {self.sampler.world_size} processes)"
                    )
                fetch_start = time.perf_counter()
                for micro_batches in grouped(self.loader, self.accumulate):
                    self._data_time += time.perf_counter() - fetch_start
                    self._set_lr()
                    losses = self.run_step(micro_batches[0] if self.accumulate == 1 else micro_batches)
                    self._after_step(losses, batches, micro_batches[-1], bar)
                    if self.iteration >= self.max_iters:
                        break
                    fetch_start = time.perf_counter()
        finally:
            if self.thread_watch is not None:
                self.thread_watch.restore()
            if bar is not None:
                bar.close()
            if self._writer is not None:
                self._writer.flush()
        return {"iteration": self.iteration, "best_miou": self.best_miou, "best_iteration": self.best_iteration}

    def run_step(self, batch: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """One optimisation step on one batch, or on the micro-batches of one step; returns the loss terms as floats
        (this process's values, the mean over micro-batches).

        With micro-batches, each one's loss is divided by their number before its backward, so the summed gradient
        is that of the mean micro-batch loss; under DistributedDataParallel all but the last backward skip the
        gradient all-reduce (`no_sync`). This equals one step on the whole batch up to float rounding when the model
        has no batch statistics and every micro-batch has as many valid (not ignored) pixels: a loss averaged over
        valid pixels is averaged per micro-batch, and the mean of means weights the pixels of a micro-batch with
        fewer valid ones more. BatchNorm in training mode normalises each micro-batch with its own statistics and
        updates the running statistics once per micro-batch (statistics over 2 images instead of 4 for a batch of
        4 in 2 micro-batches), as a smaller batch would.
        """
        micro_batches = [batch] if isinstance(batch, Mapping) else list(batch)
        count = len(micro_batches)
        sums: dict[str, float] = {}
        self.optimizer.zero_grad(set_to_none=True)
        for index, micro_batch in enumerate(micro_batches):
            with self._gradient_sync(last=index == count - 1):
                losses, output = self._forward_backward(micro_batch, count)
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach()) / count
            if self._writer is not None:  # kept only for the TensorBoard overlay (of the last micro-batch)
                self._last_output = output.logits[:1].detach().clone()
            del losses, output  # not held while the next micro-batch runs its forward
        if self.grad_clip_norm is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(unwrap(self.model))
        return sums

    def _forward_backward(self, batch: Mapping[str, Any], micro_batches: int) -> tuple[dict[str, torch.Tensor], Any]:
        """Forward, criterion and the backward of ``loss / micro_batches`` (scaled for fp16) on one (micro-)batch."""
        images = batch["image"].to(self.device, non_blocking=True)
        labels = batch["label"].to(self.device, non_blocking=True)
        with autocast_context(self.device, self.precision):
            output = self.model(images)
        losses = self.criterion(output, labels)
        total = losses["loss"]
        if not torch.isfinite(total.detach()):
            raise TrainingDiverged(f"loss is {total.item()} at iteration {self.iteration + 1}; "
                                   "lower train.lr or enable train.grad_clip_norm")
        self.scaler.scale(total / micro_batches if micro_batches > 1 else total).backward()
        return losses, output

    def _gradient_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """DDP's `no_sync` for every micro-batch but the last: gradients all-reduce once per step."""
        if last or not hasattr(self.model, "no_sync"):
            return contextlib.nullcontext()
        return self.model.no_sync()

    def _set_lr(self) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = poly_lr(self.iteration, base_lr=base, **self.schedule)

    def _after_step(self, losses: dict[str, float], batches: int, batch: dict[str, Any], bar: Any) -> None:
        lr = self.optimizer.param_groups[0]["lr"]
        self.iteration += 1
        self.batch_in_epoch += 1
        if self.batch_in_epoch >= batches:
            self.epoch += 1
            self.batch_in_epoch = 0
        for name, value in losses.items():
            self._loss_sums[name] = self._loss_sums.get(name, 0.0) + value
        self._loss_count += 1
        last = self.iteration >= self.max_iters
        if self.iteration % self.log_interval == 0 or last:
            self.log_metrics(lr, bar)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses['loss']:.4f}", lr=f"{lr:.2e}", epoch=self.epoch, refresh=False)
        if self.thread_watch is not None:
            self.thread_watch.tick()
        if self.evaluate_fn is not None and ((self.eval_interval and self.iteration % self.eval_interval == 0) or last):
            self.evaluate(batch)
        if (self.save_interval and self.iteration % self.save_interval == 0) or last:
            self.save()

    # ------------------------------------------------------------------------------------------------------------
    # Logging, evaluation, checkpoints
    # ------------------------------------------------------------------------------------------------------------

    def log_metrics(self, lr: float, bar: Any = None) -> None:
        """Averages the loss terms since the last log over iterations and processes; rank 0 writes them."""
        means = {name: total / self._loss_count for name, total in self._loss_sums.items()}
        means = distributed.reduce_mean(means)
        elapsed = time.perf_counter() - self._interval_start
        record = {"iter": self.iteration, "epoch": self.epoch, "lr": lr, **means,
                  "sec_per_iter": elapsed / self._loss_count, "data_sec_per_iter": self._data_time / self._loss_count}
        self._loss_sums, self._loss_count, self._data_time = {}, 0, 0.0
        self._interval_start = time.perf_counter()
        if not self.is_main:
            return
        self._write_record(record)
        if self._writer is not None:
            for name, value in means.items():
                self._writer.add_scalar(f"train/{name}", value, self.iteration)
            self._writer.add_scalar("train/lr", lr, self.iteration)
        if bar is None:  # no progress bar: the records are the console log
            print(json.dumps(record), flush=True)

    def evaluate(self, batch: dict[str, Any] | None = None) -> float:
        """Runs `evaluate_fn` on the evaluated weights (EMA when enabled); keeps the best as "best"."""
        model = self.ema.module if self.ema is not None else unwrap(self.model)
        model.eval()
        try:
            metrics = self.evaluate_fn(model)
        finally:
            self.model.train()
        miou = float(metrics["miou"] if isinstance(metrics, dict) else metrics.miou)
        improved = miou > self.best_miou
        if improved:
            self.best_miou, self.best_iteration = miou, self.iteration
        if self.is_main:
            record = {"iter": self.iteration, "epoch": self.epoch, "miou": miou, "best_miou": self.best_miou,
                      "best_iter": self.best_iteration}
            accuracy = metrics.get("acc") if isinstance(metrics, dict) else getattr(metrics, "acc", None)
            if accuracy is not None:
                record["acc"] = float(accuracy)
            self._write_record(record)
            if not self.progress:
                print(json.dumps(record), flush=True)
            if self._writer is not None:
                self._writer.add_scalar("eval/miou", miou, self.iteration)
                self._add_overlay(batch)
            if improved and self.save_weights is not None:
                self.save_weights(model, "best", {"iteration": self.iteration, "miou": miou})
        return miou

    def save(self) -> Path:
        """Writes the training state (all processes take part: RNG states are gathered) and the last weights."""
        state = self.state_dict()
        state["rng"] = distributed.all_gather_objects(capture_rng_state())
        path = training_state_path(self.run_dir)
        if self.is_main:
            save_training_state(path, state)
            if self.save_weights is not None:
                model = self.ema.module if self.ema is not None else unwrap(self.model)
                self.save_weights(model, "last", {"iteration": self.iteration})
        distributed.barrier()
        return path

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": TRAINING_STATE_FORMAT,
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "iteration": self.iteration,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "best_miou": self.best_miou,
            "best_iteration": self.best_iteration,
            "world_size": distributed.get_world_size(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a state from `state_dict` (+ ``rng``: one entry per process of the run that saved it)."""
        unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.iteration = state["iteration"]
        self.epoch = state["epoch"]
        self.batch_in_epoch = state["batch_in_epoch"]
        self.best_miou = state["best_miou"]
        self.best_iteration = state["best_iteration"]
        rng_states = state.get("rng") or []
        if len(rng_states) == distributed.get_world_size():
            restore_rng_state(rng_states[self.rank])
        elif self.is_main:
            print(f"resume: the checkpoint holds RNG states of {len(rng_states)} processes, this run has "
                  f"{distributed.get_world_size()}; random streams restart (data order is still exact)", flush=True)
        self._truncate_records_after(self.iteration)

    def resume(self, path: str | Path | None = None) -> bool:
        """Loads the run's training state (default: ``run_dir/checkpoints/training_state.pt``) if it exists."""
        path = Path(path) if path is not None else training_state_path(self.run_dir)
        if not path.is_file():
            return False
        self.load_state_dict(load_training_state(path))
        return True

    # ------------------------------------------------------------------------------------------------------------
    # Output helpers
    # ------------------------------------------------------------------------------------------------------------

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    def _write_record(self, record: dict[str, Any]) -> None:
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        with self.metrics_path.open("a") as stream:
            stream.write(json.dumps(record) + "\n")

    def _truncate_records_after(self, iteration: int) -> None:
        """Drops log lines written after `iteration` (the checkpoint being resumed, or 0 for a fresh start) and a
        line a killed process left half-written, so metrics.jsonl reads as one run with each iteration once."""
        if not self.is_main or not self.metrics_path.is_file():
            return
        kept = []
        for line in self.metrics_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # cut short by a kill mid-write
            if isinstance(record, dict) and record.get("iter", 0) <= iteration:
                kept.append(line)
        atomic_write_text(self.metrics_path, "".join(line + "\n" for line in kept), durable=True)

    def _progress_bar(self) -> Any:
        if not (self.progress and self.is_main):
            return None
        from tqdm import tqdm

        return tqdm(total=self.max_iters, initial=self.iteration, desc="train", unit="it", dynamic_ncols=True)

    def _open_tensorboard(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is an optional extra
            return None
        return SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def _add_overlay(self, batch: dict[str, Any] | None) -> None:
        """Image | prediction | label of the first sample of the latest training batch, as one picture."""
        logits = getattr(self, "_last_output", None)
        if batch is None or logits is None or self.palette is None:
            return
        import numpy as np

        palette = np.asarray(self.palette, dtype=np.uint8)
        image = batch["image"][0].float()
        image = (image - image.min()) / (image.max() - image.min() + 1e-6)
        prediction = logits[0].float().argmax(0).cpu().numpy()
        label = batch["label"][0].cpu().numpy()
        colour = lambda ids: palette[np.clip(ids, 0, len(palette) - 1)] * (ids < len(palette))[..., None]  # noqa: E731
        picture = np.concatenate([(image.permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8),
                                  colour(prediction).astype(np.uint8), colour(label).astype(np.uint8)], axis=1)
        self._writer.add_image("train/overlay", picture, self.iteration, dataformats="HWC")

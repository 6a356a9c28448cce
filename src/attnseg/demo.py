"""`attnseg demo`: the whole job on a fresh CPU machine, start to finish, in minutes.

`run_demo` does::

    make_synthetic_dataset        <out>/data (skipped when the same scenes are already there)
    measure one inference pass    -> seconds to keep for evaluation and pictures (`evaluation_reserve`)
    train (DeadlineTrainer)       <out>/config.yaml, checkpoints/{best,last}, metrics.jsonl: the run folder that
                                  `attnseg eval/predict/export/benchmark` read unchanged; training stops at the
                                  config's iteration count or earlier, at a deadline derived from --minutes
    evaluate three recipes        single scale | the config's eval.scales fused by MscaleOCR's learned hierarchical
                                  attention (averaged for models without it) | the same scales averaged + flip
                                  (PaddleSeg aug_eval)
    pictures + index.html         overlays, input | ground truth | prediction, per-scale attention and the share
                                  of the fused prediction each scale contributes; demo_metrics.json

The time budget is a deadline, not a promise about the machine: on a busy CPU the demo trains fewer iterations
(re-planned from the measured step time every few steps) and says so.
"""

from __future__ import annotations

import html
import json
import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attnseg.engine.trainer import Trainer
from attnseg.errors import ConfigError
from attnseg.fileio import atomic_write_text

DEFAULT_MODEL = "mscale_ocr_hrnet_w18_small_v1"
DEMO_CONFIGS = {"mscale": "demo_mscale.yaml", "psanet": "demo_psanet.yaml"}
SINGLE_SCALE = (1.0,)


@dataclass(frozen=True)
class EvalRecipe:
    """One evaluation of the demo: a name for tables and the `evaluate_model` arguments."""

    key: str
    title: str
    scales: tuple[float, ...]
    multi_scale: str
    flip: bool

    @property
    def relative_cost(self) -> float:
        """Forward cost in scale-1.0 passes (pixels scale with the square of the scale)."""
        return sum(scale * scale for scale in self.scales) * (2 if self.flip else 1)


def demo_recipes(
    hierarchical: bool, scales: Sequence[float] = (0.5, 1.0, 2.0), flip: bool = False
) -> tuple[EvalRecipe, ...]:
    """The three evaluations: single scale; `scales` fused by learned attention (`hierarchical`, MscaleOCR) or
    averaged, with horizontal flip when `flip`; the same `scales` averaged with flip (PaddleSeg aug_eval).

    Raises:
        ConfigError: `scales` is empty or does not contain 1.0 (hierarchical fusion is anchored at 1.0).
    """
    scales = tuple(sorted(float(scale) for scale in scales))
    if 1.0 not in scales:
        raise ConfigError(f"the demo's eval.scales must contain 1.0, got {list(scales)}")
    named = "/".join(f"{scale:g}" for scale in scales)
    multi_named = f"{named} + flip" if flip else named
    multi = (
        EvalRecipe("hierarchical", f"hierarchical attention {multi_named}", scales, "hierarchical", flip)
        if hierarchical
        else EvalRecipe(f"average{len(scales)}", f"average {multi_named}", scales, "average", flip)
    )
    return (
        EvalRecipe("single", "single scale 1.0", SINGLE_SCALE, "hierarchical", False),
        multi,
        EvalRecipe("average_flip", f"average {named} + flip (PaddleSeg)", scales, "average", True),
    )


# --------------------------------------------------------------------------------------------------------------------
# Time budget arithmetic
# --------------------------------------------------------------------------------------------------------------------


def evaluation_reserve(
    seconds_per_pass: float, num_images: int, recipes: Sequence[EvalRecipe], margin: float = 1.3, fixed: float = 15.0
) -> float:
    """Seconds to keep for the evaluations and pictures after training.

    Args:
        seconds_per_pass: measured time of one scale-1.0 inference pass on one validation image.
        num_images: validation images.
        recipes: the evaluations that will run.
        margin: factor for what the estimate leaves out (resizing, softmax, metrics, loader start).
        fixed: seconds for pictures, the page and loading the checkpoints.
    """
    passes = sum(recipe.relative_cost for recipe in recipes) * num_images
    return margin * passes * max(seconds_per_pass, 0.0) + fixed


def affordable_iters(
    iteration: int, seconds_left: float, seconds_per_iter: float, max_iters: int, min_iters: int = 1
) -> int:
    """The iteration to stop at: as many more steps as fit in `seconds_left`, capped at `max_iters`.

    Never below ``iteration + 1`` (the step in progress finishes) nor below `min_iters`, never above `max_iters`.
    """
    if seconds_per_iter <= 0 or not math.isfinite(seconds_per_iter):
        return max_iters
    more = math.floor(max(seconds_left, 0.0) / seconds_per_iter)
    return int(min(max_iters, max(iteration + more, iteration + 1, min_iters)))


def effective_scale_weights(
    attention: Mapping[float, torch.Tensor], scales: Sequence[float]
) -> dict[float, torch.Tensor]:
    """Per-pixel share of each scale in MscaleOCR's hierarchically fused prediction, at the input size.

    The fusion runs from the largest scale down: ``p <- a_s * p_s + (1 - a_s) * p``, so scale s contributes
    ``a_s * prod(1 - a_t for smaller t)`` and the largest scale what is left. The shares sum to 1 at every pixel.

    Args:
        attention: scale -> (N, 1, h, w) attention maps of the fusion (all scales but the largest), any sizes.
        scales: the fused scales (containing 1.0).

    Returns:
        scale -> (N, 1, H, W) weights at the size of the scale-1.0 attention (the input size).
    """
    ordered = sorted((float(s) for s in scales), reverse=True)
    if 1.0 not in ordered:
        raise ValueError(f"scales {list(scales)} must contain 1.0")
    if len(ordered) == 1:
        return {}
    reference = attention[1.0] if 1.0 in attention else next(iter(attention.values()))
    size = reference.shape[-2:]

    def at_input_size(map_: torch.Tensor) -> torch.Tensor:
        map_ = map_.float()
        if map_.shape[-2:] == size:
            return map_
        return torch.nn.functional.interpolate(map_, size=tuple(size), mode="bilinear", align_corners=False)

    remaining = torch.ones_like(reference, dtype=torch.float32)
    weights: dict[float, torch.Tensor] = {}
    for scale in reversed(ordered[1:]):  # smallest first: it is applied last, so it keeps its attention
        a = at_input_size(attention[scale]).clamp(0, 1)
        weights[scale] = a * remaining
        remaining = remaining * (1 - a)
    weights[ordered[0]] = remaining
    return {scale: weights[scale] for scale in sorted(weights)}


# --------------------------------------------------------------------------------------------------------------------
# The recipe that fits this CPU
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoRecipe:
    """One training recipe of the demo: config overrides applied on top of the demo config (before the user's)."""

    key: str
    title: str
    overrides: tuple[str, ...] = ()


# Cheaper recipes for CPUs whose float rate is far below the bf16 rate the default recipe was sized on (AVX2-only
# CPUs run fp32: the step costs 2x (emulated AVX2 on a Sapphire Rapids) to ~8x (AMD EPYC Zen 3) the bf16 step).
# Ordered from the default down; the first whose measured step lets it train most of its iterations is used.
# Smaller crops keep the batch (8 images: BatchNorm statistics) and the two-scale training the attention needs.
FALLBACK_RECIPES: dict[str, tuple[DemoRecipe, ...]] = {
    "mscale": (
        DemoRecipe("default", "the config's recipe"),
        DemoRecipe("crops96", "96x192 crops (0.56x the pixels per step)",
                   ("data.crop_size=[96,192]", "data.class_uniform_tile=96")),
        DemoRecipe("crops64_narrow", "64x128 crops and half-width OCR/attention heads (0.25x the pixels per step)",
                   ("data.crop_size=[64,128]", "data.class_uniform_tile=64", "model.kwargs.ocr_mid_channels=64",
                    "model.kwargs.ocr_key_channels=32", "model.kwargs.attention_channels=32")),
    ),  # fmt: skip
    "psanet": (
        DemoRecipe("default", "the config's recipe"),
        # The 31x31 attention mask still covers a whole 96-pixel-high crop (12 rows at stride 8).
        DemoRecipe("crops96", "96x192 crops (0.56x the pixels per step)",
                   ("data.crop_size=[96,192]", "data.class_uniform_tile=96")),
    ),  # fmt: skip
}
# A recipe fits when its measured step lets it train at least this share of its iterations (the rest of the budget
# arithmetic, evaluation included, is the deadline trainer's). Low, because the cheaper recipes learn far less per
# step: on a Sapphire Rapids machine the 64x128 narrow recipe trained 994 iterations to 0.56 mIoU (hierarchical),
# where the default recipe reached 0.59 after 440 and 0.75 after 900.
FIT_SHARE = 0.35
# Crops made in the training process (num_workers 0), per image: what the bare-model measurement leaves out.
DATA_SECONDS_PER_IMAGE = 0.007


@dataclass(frozen=True)
class RecipeTrial:
    """A recipe's measurement: seconds per training step, seconds kept for evaluation, affordable iterations."""

    recipe: DemoRecipe
    step_seconds: float
    reserve_seconds: float
    iters: int
    affordable: int

    @property
    def fits(self) -> bool:
        return self.affordable >= FIT_SHARE * self.iters


def choose_recipe(
    candidates: Sequence[DemoRecipe],
    measure: Callable[[DemoRecipe], tuple[float, float, int]],
    seconds_left: Callable[[], float],
) -> tuple[RecipeTrial, list[RecipeTrial]]:
    """The first of `candidates` that fits the time left, else the one that trains the largest share of its
    iterations (the fastest step among equals); with every trial made (candidates after the chosen one are not measured).

    Args:
        candidates: recipes, the default first.
        measure: recipe -> (seconds per step, seconds to keep for evaluation, planned iterations).
        seconds_left: seconds until the deadline, asked after each measurement (measuring costs time too).
    """
    trials = []
    for recipe in candidates:
        step, reserve, iters = measure(recipe)
        affordable = max(0, math.floor(max(seconds_left() - reserve, 0.0) / max(step, 1e-9)))
        trials.append(RecipeTrial(recipe, step, reserve, iters, affordable))
        if trials[-1].fits:
            return trials[-1], trials
    return max(trials, key=lambda trial: (trial.affordable / max(trial.iters, 1), -trial.step_seconds)), trials


def measure_train_step(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, batch_size: int,
                       crop: Sequence[int], num_classes: int, precision: str, channels_last: bool,
                       steps: int = 2) -> float:  # fmt: skip
    """Median seconds of `steps` training steps on a random batch (after one untimed step): forward, loss,
    backward and optimizer step, without the data pipeline."""
    from attnseg.engine.trainer import autocast_context

    images = torch.randn(batch_size, 3, *crop)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, num_classes, (batch_size, *crop))
    model.train()
    times = []
    for _ in range(1 + max(1, steps)):
        start = time.perf_counter()
        with autocast_context(torch.device("cpu"), precision):
            loss = criterion(model(images), labels)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))


def _recipe_measurer(image_size: tuple[int, int], num_val: int, channels_last: bool):
    """`choose_recipe`'s measure function for loaded experiments: a fresh model of the recipe, one inference pass
    (the evaluation reserve) and the median of two training steps."""
    from attnseg.config.build import build_model
    from attnseg.engine.build import build_criterion_from_config, build_optimizer

    def measure(experiment) -> tuple[float, float, int]:
        train_cfg, model_cfg = experiment.train, experiment.model
        model = build_model(model_cfg)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        recipes = demo_recipes(hasattr(model, "eval_scales"), experiment.eval.scales, experiment.eval.flip)
        reserve = evaluation_reserve(measure_inference_pass(model, *image_size, experiment.eval.precision), num_val,
                                     recipes)  # fmt: skip
        criterion = build_criterion_from_config(train_cfg, model_cfg.num_classes, experiment.data.ignore_index)
        step = measure_train_step(model, criterion, build_optimizer(model, train_cfg), train_cfg.batch_size,
                                  experiment.data.crop_size, model_cfg.num_classes, train_cfg.precision, channels_last)
        return step + DATA_SECONDS_PER_IMAGE * train_cfg.batch_size, reserve, train_cfg.iters

    return measure


# --------------------------------------------------------------------------------------------------------------------
# Training with a deadline
# --------------------------------------------------------------------------------------------------------------------


class DeadlineTrainer(Trainer):
    """A `Trainer` that stops in time: after `warmup_steps` it measures seconds per iteration (data included) and
    lowers ``max_iters`` to what fits before `deadline`; it re-plans every `replan_every` steps on the recent step
    times, and ends at the step that crosses the deadline whatever the plan said. The learning-rate schedule follows
    the lowered ``max_iters``, so the poly decay still reaches its end.

    Args:
        *args, **kwargs: as for `Trainer`.
        deadline: `time.perf_counter()` value by which training and what follows it must end; None trains the
            full `max_iters`.
        reserve: seconds kept before `deadline` for what follows training (its final evaluation included), or a
            function returning them, called at every re-plan: a machine that gets busier or quieter changes the
            evaluation time as much as the step time, so the demo re-measures an inference pass there.
        warmup_steps: steps before the first measurement (the first ones pay for allocator and oneDNN set-up).
        replan_every: steps between re-plans.
    """

    def __init__(self, *args: Any, deadline: float | None = None, reserve: float | Callable[[], float] = 0.0,
                 warmup_steps: int = 3, replan_every: int = 10, **kwargs: Any):  # fmt: skip
        super().__init__(*args, **kwargs)
        self.deadline = deadline
        self.reserve_fn = reserve if callable(reserve) else None
        self.reserve = 0.0 if callable(reserve) else max(0.0, float(reserve))
        self.warmup_steps = max(1, warmup_steps)
        self.replan_every = max(1, replan_every)
        self.planned_iters = self.max_iters
        self.stopped_by_deadline = False
        self._step_starts: list[float] = []
        self._bar: Any = None

    def _progress_bar(self) -> Any:
        self._bar = super()._progress_bar()
        return self._bar

    def run_step(self, batch: dict[str, Any]) -> dict[str, float]:
        now = time.perf_counter()
        self._step_starts.append(now)
        if self.deadline is not None:
            if now >= self.training_deadline and self.iteration + 1 < self.max_iters:
                self._set_max_iters(self.iteration + 1)  # past the deadline: this step is the last
                self.stopped_by_deadline = True
            else:
                self._replan(now)
        return super().run_step(batch)

    def _replan(self, now: float) -> None:
        steps = len(self._step_starts) - 1  # completed step intervals
        if steps < self.warmup_steps or (steps - self.warmup_steps) % self.replan_every:
            return
        recent = self._step_starts[max(1, len(self._step_starts) - 1 - 2 * self.replan_every):]
        per_iter = (recent[-1] - recent[0]) / max(1, len(recent) - 1)
        if self.reserve_fn is not None:
            self.reserve = max(0.0, float(self.reserve_fn()))
            now = time.perf_counter()
        target = affordable_iters(self.iteration, self.training_deadline - now, per_iter, self.planned_iters)
        if target != self.max_iters:
            self.stopped_by_deadline = target < self.planned_iters
            self._set_max_iters(target)

    @property
    def training_deadline(self) -> float:
        """When training must end: `deadline` minus the latest reserve."""
        return math.inf if self.deadline is None else self.deadline - self.reserve

    def _set_max_iters(self, iters: int) -> None:
        self.max_iters = iters
        self.schedule["max_iters"] = iters
        if self._bar is not None:
            self._bar.total = iters
            self._bar.refresh()


# --------------------------------------------------------------------------------------------------------------------
# The demo
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class DemoResult:
    """What `run_demo` produced (also written as ``demo_metrics.json``)."""

    out_dir: Path
    run_dir: Path
    index_html: Path
    metrics_json: Path
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    iterations: int = 0


def find_demo_config(model_name: str, config: str | os.PathLike | None = None) -> Path:
    """The demo config for `model_name`: `config` when given, else ``configs/demo_<family>.yaml`` of the checkout.

    Raises:
        ConfigError: no such file (installed without the repository's ``configs/`` folder: pass --config).
    """
    if config is not None:
        path = Path(config)
    else:
        family = "psanet" if model_name.startswith("psanet") else "mscale"
        path = Path(__file__).resolve().parents[2] / "configs" / DEMO_CONFIGS[family]
    if not path.is_file():
        raise ConfigError(f"{path}: demo config not found; pass --config configs/{DEMO_CONFIGS['mscale']} "
                          "(or demo_psanet.yaml) from the attnseg repository")  # fmt: skip
    return path


def ensure_dataset(
    root: Path, num_train: int, num_val: int, height: int, width: int, seed: int, workers: int, progress: bool
) -> bool:
    """Write the synthetic scenes under `root` unless the same ones are there; returns True when it generated."""
    from attnseg.data.synthetic import SCENES_VERSION, make_synthetic_dataset

    marker = root / "demo_dataset.json"
    spec = {"num_train": num_train, "num_val": num_val, "height": height, "width": width, "seed": seed,
            "scenes_version": SCENES_VERSION}
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == spec:
                return False
        except (OSError, json.JSONDecodeError):
            pass
    make_synthetic_dataset(root, num_train, num_val, height, width, seed, workers, progress=progress)
    atomic_write_text(marker, json.dumps(spec) + "\n")
    return True


def measure_inference_pass(
    model: nn.Module, height: int, width: int, precision: str, warmup: int = 1, repeats: int = 2
) -> float:
    """Seconds of one scale-1.0 eval-mode forward on a (1, 3, height, width) input: the fastest of `repeats` passes
    after `warmup` untimed ones. Train/eval mode and MscaleOCR's `eval_scales` are restored."""
    was_training = model.training
    saved_scales = getattr(model, "eval_scales", None)
    if saved_scales is not None:
        model.eval_scales = (1.0,)
    model.eval()
    images = torch.zeros(1, 3, height, width)
    times = []
    try:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            for _ in range(warmup + max(1, repeats)):
                start = time.perf_counter()
                model(images)
                times.append(time.perf_counter() - start)
    finally:
        if saved_scales is not None:
            model.eval_scales = saved_scales
        model.train(was_training)
    return float(min(times[warmup:]))


def _log(message: str) -> None:
    print(message, flush=True)


def run_demo(
    out_dir: str | os.PathLike = "runs/demo",
    *,
    minutes: float = 9.0,
    model_name: str | None = None,
    config: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    num_train: int = 300,
    num_val: int = 30,
    image_size: tuple[int, int] = (256, 512),
    data_seed: int = 0,
    threads: int | None = 2,
    channels_last: bool = True,
    num_pictures: int = 6,
    progress: bool = True,
    log: Callable[[str], None] = _log,
) -> DemoResult:
    """Generate data, train, evaluate three ways, draw pictures and write ``index.html``; see the module docstring.

    Args:
        out_dir: demo folder: ``data/`` (the scenes), ``run/`` (the training run folder), ``pictures/``,
            ``index.html``, ``demo_metrics.json``.
        minutes: wall-clock budget for everything; training ends early enough to leave time for the rest.
        model_name: registered model to train (default: the config's, MscaleOCR HRNet-W18-Small-v1).
        config: demo config (default ``configs/demo_mscale.yaml``, or ``demo_psanet.yaml`` for ``psanet*``).
        overrides: ``section.key=value`` config overrides (e.g. ``train.iters=20`` for a quick look).
        num_train, num_val: synthetic scenes per split.
        image_size: (height, width) of the scenes.
        data_seed: seed of the scenes.
        threads: torch intra-op threads (None: torch's choice), lowered to the cores other processes leave free
            (`attnseg.hardware.plan_threads`).
        channels_last: train and evaluate in channels-last memory format (oneDNN's fast kernels without layout
            reorders; checkpoints are saved contiguous either way). Training also follows ``train.channels_last``.
        num_pictures: validation images that get pictures.
        progress: tqdm bars for training and evaluation.
        log: where progress lines go.
    """
    from attnseg.config import load_config, save_config

    from attnseg.hardware import apply_thread_plan

    start = time.perf_counter()
    deadline = start + max(minutes, 0.0) * 60.0
    thread_plan = apply_thread_plan(threads or torch.get_num_threads(), log=lambda line: log(f"[demo] {line}"))
    out_dir = Path(out_dir)
    model_name = model_name or None
    config_path = find_demo_config(model_name or DEFAULT_MODEL, config)
    overrides = list(overrides)
    if model_name:
        overrides.insert(0, f"model.name={model_name}")
    data_root = (out_dir / "data").resolve()
    run_dir = out_dir / "run"
    overrides.append(f"data.root={data_root}")
    overrides.append(f"train.out_dir={run_dir}")
    experiment = load_config(config_path, overrides)
    if (run_dir / "checkpoints" / "training_state.pt").is_file():
        raise ConfigError(f"{run_dir} already holds a training run; choose another --out or delete it")
    timings: dict[str, float] = {}

    log(f"[demo] {experiment.model.name} on synthetic street scenes, budget {minutes:g} min, "
        f"threads {torch.get_num_threads()}, output {out_dir}")  # fmt: skip
    t0 = time.perf_counter()
    height, width = image_size
    generated = ensure_dataset(data_root, num_train, num_val, height, width, data_seed,
                               workers=max(1, threads or os.cpu_count() or 1), progress=progress)  # fmt: skip
    timings["data"] = time.perf_counter() - t0
    log(f"[demo] data: {num_train} train + {num_val} val scenes of {height}x{width} "
        f"{'written' if generated else 'reused'} in {timings['data']:.1f} s ({data_root})")  # fmt: skip

    t0 = time.perf_counter()
    family = "psanet" if experiment.model.name.startswith("psanet") else "mscale"
    saved, experiment, trial = _pick_recipe(config_path, overrides, family, config is None, deadline, image_size,
                                            num_val, channels_last, log)  # fmt: skip
    timings["plan"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    train_channels_last = channels_last and experiment.train.channels_last
    trained = _train(experiment, run_dir, deadline, num_val, image_size, train_channels_last, progress, log,
                     save_config, saved)
    timings["train"] = time.perf_counter() - t0
    model, single_metrics, summary = trained
    log(f"[demo] trained {summary['iteration']} iterations in {timings['train']:.0f} s"
        + (f" (stopped early for the {minutes:g}-minute budget; {summary['planned_iters']} planned)"
           if summary["stopped_by_deadline"] else ""))  # fmt: skip

    t0 = time.perf_counter()
    results, pictures = _evaluate_all(experiment, model, single_metrics, out_dir, num_pictures, channels_last,
                                      progress, log)  # fmt: skip
    timings["evaluate"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - start

    metrics_path = out_dir / "demo_metrics.json"
    record = {
        "model": experiment.model.name,
        "iterations": summary["iteration"],
        "planned_iterations": summary["planned_iters"],
        "stopped_by_deadline": summary["stopped_by_deadline"],
        "minutes_budget": minutes,
        "seconds": {key: round(value, 2) for key, value in timings.items()},
        **_machine_record(thread_plan.reason, experiment.train.precision, trial),
        "run_dir": str(run_dir),
        "data_root": str(data_root),
        "results": results,
    }
    atomic_write_text(metrics_path, json.dumps(record, indent=2) + "\n")
    index = write_index_html(out_dir, record, pictures)
    _print_summary(results, log)
    log(f"[demo] done in {timings['total'] / 60:.1f} min (data {timings['data']:.0f} s, "
        f"train {timings['train']:.0f} s, evaluation + pictures {timings['evaluate']:.0f} s); evaluate again: "
        f"attnseg eval {run_dir}/config.yaml --weights {run_dir}")  # fmt: skip
    log(f"[demo] open {index.resolve().as_uri()}")
    return DemoResult(out_dir, run_dir, index, metrics_path, results, timings, summary["iteration"])


def _class_table(num_classes: int) -> tuple[list[str], np.ndarray]:
    """Cityscapes names and colours for 19 classes (what the synthetic scenes use), else numbered greys."""
    from attnseg.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE

    if num_classes == len(CITYSCAPES_CLASSES):
        return list(CITYSCAPES_CLASSES), np.asarray(CITYSCAPES_PALETTE, dtype=np.uint8)
    values = np.linspace(0, 255, max(num_classes, 2)).astype(np.uint8)[:num_classes]
    return [f"class_{i}" for i in range(num_classes)], np.stack([values] * 3, axis=1)


def _machine_record(threads_plan: str, precision: str, trial: RecipeTrial) -> dict[str, Any]:
    """What `demo_metrics.json` says about the machine and the choices made for it."""
    return {"threads": torch.get_num_threads(), "threads_plan": threads_plan, "load_average": _load_average(),
            "cpu": _cpu_description(), "precision": precision,
            "recipe": {"key": trial.recipe.key, "title": trial.recipe.title, "overrides": list(trial.recipe.overrides),
                       "step_seconds": round(trial.step_seconds, 3)}}  # fmt: skip


def _cpu_description() -> str:
    from attnseg.hardware import cpu_facts

    return cpu_facts().describe()


def _pick_recipe(config_path: Path, overrides: Sequence[str], family: str, fallbacks: bool, deadline: float,
                 image_size: tuple[int, int], num_val: int, channels_last: bool,
                 log: Callable[[str], None]) -> tuple[Any, Any, RecipeTrial]:  # fmt: skip
    """(config as saved, with precision "auto" kept; the same config resolved for this CPU; the chosen trial).

    With `fallbacks` (the built-in demo config) the cheaper recipes of `FALLBACK_RECIPES` are tried when the
    default one's measured step would train too few of its iterations; the user's overrides apply on top of each.
    """
    from attnseg.config import load_config
    from attnseg.hardware import resolve_experiment_precision

    candidates = FALLBACK_RECIPES[family] if fallbacks else FALLBACK_RECIPES[family][:1]
    loaded: dict[str, tuple[Any, Any]] = {}

    def experiment_of(recipe: DemoRecipe) -> Any:
        if recipe.key not in loaded:
            raw = load_config(config_path, [*recipe.overrides, *overrides])
            loaded[recipe.key] = (raw, resolve_experiment_precision(raw, "cpu", log=lambda line: log(f"[demo] {line}")))
        return loaded[recipe.key][1]

    measurer = _recipe_measurer(image_size, num_val, channels_last)
    chosen, trials = choose_recipe(candidates, lambda recipe: measurer(experiment_of(recipe)),
                                   lambda: deadline - time.perf_counter())  # fmt: skip
    log(recipe_choice_line(chosen, trials, loaded[chosen.recipe.key][1].train.precision, torch.get_num_threads(),
                           _cpu_description()))  # fmt: skip
    raw, resolved = loaded[chosen.recipe.key]
    return raw, resolved, chosen


def recipe_choice_line(chosen: RecipeTrial, trials: Sequence[RecipeTrial], precision: str, threads: int,
                       cpu: str) -> str:  # fmt: skip
    """The one line that states the measured step, the CPU and the recipe the demo trains."""
    first = trials[0]
    head = (f"[demo] measured training step {first.step_seconds:.2f} s ({precision}, threads {threads}, {cpu}): "
            f"{first.recipe.title} trains {min(first.affordable, first.iters)} of {first.iters} iterations in the "
            "time left")  # fmt: skip
    if chosen is first:
        return head
    tried = "; ".join(f"{t.recipe.key} {t.step_seconds:.2f} s" for t in trials[1:])
    verdict = "fits" if chosen.fits else "the best share of its iterations (none fits)"
    return (f"{head} -> training {chosen.recipe.title} instead ({tried}): {min(chosen.affordable, chosen.iters)} of "
            f"{chosen.iters} iterations, {verdict}")


def _load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _train(experiment, run_dir: Path, deadline: float, num_val: int, image_size, channels_last: bool, progress: bool,
           log: Callable[[str], None], save_config,
           saved: Any = None) -> tuple[nn.Module, Any, dict[str, Any]]:  # fmt: skip
    """Single-process training as `attnseg train` does it, with a deadline; returns (model, single-scale metrics,
    summary). The trainer's final evaluation is the single-scale one, which also selects the "best" weights.
    `saved` is the config written to the run folder (default `experiment`; the demo keeps precision "auto")."""
    from attnseg.config.build import build_eval_loader, build_model
    from attnseg.engine.build import build_criterion_from_config, build_optimizer, build_train_data, seed_everything
    from attnseg.inference.evaluate import evaluate_model
    from attnseg.weights import save_checkpoint

    train_cfg, data_cfg, model_cfg, eval_cfg = experiment.train, experiment.data, experiment.model, experiment.eval
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(saved if saved is not None else experiment, run_dir / "config.yaml")
    seed_everything(train_cfg.seed)
    model = build_model(model_cfg)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    recipes = demo_recipes(hasattr(model, "eval_scales"), eval_cfg.scales, eval_cfg.flip)
    per_pass = measure_inference_pass(model, *image_size, precision=eval_cfg.precision)
    reserve = evaluation_reserve(per_pass, num_val, recipes)

    passes = [per_pass]
    replans = 0

    def current_reserve() -> float:
        nonlocal replans
        # Two passes (~1/3 of a training step) every fifth re-plan track the machine's load at a cost of 0.5% of the
        # training time; the median of the last three measurements keeps one unlucky pass on a busy machine from
        # ending training.
        replans += 1
        if replans % 5 == 0:
            passes.append(measure_inference_pass(model, *image_size, eval_cfg.precision, warmup=1, repeats=1))
        return evaluation_reserve(float(np.median(passes[-3:])), num_val, recipes)

    log(f"[demo] one {image_size[0]}x{image_size[1]} inference pass: {per_pass * 1000:.0f} ms; keeping "
        f"{reserve:.0f} s for evaluation and pictures; training may run "
        f"{max(deadline - reserve - time.perf_counter(), 0):.0f} s")  # fmt: skip

    optimizer = build_optimizer(model, train_cfg)
    criterion = build_criterion_from_config(train_cfg, model_cfg.num_classes, data_cfg.ignore_index)
    data = build_train_data(data_cfg, train_cfg, num_classes=model_cfg.num_classes, progress=progress)
    class_names, palette = _class_table(model_cfg.num_classes)
    single = demo_recipes(False)[0]
    captured: dict[str, Any] = {}

    def evaluate(module: nn.Module):
        loader = build_eval_loader(data_cfg, eval_cfg.split, batch_size=1, num_workers=eval_cfg.num_workers)
        t0 = time.perf_counter()
        metrics = evaluate_model(module, loader, model_cfg.num_classes, scales=single.scales,
                                 multi_scale=single.multi_scale, flip=single.flip, precision=eval_cfg.precision,
                                 progress=progress, ignore_index=data_cfg.ignore_index)  # fmt: skip
        captured["metrics"], captured["seconds"] = metrics, time.perf_counter() - t0
        return metrics

    def save_weights(module: nn.Module, name: str, info: dict[str, Any]) -> None:
        save_checkpoint(run_dir / "checkpoints" / name, module, model_cfg.name, model_cfg.kwargs, class_names, palette,
                        data_cfg.mean, data_cfg.std, extra={"run": str(run_dir), "demo": True, **info})

    trainer = DeadlineTrainer(
        model, criterion, optimizer, data.loader, data.sampler,
        max_iters=train_cfg.iters, run_dir=run_dir, precision=train_cfg.precision, poly_power=train_cfg.poly_power,
        end_lr=train_cfg.end_lr, warmup_iters=train_cfg.warmup_iters, warmup_start_factor=train_cfg.warmup_start_factor,
        grad_clip_norm=train_cfg.grad_clip_norm, ema_decay=train_cfg.ema_decay, evaluate_fn=evaluate,
        eval_interval=0, save_interval=0, log_interval=train_cfg.log_interval, save_weights=save_weights,
        progress=progress, tensorboard=False, palette=palette, deadline=deadline,
        reserve=current_reserve, replan_every=10,
    )  # fmt: skip
    result = trainer.train()
    summary = {**result, "planned_iters": trainer.planned_iters, "stopped_by_deadline": trainer.stopped_by_deadline}
    evaluated = trainer.ema.module if trainer.ema is not None else model
    single_result = (captured["metrics"], captured["seconds"]) if "metrics" in captured else None
    return evaluated, single_result, summary


def _evaluate_all(experiment, model: nn.Module, single_metrics, out_dir: Path, num_pictures: int, channels_last: bool,
                  progress: bool, log: Callable[[str], None]):  # fmt: skip
    """Runs the multi-scale recipes (the single-scale one ran at the end of training) and writes the pictures."""
    from attnseg.config.build import build_eval_loader
    from attnseg.inference.evaluate import evaluate_model
    from attnseg.metrics import format_eval_log, metrics_to_json

    data_cfg, eval_cfg, model_cfg = experiment.data, experiment.eval, experiment.model
    class_names, palette = _class_table(model_cfg.num_classes)
    hierarchical = hasattr(model, "eval_scales")
    recipes = demo_recipes(hierarchical, eval_cfg.scales, eval_cfg.flip)
    drawn = recipes[1] if hierarchical else recipes[0]
    pictures = PictureWriter(out_dir / "pictures", np.asarray(palette), data_cfg.mean, data_cfg.std, num_pictures,
                             recipes[1].scales if hierarchical else None, drawn.title)  # fmt: skip
    results: dict[str, dict[str, Any]] = {}
    for recipe in recipes:
        t0 = time.perf_counter()
        if recipe.key == "single" and single_metrics is not None and recipe is not drawn:
            metrics, seconds = single_metrics
        else:
            loader = build_eval_loader(data_cfg, eval_cfg.split, batch_size=1, num_workers=eval_cfg.num_workers)
            draws = recipe is drawn
            metrics = evaluate_model(
                model, loader, model_cfg.num_classes, scales=recipe.scales, multi_scale=recipe.multi_scale,
                flip=recipe.flip, precision=eval_cfg.precision, progress=progress, fusion=eval_cfg.fusion,
                on_prediction=pictures if draws else None, ignore_index=data_cfg.ignore_index,
                keep_scale_outputs=draws and hierarchical,
            )  # fmt: skip
            seconds = time.perf_counter() - t0
        log(f"[demo] {recipe.title}:")
        for line in format_eval_log(metrics):
            log(line)
        results[recipe.key] = {"title": recipe.title, "scales": list(recipe.scales), "multi_scale": recipe.multi_scale,
                               "flip": recipe.flip, "seconds": round(seconds, 2),
                               **metrics_to_json(metrics, class_names)}  # fmt: skip
    return results, pictures.written


def _print_summary(results: Mapping[str, Mapping[str, Any]], log: Callable[[str], None]) -> None:
    log(comparison_table(results))


def comparison_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Plain-text table: one row per recipe with mIoU, pixel accuracy, mean Dice and seconds."""
    width = max([len("recipe")] + [len(str(r.get("title", key))) for key, r in results.items()])
    rows = [f"{'recipe':<{width}}  {'mIoU':>7}  {'Acc':>7}  {'Dice':>7}  {'seconds':>7}", "-" * (width + 38)]
    for key, result in results.items():
        rows.append(f"{str(result.get('title', key)):<{width}}  {_fmt(result.get('mIoU'))}  {_fmt(result.get('Acc'))}  "
                    f"{_fmt(result.get('mDice'))}  {float(result.get('seconds', 0.0)):>7.1f}")  # fmt: skip
    return "\n".join(rows)


def _fmt(value: Any) -> str:
    return f"{float(value):>7.4f}" if value is not None else f"{'-':>7}"


# --------------------------------------------------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------------------------------------------------


class PictureWriter:
    """``on_prediction`` callback that draws the first `limit` images: overlay, input | truth | prediction, and for
    hierarchical models the per-scale attention and each scale's share of the fused prediction (colour-mapped).

    `written` maps picture kinds to lists of paths relative to the demo folder's parent of `out_dir`.
    """

    def __init__(self, out_dir: Path, palette: np.ndarray, mean: Sequence[float], std: Sequence[float], limit: int,
                 scales: Sequence[float] | None, recipe_title: str = ""):  # fmt: skip
        from attnseg.inference.dump import PredictionDumper

        self.out_dir = Path(out_dir)
        self.limit = limit
        self.scales = tuple(scales) if scales else None
        self.dumper = PredictionDumper(out_dir, palette, mean, std, kinds=("overlay", "compare"))
        self.palette = palette
        self.recipe_title = recipe_title
        self.written: list[dict[str, Any]] = []

    def __call__(self, names: list[str], predictions: np.ndarray, extras: dict[str, Any]) -> None:
        from attnseg.inference.dump import safe_name

        keep = max(0, min(len(names), self.limit - len(self.written)))
        if keep == 0:
            return
        batch = extras.get("batch", {})
        subset = {**extras, "batch": _slice_batch(batch, keep)}
        self.dumper(names[:keep], predictions[:keep], subset)
        output = extras.get("output")
        for index, name in enumerate(names[:keep]):
            stem = safe_name(name)
            entry: dict[str, Any] = {"name": str(name), "recipe": self.recipe_title,
                                     "overlay": f"pictures/overlay/{stem}.png",
                                     "compare": f"pictures/compare/{stem}.png"}  # fmt: skip
            if self.scales and output is not None and getattr(output, "scale_attention", None):
                entry.update(self._write_attention(stem, output, index, batch))
            self.written.append(entry)

    def _write_attention(self, stem: str, output: Any, index: int, batch: Mapping[str, Any]) -> dict[str, Any]:
        import cv2

        from attnseg.inference.dump import colorize, write_png
        from attnseg.inference.preprocess import denormalize_image

        attention = {scale: maps[index : index + 1] for scale, maps in output.scale_attention.items()}
        weights = effective_scale_weights(attention, self.scales)
        image = denormalize_image(batch["image"][index], self.dumper.mean, self.dumper.std)
        height, width = image.shape[:2]
        entry: dict[str, Any] = {"attention": {}, "weights": {}, "scale_predictions": {}}
        for scale, maps in sorted(attention.items()):
            path = self.out_dir / "attention" / f"{stem}_attn_{scale:g}x.png"
            write_png(path, _heatmap(maps[0, 0], (height, width)))
            entry["attention"][f"{scale:g}"] = f"pictures/attention/{path.name}"
        for scale, maps in weights.items():
            path = self.out_dir / "attention" / f"{stem}_share_{scale:g}x.png"
            write_png(path, _heatmap(maps[0, 0], (height, width)))
            entry["weights"][f"{scale:g}"] = f"pictures/attention/{path.name}"
        for scale, logits in sorted(output.scale_logits.items()):
            ids = logits[index].float().max(dim=0).indices.to(torch.uint8).cpu().numpy()
            colors = cv2.resize(colorize(ids, self.palette), (width, height), interpolation=cv2.INTER_NEAREST)
            path = self.out_dir / "attention" / f"{stem}_pred_{scale:g}x.png"
            write_png(path, colors)
            entry["scale_predictions"][f"{scale:g}"] = f"pictures/attention/{path.name}"
        if weights:
            # One picture of who decides where: red, green, blue = the share of the smallest, middle, largest scale.
            entry["shares_scales"] = sorted(weights)[:3]
            channels = [weights[s][0, 0].cpu().numpy() for s in sorted(weights)][:3]
            while len(channels) < 3:
                channels.append(np.zeros_like(channels[0]))
            mix = (np.clip(np.stack(channels, axis=-1), 0, 1) * 255).round().astype(np.uint8)
            mix = cv2.resize(mix, (width, height), interpolation=cv2.INTER_LINEAR)
            path = self.out_dir / "attention" / f"{stem}_shares_rgb.png"
            write_png(path, cv2.addWeighted(image, 0.35, mix, 0.65, 0.0))
            entry["shares_rgb"] = f"pictures/attention/{path.name}"
        return entry


def _slice_batch(batch: Mapping[str, Any], count: int) -> dict[str, Any]:
    return {key: (value[:count] if isinstance(value, (list, tuple, torch.Tensor)) else value)
            for key, value in batch.items()}  # fmt: skip


def _heatmap(values: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(h, w) values in [0, 1] -> (H, W, 3) RGB viridis picture at `size`."""
    import cv2

    gray = (values.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    gray = cv2.resize(gray, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return cv2.cvtColor(cv2.applyColorMap(gray, cv2.COLORMAP_VIRIDIS), cv2.COLOR_BGR2RGB)


# --------------------------------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------------------------------


def write_index_html(
    out_dir: str | os.PathLike, record: Mapping[str, Any], pictures: Sequence[Mapping[str, Any]]
) -> Path:
    """Write ``<out_dir>/index.html``: metrics table, per-class IoU, and the pictures (relative links).

    Args:
        out_dir: demo folder (the picture paths are relative to it).
        record: the ``demo_metrics.json`` content.
        pictures: one dict per image from `PictureWriter.written`.
    """
    out_dir = Path(out_dir)
    esc = html.escape
    results: Mapping[str, Mapping[str, Any]] = record.get("results", {})
    seconds = record.get("seconds", {})
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>attnseg demo</title>',
        "<style>body{font-family:sans-serif;margin:1.5em;max-width:1400px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th:first-child,td:first-child{text-align:left}"
        "img{max-width:100%;border:1px solid #ddd}figure{display:inline-block;margin:4px;vertical-align:top}"
        "figcaption{font-size:80%;color:#444}.row{margin-bottom:1.5em}.best{font-weight:bold}</style></head><body>",
        f"<h1>attnseg demo: {esc(str(record.get('model', '')))} on synthetic street scenes</h1>",
        f"<p>{int(record.get('iterations', 0))} training iterations"
        + (f" (of {int(record.get('planned_iterations', 0))} planned, stopped for the time budget)"
           if record.get("stopped_by_deadline") else "")
        + f"; data {float(seconds.get('data', 0)):.0f} s, training {float(seconds.get('train', 0)):.0f} s, "
        f"evaluation and pictures {float(seconds.get('evaluate', 0)):.0f} s, total "
        f"{float(seconds.get('total', 0)) / 60:.1f} min on {int(record.get('threads', 0))} threads "
        f"({esc(str(record.get('cpu') or platform.processor() or platform.machine()))}, "
        f"{esc(str(record.get('precision', '')))}). Recipe: {esc(str((record.get('recipe') or {}).get('title', '')))}."
        f" Run folder: <code>{esc(str(record.get('run_dir', '')))}</code>.</p>",
        "<h2>Metrics on the synthetic val split</h2>",
        _results_table(results),
    ]
    if results:
        parts.append("<h2>Per-class IoU</h2>")
        parts.append(_class_table_html(results))
    parts.append("<h2>Pictures</h2>")
    legend = ("<p>Each row: prediction overlay; input | ground truth | prediction overlay; for MscaleOCR the learned "
              "attention of each scale, the share each scale has in the fused prediction (in the RGB picture: red the "
              "smallest scale, green the middle one, blue the largest) and each scale's own prediction. Attention and "
              "shares use the viridis colour map: dark blue 0, green 0.5, yellow 1.</p>")  # fmt: skip
    parts.append(legend)
    for picture in pictures:
        parts.append(f'<div class="row"><h3>{esc(str(picture.get("name", "")))}</h3>')
        recipe = f" ({picture['recipe']})" if picture.get("recipe") else ""
        parts.append(_figure(picture.get("compare"), f"input | ground truth | prediction{recipe}", width=1200))
        parts.append("<br>")
        parts.append(_figure(picture.get("overlay"), "prediction overlay", width=400))
        if picture.get("shares_rgb"):
            scales = picture.get("shares_scales", [])
            named = ", ".join(f"{channel} {scale:g}x" for channel, scale in zip("RGB", scales))
            parts.append(_figure(picture["shares_rgb"], f"scale shares ({named})", width=400))
        for scale, path in picture.get("attention", {}).items():
            parts.append(_figure(path, f"attention of scale {scale}x", width=300))
        for scale, path in picture.get("weights", {}).items():
            parts.append(_figure(path, f"share of {scale}x in the fused prediction", width=300))
        for scale, path in picture.get("scale_predictions", {}).items():
            parts.append(_figure(path, f"prediction at {scale}x alone", width=300))
        parts.append("</div>")
    parts.append(f"<p>Numbers: <a href=\"demo_metrics.json\">demo_metrics.json</a>. Evaluate again with "
                 f"<code>attnseg eval {esc(str(record.get('run_dir', '')))}/config.yaml --weights "
                 f"{esc(str(record.get('run_dir', '')))}</code>.</p>")  # fmt: skip
    parts.append("</body></html>")
    path = out_dir / "index.html"
    atomic_write_text(path, "\n".join(parts) + "\n")
    return path


def _figure(path: Any, caption: str, width: int) -> str:
    if not path:
        return ""
    src = html.escape(str(path), quote=True)
    return (f'<figure><a href="{src}"><img src="{src}" width="{width}" alt="{html.escape(caption, quote=True)}"></a>'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")  # fmt: skip


def _results_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    if not results:
        return "<p>No evaluation results.</p>"
    best = max((r.get("mIoU") or 0.0) for r in results.values())
    rows = ["<table><tr><th>inference</th><th>mIoU</th><th>pixel acc</th><th>mean Dice</th><th>kappa</th>"
            "<th>seconds</th></tr>"]  # fmt: skip
    for key, result in results.items():
        miou = result.get("mIoU")
        css = ' class="best"' if miou is not None and miou == best else ""
        rows.append(f"<tr{css}><td>{html.escape(str(result.get('title', key)))}</td><td>{_num(miou)}</td>"
                    f"<td>{_num(result.get('Acc'))}</td><td>{_num(result.get('mDice'))}</td>"
                    f"<td>{_num(result.get('Kappa'))}</td>"
                    f"<td>{float(result.get('seconds', 0)):.1f}</td></tr>")  # fmt: skip
    rows.append("</table>")
    return "\n".join(rows)


def _class_table_html(results: Mapping[str, Mapping[str, Any]]) -> str:
    keys = list(results)
    classes = list((results[keys[0]].get("classes") or {}).keys())
    head = "".join(f"<th>{html.escape(str(results[k].get('title', k)))}</th>" for k in keys)
    rows = [f"<table><tr><th>class</th>{head}</tr>"]
    for name in classes:
        cells = "".join(f"<td>{_num(((results[k].get('classes') or {}).get(name) or {}).get('IoU'))}</td>"
                        for k in keys)  # fmt: skip
        rows.append(f"<tr><td>{html.escape(name)}</td>{cells}</tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _num(value: Any) -> str:
    return "-" if value is None else f"{float(value):.4f}"


__all__ = [
    "DeadlineTrainer",
    "DemoResult",
    "EvalRecipe",
    "affordable_iters",
    "comparison_table",
    "demo_recipes",
    "effective_scale_weights",
    "evaluation_reserve",
    "run_demo",
    "write_index_html",
]

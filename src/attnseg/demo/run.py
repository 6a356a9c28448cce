"""`run_demo`: data, recipe choice, training through the shared build path (`attnseg.config.training`),
the three evaluations and the page, within the time budget (see the `attnseg.demo` package docstring)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attnseg.config.schema import ExperimentConfig
from attnseg.demo.budget import (
    FALLBACK_RECIPES,
    DemoRecipe,
    RecipeTrial,
    choose_recipe,
    demo_recipes,
    evaluation_reserve,
    recipe_choice_line,
)
from attnseg.demo.deadline import DeadlineTrainer
from attnseg.demo.measure import measure_inference_pass, model_fuses_scales, recipe_measurer
from attnseg.demo.page import comparison_table, write_index_html
from attnseg.demo.pictures import PictureWriter
from attnseg.engine.thread_watch import ThreadWatch
from attnseg.errors import ConfigError
from attnseg.fileio import atomic_write_text

DEFAULT_MODEL = "mscale_ocr_hrnet_w18_small_v1"
DEMO_CONFIGS = {"mscale": "demo_mscale.yaml", "psanet": "demo_psanet.yaml"}


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
        path = Path(__file__).resolve().parents[3] / "configs" / DEMO_CONFIGS[family]
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
    from attnseg.hardware import apply_thread_plan

    start = time.perf_counter()
    deadline = start + max(minutes, 0.0) * 60.0
    thread_plan = apply_thread_plan(threads or torch.get_num_threads(), log=lambda line: log(f"[demo] {line}"))
    out_dir = Path(out_dir)
    data_root, run_dir = (out_dir / "data").resolve(), out_dir / "run"
    config_path = find_demo_config(model_name or DEFAULT_MODEL, config)
    overrides = _demo_overrides(model_name, overrides, data_root, run_dir)
    experiment = _fresh_run_experiment(config_path, overrides, run_dir)
    log(f"[demo] {experiment.model.name} on synthetic street scenes, budget {minutes:g} min, "
        f"threads {torch.get_num_threads()}, output {out_dir}")  # fmt: skip
    timings = {"data": _make_data(data_root, num_train, num_val, image_size, data_seed, threads, progress, log)}

    t0 = time.perf_counter()
    family = "psanet" if experiment.model.name.startswith("psanet") else "mscale"
    saved, experiment, trial = _pick_recipe(config_path, overrides, family, config is None, deadline, image_size,
                                            num_val, channels_last, log)  # fmt: skip
    timings["plan"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    model, single_metrics, summary = _train(experiment, run_dir, deadline, num_val, image_size,
                                            channels_last and experiment.train.channels_last, progress, log, saved,
                                            threads=threads)  # fmt: skip
    timings["train"] = time.perf_counter() - t0
    log(f"[demo] trained {summary['iteration']} iterations in {timings['train']:.0f} s"
        + (f" (stopped early for the {minutes:g}-minute budget; {summary['planned_iters']} planned)"
           if summary["stopped_by_deadline"] else ""))  # fmt: skip

    t0 = time.perf_counter()
    results, pictures = _evaluate_all(experiment, model, single_metrics, out_dir, num_pictures, progress, log)
    timings["evaluate"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - start

    record = {
        "model": experiment.model.name, "iterations": summary["iteration"],
        "planned_iterations": summary["planned_iters"], "stopped_by_deadline": summary["stopped_by_deadline"],
        "minutes_budget": minutes, "seconds": {key: round(value, 2) for key, value in timings.items()},
        **_machine_record(thread_plan.reason, experiment.train.precision, trial, summary["thread_changes"]),
        "run_dir": str(run_dir), "data_root": str(data_root), "results": results,
    }  # fmt: skip
    metrics_path, index = _write_outputs(out_dir, record, pictures, run_dir, log)
    return DemoResult(out_dir, run_dir, index, metrics_path, results, timings, summary["iteration"])


def _demo_overrides(model_name: str | None, overrides: Sequence[str], data_root: Path, run_dir: Path) -> list[str]:
    """The user's overrides with the model choice first and the demo's folders last."""
    chosen = [f"model.name={model_name}"] if model_name else []
    return [*chosen, *overrides, f"data.root={data_root}", f"train.out_dir={run_dir}"]


def _fresh_run_experiment(config_path: Path, overrides: Sequence[str], run_dir: Path) -> ExperimentConfig:
    """The demo config with `overrides`, refused when `run_dir` already holds a training run."""
    from attnseg.config import load_config

    experiment = load_config(config_path, overrides)
    if (run_dir / "checkpoints" / "training_state.pt").is_file():
        raise ConfigError(f"{run_dir} already holds a training run; choose another --out or delete it")
    return experiment


def _make_data(data_root: Path, num_train: int, num_val: int, image_size: tuple[int, int], seed: int,
               threads: int | None, progress: bool, log: Callable[[str], None]) -> float:  # fmt: skip
    """The synthetic scenes under `data_root` (reused when the same ones are there); says which, returns seconds."""
    t0 = time.perf_counter()
    height, width = image_size
    generated = ensure_dataset(data_root, num_train, num_val, height, width, seed,
                               workers=max(1, threads or os.cpu_count() or 1), progress=progress)  # fmt: skip
    log(f"[demo] data: {num_train} train + {num_val} val scenes of {height}x{width} "
        f"{'written' if generated else 'reused'} in {time.perf_counter() - t0:.1f} s ({data_root})")  # fmt: skip
    return time.perf_counter() - t0


def _write_outputs(out_dir: Path, record: Mapping[str, Any], pictures: Sequence[Mapping[str, Any]], run_dir: Path,
                   log: Callable[[str], None]) -> tuple[Path, Path]:  # fmt: skip
    """Writes ``demo_metrics.json`` and ``index.html``, prints the comparison table and where to look."""
    metrics_path = out_dir / "demo_metrics.json"
    atomic_write_text(metrics_path, json.dumps(record, indent=2) + "\n")
    index = write_index_html(out_dir, record, pictures)
    log(comparison_table(record["results"]))
    seconds = record["seconds"]
    log(f"[demo] done in {seconds['total'] / 60:.1f} min (data {seconds['data']:.0f} s, "
        f"train {seconds['train']:.0f} s, evaluation + pictures {seconds['evaluate']:.0f} s); evaluate again: "
        f"attnseg eval {run_dir}/config.yaml --weights {run_dir}")  # fmt: skip
    log(f"[demo] open {index.resolve().as_uri()}")
    return metrics_path, index


def _machine_record(threads_plan: str, precision: str, trial: RecipeTrial,
                    thread_changes: Sequence[str] = ()) -> dict[str, Any]:  # fmt: skip
    """What `demo_metrics.json` says about the machine and the choices made for it (`thread_changes`: the lines of
    the re-plans made while training)."""
    return {"threads": torch.get_num_threads(), "threads_plan": threads_plan, "thread_changes": list(thread_changes),
            "load_average": _load_average(),
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

    measurer = recipe_measurer(image_size, num_val, channels_last)
    chosen, trials = choose_recipe(candidates, lambda recipe: measurer(experiment_of(recipe)),
                                   lambda: deadline - time.perf_counter())  # fmt: skip
    log(recipe_choice_line(chosen, trials, loaded[chosen.recipe.key][1].train.precision, torch.get_num_threads(),
                           _cpu_description()))  # fmt: skip
    raw, resolved = loaded[chosen.recipe.key]
    return raw, resolved, chosen


def _load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _train(experiment: ExperimentConfig, run_dir: Path, deadline: float, num_val: int, image_size: tuple[int, int],
           channels_last: bool, progress: bool, log: Callable[[str], None],
           saved: ExperimentConfig | None = None, threads: int | None = None,
           ) -> tuple[nn.Module, Any, dict[str, Any]]:  # fmt: skip
    """Single-process training through `attnseg train`'s build path, with a deadline; returns (model, single-scale
    metrics, summary). The trainer's final evaluation is the single-scale one, which also selects the "best" weights.
    `saved` is the config written to the run folder (default `experiment`; the demo keeps precision "auto").
    `threads`: the most threads training re-plans to as other processes come and go (`attnseg.engine.thread_watch`;
    None: torch's default count)."""
    from attnseg.config import save_config
    from attnseg.config.training import build_training

    eval_cfg = experiment.eval
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(saved if saved is not None else experiment, run_dir / "config.yaml")
    evaluate, captured = _single_scale_evaluator(experiment, progress)
    reserve = _ReserveTracker(image_size, num_val, eval_cfg.precision)
    watch = ThreadWatch.when_useful(torch.device("cpu"), wanted=threads, log=lambda line: log(f"[demo] {line}"))
    setup = build_training(
        experiment, run_dir, evaluate_fn=evaluate, progress=progress, channels_last=channels_last,
        trainer_class=DeadlineTrainer, checkpoint_extra={"demo": True},
        trainer_options=dict(eval_interval=0, save_interval=0, tensorboard=False, deadline=deadline,
                             reserve=reserve, replan_every=10, thread_watch=watch),
    )  # fmt: skip
    trainer = setup.trainer
    first = reserve.start(setup.model, eval_cfg.scales, eval_cfg.flip)
    log(f"[demo] one {image_size[0]}x{image_size[1]} inference pass: {reserve.passes[0] * 1000:.0f} ms; keeping "
        f"{first:.0f} s for evaluation and pictures; training may run "
        f"{max(deadline - first - time.perf_counter(), 0):.0f} s")  # fmt: skip
    result = trainer.train()
    summary = {**result, "planned_iters": trainer.planned_iters, "stopped_by_deadline": trainer.stopped_by_deadline,
               "thread_changes": [line for _, line in watch.changes] if watch is not None else []}
    single_result = (captured["metrics"], captured["seconds"]) if "metrics" in captured else None
    return setup.evaluated_model, single_result, summary


class _ReserveTracker:
    """The deadline trainer's ``reserve``: seconds the evaluations and pictures need, from inference passes measured
    at the start and, on a machine whose load changes, again while training runs."""

    def __init__(self, image_size: tuple[int, int], num_val: int, precision: str):
        self.image_size, self.num_val, self.precision = image_size, num_val, precision
        self.passes: list[float] = []
        self.replans = 0
        self.model: nn.Module | None = None
        self.recipes: tuple[Any, ...] = ()

    def start(self, model: nn.Module, scales: Sequence[float], flip: bool) -> float:
        """Measures the first pass of `model` (as trained: channels-last already applied); returns the reserve."""
        self.model = model
        self.recipes = demo_recipes(model_fuses_scales(model), scales, flip)
        self.passes = [measure_inference_pass(model, *self.image_size, precision=self.precision)]
        return evaluation_reserve(self.passes[0], self.num_val, self.recipes)

    def __call__(self) -> float:
        # Two passes (~1/3 of a training step) every fifth re-plan track the machine's load at a cost of 0.5% of the
        # training time; the median of the last three measurements keeps one unlucky pass on a busy machine from
        # ending training.
        self.replans += 1
        if self.replans % 5 == 0:
            self.passes.append(measure_inference_pass(self.model, *self.image_size, self.precision, warmup=1,
                                                      repeats=1))  # fmt: skip
        return evaluation_reserve(float(np.median(self.passes[-3:])), self.num_val, self.recipes)


def _single_scale_evaluator(
    experiment: ExperimentConfig, progress: bool
) -> tuple[Callable[[nn.Module], Any], dict[str, Any]]:
    """The trainer's evaluation (single scale on the val split) and the dict where it leaves its last metrics and
    seconds, so the demo's table reuses them instead of evaluating the same recipe again."""
    from attnseg.config.build import build_eval_loader
    from attnseg.inference.evaluate import evaluate_model

    data_cfg, eval_cfg, num_classes = experiment.data, experiment.eval, experiment.model.num_classes
    single = demo_recipes(False)[0]
    captured: dict[str, Any] = {}

    def evaluate(module: nn.Module):
        loader = build_eval_loader(data_cfg, eval_cfg.split, batch_size=1, num_workers=eval_cfg.num_workers,
                                   num_classes=num_classes)  # fmt: skip
        t0 = time.perf_counter()
        metrics = evaluate_model(module, loader, num_classes, scales=single.scales,
                                 multi_scale=single.multi_scale, flip=single.flip, precision=eval_cfg.precision,
                                 progress=progress, ignore_index=data_cfg.ignore_index)  # fmt: skip
        captured["metrics"], captured["seconds"] = metrics, time.perf_counter() - t0
        return metrics

    return evaluate, captured


def _evaluate_all(experiment: ExperimentConfig, model: nn.Module, single_metrics: Any, out_dir: Path,
                  num_pictures: int, progress: bool, log: Callable[[str], None]):  # fmt: skip
    """Runs the multi-scale recipes (the single-scale one ran at the end of training) and writes the pictures."""
    from attnseg.config.build import build_eval_loader
    from attnseg.data.labels import fallback_class_table
    from attnseg.inference.evaluate import evaluate_model
    from attnseg.metrics import format_eval_log, metrics_to_json

    data_cfg, eval_cfg, model_cfg = experiment.data, experiment.eval, experiment.model
    class_names, palette = fallback_class_table(model_cfg.num_classes)
    hierarchical = model_fuses_scales(model)
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
            loader = build_eval_loader(data_cfg, eval_cfg.split, batch_size=1, num_workers=eval_cfg.num_workers,
                                       num_classes=model_cfg.num_classes)  # fmt: skip
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

"""Evaluation throughput: the whole `attnseg eval` loop against the model alone (target: <= 10 % outside the model).

Writes `--images` synthetic street scenes of HxW with their label PNGs as a folder dataset, exports the model to
OpenVINO at the fastest float precision of the CPU (``--precision auto``: bf16 with AMX or AVX-512 bf16, else fp32;
``--backend torch`` runs eager PyTorch instead) and times, on
the same images, one after the other:

- ``model alone``: the backend's forward on batches decoded and normalised beforehand (what the eval loop calls);
- ``eval, before``: `evaluate_model` one step after the other with the labels and counts of the code before the
  pipelining (max over the channels of NCHW scores, confusion counts on long tensors);
- ``eval, --no-pipeline``: one step after the other, with today's labels and counts;
- ``eval, --pipeline``: batches read ahead in a thread, dumps written behind the model;
- ``eval, default``: what `attnseg eval` picks on this machine (`attnseg.inference.pipeline.choose_pipeline`: the
  pipeline with `--workers` loader workers where cores are left beside the model's `--threads`, else reading and
  counting in line without loader workers and the dumps written behind at idle priority);
- ``default, no dumps``: the same without ``--dump`` (data, labels and counts only).

Every eval row includes the loader (`--workers` processes decode and normalise, as ``eval.num_workers``), labels,
confusion counts and the dumps `attnseg eval --dump` writes (`--dump-kinds`). The share outside the model is
``(eval time - model time) / model time``. A per-stage table of the first image (decode, normalise, labels before and
after, counts before and after, dump) says where the rest goes.

    python -m attnseg.benchmark.eval --weights runs/demo --scales 0.5,1.0,2.0 [--images 4] [--out table.txt]
    python -m attnseg.benchmark.eval --model mscale_ocr_hrnet_w48 [--backend torch] [--threads 2] [--workers 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from attnseg.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, id_to_train_id
from attnseg.data.statistics import IMAGENET_MEAN, IMAGENET_STD
from attnseg.inference import dump
from attnseg.inference.eval_job import EvalOutputs
from attnseg.inference.pipeline import PipelineChoice, choose_pipeline
from attnseg.inference.evaluate import InferenceRecipe, evaluate_model, model_forward, scores_to_labels
from attnseg.inference.preprocess import normalize_image
from attnseg.metrics.confusion import ConfusionMatrix
from attnseg.models.outputs import logits_of

DEFAULT_DUMP_KINDS = ",".join(dump.DEFAULT_DUMP_KINDS)  # what `attnseg eval --dump` writes by default
TARGET_SHARE = 0.10


def write_dataset(root: Path, count: int, height: int, width: int) -> Path:
    """`count` synthetic scenes (RGB PNG + trainId label PNG) as the ``val`` split of a folder dataset at `root`."""
    from attnseg.data.synthetic import render_scene

    images, labels = root / "val" / "images", root / "val" / "labels"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for index in range(count):
        scene = render_scene(np.random.default_rng(index), height, width)
        cv2.imwrite(str(images / f"scene{index}.png"), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(labels / f"scene{index}.png"), id_to_train_id[scene.label_ids])
    return root


@dataclass
class Subject:
    """What is evaluated: the module `evaluate_model` runs, its recipe, and how the table names it."""

    module: torch.nn.Module
    recipe: InferenceRecipe
    description: str
    mean: tuple[float, ...] = tuple(IMAGENET_MEAN)
    std: tuple[float, ...] = tuple(IMAGENET_STD)


def _torch_model(args: argparse.Namespace, scene: np.ndarray) -> tuple[torch.nn.Module, Any, str]:
    """(model, checkpoint sidecar or None, name) of ``--weights``, or of ``--model`` with random weights calibrated
    on `scene` (`attnseg.benchmark.calibration`: else they predict one class everywhere, and the dumps, whose PNGs
    then compress to nothing, would cost less than a real model's)."""
    if args.weights:
        from attnseg.inference.predictor import resolve_weights
        from attnseg.weights import load_model

        model, sidecar = load_model(resolve_weights(args.weights))
        return model.eval(), sidecar, f"{sidecar.model} ({args.weights})"
    from attnseg.benchmark.calibration import calibrate_batchnorm
    from attnseg.models import create_model

    torch.manual_seed(0)
    model = create_model(args.model, num_classes=19)
    calibrate_batchnorm(model, scene)
    return model.eval(), None, f"{args.model} (random weights calibrated on the first scene)"


def load_subject(args: argparse.Namespace, folder: Path, scene: np.ndarray) -> Subject:
    """The model on the route asked for: exported to OpenVINO IR in `folder`, or eager torch."""
    model, sidecar, name = _torch_model(args, scene)
    scales = tuple(args.scales)
    mean, std = (tuple(sidecar.mean), tuple(sidecar.std)) if sidecar is not None else (IMAGENET_MEAN, IMAGENET_STD)
    if args.backend == "torch":
        recipe = InferenceRecipe(scales=scales)
        model_forward(model, recipe)  # refuses scales a model cannot fuse, before any timing
        return Subject(model, recipe, f"{name}, torch eager fp32, scales {list(scales)}", mean, std)
    from attnseg.export.openvino import export_openvino
    from attnseg.export.runtime import BackendModule, OpenVinoBackend

    path = folder / "model.xml"
    clock = time.perf_counter()
    export_openvino(model, path, (1, 3, args.height, args.width), scales=scales, sidecar=sidecar, verify=False)
    seconds = time.perf_counter() - clock
    precision = openvino_precision(args.precision)
    backend = OpenVinoBackend(path, precision, threads=args.threads)
    description = f"{name}, OpenVINO {precision} (scales {list(scales)} in the graph, export {seconds:.0f} s)"
    return Subject(BackendModule(backend), InferenceRecipe(), description, mean, std)


def openvino_precision(requested: str) -> str:
    """The OpenVINO hint to time: "auto" is the fastest float one of this CPU (bf16 where it runs natively)."""
    from attnseg.hardware import announce, resolve_openvino_precision

    choice = resolve_openvino_precision(requested)
    announce(choice)
    return choice.precision


def _long_tensor_counts(pred: np.ndarray, target: np.ndarray, k: int, ignore_index: int) -> np.ndarray:
    """The confusion counts as `ConfusionMatrix.update` computed them before its numpy path (the "before" rows)."""
    pred = torch.from_numpy(np.ascontiguousarray(pred)).reshape(-1).long()
    target = torch.from_numpy(np.ascontiguousarray(target)).reshape(-1).long()
    counted = (target >= 0) & (target < k) & (target != ignore_index)
    pred, target = pred[counted], target[counted]
    pred = torch.where((pred >= 0) & (pred < k), pred, k)
    return torch.bincount(target * (k + 1) + pred, minlength=k * (k + 1)).view(k, k + 1).numpy()


@contextlib.contextmanager
def code_before_pipelining() -> Iterator[None]:
    """Labels by max over NCHW channels and counts on long tensors, as before; restored on exit."""
    from attnseg.inference import evaluate
    from attnseg.metrics import confusion

    saved = evaluate.first_max_labels, confusion._counts_numpy
    evaluate.first_max_labels = lambda scores: None  # scores_to_labels falls back to max(dim=1)
    confusion._counts_numpy = _long_tensor_counts
    try:
        yield
    finally:
        evaluate.first_max_labels, confusion._counts_numpy = saved


@dataclass
class Measurement:
    """One timed run: wall seconds, the model's forward seconds within it, CPU seconds of this process and of its
    loader workers (children that exited), and the minor page faults of this process during the forwards (memory
    the forward touches for the first time: a cost that work between forwards can add to them)."""

    seconds: float
    forward: float
    cpu: float
    forward_faults: float = 0.0


def _cpu_seconds() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


@contextlib.contextmanager
def forward_clock(module: torch.nn.Module) -> Iterator[list[tuple[float, int]]]:
    """Yields a list that receives (seconds, minor page faults) of every forward of `module` while the block runs
    (module hooks)."""
    forwards: list[tuple[float, int]] = []
    started: list[tuple[float, int]] = []

    def finish(*_: Any) -> None:
        clock, faults = started.pop()
        forwards.append((time.perf_counter() - clock, _minor_faults() - faults))

    hooks = [module.register_forward_pre_hook(lambda *_: started.append((time.perf_counter(), _minor_faults()))),
             module.register_forward_hook(finish)]
    try:
        yield forwards
    finally:
        for hook in hooks:
            hook.remove()


def measure(module: torch.nn.Module, call: Callable[[], Any]) -> Measurement:
    """`Measurement` of ``call()``, with the forwards of `module` clocked."""
    with forward_clock(module) as forwards:
        clock, cpu = time.perf_counter(), _cpu_seconds()
        call()
        seconds, cpu = time.perf_counter() - clock, _cpu_seconds() - cpu
    return Measurement(seconds, sum(s for s, _ in forwards), cpu, sum(f for _, f in forwards))


def time_model_alone(subject: Subject, batches: list[dict[str, Any]]) -> Measurement:
    """The model's forwards over `batches` (decoded beforehand), as the eval loop calls it."""
    forward = model_forward(subject.module, subject.recipe)

    def run() -> None:
        with torch.inference_mode():
            for batch in batches:
                forward(batch["image"])

    return measure(subject.module, run)


def time_eval(subject: Subject, loader: Any, dump_dir: Path | None, kinds: list[str], *,
              pipeline: bool, idle_writer: bool = False) -> Measurement:  # fmt: skip
    """A whole `evaluate_model` run with the eval loader and dumps into `dump_dir` (None: none), what `attnseg eval`
    times; the forwards' own time shows how much the work beside them slows them down."""
    outputs = EvalOutputs(CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, subject.mean, subject.std, dump_dir=dump_dir,
                          dump_kinds=kinds)  # fmt: skip
    recipe = subject.recipe
    return measure(subject.module, lambda: evaluate_model(subject.module, loader, 19, scales=recipe.scales,
                                                          progress=False, on_prediction=outputs or None,
                                                          pipeline=pipeline, idle_writer=idle_writer))  # fmt: skip


def time_rows(subject: Subject, loader: Any, batches: list[dict[str, Any]], folder: Path, kinds: list[str],
              rounds: int, default: tuple[Any, PipelineChoice]) -> dict[str, list[Measurement]]:  # fmt: skip
    """Every row `rounds` times, in the order A B C D, then D C B A, ...: a load that drifts during the run then
    weighs on every row alike. `default` is the loader and the `PipelineChoice` `attnseg eval` makes here."""
    default_loader, choice = default
    chosen = {"pipeline": choice.pipeline, "idle_writer": choice.idle_writer}
    runs: dict[str, Callable[[], Measurement]] = {
        "model alone": lambda: time_model_alone(subject, batches),
        "eval, before": lambda: _before(lambda: time_eval(subject, loader, folder / "dump0", kinds, pipeline=False)),
        "eval, --no-pipeline": lambda: time_eval(subject, loader, folder / "dump1", kinds, pipeline=False),
        "eval, --pipeline": lambda: time_eval(subject, loader, folder / "dump2", kinds, pipeline=True),
        "eval, default": lambda: time_eval(subject, default_loader, folder / "dump4", kinds, **chosen),
        "default, no dumps": lambda: time_eval(subject, default_loader, None, kinds, **chosen),
    }
    rows: dict[str, list[Measurement]] = {name: [] for name in runs}
    for round_index in range(rounds):
        for name in runs if round_index % 2 == 0 else reversed(runs):
            rows[name].append(runs[name]())
    return rows


def _before(call: Callable[[], Measurement]) -> Measurement:
    with code_before_pipelining():
        return call()


def stage_seconds(subject: Subject, image_path: Path, label_path: Path, dump_dir: Path,
                  kinds: list[str]) -> dict[str, Any]:  # fmt: skip
    """Seconds of each step around the model for one image, in this thread (medians of 3 runs), and under
    ``"_summary"`` a line on the predicted labels."""
    times: dict[str, list[Any]] = {}

    def timed(stage: str, call: Callable[[], Any]) -> Any:
        clock = time.perf_counter()
        result = call()
        times.setdefault(stage, []).append(time.perf_counter() - clock)
        return result

    forward = model_forward(subject.module, subject.recipe)
    with torch.inference_mode():
        image = normalize_image(cv2.cvtColor(cv2.imread(str(image_path)), cv2.COLOR_BGR2RGB), subject.mean, subject.std)
        scores = logits_of(forward(image[None])).float()
        outputs = EvalOutputs(CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, subject.mean, subject.std, dump_dir=dump_dir,
                              dump_kinds=kinds)  # fmt: skip
        for _ in range(3):
            rgb = timed("decode image", lambda: cv2.cvtColor(cv2.imread(str(image_path)), cv2.COLOR_BGR2RGB))
            raw = timed("decode label", lambda: cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED))
            tensor = timed("normalise", lambda: normalize_image(rgb, subject.mean, subject.std)[None])
            label = torch.from_numpy(raw.astype(np.int64))[None]
            with code_before_pipelining():
                before = timed("labels, before (max over NCHW)", lambda: scores_to_labels(scores))
                timed("counts, before (long tensors)", lambda: ConfusionMatrix(19).update(before, label))
            labels = timed("labels (first_max_labels)", lambda: scores_to_labels(scores))
            timed("counts (numpy bins)", lambda: ConfusionMatrix(19).update(labels, label))
            batch = {"image": tensor, "label": label, "name": [image_path.stem], "image_path": [str(image_path)]}
            extras = {"batch": batch, "scores": scores, "are_probabilities": False, "output": None}
            timed("dump", lambda: outputs([image_path.stem], labels.numpy(), extras))
    counts = np.bincount(labels.numpy().reshape(-1), minlength=256)
    times["_summary"] = [f"first scene: {np.count_nonzero(counts)} classes predicted, the largest on "
                         f"{counts.max() / counts.sum():.0%} of the pixels"]  # fmt: skip
    return {stage: values[0] if stage == "_summary" else statistics.median(values) for stage, values in times.items()}


def _machine_line(threads: int, load_start: float) -> str:
    from attnseg.hardware import cpu_facts

    return (f"machine: {cpu_facts().describe()}, {os.cpu_count()} CPUs, {threads} threads; 1-min load average "
            f"{load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end")  # fmt: skip


def _mean(runs: list[Measurement]) -> Measurement:
    return Measurement(*(statistics.fmean(getattr(run, field.name) for run in runs) for field in fields(Measurement)))


def _row_line(name: str, mean: Measurement, model: Measurement, count: int) -> str:
    """One throughput row: per image, and the shares outside the model by wall and by CPU time."""
    if name == "model alone":
        wall = cpu = "-"
    else:
        wall = f"{(mean.seconds - model.seconds) / model.seconds:.1%}"
        cpu = f"{(mean.cpu - model.cpu) / model.cpu:.1%}"
    return (f"{name:<24} {mean.seconds / count:>8.3f} {count / mean.seconds:>9.3f} {mean.forward / count:>16.3f} "
            f"{wall:>18} {mean.cpu / count:>12.3f} {cpu:>13} {mean.forward_faults / count / 1000:>16.1f}")  # fmt: skip


def format_table(args: argparse.Namespace, subject: Subject, rows: dict[str, list[Measurement]],
                 stages: dict[str, Any], load_start: float, default_reason: str = "") -> str:  # fmt: skip
    """The printed (and `--out`) report: header, stage table, throughput table, verdict."""
    count = args.images
    lines = [f"eval throughput: {subject.description}", f"input: {count} synthetic scenes {args.height}x{args.width} "
             f"(folder dataset, loader workers {args.workers}), dumps {args.dump_kinds}; {stages['_summary']}",
             _machine_line(args.threads, load_start), "",
             f"{'stage (first image, this thread)':<36} {'median s':>9}"]  # fmt: skip
    lines += [f"{stage:<36} {seconds:>9.3f}" for stage, seconds in stages.items() if stage != "_summary"]
    means = {name: _mean(runs) for name, runs in rows.items()}
    model = means["model alone"]
    lines += ["", f"{'run':<24} {'s/image':>8} {'images/s':>9} {'forward s/image':>16} {'outside the model':>18} "
              f"{'CPU s/image':>12} {'outside, CPU':>13} {'forward faults/1k':>16}"]  # fmt: skip
    lines += [_row_line(name, mean, model, count) for name, mean in means.items()]
    share = (means["eval, default"].seconds - model.seconds) / model.seconds
    verdict = "MET" if share <= TARGET_SHARE else "NOT MET"
    lines += ["", f"rounds: {len(rows['model alone'])} (means); outside the model = (run - model alone) / model alone, "
              "by wall time and by CPU time (this process and its exited loader workers); forward faults: minor page "
              "faults during the forwards, thousands per image",
              f"eval, default: what `attnseg eval` does here ({default_reason})",
              f"target: data + labels + counts + dumps <= {TARGET_SHARE:.0%} of the model time: default "
              f"{share:.1%} -> {verdict}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None, help="native checkpoint or run folder (default: --model, random)")
    parser.add_argument("--model", default="mscale_ocr_hrnet_w48", help="registered model, random weights")
    parser.add_argument("--scales", default="1.0", type=lambda text: [float(s) for s in text.split(",")],
                        help="in-model scales (hierarchical fusion), e.g. 0.5,1.0,2.0")
    parser.add_argument("--backend", choices=("openvino", "torch"), default="openvino")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="OpenVINO precision hint; auto: bf16 where the CPU runs it natively, else fp32")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="eval loader workers (eval.num_workers)")
    parser.add_argument("--dump-kinds", default=DEFAULT_DUMP_KINDS)
    parser.add_argument("--rounds", type=int, default=1, help="times each row runs (order reversed every other "
                        "round); the table shows means")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from attnseg.config.build import build_eval_dataset, build_eval_loader
    from attnseg.config.schema import DataConfig
    from attnseg.fileio import atomic_write_text

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    kinds = [kind for kind in args.dump_kinds.split(",") if kind]
    with tempfile.TemporaryDirectory(prefix="attnseg-evalbench-") as tmp:
        folder = Path(tmp)
        root = write_dataset(folder / "data", args.images, args.height, args.width)
        first = cv2.cvtColor(cv2.imread(str(root / "val" / "images" / "scene0.png")), cv2.COLOR_BGR2RGB)
        subject = load_subject(args, folder, first)
        data_cfg = DataConfig(dataset="folder", root=str(root), mean=subject.mean, std=subject.std)
        dataset = build_eval_dataset(data_cfg, "val", 19)
        loader = build_eval_loader(data_cfg, "val", num_workers=args.workers, dataset=dataset)
        batches = list(build_eval_loader(data_cfg, "val", num_workers=0, dataset=dataset))
        time_model_alone(subject, batches[:1])  # warm-up: OpenVINO compiles for the input shape on first use
        choice = choose_pipeline(None, args.threads, args.workers)
        default_loader = loader if choice.workers == args.workers else build_eval_loader(
            data_cfg, "val", num_workers=choice.workers, dataset=dataset)
        rows = time_rows(subject, loader, batches, folder, kinds, args.rounds, (default_loader, choice))
        images = sorted((root / "val" / "images").glob("*.png"))
        stages = stage_seconds(subject, images[0], root / "val" / "labels" / images[0].name, folder / "dump3", kinds)
    table = format_table(args, subject, rows, stages, load_start, choice.reason)
    print(table, end="")
    if args.out is not None:
        atomic_write_text(args.out, table)


if __name__ == "__main__":
    main()

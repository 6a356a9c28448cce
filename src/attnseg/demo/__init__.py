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

Modules by job: `budget` (time plan, evaluation recipes, fallback training recipes), `measure` (step and pass
measurements), `deadline` (the deadline trainer), `run` (the orchestration, through the build path `attnseg train`
uses), `pictures` and `page` (the results page).
"""

from attnseg.demo.budget import (
    DATA_SECONDS_PER_IMAGE,
    FALLBACK_RECIPES,
    FIT_SHARE,
    SINGLE_SCALE,
    DemoRecipe,
    EvalRecipe,
    RecipeTrial,
    affordable_iters,
    choose_recipe,
    demo_recipes,
    evaluation_reserve,
    recipe_choice_line,
)
from attnseg.demo.deadline import DeadlineTrainer
from attnseg.demo.measure import measure_inference_pass, measure_train_step
from attnseg.demo.page import comparison_table, write_index_html
from attnseg.demo.pictures import PictureWriter, effective_scale_weights
from attnseg.demo.run import DEFAULT_MODEL, DEMO_CONFIGS, DemoResult, ensure_dataset, find_demo_config, run_demo

__all__ = [
    "DATA_SECONDS_PER_IMAGE",
    "DEFAULT_MODEL",
    "DEMO_CONFIGS",
    "FALLBACK_RECIPES",
    "FIT_SHARE",
    "SINGLE_SCALE",
    "DeadlineTrainer",
    "DemoRecipe",
    "DemoResult",
    "EvalRecipe",
    "PictureWriter",
    "RecipeTrial",
    "affordable_iters",
    "choose_recipe",
    "comparison_table",
    "demo_recipes",
    "effective_scale_weights",
    "ensure_dataset",
    "evaluation_reserve",
    "find_demo_config",
    "measure_inference_pass",
    "measure_train_step",
    "recipe_choice_line",
    "run_demo",
    "write_index_html",
]

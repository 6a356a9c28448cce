"""The demo's time plan: the three evaluations and what they cost, the iterations that fit, and the cheaper training
recipes for CPUs too slow for the default one."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from attnseg.errors import ConfigError

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
    iterations (the fastest step among equals); with every trial made (candidates after the chosen one are not
    measured).

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

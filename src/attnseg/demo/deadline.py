"""`DeadlineTrainer`: the `Trainer` that ends training in time for what follows it."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from attnseg.demo.budget import affordable_iters
from attnseg.engine.trainer import Trainer


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

"""Learning-rate schedules as pure functions of the update number (docs/method.md §3.8, §4.5).

``step`` is fairseq's ``num_updates``: the number of optimizer updates already done. fairseq
calls ``lr_step_update(num_updates)`` before the first update (``num_updates = 0``) and after
each one, so update ``k`` (0-based) runs with ``lr(k)``. A ``LambdaLR`` stepped once after every
``optimizer.step()`` has the same convention (``last_epoch == k`` during update ``k``), which
``make_scheduler`` relies on.

- ``polynomial_decay``: fairseq ``fairseq/optim/lr_scheduler/polynomial_decay_schedule.py``
  (HuBERT base: peak 5e-4, 32k warm-up, 400k updates).
- ``tri_stage``: fairseq ``fairseq/optim/lr_scheduler/tri_stage_lr_scheduler.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch.optim.lr_scheduler import LambdaLR


def polynomial_decay(
    step: int,
    peak_lr: float,
    warmup_steps: int,
    total_steps: int,
    end_lr: float = 0.0,
    power: float = 1.0,
) -> float:
    """fairseq ``polynomial_decay``: linear warm-up from 0, polynomial decay to ``end_lr``.

    Matches ``PolynomialDecaySchedule.step_update``: warm-up includes ``step == warmup_steps``
    (so lr(0) = 0: fairseq's first update has lr 0), and ``end_lr`` from ``total_steps`` on.
    """
    _check_step(step)
    if warmup_steps > 0 and step <= warmup_steps:
        return step / float(warmup_steps) * peak_lr  # fairseq's order: warmup_factor * lr
    if step >= total_steps:
        return end_lr
    remaining = 1 - (step - warmup_steps) / (total_steps - warmup_steps)
    return (peak_lr - end_lr) * remaining**power + end_lr


def tri_stage_steps(total_steps: int, phase_ratio: tuple[float, float, float]) -> tuple[int, int, int]:
    """(warm-up, hold, decay) update counts: fairseq truncates ``int(max_update * ratio)``.

    So the three may sum to less than ``total_steps``; after them the lr stays final.
    """
    if not math.isclose(sum(phase_ratio), 1.0, abs_tol=1e-9):  # fairseq asserts sum == 1
        raise ValueError(f"phase ratios must add up to 1, got {phase_ratio}")
    warmup, hold, decay = (int(total_steps * ratio) for ratio in phase_ratio)
    return warmup, hold, decay


def tri_stage(
    step: int,
    peak_lr: float,
    total_steps: int,
    phase_ratio: tuple[float, float, float] = (0.03, 0.90, 0.07),
    init_lr_scale: float = 0.01,
    final_lr_scale: float = 0.01,
) -> float:
    """fairseq ``tri_stage``: linear warm-up, hold, exponential decay, then constant.

    Matches ``TriStageLRSchedule._decide_stage`` / ``step_update``: warm-up is
    ``init + (peak - init) / warmup * step`` for ``step < warmup`` (lr(0) = init, not 0); hold for
    ``step < warmup + hold``; decay ``peak * exp(-decay_factor * t)`` with ``t = step - warmup -
    hold`` for ``t <= decay`` (inclusive: lr = final at its last step); final lr afterwards.
    """
    _check_step(step)
    warmup, hold, decay = tri_stage_steps(total_steps, phase_ratio)
    init_lr, final_lr = init_lr_scale * peak_lr, final_lr_scale * peak_lr
    if step < warmup:
        return init_lr + (peak_lr - init_lr) / warmup * step
    if step < warmup + hold:
        return peak_lr
    in_decay = step - warmup - hold
    if in_decay <= decay:
        if decay == 0:  # fairseq divides by zero here; the only decay step is its start
            return peak_lr
        decay_factor = -math.log(final_lr_scale) / decay
        return peak_lr * math.exp(-decay_factor * in_decay)
    return final_lr


@dataclass(frozen=True)
class ScheduleConfig:
    """Which schedule and its parameters. Defaults are HuBERT base (docs/method.md §3.8)."""

    kind: Literal["polynomial", "tri_stage"] = "polynomial"
    peak_lr: float = 5e-4
    warmup_steps: int = 32_000  # polynomial only (tri_stage derives its phases from phase_ratio)
    total_steps: int = 400_000
    end_lr: float = 0.0  # polynomial
    power: float = 1.0  # polynomial
    phase_ratio: tuple[float, float, float] = (0.03, 0.90, 0.07)  # tri_stage
    init_lr_scale: float = 0.01  # tri_stage
    final_lr_scale: float = 0.01  # tri_stage

    def __post_init__(self) -> None:
        if self.kind not in ("polynomial", "tri_stage"):
            raise ValueError(f"unknown schedule kind {self.kind!r}")
        if not self.peak_lr > 0:
            # the LambdaLR multiplier divides by it
            raise ValueError(f"peak_lr must be > 0, got {self.peak_lr}")
        if self.total_steps <= 0:
            raise ValueError(f"total_steps must be > 0, got {self.total_steps}")
        if self.kind == "polynomial" and not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(f"need 0 <= warmup_steps <= total_steps, got {self.warmup_steps}")
        if self.kind == "tri_stage":
            tri_stage_steps(self.total_steps, self.phase_ratio)  # validates the ratios
            if not 0 < self.final_lr_scale <= 1:
                raise ValueError(f"final_lr_scale must be in (0, 1], got {self.final_lr_scale}")


def learning_rate(config: ScheduleConfig, step: int) -> float:
    """Absolute learning rate for update ``step`` (updates already done)."""
    if config.kind == "polynomial":
        return polynomial_decay(
            step, config.peak_lr, config.warmup_steps, config.total_steps, config.end_lr, config.power
        )
    return tri_stage(
        step,
        config.peak_lr,
        config.total_steps,
        config.phase_ratio,
        config.init_lr_scale,
        config.final_lr_scale,
    )


def make_scheduler(optimizer: torch.optim.Optimizer, config: ScheduleConfig) -> LambdaLR:
    """A ``LambdaLR`` giving ``learning_rate(config, step)``; call ``step()`` after each update.

    Each group's (initial) lr must be ``config.peak_lr`` times its ``lr_scale`` (default 1): the
    lambda is a multiplier of it.
    The lambda is a plain function, so ``state_dict()`` holds only numbers (LambdaLR stores
    ``None`` for functions): it loads with ``torch.load(weights_only=True)``, and a scheduler
    rebuilt from the same config resumes exactly.
    """
    for group in optimizer.param_groups:
        base = group.get("initial_lr", group["lr"])  # LambdaLR's base_lr (initial_lr when resuming)
        expected = config.peak_lr * group.get("lr_scale", 1.0)
        if not math.isclose(float(base), expected, rel_tol=1e-12):
            raise ValueError(f"optimizer lr {base} != peak_lr {config.peak_lr} x lr_scale {group.get('lr_scale', 1.0)}")

    def multiplier(step: int) -> float:
        return learning_rate(config, step) / config.peak_lr

    return LambdaLR(optimizer, multiplier)


def _check_step(step: int) -> None:
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")

"""Pre-training recipes as run configs (model + data + trainer) and the task objects the loop
drives. Presets: `base` = the paper's settings, `tiny` = a CPU-sized run for tests and demos."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from musicssl.data.pretrain import Batch, DataConfig
from musicssl.models.backbone import Backbone
from musicssl.models.musichubert import MusicHubert, MusicHubertConfig, musichubert_config
from musicssl.train.schedules import ScheduleConfig
from musicssl.train.trainer import TrainerConfig


@dataclass(frozen=True)
class MusicHubertRun:
    model: MusicHubertConfig = field(default_factory=MusicHubertConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def musichubert_run(preset: str, num_classes: int, label_rate_hz: float) -> MusicHubertRun:
    """`base`: 95M model, 5 s crops, 720 s of audio per update (HuBERT's 87.5 s per GPU on the
    paper's 8 GPUs, rounded to whole 5 s crops [inf]), 250k steps, peak lr 5e-4, 32k warm-up.
    `tiny`: the same recipe on a ~1M-parameter model, 40 s per update, 300 steps."""
    model = musichubert_config(preset, num_classes, label_rate_hz)
    if preset == "base":
        return MusicHubertRun(model, DataConfig(crop_seconds=5.0, batch_seconds=720.0, micro_batch_seconds=90.0),
                              TrainerConfig())
    if preset == "tiny":
        schedule = ScheduleConfig(kind="polynomial", peak_lr=2e-3, warmup_steps=30, total_steps=300)
        trainer = TrainerConfig(max_steps=300, schedule=schedule, checkpoint_every=100, log_every=10)
        return MusicHubertRun(model, DataConfig(crop_seconds=5.0, batch_seconds=40.0, micro_batch_seconds=20.0),
                              trainer)
    raise KeyError(f"unknown preset {preset!r}; known: base, tiny")


def resolve_run(run, overrides: list[str]):
    """Apply `--set key=value` overrides; the schedule follows trainer.max_steps unless its own
    length is set explicitly (warm-up capped at the run length)."""
    from musicssl.config import apply_overrides

    run = apply_overrides(run, overrides)
    if not any(o.startswith("trainer.schedule.total_steps") for o in overrides):
        schedule = run.trainer.schedule
        schedule = dataclasses.replace(schedule, total_steps=run.trainer.max_steps,
                                       warmup_steps=min(schedule.warmup_steps, run.trainer.max_steps))
        run = dataclasses.replace(run, trainer=dataclasses.replace(run.trainer, schedule=schedule))
    return run


class MusicHubertTask:
    """Adapts MusicHubert to the loop: masks are drawn from a generator keyed by (seed, update,
    first item), so they do not depend on the process that draws them."""

    def __init__(self, config: MusicHubertConfig, sample_rate: int, seed: int):
        self.model = MusicHubert(config)
        self.sample_rate, self.seed = sample_rate, seed

    def backbone(self) -> Backbone:
        return self.model.backbone

    def step(self, model: nn.Module, batch: Batch, update: int) -> dict[str, Tensor]:
        generator = np.random.default_rng([self.seed, update, int(batch.indices[0])])
        return model(batch.wav, batch.lengths, batch.labels, generator=generator)

    def after_update(self, update: int) -> dict[str, float]:
        return {}

    def head_state(self) -> dict[str, Tensor]:
        return self.model.head_state_dict()

    def load_head_state(self, state: dict[str, Tensor]) -> None:
        missing = set(self.model.head_state_dict()) - set(state)
        if missing:
            raise ValueError(f"checkpoint heads lack {sorted(missing)}")
        self.model.load_state_dict(state, strict=False)

    def metrics(self, totals: dict[str, float]) -> dict[str, float]:
        size = max(totals.get("sample_size", 0.0), 1.0)
        masked, unmasked = max(totals.get("masked_count", 0.0), 1.0), max(totals.get("unmasked_count", 0.0), 1.0)
        return {
            "loss": totals.get("loss_value", 0.0) / size,
            "loss/masked_ce": totals.get("masked_loss_sum", 0.0) / masked,
            "loss/unmasked_ce": totals.get("unmasked_loss_sum", 0.0) / unmasked,
            "accuracy/masked": totals.get("masked_correct", 0.0) / masked,
            "accuracy/unmasked": totals.get("unmasked_correct", 0.0) / unmasked,
            "chance/masked": 1.0 / self.model.config.num_classes,
            "feature_penalty": totals.get("feature_penalty", 0.0) / max(totals.get("micro_batches", 1.0), 1.0),
        }

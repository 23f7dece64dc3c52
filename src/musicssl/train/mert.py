"""MERT's pre-training recipes (`musicssl pretrain mert`) and its task on the trainer
(docs/method.md §10). Every value below is MERT's own, read in yizhilll/MERT (HEAD 391062e):
[95M] = mert_fairseq/config/pretrain/MERT_RVQ-VAE_CQT_95M.yaml, [330M] = MERT_RVQ-VAE_CQT_330M.yaml;
`[inf]` marks what we inferred (the global batch from fairseq's max_tokens and world size)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from musicssl.config import Registry
from musicssl.data.label_files import CODEBOOKS_JSON, LabelError, LabelSet
from musicssl.data.pretrain import Batch, DataConfig
from musicssl.interop.mert import ARCHITECTURE_FIELDS, architecture_conflicts, export_mert
from musicssl.models.backbone import Backbone
from musicssl.models.backbone_config import BackboneConfig, backbone_preset
from musicssl.models.mert import MERT, MERT_CODEBOOKS, MERTConfig, MixtureConfig, mert_config
from musicssl.train.schedules import ScheduleConfig
from musicssl.train.tasks import MusicHubertTask, _Task, _tiny_polynomial
from musicssl.train.trainer import TrainerConfig

LABEL_RATE_HZ, SAMPLE_RATE = 75.0, 24_000  # [95M] task.sample_rate 24000; EnCodec's 75 Hz codes


@dataclass(frozen=True)
class MERTRun:
    model: MERTConfig = field(default_factory=MERTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


MERTRecipe = Callable[[tuple[int, ...]], MERTRun]  # k per codebook
MERT_PRESETS: Registry[MERTRecipe] = Registry("mert preset")


@MERT_PRESETS.register("95m")
def _mert_95m(num_classes: tuple[int, ...]) -> MERTRun:
    """[95M]: 5 s crops (max_sample_size 120000 :31, min 72000 :32), Adam 5e-4 (:54) with betas
    (0.9, 0.98), eps 1e-6, weight decay 0.01 (:59-61), 32k warm-up of a polynomial decay (:65) over
    400k updates (:53), clip 10 (:55); final_dim 64 (:91), mask 0.8 x 5 (:72-73), mixture :78-81.
    Batch [inf]: max_tokens 2,000,000 samples per GPU (:41) is 16 crops, x 64 GPUs (:19) = 1,024."""
    schedule = ScheduleConfig(kind="polynomial", peak_lr=5e-4, warmup_steps=32_000, total_steps=400_000)
    trainer = TrainerConfig(max_steps=400_000, schedule=schedule, clip_norm=10.0, checkpoint_every=25_000)
    data = DataConfig(crop_seconds=5.0, min_seconds=3.0, batch_seconds=1024 * 5.0, micro_batch_seconds=16 * 5.0)
    return MERTRun(mert_config("95m", num_classes, final_dim=64), data, trainer)


@MERT_PRESETS.register("330m")
def _mert_330m(num_classes: tuple[int, ...]) -> MERTRun:
    """[330M]: 5.12 s crops (max_sample_size 122880 :35), lr 1.5e-3 (:59), clip 1.0 (:60),
    update_freq 8 (:61), warm-up 32k of 400k (:58, :71), final_dim 128 (:95), segments 0.5-1.5 s
    (:86), attention_relax 32 (:117), deepnorm false (:116); the backbone's pre-LN and zero dropouts
    are in backbone_config.MERT_330M. Batch [inf]: max_tokens 900,000 (:46) is 7 crops per GPU,
    x 64 GPUs x update_freq 8 = 3,584 crops per update."""
    schedule = ScheduleConfig(kind="polynomial", peak_lr=1.5e-3, warmup_steps=32_000, total_steps=400_000)
    trainer = TrainerConfig(max_steps=400_000, schedule=schedule, clip_norm=1.0, checkpoint_every=5_000)
    crop = 122_880 / SAMPLE_RATE
    data = DataConfig(crop_seconds=crop, min_seconds=3.0, batch_seconds=3584 * crop, micro_batch_seconds=7 * crop)
    model = mert_config("330m", num_classes, final_dim=128, attention_relax=32.0,
                        mixture=MixtureConfig(min_samples=12_000, max_samples=36_000))
    return MERTRun(model, data, trainer)


@MERT_PRESETS.register("tiny")
def _mert_tiny(num_classes: tuple[int, ...]) -> MERTRun:
    """The 95M recipe on the ~1M-parameter backbone with MusicHuBERT's tiny data and trainer
    (40 s per update, 300 steps, lr 5e-4 after 8 % warm-up, the full gradient into the CNN)."""
    return MERTRun(mert_config("tiny", num_classes, final_dim=64), *_tiny_polynomial())


def mert_run(preset: str, label_sets: Sequence[LabelSet]) -> MERTRun:
    """The preset for these label sets: MERT predicts 8 codebooks at 75 Hz on 24 kHz audio; other
    label sets are refused in one line naming the file. An unknown preset is a ConfigError first."""
    recipe = MERT_PRESETS[preset]
    for label_set in label_sets:
        grid = label_set.grid
        if grid.sample_rate != SAMPLE_RATE or abs(grid.rate_hz - LABEL_RATE_HZ) > 1e-9:
            raise LabelError(f"{label_set.directory / 'labels.json'}: labels at {grid.rate_hz:g} Hz on "
                             f"{grid.sample_rate} Hz audio; MERT predicts codes at {LABEL_RATE_HZ:g} Hz of "
                             f"{SAMPLE_RATE} Hz audio (`musicssl labels rvq` with `--codec encodec` or a Mel-RVQ "
                             "fitted with `rvq fit --preset mert75`)")
    if len(label_sets) != MERT_CODEBOOKS:
        listing = label_sets[0].directory.parent / CODEBOOKS_JSON if label_sets else None
        where = listing if listing is not None and listing.exists() else \
            "--labels " + " ".join(str(label_set.directory) for label_set in label_sets)
        raise LabelError(f"{where}: {len(label_sets)} label set(s); MERT predicts {MERT_CODEBOOKS} codebooks "
                         f"(one label directory each, or one directory from `musicssl labels rvq`)")
    return recipe(tuple(label_set.k for label_set in label_sets))


def preset_differences(preset: str, found: BackboneConfig) -> list[str]:
    """The architecture fields in which the `--preset`'s own backbone differs from an `--init`
    directory's (which wins): said once, so a 95m recipe on a 330M model is not a surprise."""
    own = backbone_preset(f"mert_{preset}")
    return [f"{name} {getattr(found, name)!r} (the preset's: {getattr(own, name)!r})" if name != "conv_layers"
            else "another CNN" for name in ARCHITECTURE_FIELDS if getattr(own, name) != getattr(found, name)]


def continue_from(found: BackboneConfig, source: Path, preset: MERTRun, run: MERTRun) -> MERTRun:
    """`--init DIR`: `run` (the preset with the command line's overrides) on the architecture `found`
    in the MERT-v1 directory DIR (`source`: its config.json); the recipe (schedule, masks, heads,
    dropouts, LayerDrop) stays the run's. An architecture value the command line set differently from
    DIR's, or a model off MERT's 24 kHz grid, is refused in one line naming `source`."""
    if found.sample_rate != SAMPLE_RATE or abs(found.frame_rate_hz - LABEL_RATE_HZ) > 1e-9:
        raise ValueError(f"{source}: sample_rate {found.sample_rate}, CNN hop {found.hop}: {found.frame_rate_hz:g} "
                         f"frames/s; MERT's recipe predicts {LABEL_RATE_HZ:g} Hz codes of {SAMPLE_RATE} Hz audio")
    conflicts = architecture_conflicts(preset.model.backbone, run.model.backbone, found)
    if conflicts:
        raise ValueError(f"{source}: the architecture comes from --init, but the command line sets "
                         f"{'; '.join(conflicts)}")
    backbone = dataclasses.replace(run.model.backbone, **{name: getattr(found, name) for name in ARCHITECTURE_FIELDS})
    return dataclasses.replace(run, model=dataclasses.replace(run.model, backbone=backbone))


class MERTTask(MusicHubertTask):
    """MusicHuBERT's task on MERT's model: the mixture of each micro-batch is drawn from its own
    generator keyed like the masks, (seed, update, first item), so it does not depend on the
    process or on the masks' draws; the log adds the CQT's MSE and the share of clips mixed."""

    def __init__(self, config: MERTConfig, sample_rate: int, seed: int):
        _Task.__init__(self, MERT(config), sample_rate, seed)  # MusicHubertTask's would build a MusicHubert

    def export(self, backbone: Backbone, directory: Path) -> Path:
        """Checkpoints and RUN/initial as MERT-v1 directories (interop/mert.py); MERT-330M's
        attention_relax rides along in config.json (-1: off, MERT's default)."""
        relax = self.model.config.attention_relax
        return export_mert(backbone, directory, relax if relax > 0 else -1.0)

    def mixture_generator(self, batch: Batch, update: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, update, int(batch.indices[0]), 2])

    def step(self, model: nn.Module, batch: Batch, update: int) -> dict[str, Tensor]:
        masks = self.mask_generator(batch, update)
        plan = self.model.mixture_plan(batch.wav.shape[0], batch.wav.shape[1], self.mixture_generator(batch, update))
        result = model(batch.wav, batch.lengths, batch.labels, generator=masks, mixture=plan)
        device = batch.wav.device
        result.update(mixed_clips=torch.tensor(float(sum(bool(s) for s in plan)), device=device),
                      clips=torch.tensor(float(len(plan)), device=device))
        return result

    def metrics(self, totals: dict[str, float]) -> dict[str, float]:
        values = super().metrics(totals)
        values["loss/cqt_mse"] = totals.get("cqt_se_sum", 0.0) / max(totals.get("cqt_frames", 0.0), 1.0)
        values["mixture/mixed_share"] = totals.get("mixed_clips", 0.0) / max(totals.get("clips", 0.0), 1.0)
        return values


"""Pre-training recipes as run configs (model + data + trainer) and the task objects the loop
drives. Presets: `base` = the paper's settings, `tiny` = a CPU-sized run for tests and demos."""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from musicssl.config import Registry
from musicssl.data.manifest import Manifest
from musicssl.data.pretrain import Batch, DataConfig, PretrainDataset
from musicssl.models.backbone import Backbone
from musicssl.models.backbone_config import replace_backbone_config
from musicssl.models.bestrq import BestRQ, BestRQConfig, LogMel, bestrq_config, code_statistics
from musicssl.models.music2vec import MUSIC2VEC_VARIANTS, Music2Vec, Music2VecConfig, music2vec_config
from musicssl.models.mel_rvq import MelRVQConfig
from musicssl.models.musicfm import MusicFMPretrain, MusicFMPretrainConfig, muq_pretrain_config, musicfm_pretrain_config
from musicssl.models.musichubert import MusicHubert, MusicHubertConfig, codebook_suffixes, musichubert_config
from musicssl.train.schedules import ScheduleConfig
from musicssl.train.trainer import TrainerConfig


@dataclass(frozen=True)
class MusicHubertRun:
    model: MusicHubertConfig = field(default_factory=MusicHubertConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


MusicHubertRecipe = Callable[[int | tuple[int, ...], float], MusicHubertRun]  # (k per codebook, label rate)
MUSICHUBERT_PRESETS: Registry[MusicHubertRecipe] = Registry("musichubert preset")


@MUSICHUBERT_PRESETS.register("base")
def _musichubert_base(num_classes: int | tuple[int, ...], label_rate_hz: float) -> MusicHubertRun:
    """95M model, 5 s crops, 720 s of audio per update (HuBERT's 87.5 s per GPU on the paper's
    8 GPUs, rounded to whole 5 s crops [inf]), 250k steps, peak lr 5e-4, 32k warm-up."""
    return MusicHubertRun(musichubert_config("base", num_classes, label_rate_hz),
                          DataConfig(crop_seconds=5.0, batch_seconds=720.0, micro_batch_seconds=90.0),
                          TrainerConfig())


def _tiny_polynomial() -> tuple[DataConfig, TrainerConfig]:
    """The CPU-sized data and trainer of MusicHuBERT's and BEST-RQ's `tiny` recipes: 40 s per
    update, 300 steps, HuBERT base's peak lr (5e-4) and warm-up share (8 %), linear decay.
    A longer run keeps the 8 % (resolve_run). With 30 updates of warm-up at lr 1e-3 (the recipe
    until 2026-12) an 8k-update run spiked to gradient norms of 10^3 and collapsed to the majority
    code on one seed/kernel in two; the stability table is in docs/learning_curve.md."""
    schedule = ScheduleConfig(kind="polynomial", peak_lr=5e-4, warmup_steps=24, total_steps=300)
    trainer = TrainerConfig(max_steps=300, schedule=schedule, checkpoint_every=100, log_every=10)
    return DataConfig(crop_seconds=5.0, batch_seconds=40.0, micro_batch_seconds=20.0), trainer


@MUSICHUBERT_PRESETS.register("tiny")
def _musichubert_tiny(num_classes: int | tuple[int, ...], label_rate_hz: float) -> MusicHubertRun:
    """The same recipe on a ~1M-parameter model, 40 s per update, 300 steps (lr and warm-up share as
    base), with one change: the full gradient into the CNN (feature_grad_mult 1.0 instead of 0.1:
    a short run cannot afford a 10x slower CNN; with it the masked accuracy at 1k updates rose from
    0.131 to 0.163, docs/learning_curve.md)."""
    model = replace_backbone_config(musichubert_config("tiny", num_classes, label_rate_hz), feature_grad_mult=1.0)
    return MusicHubertRun(model, *_tiny_polynomial())


def musichubert_run(preset: str, num_classes: int | tuple[int, ...], label_rate_hz: float) -> MusicHubertRun:
    """`base` (the paper's) or `tiny` (CPU tests, the demo), for label sets of k = `num_classes`
    at `label_rate_hz`; an unknown preset is a ConfigError naming the known ones."""
    return MUSICHUBERT_PRESETS[preset](num_classes, label_rate_hz)


@dataclass(frozen=True)
class Music2VecRun:
    model: Music2VecConfig = field(default_factory=Music2VecConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


MUSIC2VEC_PRESETS: Registry[Callable[[], Music2VecRun]] = Registry("music2vec preset")


@MUSIC2VEC_PRESETS.register("base")
def _music2vec_base() -> Music2VecRun:
    """data2vec 1.0 audio base recipe on music (docs/method.md §4.5): tri-stage schedule (3/90/7 %),
    peak 5e-4, no clipping, 400k steps, 5 s crops; 3840 s of audio per update (data2vec's
    3.8M samples x 16 GPUs, rounded to whole crops [inf])."""
    schedule = ScheduleConfig(kind="tri_stage", peak_lr=5e-4, total_steps=400_000)
    trainer = TrainerConfig(max_steps=400_000, schedule=schedule, clip_norm=0.0)
    return Music2VecRun(music2vec_config("base"),
                        DataConfig(crop_seconds=5.0, batch_seconds=3840.0, micro_batch_seconds=240.0), trainer)


@MUSIC2VEC_PRESETS.register("tiny")
def _music2vec_tiny() -> Music2VecRun:
    """The ~1M-parameter backbone, 40 s per update, 300 steps, peak lr 1e-3 after 8 % of warm-up
    and a linear decay, a zero-initialised prediction head and a frozen CNN."""
    # MusicHuBERT's tiny schedule, not data2vec's tri-stage (3 % up, 90 % at the peak, 7 % down):
    # held at its peak for 4k updates, the 7-task average of 2 seeds in 3 peaked at 1k updates and
    # sank below it by 4k (docs/learning_curve.md, "Music2Vec's tiny recipe across seeds").
    schedule = ScheduleConfig(kind="polynomial", peak_lr=1e-3, warmup_steps=24, total_steps=300)
    trainer = TrainerConfig(max_steps=300, schedule=schedule, clip_norm=0.0, checkpoint_every=100)
    # Two changes measured on the demo corpus (docs/demo.md):
    # - final_proj starts at zero: with fairseq's init the student first spent ~300 updates
    #   shrinking its noise predictions to the targets' mean (R2 ~ 0 throughout);
    # - the CNN is frozen at its random init (feature_grad_mult 0, as fairseq allows):
    #   instance-normed targets carry nothing constant over a crop, and a few hundred Adam
    #   updates then rewrote the 64-channel CNN into one that had lost timbre (NSynth
    #   instrument 17 vs 44 at random init). Training it at a tenth of the lr instead
    #   (trainer.cnn_lr_scale=0.1) was no better over 4 seeds, at twice the time per update.
    model = dataclasses.replace(replace_backbone_config(music2vec_config("tiny"), feature_grad_mult=0.0),
                                ema_anneal_end_step=300, collapse_check_after=100, zero_init_final_proj=True)
    return Music2VecRun(model, DataConfig(crop_seconds=5.0, batch_seconds=40.0, micro_batch_seconds=20.0), trainer)


def music2vec_run(preset: str, variant: str = "vanilla") -> tuple[Music2VecRun, list[str]]:
    """`base` (the paper's) or `tiny` (CPU tests, the demo), and the variant's overrides (the
    paper's ablations, applied like `--set`). Unknown names are ConfigErrors naming the known."""
    overrides = [f"{key}={value}" for key, value in MUSIC2VEC_VARIANTS[variant].items()]
    return MUSIC2VEC_PRESETS[preset](), overrides


@dataclass(frozen=True)
class BestRQRun:
    model: BestRQConfig = field(default_factory=BestRQConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


BESTRQ_PRESETS: Registry[Callable[[], BestRQRun]] = Registry("bestrq preset")


@BESTRQ_PRESETS.register("base")
def _bestrq_base() -> BestRQRun:
    """Our 95M backbone with MusicHuBERT's base schedule and batch (docs/method.md §7.4: MusicFM's
    optimiser settings are in neither its code nor the notes read here). HuBERT's backbone
    settings, the CNN's gradient scaled by 0.1 among them."""
    return BestRQRun(bestrq_config("base"),
                     DataConfig(crop_seconds=5.0, batch_seconds=720.0, micro_batch_seconds=90.0), TrainerConfig())


@BESTRQ_PRESETS.register("tiny")
def _bestrq_tiny() -> BestRQRun:
    """MusicHuBERT's tiny recipe (~1M parameters, 40 s per update, 300 steps, lr 5e-4 after 8 %
    of warm-up, the full gradient into the CNN) with BEST-RQ targets."""
    return BestRQRun(replace_backbone_config(bestrq_config("tiny"), feature_grad_mult=1.0), *_tiny_polynomial())


def bestrq_run(preset: str) -> BestRQRun:
    return BESTRQ_PRESETS[preset]()


@dataclass(frozen=True)
class MusicFMRun:
    model: MusicFMPretrainConfig = field(default_factory=MusicFMPretrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


MUSICFM_PRESETS: Registry[Callable[[], MusicFMRun]] = Registry("musicfm preset")


def _musicfm_paper_scale(preset: str) -> MusicFMRun:
    """MusicFM's model (its code); 30-s crops and 192 of them per update (MuQ's maintainers, MuQ#9:
    MusicFM's own batch and optimiser are in neither its code nor README); HuBERT base's schedule
    (docs/method.md §9.3 says which values are ours)."""
    return MusicFMRun(musicfm_pretrain_config(preset),
                      DataConfig(crop_seconds=30.0, batch_seconds=5760.0, micro_batch_seconds=240.0), TrainerConfig())


MUSICFM_PRESETS.register("large")(lambda: _musicfm_paper_scale("large"))
MUSICFM_PRESETS.register("base")(lambda: _musicfm_paper_scale("base"))


@MUSICFM_PRESETS.register("tiny")
def _musicfm_tiny() -> MusicFMRun:
    """A ~0.2M-parameter conformer on the `tiny` data and trainer of MusicHuBERT (5-s crops)."""
    return MusicFMRun(musicfm_pretrain_config("tiny"), *_tiny_polynomial())


def muq_run(preset: str, rvq: MelRVQConfig) -> MusicFMRun:
    """MuQ: a MusicFM preset's model, data and trainer, predicting the codes of a fitted Mel-RVQ
    (MuQ's batch of 192 x 30 s is the one MusicFM's presets already take, MuQ#9)."""
    run = MUSICFM_PRESETS[preset]()
    return dataclasses.replace(run, model=muq_pretrain_config(preset, rvq))


def measure_mel_statistics(dataset: PretrainDataset, config: BestRQConfig, seed: int) -> tuple[float, float]:
    """The dB-mel's global mean and std (MusicFM's *_stats.json) over every frame and band of
    `config.stats_crops` crops of rows drawn with `seed` (float64 sums; each crop read as training
    reads it, epoch 0). No readable crop is an error naming the audio folder."""
    manifest = dataset.manifest
    log_mel = LogMel(config.backbone.sample_rate, config.n_fft, config.mel_hop, config.n_mels)
    rows = np.random.default_rng([seed, 142]).permutation(len(dataset))[:config.stats_crops]
    count, sum_, sum_squares = 0, 0.0, 0.0
    for row in rows.tolist():
        item = dataset[(0, row)]
        if item is None or len(item["wav"]) <= config.n_fft // 2:
            continue
        with torch.no_grad():
            mel = log_mel(item["wav"][None]).double()  # (1, T, M)
        count, sum_, sum_squares = count + mel.numel(), sum_ + float(mel.sum()), sum_squares + float(mel.pow(2).sum())
    if count == 0:
        raise ValueError(f"{manifest.root}: none of {len(rows)} crops read for the mel statistics was readable")
    mean = sum_ / count
    # Silence has no spread: a floor keeps the targets finite (they collapse, and the run says so).
    return mean, max(math.sqrt(max(sum_squares / count - mean * mean, 0.0)), 1e-3)


def check_corpus_holds_a_crop(manifest: Manifest, crop_seconds: float, sample_rate: int) -> None:
    """BEST-RQ's statistics and targets need at least one whole crop of audio."""
    total = sum(count for _, count in manifest.items)
    if total < round(crop_seconds * sample_rate):
        raise ValueError(f"{manifest.root}: the manifest lists {total / sample_rate:.2f} s of audio, less than one "
                         f"{crop_seconds:g} s crop (data.crop_seconds)")


def resolve_run(run, overrides: list[str]):
    """Apply `--set key=value` overrides; the schedule follows trainer.max_steps unless its own
    length is set explicitly. The warm-up keeps the preset's share of the run unless it is set
    explicitly (then it is capped at the run length): a fixed warm-up in a 25x longer run was
    what made the tiny recipe collapse (docs/learning_curve.md)."""
    from musicssl.config import apply_overrides

    length, warmup_key = "trainer.schedule.total_steps", "trainer.schedule.warmup_steps"

    def given(key: str) -> bool:
        return any(o.split("=", 1)[0].strip() == key for o in overrides)

    if given(length) and given(warmup_key):
        return apply_overrides(run, overrides)
    preset = run.trainer.schedule
    if given(length):  # the config parses it (its error names the key); a warm-up of 0 fits any length
        run = apply_overrides(run, [*overrides, f"{warmup_key}=0"])
        steps = run.trainer.schedule.total_steps
    else:
        run = apply_overrides(run, overrides)
        steps = run.trainer.max_steps
    schedule = run.trainer.schedule
    warmup = schedule.warmup_steps if given(warmup_key) else \
        round(preset.warmup_steps * steps / max(preset.total_steps, 1))
    schedule = dataclasses.replace(schedule, total_steps=steps, warmup_steps=min(warmup, steps))
    return dataclasses.replace(run, trainer=dataclasses.replace(run.trainer, schedule=schedule))


class _Task:
    """What both recipes share: the backbone, head checkpointing, and mask generators keyed by
    (seed, update, first item), so masks do not depend on the process that draws them."""

    model: nn.Module

    def __init__(self, model: nn.Module, sample_rate: int, seed: int):
        self.model, self.sample_rate, self.seed = model, sample_rate, seed

    def backbone(self) -> Backbone:
        return self.model.backbone

    def mask_generator(self, batch: Batch, update: int) -> np.random.Generator:
        """Also seeds the backbone's LayerDrop generator from the same key (one call per micro-batch)."""
        key = [self.seed, update, int(batch.indices[0])]
        layerdrop_seed = int(np.random.default_rng([*key, 1]).integers(0, 2**62))
        self.backbone().encoder.layerdrop_generator = torch.Generator().manual_seed(layerdrop_seed)
        return np.random.default_rng(key)

    def stand_in_batch(self) -> Batch:
        """One second of silence without labels, for a rank whose every item of an update was
        unreadable: it forwards this with its loss times 0, so under DDP it still joins the
        gradient all-reduce (instead of leaving the other ranks waiting) with the same result keys."""
        return Batch(wav=torch.zeros(1, self.sample_rate), lengths=torch.tensor([self.sample_rate]), labels=None,
                     indices=torch.zeros(1, dtype=torch.long), skipped=0)

    def head_state(self) -> dict[str, Tensor]:
        return self.model.head_state_dict()

    def after_update(self, update: int, totals: dict[str, float]) -> dict[str, float]:
        return {}  # nothing to step between updates (Music2Vec's teacher does)

    def load_head_state(self, state: dict[str, Tensor]) -> None:
        missing = set(self.model.head_state_dict()) - set(state)
        if missing:
            raise ValueError(f"checkpoint heads lack {sorted(missing)[:4]}")
        self.model.load_state_dict(state, strict=False)


class MusicHubertTask(_Task):
    def __init__(self, config: MusicHubertConfig, sample_rate: int, seed: int):
        super().__init__(MusicHubert(config), sample_rate, seed)

    def step(self, model: nn.Module, batch: Batch, update: int) -> dict[str, Tensor]:
        return model(batch.wav, batch.lengths, batch.labels, generator=self.mask_generator(batch, update))

    def stand_in_batch(self) -> Batch:
        """As the base class, with every label -1 (none) for each codebook."""
        config = self.model.config
        labels = torch.full((1, math.ceil(config.label_rate_hz), len(config.codebooks)), -1, dtype=torch.long)
        return dataclasses.replace(super().stand_in_batch(), labels=labels)

    def metrics(self, totals: dict[str, float]) -> dict[str, float]:
        """Loss per masked frame, then per codebook (suffix "" for the first, "_1"... after) its
        cross-entropy and accuracy on masked and unmasked frames, and the uniform chance level."""
        size = max(totals.get("sample_size", 0.0), 1.0)
        masked, unmasked = max(totals.get("masked_count", 0.0), 1.0), max(totals.get("unmasked_count", 0.0), 1.0)
        values = {"loss": totals.get("loss_value", 0.0) / size}
        codebooks = self.model.config.codebooks
        for k, suffix in zip(codebooks, codebook_suffixes(len(codebooks))):
            values.update({
                f"loss/masked_ce{suffix}": totals.get(f"masked_ce_sum{suffix}", 0.0) / masked,
                f"loss/unmasked_ce{suffix}": totals.get(f"unmasked_ce_sum{suffix}", 0.0) / unmasked,
                f"accuracy/masked{suffix}": totals.get(f"masked_correct{suffix}", 0.0) / masked,
                f"accuracy/unmasked{suffix}": totals.get(f"unmasked_correct{suffix}", 0.0) / unmasked,
                f"chance/masked{suffix}": 1.0 / k,
            })
        values["feature_penalty"] = totals.get("feature_penalty", 0.0) / max(totals.get("micro_batches", 1.0), 1.0)
        return values


class Music2VecTask(_Task):
    """The teacher takes one EMA step per optimizer update, and the collapse guards read the
    step's target and prediction spread."""

    def __init__(self, config: Music2VecConfig, sample_rate: int, seed: int):
        super().__init__(Music2Vec(config), sample_rate, seed)

    def step(self, model: nn.Module, batch: Batch, update: int) -> dict[str, Tensor]:
        return model(batch.wav, batch.lengths, generator=self.mask_generator(batch, update))

    def after_update(self, update: int, totals: dict[str, float]) -> dict[str, float]:
        size = max(totals.get("sample_size", 0.0), 1.0)
        self.model.check_collapse(update, totals.get("target_std_sum", 0.0) / size,
                                  totals.get("prediction_std_sum", 0.0) / size)
        return {"ema/decay": self.model.ema_step(update)}

    def metrics(self, totals: dict[str, float]) -> dict[str, float]:
        size = max(totals.get("sample_size", 0.0), 1.0)
        return {"loss": totals.get("loss_value", 0.0) / size,
                "target_std": totals.get("target_std_sum", 0.0) / size,
                "prediction_std": totals.get("prediction_std_sum", 0.0) / size}


class BestRQTask(_Task):
    """Targets come from the frozen quantiser inside the model; the task counts them per codebook
    over each log window (rank 0's share under DDP) for usage and perplexity, and warns once when
    one code takes nearly all of them."""

    model_class: type[nn.Module] = BestRQ

    def __init__(self, config: BestRQConfig | MusicFMPretrainConfig, sample_rate: int, seed: int):
        super().__init__(self.model_class(config), sample_rate, seed)
        self.code_counts = torch.zeros(config.num_codebooks, config.codebook_size, dtype=torch.long)
        self.warned = False

    def step(self, model: nn.Module, batch: Batch, update: int) -> dict[str, Tensor]:
        result = model(batch.wav, batch.lengths, generator=self.mask_generator(batch, update))
        targets = result.pop("targets")  # (M, S)
        # counted where the targets are: no wait for the device until the log line reads them
        self.code_counts = self.code_counts.to(targets.device)
        for codebook in range(targets.shape[1]):
            self.code_counts[codebook].index_add_(0, targets[:, codebook], torch.ones_like(targets[:, codebook]))
        return result

    def load_head_state(self, state: dict[str, Tensor]) -> None:
        """The checkpoint's quantiser and mel statistics must be the ones this run's config makes
        (or, for MuQ, the fitted Mel-RVQ this run was given)."""
        own = self.model.state_dict()
        for name in (n for n in own if n.startswith("quantizer.") or n == "mel_statistics"):
            mine = own[name]
            if name not in state or state[name].shape != mine.shape or not torch.equal(state[name], mine):
                raise ValueError(f"checkpoint {name} differs from this run's targets (quantiser seed "
                                 f"{self.model.config.quantizer_seed}, mel statistics {self.model.config.mel_mean}, "
                                 f"{self.model.config.mel_std}, or the Mel-RVQ given); it was not written by this run")
        super().load_head_state(state)

    def metrics(self, totals: dict[str, float]) -> dict[str, float]:
        """Loss per masked frame; per codebook (suffix "" for the first, "_1"... after) masked
        cross-entropy and accuracy, chance 1/K, and its targets' usage, perplexity and top share."""
        config = self.model.config
        masked = max(totals.get("masked_count", 0.0), 1.0)
        values = {"loss": totals.get("loss_value", 0.0) / max(totals.get("sample_size", 0.0), 1.0)}
        for codebook, suffix in enumerate(codebook_suffixes(config.num_codebooks)):
            codes = code_statistics(self.code_counts[codebook].cpu())
            values.update({f"loss/masked_ce{suffix}": totals.get(f"masked_ce_sum{suffix}", 0.0) / masked,
                           f"accuracy/masked{suffix}": totals.get(f"masked_correct{suffix}", 0.0) / masked,
                           f"chance/masked{suffix}": 1.0 / config.codebook_size,
                           **{f"targets/{key}{suffix}": value for key, value in codes.items()}})
            if codes["top_share"] > config.degenerate_share and not self.warned:
                self.warned = True
                print(f"warning: BEST-RQ targets are degenerate: one code holds {codes['top_share']:.0%} of codebook "
                      f"{codebook}'s targets (silent or near-constant audio? check the corpus and "
                      f"model.mel_mean/mel_std)", file=sys.stderr)
        self.code_counts.zero_()
        return values


class MusicFMTask(BestRQTask):
    """BEST-RQ's task on MusicFM's model (the same targets, counts and checks)."""

    model_class = MusicFMPretrain

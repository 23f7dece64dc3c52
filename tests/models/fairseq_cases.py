"""The fixed cases of the fairseq parity (benchmarks/fairseq_parity.py) and of the test that pins
our side to fairseq's stored values (tests/models/test_fairseq_reference.py).

A case is everything both sides need: a model config, weights, a padded batch, a forced mask
and labels. Weights come from `case_weights`: every tensor is drawn from its own generator,
seeded by the case and the parameter's name, so a case does not depend on our init code or on
the order parameters are created in. This module runs OUR side only (no fairseq import); the
fairseq side (benchmarks/fairseq_side.py) receives the same tensors through files.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from dataclasses import dataclass

import torch
from torch import Tensor

from musicssl.models.backbone import frame_lengths
from musicssl.models.backbone_config import replace_backbone_config
from musicssl.models.masking import mask_spans
from musicssl.models.music2vec import Music2Vec, Music2VecConfig, ema_decay_at, music2vec_config
from musicssl.models.musichubert import MusicHubert, MusicHubertConfig, musichubert_config
from musicssl.train.schedules import ScheduleConfig, learning_rate

# Every dropout and LayerDrop off: the two sides run in training mode (so feature_grad_mult
# acts) and must be deterministic.
NO_DROPOUT = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, input_dropout=0.0, layerdrop=0.0)


@dataclass(frozen=True)
class HubertCase:
    name: str
    preset: str  # "tiny" | "base"
    codebooks: tuple[int, ...]
    label_rate_hz: float
    extra_classes: int = 4  # fairseq's dictionary specials
    unmasked_weight: float = 0.0
    lengths: tuple[int, ...] = (16_000, 13_200, 9_600)  # target samples; see hubert_lengths
    isolate_padding: bool = False  # True = our default, which fairseq does not reproduce on padding
    label_shortfall: int = 0  # labels this many short of ratio x frames: fairseq then trims frames
    seed: int = 0
    kept: str = ""  # why this case differs from fairseq on purpose ("" = it must not differ)

    def config(self) -> MusicHubertConfig:
        config = musichubert_config(self.preset, self.codebooks, self.label_rate_hz,
                                    extra_classes=self.extra_classes, unmasked_weight=self.unmasked_weight)
        return replace_backbone_config(config, isolate_padding=self.isolate_padding, **NO_DROPOUT)


@dataclass(frozen=True)
class Music2VecCase:
    name: str
    preset: str = "tiny"
    lengths: tuple[int, ...] = (19_200, 19_200, 19_200)  # fairseq crops to the shortest: no padding
    layer_norm_targets: bool = False
    instance_norm_targets: bool = False
    loss_beta: float = 0.0
    loss_scale: float | None = None
    ema_step: int = 1234  # the update whose EMA step is compared
    seed: int = 0
    kept: str = ""  # why this case differs from fairseq on purpose ("" = it must not differ)

    def config(self) -> Music2VecConfig:
        config = music2vec_config(self.preset, layer_norm_targets=self.layer_norm_targets,
                                  instance_norm_targets=self.instance_norm_targets, loss_beta=self.loss_beta,
                                  loss_scale=self.loss_scale)
        return replace_backbone_config(config, isolate_padding=False, **NO_DROPOUT)


HUBERT_CASES = {c.name: c for c in [
    HubertCase("hubert_tiny_100hz", "tiny", (100,), 100.0),
    HubertCase("hubert_tiny_50hz", "tiny", (100,), 50.0),
    HubertCase("hubert_tiny_two_sets", "tiny", (100, 30), 100.0),
    HubertCase("hubert_tiny_two_sets_50hz", "tiny", (100, 30), 50.0),
    HubertCase("hubert_tiny_unmasked_loss", "tiny", (100,), 100.0, unmasked_weight=0.5),
    HubertCase("hubert_tiny_no_specials", "tiny", (100,), 100.0, extra_classes=0),
    HubertCase("hubert_base_100hz", "base", (500,), 100.0, lengths=(24_000, 19_000)),
    HubertCase("hubert_base_two_sets_50hz", "base", (500, 100), 50.0, lengths=(24_000, 19_000)),
    # Kept on purpose (rows marked "kept", never failing):
    HubertCase("hubert_tiny_isolated_padding", "tiny", (100,), 100.0, isolate_padding=True,
               kept="our default isolate_padding: GroupNorm statistics over valid frames only"),
    HubertCase("hubert_tiny_short_labels", "tiny", (100,), 100.0, label_shortfall=1,
               kept="labels short of ratio x frames: fairseq drops the last CNN frame before the encoder, "
                    "we keep it in the encoder and out of the loss"),
]}
MUSIC2VEC_CASES = {c.name: c for c in [
    Music2VecCase("music2vec_tiny"),
    Music2VecCase("music2vec_tiny_final_layer_norm", layer_norm_targets=True, ema_step=40_000),
    Music2VecCase("music2vec_tiny_final_instance_norm", instance_norm_targets=True),
    Music2VecCase("music2vec_tiny_smooth_l1", loss_beta=0.25, loss_scale=1.0),
    Music2VecCase("music2vec_base", "base", lengths=(24_000, 24_000)),
    Music2VecCase("music2vec_tiny_padded", lengths=(19_200, 15_000, 11_000),
                  kept="padded batch: our instance norm leaves padded frames out of its statistics "
                       "(fairseq crops batches to the shortest item, so never pads)"),
]}


# ---------------------------------------------------------------------------------------------
# Weights and inputs


def _generator(*keys) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(":".join(map(str, keys)).encode()))


def _draw(name: str, shape: torch.Size, g: torch.Generator) -> Tensor:
    """A value at the scale fairseq's init gives that kind of tensor."""
    leaf = name.rsplit(".", 1)[-1]
    if name.endswith(("label_embeddings", "mask_embedding")):
        return torch.rand(shape, generator=g)  # fairseq: uniform [0, 1)
    if len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        gain = 2.0 if "feature_extractor" in name else 1.0  # the CNN's Kaiming init: var 2 / fan_in
        return torch.randn(shape, generator=g) * math.sqrt(gain / fan_in)
    if leaf == "weight":  # norms
        return 1.0 + 0.1 * torch.randn(shape, generator=g)
    return 0.1 * torch.randn(shape, generator=g)


def case_weights(model: torch.nn.Module, case_name: str, salt: str = "") -> dict[str, Tensor]:
    """One deterministic tensor per entry of `model.state_dict()`. The weight-normed pos conv gets
    g = ||v|| (its kernel is then v, as at fairseq's init)."""
    state = {}
    for name, tensor in model.state_dict().items():
        state[name] = _draw(name, tensor.shape, _generator(case_name, salt, name)).to(tensor.dtype)
    for name in [n for n in state if n.endswith("weight_g")]:
        state[name] = state[name[:-1] + "v"].norm(dim=(0, 1), keepdim=True)
    return state


def hubert_lengths(targets: tuple[int, ...], conv_layers) -> tuple[int, ...]:
    """Sample lengths near `targets` (the first is the padded size) whose valid frame count is the
    same by our conv arithmetic and by fairseq HuBERT's `forward_padding_mask`, which calls a
    frame padding when all of its N // T samples are padding, i.e. valid = ceil(length / (N // T))."""
    padded = targets[0]
    frames = int(frame_lengths(torch.tensor([padded]), conv_layers)[0])
    block = padded // frames
    out = []
    for target in targets:
        length = target
        while int(frame_lengths(torch.tensor([length]), conv_layers)[0]) != min(frames, -(-length // block)):
            length -= 1
        out.append(length)
    return tuple(out)


def case_audio(case_name: str, lengths: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """(B, N) waveform (sines plus noise, zero after each length) and (B,) lengths."""
    g = _generator(case_name, "audio")
    n = max(lengths)
    t = torch.arange(n) / 16_000.0
    freqs = 80.0 + 900.0 * torch.rand(len(lengths), 4, generator=g)  # (B, 4)
    wav = 0.2 * torch.sin(2 * math.pi * freqs[..., None] * t).sum(1) + 0.05 * torch.randn(len(lengths), n, generator=g)
    lengths_t = torch.tensor(lengths)
    wav = wav * (torch.arange(n)[None] < lengths_t[:, None])
    return wav.float(), lengths_t


def _padding(model, wav: Tensor, lengths: Tensor) -> tuple[int, Tensor]:
    frames = int(model.backbone.frame_lengths(torch.tensor([wav.shape[1]]))[0])
    valid = model.backbone.frame_lengths(lengths)
    return frames, torch.arange(frames)[None] >= valid[:, None]  # (B, T) True at padding


# ---------------------------------------------------------------------------------------------
# MusicHuBERT


def hubert_inputs(case: HubertCase) -> dict[str, Tensor]:
    """Model weights (our names), batch, forced mask and labels of a case."""
    config = case.config()
    model = MusicHubert(config)
    lengths = case.lengths if case.preset == "tiny" else case.lengths
    lengths = hubert_lengths(lengths, config.backbone.conv_layers)
    wav, lengths_t = case_audio(case.name, lengths)
    frames, padding = _padding(model, wav, lengths_t)
    mask = mask_spans(len(lengths), frames, config.mask, padding, generator=case.seed)
    # Labels cover ratio x frames exactly, so neither side trims frames (see the notes on trimming).
    label_frames = math.ceil(frames * config.label_rate_hz / config.backbone.frame_rate_hz) - case.label_shortfall
    g = _generator(case.name, "labels")
    labels = torch.stack([torch.randint(0, k, (len(lengths), label_frames), generator=g) for k in config.codebooks],
                         -1)  # (B, T_label, S)
    return {"wav": wav, "lengths": lengths_t, "mask": mask, "labels": labels, **{
        f"weight.{k}": v for k, v in case_weights(model, case.name).items()}}


def nudged(inputs: dict[str, Tensor], case_name: str) -> dict[str, Tensor]:
    """The same inputs with every audio sample moved by one fp32 ulp (a relative 2^-23, random
    sign): how far a result moves then is the least that fp32 rounding can make it differ, its
    conditioning (benchmarks/fairseq_parity.py uses it as the noise floor of gradients)."""
    sign = torch.randint(0, 2, inputs["wav"].shape, generator=_generator(case_name, "nudge")) * 2 - 1
    return dict(inputs, wav=inputs["wav"] * (1 + sign * 2.0**-23))


def _weights(inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k[len("weight."):]: v for k, v in inputs.items() if k.startswith("weight.")}


def run_ours_hubert(case: HubertCase, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our MusicHubert on a case in training mode: per codebook the masked and unmasked logits
    (M, K) in our class order, the loss terms, and every parameter's gradient (`grad.<name>`)."""
    model = MusicHubert(case.config())
    model.load_state_dict(_weights(inputs))
    model.train()
    logits: list[Tensor] = []
    head = model.logits
    model.logits = lambda hidden: (out := head(hidden), logits.extend(out))[0]  # capture, in call order
    result = model(inputs["wav"], inputs["lengths"], inputs["labels"], mask=inputs["mask"])
    result["loss"].backward()
    sets = len(case.codebooks)
    out = {f"logits_m_{i}": logits[i].detach() for i in range(sets)}
    out |= {f"logits_u_{i}": logits[sets + i].detach() for i in range(sets)}
    suffixes = [""] + [f"_{i}" for i in range(1, sets)]
    out |= {f"loss_m_{i}": result[f"masked_ce_sum{s}"].detach() for i, s in enumerate(suffixes)}
    out |= {f"loss_u_{i}": result[f"unmasked_ce_sum{s}"].detach() for i, s in enumerate(suffixes)}
    out |= {"features_pen": result["feature_penalty"], "loss": result["loss"].detach(),
            "sample_size": torch.tensor(float(result["sample_size"]))}
    out |= {f"grad.{n}": p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out


# ---------------------------------------------------------------------------------------------
# Music2Vec


def music2vec_inputs(case: Music2VecCase) -> dict[str, Tensor]:
    """Student weights, teacher weights (a perturbed copy of the student's encoder, its pos conv
    equal to the student's as after any fairseq EMA step), batch and forced mask."""
    config = case.config()
    model = Music2Vec(config)
    student = {k: v for k, v in case_weights(model, case.name).items() if not k.startswith("teacher.")}
    teacher = {}
    for name in model.teacher.state_dict():
        source = student[f"backbone.encoder.{name[len('encoder.'):]}"]
        # Far from the student (half its mean magnitude), so one EMA step moves it measurably in fp32.
        noise = 0.5 * source.abs().mean() * torch.randn(source.shape, generator=_generator(case.name, "teacher", name))
        teacher[f"teacher.{name}"] = source.clone() if ".pos_conv." in f".{name}" else source + noise
    wav, lengths = case_audio(case.name, case.lengths)
    frames, padding = _padding(model, wav, lengths)
    mask = mask_spans(len(case.lengths), frames, config.mask, padding, generator=case.seed)
    # Each utterance is standardised by the data pipeline (data2vec `normalize: true`).
    wav = torch.stack([torch.nn.functional.layer_norm(w, w.shape) for w in wav])
    return {"wav": wav, "lengths": lengths, "mask": mask,
            **{f"weight.{k}": v for k, v in (student | teacher).items()}}


def run_ours_music2vec(case: Music2VecCase, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our Music2Vec on a case in training mode: the teacher's top-K FFN outputs, the targets and
    predictions at masked frames, the loss and its scale, the student's gradients, then one EMA
    step (`ema.<name>` = the teacher's encoder after it)."""
    config = case.config()
    model = Music2Vec(config)
    model.load_state_dict(_weights(inputs))
    model.train()
    wav, lengths, mask = inputs["wav"], inputs["lengths"], inputs["mask"]
    captured = {}
    regression = model.regression_loss
    model.regression_loss = lambda p, t: (captured.update(prediction=p.detach(), target=t.detach()),
                                          regression(p, t))[1]
    result = model(wav, lengths, mask=mask)
    result["loss"].backward()
    out = {"prediction": captured["prediction"], "target": captured["target"], "loss": result["loss"].detach(),
           "sample_size": result["sample_size"], "loss_scale": torch.tensor(
               config.loss_scale if config.loss_scale is not None else 1 / math.sqrt(config.backbone.dim)),
           "target_var": result["target_std_sum"] / result["sample_size"],
           "pred_var": result["prediction_std_sum"] / result["sample_size"]}
    with torch.no_grad():
        features = model.backbone(wav, lengths).features  # unmasked, as the teacher sees them
        _, ffn = model.teacher.encoder(features, None)
    out |= {f"layer_result_{i}": y.detach() for i, y in enumerate(ffn[-config.average_top_k_layers:])}
    out |= {f"grad.{n}": p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    out |= {f"teacher_before.{n}": t.detach().clone() for n, t in model.teacher.encoder.state_dict().items()}
    out["ema_decay"] = torch.tensor(model.ema_step(case.ema_step), dtype=torch.float64)
    out |= {f"ema.{n}": t.detach().clone() for n, t in model.teacher.encoder.state_dict().items()}
    return out


# ---------------------------------------------------------------------------------------------
# Schedules (the recipes' own: musichubert_run / music2vec_run, base and tiny)

SCHEDULES = {
    "polynomial_hubert_base": ScheduleConfig(kind="polynomial", peak_lr=5e-4, warmup_steps=32_000, total_steps=400_000),
    "polynomial_musichubert_250k": ScheduleConfig(kind="polynomial", peak_lr=5e-4, warmup_steps=32_000,
                                                  total_steps=250_000),
    "polynomial_tiny": ScheduleConfig(kind="polynomial", peak_lr=1e-3, warmup_steps=30, total_steps=300),
    "tri_stage_data2vec_base": ScheduleConfig(kind="tri_stage", peak_lr=5e-4, total_steps=400_000),
    "tri_stage_music2vec_800k": ScheduleConfig(kind="tri_stage", peak_lr=5e-4, total_steps=800_000),
    "tri_stage_tiny": ScheduleConfig(kind="tri_stage", peak_lr=1e-3, total_steps=300),
}
# EMA decay schedules: (start, end, anneal_end_step) of the base and tiny recipes.
EMA_SCHEDULES = {"ema_data2vec_base": (0.999, 0.9999, 30_000), "ema_tiny": (0.999, 0.9999, 300)}


def schedule_steps(total: int, every: int = 1) -> list[int]:
    """Every `every`-th update from 0 to past the end, plus each phase boundary +-1."""
    steps = set(range(0, total + 2, every))
    return sorted(steps | {total - 1, total, total + 1, total + 1000})


def ours_schedule(config: ScheduleConfig, steps: list[int]) -> Tensor:
    return torch.tensor([learning_rate(config, s) for s in steps], dtype=torch.float64)


def ours_ema_schedule(start: float, end: float, anneal: int, steps: list[int]) -> Tensor:
    return torch.tensor([ema_decay_at(s, start, end, anneal) for s in steps], dtype=torch.float64)


def case_dict(case) -> dict:
    """A case's fields plus its model config, for the fairseq side (json)."""
    config = case.config()
    backbone = dataclasses.asdict(config.backbone)
    fields = dataclasses.asdict(config)
    fields.pop("backbone")
    return {"case": dataclasses.asdict(case), "model": fields, "backbone": backbone}

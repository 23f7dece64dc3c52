"""Music2Vec: data2vec 1.0 (audio) applied to music (docs/method.md §4).

    wav -> CNN -> projection = features ───────────────────────────┐ (detached, unmasked)
             masked spans -> mask embedding -> student encoder      │
                 -> last hidden state at masked frames              ▼
                 -> final_proj (D -> D) = prediction      EMA teacher encoder (eval)
                                                           -> FFN outputs of the top K blocks
                                                           -> instance norm over time, per layer
                                                           -> mean over K = target
    loss = 1/sqrt(D) * sum over masked frames of ||prediction - target||^2   (or smooth L1)

The teacher is a copy of the student's TransformerEncoder only (pos conv, encoder LayerNorm,
blocks); the CNN and projection are shared, as in fairseq's `ema_transformer_only` +
`ema_layers_only`. Reference: fairseq `examples/data2vec/models/data2vec_audio.py`
(`make_ema_teacher`, `set_num_updates`, `forward`) and `config/audio/pretraining/base_librispeech.yaml`.

Deliberate difference: per-layer instance norm excludes padded frames from its statistics
(fairseq includes them, but crops every batch to its shortest item, so it never has padding;
on unpadded input both agree).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from musicssl.config import Registry
from musicssl.models.backbone import Backbone, TransformerEncoder, padding_mask_from_lengths
from musicssl.models.backbone_config import BackboneConfig, backbone_preset
from musicssl.models.masking import MaskConfig, mask_spans


class RepresentationCollapse(ValueError):
    """The teacher targets or the student predictions stopped varying (data2vec's collapse guard)."""


@dataclass(frozen=True)
class Music2VecConfig:
    """Defaults are data2vec audio base (fairseq base_librispeech.yaml), docs/method.md §4 / §6."""

    backbone: BackboneConfig = field(default_factory=lambda: backbone_preset("data2vec_base"))
    average_top_k_layers: int = 8  # base_librispeech.yaml; the music paper's ablation: 12 (§4.6)
    instance_norm_target_layer: bool = True  # base_librispeech.yaml (§4.3 step 2)
    layer_norm_targets: bool = False  # final norms, off in base_librispeech.yaml (§4.3 step 4)
    instance_norm_targets: bool = False
    loss_beta: float = 0.0  # 0 = L2, base_librispeech.yaml; > 0 = smooth L1 with that beta (§4.4)
    loss_scale: float | None = None  # fairseq loss_scale null -> 1/sqrt(D) (§4.4)
    ema_decay: float = 0.999  # base_librispeech.yaml (§4.2)
    ema_end_decay: float = 0.9999  # base_librispeech.yaml
    ema_anneal_end_step: int = 30_000  # base_librispeech.yaml (code default: max_update)
    min_target_std: float = 0.1  # fairseq min_target_var (data2vec_audio.py default, §4.4)
    min_prediction_std: float = 0.01  # fairseq min_pred_var
    collapse_check_after: int = 5000  # data2vec_audio.py: guards active once num_updates > 5000
    mask: MaskConfig = MaskConfig(mask_prob=0.65, mask_length=10, min_masks=1)  # base_librispeech.yaml (§2)
    # Ours, off in the base recipe (fairseq initialises final_proj like any Linear). On: the
    # student's predictions start at the targets' mean (zero), instead of as noise it must first
    # shrink; the `tiny` recipe turns it on (see music2vec_run for what that changed).
    zero_init_final_proj: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.average_top_k_layers <= self.backbone.num_layers:
            raise ValueError(f"average_top_k_layers must be in [1, {self.backbone.num_layers}] "
                             f"(backbone.num_layers), got {self.average_top_k_layers}")
        if self.loss_beta < 0:
            raise ValueError(f"loss_beta must be >= 0 (0 = L2), got {self.loss_beta}")
        for name in ("ema_decay", "ema_end_decay"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


def music2vec_config(preset: str, **changes) -> Music2VecConfig:
    """`base` (the paper's 95M model) or `tiny` (CPU tests and demos), data2vec backbone.
    data2vec averages the top 8 of 12 blocks; a shallower preset keeps that fraction (tiny: 3 of 4)
    unless `average_top_k_layers` is given."""
    backbone = backbone_preset(preset, "data2vec")
    changes.setdefault("average_top_k_layers", max(1, round(8 * backbone.num_layers / 12)))
    return Music2VecConfig(backbone=backbone, **changes)


# The music paper's named ablations (docs/method.md §4.6) as dotted overrides of a run config
# with top-level fields model / data / trainer. "vanilla" is the data2vec base recipe.
MUSIC2VEC_VARIANTS: Registry[dict[str, object]] = Registry("Music2Vec variant", {
    "vanilla": {},
    "span5": {"model.mask.mask_length": 5},
    "span15": {"model.mask.mask_length": 15},
    "prob50": {"model.mask.mask_prob": 0.5},
    "prob80": {"model.mask.mask_prob": 0.8},
    "target12": {"model.average_top_k_layers": 12},
    "crop5s": {"data.crop_seconds": 5.0},
    "steps800k": {"trainer.max_steps": 800_000},
})


def ema_decay_at(step: int, start: float, end: float, anneal_end_step: int) -> float:
    """Linear anneal start -> end over `anneal_end_step` updates, `end` afterwards
    (fairseq data2vec `get_annealed_rate`)."""
    if step >= anneal_end_step:
        return end
    return end - (end - start) * (1.0 - step / anneal_end_step)


def instance_norm_over_time(x: Tensor, padding_mask: Tensor | None, eps: float = 1e-5) -> Tensor:
    """(B, T, D) -> zero mean, unit (biased) variance over time for each item and channel, in
    fp32, no affine. Padded frames are left out of the statistics and set to zero."""
    x = x.float()
    if padding_mask is None:
        return F.instance_norm(x.transpose(1, 2), eps=eps).transpose(1, 2)  # fairseq's exact op
    keep = (~padding_mask)[..., None].float()  # (B, T, 1)
    count = keep.sum(1, keepdim=True).clamp(min=1)  # (B, 1, 1)
    mean = (x * keep).sum(1, keepdim=True) / count  # (B, 1, D)
    var = (((x - mean) * keep) ** 2).sum(1, keepdim=True) / count
    return (x - mean) * torch.rsqrt(var + eps) * keep


def mean_std(x: Tensor) -> Tensor:
    """(M, D) -> mean over dims of the per-dim std over rows: fairseq `compute_var`
    (sqrt(unbiased var + 1e-6)). Zero when there are fewer than two rows."""
    if x.shape[0] < 2:
        return x.new_zeros((), dtype=torch.float32)
    return torch.sqrt(x.float().var(dim=0) + 1e-6).mean()


class EmaTeacher(nn.Module):
    """An exponential moving average of the student's TransformerEncoder, kept in fp32 and
    always in eval mode (no dropout, no LayerDrop). Never receives gradients."""

    def __init__(self, student_encoder: TransformerEncoder):
        super().__init__()
        self.encoder = copy.deepcopy(student_encoder).float()
        self.encoder.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> EmaTeacher:
        return super().train(False)  # model.train() must not switch on dropout in the teacher

    @staticmethod
    def _is_copied(name: str) -> bool:
        return name.startswith("pos_conv.")  # fairseq ema_layers_only: pos conv keys are skip keys

    @torch.no_grad()
    def update(self, student_encoder: TransformerEncoder, decay: float) -> None:
        """t = decay * t + (1 - decay) * s for the blocks and the encoder LayerNorm; the pos
        conv parameters and all buffers are copied (fairseq EMAModule.step with skip keys)."""
        student = dict(student_encoder.named_parameters())
        pairs = [(teacher, student[name].detach().float()) for name, teacher in self.encoder.named_parameters()]
        copied = [self._is_copied(name) for name, _ in self.encoder.named_parameters()]
        for (teacher, source), copy in zip(pairs, copied):
            if copy:
                teacher.copy_(source)
        averaged = [pair for pair, copy in zip(pairs, copied) if not copy]
        if averaged:
            # One kernel per op over every tensor (not ~200 launches each). Two rounded products
            # then a rounded sum (not fairseq's fused add_(alpha=)): the plain fp32 expression
            # t * decay + s * (1 - decay), bit for bit the per-tensor loop (tests/train/test_gpu_switches.py).
            teachers, sources = [t for t, _ in averaged], [s for _, s in averaged]
            torch._foreach_mul_(teachers, decay)
            torch._foreach_add_(teachers, torch._foreach_mul(sources, 1.0 - decay))
        student_buffers = dict(student_encoder.named_buffers())
        for name, buffer in self.encoder.named_buffers():
            buffer.copy_(student_buffers[name])

    @torch.no_grad()
    def targets(self, features: Tensor, padding_mask: Tensor | None, top_k: int,
                instance_norm: bool = True, layer_norm_targets: bool = False,
                instance_norm_targets: bool = False) -> Tensor:
        """features (B, T, D): the student's projected CNN features before masking; padding_mask
        (B, T) True at padding, or None. Returns (B, T, D) fp32 targets (docs/method.md §4.3).

        The encoder runs in the ambient precision (under autocast: the training precision, like
        fairseq's teacher, whose fp32 EMA weights are cast to the model's dtype); every
        normalisation is computed in fp32."""
        self.encoder.eval()
        if not 1 <= top_k <= len(self.encoder.layers):
            raise ValueError(f"top_k must be in [1, {len(self.encoder.layers)}], got {top_k}")
        if padding_mask is not None and not padding_mask.any():
            padding_mask = None
        _, ffn_outputs = self.encoder(features.detach(), padding_mask)  # L x (B, T, D)
        layers = [y.float() for y in ffn_outputs[-top_k:]]  # top K blocks (fairseq min_layer = L - K)
        if instance_norm:
            layers = [instance_norm_over_time(y, padding_mask) for y in layers]
        target = sum(layers) / top_k  # (B, T, D)
        if layer_norm_targets:
            target = F.layer_norm(target, target.shape[-1:])
        if instance_norm_targets:
            target = instance_norm_over_time(target, padding_mask)
        return target


class Music2Vec(nn.Module):
    def __init__(self, config: Music2VecConfig):
        super().__init__()
        self.config = config
        self.backbone = Backbone(config.backbone)
        self.final_proj = nn.Linear(config.backbone.dim, config.backbone.dim)  # fairseq final_proj
        if config.zero_init_final_proj:
            nn.init.zeros_(self.final_proj.weight)
            nn.init.zeros_(self.final_proj.bias)
        # fairseq builds the teacher at update 0 from the freshly initialised student.
        self.teacher = EmaTeacher(self.backbone.encoder)

    def head_state_dict(self) -> dict[str, Tensor]:
        """final_proj and the teacher (`teacher.` prefix): everything outside the exported backbone."""
        return {name: tensor for name, tensor in self.state_dict().items() if not name.startswith("backbone.")}

    def forward(self, wav: Tensor, lengths: Tensor | None = None, mask: Tensor | None = None,
                generator=None) -> dict[str, Tensor]:
        """wav (B, N), already standardised per utterance by the data pipeline when
        `config.backbone.normalize_waveform` (not repeated here); lengths (B,) samples.
        mask (B, T) bool overrides span masking (drawn with `generator` otherwise).

        Returns sums, so the trainer can normalise by global counts over ranks and micro-batches:
        - `loss`: scale * summed per-frame loss over masked, non-padded frames;
        - `sample_size`: the number M of those frames (float), fairseq's sample_size;
        - `target_std_sum`, `prediction_std_sum`: `mean_std` of this micro-batch's M targets /
          predictions, times M. Sum over micro-batches and ranks and divide by the summed
          sample_size for an M-weighted mean std, the value to log and give `check_collapse`.
          fairseq instead pools per-dim variances over ranks; the two agree for one micro-batch
          on one rank and differ by the between-batch variance otherwise (this one is slightly
          lower, so the guard errs towards firing)."""
        if wav.dim() != 2:
            raise ValueError(f"wav must be (batch, samples), got shape {tuple(wav.shape)}")
        batch, samples = wav.shape
        if lengths is None:
            lengths = torch.full((batch,), samples, dtype=torch.long, device=wav.device)
        frames = int(self.backbone.frame_lengths(torch.tensor([samples]))[0])
        padding = padding_mask_from_lengths(self.backbone.frame_lengths(lengths), frames)  # (B, T)
        if mask is None:
            mask = mask_spans(batch, frames, self.config.mask, padding, generator, device=wav.device)
        out = self.backbone(wav, lengths, mask=mask)
        c = self.config
        targets = self.teacher.targets(out.features.detach(), out.padding_mask, c.average_top_k_layers,
                                       c.instance_norm_target_layer, c.layer_norm_targets,
                                       c.instance_norm_targets)  # (B, T, D) fp32
        selected = mask.to(out.padding_mask.device) & ~out.padding_mask  # (B, T)
        prediction = self.final_proj(out.last_hidden_state[selected]).float()  # (M, D)
        target = targets[selected]  # (M, D)
        loss = self.regression_loss(prediction, target)
        sample_size = torch.tensor(float(prediction.shape[0]), device=wav.device)
        return {"loss": loss, "sample_size": sample_size,
                "target_std_sum": mean_std(target) * sample_size,
                "prediction_std_sum": mean_std(prediction.detach()) * sample_size}

    def regression_loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        """(M, D), (M, D) -> scale * sum over frames and dims of L2 (beta 0) or smooth L1."""
        if self.config.loss_beta == 0:
            per_element = F.mse_loss(prediction, target, reduction="none")
        else:
            per_element = F.smooth_l1_loss(prediction, target, reduction="none", beta=self.config.loss_beta)
        scale = self.config.loss_scale if self.config.loss_scale is not None else 1 / math.sqrt(prediction.shape[-1])
        return per_element.sum() * scale

    def ema_step(self, step: int) -> float:
        """One EMA update of the teacher from the current student, with the decay for `step`;
        returns that decay. Call once per optimizer update, after it, with the number of updates
        done so far (fairseq's `set_num_updates(n)` before update n's forward). Note: fairseq
        calls it once per micro-batch, so with update_freq > 1 its teacher steps several times
        per update; we step once. A decay of 1 freezes the teacher entirely, as in fairseq."""
        c = self.config
        decay = ema_decay_at(step, c.ema_decay, c.ema_end_decay, c.ema_anneal_end_step)
        if decay < 1.0:
            self.teacher.update(self.backbone.encoder, decay)
        return decay

    def check_collapse(self, step: int, target_std: float, prediction_std: float) -> None:
        """Abort once `step` > collapse_check_after if the (globally averaged) target or
        prediction std fell below its floor (fairseq min_target_var / min_pred_var)."""
        c = self.config
        if step <= c.collapse_check_after:
            return
        if target_std < c.min_target_std:
            raise RepresentationCollapse(
                f"step {step}: target std {target_std:.4g} fell below min_target_std {c.min_target_std} "
                f"(the teacher's representations collapsed); lower the learning rate or restart from an "
                f"earlier checkpoint")
        if prediction_std < c.min_prediction_std:
            raise RepresentationCollapse(
                f"step {step}: prediction std {prediction_std:.4g} fell below min_prediction_std "
                f"{c.min_prediction_std} (the student's predictions collapsed); lower the learning rate "
                f"or restart from an earlier checkpoint")

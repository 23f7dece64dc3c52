"""MERT: MusicHuBERT's masked prediction of 8 acoustic codebooks at 75 Hz, plus a musical teacher
(a linear head regressing the CQT at masked frames) and in-batch mixtures (docs/method.md §10).

    wav (B, n) 24 kHz ──> CQT magnitude (clean audio) ─────────────────────────────┐ targets
        └─> + segments of the batch's other clips (p 0.5) ─> Backbone (spans masked)  │
              ─> last hidden state ─> final_proj (D -> 64 x 8) ─> 8 cross-entropies, summed
                                  └─> cqt_head (D -> 336) at masked frames ─> MSE ──┘ (weight 1)
        + 10 x mean(CNN output ^ 2), as MusicHuBERT

As in fairseq's hubert criterion, which MERT trains with (loss_weights [10, 1] for features_pen and
cqt_pred_m, MERT_RVQ-VAE_CQT_95M.yaml:50), each extra loss is multiplied by sample_size (the masked
frames): the trainer divides the summed loss by the same count, so the CQT term enters as MSE x 1.
References [MERT] are yizhilll/MERT mert_fairseq/models/mert/mert_model.py (HEAD 391062e).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from musicssl.models.backbone_config import backbone_preset
from musicssl.models.cqt import ConstantQTransform, CQTConfig
from musicssl.models.masking import MaskConfig
from musicssl.models.musichubert import MusicHubert, MusicHubertConfig

MERT_CODEBOOKS = 8  # EnCodec's 8 RVQ codebooks at 75 Hz, one label set each


@dataclass(frozen=True)
class MixtureConfig:
    """MERT's in-batch noise mixture ([MERT] inbatch_noise_augment, :815-845; forward, :1081-1097)."""

    # Chance that a clip is mixed (mixture_prob 0.5). MERT's code mixes when `torch.rand(1) >
    # mixture_prob`, i.e. with probability 1 - mixture_prob ([MERT] :1090): the same at its 0.5, the
    # opposite elsewhere. We implement what the name says: a clip is mixed with this probability.
    probability: float = 0.5
    # Segment length in samples, both ends included (inbatch_noise_augment_len_range [12000, 24000]:
    # 0.5-1.0 s at 24 kHz, 95M; [12000, 36000] at 330M).
    min_samples: int = 12_000
    max_samples: int = 24_000
    min_segments: int = 1  # inbatch_noise_augment_number_range [1, 3], both ends included
    max_segments: int = 3
    gain: float = 1.0  # inbatch_noise_augment_volume

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"mixture.probability must be in [0, 1], got {self.probability}")
        if not 1 <= self.min_samples <= self.max_samples or not 1 <= self.min_segments <= self.max_segments:
            raise ValueError("mixture: need 1 <= min_samples <= max_samples and 1 <= min_segments <= max_segments")


@dataclass(frozen=True)
class Segment:
    """`length` samples from offset `source` of the other clips laid end to end, added at `position`."""

    source: int
    length: int
    position: int


def draw_mixture(batch: int, clip_samples: int, config: MixtureConfig,
                 rng: np.random.Generator) -> list[list[Segment]]:
    """The segments each clip of a batch of equal-length clips receives (an empty list: clean).
    Per clip, in MERT's order of draws: mixed or not, the segment count, every segment's offset in
    the other clips laid end to end (uniform over [0, pool - max_samples]), every length, then each
    segment's position in the clip. As in MERT a segment may span two neighbouring clips and may
    overlap another; with fewer than max_samples in the pool (MERT's draw raises and its `except`
    keeps the clip clean) or the clip every clip stays clean (MERT's code still mixes such a clip when
    every length it drew fits: no preset has clips that short; docs/parity.md)."""
    pool = (batch - 1) * clip_samples
    if config.probability == 0 or pool < config.max_samples or clip_samples < config.max_samples:
        return [[] for _ in range(batch)]
    plan = []
    for _ in range(batch):
        if rng.random() >= config.probability:  # mixed with probability `probability` (see MixtureConfig)
            plan.append([])
            continue
        count = int(rng.integers(config.min_segments, config.max_segments + 1))
        sources = rng.integers(0, pool - config.max_samples + 1, size=count)
        lengths = rng.integers(config.min_samples, config.max_samples + 1, size=count)
        plan.append([Segment(int(s), int(n), int(rng.integers(0, clip_samples - n + 1)))
                     for s, n in zip(sources, lengths)])
    return plan


def apply_mixture(wav: Tensor, plan: list[list[Segment]], gain: float) -> Tensor:
    """(B, n) clean clips -> (B, n) mixed: segments always come from the clean clips ([MERT] :1088)."""
    mixed = wav.clone()
    for index, segments in enumerate(plan):
        if not segments:
            continue
        pool = torch.cat([wav[:index], wav[index + 1:]]).flatten()  # the other clips, in batch order
        for segment in segments:
            mixed[index, segment.position:segment.position + segment.length] += (
                gain * pool[segment.source:segment.source + segment.length])
    return mixed


@dataclass(frozen=True)
class MERTConfig(MusicHubertConfig):
    """MusicHuBERT's fields (backbone, codebooks, final_dim, mask, ...) and MERT's two additions."""

    cqt: CQTConfig = field(default_factory=CQTConfig)
    cqt_weight: float = 1.0  # criterion loss_weights [10, 1]: the second weighs cqt_pred_m
    mixture: MixtureConfig = field(default_factory=MixtureConfig)
    # MERT-330M's attention_relax 32 ([MERT] :1928-1945) computes softmax((a/r - max(a/r)) r) = softmax(a),
    # a shift, exact in float32 for a power of two (tests/interop/test_mert.py): it only guards fp16
    # overflow. Recorded for the recipe; the attention is the same either way.
    attention_relax: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        backbone = self.backbone
        if (self.cqt.sample_rate, self.cqt.hop) != (backbone.sample_rate, backbone.hop):
            raise ValueError(f"the CQT frames ({self.cqt.sample_rate} Hz, hop {self.cqt.hop}) must be the backbone's "
                             f"({backbone.sample_rate} Hz, hop {backbone.hop})")


def mert_config(preset: str, num_classes: tuple[int, ...], **changes) -> MERTConfig:
    """`95m`, `330m` or `tiny` with one codebook of k = num_classes[i] per label set, at 75 Hz."""
    first, *extra = num_classes
    # extra_classes 4: MERT reads each codebook through a fairseq Dictionary (dict.{label}.txt,
    # mert_pretraining.py:301-304), whose 4 specials are softmax rows that are never a target.
    return MERTConfig(backbone=backbone_preset(f"mert_{preset}"), num_classes=first, extra_codebooks=tuple(extra),
                      label_rate_hz=75.0, mask=MaskConfig(mask_prob=0.8, mask_length=5, min_masks=2), extra_classes=4,
                      **changes)


class MERT(MusicHubert):
    def __init__(self, config: MERTConfig):
        super().__init__(config)
        self.cqt = ConstantQTransform(config.cqt)  # no parameters, nothing in the state dict
        self.cqt_head = nn.Linear(config.backbone.dim, config.cqt.n_bins)  # [MERT] model_cqt_pred.fc

    def forward(self, wav: Tensor, lengths: Tensor | None, labels: Tensor, mask: Tensor | None = None,
                generator=None, mixture: list[list[Segment]] | None = None) -> dict[str, Tensor]:
        """MusicHuBERT's `forward` on the mixed audio (`mixture`: a `draw_mixture` plan; None: clean),
        plus `cqt_se_sum` (squared error summed over masked frames, averaged over bins) and
        `cqt_frames`; the loss adds cqt_weight x MSE x sample_size."""
        with torch.no_grad():
            targets = self.cqt(wav).transpose(1, 2)  # (B, T_cqt, K), from the clean audio
            noisy = apply_mixture(wav, mixture, self.config.mixture.gain) if mixture else wav
        result, hidden, masked = self.masked_prediction(noisy, lengths, labels, mask, generator)  # (B, T, D), (B, T)
        frames = min(hidden.shape[1], targets.shape[1])  # [MERT] :1264 keeps the first T CQT frames
        masked = masked[:, :frames]
        predicted = self.cqt_head(hidden[:, :frames][masked]).float()  # (M, K)
        chosen = targets[:, :frames][masked]  # (M, K)
        mse = F.mse_loss(predicted, chosen) if chosen.numel() else predicted.sum() * 0
        count = torch.tensor(float(chosen.shape[0]), device=wav.device)
        result["loss"] = result["loss"] + self.config.cqt_weight * mse * result["sample_size"]
        result.update(cqt_se_sum=mse.detach() * count, cqt_frames=count)
        return result

    def mixture_plan(self, batch: int, clip_samples: int, rng: np.random.Generator) -> list[list[Segment]]:
        return draw_mixture(batch, clip_samples, self.config.mixture, rng)

"""MusicHuBERT: HuBERT's masked prediction of k-means labels, applied to music (method-spec §3).

    wav -> Backbone (masked spans replaced by the mask embedding) -> last hidden state
        -> final_proj (D -> 256) -> cosine with every label embedding / 0.1 -> cross-entropy
    + 10 x mean(CNN output ^ 2)  (feature penalty)

fairseq computes the logits as "positive first, then all K+4 classes with the duplicate set
to -inf"; that is exactly a softmax over the classes, which we compute as one matmul. Labels
are cluster ids 0..k-1 (no dictionary): `extra_classes=4` reproduces fairseq's 4 never-target
rows in the softmax.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from musicssl.models.backbone import Backbone, BackboneConfig, backbone_preset
from musicssl.models.masking import MaskConfig, mask_spans


@dataclass(frozen=True)
class MusicHubertConfig:
    backbone: BackboneConfig = field(default_factory=lambda: backbone_preset("hubert_base"))
    num_classes: int = 500  # k of the label set (paper: 500 or 2000)
    label_rate_hz: float = 100.0  # MFCC labels 100 Hz; deep-feature labels at the model's 50 Hz
    final_dim: int = 256  # fairseq final_dim
    logit_temperature: float = 0.1  # fairseq logit_temp
    masked_weight: float = 1.0  # pred_masked_weight
    unmasked_weight: float = 0.0  # pred_nomask_weight
    feature_penalty_weight: float = 10.0  # loss_weights [10]
    extra_classes: int = 0  # 4 = fairseq's dictionary specials (<s>, <pad>, </s>, <unk>)
    mask: MaskConfig = MaskConfig(mask_prob=0.8, mask_length=10, min_masks=2)  # HuBERT base


def musichubert_config(preset: str, num_classes: int, label_rate_hz: float, **changes) -> MusicHubertConfig:
    """`base` (the paper's 95M model) or `tiny` (CPU tests and demos), for a given label set."""
    return MusicHubertConfig(backbone=backbone_preset(preset, "hubert"), num_classes=num_classes,
                             label_rate_hz=label_rate_hz, **changes)


def align_labels(labels: Tensor, num_frames: int, label_rate_hz: float, frame_rate_hz: float) -> Tensor:
    """(B, T_label) -> (B, T') with T' = min(num_frames, floor(T_label / ratio)): frame t takes
    label floor(t * ratio), ratio = label rate / frame rate (every 2nd label at 100 Hz)."""
    ratio = label_rate_hz / frame_rate_hz
    usable = min(num_frames, int(math.floor(labels.shape[1] / ratio + 1e-9)))
    index = torch.floor(torch.arange(usable, device=labels.device) * ratio).long()
    return labels[:, index]


class MusicHubert(nn.Module):
    def __init__(self, config: MusicHubertConfig):
        super().__init__()
        self.config = config
        self.backbone = Backbone(config.backbone)
        self.final_proj = nn.Linear(config.backbone.dim, config.final_dim)
        # fairseq label_embs_concat: uniform [0, 1) init.
        self.label_embeddings = nn.Parameter(torch.rand(config.num_classes + config.extra_classes, config.final_dim))

    def head_state_dict(self) -> dict[str, Tensor]:
        """Pre-training head weights (not part of the transformers export)."""
        return {name: tensor for name, tensor in self.state_dict().items() if not name.startswith("backbone.")}

    def logits(self, hidden: Tensor) -> Tensor:
        """(M, D) hidden states -> (M, classes) cosine similarities / temperature, in fp32."""
        projected = F.normalize(self.final_proj(hidden).float(), dim=-1)  # (M, F)
        embeddings = F.normalize(self.label_embeddings.float(), dim=-1)  # (K, F)
        return projected @ embeddings.T / self.config.logit_temperature  # (M, K)

    def forward(self, wav: Tensor, lengths: Tensor | None, labels: Tensor,
                mask: Tensor | None = None, generator=None) -> dict[str, Tensor]:
        """wav (B, N), lengths (B,) samples, labels (B, T_label) cluster ids (-1 = none).
        mask (B, T) bool overrides span masking (drawn with `generator` otherwise).
        Returns sums, not means: `loss` (summed over the batch), `sample_size` (masked frames)
        and metric counts, so the trainer can normalise by the global count across ranks
        and micro-batches exactly as fairseq does."""
        lengths = lengths if lengths is not None else torch.full((wav.shape[0],), wav.shape[1], device=wav.device)
        frames = int(self.backbone.frame_lengths(torch.tensor([wav.shape[1]]))[0])
        frame_lengths = self.backbone.frame_lengths(lengths)
        padding = torch.arange(frames, device=wav.device)[None] >= frame_lengths[:, None]  # (B, T)
        if mask is None:
            mask = mask_spans(wav.shape[0], frames, self.config.mask, padding, generator, device=wav.device)
        out = self.backbone(wav, lengths, mask=mask)
        targets = align_labels(labels, frames, self.config.label_rate_hz, self.config.backbone.frame_rate_hz)
        usable = targets.shape[1]
        valid = ~padding[:, :usable] & (targets >= 0)  # (B, T')
        masked, unmasked = valid & mask[:, :usable], valid & ~mask[:, :usable]
        hidden = out.last_hidden_state[:, :usable]  # (B, T', D)
        result = self._prediction_terms(hidden, targets, masked, "masked")
        result.update(self._prediction_terms(hidden, targets, unmasked, "unmasked"))
        sample_size = result["masked_count"]
        penalty = out.cnn_features.float().pow(2).mean()
        loss = (self.config.masked_weight * result["masked_loss_sum"]
                + self.config.unmasked_weight * result["unmasked_loss_sum"]
                + self.config.feature_penalty_weight * penalty * sample_size)
        result.update(loss=loss, sample_size=sample_size, feature_penalty=penalty.detach())
        return result

    def _prediction_terms(self, hidden: Tensor, targets: Tensor, select: Tensor, name: str) -> dict[str, Tensor]:
        logits = self.logits(hidden[select])  # (M, K)
        chosen = targets[select]  # (M,)
        loss_sum = F.cross_entropy(logits, chosen, reduction="sum") if chosen.numel() else logits.sum() * 0
        correct = (logits.argmax(-1) == chosen).sum() if chosen.numel() else torch.zeros((), device=hidden.device)
        count = torch.tensor(float(chosen.numel()), device=hidden.device)
        return {f"{name}_loss_sum": loss_sum, f"{name}_correct": correct.float(), f"{name}_count": count}

"""MusicHuBERT: HuBERT's masked prediction of k-means labels, applied to music (docs/method.md §3).

    wav -> Backbone (masked spans replaced by the mask embedding) -> last hidden state
        -> final_proj (D -> 256) -> cosine with every label embedding / 0.1 -> cross-entropy
    + 10 x mean(CNN output ^ 2)  (feature penalty)

fairseq computes the logits as "positive first, then all K+4 classes with the duplicate set
to -inf"; that is exactly a softmax over the classes, which we compute as one matmul. Labels
are cluster ids 0..k-1 (no dictionary): `extra_classes=4` reproduces fairseq's 4 never-target
rows in the softmax.

Several codebooks (fairseq's multiple label files, with `untie_final_proj`): `extra_codebooks`
adds label sets on the same grid, e.g. pitch clusters beside MFCC clusters (the paper's
suggestion for pitch). final_proj then maps D -> 256 per set, each set has its own embeddings,
and the loss is the sum of the sets' cross-entropies over the same masked frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from musicssl.models.backbone import Backbone
from musicssl.models.backbone_config import BackboneConfig, backbone_preset
from musicssl.models.masking import MaskConfig, mask_spans


LABEL_EMBEDDING_INITS = {"uniform": torch.rand, "normal": torch.randn}


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
    # k of each further label set (codebook) predicted beside the first, e.g. (100,) for a
    # pitch codebook; () = HuBERT's single label set.
    extra_codebooks: tuple[int, ...] = ()
    # Codebook embeddings at init: "uniform" is fairseq's U[0, 1), every row in the positive
    # orthant (cosine ~0.75 between any two), so all logits start alike and the rows take
    # hundreds of updates to spread apart; "normal" N(0, 1) starts them near-orthogonal. Tiny
    # demo recipe, seed 1, 600 updates: masked CE 3.59 vs 3.75 nats (prior 4.05), yet its
    # features probed worse (7-task average against its init -8.3 vs -5.7; docs/demo.md), so
    # fairseq's stays the default.
    label_embedding_init: str = "uniform"

    def __post_init__(self):
        if self.label_embedding_init not in LABEL_EMBEDDING_INITS:
            raise ValueError(f"label_embedding_init must be one of {', '.join(LABEL_EMBEDDING_INITS)}, "
                             f"got {self.label_embedding_init!r}")

    @property
    def codebooks(self) -> tuple[int, ...]:
        return (self.num_classes, *self.extra_codebooks)


def musichubert_config(preset: str, num_classes: int | tuple[int, ...], label_rate_hz: float,
                       **changes) -> MusicHubertConfig:
    """`base` (the paper's 95M model) or `tiny` (CPU tests and demos), for a given label set
    (`num_classes` = k), or several (a tuple of k, one per codebook)."""
    first, *extra = (num_classes,) if isinstance(num_classes, int) else num_classes
    return MusicHubertConfig(backbone=backbone_preset(preset, "hubert"), num_classes=first,
                             label_rate_hz=label_rate_hz, extra_codebooks=tuple(extra), **changes)


def codebook_suffixes(count: int) -> list[str]:
    """Metric-name suffix of each codebook: "" for the first (HuBERT's names), then "_1", "_2"..."""
    return ["", *(f"_{i}" for i in range(1, count))]


def align_labels(labels: Tensor, num_frames: int, label_rate_hz: float, frame_rate_hz: float) -> Tensor:
    """(B, T_label[, S]) -> (B, T'[, S]) with T' = min(num_frames, floor(T_label / ratio)): frame t takes
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
        sets = config.codebooks
        self.final_proj = nn.Linear(config.backbone.dim, config.final_dim * len(sets))
        # fairseq label_embs_concat: every set's rows one after another.
        self.codebook_rows = [k + config.extra_classes for k in sets]  # rows of each set, in order
        init = LABEL_EMBEDDING_INITS[config.label_embedding_init]
        self.label_embeddings = nn.Parameter(init(sum(self.codebook_rows), config.final_dim))

    def head_state_dict(self) -> dict[str, Tensor]:
        """Pre-training head weights (not part of the transformers export)."""
        return {name: tensor for name, tensor in self.state_dict().items() if not name.startswith("backbone.")}

    def logits(self, hidden: Tensor) -> list[Tensor]:
        """(M, D) hidden states -> one (M, K_i) tensor per codebook: cosine similarities /
        temperature, in fp32. One projection serves every codebook (a final_dim slice each)."""
        projected = self.final_proj(hidden).float().split(self.config.final_dim, dim=-1)  # S x (M, F)
        embeddings = self.label_embeddings.float().split(self.codebook_rows)  # S x (K_i, F)
        return [F.normalize(p, dim=-1) @ F.normalize(e, dim=-1).T / self.config.logit_temperature
                for p, e in zip(projected, embeddings)]

    def forward(self, wav: Tensor, lengths: Tensor | None, labels: Tensor,
                mask: Tensor | None = None, generator=None) -> dict[str, Tensor]:
        """wav (B, N), lengths (B,) samples, labels (B, T_label) cluster ids (-1 = none), or
        (B, T_label, S) with one column per codebook.
        mask (B, T) bool overrides span masking (drawn with `generator` otherwise).
        Returns sums, not means: `loss` (summed over the batch), `sample_size` (masked frames, plus
        the unmasked ones when unmasked_weight > 0, as fairseq)
        and metric counts, so the trainer can normalise by the global count across ranks
        and micro-batches exactly as fairseq does."""
        return self.masked_prediction(wav, lengths, labels, mask, generator)[0]

    def masked_prediction(self, wav: Tensor, lengths: Tensor | None, labels: Tensor, mask: Tensor | None = None,
                          generator=None) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """`forward`'s result, and what a further head on the same pass needs (MERT's CQT): the last
        hidden state (B, T, D) and the frames fairseq calls masked_indices, mask & ~padding (B, T)."""
        lengths = lengths if lengths is not None else torch.full((wav.shape[0],), wav.shape[1], device=wav.device)
        frames = int(self.backbone.frame_lengths(torch.tensor([wav.shape[1]]))[0])
        frame_lengths = self.backbone.frame_lengths(lengths)
        padding = torch.arange(frames, device=wav.device)[None] >= frame_lengths[:, None]  # (B, T)
        if mask is None:
            mask = mask_spans(wav.shape[0], frames, self.config.mask, padding, generator, device=wav.device)
        out = self.backbone(wav, lengths, mask=mask)
        labels = labels[..., None] if labels.dim() == 2 else labels  # (B, T_label, S)
        if labels.shape[-1] != len(self.config.codebooks):
            raise ValueError(f"got {labels.shape[-1]} label set(s), the model predicts {len(self.config.codebooks)} "
                             f"codebook(s) of k = {self.config.codebooks}")
        targets = align_labels(labels, frames, self.config.label_rate_hz, self.config.backbone.frame_rate_hz)
        usable = targets.shape[1]  # targets (B, T', S)
        hidden = out.last_hidden_state[:, :usable]  # (B, T', D)
        # A frame counts where every set has a label, so all codebooks share one sample size.
        valid = ~padding[:, :usable] & (targets >= 0).all(-1)  # (B, T')
        masked, unmasked = valid & mask[:, :usable], valid & ~mask[:, :usable]
        suffixes = codebook_suffixes(targets.shape[-1])  # codebook 0 keeps HuBERT's metric names
        result: dict[str, Tensor] = {}
        for name, select in (("masked", masked), ("unmasked", unmasked)):
            chosen = targets[select]  # (M, S)
            for codebook, (logits, suffix) in enumerate(zip(self.logits(hidden[select]), suffixes)):
                terms = _prediction_terms(logits, chosen[:, codebook])
                result.update({f"{name}_{key}{suffix}": value for key, value in terms.items()})
            # fairseq sums the codebooks' losses
            result[f"{name}_loss_sum"] = sum(result[f"{name}_ce_sum{suffix}"] for suffix in suffixes)
        # fairseq's sample_size counts the frames of each prediction loss that is on (the unmasked
        # ones only with unmasked_weight > 0); it scales the penalty and divides the gradient.
        sample_size = (result["masked_count"] * (self.config.masked_weight > 0)
                       + result["unmasked_count"] * (self.config.unmasked_weight > 0))
        penalty = out.cnn_features.float().pow(2).mean()
        loss = (self.config.masked_weight * result["masked_loss_sum"]
                + self.config.unmasked_weight * result["unmasked_loss_sum"]
                + self.config.feature_penalty_weight * penalty * sample_size)
        result.update(loss=loss, sample_size=sample_size, feature_penalty=penalty.detach())
        return result, out.last_hidden_state, mask & ~padding


def _prediction_terms(logits: Tensor, chosen: Tensor) -> dict[str, Tensor]:
    """Sums over the selected frames of one codebook, logits (M, K) and targets (M,): cross-entropy,
    correct and count."""
    ce_sum = F.cross_entropy(logits, chosen, reduction="sum") if chosen.numel() else logits.sum() * 0
    correct = (logits.argmax(-1) == chosen).sum() if chosen.numel() else torch.zeros((), device=logits.device)
    return {"ce_sum": ce_sum, "correct": correct.float(), "count": torch.tensor(float(chosen.numel()),
                                                                              device=logits.device)}

"""The baseline of `pretrain_speed.py --method musicfm | muq`: MusicFM's model as its own code
composes it (model/musicfm_25hz.py: MelSTFT -> Conv2dSubsampling -> transformers'
Wav2Vec2ConformerEncoder -> Linear; MuQ's muq_model.py is the same with an RVQ and 8 codebooks).

MusicFM's source is on no registry and its MelSTFT needs torchaudio (no build for torch 2.13 here):
the mel and the conv front end are ours, which equal MusicFM's (the conv bit for bit in `make
parity-bestrq`; the mel is torchaudio's formula), so what differs from our step is the conformer:
transformers' against ours, the part this baseline is for. The targets and the mask come from our
model (MusicFM's quantiser and masking are ours bit for bit / in distribution), so both sides
learn the same task on the same batch.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from musicssl.models.bestrq import waveform_block_mask
from musicssl.models.mel_rvq import mel_rvq_config
from musicssl.models.musicfm import MusicFMPretrain, muq_pretrain_config, musicfm_pretrain_config


def transformers_conformer(ours: MusicFMPretrain) -> nn.Module:
    from transformers.models.wav2vec2_conformer.modeling_wav2vec2_conformer import (
        Wav2Vec2ConformerConfig, Wav2Vec2ConformerEncoder)

    c = ours.config.backbone.conformer
    config = Wav2Vec2ConformerConfig(hidden_size=c.dim, num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
                                     intermediate_size=c.ffn_dim, conv_depthwise_kernel_size=c.kernel,
                                     hidden_act="swish", position_embeddings_type="rotary", layerdrop=0.0)
    encoder = Wav2Vec2ConformerEncoder(config)
    encoder.load_state_dict(ours.backbone.conformer.state_dict(), strict=False)
    return encoder


class ReferenceMusicFM(nn.Module):
    """MusicFM25Hz's forward: targets from the clean audio, the masked audio through
    conv -> transformers' conformer -> Linear, cross-entropy on the masked tokens."""

    def __init__(self, ours: MusicFMPretrain):
        super().__init__()
        self.ours = ours  # targets and mel only (not trained here: its parameters stay out of the optimizer)
        self.conv = copy.deepcopy(ours.backbone.conv)
        self.conformer = transformers_conformer(ours)
        self.linear = copy.deepcopy(ours.head)

    def parameters(self, recurse: bool = True):
        return (p for name, p in self.named_parameters(recurse=recurse) if not name.startswith("ours."))

    def training_loss(self, wav: torch.Tensor, update: int) -> torch.Tensor:
        config = self.ours.config
        lengths = torch.full((wav.shape[0],), wav.shape[1], device=wav.device)
        targets = self.ours.targets(wav, lengths)  # (B, T, S)
        block = round(config.waveform_block_seconds * config.backbone.sample_rate)
        noised, mask = waveform_block_mask(wav, lengths, targets.shape[1], config.backbone.hop, block,
                                           config.waveform_mask_prob, config.waveform_noise_std,
                                           np.random.default_rng(update))
        x = self.conv(self.ours.backbone.normalized_mel(noised))[:, :targets.shape[1]]
        hidden = self.conformer(x).last_hidden_state  # (B, T, D)
        logits = self.linear(hidden[mask]).float().view(-1, config.codebook_size)  # (M * S, K)
        return F.cross_entropy(logits, targets[mask].reshape(-1))


def build(method: str, preset: str) -> tuple[MusicFMPretrain, ReferenceMusicFM]:
    if method == "muq":
        config = muq_pretrain_config(preset, mel_rvq_config("base", mel_mean=-20.0, mel_std=20.0))
    else:
        config = musicfm_pretrain_config(preset).with_mel_statistics(-20.0, 20.0)
    conformer = dataclasses.replace(config.backbone.conformer, layerdrop=0.0)
    config = dataclasses.replace(config, backbone=dataclasses.replace(config.backbone, conformer=conformer))
    ours = MusicFMPretrain(config)
    return ours.train(), ReferenceMusicFM(ours).train()


def conformer_forwards(ours: MusicFMPretrain, reference: ReferenceMusicFM, batch: int, frames: int,
                       dtypes: list[str]) -> dict:
    """The conformer alone, forward in eval mode (extraction's path), ours against transformers'."""
    from backbone_speed import autocast

    x = torch.randn(batch, frames, ours.config.backbone.conformer.dim, device=next(ours.parameters()).device)

    def forward(module, dtype):
        module.eval()
        with torch.no_grad(), autocast(dtype):
            module(x)
        module.train()

    return {**{("conformer ours", d): (lambda d=d: forward(ours.backbone.conformer, d)) for d in dtypes},
            **{("conformer hf", d): (lambda d=d: forward(reference.conformer, d)) for d in dtypes}}

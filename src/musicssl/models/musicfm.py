"""MusicFM's encoder (Won, Hung, Le, arXiv 2311.03318; github.com/minzwon/musicfm, `MusicFM25Hz`):
a conformer over the log-mel, the model the BEST-RQ family (MusicFM, MuQ: tencent-ailab/MuQ
`MuQModel`, the same modules) trains (docs/method.md §8).

    wav (24 kHz) ─> log-mel dB, n_fft 2048, hop 240, 128 mels, last frame dropped (100 Hz)
        ─> (x - mean) / std  (one global pair: MusicFM's *_stats.json)
        ─> 2 residual Conv2d blocks, stride 2 in frequency and time (512 channels) ─> Linear (25 Hz)
        ─> Conformer (rotary positions, models/conformer.py) ─> L + 1 hidden states

Parameter names are MusicFM's (`conv.conv.0.conv1.weight`, `conformer.layers.3...`), so its
published state dict loads as it is, and MuQ's (the same modules under `model.`; interop/musicfm.py).
One token per whole 40 ms: a tail of
fewer than 960 samples gives no token (MusicFM's conv would emit a partial one), so n samples give
n // 960 tokens and chunked extraction lines up with a single pass on whole tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import Tensor, nn

from musicssl.models.bestrq import (LogMel, RandomProjectionQuantizer, masked_prediction_losses, stack_frames,
                                    tokens_per_length, waveform_block_mask)
from musicssl.models.conformer import ConformerConfig, ConformerEncoder
from musicssl.models.masking import numpy_generator
from musicssl.models.mel_rvq import MelRVQ, MelRVQConfig



@dataclass(frozen=True)
class MusicFMConfig:
    """Defaults: MusicFM25Hz's constructor (model/musicfm_25hz.py) and the conformer it builds."""

    sample_rate: int = 24_000
    n_fft: int = 2048
    mel_hop: int = 240
    n_mels: int = 128
    conv_dim: int = 512
    # The two Conv2d blocks' strides in time (in frequency both are 2): (2, 2) = 25 Hz tokens from
    # the 100 Hz mel; MuQ's 50 Hz label rate uses (2, 1).
    time_strides: tuple[int, int] = (2, 2)
    conformer: ConformerConfig = field(default_factory=ConformerConfig)
    # MusicFM normalises the dB-mel by one global mean / std, measured on its training set
    # (fma_stats.json / msd_stats.json); None until measured or read from those files.
    mel_mean: float | None = None
    mel_std: float | None = None

    def __post_init__(self) -> None:
        if any(stride not in (1, 2) for stride in self.time_strides) or len(self.time_strides) != 2:
            raise ValueError(f"time_strides must be two of 1 or 2, got {self.time_strides}")
        if self.n_mels % 4:
            raise ValueError(f"n_mels must be a multiple of 4 (two stride-2 blocks in frequency), got {self.n_mels}")
        if (self.mel_mean is None) != (self.mel_std is None) or (self.mel_std is not None and self.mel_std <= 0):
            raise ValueError(f"mel_mean and mel_std go together, std > 0; got {self.mel_mean}, {self.mel_std}")

    # What extraction reads of a backbone's config (extract.Encoder)
    @property
    def hop(self) -> int:
        return self.mel_hop * self.time_strides[0] * self.time_strides[1]

    @property
    def receptive_field(self) -> int:
        return self.hop  # one token per whole hop (module docstring)

    @property
    def frame_rate_hz(self) -> float:
        return self.sample_rate / self.hop

    @property
    def num_layers(self) -> int:
        return self.conformer.num_layers

    @property
    def dim(self) -> int:
        return self.conformer.dim

    @property
    def normalize_waveform(self) -> bool:
        return False  # the mel is normalised instead

    @property
    def layerdrop(self) -> float:
        return self.conformer.layerdrop


def musicfm_config(preset: str, **changes) -> MusicFMConfig:
    """`large` (MusicFM's published 330M shape), `base` (12 x 768, heads 12, FFN 3072: our 95M
    transformer's widths), `tiny` (tests, CPU demos)."""
    if preset == "large":
        return MusicFMConfig(**changes)
    if preset == "base":
        return replace(MusicFMConfig(conformer=ConformerConfig(dim=768, num_heads=12, ffn_dim=3072)), **changes)
    if preset == "tiny":
        tiny = ConformerConfig(dim=64, num_layers=2, num_heads=2, ffn_dim=256, kernel=15)
        return replace(MusicFMConfig(conv_dim=16, conformer=tiny), **changes)
    raise ValueError(f"unknown MusicFM preset {preset!r}; known: tiny, base, large")


class Res2dModule(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus a strided conv3x3 -> BN shortcut, -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: tuple[int, int]):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, stride=stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        # MusicFM builds the shortcut conv whenever the shape changes, which both blocks do
        self.conv3 = nn.Conv2d(in_channels, out_channels, 3, padding=1, stride=stride)
        self.bn3 = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(self.bn3(self.conv3(x)) + out)


class Conv2dSubsampling(nn.Module):
    def __init__(self, channels: int, n_mels: int, dim: int, time_strides: tuple[int, int] = (2, 2)):
        super().__init__()
        self.conv = nn.Sequential(Res2dModule(1, channels, (2, time_strides[0])),
                                  Res2dModule(channels, channels, (2, time_strides[1])))
        self.linear = nn.Linear(channels * (n_mels // 4), dim)

    def forward(self, mel: Tensor) -> Tensor:
        """(B, T, M) normalised mel -> (B, T', D), T' = ceil(T / 4) at time strides (2, 2)."""
        x = self.conv(mel.transpose(1, 2)[:, None])  # (B, C, M / 4, T / 4)
        batch, channels, bands, frames = x.shape
        # MusicFM's `b c f t -> b t (c f)`: channel-major features per token
        return self.linear(x.permute(0, 3, 1, 2).reshape(batch, frames, channels * bands))


@dataclass
class MelConformerOutput:
    layers: tuple[Tensor, ...]  # L + 1 x (B, T, D): [0] the conformer input, [L] after its final LayerNorm
    lengths: Tensor  # (B,) tokens per item

    @property
    def last_hidden_state(self) -> Tensor:
        return self.layers[-1]


class MelConformer(nn.Module):
    """The encoder extraction and probing use; forward as a Backbone's (extract.Encoder)."""

    def __init__(self, config: MusicFMConfig):
        super().__init__()
        if config.mel_mean is None:
            raise ValueError("MusicFMConfig.mel_mean / mel_std are unset: the model needs its mel statistics "
                             "(MusicFM's *_stats.json)")
        self.config = config
        self.log_mel = LogMel(config.sample_rate, config.n_fft, config.mel_hop, config.n_mels)
        self.conv = Conv2dSubsampling(config.conv_dim, config.n_mels, config.conformer.dim, config.time_strides)
        self.conformer = ConformerEncoder(config.conformer)

    def frame_lengths(self, sample_lengths: Tensor) -> Tensor:
        return torch.div(sample_lengths, self.config.hop, rounding_mode="floor")

    def normalized_mel(self, wav: Tensor) -> Tensor:
        """(B, n) -> (B, n // 240, M) in float32 whatever the autocast (MusicFM computes its
        features in float32 too); a waveform too short for the reflect padding is zero-padded."""
        config = self.config
        if wav.shape[1] <= config.n_fft // 2:
            wav = nn.functional.pad(wav, (0, config.n_fft // 2 + 1 - wav.shape[1]))
        with torch.autocast(wav.device.type, enabled=False):
            mel = self.log_mel(wav.float())
        return (mel - config.mel_mean) / config.mel_std

    def forward(self, wav: Tensor, lengths: Tensor | None = None, num_layers: int | None = None,
                mel: Tensor | None = None) -> MelConformerOutput:
        """wav (B, n) at 24 kHz, lengths (B,) samples (None: all n). `mel` (B, T, M) replaces the
        normalised mel of `wav` (pre-training passes the masked one). Every layer is computed
        (`num_layers` is accepted for the Backbone's signature)."""
        if wav.dim() != 2:
            raise ValueError(f"wav must be (batch, samples), got shape {tuple(wav.shape)}")
        if lengths is None:
            lengths = torch.full((wav.shape[0],), wav.shape[1], dtype=torch.long, device=wav.device)
        tokens = wav.shape[1] // self.config.hop
        if tokens == 0:
            raise ValueError(f"an input has {wav.shape[1]} samples, fewer than one {self.config.hop}-sample token")
        x = self.conv(self.normalized_mel(wav) if mel is None else mel)[:, :tokens]  # (B, T, D)
        token_lengths = self.frame_lengths(lengths)
        padded = bool((token_lengths < tokens).any())
        layers = self.conformer(x, token_lengths if padded else None)
        return MelConformerOutput(layers, token_lengths)

    # the trainer's view of a backbone (train/trainer.py, train/launch.py)
    @property
    def feature_extractor(self) -> nn.Module:
        return self.conv  # `trainer.cnn_lr_scale` scales the front end's learning rate

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def encoder(self) -> ConformerEncoder:
        return self.conformer  # the trainer seeds its LayerDrop generator here


# ---------------------------------------------------------------------------------------------
# pre-training: MusicFM's BEST-RQ (docs/method.md §9)


@dataclass(frozen=True)
class MusicFMPretrainConfig:
    """MusicFM25Hz's targets, masking and head around the encoder; defaults are its constructor's."""

    backbone: MusicFMConfig = field(default_factory=MusicFMConfig)
    frames_per_token: int = 4  # mel frames stacked per target: 4 x 128 = 512 dims at 25 Hz
    code_dim: int = 16
    codebook_size: int = 4096
    num_codebooks: int = 1
    quantizer_seed: int = 142
    waveform_block_seconds: float = 0.4  # mask_hop
    waveform_mask_prob: float = 0.6  # mask_prob
    waveform_noise_std: float = 0.1
    stats_crops: int = 64  # crops measured for the mel statistics of a new run
    degenerate_share: float = 0.9  # warn when one code holds more of a codebook's targets
    # MuQ: the codes of a fitted Mel-RVQ (`musicssl rvq fit`, models/mel_rvq.py) instead of the random
    # projection, and the cross-entropy averaged over (frame, codebook) pairs, not summed over codebooks
    # [code: MUQ `muq_model.py` get_loss]. None / "sum": MusicFM.
    rvq: MelRVQConfig | None = None
    codebook_loss: Literal["sum", "mean"] = "sum"

    def __post_init__(self) -> None:
        if self.backbone.mel_hop * self.frames_per_token != self.backbone.hop:
            raise ValueError(f"mel_hop x frames_per_token = {self.backbone.mel_hop} x {self.frames_per_token} must "
                             f"equal the encoder's token hop {self.backbone.hop}")
        block = self.waveform_block_seconds * self.backbone.sample_rate
        if abs(block - round(block)) > 1e-6 or round(block) % self.backbone.hop:
            raise ValueError(f"waveform_block_seconds {self.waveform_block_seconds} must be whole tokens")
        if self.rvq is not None:
            self._check_rvq(self.rvq)

    def _check_rvq(self, rvq: MelRVQConfig) -> None:
        """The tokenizer must see the mel the encoder sees and give the codes the head predicts."""
        b = self.backbone
        mine = (b.sample_rate, b.n_fft, b.mel_hop, b.n_mels, self.frames_per_token, b.mel_mean, b.mel_std,
                self.num_codebooks, self.codebook_size)
        theirs = (rvq.sample_rate, rvq.n_fft, rvq.mel_hop, rvq.n_mels, rvq.frames_per_token, rvq.mel_mean,
                  rvq.mel_std, rvq.num_codebooks, rvq.codebook_size)
        if mine != theirs:
            raise ValueError(f"the Mel-RVQ (rate, n_fft, hop, mels, frames per token, mel mean, std, codebooks, "
                             f"codes) {theirs} does not fit the model's {mine}")

    # what the mel statistics step reads (train/tasks.py measure_mel_statistics)
    n_fft = property(lambda self: self.backbone.n_fft)
    mel_hop = property(lambda self: self.backbone.mel_hop)
    n_mels = property(lambda self: self.backbone.n_mels)
    mel_mean = property(lambda self: self.backbone.mel_mean)
    mel_std = property(lambda self: self.backbone.mel_std)

    def with_mel_statistics(self, mean: float, std: float) -> MusicFMPretrainConfig:
        return replace(self, backbone=replace(self.backbone, mel_mean=mean, mel_std=std))


def musicfm_pretrain_config(preset: str) -> MusicFMPretrainConfig:
    return MusicFMPretrainConfig(backbone=musicfm_config(preset))


def muq_pretrain_config(preset: str, rvq: MelRVQConfig) -> MusicFMPretrainConfig:
    """MuQ: MusicFM's model predicting a fitted Mel-RVQ's codes, with the RVQ's mel statistics."""
    backbone = musicfm_config(preset, mel_mean=rvq.mel_mean, mel_std=rvq.mel_std)
    return MusicFMPretrainConfig(backbone=backbone, rvq=rvq, num_codebooks=rvq.num_codebooks,
                                 codebook_size=rvq.codebook_size, codebook_loss="mean")


class MusicFMPretrain(nn.Module):
    """Targets from the clean waveform (float32, each item on its own length), the encoder on the
    block-masked waveform, cross-entropy on the masked tokens: BestRQ.forward's contract."""

    def __init__(self, config: MusicFMPretrainConfig):
        super().__init__()
        self.config = config
        self.backbone = MelConformer(config.backbone)
        if config.rvq is None:
            self.quantizer = RandomProjectionQuantizer(config.backbone.n_mels * config.frames_per_token,
                                                       config.code_dim, config.codebook_size, config.num_codebooks,
                                                       config.quantizer_seed)
        else:  # its weights come from the fitted directory (the task loads them); frozen
            self.quantizer = MelRVQ(config.rvq).requires_grad_(False)
        self.register_buffer("mel_statistics", torch.tensor([config.mel_mean, config.mel_std]))
        self.head = nn.Linear(config.backbone.dim, config.codebook_size * config.num_codebooks)

    def head_state_dict(self) -> dict[str, Tensor]:
        return {name: tensor for name, tensor in self.state_dict().items() if not name.startswith("backbone.")}

    @torch.no_grad()
    def targets(self, wav: Tensor, lengths: Tensor) -> Tensor:
        """(B, n), (B,) -> (B, n // hop, S) token ids, -1 past each item's whole tokens."""
        if isinstance(self.quantizer, MelRVQ):
            return self.quantizer.tokens(wav, lengths)
        return tokens_per_length(  # (b, t, M) normalised mel -> stacked frames -> tokens
            wav, lengths, self.config.backbone.hop, self.config.num_codebooks,
            lambda items: self.quantizer(stack_frames(self.backbone.normalized_mel(items), self.config.frames_per_token)))

    def forward(self, wav: Tensor, lengths: Tensor | None, mask: Tensor | None = None,
                generator=None) -> dict[str, Tensor]:
        """As BestRQ.forward (models/bestrq.py), with MusicFM's waveform masking always (`mask` is
        not used: the masked frames are those of the noised blocks)."""
        config, hop = self.config, self.config.backbone.hop
        lengths = lengths if lengths is not None else torch.full((wav.shape[0],), wav.shape[1], device=wav.device)
        targets = self.targets(wav, lengths)  # (B, T, S)
        frames = targets.shape[1]
        block = round(config.waveform_block_seconds * config.backbone.sample_rate)
        noised, mask = waveform_block_mask(wav, lengths, frames, hop, block, config.waveform_mask_prob,
                                           config.waveform_noise_std, numpy_generator(generator))
        out = self.backbone(noised, lengths)
        masked = mask & (targets >= 0).all(-1)  # (B, T): padding has no target
        chosen = targets[masked]  # (M, S)
        logits = self.head(out.last_hidden_state[masked]).float().view(-1, config.num_codebooks, config.codebook_size)
        result = masked_prediction_losses(logits, chosen, out.last_hidden_state)
        if config.codebook_loss == "mean":  # the trainer divides the summed loss by this
            result["sample_size"] = result["sample_size"] * config.num_codebooks
        return result

"""BEST-RQ on the backbone: masked prediction of frozen random-projection tokens of the log-mel
(docs/method.md §8). MusicFM's "BERT + random tokens" ablation, on our CNN + Transformer.

    wav ──> log-mel dB (100 Hz) ─> (x - mean) / std ─> stack 2 frames (50 Hz, 256-d)
        │       ─> frozen projection (256 -> 16) ─> L2 norm ─> nearest frozen N(0, 1) code  = targets
        └─> masking (span: mask embedding | waveform: 400 ms blocks of N(0, 0.1) noise)
            ─> Backbone ─> last hidden state ─> Linear (D -> codebooks x K) ─> cross-entropy on masked frames

The targets are computed from the clean waveform, each item on its own length (so padding never
changes a target), under no_grad; the projection and codebooks are buffers drawn from a seed, saved
with the heads and never trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from musicssl.models.backbone import Backbone
from musicssl.models.backbone_config import BackboneConfig, backbone_preset
from musicssl.models.masking import MaskConfig, mask_spans, numpy_generator
from musicssl.models.musichubert import codebook_suffixes  # the same metric names as MusicHuBERT's codebooks

DB_FLOOR = 1e-10  # torchaudio AmplitudeToDB's amin: power below it reads as -100 dB
MASKINGS = ("span", "waveform")


@dataclass(frozen=True)
class BestRQConfig:
    backbone: BackboneConfig = field(default_factory=lambda: backbone_preset("hubert_base"))
    # Log-mel at the backbone's 16 kHz (docs/method.md §8.1): MusicFM's 128 mels and 100 Hz frame
    # rate (hop 240 at 24 kHz = 10 ms = hop 160 here); n_fft 1024 = 64 ms, the power of two nearest
    # MusicFM's 85 ms window (2048 at 24 kHz).
    n_fft: int = 1024
    mel_hop: int = 160
    n_mels: int = 128
    # Mel frames stacked per token: 2 x 10 ms = one 20 ms backbone frame, so every frame has a
    # target (MusicFM stacks 4 for 25 Hz tokens; its ablation found 25 ~ 50 Hz).
    frames_per_token: int = 2
    # One global mean / std of the dB-mel (MusicFM's *_stats.json, docs/method.md §8.2); None: measured on the corpus
    # when the run starts (`stats_crops` crops) and written into the run's config.
    mel_mean: float | None = None
    mel_std: float | None = None
    stats_crops: int = 64
    code_dim: int = 16  # MusicFM codebook_dim (docs/method.md §8.3)
    codebook_size: int = 4096  # MusicFM codebook_size
    num_codebooks: int = 1  # MusicFM 1; codebook i is drawn from seed quantizer_seed + i
    quantizer_seed: int = 142  # MusicFM's seed
    masking: str = "span"  # "span" (ours, models/masking.py) | "waveform" (MusicFM; docs/method.md §8.4)
    mask: MaskConfig = MaskConfig(mask_prob=0.8, mask_length=10, min_masks=2)  # HuBERT base spans
    waveform_block_seconds: float = 0.4  # MusicFM mask_hop
    waveform_mask_prob: float = 0.6  # MusicFM mask_prob
    waveform_noise_std: float = 0.1  # MusicFM's masking noise
    # A warning line when one code holds more than this share of a codebook's targets (§8.5).
    degenerate_share: float = 0.9

    def __post_init__(self) -> None:
        if self.masking not in MASKINGS:
            raise ValueError(f"masking must be one of {', '.join(MASKINGS)}, got {self.masking!r}")
        if self.mel_hop * self.frames_per_token != self.backbone.hop:
            raise ValueError(f"mel_hop x frames_per_token = {self.mel_hop} x {self.frames_per_token} must equal the "
                             f"backbone's hop {self.backbone.hop}: one token per frame")
        block = self.waveform_block_seconds * self.backbone.sample_rate
        if abs(block - round(block)) > 1e-6 or round(block) % self.backbone.hop:
            raise ValueError(f"waveform_block_seconds {self.waveform_block_seconds} must be a whole number of "
                             f"{self.backbone.hop}-sample frames")
        if (self.mel_mean is None) != (self.mel_std is None) or (self.mel_std is not None and self.mel_std <= 0):
            raise ValueError(f"mel_mean and mel_std go together, std > 0; got {self.mel_mean}, {self.mel_std}")
        if min(self.num_codebooks, self.codebook_size, self.code_dim, self.stats_crops) < 1:
            raise ValueError("num_codebooks, codebook_size, code_dim and stats_crops must be >= 1")

    @property
    def token_dim(self) -> int:
        return self.n_mels * self.frames_per_token

    def with_mel_statistics(self, mean: float, std: float) -> BestRQConfig:
        return replace(self, mel_mean=mean, mel_std=std)


def bestrq_config(preset: str, **changes) -> BestRQConfig:
    """`base` (our 95M backbone) or `tiny` (CPU tests and demos), with HuBERT's backbone settings."""
    return BestRQConfig(backbone=backbone_preset(preset, "hubert"), **changes)


# ---------------------------------------------------------------------------------------------
# targets: log-mel -> stacked frames -> random-projection tokens


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> Tensor:
    """(n_fft // 2 + 1, n_mels) HTK-scale triangles from 0 Hz to Nyquist, unnormalised:
    torchaudio.functional.melscale_fbanks(norm=None, mel_scale="htk"), which MusicFM uses."""
    hz_to_mel = lambda hz: 2595.0 * math.log10(1.0 + hz / 700.0)  # noqa: E731
    all_freqs = torch.linspace(0, sample_rate // 2, n_fft // 2 + 1)  # (F,)
    mel_points = torch.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2), n_mels + 2)
    hz_points = 700.0 * (10.0 ** (mel_points / 2595.0) - 1.0)  # (M + 2,)
    widths = hz_points[1:] - hz_points[:-1]  # (M + 1,)
    slopes = hz_points[None, :] - all_freqs[:, None]  # (F, M + 2)
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    return torch.clamp(torch.minimum(down, up), min=0.0)  # (F, M)


class LogMel(nn.Module):
    """Power mel spectrogram in dB, torchaudio's MelSpectrogram + AmplitudeToDB defaults (periodic
    Hann window of n_fft, centred frames with reflect padding), the last frame dropped as MusicFM
    does: n samples give n // hop frames."""

    def __init__(self, sample_rate: int, n_fft: int, hop: int, n_mels: int):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("filterbank", mel_filterbank(sample_rate, n_fft, n_mels), persistent=False)

    def forward(self, wav: Tensor) -> Tensor:
        """(B, n) float, n > n_fft // 2 (reflect padding) -> (B, n // hop, n_mels) dB, float32."""
        if wav.shape[-1] <= self.n_fft // 2:
            raise ValueError(f"log-mel needs more than {self.n_fft // 2} samples, got {wav.shape[-1]}")
        spectrum = torch.stft(wav.float(), self.n_fft, self.hop, window=self.window, center=True,
                              pad_mode="reflect", return_complex=True)  # (B, F, n // hop + 1)
        power = spectrum.abs().pow(2.0)
        mel = torch.matmul(power.transpose(-1, -2), self.filterbank)  # (B, T + 1, M)
        return 10.0 * torch.log10(torch.clamp(mel, min=DB_FLOOR))[:, :-1]  # (B, T, M)


def stack_frames(mel: Tensor, frames_per_token: int) -> Tensor:
    """(B, T, M) -> (B, T // s, s * M): s consecutive frames side by side, frame-major (MusicFM's
    `b f (t s) -> b t (s f)`); a remainder of fewer than s frames is dropped."""
    batch, frames, bands = mel.shape
    tokens = frames // frames_per_token
    return mel[:, :tokens * frames_per_token].reshape(batch, tokens, frames_per_token * bands)


class RandomProjectionQuantizer(nn.Module):
    """Frozen random projection and codebook per codebook i, drawn from seed + i in MusicFM's
    order (Xavier-normal projection, then N(0, 1) codes, from one torch generator), so a seed gives
    MusicFM's matrices. Tokens: the nearest code by L2 distance after L2-normalising both, computed
    with MusicFM's operations (einsum, cdist codes-by-frames, argmin over codes)."""

    def __init__(self, input_dim: int, code_dim: int, codebook_size: int, num_codebooks: int, seed: int):
        super().__init__()
        projections, codebooks = [], []
        for index in range(num_codebooks):
            generator = torch.Generator().manual_seed(seed + index)
            projection = nn.init.xavier_normal_(torch.empty(input_dim, code_dim), generator=generator)
            projections.append(projection)
            codebooks.append(nn.init.normal_(torch.empty(codebook_size, code_dim), generator=generator))
        self.register_buffer("projection", torch.stack(projections))  # (S, input_dim, code_dim)
        self.register_buffer("codebook", torch.stack(codebooks))  # (S, K, code_dim)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """(B, T, input_dim) normalised stacked frames -> (B, T, S) int64 token ids."""
        batch, frames, _ = x.shape
        tokens = []
        for projection, codebook in zip(self.projection, self.codebook):
            projected = torch.einsum("b n d, d e -> b n e", x.float(), projection)  # (B, T, E)
            flat = F.normalize(projected.reshape(batch * frames, -1), dim=1, p=2)  # (B*T, E)
            distances = torch.cdist(F.normalize(codebook, dim=1, p=2), flat)  # (K, B*T)
            tokens.append(distances.argmin(dim=0).reshape(batch, frames))
        return torch.stack(tokens, dim=-1)  # (B, T, S)


# ---------------------------------------------------------------------------------------------
# waveform masking (MusicFM)


def tokens_per_length(wav: Tensor, lengths: Tensor, hop: int, num_codebooks: int, tokenize,
                      min_samples: int = 0) -> Tensor:
    """(B, n), (B,) -> (B, n // hop, S) token ids, -1 past each item's whole tokens: `tokenize`
    (b, length) -> (b, T', S) runs on the items of each length together, on their own samples only,
    so padding never changes a target. Items shorter than `min_samples` get no tokens."""
    tokens = torch.full((wav.shape[0], wav.shape[1] // hop, num_codebooks), -1, dtype=torch.long, device=wav.device)
    for length in torch.unique(lengths).tolist():
        count = length // hop
        if count == 0 or length < min_samples:
            continue
        rows = (lengths == length).nonzero().squeeze(1)
        tokens[rows, :count] = tokenize(wav[rows, :length])[:, :count]
    return tokens


def waveform_block_mask(wav: Tensor, lengths: Tensor, frames: int, hop: int, block_samples: int, prob: float,
                        noise_std: float, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """MusicFM's masking: whole blocks of `block_samples` (a trailing partial block never), each
    masked with `prob`, their samples replaced by N(0, noise_std^2) noise (padding left alone).
    Returns the noised (B, n) waveform and the (B, frames) bool mask of the frames in masked blocks."""
    batch, samples = wav.shape
    blocks = torch.from_numpy(rng.random((batch, samples // block_samples)) < prob)  # (B, n // block)
    in_block = blocks.repeat_interleave(block_samples, dim=1)  # (B, whole blocks' samples)
    sample_mask = F.pad(in_block, (0, samples - in_block.shape[1])).to(wav.device)  # (B, n)
    sample_mask &= torch.arange(samples, device=wav.device)[None] < lengths[:, None]
    noise_generator = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
    noise = (torch.randn(wav.shape, generator=noise_generator) * noise_std).to(wav.device, wav.dtype)
    frames_per_block = block_samples // hop
    frame_mask = F.pad(blocks.repeat_interleave(frames_per_block, dim=1), (0, frames))[:, :frames]  # (B, T)
    return torch.where(sample_mask, noise, wav), frame_mask.to(wav.device)


# ---------------------------------------------------------------------------------------------
# the model


class BestRQ(nn.Module):
    def __init__(self, config: BestRQConfig):
        super().__init__()
        if config.mel_mean is None:
            raise ValueError("BestRQConfig.mel_mean / mel_std are unset: measure them on the corpus first "
                             "(musicssl pretrain bestrq does)")
        self.config = config
        self.backbone = Backbone(config.backbone)
        self.log_mel = LogMel(config.backbone.sample_rate, config.n_fft, config.mel_hop, config.n_mels)
        self.quantizer = RandomProjectionQuantizer(config.token_dim, config.code_dim, config.codebook_size,
                                                   config.num_codebooks, config.quantizer_seed)
        # Kept with the heads, so a checkpoint shows which statistics its targets were made with.
        self.register_buffer("mel_statistics", torch.tensor([config.mel_mean, config.mel_std]))
        self.head = nn.Linear(config.backbone.dim, config.codebook_size * config.num_codebooks)

    def head_state_dict(self) -> dict[str, Tensor]:
        """Pre-training head and frozen quantiser (not part of the transformers export)."""
        return {name: tensor for name, tensor in self.state_dict().items() if not name.startswith("backbone.")}

    @torch.no_grad()
    def targets(self, wav: Tensor, lengths: Tensor) -> Tensor:
        """(B, n) clean waveform, (B,) lengths -> (B, n // backbone hop, S) token ids, -1 past each
        item's own tokens. Items are computed on their own samples, grouped by length, in float32
        whatever the autocast around (MusicFM computes its features in float32 too, MFM L161):
        a bf16 projection would move frames to other codes."""
        with torch.autocast(wav.device.type, enabled=False):
            return self._targets(wav.float(), lengths)

    def _targets(self, wav: Tensor, lengths: Tensor) -> Tensor:
        config = self.config

        def tokenize(items: Tensor) -> Tensor:
            mel = (self.log_mel(items) - config.mel_mean) / config.mel_std  # (b, t, M)
            return self.quantizer(stack_frames(mel, config.frames_per_token))

        return tokens_per_length(wav, lengths, config.backbone.hop, config.num_codebooks, tokenize,
                                 min_samples=config.n_fft // 2 + 1)

    def forward(self, wav: Tensor, lengths: Tensor | None, mask: Tensor | None = None,
                generator=None) -> dict[str, Tensor]:
        """wav (B, n), lengths (B,) samples. `mask` (B, T) bool overrides span masking (drawn with
        `generator`); the waveform masking ignores it. Returns sums over masked frames (`loss`, the
        summed cross-entropy of every codebook; per codebook `masked_ce_sum`, `masked_correct`),
        `masked_count` = `sample_size`, and `targets` (M, S): the masked frames' token ids."""
        config = self.config
        lengths = lengths if lengths is not None else torch.full((wav.shape[0],), wav.shape[1], device=wav.device)
        targets = self.targets(wav, lengths)  # (B, T_tok, S)
        frames = int(self.backbone.frame_lengths(torch.tensor([wav.shape[1]]))[0])
        frame_lengths = self.backbone.frame_lengths(lengths)
        padding = torch.arange(frames, device=wav.device)[None] >= frame_lengths[:, None]  # (B, T)
        if config.masking == "waveform":
            block = round(config.waveform_block_seconds * config.backbone.sample_rate)
            noised, mask = waveform_block_mask(wav, lengths, frames, config.backbone.hop, block,
                                               config.waveform_mask_prob, config.waveform_noise_std,
                                               numpy_generator(generator))
            out = self.backbone(noised, lengths)
            unused = self.backbone.mask_embedding.sum() * 0  # DDP expects a gradient for every parameter
        else:
            if mask is None:
                mask = mask_spans(wav.shape[0], frames, config.mask, padding, generator, device=wav.device)
            out = self.backbone(wav, lengths, mask=mask)
            unused = torch.zeros((), device=wav.device)
        usable = min(frames, targets.shape[1])
        valid = ~padding[:, :usable] & (targets[:, :usable] >= 0).all(-1)  # (B, T')
        masked = valid & mask[:, :usable]
        chosen = targets[:, :usable][masked]  # (M, S)
        logits = self.head(out.last_hidden_state[:, :usable][masked]).float()  # (M, S * K)
        logits = logits.view(-1, config.num_codebooks, config.codebook_size)  # (M, S, K)
        return masked_prediction_losses(logits, chosen, out.last_hidden_state, unused)


def masked_prediction_losses(logits: Tensor, chosen: Tensor, hidden: Tensor, unused: Tensor | None = None
                             ) -> dict[str, Tensor]:
    """logits (M, S, K) and targets (M, S) of the M masked frames -> sums over them: `loss` (the
    codebooks' cross-entropies added, as HuBERT's label sets are), per codebook `masked_ce_sum`
    and `masked_correct`, `masked_count` = `sample_size`, and `targets`. An empty mask gives a
    zero that still reaches every parameter through `hidden` (DDP's all-reduce needs each one);
    `unused`: a zero touching parameters the forward skipped."""
    unused = torch.zeros((), device=logits.device) if unused is None else unused
    result: dict[str, Tensor] = {}
    suffixes = codebook_suffixes(logits.shape[1])
    for codebook, suffix in enumerate(suffixes):
        result[f"masked_ce_sum{suffix}"] = F.cross_entropy(logits[:, codebook], chosen[:, codebook], reduction="sum")
        result[f"masked_correct{suffix}"] = (logits[:, codebook].argmax(-1) == chosen[:, codebook]).sum().float()
    count = torch.tensor(float(chosen.shape[0]), device=logits.device)
    loss = sum(result[f"masked_ce_sum{s}"] for s in suffixes) + unused
    if chosen.shape[0] == 0:
        loss = logits.sum() * 0 + hidden.sum() * 0 + unused
        result = {key: torch.zeros((), device=logits.device) for key in result}
    result.update(loss=loss, sample_size=count, masked_count=count, targets=chosen)
    return result


def code_statistics(counts: Tensor) -> dict[str, float]:
    """counts (K,) of one codebook's targets -> share of codes used, perplexity exp(H) of the
    code distribution, and the most frequent code's share."""
    total = float(counts.sum())
    if total == 0:
        return {"usage": 0.0, "perplexity": 0.0, "top_share": 0.0}
    p = counts.double() / total
    entropy = float(-(p[p > 0] * p[p > 0].log()).sum())
    return {"usage": float((counts > 0).double().mean()), "perplexity": math.exp(entropy),
            "top_share": float(p.max())}

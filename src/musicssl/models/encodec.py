"""EnCodec's 24 kHz encoder and residual vector quantiser: the acoustic codes MERT-v1 predicts
(docs/method.md §10.3), computed natively from a checkpoint the user has.

    wav (B, n) mono 24 kHz, not normalised ─> causal conv 1 -> 32, kernel 7
        ─> 4 stages (strides 2, 4, 5, 8):  residual unit ─> ELU ─> causal conv C -> 2C, kernel 2 x stride
        ─> 2-layer LSTM over 512 channels, plus its input ─> ELU ─> causal conv 512 -> 128, kernel 7
        latents (B, 128, ceil(n / 320)), 75 Hz
        ─> stage s = 1..8: nearest of 1,024 codes to the residual (L2), residual -= that code
        codes (B, T, 8): 6 kbps

Everything mirrors the `encodec` package 0.1.1 (facebookresearch/encodec, MIT; [E] below):
`EncodecModel.encodec_model_24khz` builds `SEANetEncoder(channels=1, norm='weight_norm',
causal=True)` with its defaults (n_filters 32, ratios [8, 5, 4, 2] applied in reverse, dimension
128, one residual unit per stage of kernels [3, 1], compress 2, a 1 x 1 convolution as the
shortcut (true_skip False), ELU alpha 1, reflect padding, 2 LSTM layers), `audio_normalize=False`
and `segment=None` (the whole input in one pass, no rescaling) [E model.py:265-281]. The quantiser
holds 32 codebooks of 1,024 x 128 (`n_q = 1000 * 24 // (75 * 10)`, `bins=1024`, [E model.py:232-237]);
a bandwidth of 6 kbps uses the first `floor(6 / (log2(1024) * 75 / 1000)) = 8`
[E quantization/vq.py:86-98]. The float32 operations are EnCodec's, in its layouts (weight norm as
`torch._weight_norm(v, g, 0)`, the distance formula, `max(...).indices`), so the same weights give
the same latents and codes (`make parity-encodec`, tests/models/test_encodec.py).

The published checkpoint (`encodec_24khz-d7cc33bc.th`, a pickled state dict of `EncodecModel`) is
read by `musicssl.interop.encodec`, which maps its names onto these modules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class EncodecConfig:
    """EnCodec 24 kHz as `encodec_model_24khz` builds it; the only EnCodec we read (the 48 kHz model is
    stereo, non-causal, normalised and segmented: another architecture)."""

    sample_rate: int = 24_000  # [E model.py:272]
    channels: int = 1  # mono [E model.py:273]
    n_filters: int = 32  # SEANetEncoder default [E seanet.py:91]
    ratios: tuple[int, ...] = (8, 5, 4, 2)  # the decoder's order; the encoder downsamples by 2, 4, 5, 8
    dimension: int = 128  # SEANetEncoder default: the latent and code width
    kernel_size: int = 7  # the first and the last convolution
    residual_kernel_size: int = 3  # a residual unit's kernels are [3, 1], dilations [1, 1]
    compress: int = 2  # a residual unit's hidden width is C / 2
    lstm_layers: int = 2
    codebook_size: int = 1024  # `bins` [E model.py:236]
    total_codebooks: int = 32  # n_q for 24 kbps, the largest target bandwidth
    bandwidth_kbps: float = 6.0  # MERT-v1's codes: 8 codebooks
    normalize: bool = False  # `audio_normalize=False`: no per-segment volume rescaling
    segment_seconds: float | None = None  # the whole input at once, no overlap-add

    @property
    def hop(self) -> int:
        return math.prod(self.ratios)  # 320 samples

    @property
    def frame_rate(self) -> int:
        return math.ceil(self.sample_rate / self.hop)  # 75 Hz [E model.py:103]

    @property
    def num_codebooks(self) -> int:
        """Codebooks at `bandwidth_kbps`: each carries log2(bins) bits per frame [E vq.py:86-98]."""
        per_codebook = math.log2(self.codebook_size) * self.frame_rate / 1000
        return int(max(1, math.floor(self.bandwidth_kbps / per_codebook)))  # 8

    @property
    def lstm_width(self) -> int:
        return self.n_filters * 2 ** len(self.ratios)  # 512


# ---------------------------------------------------------------------------------------------
# the encoder


def _reflect_pad(x: Tensor, left: int, right: int) -> Tensor:
    """EnCodec's `pad1d(mode='reflect')` [E conv.py:79-95]: F.pad's reflection needs more samples than
    the padding, so a short input gets zeros on the right first, which are cut again afterwards."""
    length = x.shape[-1]
    extra = max(left, right) - length + 1 if length <= max(left, right) else 0
    if extra:
        x = F.pad(x, (0, extra))
    padded = F.pad(x, (left, right), mode="reflect")
    return padded[..., :padded.shape[-1] - extra]


class CausalConv1d(nn.Module):
    """EnCodec's `SConv1d(causal=True, norm='weight_norm', pad_mode='reflect')` [E conv.py:175-210]:
    a Conv1d under torch's weight_norm (dim 0: weight = g v / |v| per output channel), its input
    reflect-padded by (kernel - 1) x dilation - (stride - 1) on the left and on the right by what
    makes the last window full, so n samples give ceil(n / stride) frames."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.stride, self.dilation, self.kernel_size = stride, dilation, kernel_size
        self.weight_g = nn.Parameter(torch.ones(out_channels, 1, 1))
        self.weight_v = nn.Parameter(torch.zeros(out_channels, in_channels, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        """(B, in, n) -> (B, out, ceil(n / stride))."""
        padding = (self.kernel_size - 1) * self.dilation - (self.stride - 1)
        length = x.shape[-1]
        # get_extra_padding_for_conv1d [E conv.py:54-61], in integers: the same number
        frames = math.ceil((length - self.kernel_size + padding) / self.stride) + 1
        extra = (frames - 1) * self.stride + (self.kernel_size - padding) - length
        x = _reflect_pad(x, padding, extra)
        weight = torch._weight_norm(self.weight_v, self.weight_g, 0)
        return F.conv1d(x, weight, self.bias, self.stride, dilation=self.dilation)


class ResidualUnit(nn.Module):
    """`SEANetResnetBlock` [E seanet.py:21-63]: shortcut(x) + conv_b(ELU(conv_a(ELU(x)))), conv_a of
    kernel 3 to C / 2 channels, conv_b of kernel 1 back to C, the shortcut a kernel-1 convolution."""

    def __init__(self, channels: int, kernel_size: int, compress: int):
        super().__init__()
        hidden = channels // compress
        self.conv_a = CausalConv1d(channels, hidden, kernel_size)
        self.conv_b = CausalConv1d(hidden, channels, 1)
        self.shortcut = CausalConv1d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T) -> (B, C, T)."""
        return self.shortcut(x) + self.conv_b(F.elu(self.conv_a(F.elu(x))))


class DownsampleStage(nn.Module):
    """One stride of the encoder: a residual unit, ELU, then a causal conv of kernel 2 x stride that
    doubles the channels [E seanet.py:113-130]."""

    def __init__(self, channels: int, stride: int, config: EncodecConfig):
        super().__init__()
        self.residual = ResidualUnit(channels, config.residual_kernel_size, config.compress)
        self.down = CausalConv1d(channels, 2 * channels, 2 * stride, stride=stride)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T) -> (B, 2C, ceil(T / stride))."""
        return self.down(F.elu(self.residual(x)))


class EncodecEncoder(nn.Module):
    """`SEANetEncoder` of the 24 kHz model: waveform -> 128-d latents at 75 Hz."""

    def __init__(self, config: EncodecConfig):
        super().__init__()
        channels = config.n_filters
        self.stem = CausalConv1d(config.channels, channels, config.kernel_size)
        stages = []
        for stride in reversed(config.ratios):  # 2, 4, 5, 8
            stages.append(DownsampleStage(channels, stride, config))
            channels *= 2
        self.stages = nn.ModuleList(stages)
        # `SLSTM` [E lstm.py]: time-major LSTM, its input added back (skip=True). Its default initialisation
        # would draw from the global generator; the weights always come from a checkpoint, so it draws
        # from a fork and loading a tokenizer leaves the caller's random stream as it was.
        with torch.random.fork_rng(devices=[]):
            self.lstm = nn.LSTM(channels, channels, config.lstm_layers)
        self.head = CausalConv1d(channels, config.dimension, config.kernel_size)

    def forward(self, wav: Tensor) -> Tensor:
        """(B, channels, n) -> (B, 128, ceil(n / 320))."""
        x = self.stem(wav)  # (B, 32, n)
        for stage in self.stages:
            x = stage(x)  # (B, 64 .. 512, ...)
        x = x.permute(2, 0, 1)  # (T, B, 512)
        y, _ = self.lstm(x)
        x = (y + x).permute(1, 2, 0)  # (B, 512, T)
        return self.head(F.elu(x))  # (B, 128, T)


# ---------------------------------------------------------------------------------------------
# the residual vector quantiser (encode only)


def nearest_codes(x: Tensor, codebook: Tensor) -> Tensor:
    """(N, D) vectors, (K, D) codebook -> (N,) index of the nearest code in L2. EnCodec's
    `EuclideanCodebook.quantize` [E core_vq.py:174-182] term for term: the distances in the same
    float32 formula, so a near-tie resolves the same way; the first of exact ties."""
    embed = codebook.t()  # (D, K)
    distance = -(x.pow(2).sum(1, keepdim=True) - 2 * x @ embed + embed.pow(2).sum(0, keepdim=True))  # (N, K)
    return distance.max(dim=-1).indices


def residual_codes(latents: Tensor, codebooks: Tensor) -> Tensor:
    """(B, D, T) latents, (S, K, D) codebooks -> (B, T, S) codes: `ResidualVectorQuantization.encode`
    [E core_vq.py:345-355]: each stage quantises what the previous ones left, in EnCodec's (B, D, T)
    layout (the subtraction there, the search on (B * T, D) rows)."""
    batch, dim, frames = latents.shape
    residual, codes = latents, []
    for codebook in codebooks:
        indices = nearest_codes(residual.transpose(1, 2).reshape(-1, dim), codebook)  # (B * T,)
        codes.append(indices.view(batch, frames))
        residual = residual - F.embedding(codes[-1], codebook).transpose(1, 2)  # (B, D, T)
    return torch.stack(codes, dim=-1)  # (B, T, S)


class EncodecTokenizer(nn.Module):
    """The encoder and the first `num_codebooks` codebooks: waveform -> codes (and latents)."""

    def __init__(self, config: EncodecConfig = EncodecConfig()):
        super().__init__()
        self.config = config
        self.encoder = EncodecEncoder(config)
        self.register_buffer("codebooks", torch.zeros(config.num_codebooks, config.codebook_size, config.dimension))

    def forward(self, wav: Tensor) -> dict[str, Tensor]:
        """(B, n) mono waveform at 24 kHz, all of one length -> {"latents": (B, 128, T), "codes": (B, T, 8)},
        T = ceil(n / 320): the last frame reads reflected samples past the end when 320 does not divide n."""
        if wav.dim() != 2 or wav.shape[1] == 0:
            raise ValueError(f"expected a waveform (B, n) with n > 0, got {tuple(wav.shape)}")
        # in the weights' dtype, float32 as EnCodec runs (float64 in tests), whatever the autocast around
        with torch.autocast(wav.device.type, enabled=False):
            latents = self.encoder(wav.to(self.codebooks.dtype)[:, None])  # (B, 1, n) -> (B, 128, T)
            return {"latents": latents, "codes": residual_codes(latents, self.codebooks)}

    @torch.no_grad()
    def tokens(self, wav: Tensor) -> Tensor:
        """(B, n) -> (B, n // 320, 8) codes: one per whole 320-sample frame, the label grid's count (a
        final partial frame, computed on reflected padding, is dropped)."""
        was_training = self.training
        self.eval()
        try:
            return self(wav)["codes"][:, :wav.shape[1] // self.config.hop]
        finally:
            self.train(was_training)

"""Signal frame features, below every layer that uses them: MFCCs (the targets of HuBERT's
first iteration, and the `mfcc` baseline of evaluation) and semitone spectra or chroma
(`PitchExtractor`: a second, harmonic codebook beside MFCC). The label presets and the deep-layer
features of later iterations are in targets/features.py.

MFCCs reproduce fairseq's HuBERT recipe (`examples/hubert/simple_kmeans/dump_mfcc_feature.py`):
`torchaudio.compliance.kaldi.mfcc(wav, sample_frequency=16000, use_energy=False)` on float audio
in [-1, 1], i.e. Kaldi's `compute-mfcc-feats` defaults with dither 0: 25 ms / 10 ms frames with
snip_edges (T = 1 + (N - 400) // 160, 0 if N < 400), per-frame DC removal, pre-emphasis 0.97,
Povey window, 512-point power spectrum, 23 triangular mel bins (1127 ln(1 + f/700), 20 Hz to
Nyquist), log floored at float32 epsilon, Kaldi's DCT-II, 13 cepstra including C0, lifter 22.
Then torchaudio `compute_deltas` (window 5, replicate edges) gives Δ and ΔΔ (Δ of Δ);
[c, Δ, ΔΔ] -> (T, 39) at 100 Hz, no CMVN. Implemented here in torch (no torchaudio), batched.

Parity: the static cepstra match kaldi-native-fbank (Kaldi's C++ in float32, same options) to
1e-3 absolute (tested) on music-like signals, white noise and digital silence, for 13 and 20
cepstra; observed max 2.0e-4 on values up to ~76 in magnitude, i.e. float32 rounding: our float64
path is just as far from knf. Both floor each mel energy at float32 epsilon before the log (so
silence gives C0 = sqrt(23) ln(eps) = -76.46); Kaldi's `energy_floor` only touches the energy
coefficient, which use_energy=False never computes. Batched output on valid frames equals
per-item output (bit-identical on CPU here), deltas included.

"mfcc60" (MusicHuBERT's 60-dim MFCC variant) is OUR READING of the paper, not a published
recipe: 20 cepstra + Δ + ΔΔ, everything else as above. Kaldi's DCT and lifter rows i < 13 do
not depend on num_ceps, so its first 13 columns equal mfcc39's.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

# Kaldi floors each mel energy at std::numeric_limits<float>::epsilon() before the log.
LOG_FLOOR = float(np.finfo(np.float32).eps)
WINDOWS = ("povey", "hanning", "hamming", "rectangular")


@dataclass(frozen=True)
class MfccConfig:
    sample_rate: int = 16000  # fairseq recipe: audio resampled to 16 kHz
    frame_length_ms: float = 25.0  # Kaldi default
    frame_shift_ms: float = 10.0  # Kaldi default -> 100 Hz, HuBERT's label rate for MFCC targets
    num_mel_bins: int = 23  # Kaldi default (torchaudio mfcc default)
    num_ceps: int = 13  # Kaldi default, includes C0; 20 for the paper's 60-dim variant (our reading)
    low_freq: float = 20.0  # Kaldi default
    high_freq: float = 0.0  # Kaldi default: 0 = Nyquist, negative = offset from Nyquist
    preemphasis: float = 0.97  # Kaldi default
    cepstral_lifter: float = 22.0  # Kaldi default
    remove_dc_offset: bool = True  # Kaldi default
    window: str = "povey"  # Kaldi default
    deltas: bool = True  # fairseq recipe: [mfcc, Δ, ΔΔ]
    delta_window: int = 5  # torchaudio compute_deltas default, as fairseq calls it

    def __post_init__(self) -> None:
        if self.window not in WINDOWS:
            raise ValueError(f"window must be one of {WINDOWS}, got {self.window!r}")
        if not 0 < self.num_ceps <= self.num_mel_bins:
            raise ValueError(f"need 0 < num_ceps <= num_mel_bins, got {self.num_ceps} and {self.num_mel_bins}")
        if self.delta_window < 3 or self.delta_window % 2 == 0:
            raise ValueError(f"delta_window must be odd and >= 3, got {self.delta_window}")
        if not 0 <= self.low_freq < self.mel_high_freq:
            raise ValueError(f"need 0 <= low_freq < high_freq, got {self.low_freq} and {self.mel_high_freq}")

    @property
    def dim(self) -> int:
        return self.num_ceps * 3 if self.deltas else self.num_ceps

    @property
    def hop(self) -> int:
        # Kaldi truncates samples-per-frame to an int; so does torchaudio.
        return int(self.sample_rate * 0.001 * self.frame_shift_ms)

    @property
    def window_samples(self) -> int:
        return int(self.sample_rate * 0.001 * self.frame_length_ms)

    @property
    def fft_size(self) -> int:
        return 1 << (self.window_samples - 1).bit_length()  # Kaldi round_to_power_of_two

    @property
    def frame_rate_hz(self) -> float:
        return self.sample_rate / self.hop

    @property
    def mel_high_freq(self) -> float:
        return self.high_freq if self.high_freq > 0 else self.sample_rate / 2 + self.high_freq


def describe(config: MfccConfig) -> dict[str, Any]:
    """JSON-able record of the feature recipe, for k-means / label metadata."""
    return {"kind": "mfcc", **dataclasses.asdict(config), "dim": config.dim, "frame_rate_hz": config.frame_rate_hz}


def num_mfcc_frames(num_samples: int, config: MfccConfig = MfccConfig()) -> int:
    """snip_edges framing: only whole windows."""
    if num_samples < config.window_samples:
        return 0
    return 1 + (num_samples - config.window_samples) // config.hop


def _window(kind: str, n: int) -> Tensor:
    phase = 2 * math.pi * torch.arange(n, dtype=torch.float64) / (n - 1)  # Kaldi windows are symmetric
    if kind == "povey":
        return (0.5 - 0.5 * torch.cos(phase)) ** 0.85
    if kind == "hanning":
        return 0.5 - 0.5 * torch.cos(phase)
    if kind == "hamming":
        return 0.54 - 0.46 * torch.cos(phase)
    return torch.ones(n, dtype=torch.float64)


def _mel(freq: Tensor | float) -> Tensor | float:
    return 1127.0 * (torch.log1p(freq / 700.0) if isinstance(freq, Tensor) else math.log1p(freq / 700.0))


def _mel_banks(config: MfccConfig) -> Tensor:
    """(fft_size // 2 + 1, num_mel_bins) triangles in the mel domain; the Nyquist row is zero as
    Kaldi only weighs bins 0 .. fft_size/2 - 1."""
    n_bins = config.fft_size // 2
    low, high = _mel(config.low_freq), _mel(config.mel_high_freq)
    step = (high - low) / (config.num_mel_bins + 1)
    edges = low + step * torch.arange(config.num_mel_bins + 2, dtype=torch.float64)  # (M + 2,)
    left, center, right = edges[:-2], edges[1:-1], edges[2:]  # (M,) each
    mel = _mel(torch.arange(n_bins, dtype=torch.float64) * config.sample_rate / config.fft_size)[:, None]  # (F, 1)
    up, down = (mel - left) / (center - left), (right - mel) / (right - center)  # (F, M)
    banks = torch.minimum(up, down).clamp(min=0.0)  # (F, M)
    return torch.cat([banks, banks.new_zeros(1, config.num_mel_bins)])  # (F + 1, M)


def _liftered_dct(config: MfccConfig) -> Tensor:
    """(num_mel_bins, num_ceps): Kaldi's DCT-II (row 0 * sqrt(1/M), others * sqrt(2/M)) with the
    lifter 1 + L/2 sin(pi i / L) folded into each output column."""
    m, c = config.num_mel_bins, config.num_ceps
    i = torch.arange(c, dtype=torch.float64)
    n = torch.arange(m, dtype=torch.float64)
    dct = torch.cos(math.pi / m * (n[None] + 0.5) * i[:, None]) * math.sqrt(2.0 / m)  # (C, M)
    dct[0] = math.sqrt(1.0 / m)
    if config.cepstral_lifter:
        lifter = 1.0 + 0.5 * config.cepstral_lifter * torch.sin(math.pi * i / config.cepstral_lifter)
        dct = dct * lifter[:, None]  # (C, M)
    return dct.T.contiguous()  # (M, C)


def compute_deltas(x: Tensor, window: int = 5, lengths: Tensor | None = None) -> Tensor:
    """torchaudio's compute_deltas along time of (B, T, C) or (T, C): sum_n n (x[t+n] - x[t-n]) /
    (2 sum_n n^2), indices clamped to [0, length - 1], i.e. replicate padding at each item's own
    last valid frame when `lengths` (B,) is given."""
    squeeze = x.dim() == 2
    x = x[None] if squeeze else x  # (B, T, C)
    batch, frames, channels = x.shape
    half = (window - 1) // 2
    if lengths is not None:
        # Frames past an item's end take its last valid frame, so they act as its replicate pad.
        lengths = lengths.to(x.device)
        last = x[torch.arange(batch, device=x.device), (lengths - 1).clamp(min=0)]  # (B, C)
        beyond = torch.arange(frames, device=x.device)[None] >= lengths[:, None]  # (B, T)
        x = torch.where(beyond[..., None], last[:, None, :], x)  # (B, T, C)
    padded = F.pad(x.transpose(1, 2), (half, half), mode="replicate")  # (B, C, T + 2h)
    # conv1d is a cross-correlation: weight k multiplies x[t + k - h], so weights are (k - h) / denom.
    weights = torch.arange(-half, half + 1, dtype=x.dtype, device=x.device)
    weights = weights / (half * (half + 1) * (2 * half + 1) / 3)
    out = F.conv1d(padded.reshape(batch * channels, 1, -1), weights.view(1, 1, -1))  # (B C, 1, T)
    out = out.view(batch, channels, frames).transpose(1, 2)  # (B, T, C)
    return out[0] if squeeze else out


class MfccExtractor(torch.nn.Module):
    """Batched Kaldi MFCCs (+ Δ, ΔΔ): wav (B, N) -> features (B, T, dim), frame_lengths (B,)."""

    def __init__(self, config: MfccConfig = MfccConfig(), dtype: torch.dtype = torch.float32):
        super().__init__()
        self.config = config
        # Built in float64 then cast once, so float32 runs carry no extra rounding from setup.
        self.register_buffer("window", _window(config.window, config.window_samples).to(dtype), persistent=False)
        self.register_buffer("mel_banks", _mel_banks(config).to(dtype), persistent=False)
        self.register_buffer("dct", _liftered_dct(config).to(dtype), persistent=False)

    def frame_lengths(self, lengths: Tensor) -> Tensor:
        valid = 1 + (lengths - self.config.window_samples).clamp(min=0) // self.config.hop
        return torch.where(lengths >= self.config.window_samples, valid, torch.zeros_like(valid))

    def cepstra(self, wav: Tensor, block_frames: int = 1024) -> Tensor:
        """(B, N) -> static MFCCs (B, T, num_ceps), every whole window. Frames go through in
        blocks: the (frames x FFT size) intermediates of a long file otherwise cost more in
        fresh-memory page faults than in arithmetic."""
        c = self.config
        frames = wav.to(self.window.dtype).unfold(-1, c.window_samples, c.hop)  # (B, T, W), a view
        blocks = [self._block_cepstra(frames[:, start:start + block_frames])
                  for start in range(0, frames.shape[1], block_frames)]
        return torch.cat(blocks, dim=1)  # (B, T, C)

    def _block_cepstra(self, frames: Tensor) -> Tensor:
        c = self.config
        if c.remove_dc_offset:
            frames = frames - frames.mean(dim=-1, keepdim=True)  # (B, t, W)
        if c.preemphasis:
            previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)  # Kaldi: x[-1] := x[0]
            frames = frames - c.preemphasis * previous  # (B, t, W)
        spectrum = torch.fft.rfft(frames * self.window, n=c.fft_size)  # (B, t, F + 1), zero-padded
        power = spectrum.real.square() + spectrum.imag.square()  # (B, t, F + 1)
        log_mel = (power @ self.mel_banks).clamp(min=LOG_FLOOR).log()  # (B, t, M)
        return log_mel @ self.dct  # (B, t, C)

    def forward(self, wav: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        c = self.config
        batch, samples = wav.shape
        lengths = torch.full((batch,), samples, device=wav.device) if lengths is None else lengths.to(wav.device)
        frame_lengths = self.frame_lengths(lengths)  # (B,)
        if samples < c.window_samples:
            return wav.new_zeros(batch, 0, c.dim, dtype=self.window.dtype), frame_lengths
        features = self.cepstra(wav)  # (B, T, C)
        if c.deltas:
            delta = compute_deltas(features, c.delta_window, frame_lengths)  # (B, T, C)
            delta2 = compute_deltas(delta, c.delta_window, frame_lengths)  # (B, T, C)
            features = torch.cat([features, delta, delta2], dim=-1)  # (B, T, 3C)
        valid = torch.arange(features.shape[1], device=wav.device)[None] < frame_lengths[:, None]  # (B, T)
        return features * valid[..., None], frame_lengths  # padding frames zeroed


# ---------------------------------------------------------------------------------------------
# pitch: a semitone spectrum (or chroma) for a second codebook


@dataclass(frozen=True)
class PitchConfig:
    """A log-compressed semitone spectrum at the MFCC frame grid: the paper's suggestion of
    harmonic targets for MusicHuBERT (MFCC clusters carry timbre, hardly pitch). OUR DESIGN,
    not a published recipe: a 256-ms Hann window gives 3.9 Hz bins, enough to split semitones
    from about MIDI 36 (65 Hz) up; lower filters widen to one FFT bin."""

    sample_rate: int = 16000
    hop: int = 160            # 100 Hz, the MFCC label rate, so both label sets share one grid
    grid_window: int = 400    # frame t is centred on the MFCC frame t: samples 160 t + 200
    window_samples: int = 4096
    low_midi: int = 24        # C1 (32.7 Hz): the lowest NSynth-range bass and keyboard notes
    num_semitones: int = 84   # 7 octaves, C1..B7 (3951 Hz), as an 84-bin CQT
    fold_octaves: bool = False  # True: 12 chroma bins (pitch class only)
    floor: float = 1e-3       # amplitude (re. a full-scale sine = 1) that log1p maps to log 2; -60 dB

    def __post_init__(self) -> None:
        top = 440.0 * 2 ** ((self.low_midi + self.num_semitones - 1 - 69) / 12)
        if top >= self.sample_rate / 2:
            raise ValueError(f"the top semitone ({top:.0f} Hz) must lie below Nyquist ({self.sample_rate / 2:g} Hz)")
        if self.window_samples < self.grid_window or self.floor <= 0:
            raise ValueError("need window_samples >= grid_window and floor > 0")

    @property
    def dim(self) -> int:
        return 12 if self.fold_octaves else self.num_semitones

    @property
    def frame_rate_hz(self) -> float:
        return self.sample_rate / self.hop


def _semitone_banks(config: PitchConfig) -> Tensor:
    """(window // 2 + 1, num_semitones) triangles in MIDI pitch: FFT bin j (pitch m_j) weighs
    max(0, 1 - |m_j - s| / w_s) into semitone s, w_s = max(1, bin spacing at s in semitones)."""
    n = config.window_samples
    freqs = torch.arange(1, n // 2 + 1, dtype=torch.float64) * config.sample_rate / n  # (F,) without DC
    pitch = 69 + 12 * torch.log2(freqs / 440.0)  # (F,)
    centres = config.low_midi + torch.arange(config.num_semitones, dtype=torch.float64)  # (S,)
    centre_hz = 440.0 * 2 ** ((centres - 69) / 12)
    width = torch.clamp(12 * torch.log2(1 + (config.sample_rate / n) / centre_hz), min=1.0)  # (S,)
    banks = (1 - (pitch[:, None] - centres[None]).abs() / width[None]).clamp(min=0.0)  # (F, S)
    return torch.cat([banks.new_zeros(1, config.num_semitones), banks])  # DC row: zero


class PitchExtractor(torch.nn.Module):
    """Batched semitone spectra: wav (B, N) -> features (B, T, dim), frame_lengths (B,), with T
    and the frame centres of MfccExtractor, so its labels line up with MFCC labels one to one.

    Per frame: Hann-windowed |FFT|^2 summed into semitone triangles (optionally folded to 12
    pitch classes) -> amplitude sqrt(E) relative to a full-scale sine -> log1p(a / floor) ->
    divided by its L2 norm when that exceeds 1, so loudness does not pick the cluster but
    near-silent frames stay near the origin."""

    def __init__(self, config: PitchConfig = PitchConfig(), dtype: torch.dtype = torch.float32):
        super().__init__()
        self.config = config
        banks = _semitone_banks(config)  # (F + 1, S)
        if config.fold_octaves:
            fold = torch.zeros(config.num_semitones, 12, dtype=torch.float64)
            fold[torch.arange(config.num_semitones), (config.low_midi + torch.arange(config.num_semitones)) % 12] = 1
            banks = banks @ fold  # (F + 1, 12)
        window = torch.hann_window(config.window_samples, periodic=False, dtype=torch.float64)
        # A full-scale sine's peak bin holds (sum(window) / 2)^2 of power: scale so its amplitude is 1.
        self.register_buffer("window", (window / (window.sum() / 2)).to(dtype), persistent=False)
        self.register_buffer("banks", banks.to(dtype), persistent=False)

    def frame_lengths(self, lengths: Tensor) -> Tensor:
        c = self.config
        valid = 1 + (lengths - c.grid_window).clamp(min=0) // c.hop
        return torch.where(lengths >= c.grid_window, valid, torch.zeros_like(valid))

    def forward(self, wav: Tensor, lengths: Tensor | None = None, block_frames: int = 512) -> tuple[Tensor, Tensor]:
        c = self.config
        batch, samples = wav.shape
        lengths = torch.full((batch,), samples, device=wav.device) if lengths is None else lengths.to(wav.device)
        frame_lengths = self.frame_lengths(lengths)  # (B,)
        frames = int(self.frame_lengths(torch.tensor([samples]))[0])
        if frames == 0:
            return wav.new_zeros(batch, 0, c.dim, dtype=self.window.dtype), frame_lengths
        pad = c.window_samples // 2 - c.grid_window // 2  # centre frame t on sample hop * t + grid_window / 2
        padded = F.pad(wav.to(self.window.dtype), (pad, pad))  # (B, N + 2 pad)
        windows = padded.unfold(-1, c.window_samples, c.hop)[:, :frames]  # (B, T, W), a view
        blocks = [self._block(windows[:, start:start + block_frames]) for start in range(0, frames, block_frames)]
        features = torch.cat(blocks, dim=1)  # (B, T, dim)
        valid = torch.arange(frames, device=wav.device)[None] < frame_lengths[:, None]  # (B, T)
        return features * valid[..., None], frame_lengths

    def _block(self, windows: Tensor) -> Tensor:
        spectrum = torch.fft.rfft(windows * self.window)  # (B, t, F + 1)
        power = spectrum.real.square() + spectrum.imag.square()
        amplitude = (power @ self.banks).clamp(min=0.0).sqrt()  # (B, t, dim)
        compressed = torch.log1p(amplitude / self.config.floor)  # (B, t, dim)
        norm = compressed.norm(dim=-1, keepdim=True).clamp(min=1.0)  # (B, t, 1)
        return compressed / norm


def describe_pitch(config: PitchConfig) -> dict[str, Any]:
    """JSON-able record of the pitch feature recipe, for k-means / label metadata."""
    return {"kind": "pitch", **dataclasses.asdict(config), "dim": config.dim, "frame_rate_hz": config.frame_rate_hz}


@functools.lru_cache(maxsize=8)
def _extractor(config: MfccConfig) -> MfccExtractor:
    return MfccExtractor(config)


def mfcc(wav: np.ndarray, config: MfccConfig = MfccConfig()) -> np.ndarray:
    """One utterance (N,) float at config.sample_rate -> (T, dim) float32 on the CPU."""
    array = np.asarray(wav, dtype=np.float32)
    if array.ndim != 1:
        raise ValueError(f"mfcc expects a mono (N,) waveform, got shape {array.shape}")
    with torch.no_grad():
        features, _ = _extractor(config)(torch.from_numpy(np.ascontiguousarray(array))[None])
    return features[0].numpy()

"""MERT's musical teacher: the constant-Q transform of nnAudio's `CQT1992v2` (docs/method.md §10.2).

    wav (B, n) 24 kHz ─> zero-pad kernel_width // 2 each side (center=True, pad_mode="constant")
        ─> conv1d with 336 complex kernels (stride = hop 320) ─> x sqrt(kernel length) ("librosa"
        normalisation) ─> |.| (output_format="Magnitude", no log)       (B, 336, n // 320 + 1)

MERT builds it as `nnAudio.features.cqt.CQT(sr=24000, hop_length=24000 // 75, fmin=32.7, fmax=None,
n_bins=336, bins_per_octave=336 // 7, filter_scale=1, norm=1, window='hann', center=True,
pad_mode='constant', trainable=False, output_format='Magnitude')` (yizhilll/MERT
mert_fairseq/models/mert/mert_model.py:519-528; `CQT` is nnAudio's alias of `CQT1992v2`). The
kernels are nnAudio's `create_cqt_kernels` (nnAudio/utils.py), computed here the same way in
float64 numpy and rounded once to float32, so they are equal bit for bit; `full_width=True` is then
the same float32 convolution, and the default the same products per octave (`make parity-cqt`,
tests/models/test_cqt.py).

No new runtime dependency: nnAudio needs scipy only for the periodic Hann window, which is
0.5 - 0.5 cos(2 pi i / l). The kernels (336 x 65,536, 176 MB in float32) are plain attributes, not
buffers: they are never saved in a checkpoint nor broadcast by DDP, and are rebuilt from the config.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class CQTConfig:
    sample_rate: int = 24_000  # MERT task.sample_rate
    hop: int = 320  # sr // label_rate = 24000 // 75 (mert_model.py:524, :758)
    fmin_hz: float = 32.7  # mert_model.py:524 (C1)
    n_bins: int = 336  # audio_cqt_bins (MERT_RVQ-VAE_CQT_95M.yaml:89, _330M.yaml:93)
    bins_per_octave: int = 48  # n_bins // 7 (mert_model.py:525): 7 octaves, 32.7 Hz .. 4.1 kHz
    filter_scale: float = 1.0  # mert_model.py:526
    norm: int = 1  # each kernel divided by its L1 norm (mert_model.py:526)

    def __post_init__(self) -> None:
        top = self.fmin_hz * 2 ** ((self.n_bins - 1) / self.bins_per_octave)
        if top > self.sample_rate / 2:  # nnAudio's topbin_check
            raise ValueError(f"the top CQT bin ({top:.0f} Hz) is above Nyquist ({self.sample_rate / 2:g} Hz)")
        if min(self.hop, self.n_bins, self.bins_per_octave) < 1 or self.fmin_hz <= 0:
            raise ValueError("hop, n_bins and bins_per_octave must be >= 1, fmin_hz > 0")

    def frames(self, num_samples: int) -> int:
        """Frames of an n-sample input: n // hop + 1 (center=True)."""
        return num_samples // self.hop + 1


def cqt_kernels(config: CQTConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """nnAudio `create_cqt_kernels(Q, sr, fmin, n_bins, bins_per_octave, norm, "hann", fmax=None)`:
    (n_bins, width) complex64 kernels (width the next power of two of the longest), the float32
    lengths and the float64 centre frequencies. Same float64 operations in the same order."""
    q = float(config.filter_scale) / (2 ** (1 / config.bins_per_octave) - 1)
    freqs = config.fmin_hz * 2.0 ** (np.r_[0:config.n_bins] / float(config.bins_per_octave))
    lengths = np.ceil(q * config.sample_rate / freqs)  # gamma = 0
    width = int(2 ** (np.ceil(np.log2(int(max(lengths))))))
    kernels = np.zeros((config.n_bins, width), dtype=np.complex64)
    for k in range(config.n_bins):
        length = lengths[k]
        # centred; an odd kernel gets its extra zero on the right
        start = int(np.ceil(width / 2.0 - length / 2.0)) - (1 if length % 2 == 1 else 0)
        window = _periodic_hann(int(length))
        phase = np.r_[-length // 2:length // 2] * 1j * 2 * np.pi * freqs[k] / config.sample_rate  # nnAudio's order
        signal = window * np.exp(phase) / length
        if config.norm:
            signal = signal / np.linalg.norm(signal, config.norm)
        kernels[k, start:start + int(length)] = signal
    return kernels, lengths.astype(np.float32), freqs


def _periodic_hann(length: int) -> np.ndarray:
    """scipy.signal.get_window("hann", length, fftbins=True) as scipy computes it (general_cosine with
    a = [0.5, 0.5] over linspace(-pi, pi, length + 1), the last point dropped), so equal bit for bit."""
    if length <= 1:
        return np.ones(length)
    angles = np.linspace(-np.pi, np.pi, length + 1)
    window = np.zeros(length + 1)
    for k, a in enumerate((0.5, 0.5)):
        window += a * np.cos(k * angles)
    return window[:-1]


@functools.lru_cache(maxsize=2)
def _cpu_kernels(config: CQTConfig) -> dict:
    """The float32 kernels, built once per config and process (a second and 176 MB at MERT's size) and
    shared read-only by every module: "real" and "imag" (K, 1, W), "scale" (K, 1) = sqrt(length), and
    "octaves": per octave of bins, in bin order, (a, real, imag) with the kernels cut to the samples
    [a, b) where any of them is non-zero (a bin's kernel is zero outside its length)."""
    kernels, lengths, _ = cqt_kernels(config)
    real, imag = (torch.from_numpy(np.ascontiguousarray(part))[:, None] for part in (kernels.real, kernels.imag))
    octaves = []
    for first in range(0, config.n_bins, config.bins_per_octave):
        rows = slice(first, first + config.bins_per_octave)
        used = np.flatnonzero((kernels[rows] != 0).any(0))
        a, b = int(used[0]), int(used[-1]) + 1
        octaves.append((a, real[rows, :, a:b].contiguous(), imag[rows, :, a:b].contiguous()))
    return {"real": real, "imag": imag, "scale": torch.from_numpy(lengths).sqrt()[:, None], "octaves": octaves}


class ConstantQTransform(nn.Module):
    """(B, n) float waveform -> (B, n_bins, n // hop + 1) CQT magnitude, in float32 whatever the
    autocast around (nnAudio's module holds float32 kernels).

    By default each octave's kernels are cut to their non-zero span (MERT's lowest octave needs the
    full 65,536 samples, each next one about half): the same products, 4.6x fewer of them (1.35 s -> 0.37 s
    for four 5-s clips on one CPU thread), summed in another order, so equal to nnAudio within float32
    rounding (tests/models/test_cqt.py bounds it). `full_width=True` is nnAudio's single convolution,
    equal to it bit for bit (`make parity-cqt`)."""

    def __init__(self, config: CQTConfig = CQTConfig(), full_width: bool = False):
        super().__init__()
        self.config, self.full_width = config, full_width
        cpu = _cpu_kernels(config)
        self.width = cpu["real"].shape[-1]
        self._kernels = {"cpu": cpu}

    def _on(self, device: torch.device) -> dict:
        key = str(device)
        if key not in self._kernels:
            cpu = self._kernels["cpu"]
            self._kernels[key] = {"real": cpu["real"].to(device), "imag": cpu["imag"].to(device),
                                  "scale": cpu["scale"].to(device),
                                  "octaves": [(a, re.to(device), im.to(device)) for a, re, im in cpu["octaves"]]}
        return self._kernels[key]

    def forward(self, wav: Tensor) -> Tensor:
        if wav.dim() != 2:
            raise ValueError(f"expected a (B, n) waveform, got shape {tuple(wav.shape)}")
        kernels, hop = self._on(wav.device), self.config.hop
        frames = wav.shape[1] // hop + 1
        with torch.autocast(wav.device.type, enabled=False):
            x = F.pad(wav.float()[:, None], (self.width // 2, self.width // 2))  # (B, 1, n + W)
            if self.full_width:
                real, imag = F.conv1d(x, kernels["real"], stride=hop), F.conv1d(x, kernels["imag"], stride=hop)
            else:  # frame t of an octave reads x[t * hop + a : t * hop + b]
                spans = [(x[..., a:a + (frames - 1) * hop + re.shape[-1]], re, im) for a, re, im in kernels["octaves"]]
                real = torch.cat([F.conv1d(span, re, stride=hop) for span, re, _ in spans], dim=1)  # (B, K, T)
                imag = torch.cat([F.conv1d(span, im, stride=hop) for span, _, im in spans], dim=1)
            cqt_real = real * kernels["scale"]
            cqt_imag = -imag * kernels["scale"]
            return torch.sqrt(cqt_real.pow(2) + cqt_imag.pow(2))  # trainable=False: no margin

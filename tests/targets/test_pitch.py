"""Pitch targets (a second codebook): semitone spectra on the MFCC grid, against direct numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from musicssl.frame_features import MfccExtractor, PitchConfig, PitchExtractor, describe_pitch
from musicssl.targets.features import PITCH_PRESETS
from tests.numerics import gamma


def pitch_tolerance(config: PitchConfig | None = None) -> float:
    """Bound on one float32 computation's error in a pitch feature. A band's power sums at most
    `widest` nonzero |rfft|^2 terms (zeros add no rounding), after an FFT whose own error is about
    3 log2(window) roundings: relative error gamma(widest + 3 log2 window), halved by the sqrt;
    log1p(a / floor) turns a relative error of a into at most as much absolute error; the L2
    normalisation over the 84 bands adds the vector's error once more, up to sqrt(84) times."""
    config = config or PitchConfig()
    banks = PitchExtractor(config).banks
    widest = int((banks != 0).sum(0).max())
    log2_window = int(np.ceil(np.log2(config.window_samples)))
    per_band = gamma(widest + 3 * log2_window) / 2
    return (1 + np.sqrt(banks.shape[1])) * per_band

SR = 16_000


def tone(midi: float, seconds: float = 1.0, amplitude: float = 0.5, harmonics: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    f0 = 440.0 * 2 ** ((midi - 69) / 12)
    return sum(amplitude / k * np.sin(2 * np.pi * k * f0 * t) for k in range(1, harmonics + 1)).astype(np.float32)


def features(wav: np.ndarray, config: PitchConfig = PitchConfig()) -> np.ndarray:
    with torch.no_grad():
        return PitchExtractor(config)(torch.from_numpy(wav)[None])[0][0].numpy()  # (T, D)


@pytest.mark.parametrize("midi", [24, 30, 36, 45, 57, 69, 81, 93, 107])
def test_a_tone_peaks_at_its_own_semitone_and_pitch_class(midi):
    middle = len(features(tone(midi))) // 2
    assert int(features(tone(midi))[middle].argmax()) == midi - 24
    chroma = features(tone(midi, harmonics=4), PITCH_PRESETS["chroma12"])
    assert int(chroma[middle].argmax()) == midi % 12  # harmonics 2 and 4 are the same pitch class


def test_equals_a_direct_numpy_computation():
    """Centred 4096-sample Hann frames at 160 t + 200, |rfft|^2 through the module's semitone
    triangles, amplitude re. a full-scale sine, log1p(a / floor), L2 norm capped below at 1."""
    config = PitchConfig()
    rng = np.random.default_rng(0)
    wav = (tone(50, 0.7, 0.3, 5) + tone(64, 0.7, 0.2) + 0.01 * rng.standard_normal(int(0.7 * SR))).astype(np.float32)
    ours = features(wav)
    banks = PitchExtractor(config).banks.double().numpy()
    window = np.hanning(config.window_samples)
    padded = np.pad(wav.astype(np.float64), config.window_samples // 2 - 200)
    expected = []
    for t in range(1 + (len(wav) - 400) // 160):
        frame = padded[160 * t:160 * t + config.window_samples] * window / (window.sum() / 2)
        amplitude = np.sqrt(np.abs(np.fft.rfft(frame)) ** 2 @ banks)
        compressed = np.log1p(amplitude / config.floor)
        expected.append(compressed / max(np.linalg.norm(compressed), 1.0))
    assert np.abs(ours - np.array(expected)).max() <= pitch_tolerance(config)  # float64 reference


@pytest.mark.parametrize("samples", [0, 399, 400, 559, 560, 16_000, 23_456])
def test_frames_line_up_with_mfcc_frames(samples):
    wav = torch.zeros(1, samples)
    pitch, pitch_lengths = PitchExtractor()(wav)
    mfcc, mfcc_lengths = MfccExtractor()(wav)
    assert pitch.shape[1] == mfcc.shape[1] and pitch_lengths.tolist() == mfcc_lengths.tolist()


def test_silence_is_the_origin_and_batches_equal_single_items():
    assert np.abs(features(np.zeros(SR, np.float32))).max() == 0.0
    short, long = tone(60, 0.5), tone(72, 1.0)
    batch = torch.zeros(2, len(long))
    batch[0, :len(short)], batch[1] = torch.from_numpy(short), torch.from_numpy(long)
    with torch.no_grad():
        out, lengths = PitchExtractor()(batch, torch.tensor([len(short), len(long)]))
    assert lengths.tolist() == [len(features(short)), len(features(long))]
    # the same float32 computation on another batch shape: two roundings of the bound at most
    assert np.abs(out[0, :lengths[0]].numpy() - features(short)).max() <= 2 * pitch_tolerance()
    assert np.abs(out[1].numpy() - features(long)).max() <= 2 * pitch_tolerance()
    assert out[0, lengths[0]:].abs().max() == 0  # padding frames zeroed


def test_config_checks_and_describe():
    with pytest.raises(ValueError, match="Nyquist"):
        PitchConfig(num_semitones=120)
    record = describe_pitch(PITCH_PRESETS["chroma12"])
    assert record["kind"] == "pitch" and record["dim"] == 12 and record["frame_rate_hz"] == 100.0

"""MFCC targets: parity with Kaldi (kaldi-native-fbank), deltas, framing, batching, presets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from musicssl.frame_features import MfccConfig, MfccExtractor, compute_deltas, describe, mfcc, num_mfcc_frames
from musicssl.targets.features import MFCC_PRESETS, layer_features

from tests.numerics import gamma  # noqa: E402

knf = pytest.importorskip("kaldi_native_fbank")

SR = 16_000


def cepstra_tolerance(num_ceps: int, num_bins: int = 23, fft_size: int = 512, lifter: float = 22.0,
                      same_spectrum: bool = False) -> np.ndarray:
    """(num_ceps,) bound on |a - b| for two float32 computations of Kaldi's liftered cepstra.

    Each log-mel energy is a sum over the fft_size-point power spectrum: relative error at most
    gamma(fft_size) in any order (the FFT's own, ~log2(fft_size) u, is smaller), i.e. that much
    absolute error after the log. Cepstrum i sums num_bins of them with |D_ib| <= sqrt(2 / num_bins),
    adding its own gamma(num_bins) sum|D_ib log E_b|, |log E_b| <= |ln eps32| = 36.04 (the floor).
    Then the lifter 1 + L/2 sin(pi i / L) multiplies row i (up to 12x). Two independent float32
    computations (ours, Kaldi's): twice the bound. About 1.1e-3 for C0, 1.3e-2 at the lifter's peak.
    `same_spectrum`: both sides share the log-mel energies and differ only in the DCT's rounding."""
    i = np.arange(num_ceps)
    row_sum = num_bins * np.sqrt(2 / num_bins)  # sum_b |D_ib|
    log_error = gamma(num_bins) * row_sum * abs(np.log(np.finfo(np.float32).eps))
    if not same_spectrum:
        log_error += gamma(fft_size) * row_sum
    return 2 * log_error * (1 + 0.5 * lifter * np.sin(np.pi * i / lifter))



def music_like(seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    """Harmonic tones with a slow amplitude envelope plus a little noise, in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    freqs = (110, 220, 330, 440, 660, 1320, 2500)
    tones = sum(0.1 * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) for f in freqs)
    wav = tones * (0.5 + 0.5 * np.sin(2 * np.pi * 0.5 * t)) + 0.01 * rng.standard_normal(t.size)
    return wav.astype(np.float32)


def white_noise(seconds: float = 3.0, seed: int = 1) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


def with_silence() -> np.ndarray:
    """Digital silence (every mel energy hits the log floor), music, then a -120 dB hiss."""
    rng = np.random.default_rng(2)
    return np.concatenate([np.zeros(8000), music_like(1.0), 1e-6 * rng.standard_normal(8000)]).astype(np.float32)


def knf_mfcc(wav: np.ndarray, num_ceps: int) -> np.ndarray:
    opts = knf.MfccOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = True
    opts.frame_opts.samp_freq = SR
    opts.frame_opts.window_type = "povey"
    opts.mel_opts.num_bins = 23
    opts.num_ceps = num_ceps
    opts.use_energy = False
    computer = knf.OnlineMfcc(opts)
    computer.accept_waveform(SR, wav.tolist())
    computer.input_finished()
    return np.array([computer.get_frame(i) for i in range(computer.num_frames_ready)], dtype=np.float32)


def reference_deltas(x: np.ndarray, window: int = 5, magnitude: bool = False) -> np.ndarray:
    """Written out independently: loop over t with clamped indices. `magnitude`: every term
    taken positive, sum_n n (|x[t+n]| + |x[t-n]|) / denom, the scale of the deltas' rounding."""
    half = (window - 1) // 2
    denom = 2 * sum(n * n for n in range(1, half + 1))
    last = x.shape[0] - 1
    out = np.zeros_like(x, dtype=np.float64)
    for t in range(x.shape[0]):
        for n in range(1, half + 1):
            ahead, behind = x[min(t + n, last)], x[max(t - n, 0)]
            out[t] += n * (np.abs(ahead) + np.abs(behind) if magnitude else ahead - behind)
    return out / denom


@pytest.mark.parametrize("num_ceps", [13, 20])
@pytest.mark.parametrize("signal", [music_like, white_noise, with_silence])
def test_static_cepstra_match_kaldi_native_fbank(signal, num_ceps):
    wav = signal()
    reference = knf_mfcc(wav, num_ceps)
    ours = mfcc(wav, MfccConfig(num_ceps=num_ceps))
    assert ours.dtype == np.float32 and ours.shape == (reference.shape[0], 3 * num_ceps)
    assert np.all(np.abs(ours[:, :num_ceps] - reference) <= cepstra_tolerance(num_ceps))


def test_silence_hits_the_same_log_floor_as_kaldi():
    # All 23 log-mel values at ln(float32 eps): C0 = sqrt(23) * ln(eps) (lifter is 1 at i = 0), others 0.
    ours = mfcc(np.zeros(1000, dtype=np.float32))
    # only the DCT rounds here (23 equal terms): its half of the bound, per cepstrum
    bound = cepstra_tolerance(13, same_spectrum=True) / 2
    assert np.all(np.abs(ours[:, 0] - np.sqrt(23) * np.log(np.finfo(np.float32).eps)) <= bound[0])
    assert np.all(np.abs(ours[:, 1:13]) <= bound[1:])


def test_float64_path_agrees_with_float32():
    wav = music_like(1.0)
    config = MfccConfig()
    double, _ = MfccExtractor(config, dtype=torch.float64)(torch.from_numpy(wav.astype(np.float64))[None])
    assert double.dtype == torch.float64
    # float64 rounds ~1e9 times finer: the float32 side's half of the bound, on every column
    # (deltas are differences of 9 cepstra with weights summing to |n|/sum n^2 <= 1: no larger).
    bound = np.tile(cepstra_tolerance(13) / 2, 3)
    assert np.all(np.abs(mfcc(wav) - double[0].numpy()) <= bound)


@pytest.mark.parametrize("frames", [1, 2, 3, 4, 5, 17])
def test_compute_deltas_matches_the_direct_formula(frames):
    x = np.random.default_rng(frames).standard_normal((frames, 6))
    ours = compute_deltas(torch.from_numpy(x))
    np.testing.assert_allclose(ours.numpy(), reference_deltas(x), rtol=0, atol=1e-12)
    wide = compute_deltas(torch.from_numpy(x), window=7)
    np.testing.assert_allclose(wide.numpy(), reference_deltas(x, window=7), rtol=0, atol=1e-12)


def test_compute_deltas_replicates_each_items_own_last_frame():
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((3, 9, 4)))
    lengths = torch.tensor([9, 5, 1])
    ours = compute_deltas(x, lengths=lengths)
    for b, length in enumerate(lengths.tolist()):
        expected = reference_deltas(x[b, :length].numpy())
        np.testing.assert_allclose(ours[b, :length].numpy(), expected, rtol=0, atol=1e-12)


def test_feature_layout_is_static_delta_delta_delta():
    features = mfcc(music_like(1.0)).astype(np.float64)
    static, delta, delta2 = features[:, :13], features[:, 13:26], features[:, 26:]
    # float32 deltas vs float64 ones of the same float32 cepstra: each is a 2 * half-term weighted sum
    # (weights n / sum n^2 rounded too): error <= gamma(2 * window) of the weighted magnitudes; the
    # delta-deltas also carry the deltas' error through the same weights.
    delta_bound = gamma(10) * reference_deltas(static, magnitude=True)
    assert np.all(np.abs(delta - reference_deltas(static)) <= delta_bound)
    delta2_bound = reference_deltas(delta_bound, magnitude=True) + gamma(10) * reference_deltas(delta, magnitude=True)
    assert np.all(np.abs(delta2 - reference_deltas(reference_deltas(static))) <= delta2_bound)


@pytest.mark.parametrize("samples", [0, 1, 399, 400, 401, 559, 560, 561, 1234, SR])
def test_frame_count_is_snip_edges(samples):
    expected = 0 if samples < 400 else 1 + (samples - 400) // 160
    assert num_mfcc_frames(samples) == expected
    assert mfcc(np.zeros(samples, dtype=np.float32) + 0.01).shape == (expected, 39)


def test_five_seconds_give_498_frames():
    assert num_mfcc_frames(5 * SR) == 498
    assert mfcc(music_like(5.0)).shape == (498, 39)


def test_batched_padded_equals_unbatched_on_each_items_valid_frames():
    items = [music_like(1.0, seed=0), white_noise(0.63, seed=1), music_like(0.3, seed=2), white_noise(0.02)]
    lengths = torch.tensor([len(w) for w in items])
    batch = torch.zeros(len(items), int(lengths.max()))
    for b, w in enumerate(items):
        batch[b, :len(w)] = torch.from_numpy(w)
        batch[b, len(w):] = 0.5  # garbage padding must not leak into valid frames or their deltas
    features, frame_lengths = MfccExtractor()(batch, lengths)
    assert frame_lengths.tolist() == [num_mfcc_frames(len(w)) for w in items] == [98, 61, 28, 0]
    assert features.shape == (4, 98, 39)
    for b, w in enumerate(items):
        valid = int(frame_lengths[b])
        # The same float32 computation on another batch shape (the GEMM may block it otherwise):
        # equal up to the rounding bound of the cepstra (deltas weigh 9 of them by <= 1 in all).
        bound = np.tile(cepstra_tolerance(13), 3)
        assert np.all(np.abs(features[b, :valid].numpy() - mfcc(w)) <= bound)
        assert torch.all(features[b, valid:] == 0)


def test_mfcc60_extends_mfcc39_without_changing_its_columns():
    # Kaldi's DCT row i and lifter coefficient i do not depend on num_ceps.
    assert MFCC_PRESETS["mfcc39"].dim == 39 and MFCC_PRESETS["mfcc60"].dim == 60
    wav = music_like(1.0)
    f39, f60 = mfcc(wav, MFCC_PRESETS["mfcc39"]), mfcc(wav, MFCC_PRESETS["mfcc60"])
    shared = np.r_[0:13, 20:33, 40:53]  # c0..c12, their deltas, their delta-deltas
    # the same log-mel energies through DCTs of 13 and 20 rows: only the DCT's rounding may differ
    bound = np.tile(cepstra_tolerance(13, same_spectrum=True), 3)
    assert np.all(np.abs(f60[:, shared] - f39) <= bound)


def test_config_geometry_and_describe():
    config = MfccConfig()
    assert (config.hop, config.window_samples, config.fft_size, config.frame_rate_hz) == (160, 400, 512, 100.0)
    assert config.mel_high_freq == 8000.0 and MfccConfig(high_freq=-400).mel_high_freq == 7600.0
    assert MfccConfig(deltas=False).dim == 13
    record = json.loads(json.dumps(describe(MFCC_PRESETS["mfcc60"])))
    assert record["kind"] == "mfcc" and record["dim"] == 60 and record["frame_rate_hz"] == 100.0
    assert record["num_ceps"] == 20 and record["window"] == "povey" and record["low_freq"] == 20.0


@pytest.mark.parametrize("change", [dict(num_ceps=24), dict(window="blackmann"), dict(delta_window=4),
                                    dict(low_freq=9000.0)])
def test_config_rejects_inconsistent_settings(change):
    with pytest.raises(ValueError):
        MfccConfig(**change)


def test_mfcc_rejects_multichannel_input():
    with pytest.raises(ValueError, match="mono"):
        mfcc(np.zeros((2, 1000), dtype=np.float32))


def test_layer_features_is_one_hidden_state_of_the_encoder(tmp_path):
    import musicssl
    from musicssl.interop.huggingface import export_pretrained
    from tests.conftest import micro_backbone

    encoder = musicssl.load_model(export_pretrained(micro_backbone("hubert"), tmp_path / "micro"), device="cpu")
    wav = music_like(1.0)
    features = layer_features(encoder, wav, SR, layer=1, chunk_seconds=None)
    expected = encoder.extract(wav, SR, layers=[1], chunk_seconds=None)[0].numpy()
    assert features.dtype == np.float32 and features.shape == (expected.shape[0], encoder.dim)
    np.testing.assert_array_equal(features, expected)

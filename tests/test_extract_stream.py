"""`extract --pool mean` from a file with memory flat in the track's length (issue 26, item 12):
the file is decoded as a stream, cut into the windows one pass would run and pooled; a model that
standardises its input reads the file twice (statistics, then features)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import soundfile as sf
import torch

import musicssl
from musicssl import audio
from musicssl.cli import main
from musicssl.extract import _track_moments
from musicssl.models.backbone import normalize_waveform
from tests.conftest import tone
from tests.numerics import U32, U64, float64_calibrated, gamma
from tests.test_extract_safety import mean_bound

MP3 = {"format": "MP3", "subtype": "MPEG_LAYER_III"}
CHUNKING = dict(chunk_seconds=1.0, context_seconds=0.5)


def write_stereo(path, seconds: float, rate: int = 44_100, **kwargs):
    sf.write(str(path), tone(seconds, rate, frequency=330.0, channels=2), rate, **kwargs)
    return path


def float64_pooled(encoder, wav: np.ndarray, chunk_seconds: float, context_seconds: float) -> torch.Tensor:
    """The one-pass pipeline (normalisation, windows of plan_chunks, every hidden state, time
    mean) in float64: the truth both float32 computations are rounded from."""
    backbone = copy.deepcopy(encoder.backbone).double()
    signal = torch.from_numpy(wav).double()
    signal = normalize_waveform(signal[None], torch.tensor([signal.numel()]), encoder.normalize_eps)[0]
    plan = audio.plan_chunks(signal.numel(), int(chunk_seconds * 16000), hop=encoder.config.hop,
                             receptive_field=encoder.config.receptive_field,
                             context_samples=int(context_seconds * 16000))
    total, count = 0.0, 0
    with torch.no_grad():
        for chunk in plan:
            out = backbone(signal[None, chunk.start:chunk.stop])
            states = list(out.layers)
            states[-1] = out.last_hidden_state
            total = total + torch.stack([s[0] for s in states])[:, chunk.keep_start:chunk.keep_stop].sum(1)
            count += chunk.num_kept
    return total / count


def assert_pooled_matches_one_pass(encoder, path, pooled: torch.Tensor, **warns) -> None:
    """`pooled` against extract(load_audio(path)).mean(1): identical windows give identical
    frames, so only the two sums differ (mean_bound); a standardised model's windows also differ
    by the rounding of the track statistics (float64 here, float32 in one pass), which no a-priori
    bound carries through a network: then against the float64 truth (float64_calibrated)."""
    wav = audio.load_audio(path, 16000)
    frames = encoder.extract(wav, 16000, **CHUNKING)  # (K, T, D)
    assert pooled.dtype == torch.float32 and pooled.shape == (3, 32)
    if not encoder.config.normalize_waveform:
        bound = mean_bound(frames, U64) + mean_bound(frames, U32)
        assert torch.all((pooled.double() - frames.double().mean(1)).abs() <= bound)
    else:
        error, tolerance = float64_calibrated(pooled, frames.mean(1), float64_pooled(encoder, wav, **CHUNKING))
        assert error <= tolerance
    # a frame dropped at the end (a last chunk cut from a wrong length) is far outside either
    assert torch.any((frames[:, :-1].double().mean(1) - pooled.double()).abs() > 100 * mean_bound(frames, U32))


@pytest.mark.parametrize("ext, kwargs", [("wav", {}), ("flac", {}), ("mp3", MP3)])
def test_pooled_file_equals_the_mean_of_one_pass_frames(model_dir, tmp_path, ext, kwargs):
    path = write_stereo(tmp_path / f"a.{ext}", 5.3, **kwargs)  # 44.1 kHz stereo: resampled, mixed
    encoder = musicssl.load_model(model_dir, device="cpu")
    pooled = encoder.extract_mean_file(path, **CHUNKING, block_seconds=0.37)  # blocks across chunks
    assert_pooled_matches_one_pass(encoder, path, pooled)


def test_pooled_truncated_mp3_plans_from_the_decoded_length_not_the_header(model_dir, tmp_path):
    whole = write_stereo(tmp_path / "whole.mp3", 6.0, **MP3)
    path = tmp_path / "cut.mp3"
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size * 3 // 5])
    header = audio.audio_info(path).num_frames * 16000 // 44100
    with pytest.warns(UserWarning, match="truncated"):
        decoded = audio.load_audio(path, 16000).size
    assert decoded < 0.8 * header  # the header's length would plan chunks past the real end
    encoder = musicssl.load_model(model_dir, device="cpu")
    with pytest.warns(UserWarning, match="truncated"):
        pooled = encoder.extract_mean_file(path, **CHUNKING)
    with pytest.warns(UserWarning, match="truncated"):
        assert_pooled_matches_one_pass(encoder, path, pooled)


def test_track_moments_equal_the_float64_statistics_of_the_whole_track():
    rng = np.random.default_rng(0)
    wav = (3.0 + 0.01 * rng.standard_normal(200_003)).astype(np.float32)  # mean large against spread
    moments = _track_moments(iter(np.array_split(wav, 17)))
    values = wav.astype(np.float64)
    n, mean = values.size, values.mean()
    assert moments[0] == n
    # a float64 sum of n terms is within gamma(n) of exact, in any order (merging adds a few more)
    assert abs(moments[1] - mean) <= gamma(2 * n, U64) * np.abs(values).mean()
    spread = np.square(values - mean)
    assert abs(moments[2] - spread.mean()) <= gamma(2 * n, U64) * (spread.mean() + 2 * mean * np.abs(values - mean).mean())
    # the textbook running sum of squares, E[x^2] - E[x]^2, loses most digits here
    assert abs(moments[2] - spread.mean()) < 1e-6 * spread.mean()


def test_pooled_file_too_short_or_non_finite_is_an_audio_error(model_dir, tmp_path):
    encoder = musicssl.load_model(model_dir, device="cpu")
    short = tmp_path / "short.wav"
    sf.write(str(short), np.zeros(300, np.float32), 16000)
    with pytest.raises(audio.AudioError, match=r"short.wav: too short: 300 samples"):
        encoder.extract_mean_file(short)
    broken = np.zeros(40_000, np.float32)
    broken[33_333] = np.inf
    sf.write(str(tmp_path / "inf.wav"), broken, 16000, subtype="FLOAT")
    with pytest.raises(audio.AudioError, match=r"inf.wav: non-finite samples \(NaN or inf\) at sample 33333"):
        encoder.extract_mean_file(tmp_path / "inf.wav", block_seconds=0.5)


def test_cli_pool_mean_never_holds_the_decoded_track(model_dir, tmp_path, monkeypatch):
    path = write_stereo(tmp_path / "a.flac", 4.0)
    encoder = musicssl.load_model(model_dir, device="cpu")
    expected = encoder.extract_mean_file(path, chunk_seconds=2.0)
    monkeypatch.setattr(audio, "load_audio", lambda *a, **k: pytest.fail("the whole track was decoded"))
    out = tmp_path / "pooled.npz"
    assert main(["extract", str(model_dir), str(path), "-o", str(out), "--pool", "mean", "--chunk-seconds", "2"]) == 0
    np.testing.assert_array_equal(np.load(out)[str(path)], expected.numpy())

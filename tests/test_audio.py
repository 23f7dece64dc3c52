"""Tests for musicssl.audio: decoding, errors users see, array helpers and chunk planning."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from musicssl.audio import (
    AudioError,
    AudioInfo,
    Chunk,
    audio_info,
    check_length,
    crop_or_pad,
    load_audio,
    num_frames,
    plan_chunks,
    random_crop,
    stream_audio,
    stream_chunks,
    resample,
    to_mono,
)
from tests.numerics import U64, matmul_bound

SR_IN = 44100
SR_OUT = 16000
WRITE_ARGS = {  # extension -> soundfile.write keyword arguments
    "wav": {},
    "flac": {},
    "ogg": {"format": "OGG", "subtype": "VORBIS"},
    "mp3": {"format": "MP3", "subtype": "MPEG_LAYER_III"},
}


def stereo_tone(seconds: float = 2.0, freq: float = 440.0, sr: int = SR_IN) -> np.ndarray:
    """(N, 2) tone, left 0.6 and right 0.4 amplitude, so the mono mix has amplitude 0.5."""
    t = np.arange(int(seconds * sr)) / sr
    tone = np.sin(2 * np.pi * freq * t)
    return np.stack([0.6 * tone, 0.4 * tone], axis=1).astype(np.float32)


def write(path: Path, data: np.ndarray, sr: int = SR_IN, **kwargs) -> Path:
    sf.write(str(path), data, sr, **kwargs)
    return path


def peak_hz(x: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spectrum)])


def amplitude(x: np.ndarray) -> float:
    middle = x[len(x) // 4 : 3 * len(x) // 4]  # away from codec/resampler edge effects
    return float(np.sqrt(2 * np.mean(middle.astype(np.float64) ** 2)))


@pytest.fixture(scope="module")
def mp3_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("mp3") / "tone.mp3"
    write(path, stereo_tone(), **WRITE_ARGS["mp3"])
    return path.read_bytes()


# ----------------------------------------------------------------------------- decoding


# Not rounding: the level after resampling (soxr HQ's passband ripple is far below 1 %) and
# after lossy coding (Vorbis / MP3 at soundfile's default quality move a tone's level by a few %).
@pytest.mark.parametrize(
    "ext, amp_tol", [("wav", 0.01), ("flac", 0.01), ("ogg", 0.05), ("mp3", 0.05)]
)
def test_load_audio_resamples_stereo_44k1_to_16k_mono_keeping_pitch_and_level(
    tmp_path, ext, amp_tol
):
    data = stereo_tone()
    path = write(tmp_path / f"tone.{ext}", data, **WRITE_ARGS[ext])

    wav = load_audio(path, SR_OUT)

    assert wav.dtype == np.float32 and wav.ndim == 1
    assert abs(len(wav) - round(len(data) * SR_OUT / SR_IN)) <= 4
    assert abs(peak_hz(wav, SR_OUT) - 440.0) <= 1.0
    assert amplitude(wav) == pytest.approx(0.5, rel=amp_tol)


def test_load_audio_mono_false_resamples_each_channel(tmp_path):
    path = write(tmp_path / "tone.flac", stereo_tone())

    wav = load_audio(path, SR_OUT, mono=False)

    assert wav.shape == (2, 32000) and wav.dtype == np.float32
    assert amplitude(wav[0]) == pytest.approx(0.6, rel=0.01)
    assert amplitude(wav[1]) == pytest.approx(0.4, rel=0.01)


def test_load_audio_at_native_rate_returns_samples_unchanged(tmp_path):
    data = np.random.default_rng(0).uniform(-1, 1, (5000, 2)).astype(np.float32)
    path = write(tmp_path / "noise.wav", data, 16000, subtype="FLOAT")

    np.testing.assert_array_equal(load_audio(path, 16000, mono=False), data.T)
    np.testing.assert_array_equal(load_audio(path, 16000), data.mean(axis=1))


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("upper.WAV", {}),
        ("upper.FLAC", {}),
        ("Ünïcødé song 1.FLAC", {}),
        ("my song (live).MP3", WRITE_ARGS["mp3"]),
        ("café.Ogg", WRITE_ARGS["ogg"]),
    ],
)
def test_load_audio_accepts_any_extension_case_spaces_and_non_ascii_names(
    tmp_path, name, kwargs
):
    path = write(tmp_path / name, stereo_tone(0.5), **kwargs)

    wav = load_audio(str(path), SR_OUT)

    assert abs(len(wav) - 8000) <= 4
    assert audio_info(path).channels == 2


def test_blockwise_decoding_matches_one_shot_read_and_resample(tmp_path):
    rng = np.random.default_rng(1)
    data = (0.3 * rng.standard_normal((10 * SR_IN, 2))).astype(np.float32)
    path = write(tmp_path / "noise.wav", data, subtype="FLOAT")

    # 0.37 s blocks: ~27 blocks of a length unrelated to the resampling ratio.
    mono = load_audio(path, SR_OUT, block_seconds=0.37)
    multi = load_audio(path, SR_OUT, mono=False, block_seconds=0.37)

    ref, sr = sf.read(str(path), dtype="float32")
    ref_mono = soxr.resample(ref.mean(axis=1), sr, SR_OUT, quality="HQ")
    ref_multi = soxr.resample(ref, sr, SR_OUT, quality="HQ").T
    assert mono.shape == ref_mono.shape == (160000,)
    assert multi.shape == ref_multi.shape == (2, 160000)
    # soxr streams through its own internal blocks whatever blocks it is fed: the same
    # computation as one call, so the same bits
    np.testing.assert_array_equal(mono, ref_mono)
    np.testing.assert_array_equal(multi, ref_multi)


@pytest.mark.parametrize("ext", ["wav", "flac", "mp3"])
def test_streamed_blocks_concatenate_to_load_audio_bit_for_bit(tmp_path, ext):
    rng = np.random.default_rng(2)
    data = stereo_tone(3.0) + (0.05 * rng.standard_normal((3 * SR_IN, 2))).astype(np.float32)
    path = write(tmp_path / f"noisy.{ext}", data, **WRITE_ARGS[ext])

    blocks = list(stream_audio(path, SR_OUT, block_seconds=0.37))  # 44.1 kHz stereo -> 16 kHz mono

    assert len(blocks) > 5 and all(b.dtype == np.float32 and b.ndim == 1 for b in blocks)
    np.testing.assert_array_equal(np.concatenate(blocks), load_audio(path, SR_OUT))


def test_streamed_blocks_report_a_non_finite_sample_after_the_blocks_before_it(tmp_path):
    data = np.zeros((3000, 2), dtype=np.float32)
    data[2345, 0] = np.nan
    path = write(tmp_path / "broken.wav", data, subtype="FLOAT")
    stream = stream_audio(path, SR_OUT, block_seconds=0.01)  # 441-frame blocks

    assert next(stream).dtype == np.float32  # the first blocks are fine and delivered
    with pytest.raises(AudioError) as excinfo:
        list(stream)
    assert_audio_error(excinfo, path, "non-finite samples (NaN or inf) at sample 2345")


def test_streamed_blocks_of_missing_and_empty_files_raise_as_load_audio(tmp_path):
    with pytest.raises(AudioError) as excinfo:
        next(stream_audio(tmp_path / "nope.flac", SR_OUT))
    assert_audio_error(excinfo, tmp_path / "nope.flac", "file not found")
    empty = write(tmp_path / "silence.wav", np.zeros((0, 2), dtype=np.float32))
    with pytest.raises(AudioError) as excinfo:
        list(stream_audio(empty, SR_OUT))
    assert_audio_error(excinfo, empty, "empty audio (0 samples)")


def test_streamed_truncated_mp3_yields_what_load_audio_returns_with_the_warning(tmp_path, mp3_bytes):
    path = tmp_path / "half.mp3"
    path.write_bytes(mp3_bytes[: len(mp3_bytes) // 2])

    # Same read size on both sides: libsndfile's mpg123 decodes a cut-off MP3 differently when
    # read in other block sizes (measured: 0.1 s vs 1 s reads differ by up to 0.5), while a
    # whole MP3 decodes the same (test above). stream_audio's default is load_audio's.
    with pytest.warns(UserWarning, match="truncated"):
        streamed = np.concatenate(list(stream_audio(path, SR_OUT)))
    with pytest.warns(UserWarning, match="truncated"):
        np.testing.assert_array_equal(streamed, load_audio(path, SR_OUT))
    assert 0 < streamed.size < 32000 * 0.75  # a prefix of the 2 s the header announces


def test_audio_info_reports_header_values(tmp_path):
    path = write(tmp_path / "tone.flac", stereo_tone(1.5))

    info = audio_info(path)

    assert info == AudioInfo(
        path=str(path),
        sample_rate=SR_IN,
        channels=2,
        num_frames=66150,
        duration_seconds=1.5,
        format="FLAC",
    )


def test_audio_info_of_mp3_counts_frames_from_header(tmp_path, mp3_bytes):
    path = tmp_path / "tone.mp3"
    path.write_bytes(mp3_bytes)

    info = audio_info(path)

    assert (info.format, info.sample_rate, info.channels) == ("MP3", SR_IN, 2)
    assert info.num_frames == 88200


# ----------------------------------------------------------------------------- errors


def assert_audio_error(excinfo, path: Path, problem_start: str) -> None:
    err = excinfo.value
    assert isinstance(err, ValueError)
    assert err.path == str(path)
    assert err.problem.startswith(problem_start), err.problem
    assert str(err) == f"{path}: {err.problem}"
    assert path.name in str(err)


def test_missing_file_is_reported_as_not_found(tmp_path):
    path = tmp_path / "nope.wav"
    with pytest.raises(AudioError) as excinfo:
        load_audio(path, SR_OUT)
    assert_audio_error(excinfo, path, "file not found")
    with pytest.raises(AudioError, match="file not found"):
        audio_info(path)


def test_text_file_named_wav_cannot_be_decoded(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n" * 20)

    with pytest.raises(AudioError) as excinfo:
        load_audio(path, SR_OUT)

    assert_audio_error(excinfo, path, "cannot decode: ")
    assert "Format not recognised" in excinfo.value.problem
    with pytest.raises(AudioError, match="cannot decode"):
        audio_info(path)


def test_mp3_truncated_to_200_bytes_cannot_be_decoded(tmp_path, mp3_bytes):
    # libsndfile fails to open it with "File does not exist or is not a regular file";
    # the error must not repeat that misleading claim.
    path = tmp_path / "cut short.mp3"
    path.write_bytes(mp3_bytes[:200])

    with pytest.raises(AudioError) as excinfo:
        load_audio(path, SR_OUT)

    assert_audio_error(excinfo, path, "cannot decode: ")
    assert "truncated or corrupt" in excinfo.value.problem


def test_mp3_truncated_mid_stream_decodes_a_prefix_with_a_warning(tmp_path, mp3_bytes):
    path = tmp_path / "half.mp3"
    path.write_bytes(mp3_bytes[: len(mp3_bytes) // 2])

    with pytest.warns(UserWarning, match="truncated"):
        wav = load_audio(path, SR_OUT)

    assert 0 < len(wav) < 32000 * 0.75
    assert audio_info(path).num_frames == 88200  # header still claims the full length


def test_wav_with_zero_frames_is_empty_audio(tmp_path):
    path = write(tmp_path / "silence.wav", np.zeros((0, 2), dtype=np.float32))

    with pytest.raises(AudioError) as excinfo:
        load_audio(path, SR_OUT)

    assert_audio_error(excinfo, path, "empty audio (0 samples)")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_sample_is_reported_with_its_index(tmp_path, bad):
    data = np.zeros((3000, 2), dtype=np.float32)
    data[2345, 1] = bad
    path = write(tmp_path / "broken.wav", data, subtype="FLOAT")

    with pytest.raises(AudioError) as excinfo:
        load_audio(path, SR_OUT, block_seconds=0.01)  # index must count across blocks

    assert_audio_error(excinfo, path, "non-finite samples (NaN or inf) at sample 2345")


def test_directory_is_not_decoded(tmp_path):
    with pytest.raises(AudioError, match="not a regular file"):
        load_audio(tmp_path, SR_OUT)


def test_check_length_names_file_and_receptive_field():
    check_length(np.zeros(400), 400)
    with pytest.raises(AudioError) as excinfo:
        check_length(np.zeros((2, 399)), 400, "clips/short one.wav")
    assert str(excinfo.value) == (
        "clips/short one.wav: too short: 399 samples (0.025 s) at 16000 Hz; "
        "the model needs at least 400 samples (its receptive field)"
    )


def test_audio_error_survives_pickling_for_dataloader_workers():
    err = pickle.loads(pickle.dumps(AudioError("a b.wav", "file not found")))
    assert (err.path, err.problem) == ("a b.wav", "file not found")
    assert str(err) == "a b.wav: file not found"


# ----------------------------------------------------------------------------- arrays


def test_to_mono_averages_channels_and_passes_mono_through():
    wav = np.array([[1.0, 2.0, 3.0], [3.0, 0.0, -3.0]])
    np.testing.assert_array_equal(to_mono(wav), [2.0, 1.0, 0.0])
    assert to_mono(wav).dtype == np.float32
    mono = np.arange(5, dtype=np.float32)
    assert to_mono(mono) is mono
    with pytest.raises(ValueError):
        to_mono(np.zeros((1, 2, 3)))


def test_resample_is_identity_at_equal_rates_and_per_channel_otherwise():
    x = np.random.default_rng(2).standard_normal((2, 4410)).astype(np.float32)
    assert resample(x, 16000, 16000) is x

    y = resample(x, SR_IN, SR_OUT)

    assert y.shape == (2, 1600) and y.dtype == np.float32
    np.testing.assert_array_equal(y[1], resample(x[1], SR_IN, SR_OUT))  # channels resample independently
    assert resample(x.astype(np.float64), SR_IN, SR_OUT).dtype == np.float32
    assert resample(np.zeros((2, 0)), SR_IN, SR_OUT).shape == (2, 0)


def test_crop_or_pad_crops_at_offset_and_zero_pads_the_end():
    wav = np.arange(1, 11, dtype=np.float32).reshape(1, 10)
    np.testing.assert_array_equal(crop_or_pad(wav, 4, offset=3), [[4, 5, 6, 7]])
    np.testing.assert_array_equal(crop_or_pad(wav, 4, offset=8), [[9, 10, 0, 0]])
    np.testing.assert_array_equal(crop_or_pad(wav[0], 12), list(range(1, 11)) + [0, 0])
    assert crop_or_pad(wav, 5, offset=20).tolist() == [[0, 0, 0, 0, 0]]


def test_random_crop_stays_in_bounds_and_is_reproducible_with_a_seed():
    wav = np.arange(100, dtype=np.float32)
    offsets = []
    rng = np.random.default_rng(123)
    for _ in range(500):
        crop, offset = random_crop(wav, 30, rng)
        assert 0 <= offset <= 70
        np.testing.assert_array_equal(crop, wav[offset : offset + 30])
        offsets.append(offset)
    assert {min(offsets), max(offsets)} == {0, 70}  # both ends reachable

    again = np.random.default_rng(123)
    assert [random_crop(wav, 30, again)[1] for _ in range(500)] == offsets


def test_random_crop_returns_short_clip_unchanged():
    wav = np.ones((2, 30), dtype=np.float32)
    crop, offset = random_crop(wav, 30, np.random.default_rng(0))
    assert crop is wav and offset == 0


# ----------------------------------------------------------------------------- chunks


def simulate(chunks: list[Chunk], num_samples: int, hop: int, rf: int) -> list[int]:
    """Global indices of the frames kept from each chunk, checking each chunk is valid."""
    kept: list[int] = []
    for c in chunks:
        assert 0 <= c.start < c.stop <= num_samples
        assert c.start % hop == 0  # chunk frame grid coincides with the global grid
        frames = (c.stop - c.start - rf) // hop + 1
        assert 0 <= c.keep_start < c.keep_stop <= frames
        kept.extend(c.start // hop + k for k in range(c.keep_start, c.keep_stop))
    return kept


HOP, RF = 320, 400
SIZES = [
    0, 399, 400, 401, 719, 720, 721,  # around one and two frames
    16000, 16079, 16080, 16081,  # one 16000-sample chunk (50 frames) +- a frame
    32000 + 80, 32000 + 80 + 319, 32000 + 80 + 320,  # 100 frames: exact multiple, then +1
    48000 + 80 + 320 * 1,  # 151 frames: remainder 1 frame (320 < 400 samples) -> merged
    48000 + 80 + 320 * 2,  # 152 frames: remainder 2 frames -> own chunk
    160000, 161234, 480000 + 17,
]


@pytest.mark.parametrize("num_samples", SIZES)
@pytest.mark.parametrize("chunk_samples", [320, 400, 16000, 16100, 48000])
@pytest.mark.parametrize("context", [0, 1, 320, 1000])
def test_plan_chunks_kept_frames_concatenate_to_the_single_pass_frames(
    num_samples, chunk_samples, context
):
    chunks = plan_chunks(
        num_samples, chunk_samples, hop=HOP, receptive_field=RF, context_samples=context
    )

    total = num_frames(num_samples, hop=HOP, receptive_field=RF)
    assert simulate(chunks, num_samples, HOP, RF) == list(range(total))
    owned = max(1, chunk_samples // HOP)
    assert all(c.num_kept <= owned + (RF - 1) // HOP for c in chunks)


@pytest.mark.parametrize(
    "num_samples, hop, rf, chunk, ctx",
    [(9999, 160, 400, 1000, 0), (12345, 256, 1024, 3000, 700), (5000, 7, 50, 3, 11)],
)
def test_plan_chunks_with_other_hops_and_receptive_fields(num_samples, hop, rf, chunk, ctx):
    chunks = plan_chunks(num_samples, chunk, hop=hop, receptive_field=rf, context_samples=ctx)
    total = (num_samples - rf) // hop + 1
    assert simulate(chunks, num_samples, hop, rf) == list(range(total))


@pytest.mark.parametrize("seed", range(6))
def test_stream_chunks_cut_the_windows_of_plan_chunks_whatever_the_blocks(seed):
    """Random lengths, hops, receptive fields, contexts and block boundaries (empty blocks,
    blocks shorter than a frame, one block): the windows and their samples are plan_chunks'."""
    rng = np.random.default_rng(seed)
    for _ in range(150):
        hop = int(rng.choice([1, 3, 7, 320]))
        rf, chunk, ctx = hop + int(rng.integers(0, 4 * hop)), int(rng.integers(1, 15 * hop)), int(rng.integers(0, 6 * hop))
        signal = np.arange(int(rng.integers(0, 60 * hop)), dtype=np.float32)
        cuts = np.sort(rng.integers(0, signal.size + 1, size=int(rng.integers(0, 12))))
        streamed = [
            (c, w.copy())
            for c, w in stream_chunks(np.split(signal, cuts), chunk, hop=hop, receptive_field=rf, context_samples=ctx)
        ]
        plan = plan_chunks(signal.size, chunk, hop=hop, receptive_field=rf, context_samples=ctx)
        assert [c for c, _ in streamed] == plan
        for c, window in streamed:
            np.testing.assert_array_equal(window, signal[c.start : c.stop])


def test_stream_chunks_hold_one_window_and_one_chunk():
    blocks = [np.zeros(100_000, np.float32)] * 5  # 500k samples in long blocks; windows of 16000 + 2 * 960
    sizes = [w.base.size if w.base is not None else w.size for _, w in stream_chunks(
        iter(blocks), 16000, hop=HOP, receptive_field=RF, context_samples=960)]
    assert len(sizes) == len(plan_chunks(500_000, 16000, hop=HOP, receptive_field=RF, context_samples=960))
    assert max(sizes) <= 16000 + RF + 2 * 960 + 16000


def test_plan_chunks_layout_without_context():
    # 151 frames, 50 per chunk: the 1-frame remainder (320 samples < 400) joins the last chunk.
    chunks = plan_chunks(48400, 16000)
    assert chunks == [
        Chunk(0, 16080, 0, 50),
        Chunk(16000, 32080, 0, 50),
        Chunk(32000, 48400, 0, 51),
    ]
    # 152 frames: a 2-frame remainder (640 samples) is a chunk of its own.
    assert plan_chunks(48720, 16000)[-1] == Chunk(48000, 48720, 0, 2)


def test_plan_chunks_rounds_chunk_down_and_context_up_to_the_hop():
    chunks = plan_chunks(100_000, 16100, context_samples=500)  # -> 16000 and 640
    assert chunks[1] == Chunk(16000 - 640, 32080 + 640, 2, 52)
    assert chunks[0].start == 0 and chunks[-1].stop == 100_000


def test_plan_chunks_is_empty_when_signal_is_shorter_than_the_receptive_field():
    assert plan_chunks(399, 16000) == []
    assert plan_chunks(400, 16000) == [Chunk(0, 400, 0, 1)]


def test_plan_chunks_rejects_nonsense_sizes():
    with pytest.raises(ValueError):
        plan_chunks(1000, 0)
    with pytest.raises(ValueError):
        plan_chunks(1000, 16000, context_samples=-1)


def test_chunked_framewise_features_equal_one_pass():
    """A per-frame function of the receptive field (what a CNN front end computes) gives
    the same features chunked as in one pass, context or not."""
    # float64, so that what is compared is the chunk bookkeeping, not the BLAS kernel's
    # summation order (a misplaced frame is off by ~sqrt(RF) = 20, rounding by ~1e-12).
    x = np.random.default_rng(3).standard_normal(50_000)
    weights = np.random.default_rng(4).standard_normal((RF, 8))

    def frames_of(wav: np.ndarray) -> np.ndarray:
        return np.lib.stride_tricks.sliding_window_view(wav, RF)[::HOP]

    def features(wav: np.ndarray) -> np.ndarray:
        return frames_of(wav) @ weights

    full = features(x)
    # Both sides are the same RF-term dot products summed in possibly different orders.
    tolerance = 2 * matmul_bound(frames_of(x), weights, U64)
    for context in (0, 960):
        chunked = np.concatenate(
            [
                features(x[c.start : c.stop])[c.keep_start : c.keep_stop]
                for c in plan_chunks(len(x), 7000, context_samples=context)
            ]
        )
        assert chunked.shape == full.shape == (156, 8)
        assert np.all(np.abs(chunked - full) <= tolerance)

"""Batched extraction: windows of equal length share one forward pass and give the rows of one
pass per window (float32 rounding aside); files are decoded ahead in a thread."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from musicssl import audio
from musicssl.evaluate.batching import DecodeAhead, batched_rows
from musicssl.evaluate.features import FeatureCache, window_bounds
from musicssl.evaluate.sources import EncoderSource, MfccSource
from musicssl.evaluate.tasks.base import Item, Protocol
from musicssl.extract import Encoder
from tests.conftest import micro_backbone, tone, write_tone

CLIP = Protocol(name="toy", title="Toy", kind="multiclass", outputs=("a", "b"), metrics=("accuracy",),
                window_seconds=0.5, min_window_seconds=0.1)
BEATS = Protocol(name="toybeats", title="ToyB", kind="beats", outputs=("beat",), metrics=("beat_f",))


@pytest.fixture
def source(variant):
    return EncoderSource(Encoder(micro_backbone(variant), device="cpu"), name="micro", fingerprint=variant)


def _frames64(backbone, window: np.ndarray) -> np.ndarray:
    """The exact function in float64: every hidden state of one window, (K, T, D)."""
    model = copy.deepcopy(backbone).double()
    wav = torch.from_numpy(window.astype(np.float64))[None]
    if model.config.normalize_waveform:
        wav = (wav - wav.mean()) / torch.sqrt(wav.var(unbiased=False) + 1e-5)
    with torch.no_grad():
        out = model(wav)
    states = list(out.layers[:-1]) + [out.last_hidden_state]
    return torch.stack([state[0] for state in states]).numpy()


def _pooled64(backbone, window: np.ndarray) -> np.ndarray:
    return _frames64(backbone, window).mean(1)  # (K, D)


def assert_within_float16_rounding(cached: np.ndarray, today: np.ndarray, exact: np.ndarray) -> None:
    """`cached` (float16) against today's float32 rows: the two float32 values differ by at most
    twice today's float32 error (same function, other summation order), and rounding each to
    float16 adds at most half a float16 spacing."""
    error = 2 * np.abs(today - exact).max()
    spacing = np.spacing(np.maximum(np.abs(today), np.abs(cached)).astype(np.float16)).astype(np.float64)
    assert cached.shape == today.shape
    assert np.all(np.abs(cached.astype(np.float64) - today) <= error + spacing)


def test_a_batch_gives_each_window_its_own_forward_pass(source):
    windows = np.stack([tone(0.5, frequency=110 * (i + 1), seed=i) for i in range(5)])  # (5, 8000)
    batched = source.pooled_batch(windows)  # one forward pass, (5, K, D)
    single = np.stack([source.pool(source.frames(window)) for window in windows])  # today's path
    exact = np.stack([_pooled64(source.encoder.backbone, window) for window in windows])
    # Both are float32 evaluations of the same function, only their summation order differs
    # (GEMM blocking over B*T rows, torch vs numpy mean): each differs from the float64 value by
    # its own rounding error, so the batched error is of the single pass's size (2x for order).
    single_error = np.abs(single - exact).max()
    assert single_error > 0
    assert np.abs(batched - exact).max() <= 2 * single_error
    frames = source.frames_batch(windows[:2])  # (2, K, T, D), frame-level tasks
    np.testing.assert_allclose(frames.mean(2), batched[:2], rtol=0, atol=2 * single_error)


def test_cached_rows_equal_one_pass_per_window_to_float16_rounding(tmp_path, source):
    paths = [write_tone(tmp_path / f"t{i}.wav", 1.3 + 0.5 * i, frequency=220 * (i + 1), seed=i) for i in range(4)]
    items = [Item(key=p.stem, path=p, target=0) for p in paths]
    calls = []
    hook = source.encoder.backbone.register_forward_hook(lambda module, args, out: calls.append(args[0].shape))
    cache = FeatureCache(tmp_path / "cache", source, "toy", CLIP)
    cache.extract(items, progress=False)
    hook.remove()
    loaded = cache.load(items)
    windows = []
    for path in paths:
        wav = audio.load_audio(path, 16000)
        windows += [wav[a:b] for a, b in window_bounds(wav.size, 16000, CLIP)]
    # 1.3, 1.8, 2.3, 2.8 s in 0.5-s windows: 2 + 3 + 4 + 5 full ones in one pass, four tails
    # of 0.3 s in another (window lengths 8000 and 4800 samples)
    assert sorted(calls) == [(4, 4800), (14, 8000)]
    today = np.stack([source.pool(source.frames(window)) for window in windows])
    exact = np.stack([_pooled64(source.encoder.backbone, window) for window in windows])
    assert_within_float16_rounding(loaded.rows, today, exact)


def test_frame_level_items_of_equal_length_share_a_pass(tmp_path, source):
    items = [Item(key=f"b{i}", path=write_tone(tmp_path / f"b{i}.wav", 1.0, seed=i), target=np.array([0.5]))
             for i in range(3)]
    calls = []
    hook = source.encoder.backbone.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    cache = FeatureCache(tmp_path / "cache", source, "toybeats", BEATS)
    cache.extract(items, progress=False)
    hook.remove()
    assert calls == [3]
    loaded = cache.load(items)
    pad = source.center_pad
    wav = audio.load_audio(items[1].path, 16000)
    today = source.frames(np.pad(wav, (pad, pad))).transpose(1, 0, 2)
    exact = _frames64(source.encoder.backbone, np.pad(wav, (pad, pad))).transpose(1, 0, 2)
    start, count = loaded.spans[1]
    assert_within_float16_rounding(loaded.rows[start:start + count], today, exact)


def test_a_bad_window_fails_alone(source):
    good = [tone(0.5, seed=i) for i in range(3)]
    bad = good[1].copy()
    bad[100] = np.nan
    rows = batched_rows(source, [good[0], bad, good[2]], pooled=True, batch_samples=10**6)
    assert isinstance(rows[1], audio.AudioError) and "non-finite" in str(rows[1])
    np.testing.assert_array_equal(rows[0], source.pooled_batch(good[0][None])[0])
    short = batched_rows(source, [tone(0.01)], pooled=True, batch_samples=10**6)  # 160 samples < 400
    assert isinstance(short[0], audio.AudioError) and "too short" in str(short[0])


def test_mfcc_source_batches_one_window_at_a_time():
    source = MfccSource()
    windows = np.stack([tone(0.5, seed=i) for i in range(2)])
    np.testing.assert_array_equal(source.pooled_batch(windows)[1], source.pool(source.frames(windows[1])))


def test_decode_ahead_keeps_order_and_reports_bad_files(tmp_path):
    paths = [write_tone(tmp_path / f"d{i}.wav", 0.2 + 0.1 * i) for i in range(6)]
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    paths.insert(2, bad)
    with DecodeAhead(paths, 16000, depth=2) as decoded:
        seen = list(decoded)
    assert [path for path, _, _ in seen] == paths
    assert isinstance(seen[2][2], audio.AudioError) and seen[2][1] is None
    assert [wav.size for _, wav, _ in seen if wav is not None] == [3200, 4800, 6400, 8000, 9600, 11200]
    with DecodeAhead(paths, 16000, depth=1) as decoded:  # leaving early stops the thread
        next(iter(decoded))
    assert not decoded._thread.is_alive()

"""Feature cache: windows as the protocol says, rows equal to direct extraction, no second
extraction, resume after a kill, bad files recorded and skipped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from musicssl.evaluate.features import FeatureCache, window_bounds
from musicssl.evaluate.sources import EncoderSource, MfccSource, open_source
from musicssl.evaluate.tasks.base import Item, Protocol
from musicssl.extract import Encoder
from musicssl.interop.huggingface import export_pretrained
from musicssl.frame_features import mfcc
from tests.conftest import micro_backbone, tone, write_tone

CLIP = Protocol(name="toy", title="Toy", kind="multiclass", outputs=("a", "b"), metrics=("accuracy",),
                window_seconds=1.0)
BEATS = Protocol(name="toybeats", title="ToyB", kind="beats", outputs=("beat",), metrics=("beat_f",))


def test_window_bounds_follow_the_protocol():
    sr = 100
    assert window_bounds(350, sr, CLIP.replace(min_window_seconds=0.25)) == [(0, 100), (100, 200), (200, 300), (300, 350)]
    short_tail = CLIP.replace(window_seconds=1.0, min_window_seconds=1.0)
    assert window_bounds(350, sr, short_tail) == [(0, 100), (100, 200), (200, 300)]  # 0.5 s tail dropped
    assert window_bounds(50, sr, short_tail) == [(0, 50)]  # the only window stays
    assert window_bounds(350, sr, CLIP.replace(crop_seconds=2.5, min_window_seconds=0.5)) == [(0, 100), (100, 200), (200, 250)]
    assert window_bounds(350, sr, CLIP.replace(window_seconds=None)) == [(0, 350)]


@pytest.fixture
def source():
    encoder = Encoder(micro_backbone("data2vec"), device="cpu")
    return EncoderSource(encoder, name="micro", fingerprint="f00")


@pytest.fixture
def items(tmp_path) -> list[Item]:
    paths = [write_tone(tmp_path / f"t{i}.wav", 2.2 + 0.3 * i, frequency=220 * (i + 1), seed=i) for i in range(3)]
    return [Item(key=p.stem, path=p, target=i % 2) for i, p in enumerate(paths)]


def test_rows_are_window_means_of_direct_extraction(tmp_path, source, items):
    cache = FeatureCache(tmp_path / "cache", source, "toy", CLIP.replace(min_window_seconds=0.25))
    assert cache.extract(items, progress=False) == 3
    loaded = cache.load(items)
    wav = tone(2.8, frequency=660, seed=2)
    expected = [source.encoder.extract(wav[a:b], 16000, chunk_seconds=None).numpy().mean(1)
                for a, b in [(0, 16000), (16000, 32000), (32000, wav.size)]]
    start, count = loaded.spans[2]
    assert count == 3  # 2.8 s -> windows of 1, 1 and 0.8 s
    np.testing.assert_allclose(loaded.rows[start:start + count], np.stack(expected), rtol=2e-3, atol=2e-3)
    one_layer = cache.load(items, layer=1)
    np.testing.assert_array_equal(one_layer.rows, loaded.rows[:, 1])


def test_second_run_extracts_nothing(tmp_path, source, items):
    cache = FeatureCache(tmp_path / "cache", source, "toy", CLIP)
    cache.extract(items, progress=False)
    before = cache.rows_path.read_bytes()
    again = FeatureCache(tmp_path / "cache", source, "toy", CLIP)
    assert again.extract(items, progress=False) == 0
    assert again.rows_path.read_bytes() == before
    # a new item is the only one extracted
    extra = Item(key="new", path=write_tone(tmp_path / "new.wav", 1.5), target=0)
    assert again.extract(items + [extra], progress=False) == 1


def test_tasks_of_one_feature_set_share_their_cache(tmp_path, source, items):
    # NSynth instrument and pitch read the same notes: the audio goes through the model once.
    first = FeatureCache(tmp_path / "cache", source, "first", CLIP.replace(feature_set="notes"))
    assert first.extract(items, progress=False) == len(items)
    second = FeatureCache(tmp_path / "cache", source, "second", CLIP.replace(name="second", feature_set="notes"))
    assert second.directory == first.directory and second.extract(items, progress=False) == 0
    np.testing.assert_array_equal(second.load(items).rows, first.load(items).rows)
    alone = FeatureCache(tmp_path / "cache", source, "third", CLIP.replace(name="third"))
    assert alone.directory != first.directory and alone.extract(items, progress=False) == len(items)


def test_killed_run_resumes_from_its_index(tmp_path, source, items):
    reference = FeatureCache(tmp_path / "ref", source, "toy", CLIP)
    reference.extract(items, progress=False)
    partial = FeatureCache(tmp_path / "cache", source, "toy", CLIP)
    partial.extract(items[:2], progress=False)
    with open(partial.rows_path, "ab") as rows:  # rows of an item whose index line never came
        rows.write(b"\x00" * 1000)
    with open(partial.index_path, "a") as index:
        index.write('{"key": "t2", "sta')  # a line cut by the kill
    resumed = FeatureCache(tmp_path / "cache", source, "toy", CLIP)
    assert resumed.extract(items, progress=False) == 1
    np.testing.assert_array_equal(resumed.load(items).rows, reference.load(items).rows)


def test_unreadable_audio_is_recorded_and_skipped(tmp_path, source, items):
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    cache = FeatureCache(tmp_path / "cache", source, "toy", CLIP)
    cache.extract(items + [Item(key="bad", path=bad, target=0)], progress=False)
    assert set(cache.errors()) == {"bad"} and "bad.wav" in cache.errors()["bad"]
    loaded = cache.load(items + [Item(key="bad", path=bad, target=0)])
    assert [item.key for item in loaded.items] == ["t0", "t1", "t2"]


def test_items_within_a_file_are_read_at_their_offset(tmp_path, source):
    path = write_tone(tmp_path / "long.wav", 3.0)
    wav = tone(3.0)
    items = [Item(key=f"c{k}", path=path, target=0, offset=float(k), duration=1.0) for k in range(3)]
    cache = FeatureCache(tmp_path / "cache", source, "toy", CLIP.replace(window_seconds=None))
    cache.extract(items, progress=False)
    loaded = cache.load(items)
    direct = source.encoder.extract(wav[16000:32000], 16000, chunk_seconds=None).numpy().mean(1)
    np.testing.assert_allclose(loaded.rows[1], direct, rtol=2e-3, atol=2e-3)


def test_frame_level_rows_sit_on_a_centred_grid(tmp_path, source):
    path = write_tone(tmp_path / "beat.wav", 2.0)
    cache = FeatureCache(tmp_path / "cache", source, "toybeats", BEATS)
    item = Item(key="beat", path=path, target=np.array([0.5, 1.0]))
    cache.extract([item], progress=False)
    loaded = cache.load([item], layer=2)
    hop = source.encoder.config.hop
    assert loaded.rows.shape == (32000 // hop + 1, source.frame_dim)  # one frame per hop, from t = 0


def test_mfcc_source_pools_mean_and_std():
    source = MfccSource()
    wav = tone(1.0)
    frames = source.frames(wav)
    np.testing.assert_array_equal(frames[0], mfcc(wav))
    pooled = source.pool(frames)
    assert pooled.shape == (1, 78)
    np.testing.assert_allclose(pooled[0, 39:], mfcc(wav).std(0), rtol=1e-6)


def test_sources_from_specs(tmp_path):
    directory = export_pretrained(micro_backbone("hubert"), tmp_path / "m")
    model = open_source(str(directory), device="cpu")
    assert model.num_layers == 3 and model.name == "m"
    random = open_source(f"random:{directory}", device="cpu")
    assert random.num_layers == 3 and random.fingerprint != model.fingerprint
    assert open_source("random:hubert_tiny", device="cpu").num_layers == open_source(
        "random:hubert_tiny", device="cpu").num_layers
    assert open_source("mfcc").pooled_dim == 78
    assert open_source(f"My model={directory}", device="cpu").name == "My model"
    checkpoint = export_pretrained(micro_backbone("hubert"), tmp_path / "run1" / "checkpoints" / "step_00000300")
    assert open_source(str(checkpoint), device="cpu").name == "run1@step_00000300"
    with pytest.raises(ValueError, match="neither a model directory nor a backbone preset"):
        open_source("random:nonsense")


def _many_windows(tmp_path, count: int = 4, seconds: float = 6.0) -> list[Item]:
    paths = [write_tone(tmp_path / f"w{i}.wav", seconds, frequency=200 * (i + 1), seed=i) for i in range(count)]
    return [Item(key=p.stem, path=p, target=0) for p in paths]


def test_rows_stay_float16_as_cached_without_a_float32_copy(tmp_path, source):
    import tracemalloc

    items = _many_windows(tmp_path)
    cache = FeatureCache(tmp_path / "cache", source, "toy", CLIP.replace(window_seconds=0.1, min_window_seconds=0.1))
    cache.extract(items, progress=False)
    on_disk = np.fromfile(cache.rows_path, dtype=np.float16).reshape(-1, *cache.row_shape)
    num_rows, layers, dim = on_disk.shape  # 4 files x 60 windows of 0.1 s
    assert num_rows == 240
    half_table = num_rows * layers * dim * 2  # bytes of the rows as float16

    # Every item, in cache order: one run of the file, so a read-only memmap, nothing copied.
    tracemalloc.start()
    whole = cache.load(items)
    peak_view = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert isinstance(whole.rows, np.memmap) and whole.rows.dtype == np.float16
    assert whole.rows.nbytes == half_table
    np.testing.assert_array_equal(whole.rows, on_disk)
    # What load allocates besides the rows is O(items) Python objects (a few hundred bytes per
    # item); a float32 table would be 2 x half_table.
    assert peak_view < half_table / 4

    # Items out of file order: one float16 copy, filled in place (no pieces, no float32 copy).
    shuffled = [items[2], items[0], items[3]]
    tracemalloc.start()
    picked = cache.load(shuffled)
    peak_copy = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert not isinstance(picked.rows, np.memmap) and picked.rows.dtype == np.float16
    assert picked.rows.nbytes == 3 * 60 * layers * dim * 2
    # peak = the copy + O(items) objects; a float32 result (2x) or pieces + concatenation (2x)
    # would exceed 1.25x.
    assert picked.rows.nbytes <= peak_copy < 1.25 * picked.rows.nbytes
    for (start, count), item in zip(picked.spans, shuffled):
        entry = cache.index[item.key]
        np.testing.assert_array_equal(picked.rows[start:start + count],
                                      on_disk[entry["start"]:entry["start"] + entry["count"]])

    one_layer = cache.load(shuffled, layer=2)
    assert one_layer.rows.dtype == np.float16 and one_layer.rows.shape == (180, dim)
    np.testing.assert_array_equal(one_layer.rows, picked.rows[:, 2])
    assert cache.load([]).rows.shape == (0, layers, dim)

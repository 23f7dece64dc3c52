"""Generated music: ground truth checked by measurement on the audio (pitch, key, beats),
labels against their definitions, balance, determinism, and the files `synthesize` writes as
read back by the real dataset loaders."""

from __future__ import annotations

import dataclasses
import filecmp
from collections import Counter

import mir_eval
import numpy as np
import pytest
from scipy.ndimage import maximum_filter1d

from musicssl.evaluate.tasks import LayoutExample, get_task
from musicssl.synth import datasets, songs
from musicssl.synth.datasets import stratified_splits
from musicssl.synth.instruments import FAMILIES, PITCH_RANGE, SAMPLE_RATE, make_instrument, midi_to_hz
from musicssl.synth.songs import (KEYS, STYLE_NAMES, STYLES, arousal_valence, compose, key_pitch_classes, render,
                                  sample_song, song_tags)

SR = SAMPLE_RATE
# Krumhansl-Kessler key profiles (C major, C minor), the classic chroma template
KK_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
KK_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])


def song_of(style: str, seed: int, seconds: float = 8.0, **changes) -> songs.Song:
    return dataclasses.replace(sample_song(np.random.default_rng(seed), seconds, style=style), **changes)


# ------------------------------------------------------------------ measurements


def fundamental(audio: np.ndarray) -> float:
    """f0 in Hz of a steady note: the lowest sub-multiple of the strongest spectral peak that is
    itself a peak (>= 10 % of it), refined by parabolic interpolation on the log spectrum."""
    x = audio[int(0.2 * SR):int(1.2 * SR)] * np.hanning(SR)
    size = 1 << 18
    magnitude = np.abs(np.fft.rfft(x, size))
    hz_per_bin = SR / size
    strongest = int(np.argmax(magnitude))
    for harmonic in range(8, 0, -1):
        center = strongest / harmonic
        if center * hz_per_bin < 25:
            continue
        low, high = int(center * 0.97), int(center * 1.03) + 1
        peak = low + int(np.argmax(magnitude[low:high]))
        if magnitude[peak] >= 0.1 * magnitude[strongest]:
            a, b, c = np.log(magnitude[peak - 1:peak + 2] + 1e-12)
            return (peak + 0.5 * (a - c) / (a - 2 * b + c)) * hz_per_bin
    raise AssertionError("no spectral peak")


def cents(f: float, g: float) -> float:
    return 1200 * np.log2(f / g)


def onset_peaks(audio: np.ndarray) -> np.ndarray:
    """Times (s) of the peaks of a spectral-flux onset envelope over 16 log-spaced bands from
    125 Hz (32-ms frames, 5-ms hop; a peak is a maximum within +-20 ms above 30 % of the top)."""
    hop, win = 80, 512
    audio = np.concatenate([np.zeros(win, np.float32), audio])   # an onset at 0 s needs a frame before it
    frames = np.lib.stride_tricks.sliding_window_view(audio, win)[::hop] * np.hanning(win)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2                                # (frames, 257)
    edges = np.unique(np.geomspace(4, power.shape[1], 17).astype(int))
    bands = np.add.reduceat(power, edges[:-1], axis=1)
    bands = np.log(bands + 1e-3 * bands.max())    # a floor: no "onsets" in the noise of decaying tails
    flux = np.maximum(np.diff(bands, axis=0), 0).sum(axis=1)
    times = (np.arange(1, len(bands)) * hop - win / 2) / SR
    local = (flux == maximum_filter1d(flux, 9)) & (flux > 0.3 * np.percentile(flux, 99))
    return times[local]


def chroma_key(audio: np.ndarray) -> str:
    """The key whose rotated Krumhansl-Kessler profile correlates best with the mean chroma."""
    frames = np.lib.stride_tricks.sliding_window_view(audio, 4096)[::2048] * np.hanning(4096)
    magnitude = np.abs(np.fft.rfft(frames, axis=1)).mean(axis=0)
    hz = np.fft.rfftfreq(4096, 1 / SR)
    band = (hz > 55) & (hz < 2000)
    pitch_class = np.round(12 * np.log2(hz[band] / 440) + 69).astype(int) % 12
    chroma = np.bincount(pitch_class, magnitude[band], 12)
    scores = [np.corrcoef(chroma, np.roll(KK_MAJOR if k < 12 else KK_MINOR, k % 12))[0, 1] for k in range(24)]
    return KEYS[int(np.argmax(scores))]


# ------------------------------------------------------------------ instruments


@pytest.mark.parametrize("family", ["guitar", "keyboard", "organ", "mallet", "bass", "synth_lead", "reed", "string"])
def test_note_fundamental_matches_its_midi_pitch(family):
    # guitar: Karplus-Strong, bass/synth_lead: FM, mallet: inharmonic partials, others: additive
    instrument = make_instrument(family, 2)
    low, high = PITCH_RANGE[family]
    for midi in (low, (low + high) // 2, high):
        note = instrument.play(midi, 1.5, 0.8, np.random.default_rng(midi))
        assert abs(cents(fundamental(note), midi_to_hz(midi))) < 15, (family, midi)   # detune is <= 6 cents


def test_instruments_vary_per_note_but_keep_their_timbre():
    guitar, other = make_instrument("guitar", 0), make_instrument("guitar", 1)
    assert guitar.timbre == make_instrument("guitar", 0).timbre and guitar.timbre != other.timbre
    first = guitar.play(60, 0.5, 0.7, np.random.default_rng(0))
    second = guitar.play(60, 0.5, 0.7, np.random.default_rng(1))
    assert first.shape == second.shape and not np.allclose(first, second)


def test_every_family_and_drum_plays_finite_bounded_audio():
    rng = np.random.default_rng(0)
    for family in FAMILIES:
        note = make_instrument(family, 0).play(PITCH_RANGE[family][0], 0.3, 1.0, rng)
        assert note.dtype == np.float32 and np.all(np.isfinite(note)) and 0.99 <= np.max(np.abs(note)) <= 1.0
        assert note[-1] == pytest.approx(0, abs=1e-3)  # the release ends in silence, no click (-60 dB: a level, not rounding)
    for drum in (36, 38, 42, 46):
        hit = make_instrument("drums", 0).play(drum, 0.1, 0.5, rng)
        # scaled to a 0.65 peak, then stored as float32: one rounding (plus one of the scale)
        assert np.all(np.isfinite(hit)) and np.max(np.abs(hit)) == pytest.approx(0.65, rel=2 * 2.0**-24)


# ------------------------------------------------------------------ music


def test_keys_are_the_24_giantsteps_names_with_flats():
    assert len(KEYS) == 24 and KEYS[0] == "C major" and KEYS[13] == "Db minor" and KEYS[-1] == "B minor"
    assert key_pitch_classes("C major") == {0, 2, 4, 5, 7, 9, 11}
    assert key_pitch_classes("A minor") == {9, 11, 0, 2, 4, 5, 7} | {8}   # natural minor + leading tone G#


@pytest.mark.parametrize("style", STYLE_NAMES)
def test_every_note_lies_in_the_key_and_in_its_instruments_range(style):
    for i, key in enumerate(KEYS[::5]):
        song = sample_song(np.random.default_rng(i), 12.0, style=style, key=key)
        score = compose(song)
        pitched = [note for note in score.notes if note.part != "drums"]
        assert pitched and {note.midi % 12 for note in pitched} <= key_pitch_classes(key)
        assert KEYS.index(key) % 12 in {note.midi % 12 for note in pitched if note.part == "bass"}   # the tonic
        for part, family, _ in song.parts:
            if part != "drums":
                low, high = PITCH_RANGE[family]
                assert all(low <= note.midi <= high for note in pitched if note.part == part), (part, family)


def test_minor_keys_use_the_leading_tone_only_over_the_dominant():
    song = song_of("classical", 3, 30.0, key="A minor")
    period = 60 / song.tempo
    bar_start = song.first_beat - (song.bar_phase + song.meter) * period   # compose's pickup bar
    pitch_classes_per_bar: dict[int, set[int]] = {}
    for note in compose(song).notes:
        bar = int(np.floor((note.onset - bar_start) / (song.meter * period) + 1e-9))
        pitch_classes_per_bar.setdefault(bar, set()).add(note.midi % 12)
    dominant_bars = [bar for bar, pcs in pitch_classes_per_bar.items() if 8 in pcs]            # G#: E major chord
    assert dominant_bars and all({4, 8, 11} <= pitch_classes_per_bar[bar] for bar in dominant_bars)
    assert not any(7 in pitch_classes_per_bar[bar] for bar in dominant_bars)                   # no G natural there
    assert any(7 in pcs for pcs in pitch_classes_per_bar.values())                             # but elsewhere


def test_chroma_of_the_audio_finds_the_key():
    # One 6-s song per key: a plain chroma template matcher, itself an imperfect key finder,
    # gets most keys exactly and most misses are fifth/relative/parallel neighbours (chance
    # would be 1/24 exact and a weighted score of about 0.1).
    estimates = [chroma_key(render(sample_song(np.random.default_rng(100 + i), 6.0, STYLE_NAMES[i % 6], key))[0])
                 for i, key in enumerate(KEYS)]
    exact = sum(estimate == key for estimate, key in zip(estimates, KEYS))
    weighted = np.mean([mir_eval.key.weighted_score(key, estimate) for estimate, key in zip(estimates, KEYS)])
    assert exact >= 10 and weighted >= 0.55, (exact, weighted)


@pytest.mark.parametrize("style", ["blues", "disco", "jazz", "metal", "reggae"])
def test_beats_are_drum_onsets(style):
    song = song_of(style, 7, 10.0)
    song = dataclasses.replace(song, parts=tuple(p for p in song.parts if p[0] != "drums") + (("drums", "drums", 0),))
    audio, score = render(song)
    period = 60 / song.tempo
    # the grid: first beat at the song's offset, one beat per period, a downbeat every bar
    assert score.beats[0] == pytest.approx(song.first_beat)
    np.testing.assert_allclose(np.diff(score.beats), period, rtol=1e-9)
    assert score.beats[-1] < song.seconds <= score.beats[-1] + period + 1e-9
    assert set(score.downbeats) <= set(score.beats)
    np.testing.assert_allclose(np.diff(score.downbeats), song.meter * period, rtol=1e-9)
    assert score.downbeats[0] == pytest.approx(song.first_beat + ((-song.bar_phase) % song.meter) * period)
    # every beat is a drum stroke in the score ...
    drum_onsets = np.array([note.onset for note in score.notes if note.part == "drums"])
    assert all(np.min(np.abs(drum_onsets - beat)) < 1e-9 for beat in score.beats)
    # ... an onset in the drum track's audio (within 20 ms), where 50 ms before a beat there is none ...
    drums_only, _ = render(dataclasses.replace(song, parts=song.parts[-1:]))
    peaks = onset_peaks(drums_only)
    assert all(np.min(np.abs(peaks - beat)) <= 0.02 for beat in score.beats)
    assert not any(np.min(np.abs(peaks - beat)) <= 0.02 for beat in score.beats - 0.05)
    # ... and in the full mix, where the other parts add onsets of their own
    peaks = onset_peaks(audio)
    assert np.mean([np.min(np.abs(peaks - beat)) <= 0.02 for beat in score.beats]) >= 0.95
    assert np.mean([np.min(np.abs(peaks - beat)) <= 0.02 for beat in score.beats - 0.05]) <= 0.3


# ------------------------------------------------------------------ labels


def test_tags_and_emotion_targets_follow_their_definitions():
    fast_loud = song_of("metal", 0, tempo=180.0, dynamics=1.0, density=1.0, key="E minor", register=0.0)
    slow_quiet = song_of("classical", 0, tempo=70.0, dynamics=0.0, density=0.0, key="C major", register=1.0)
    assert arousal_valence(fast_loud) == {"arousal": 1.0, "valence": -1.0}
    assert arousal_valence(slow_quiet) == {"arousal": -1.0, "valence": 1.0}
    middle = dataclasses.replace(slow_quiet, tempo=125.0, dynamics=0.5, density=0.5, register=0.5)
    assert arousal_valence(middle) == {"arousal": 0.0, "valence": 0.7}
    assert {"metal", "fast", "loud", "drums"} <= set(song_tags(fast_loud))
    assert {"classical", "slow", "quiet", "no drums"} <= set(song_tags(slow_quiet))
    assert not {"fast", "slow", "loud", "quiet"} & set(song_tags(dataclasses.replace(middle, tempo=110.0)))
    instruments = {songs.FAMILY_TAGS.get(family, family) for part, family, _ in slow_quiet.parts}
    assert set(song_tags(slow_quiet)) == {"classical", "slow", "quiet", "no drums"} | instruments


def test_stratified_splits_keep_every_class_in_proportion():
    labels = [c for c in "abcd" for _ in range(10)]
    splits = stratified_splits(labels, (0.6, 0.2, 0.2), np.random.default_rng(0))
    for c in "abcd":
        assert Counter(s for s, label in zip(splits, labels) if label == c) == {"train": 6, "valid": 2, "test": 2}
    # fractional shares round at staggered offsets: totals stay within one of the target
    splits = stratified_splits([c for c in "abcdef" for _ in range(3)], (0.5, 0.25, 0.25), np.random.default_rng(0))
    assert Counter(splits) in ({"train": 9, "valid": 5, "test": 4}, {"train": 9, "valid": 4, "test": 5})
    with pytest.raises(ValueError, match="summing to 1"):
        stratified_splits(labels, (0.5, 0.2, 0.2), np.random.default_rng(0))


def check_audio(examples, seconds: float | None = None, sounding: float | None = None) -> None:
    """float32 mono at 16 kHz, finite, peak at a random level in [0.25, 0.95], never silent (in
    the first `sounding` seconds: an NSynth note ends in its release)."""
    peaks = []
    for example in examples:
        audio = example.audio
        assert example.sample_rate == SR and audio.dtype == np.float32 and audio.ndim == 1
        assert seconds is None or audio.size == round(seconds * SR)
        assert np.all(np.isfinite(audio))
        peaks.append(float(np.max(np.abs(audio))))
        assert 0.25 - 1e-6 <= peaks[-1] <= 0.95 + 1e-6
        window = SR // 2
        audio = audio[: round((sounding or 1e9) * SR)]
        rms = np.sqrt(np.mean(audio[: audio.size // window * window].reshape(-1, window) ** 2, axis=1))
        assert rms.min() > 3e-3, f"{example.name}: a silent half second"
        blocks = np.abs(audio[: audio.size // 160 * 160]).reshape(-1, 160).max(axis=1)
        assert blocks.min() > 0, f"{example.name}: 10 ms of digital silence"
    assert np.std(peaks) > 0.05   # the gain is random: level says nothing about the label


def test_genre_examples_are_balanced_with_beats_and_tempo():
    examples = datasets.genre_examples(12, seed=3, seconds=3.0)
    check_audio(examples, 3.0)
    assert Counter(e.label for e in examples) == {style: 2 for style in STYLE_NAMES}
    assert Counter(e.split for e in examples) == {"train": 6, "valid": 2, "test": 4}   # GTZAN-like 5:2:3
    for example in examples:
        beats, tempo = example.extra["beats"], example.extra["tempo"]
        low, high = STYLES[example.label].tempo
        assert low <= tempo <= high and 0 <= beats[0] < 60 / tempo and beats[-1] < 3.0
        np.testing.assert_allclose(np.diff(beats), 60 / tempo)
        assert set(example.extra["downbeats"]) <= set(beats)


def test_key_examples_cover_all_keys_with_split_disjoint_artists():
    from musicssl.evaluate.tasks.giantsteps import TRAIN_SLOTS, artist_slot

    examples = datasets.key_examples(24, seed=1, seconds=2.0)
    check_audio(examples, 2.0)
    assert sorted(e.label for e in examples) == sorted(KEYS)
    artist_splits = {}
    for example in examples:
        artist_splits.setdefault(example.extra["artist"], set()).add(example.split)
        if example.split != "test":   # GiantSteps' artist hash must agree with the intended split
            assert (artist_slot(example.extra["artist"]) < TRAIN_SLOTS) == (example.split == "train")
    assert all(len(splits) == 1 for splits in artist_splits.values())
    assert len(artist_splits) < len(examples)   # artists have several songs


def test_tag_and_emotion_examples_carry_their_song_labels():
    tags = datasets.tag_examples(12, seed=2, seconds=2.0)
    check_audio(tags, 2.0)
    for i, example in enumerate(tags):
        assert isinstance(example.label, tuple) and STYLE_NAMES[i % 6] in example.label
        assert ("drums" in example.label) != ("no drums" in example.label)
    emotions = datasets.emotion_examples(12, seed=2, seconds=2.0)
    check_audio(emotions, 2.0)
    for i, example in enumerate(emotions):
        # the documented seeding: example i comes from default_rng([seed, 5, 1, i])
        song = sample_song(np.random.default_rng([2, 5, 1, i]), 2.0, style=STYLE_NAMES[i % 6])
        assert example.label == arousal_valence(song) and example.extra["genre"] == song.style
    arousal = [e.label["arousal"] for e in emotions]
    valence = [e.label["valence"] for e in emotions]
    assert np.std(arousal) > 0.15 and np.std(valence) > 0.3 and all(-1 <= v <= 1 for v in arousal + valence)


def test_nsynth_examples_are_balanced_notes_of_split_disjoint_instruments():
    examples = datasets.nsynth_examples(6, seed=0, instruments=4)
    check_audio(examples, 4.0, sounding=1.0)   # plucked and struck notes decay, as in NSynth
    assert Counter(e.label for e in examples) == {family: 6 for family in FAMILIES}
    assert len({e.name for e in examples}) == len(examples)
    owners = {}
    for example in examples:
        pitch, velocity = example.extra["pitch"], example.extra["velocity"]
        assert example.extra["instrument"].startswith(example.label + "_synthetic_")
        assert PITCH_RANGE[example.label][0] <= pitch <= PITCH_RANGE[example.label][1]
        assert velocity in (25, 50, 75, 100, 127)
        owners.setdefault(example.extra["instrument"], set()).add(example.split)
        if example.label in ("guitar", "organ", "keyboard"):
            assert abs(cents(fundamental(example.audio), midi_to_hz(pitch))) < 15, example.name
    assert all(len(splits) == 1 for splits in owners.values())   # as in NSynth: no instrument in two splits


def test_note_runs_sound_without_gaps():
    clips = [LayoutExample(str(i), datasets.note_run(np.random.default_rng(i), 6.0), SR, "train", None) for i in range(8)]
    check_audio(clips, 6.0)


# ------------------------------------------------------------------ determinism and files


def test_same_seed_same_audio_other_seed_other_audio():
    first, again, other = (datasets.corpus(3, seed=seed, seconds=(1.0, 2.0)) for seed in (5, 5, 6))
    for a, b in zip(first, again):
        assert a.name == b.name and np.array_equal(a.audio, b.audio)
    assert all(not np.array_equal(a.audio, b.audio) for a, b in zip(first, other))
    check_audio(first)
    notes, notes_again = (datasets.nsynth_examples(2, seed=1, instruments=3) for _ in range(2))
    assert [(e.name, e.split) for e in notes] == [(e.name, e.split) for e in notes_again]
    assert all(np.array_equal(a.audio, b.audio) for a, b in zip(notes, notes_again))


def tree_bytes(root) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_synthesize_writes_every_dataset_as_its_loader_reads_it(tmp_path):
    summary = datasets.synthesize(tmp_path / "a", preset="tests", seed=0, progress=False)
    config = datasets.synth_preset("tests")
    corpus_files = list((tmp_path / "a" / "corpus").glob("*.wav"))
    assert summary["examples"]["corpus"]["train"] == config.corpus_clips == len(corpus_files)
    loads = {"nsynth_instrument": ("NSynth", {}), "nsynth_pitch": ("NSynth", {}), "gtzan": ("GTZAN", {}),
             "gtzan_beats": ("GTZAN", {}), "mtt": ("MTT", {}), "emo": ("EMO", {}),
             "gs": ("GS", {"segment_seconds": str(config.key_seconds)})}   # tiny tracks: one segment each
    splits = {}
    for name, (folder, options) in loads.items():
        task = get_task(name)
        splits[name] = (task, task.load(tmp_path / "a" / folder, **options))
        assert splits[name][1].sizes() == summary["examples"][folder], name
    # labels survive the round trip: the same multiset of labels per split as the factories give
    genres = datasets.genre_examples(config.genre_clips, 0, config.genre_seconds)
    task, loaded = splits["gtzan"]
    for split in ("train", "valid", "test"):
        assert sorted(task.protocol.outputs[item.target] for item in loaded[split]) == \
            sorted(e.label for e in genres if e.split == split)
    first_beats = sorted(round(float(item.target[0]), 6) for split in ("train", "valid", "test")
                         for item in splits["gtzan_beats"][1][split])
    assert first_beats == sorted(round(float(e.extra["beats"][0]), 6) for e in genres)
    notes = datasets.nsynth_examples(config.nsynth_per_family, 0, instruments=config.nsynth_instruments)
    task, loaded = splits["nsynth_instrument"]
    assert sorted((split, task.protocol.outputs[item.target]) for split in ("train", "valid", "test")
                  for item in loaded[split]) == sorted((e.split, e.label) for e in notes)
    keys = datasets.key_examples(config.key_tracks, 0, config.key_seconds)
    task, loaded = splits["gs"]
    assert sorted((split, task.protocol.outputs[item.target]) for split in ("train", "valid", "test")
                  for item in loaded[split]) == sorted((e.split, e.label) for e in keys)
    # a second run is byte-identical; another seed is not
    datasets.synthesize(tmp_path / "b", preset="tests", seed=0, progress=False)
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")
    datasets.synthesize(tmp_path / "c", preset="tests", seed=1, progress=False)
    assert not filecmp.cmp(tmp_path / "a" / "corpus" / "clip_00000.wav", tmp_path / "c" / "corpus" / "clip_00000.wav",
                           shallow=False)


def test_unknown_preset_or_a_used_folder_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="demo, tests"):
        datasets.synthesize(tmp_path, preset="huge")
    (tmp_path / "old.wav").write_bytes(b"")
    with pytest.raises(FileExistsError, match="not empty"):
        datasets.synthesize(tmp_path, preset="tests")

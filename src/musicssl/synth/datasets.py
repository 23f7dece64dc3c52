"""The datasets of the synthetic benchmark, drawn from generated songs, and `synthesize`, which
writes them in the real datasets' layouts (each task module's `write_layout`, looked up in
LAYOUT_WRITERS) beside a pre-training corpus.

Determinism: example i of a dataset is drawn from `default_rng([seed, dataset code, 1, i])`,
splits (and NSynth's note plan) from `default_rng([seed, dataset code, 0])` and artists from
`[seed, code, 2]`, so the same seed gives the same arrays and, through `synthesize`,
byte-identical files; a song does not depend on how many others are generated. Loudness is no shortcut: every example is scaled to a random peak in
[0.25, 0.95], so "loud"/"quiet" and arousal are heard in timbre (velocity brightens every
family and drives the drums) and in tempo and density, not in level.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from musicssl.evaluate.tasks import emomusic, giantsteps, gtzan, mtt, nsynth
from musicssl.evaluate.tasks.base import SPLITS, LayoutExample
from musicssl.synth.instruments import FAMILIES, PITCH_RANGE, SAMPLE_RATE, Note, make_instrument, perform
from musicssl.synth.songs import KEYS, STYLE_NAMES, arousal_valence, render, sample_song, song_tags

# The writer of each generated dataset's layout, by task module: a dataset is written exactly as
# the task that reads it expects its real counterpart on disk.
LAYOUT_WRITERS: dict[str, Callable[[Path, Sequence[LayoutExample]], None]] = {
    "nsynth": nsynth.write_layout, "giantsteps": giantsteps.write_layout, "gtzan": gtzan.write_layout,
    "mtt": mtt.write_layout, "emomusic": emomusic.write_layout}


# ---------------------------------------------------------------- splits and artists

ARTIST_WORDS = (("Amber", "Blue", "Cobalt", "Crimson", "Dusty", "Electric", "Fading", "Golden", "Hollow", "Iron",
                 "Jade", "Kinetic", "Lunar", "Midnight", "Neon", "Opal", "Paper", "Quiet", "Rusty", "Silver",
                 "Tidal", "Velvet", "Wild", "Young"),
                ("Anchors", "Bees", "Canyons", "Drifters", "Echoes", "Foxes", "Gardens", "Harbours", "Islands",
                 "Jets", "Kites", "Lanterns", "Meadows", "Nomads", "Orbits", "Pilots", "Rivers", "Sparrows",
                 "Towers", "Valleys", "Waves", "Wolves", "Yachts", "Zephyrs"))


def _check_proportions(proportions: Sequence[float]) -> tuple[float, float, float]:
    if len(proportions) != 3 or min(proportions) < 0 or abs(sum(proportions) - 1) > 1e-6:
        raise ValueError(f"split proportions must be three non-negative numbers (train, valid, test) summing "
                         f"to 1, got {tuple(proportions)}")
    return tuple(float(p) for p in proportions)


def stratified_splits(labels: Sequence, proportions: Sequence[float], rng: np.random.Generator) -> list[str]:
    """A split per example, in the given proportions within every label (so classes stay
    balanced in every split). Where a class's share is fractional, classes round at staggered
    offsets, so split totals are within one of count * proportion."""
    train, valid, _ = _check_proportions(proportions)
    classes = list(dict.fromkeys(labels))
    splits = [""] * len(labels)
    for c, label in enumerate(classes):
        members = rng.permutation([i for i, other in enumerate(labels) if other == label])
        offset = (c + 0.5) / len(classes)
        cut1 = int(np.floor(members.size * train + offset))
        cut2 = int(np.floor(members.size * (train + valid) + offset))
        for position, i in enumerate(members):
            splits[i] = SPLITS[0] if position < cut1 else SPLITS[1] if position < cut2 else SPLITS[2]
    return splits


def artist_names(splits: Sequence[str], rng: np.random.Generator,
                 accept: Callable[[str, str], bool] = lambda name, split: True) -> list[str]:
    """Made-up artists with 1-3 songs each, never shared across splits (the artist-disjoint
    splits of GiantSteps and EmoMusic). `accept(name, split)` can veto a name for a split
    (GiantSteps decides train/valid by a hash of the artist)."""
    first, second = ARTIST_WORDS
    combinations = len(first) * len(second)
    pool = iter(f"{first[i % len(first)]} {second[i // len(first) % len(second)]}"
                + (f" {i // combinations + 1}" if i >= combinations else "")
                for i in (int(j) for j in rng.permutation(10 * combinations)))
    names = [""] * len(splits)
    for split in SPLITS:
        members = [int(i) for i in rng.permutation([i for i, s in enumerate(splits) if s == split])]
        while members:
            name, take = next(name for name in pool if accept(name, split)), int(rng.integers(1, 4))
            for i in members[:take]:
                names[i] = name
            members = members[take:]
    return names


# ---------------------------------------------------------------- datasets

CORPUS, NSYNTH, KEY, GENRE, TAG, EMOTION = range(6)   # dataset codes in the seeds
NSYNTH_VELOCITIES = (25, 50, 75, 100, 127)            # the velocities NSynth sampled
NOTE_SECONDS, NOTE_HELD = 4.0, 3.0                    # NSynth: 4-s notes, key held for 3 s


def _rng(seed: int, code: int, *index: int) -> np.random.Generator:
    return np.random.default_rng([seed, code, *index])


def _progress(items: range, progress: bool, desc: str):
    if not progress:
        return items
    from tqdm import tqdm
    return tqdm(items, desc=desc, unit="clip")


def _random_peak(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return (audio * (rng.uniform(0.25, 0.95) / max(float(np.max(np.abs(audio))), 1e-6))).astype(np.float32)


def _styled_songs(code: int, count: int, seed: int, seconds: float, progress: bool, desc: str,
                  keys: Sequence[str] | None = None):
    """(i, song, audio, score) for `count` songs, styles cycled for balance (keys imposed if given)."""
    for i in _progress(range(count), progress, desc):
        rng = _rng(seed, code, 1, i)
        style = STYLE_NAMES[i % len(STYLE_NAMES)] if keys is None else None
        song = sample_song(rng, seconds, style=style, key=None if keys is None else keys[i])
        yield (i, song, *render(song))


def nsynth_examples(per_family: int, seed: int = 0, proportions: Sequence[float] = (0.8, 0.1, 0.1),
                    instruments: int = 8, families: Sequence[str] = FAMILIES,
                    progress: bool = False) -> list[LayoutExample]:
    """4-s single notes (held 3 s), `per_family` per family. As in NSynth, instruments are split-
    disjoint: each family's `instruments` are divided among the splits in `proportions` (at least
    one each), then each note picks an instrument of its split. label: family; extra: pitch
    (MIDI), velocity (one of NSynth's five), instrument (its NSynth-style name)."""
    if instruments < 3:
        raise ValueError(f"nsynth_examples: need at least 3 instruments per family (one per split), got {instruments}")
    rng = _rng(seed, NSYNTH, 0)
    labels = [family for family in families for _ in range(per_family)]
    splits = stratified_splits(labels, proportions, rng)
    pools = {}
    for family in families:
        order = [int(i) for i in rng.permutation(instruments)]
        n_valid = max(1, round(instruments * proportions[1]))
        n_test = max(1, round(instruments * proportions[2]))
        pools[family] = dict(zip(SPLITS, (order[n_valid + n_test:], order[:n_valid], order[n_valid:n_valid + n_test])))
    examples, taken = [], set()
    for i in _progress(range(len(labels)), progress, "NSynth"):
        family, split = labels[i], splits[i]
        for _ in range(1000):   # NSynth has each (instrument, pitch, velocity) once
            note = (family, int(rng.choice(pools[family][split])), int(rng.integers(PITCH_RANGE[family][0],
                    PITCH_RANGE[family][1] + 1)), int(rng.choice(NSYNTH_VELOCITIES)))
            if note not in taken:
                break
        else:
            raise ValueError(f"nsynth_examples: too many notes per family ({per_family}) for its pitch range")
        taken.add(note)
        instrument = make_instrument(family, note[1])
        note_rng = _rng(seed, NSYNTH, 1, i)
        audio = np.zeros(int(NOTE_SECONDS * SAMPLE_RATE), np.float32)
        sound = instrument.play(note[2], NOTE_HELD, note[3] / 127, note_rng)[:audio.size]
        audio[:sound.size] = sound
        examples.append(LayoutExample(f"{instrument.name}-{note[2]:03d}-{note[3]:03d}", _random_peak(audio, note_rng),
                                      SAMPLE_RATE, split, family, {"pitch": note[2], "velocity": note[3],
                                                                   "instrument": instrument.name,
                                                                   "instrument_source": "synthetic"}))
    return examples


def _giantsteps_artist(name: str, split: str) -> bool:
    """GiantSteps sends an artist to train or valid by its SHA-1 slot (docs/evaluation.md §2.2)."""
    return split == "test" or (giantsteps.artist_slot(name) < giantsteps.TRAIN_SLOTS) == (split == "train")


def key_examples(count: int, seed: int = 0, seconds: float = 30.5, proportions: Sequence[float] = (0.6, 0.2, 0.2),
                 progress: bool = False) -> list[LayoutExample]:
    """Tracks in the 24 keys, cycled for balance (random styles). label: "Eb minor"; extra: artist
    (artist-disjoint splits; train/valid names hash to their split as GiantSteps requires).
    GiantSteps uses full 30-s segments only: keep `seconds` >= 30 unless the loader is told a
    shorter segment length."""
    keys = [KEYS[i % len(KEYS)] for i in range(count)]
    splits = stratified_splits(keys, proportions, _rng(seed, KEY, 0))
    artists = artist_names(splits, _rng(seed, KEY, 2), _giantsteps_artist)
    return [LayoutExample(f"{song.key.replace(' ', '_')}_{i:05d}", audio, SAMPLE_RATE, splits[i], song.key,
                          {"artist": artists[i], "genre": song.style})
            for i, song, audio, _ in _styled_songs(KEY, count, seed, seconds, progress, "GS", keys)]


def genre_examples(count: int, seed: int = 0, seconds: float = 30.0, proportions: Sequence[float] = (0.5, 0.2, 0.3),
                   progress: bool = False) -> list[LayoutExample]:
    """Clips of the styles, cycled for balance. label: style; extra: beats, downbeats (seconds)
    and tempo (BPM), for GTZAN-Rhythm."""
    styles = [STYLE_NAMES[i % len(STYLE_NAMES)] for i in range(count)]
    splits = stratified_splits(styles, proportions, _rng(seed, GENRE, 0))
    return [LayoutExample(f"{song.style}_{i:05d}", audio, SAMPLE_RATE, splits[i], song.style,
                          {"beats": score.beats, "downbeats": score.downbeats, "tempo": song.tempo})
            for i, song, audio, score in _styled_songs(GENRE, count, seed, seconds, progress, "GTZAN")]


def tag_examples(count: int, seed: int = 0, seconds: float = 29.0,
                 proportions: Sequence[float] = (0.75, 0.0625, 0.1875), progress: bool = False) -> list[LayoutExample]:
    """Clips with their tag sets (`song_tags`); default proportions are MTT's 12:1:3 folders."""
    styles = [STYLE_NAMES[i % len(STYLE_NAMES)] for i in range(count)]
    splits = stratified_splits(styles, proportions, _rng(seed, TAG, 0))
    return [LayoutExample(f"{song.style}_{i:05d}", audio, SAMPLE_RATE, splits[i], song_tags(song))
            for i, song, audio, _ in _styled_songs(TAG, count, seed, seconds, progress, "MTT")]


def emotion_examples(count: int, seed: int = 0, seconds: float = 45.0,
                     proportions: Sequence[float] = (0.68, 0.15, 0.17), progress: bool = False) -> list[LayoutExample]:
    """Clips with label {"arousal", "valence"} (`arousal_valence`); extra: artist, genre."""
    styles = [STYLE_NAMES[i % len(STYLE_NAMES)] for i in range(count)]
    splits = stratified_splits(styles, proportions, _rng(seed, EMOTION, 0))
    artists = artist_names(splits, _rng(seed, EMOTION, 2))
    return [LayoutExample(f"{song.style}_{i:05d}", audio, SAMPLE_RATE, splits[i], arousal_valence(song),
                          {"artist": artists[i], "genre": song.style})
            for i, song, audio, _ in _styled_songs(EMOTION, count, seed, seconds, progress, "EMO")]


def note_run(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """One instrument playing random notes over its whole range (MIDI 24..96 across families),
    like an NSynth recording session: pre-training then hears every register, not just a song's."""
    family = FAMILIES[rng.integers(len(FAMILIES))]
    low, high = PITCH_RANGE[family]
    onsets = np.concatenate([[0.0], np.cumsum(rng.uniform(0.25, 1.2, int(seconds / 0.25) + 1))])
    onsets = onsets[onsets < seconds]
    notes = [Note(float(t), float(length), int(rng.integers(low, high + 1)), float(rng.uniform(0.2, 1.0)), "lead")
             for t, length in zip(onsets, np.diff(np.append(onsets, seconds)))]   # legato: no silent gaps
    return _random_peak(perform(notes, {"lead": make_instrument(family, int(rng.integers(8)))}, seconds, rng), rng)


def corpus(count: int, seed: int = 0, seconds: tuple[float, float] = (5.0, 10.0),
           progress: bool = False) -> list[LayoutExample]:
    """Unlabelled pre-training clips (split "train", label None) of random length: 70 % songs of
    every style, 20 % a lone melody instrument, 10 % `note_run`s."""
    examples = []
    for i in _progress(range(count), progress, "corpus"):
        rng = _rng(seed, CORPUS, 1, i)
        length, kind = round(float(rng.uniform(*seconds)), 2), rng.random()
        if kind < 0.1:
            audio = note_run(rng, length)
        else:
            song = sample_song(rng, length)
            audio = render(song if kind >= 0.3 else replace(song, parts=song.parts[:1]))[0]
        examples.append(LayoutExample(f"clip_{i:05d}", audio, SAMPLE_RATE, "train", None))
    return examples


# ---------------------------------------------------------------- presets and files


@dataclass(frozen=True)
class SynthConfig:
    """Sizes of the generated benchmark: clips per dataset (NSynth: notes per family) and their
    seconds. Clip lengths default to the real datasets' (GTZAN 30 s, MTT 29 s, EmoMusic 45 s);
    "demo" shortens them so the CPU demo stays quick."""

    corpus_clips: int = 200
    corpus_seconds: tuple[float, float] = (5.0, 10.0)
    nsynth_per_family: int = 30
    nsynth_instruments: int = 8
    key_tracks: int = 96
    key_seconds: float = 30.5       # one full 30-s GiantSteps segment per track
    genre_clips: int = 180
    genre_seconds: float = 30.0
    tag_clips: int = 240
    tag_seconds: float = 29.0
    emotion_clips: int = 180
    emotion_seconds: float = 45.0
    # (train, valid, test) for every probe dataset; None keeps each dataset's own proportions
    # (MTT's 12:1:3 folders, ...). The demo evens them out: small test sets make noisy tables.
    proportions: tuple[float, float, float] | None = None


PRESETS = {
    # 2.3 h of audio in ~50 s on one core, 30 s of it MP3 encoding in the GS, MTT and EMO
    # writers; EMO gets more, shorter clips: a regression needs more examples than it needs seconds
    "demo": SynthConfig(corpus_clips=180, key_tracks=120, key_seconds=10.5, genre_seconds=8.0, tag_clips=150,
                        tag_seconds=6.0, emotion_clips=180, emotion_seconds=6.0, proportions=(0.5, 0.25, 0.25)),
    "tests": SynthConfig(corpus_clips=4, corpus_seconds=(2.0, 3.0), nsynth_per_family=3, nsynth_instruments=3,
                         key_tracks=6, key_seconds=3.0, genre_clips=6, genre_seconds=4.0, tag_clips=12,
                         tag_seconds=2.0, emotion_clips=6, emotion_seconds=2.0),
    # `musicssl demo --preset smoke` (the test suite): every split of every task non-trivial
    "smoke": SynthConfig(corpus_clips=8, corpus_seconds=(3.0, 4.0), nsynth_per_family=4, nsynth_instruments=4,
                         key_tracks=12, key_seconds=3.0, genre_clips=12, genre_seconds=4.0, tag_clips=40,
                         tag_seconds=2.0, emotion_clips=12, emotion_seconds=3.0),
    # benchmarks/learning_curve.py: the demo's probe datasets beside a pre-training corpus four
    # times the demo's (~1.5 h instead of ~22 min), so 8k updates do not cycle 20-s batches
    # through the same 180 clips hundreds of times
    "curve": SynthConfig(corpus_clips=720, key_tracks=120, key_seconds=10.5, genre_seconds=8.0, tag_clips=150,
                         tag_seconds=6.0, emotion_clips=180, emotion_seconds=6.0, proportions=(0.5, 0.25, 0.25)),
}


def synth_preset(name: str) -> SynthConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown synth preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


def synthesize(out_dir: Path, preset: str = "demo", seed: int = 0, progress: bool = True) -> dict:
    """Write the generated benchmark under `out_dir`: corpus/*.wav (pre-training audio) and the
    folders NSynth, GS, GTZAN, MTT, EMO in their real layouts (each dataset module's
    `write_layout`), plus synth.json with the returned summary: examples per dataset and split,
    seconds of audio, seed, preset. `out_dir` must be new or empty: files of an earlier run
    that this one does not overwrite would otherwise join the datasets."""
    import soundfile as sf

    config, out_dir = synth_preset(preset), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir}: not empty; synthesize writes whole datasets into a new or empty folder")
    split = {} if config.proportions is None else {"proportions": config.proportions}
    datasets = (
        ("NSynth", "nsynth", lambda: nsynth_examples(config.nsynth_per_family, seed, instruments=config.nsynth_instruments,
                                                     progress=progress, **split)),
        ("GS", "giantsteps", lambda: key_examples(config.key_tracks, seed, config.key_seconds, progress=progress,
                                                  **split)),
        ("GTZAN", "gtzan", lambda: genre_examples(config.genre_clips, seed, config.genre_seconds, progress=progress,
                                                  **split)),
        ("MTT", "mtt", lambda: tag_examples(config.tag_clips, seed, config.tag_seconds, progress=progress, **split)),
        ("EMO", "emomusic", lambda: emotion_examples(config.emotion_clips, seed, config.emotion_seconds,
                                                     progress=progress, **split)),
    )
    summary = {"preset": preset, "seed": seed, "sample_rate": SAMPLE_RATE, "examples": {}, "seconds": {}}
    clips = corpus(config.corpus_clips, seed, config.corpus_seconds, progress)
    (out_dir / "corpus").mkdir(parents=True, exist_ok=True)
    for clip in clips:
        sf.write(out_dir / "corpus" / f"{clip.name}.wav", clip.audio, SAMPLE_RATE, subtype="PCM_16")
    _count(summary, "corpus", clips)
    for folder, module, build in datasets:
        examples = build()
        LAYOUT_WRITERS[module](out_dir / folder, examples)
        _count(summary, folder, examples)
    summary["seconds"]["total"] = round(sum(summary["seconds"].values()), 2)
    (out_dir / "synth.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _count(summary: dict, name: str, examples: list[LayoutExample]) -> None:
    summary["examples"][name] = {split: sum(e.split == split for e in examples) for split in SPLITS}
    summary["seconds"][name] = round(sum(e.audio.size for e in examples) / SAMPLE_RATE, 2)

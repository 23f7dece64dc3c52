"""Songs of the synthetic music generator: a `Song` is a handful of numbers (style, key, tempo,
meter, dynamics, note density, register, instruments, seed); `compose` turns it into note events
and beat/downbeat times, and `instruments.perform` plays those into 16-kHz float32 audio
(`render`). Every label is computed from the `Song`, never estimated from audio: key, style,
tags, (arousal, valence), beats. The datasets drawn from songs are in datasets.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from musicssl.synth.instruments import (CLOSED_HAT, KICK, OPEN_HAT, PITCH_RANGE, SNARE, Note, make_instrument,
                                        perform)


# ---------------------------------------------------------------- keys, chords, styles

# GiantSteps' 24 classes, spelled with flats (docs/evaluation.md §2.2), majors first.
TONICS = ("C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B")
KEYS = tuple(f"{tonic} {mode}" for mode in ("major", "minor") for tonic in TONICS)
SCALE_STEPS = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10), "harmonic": (0, 2, 3, 5, 7, 8, 11)}
# Chord progressions as scale degrees (0 = tonic), one chord per bar. The tonic chord takes at
# least half the bars and the others are its dominant and subdominant functions, so the key
# is unambiguous from any few bars (a key task needs the key to be audible).
PROGRESSIONS = {
    "pop": {"major": ((0, 3, 0, 4), (0, 5, 0, 4), (0, 3, 4, 0), (0, 0, 3, 4)),
            "minor": ((0, 3, 0, 4), (0, 5, 0, 4), (0, 3, 4, 0), (0, 0, 5, 4))},
    "blues": {mode: ((0, 0, 0, 0, 3, 3, 0, 0, 4, 3, 0, 4),) for mode in ("major", "minor")},  # 12-bar
    "jazz": {mode: ((1, 4, 0, 0), (0, 0, 1, 4)) for mode in ("major", "minor")},               # ii-V-I
}
# Drum patterns: General MIDI note -> sixteenth-note steps of a 4/4 bar. Every pattern hits
# every beat (steps 0, 4, 8, 12), so beat annotations are drum onsets.
EIGHTHS = (0, 2, 4, 6, 8, 10, 12, 14)
DRUM_PATTERNS = {
    "shuffle": {KICK: (0, 8), SNARE: (4, 12), CLOSED_HAT: EIGHTHS},
    "disco": {KICK: (0, 4, 8, 12), SNARE: (4, 12), CLOSED_HAT: (0, 4, 8, 12), OPEN_HAT: (2, 6, 10, 14)},
    "swing": {OPEN_HAT: (0, 4, 6, 8, 12, 14), CLOSED_HAT: (4, 12), KICK: (0, 8)},   # ride + hi-hat on 2 and 4
    "metal": {KICK: EIGHTHS, SNARE: (4, 12), OPEN_HAT: (0, 4, 8, 12)},
    "one_drop": {KICK: (8,), SNARE: (8,), CLOSED_HAT: EIGHTHS},
}


@dataclass(frozen=True)
class Style:
    """A genre-like recipe; names are GTZAN genres (docs/evaluation.md §2.3) so the GTZAN loader reads them."""

    name: str
    tempo: tuple[float, float]      # BPM range
    meters: tuple[int, ...]         # beats per bar to choose from
    major_share: float              # P(major key) when the key is not imposed
    lead: tuple[str, ...]           # instrument families per part
    harmony: tuple[str, ...]
    bass: tuple[str, ...]
    comping: str                    # how chords are played (see _comping)
    bass_line: str                  # see _bass_line
    drums: str | None               # DRUM_PATTERNS key; None: never drums
    drum_share: float               # P(drums) for a song of this style
    progressions: str               # PROGRESSIONS key
    swing: float                    # 0 straight eighths .. 1 triplet feel
    dynamics: tuple[float, float]   # 0 pianissimo .. 1 fortissimo
    density: tuple[float, float]    # melody note rate: 0 whole notes .. 1 sixteenths
    sevenths: bool = False
    distortion: float = 0.0         # tanh drive of the harmony part


# Fields in Style's order: name, tempo, meters, major share, lead, harmony, bass families,
# comping, bass line, drums, drum share, progressions, swing, dynamics, density.
STYLES = {style.name: style for style in (
    Style("blues", (70, 110), (4,), 0.4, ("guitar", "reed", "vocal", "brass"), ("organ", "keyboard", "guitar"),
          ("bass",), "strum", "boogie", "shuffle", 0.8, "blues", 0.8, (0.3, 0.7), (0.2, 0.6), sevenths=True),
    Style("classical", (70, 110), (3, 4), 0.5, ("flute", "string", "reed", "keyboard"), ("string", "keyboard"),
          ("string", "keyboard"), "arpeggio", "root", None, 0.0, "pop", 0.0, (0.05, 0.5), (0.2, 0.7)),
    Style("disco", (112, 130), (4,), 0.6, ("synth_lead", "string", "vocal", "brass"), ("keyboard", "string", "guitar"),
          ("bass",), "offbeat", "octaves", "disco", 1.0, "pop", 0.0, (0.5, 0.9), (0.4, 0.8)),
    Style("jazz", (100, 180), (4,), 0.6, ("reed", "brass", "keyboard", "mallet", "vocal"),
          ("keyboard", "guitar", "mallet"), ("bass",), "comp", "walking", "swing", 0.9, "jazz", 0.7, (0.15, 0.6),
          (0.3, 0.9), sevenths=True),
    Style("metal", (140, 180), (4,), 0.15, ("guitar", "synth_lead"), ("guitar",), ("bass",), "power", "eighths",
          "metal", 1.0, "pop", 0.0, (0.7, 1.0), (0.5, 1.0), distortion=6.0),
    Style("reggae", (70, 95), (4,), 0.6, ("organ", "vocal", "brass", "mallet"), ("organ", "keyboard", "guitar"),
          ("bass",), "skank", "one_drop", "one_drop", 1.0, "pop", 0.3, (0.3, 0.7), (0.2, 0.6)),
)}
STYLE_NAMES = tuple(STYLES)


def parse_key(key: str) -> tuple[int, str]:
    """'Eb minor' -> (3, 'minor')."""
    tonic, _, mode = key.partition(" ")
    if tonic not in TONICS or mode not in ("major", "minor"):
        raise ValueError(f"key {key!r}: expected '<tonic> major|minor' with a tonic in {TONICS}")
    return TONICS.index(tonic), mode


def key_pitch_classes(key: str) -> frozenset[int]:
    """Pitch classes a song in `key` may use: the major scale, or the natural minor scale plus
    the harmonic minor's leading tone (played over the dominant)."""
    tonic, mode = parse_key(key)
    steps = set(SCALE_STEPS[mode]) | ({11} if mode == "minor" else set())
    return frozenset((tonic + step) % 12 for step in steps)


def _scale(key: str, degree: int) -> tuple[int, ...]:
    """The 7 pitch classes in use over the chord on `degree`: minor keys borrow the harmonic
    minor's raised 7th on the dominant (V), which is what makes a minor key sound minor."""
    tonic, mode = parse_key(key)
    steps = SCALE_STEPS["harmonic" if mode == "minor" and degree == 4 else mode]
    return tuple((tonic + step) % 12 for step in steps)


def chord_pitch_classes(key: str, degree: int, sevenths: bool = False) -> list[int]:
    """Stacked thirds on `degree`: [root, third, fifth(, seventh)]."""
    scale = _scale(key, degree)
    return [scale[(degree + 2 * i) % 7] for i in range(4 if sevenths else 3)]


def _scale_notes(pitch_classes: Sequence[int], low: int, high: int) -> np.ndarray:
    """Sorted MIDI notes in [low, high] whose pitch class is in `pitch_classes`."""
    return np.array([m for m in range(low, high + 1) if m % 12 in pitch_classes])


# ---------------------------------------------------------------- songs


@dataclass(frozen=True)
class Song:
    """Everything that defines a track; every label is a function of these fields."""

    style: str
    key: str
    tempo: float                    # BPM
    meter: int                      # beats per bar
    first_beat: float               # seconds: the first beat of the clip, in [0, one beat)
    bar_phase: int                  # position of the first beat in its bar (0: it is a downbeat)
    seconds: float
    dynamics: float                 # 0..1
    density: float                  # 0..1
    register: float                 # 0 low .. 1 high melody
    parts: tuple[tuple[str, str, int], ...]   # (part, family, instrument index); part "drums": the kit
    seed: int

    @property
    def major(self) -> bool:
        return self.key.endswith("major")

    @property
    def drums(self) -> bool:
        return any(part == "drums" for part, _, _ in self.parts)


def sample_song(rng: np.random.Generator, seconds: float, style: str | None = None, key: str | None = None) -> Song:
    """A random song of `style` (else random) in `key` (else drawn with the style's major share)."""
    recipe = STYLES[style or STYLE_NAMES[rng.integers(len(STYLES))]]
    if key is None:
        mode = "major" if rng.random() < recipe.major_share else "minor"
        key = f"{TONICS[rng.integers(12)]} {mode}"
    tempo = float(rng.uniform(*recipe.tempo))
    meter = int(rng.choice(recipe.meters))
    parts = tuple((part, str(rng.choice(families)), int(rng.integers(8)))
                  for part, families in (("lead", recipe.lead), ("harmony", recipe.harmony), ("bass", recipe.bass)))
    drums = recipe.drums is not None and rng.random() < recipe.drum_share
    return Song(recipe.name, key, tempo, meter, first_beat=float(rng.uniform(0.02, 0.98) * 60 / tempo),
                bar_phase=int(rng.integers(meter)), seconds=float(seconds),
                dynamics=float(rng.uniform(*recipe.dynamics)), density=float(rng.uniform(*recipe.density)),
                register=float(rng.uniform()),
                parts=parts + ((("drums", "drums", int(rng.integers(8))),) if drums else ()),
                seed=int(rng.integers(2**63)))


# Tag names: MagnaTagATune's words where it has one (docs/evaluation.md §2.1 top-50), else the family.
FAMILY_TAGS = {"keyboard": "piano", "string": "strings", "synth_lead": "synth"}


def song_tags(song: Song) -> tuple[str, ...]:
    """Style, instruments, drums / no drums, fast (>= 125 BPM) / slow (<= 95 BPM), loud / quiet
    (dynamics >= 0.65 / <= 0.35); in-between tempi and dynamics get neither tag."""
    tags = {song.style, "drums" if song.drums else "no drums"}
    tags |= {FAMILY_TAGS.get(family, family) for part, family, _ in song.parts if part != "drums"}
    tags |= {"fast"} if song.tempo >= 125 else {"slow"} if song.tempo <= 95 else set()
    tags |= {"loud"} if song.dynamics >= 0.65 else {"quiet"} if song.dynamics <= 0.35 else set()
    return tuple(sorted(tags))


def arousal_valence(song: Song) -> dict[str, float]:
    """The regression targets, by definition (following the usual musical correlates):
    arousal = 0.5 tempo + 0.3 dynamics + 0.2 density; valence = 0.7 mode + 0.3 register,
    each term scaled to [-1, 1] (tempo: (BPM - 125) / 55; mode: +1 major, -1 minor)."""
    tempo = float(np.clip((song.tempo - 125) / 55, -1, 1))
    arousal = 0.5 * tempo + 0.3 * (2 * song.dynamics - 1) + 0.2 * (2 * song.density - 1)
    valence = 0.7 * (1 if song.major else -1) + 0.3 * (2 * song.register - 1)
    return {"arousal": round(arousal, 6), "valence": round(valence, 6)}


# ---------------------------------------------------------------- composition


@dataclass(frozen=True)
class Score:
    notes: list[Note]       # onsets may be < 0: the pickup bar before the clip starts
    beats: np.ndarray       # (n,) seconds, the clip's beats in [0, song.seconds)
    downbeats: np.ndarray   # (m,) seconds, the beats that open a bar


def _comping(pattern: str, meter: int, voicing: list[int], rng: np.random.Generator) -> list[tuple[float, float, int]]:
    """(start beat, length in beats, MIDI) of the chord part over one bar."""
    if pattern == "arpeggio":    # broken chord in eighths, up then down
        cycle = voicing + [voicing[0] + 12] + voicing[-1:0:-1]
        return [(i / 2, 1.0, cycle[i % len(cycle)]) for i in range(2 * meter)]
    starts, length = {"strum": (range(meter), 0.9), "offbeat": ([b + 0.5 for b in range(meter)], 0.35),
                      "skank": ([1, 3], 0.3), "power": ([i / 2 for i in range(2 * meter)], 0.45),
                      "comp": (sorted(rng.choice([0, 1.5, 2.5, 3], size=int(rng.integers(2, 4)), replace=False)), 0.6)
                      }[pattern]
    return [(float(s), length, m) for s in starts if s < meter for m in voicing]


def _bass_line(pattern: str, meter: int, rng: np.random.Generator) -> list[tuple[float, float, int]]:
    """(start beat, length in beats, scale steps above the chord root) over one bar."""
    if pattern == "root":
        return [(0.0, meter, 0)]
    if pattern in ("eighths", "octaves"):
        return [(i / 2, 0.45, 7 if pattern == "octaves" and i % 2 else 0) for i in range(2 * meter)]
    if pattern == "walking":
        steps = (0, 2, 4, 5) if rng.random() < 0.5 else (0, 4, 2, -1)
        return [(float(b), 0.95, steps[b % 4]) for b in range(meter)]
    if pattern == "boogie":
        return [(float(b), 0.9, (0, 2, 4, 5)[b % 4]) for b in range(meter)]
    if pattern == "one_drop":
        return [(0.0, 1.5, 0), (2.0, 0.5, 0), (2.5, 1.0, 4)]
    raise ValueError(f"unknown bass line {pattern!r}")


def _melody_rhythm(meter: int, density: float, rng: np.random.Generator) -> list[tuple[float, float]]:
    """(start, length) in beats filling one bar: denser songs pick shorter notes and rest less."""
    lengths = np.array([0.25, 0.5, 1.0, 2.0])
    weights = np.array([2 * max(density - 0.5, 0), density, 0.6, 1.2 * (1 - density)]) + 0.02
    notes, position = [], 0.0
    while position < meter - 1e-9:
        length = min(float(rng.choice(lengths, p=weights / weights.sum())), meter - position)
        if rng.random() > 0.15 * (1 - density):
            notes.append((position, length))
        position += length
    return notes


def _reflect(index: int, size: int) -> int:
    """Index folded back into 0..size-1 at both ends (a melody turning at the edge of its range)."""
    index = -index if index < 0 else 2 * (size - 1) - index if index >= size else index
    return int(np.clip(index, 0, size - 1))


def _range(song: Song, part: str, family: str) -> tuple[int, int]:
    """MIDI range of a part: the family's, narrowed around the song's register for the melody."""
    low, high = PITCH_RANGE[family]
    if part == "bass":
        return max(low, 31), min(high, 52)
    if part == "harmony":
        bottom = int(np.clip(round(50 + 10 * song.register), low, high - 14))
        return bottom, bottom + 14
    center = int(np.clip(round(58 + 24 * song.register), low + 7, high - 7))
    return center - 7, center + 7


def compose(song: Song) -> Score:
    """Note events of all parts, bar by bar, from a pickup bar before the clip to its end."""
    rng = np.random.default_rng(song.seed)
    style = STYLES[song.style]
    period = 60.0 / song.tempo
    start = song.first_beat - (song.bar_phase + song.meter) * period    # a whole bar before the clip
    bars = int(np.ceil((song.seconds - start) / (song.meter * period)))
    times = start + np.arange(bars * song.meter) * period
    inside = (times >= 0) & (times < song.seconds)
    downbeat = np.arange(times.size) % song.meter == 0
    mode = "major" if song.major else "minor"
    progression = PROGRESSIONS[style.progressions][mode][rng.integers(len(PROGRESSIONS[style.progressions][mode]))]
    families = {part: family for part, family, _ in song.parts}
    velocity = 0.35 + 0.6 * song.dynamics

    def at(bar: int, beat: float) -> float:   # swing delays off-beat eighths towards the triplet
        swung = beat + style.swing / 6 if abs(beat % 1 - 0.5) < 1e-9 else beat
        return start + (bar * song.meter + swung) * period

    def note(bar, beat, length, midi, part, level=1.0):
        loud = min(max(velocity * level * rng.uniform(0.9, 1.1), 0.05), 1.0)
        return Note(at(bar, beat), length * period, int(midi), loud, part)

    notes: list[Note] = []
    melody = None
    for bar in range(bars):
        degree = progression[bar % len(progression)]
        chord = chord_pitch_classes(song.key, degree, style.sevenths)
        scale = _scale(song.key, degree)
        if "harmony" in families:
            low, high = _range(song, "harmony", families["harmony"])
            voicing = sorted(low + (pc - low) % 12 for pc in chord)
            if style.comping == "power":
                voicing = [voicing[0], voicing[0] + (chord[2] - chord[0]) % 12, voicing[0] + 12]
            notes += [note(bar, s, n, m, "harmony", 0.8)
                      for s, n, m in _comping(style.comping, song.meter, voicing, rng)]
        if "bass" in families:
            low, high = _range(song, "bass", families["bass"])
            line = _scale_notes(scale, low, high + 12)
            root = int(np.searchsorted(line, low + (chord[0] - low) % 12))
            notes += [note(bar, s, n, line[np.clip(root + step, 0, line.size - 1)], "bass", 1.0 if s == 0 else 0.85)
                      for s, n, step in _bass_line(style.bass_line, song.meter, rng)]
        if "lead" in families:
            line = _scale_notes(scale, *_range(song, "lead", families["lead"]))
            for i, (s, n) in enumerate(_melody_rhythm(song.meter, song.density, rng)):
                if melody is None or i == 0:    # each bar opens on a chord tone near the last note,
                    tonic = line[line % 12 == chord[0]] if degree == 0 else line[:0]   # on tonic bars the tonic
                    target = tonic if tonic.size and rng.random() < 0.6 else line[np.isin(line % 12, chord)]
                    last = line[line.size // 2] if melody is None else melody
                    melody = int(target[np.argmin(np.abs(target - last) + rng.uniform(0, 3, target.size))])
                else:
                    index = int(np.searchsorted(line, melody)) + int(rng.choice([-2, -1, 1, 2, 0, -3, 3],
                                                                                  p=[.15, .3, .3, .15, .04, .03, .03]))
                    melody = int(line[_reflect(index, line.size)])
                notes.append(note(bar, s, n, melody, "lead", 1.0 if s == 0 else 0.85))
        if song.drums:
            for drum, steps in DRUM_PATTERNS[style.drums].items():
                soft = 0.5 if style.drums == "swing" and drum in (KICK, CLOSED_HAT) else 1.0
                notes += [note(bar, step / 4, 0.25, drum, "drums", soft * (1.0 if step == 0 else 0.85))
                          for step in steps if step < 4 * song.meter]
    return Score(notes, times[inside], times[inside & downbeat])


def render(song: Song) -> tuple[np.ndarray, Score]:
    """(N,) float32 audio of the song (N = seconds * 16 kHz), peak at a random level, and its score."""
    score = compose(song)
    rng = np.random.default_rng([song.seed, 1])
    instruments = {part: make_instrument(family, index) for part, family, index in song.parts}
    distortion = {"harmony": STYLES[song.style].distortion}
    audio = perform(score.notes, instruments, song.seconds, rng, distortion)
    return audio * np.float32(rng.uniform(0.25, 0.95) / max(np.max(np.abs(audio)), 1e-6)), score

"""NSynth instrument family (NSynthI) and pitch (NSynthP) classification (docs/evaluation.md §2.5, §2.6).

Layout under the data root (the three official tarballs unpacked side by side):

    nsynth-{train,valid,test}/examples.json     {note_str: {note, note_str, instrument, instrument_str,
                                                 pitch, velocity, sample_rate, qualities, qualities_str,
                                                 instrument_family, instrument_family_str,
                                                 instrument_source, instrument_source_str}}
    nsynth-{train,valid,test}/audio/<note_str>.wav   4-s notes, 16 kHz

Splits are the official ones (289,205 / 12,678 / 4,096 notes); each item is one whole note,
keyed "nsynth-<split>/<note_str>".
"""

from __future__ import annotations

import json
import os
from abc import abstractmethod
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf

from musicssl.evaluate.tasks.base import (
    DatasetError, Item, LayoutExample, Protocol, Splits, Task, check_options, check_split_sizes, require_file,
    left_out_note,
)

# NSynth's instrument_family ids 0..10 in this order; MARBLE's class2id is the same.
FAMILIES = ("bass", "brass", "flute", "guitar", "keyboard", "mallet", "organ", "reed", "string",
            "synth_lead", "vocal")
SOURCES = ("acoustic", "electronic", "synthetic")   # instrument_source ids 0..2
MIDI_PITCHES = 128
PUBLISHED_SIZES = {"train": 289205, "valid": 12678, "test": 4096}
SPLIT_DIRS = {"train": "nsynth-train", "valid": "nsynth-valid", "test": "nsynth-test"}
_SOURCE = ("http://download.magenta.tensorflow.org/datasets/nsynth/nsynth-{train,valid,test}.jsonwav.tar.gz "
           "(magenta.tensorflow.org/datasets/nsynth)")


def _read_examples(path: Path) -> dict[str, dict]:
    require_file(path, "NSynth metadata", _SOURCE)
    with open(path, encoding="utf-8") as f:
        try:
            examples = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DatasetError(f"{path}: not valid JSON ({err}); re-extract it from {_SOURCE}") from err
    if not isinstance(examples, dict):
        raise DatasetError(f"{path}: expected a JSON object keyed by note_str, got {type(examples).__name__}")
    return examples


def _audio_names(folder: Path) -> set[str]:
    """File names in the audio folder: one listing instead of 300k stat calls."""
    return set(os.listdir(folder)) if folder.is_dir() else set()


def _note_shared_notes(splits: Splits) -> None:
    """NSynth's splits are instrument-disjoint (train vs. valid/test): a note_str in two splits
    means a copied file or a leak, worth telling the user."""
    names = {split: {item.path.stem for item in splits[split]} for split in SPLIT_DIRS}
    for first, second in (("train", "valid"), ("train", "test"), ("valid", "test")):
        shared = sorted(names[first] & names[second])
        if shared:
            splits.notes.append(f"{len(shared)} notes are listed in both {first} and {second} "
                                f"(kept in both, as listed): {', '.join(shared[:5])}")


class _NSynthTask(Task):
    """Both NSynth tasks read the same files; they differ only in the target of a note."""

    default_dir = "NSynth"
    source = _SOURCE
    label_field = ""   # the examples.json field the target comes from (for notes)

    @abstractmethod
    def target(self, entry: dict) -> int | None:
        """Class index of one examples.json entry, or None if the entry has no valid label."""

    def load(self, root: Path, **options: str) -> Splits:
        check_options(self, options, ())
        root = Path(root)
        splits = Splits([], [], [], [])
        for split, folder in SPLIT_DIRS.items():
            splits[split].extend(self._load_split(root / folder, splits.notes))
            if not splits[split]:
                reason = "; ".join(splits.notes) or "examples.json lists no notes"
                raise DatasetError(f"{root}: no usable {split} notes for task {self.protocol.name} "
                                   f"in {folder}/: {reason}")
        _note_shared_notes(splits)
        check_split_sizes(self, splits, PUBLISHED_SIZES)
        return splits

    def _load_split(self, folder: Path, notes: list[str]) -> list[Item]:
        examples = _read_examples(folder / "examples.json")
        audio_dir = folder / "audio"
        on_disk = _audio_names(audio_dir)
        items, missing, unlabelled = [], [], []
        for note_str, entry in examples.items():   # file order, as MARBLE iterates
            target = self.target(entry) if isinstance(entry, dict) else None
            if target is None:
                unlabelled.append(note_str)
                continue
            if f"{note_str}.wav" not in on_disk:
                missing.append(note_str)
                continue
            # Keys carry the split folder: the official lists are kept as they are even if a
            # note_str were listed in two of them (reported by _note_shared_notes).
            items.append(Item(key=f"{folder.name}/{note_str}", path=audio_dir / f"{note_str}.wav", target=target))
        where = f"{folder.name}/examples.json"
        for what, names in ((f"notes in {where} without audio/<note_str>.wav", missing),
                            (f"notes in {where} with a missing or invalid {self.label_field}", unlabelled)):
            if names:
                notes.append(left_out_note(what, names))
        return items


class NSynthInstrument(_NSynthTask):
    protocol = Protocol(
        name="nsynth_instrument", title="NSynthI", kind="multiclass", outputs=FAMILIES, metrics=("accuracy",),
        window_seconds=None,   # the whole 4-s note in one pass
        plateau_patience=3, early_stop_patience=10, max_epochs=50,   # docs/evaluation.md §2.5
        feature_set="nsynth",
    )
    label_field = "instrument_family_str"

    def target(self, entry: dict) -> int | None:
        family = entry.get("instrument_family_str")
        return FAMILIES.index(family) if family in FAMILIES else None


class NSynthPitch(_NSynthTask):
    """Target = the MIDI pitch itself (0..127), outputs named "0".."127".

    MARBLE uses `pitch - 1` with 128 outputs, which would make MIDI 0 the invalid class -1 (NSynth
    only spans 9..120, so it never happens there). The identity keeps every MIDI note valid; it
    is a relabelling, so accuracy is unchanged.
    """

    protocol = Protocol(
        name="nsynth_pitch", title="NSynthP", kind="multiclass",
        outputs=tuple(str(pitch) for pitch in range(MIDI_PITCHES)), metrics=("accuracy",),
        window_seconds=None, plateau_patience=3, early_stop_patience=10, max_epochs=50,   # docs/evaluation.md §2.6
        feature_set="nsynth",
    )
    label_field = "pitch"

    def target(self, entry: dict) -> int | None:
        pitch = entry.get("pitch")
        valid = isinstance(pitch, int) and not isinstance(pitch, bool) and 0 <= pitch < MIDI_PITCHES
        return pitch if valid else None


# ----------------------------------------------------------------------------- writing


def _note_fields(index: int, example: LayoutExample) -> dict:
    """examples.json entry for one example. label: a family name (NSynthI) or a MIDI pitch
    (NSynthP); the other comes from extra ("instrument_family" / "pitch"), else keyboard / 60.
    extra may also name the "instrument" (e.g. "guitar_acoustic_010"), "velocity", "instrument_source"."""
    label = example.label
    family = example.extra.get("instrument_family", label if isinstance(label, str) else "keyboard")
    pitch = example.extra.get("pitch", label if isinstance(label, (int, np.integer)) else 60)
    if family not in FAMILIES:
        raise ValueError(f"example {example.name!r}: instrument family {family!r} is not one of {FAMILIES}")
    if not 0 <= int(pitch) < MIDI_PITCHES:
        raise ValueError(f"example {example.name!r}: pitch {pitch!r} is not a MIDI note 0..127")
    velocity = int(example.extra.get("velocity", 100))
    source = str(example.extra.get("instrument_source", "synthetic"))
    if source not in SOURCES:
        raise ValueError(f"example {example.name!r}: instrument source {source!r} is not one of {SOURCES}")
    # NSynth names instruments <family>_<source>_<NNN>; without one, each example gets its own.
    instrument_str = str(example.extra.get("instrument", f"{family}_{source}_{index:03d}"))
    note_str = f"{instrument_str}-{int(pitch):03d}-{velocity:03d}"
    return {
        "note": index, "note_str": note_str, "instrument": index, "instrument_str": instrument_str,
        "pitch": int(pitch), "velocity": velocity, "sample_rate": int(example.sample_rate),
        "qualities": [0] * 10, "qualities_str": [],
        "instrument_family": FAMILIES.index(family), "instrument_family_str": family,
        "instrument_source": SOURCES.index(source),
        "instrument_source_str": source,
    }


def write_layout(root: Path, examples: Sequence[LayoutExample]) -> None:
    """Write `examples` as the official NSynth folders under `root`: each example goes to
    nsynth-<split>/ (WAV at its own rate) with a full examples.json entry, so both tasks load it.

    label: an instrument family name (str) or a MIDI pitch (int); extra may carry the other
    ("instrument_family", "pitch") and "instrument", "velocity", "instrument_source". Writes whole
    examples.json files: call once per root.
    """
    root = Path(root)
    entries: dict[str, dict[str, dict]] = {split: {} for split in SPLIT_DIRS}
    for index, example in enumerate(examples):
        if example.split not in SPLIT_DIRS:
            raise ValueError(f"example {example.name!r}: unknown split {example.split!r}")
        fields = _note_fields(index, example)
        if any(fields["note_str"] in split_entries for split_entries in entries.values()):
            raise ValueError(f"example {example.name!r}: note {fields['note_str']!r} written twice "
                             "(NSynth has one note per instrument, pitch and velocity)")
        audio_dir = root / SPLIT_DIRS[example.split] / "audio"
        audio_dir.mkdir(parents=True, exist_ok=True)
        sf.write(audio_dir / f"{fields['note_str']}.wav", np.asarray(example.audio, dtype=np.float32),
                 example.sample_rate, subtype="PCM_16")
        entries[example.split][fields["note_str"]] = fields
    for split, folder in SPLIT_DIRS.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        with open(root / folder / "examples.json", "w", encoding="utf-8") as f:
            json.dump(entries[split], f, indent=4)

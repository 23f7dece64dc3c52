"""VocalSet singing technique (VocalSetT) and singer (VocalSetS) identification (docs/evaluation.md §2.7, §2.8).

Layout under the data root (VocalSet11.zip unpacked; only its full-data folder is read):

    FULL/<female1..female9 | male1..male11>/<arpeggios|long_tones|scales|excerpts>/<technique>/<file>.wav

File names start with the short singer id (`f3_arpeggios_belt_a.wav`, `m11_...`) except ~30 that
lack it; the singer always comes from the folder. Audio is 44.1 kHz.

Items are consecutive 3-s chunks of each recording (offset 3k, duration 3; a remainder shorter
than 3 s is dropped), grouped by recording. MARBLE's preprocessing also trims silence with a
VAD, resamples to 44.1 kHz and z-normalises each chunk before cutting; we do none of that: the
chunks are cut from the file as it ships and read at the model's rate, so chunk counts differ
slightly from MARBLE's (exact membership was never released anyway, [ISS] #16).
"""

from __future__ import annotations

import os
import re
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf

from musicssl.audio import AudioError, audio_info
from musicssl.evaluate.tasks.base import (
    DatasetError, Item, LayoutExample, Protocol, Splits, Task, check_options, left_out_note,
)

SINGERS = tuple(f"f{i}" for i in range(1, 10)) + tuple(f"m{i}" for i in range(1, 12))
# The 10 techniques of the technique task (MARBLE's tech_task_type); other folders
# (fast_forte, fast_piano, forte, messa, pp, slow_forte, slow_piano) serve the singer task only.
TECHNIQUES = ("belt", "breathy", "inhaled", "lip_trill", "spoken", "straight", "trill", "trillo",
              "vibrato", "vocal_fry")
TEST_SINGERS = ("f2", "f8", "m3", "m5", "m10")   # VocalSetT's held-out singers (docs/evaluation.md §2.7)
CHUNK_SECONDS = 3
SPLIT_SEED = 42617                                # MARBLE's numpy seed
_SOURCE = "https://zenodo.org/record/1203819/files/VocalSet11.zip (unzip; the full-data folder is FULL/)"
_FOLDER = re.compile(r"^(female|male)(\d+)$")
_PREFIX = re.compile(r"^([fm]\d+)_")
_COPY = re.compile(r"^(.*)\(\d+\)$")              # "f2_scales_vibrato_a(1)": a duplicate download


@dataclass(frozen=True)
class Recording:
    relative: str      # "female3/arpeggios/belt/f3_arpeggios_belt_a.wav": the group of its chunks
    path: Path
    singer: str        # "f3"
    technique: str     # the technique folder name
    num_chunks: int


def singer_of_folder(name: str) -> str | None:
    """'female3' -> 'f3', 'male11' -> 'm11'; None for anything else."""
    match = _FOLDER.match(name)
    return f"{match.group(1)[0]}{int(match.group(2))}" if match else None


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _wav_files(folder: Path, notes: dict[str, list[str]]) -> list[Path]:
    """The .wav files of a technique folder, without hidden files (.DS_Store) and numbered copies."""
    names = {p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}
    files = []
    for name in sorted(names):
        stem, suffix = os.path.splitext(name)
        if suffix.lower() != ".wav":
            notes["not a .wav file (ignored)"].append(str(folder / name))
            continue
        copy = _COPY.match(stem)
        if copy and f"{copy.group(1)}{suffix}" in names:
            notes["duplicate copies left out"].append(str(folder / name))
            continue
        files.append(folder / name)
    return files


def scan_recordings(root: Path) -> tuple[list[Recording], list[str]]:
    """Every recording under root/FULL with its chunk count, plus notes on what was left out."""
    full = Path(root) / "FULL"
    if not full.is_dir():
        raise DatasetError(f"{full}: VocalSet's full-data folder not found. It comes from {_SOURCE}")
    notes: dict[str, list[str]] = {key: [] for key in (
        "singer folders not named femaleN/maleN (ignored)", "not a .wav file (ignored)",
        "duplicate copies left out", "files without the singer prefix (singer taken from the folder)",
        "files whose singer prefix disagrees with the folder (singer taken from the folder)",
        "unreadable audio files left out", "recordings shorter than one 3-s chunk")}
    recordings = []
    for singer_dir in _subfolders(full):
        singer = singer_of_folder(singer_dir.name)
        if singer not in SINGERS:
            notes["singer folders not named femaleN/maleN (ignored)"].append(singer_dir.name)
            continue
        for context_dir in _subfolders(singer_dir):
            for technique_dir in _subfolders(context_dir):
                for path in _wav_files(technique_dir, notes):
                    recording = _recording(full, path, singer, technique_dir.name, notes)
                    if recording is not None:
                        recordings.append(recording)
    return recordings, [left_out_note(what, names) for what, names in notes.items() if names]


def _recording(full: Path, path: Path, singer: str, technique: str,
               notes: dict[str, list[str]]) -> Recording | None:
    relative = path.relative_to(full).as_posix()
    prefix = _PREFIX.match(path.name)
    if prefix is None:
        notes["files without the singer prefix (singer taken from the folder)"].append(relative)
    elif prefix.group(1) != singer:
        notes["files whose singer prefix disagrees with the folder (singer taken from the folder)"].append(relative)
    try:
        info = audio_info(path)
    except AudioError as err:
        notes["unreadable audio files left out"].append(str(err))
        return None
    num_chunks = info.num_frames // (CHUNK_SECONDS * info.sample_rate)   # exact: whole samples
    if num_chunks == 0:
        notes["recordings shorter than one 3-s chunk"].append(relative)
        return None
    return Recording(relative, path, singer, technique, num_chunks)


def group_shuffle_split(groups: Sequence[str], test_size: float) -> tuple[set[str], set[str]]:
    """(rest, held out) groups: sklearn's GroupShuffleSplit with MARBLE's seed. It draws over the
    sorted distinct groups, so the result depends only on the set of recordings.

    MARBLE seeds numpy globally and groups by a file's index within its technique folder, which
    ties unrelated recordings of different folders together; we group by the recording itself
    and pass the seed explicitly, so its exact membership is not reproduced (nor published).
    """
    from sklearn.model_selection import GroupShuffleSplit

    unique = sorted(set(groups))
    splitter = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=SPLIT_SEED)
    try:
        rest, held_out = next(splitter.split(unique, groups=unique))
    except ValueError as err:
        raise DatasetError(f"cannot split {len(unique)} recordings with test_size {test_size}: {err}") from err
    return {unique[i] for i in rest}, {unique[i] for i in held_out}


def _chunks(recording: Recording, target: int) -> list[Item]:
    return [Item(key=f"{recording.relative}#{k}", path=recording.path, target=target, group=recording.relative,
                 offset=float(k * CHUNK_SECONDS), duration=float(CHUNK_SECONDS))
            for k in range(recording.num_chunks)]


class _VocalSetTask(Task):
    default_dir = "VocalSet"
    source = _SOURCE

    @abstractmethod
    def assign(self, recordings: list[Recording]) -> dict[str, str]:
        """Recording (relative path) -> split, for the recordings this task uses."""

    @abstractmethod
    def target(self, recording: Recording) -> int:
        """Class index of a recording."""

    def load(self, root: Path, **options: str) -> Splits:
        check_options(self, options, ())
        recordings, notes = scan_recordings(Path(root))
        try:
            split_of = self.assign(recordings)
        except DatasetError as err:
            raise DatasetError(f"{root}: task {self.protocol.name}: {err}") from err
        splits = Splits([], [], [], notes)
        for recording in recordings:
            if recording.relative in split_of:
                splits[split_of[recording.relative]].extend(_chunks(recording, self.target(recording)))
        for split in ("train", "valid", "test"):
            if not splits[split]:
                reason = "; ".join(notes) or "no recording of the task's singers/techniques falls there"
                raise DatasetError(f"{root}: no {split} recordings for task {self.protocol.name}: {reason}")
        return splits


class VocalSetTechnique(_VocalSetTask):
    """Test = singers f2, f8, m3, m5, m10; the other 15 singers' recordings go 60/40 to train/valid
    by a seeded recording-level GroupShuffleSplit (MARBLE's code; its paper's "9 train / 6 valid
    singers" does not match it, docs/evaluation.md §5.3)."""

    protocol = Protocol(
        name="vocalset_technique", title="VocalSetT", kind="multiclass", outputs=TECHNIQUES,
        metrics=("accuracy",), window_seconds=None,   # a 3-s chunk is one window
        plateau_patience=5, early_stop_patience=10, max_epochs=100,   # docs/evaluation.md §2.7
    )

    def assign(self, recordings: list[Recording]) -> dict[str, str]:
        used = [r for r in recordings if r.technique in TECHNIQUES]
        split_of = {r.relative: "test" for r in used if r.singer in TEST_SINGERS}
        pool = [r.relative for r in used if r.singer not in TEST_SINGERS]
        train, valid = group_shuffle_split(pool, test_size=0.4)
        split_of.update({name: "train" for name in train})
        split_of.update({name: "valid" for name in valid})
        return split_of

    def target(self, recording: Recording) -> int:
        return TECHNIQUES.index(recording.technique)


class VocalSetSinger(_VocalSetTask):
    """All 20 singers and every technique folder; 20 % of the recordings go to test, then 40 % of
    the rest to valid (seeded GroupShuffleSplits, recordings disjoint across splits)."""

    protocol = Protocol(
        name="vocalset_singer", title="VocalSetS", kind="multiclass", outputs=SINGERS,
        metrics=("accuracy",), window_seconds=None,
        plateau_patience=5, early_stop_patience=20, max_epochs=100,   # docs/evaluation.md §2.8
    )

    def assign(self, recordings: list[Recording]) -> dict[str, str]:
        rest, test = group_shuffle_split([r.relative for r in recordings], test_size=0.2)
        train, valid = group_shuffle_split(sorted(rest), test_size=0.4)
        split_of = {name: "test" for name in test}
        split_of.update({name: "train" for name in train})
        split_of.update({name: "valid" for name in valid})
        return split_of

    def target(self, recording: Recording) -> int:
        return SINGERS.index(recording.singer)


# ----------------------------------------------------------------------------- writing


def _folder_of_singer(singer: str) -> str:
    return ("female" if singer[0] == "f" else "male") + singer[1:]


def write_layout(root: Path, examples: Sequence[LayoutExample]) -> None:
    """Write `examples` as FULL/<singer>/<context>/<technique>/<f3_...>.wav under `root`, one
    recording each (WAV at the example's rate; each full 3 s becomes one item).

    label: a singer id ("f3", VocalSetS) or a technique (VocalSetT); extra may carry the other
    ("singer", "technique") and "context" (default arpeggios). Without a singer, test examples
    get the VocalSetT test singers and train/valid examples the other 15, in turn. Only the
    VocalSetT test split is fixed by the protocol; VocalSetT train/valid and all VocalSetS splits
    are drawn by the seeded GroupShuffleSplit over recordings, so `example.split` cannot be
    honoured there (sizes follow its 60/40 and 20/32/48 proportions).
    """
    root = Path(root)
    pool = [s for s in SINGERS if s not in TEST_SINGERS]
    for index, example in enumerate(examples):
        label = str(example.label)
        singer = str(example.extra.get("singer", label if label in SINGERS else ""))
        if not singer:
            choices = TEST_SINGERS if example.split == "test" else pool
            singer = choices[index % len(choices)]
        technique = str(example.extra.get("technique", label if label not in SINGERS else "straight"))
        context = str(example.extra.get("context", "arpeggios"))
        if singer not in SINGERS:
            raise ValueError(f"example {example.name!r}: singer {singer!r} is not one of {SINGERS}")
        name = re.sub(r"[^A-Za-z0-9]+", "_", example.name).strip("_") or "take"
        folder = root / "FULL" / _folder_of_singer(singer) / context / technique
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{singer}_{context}_{technique}_{index:05d}_{name}.wav"
        sf.write(path, np.asarray(example.audio, dtype=np.float32), example.sample_rate, subtype="PCM_16")

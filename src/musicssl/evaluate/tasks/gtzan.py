"""GTZAN genre classification and GTZAN-Rhythm beat tracking (docs/evaluation.md §2.3, §2.9).

Both tasks read the same audio and the same fault-filtered split (Kereliuk et al. 2015, artist
disjoint, 443/197/290 of the 1000 clips): `genres/<genre>/<genre>.000NN.wav` (MARBLE links the
Kaggle copy's `Data/genres_original` as `genres`) and the dnn-mgr lists `train_filtered.txt`,
`valid_filtered.txt`, `test_filtered.txt` (one `genre/genre.000NN.wav` per line). Beat times come
from GTZAN-Rhythm's JAMS files `<genre>.000NN.wav.jams` (namespace "beat", the annotation whose
`sandbox.annotation_type` is "beat"; the other one holds downbeats). JAMS is plain JSON: read
with the json module, no jams package.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from musicssl.audio import AUDIO_SUFFIXES, AudioError, audio_info
from musicssl.evaluate.tasks.base import (
    SPLITS, DatasetError, Item, LayoutExample, Protocol, Splits, Task, check_options, check_split_sizes,
)

# Class order of MARBLE's GTZAN_dataset.py (docs/evaluation.md §2.3).
GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")
LIST_FILES = {split: f"{split}_filtered.txt" for split in SPLITS}
AUDIO_DIRS = ("genres", "genres_original", "Data/genres_original")  # MARBLE's link, then the Kaggle names
RHYTHM_DIR = "GTZAN-Rhythm_v2_ismir2015_lbd"
ANNOTATION_DIRS = (f"{RHYTHM_DIR}/jams", RHYTHM_DIR, "jams")
FULL_SIZES = {"train": 443, "valid": 197, "test": 290}
# MARBLE's download script deletes jazz.00054.wav (corrupt in the Kaggle copy) from the train list.
PUBLISHED_LIST_SIZES = ({"train": 443, "valid": 197, "test": 290}, {"train": 442, "valid": 197, "test": 290})
AUDIO_SOURCE = ("Kaggle andradaolteanu/gtzan-dataset-music-genre-classification "
                "(Data/genres_original, linked as genres/)")
SPLITS_SOURCE = ("github.com/coreyker/dnn-mgr (gtzan/train_filtered.txt, valid_filtered.txt, test_filtered.txt, "
                 "commit bdad579)")
RHYTHM_SOURCE = ("http://anasynth.ircam.fr/home/system/files/attachment_uploads/marchand/private/"
                 "GTZAN-Rhythm_v2_ismir2015_lbd_2015-10-28.tar_.gz (Marchand & Peeters 2015)")


@dataclass(frozen=True)
class Track:
    key: str          # the list line, e.g. "blues/blues.00029.wav"
    genre: str        # the folder name
    path: Path
    duration: float   # seconds, from the file header


class GTZANGenre(Task):
    protocol = Protocol(
        name="gtzan", title="GTZAN", kind="multiclass", outputs=GENRES, metrics=("accuracy",),
        window_seconds=None,  # MERT cfg: the whole 30-s clip in one pass
        plateau_patience=6, early_stop_patience=20,
    )
    default_dir = "GTZAN"
    source = f"audio: {AUDIO_SOURCE}; split lists: {SPLITS_SOURCE}"

    def load(self, root: Path, **options: str) -> Splits:
        check_options(self, options, ("splits_dir",))
        tracks, notes, full = list_tracks(Path(root), options.get("splits_dir"))
        genres = GENRES
        found = sorted({track.genre for split in SPLITS for track in tracks[split]})
        if not set(found) <= set(GENRES):
            # Not GTZAN's ten genres (e.g. a generated dataset in GTZAN's layout): classes from the folders.
            genres = tuple(found)
            notes.append(f"{root}: genre folders {found} are not GTZAN's ten; classes taken from the data")
        self.protocol = type(self).protocol.replace(outputs=genres)
        splits = Splits(*([Item(t.key, t.path, genres.index(t.genre)) for t in tracks[s]] for s in SPLITS), notes)
        if full:
            check_split_sizes(self, splits, FULL_SIZES)
        return splits


class GTZANBeats(Task):
    protocol = Protocol(
        name="gtzan_beats", title="GTZANBT", kind="beats",
        outputs=("other", "beat"),  # §2.9: per-frame 2-way softmax {other, beat}
        metrics=("beat_f",),
        window_seconds=None,  # valid/test: the whole 30-s clip; train crops are the probe's business
        plateau_patience=6, early_stop_patience=20,
    )
    default_dir = "GTZAN"
    source = f"beat annotations: {RHYTHM_SOURCE}; audio: {AUDIO_SOURCE}; split lists: {SPLITS_SOURCE}"

    def load(self, root: Path, **options: str) -> Splits:
        check_options(self, options, ("splits_dir", "annotations_dir"))
        root = Path(root)
        annotations_dir = self._annotations_dir(root, options.get("annotations_dir"))
        tracks, notes, full = list_tracks(root, options.get("splits_dir"))
        splits = Splits([], [], [], notes)
        unannotated, unreadable, past_end = [], [], []
        for split in SPLITS:
            for track in tracks[split]:
                jams_path = annotations_dir / f"{Path(track.key).name}.jams"
                if not jams_path.is_file():
                    unannotated.append(track.key)
                    continue
                try:
                    beats = read_jams_beats(jams_path)
                except ValueError as err:
                    unreadable.append(f"{track.key} ({err})")
                    continue
                if beats[-1] > track.duration:
                    past_end.append(track.key)
                splits[split].append(Item(track.key, track.path, beats))
        _note(notes, f"tracks have no beat annotation file in {annotations_dir}", unannotated)
        _note(notes, "tracks have an unusable JAMS file", unreadable)
        if past_end:  # kept as annotated; MARBLE drops beat frames past the label grid (reggae.00002) at probe time
            notes.append(f"{len(past_end)} tracks have beats annotated past the end of their audio (kept): "
                         f"{', '.join(past_end[:3])}{', ...' if len(past_end) > 3 else ''}")
        _require_nonempty(splits, root)
        if full:
            check_split_sizes(self, splits, FULL_SIZES)
        return splits

    def _annotations_dir(self, root: Path, option: str | None) -> Path:
        candidates = [Path(option)] if option else [root / name for name in ANNOTATION_DIRS]
        for candidate in candidates:
            if candidate.is_dir():
                return candidate
        raise DatasetError(f"GTZAN-Rhythm beat annotations not found (looked in "
                           f"{', '.join(str(c) for c in candidates)}). They come from {RHYTHM_SOURCE}; "
                           f"unpack it into {root}")


# ----------------------------------------------------------------------------- reading


def list_tracks(root: Path, splits_dir: str | None) -> tuple[dict[str, list[Track]], list[str], bool]:
    """The readable tracks of each split list, the notes about what was left out, and whether
    the lists are the published (full) ones."""
    audio_dir = find_audio_dir(root)
    lists = read_split_lists(Path(splits_dir) if splits_dir else root)
    notes: list[str] = []
    keys = _unique_keys(lists, notes)
    tracks: dict[str, list[Track]] = {split: [] for split in SPLITS}
    missing, unreadable = [], []
    for split in SPLITS:
        for key in keys[split]:
            path = audio_dir / key
            if not path.is_file():
                missing.append(key)
                continue
            try:
                duration = audio_info(path).duration_seconds  # header only: cheap, catches jazz.00054
            except AudioError as err:
                unreadable.append(f"{key} ({err.problem})")
                continue
            tracks[split].append(Track(key, key.split("/")[0], path, duration))
    _note(notes, f"listed files are missing under {audio_dir}", missing)
    _note(notes, "listed files are unreadable", unreadable)
    _note_unlisted(audio_dir, {key for split in SPLITS for key in keys[split]}, notes)
    _require_nonempty(tracks, root)
    full = {split: len(lines) for split, lines in lists.items()} in PUBLISHED_LIST_SIZES
    return tracks, notes, full


def _unique_keys(lists: dict[str, list[str]], notes: list[str]) -> dict[str, list[str]]:
    """Per split, the list lines as 'genre/file' keys; malformed lines and repeats become notes."""
    keys: dict[str, list[str]] = {split: [] for split in SPLITS}
    seen: set[str] = set()
    malformed, duplicates = [], []
    for split in SPLITS:
        for line in lists[split]:
            parts = line.replace("\\", "/").split("/")
            key = "/".join(parts[-2:])
            if len(parts) < 2 or not parts[-2] or not parts[-1]:
                malformed.append(f"{LIST_FILES[split]}: {line!r}")
            elif key in seen:
                duplicates.append(key)
            else:
                seen.add(key)
                keys[split].append(key)
    _note(notes, "split-list lines are not 'genre/file.wav'", malformed)
    _note(notes, "files appear more than once in the split lists (first kept)", duplicates)
    return keys


def _note_unlisted(audio_dir: Path, listed: set[str], notes: list[str]) -> None:
    """Audio in no list is expected (the fault filtering drops about 7 % of the 1000 clips), but
    the user should see how much."""
    unlisted = sorted(relative for relative in (p.relative_to(audio_dir).as_posix() for p in audio_dir.glob("*/*")
                                                if p.suffix.lower() in AUDIO_SUFFIXES) if relative not in listed)
    if unlisted:
        notes.append(f"{len(unlisted)} audio files under {audio_dir} are in no split list (not used): "
                     f"{', '.join(unlisted[:3])}{', ...' if len(unlisted) > 3 else ''}")


def find_audio_dir(root: Path) -> Path:
    for name in AUDIO_DIRS:
        if (root / name).is_dir():
            return root / name
    raise DatasetError(f"{root}: no GTZAN audio folder (looked for {', '.join(AUDIO_DIRS)}). "
                       f"The audio comes from {AUDIO_SOURCE}")


def read_split_lists(splits_dir: Path) -> dict[str, list[str]]:
    lists = {}
    for split, name in LIST_FILES.items():
        path = splits_dir / name
        if not path.is_file():
            raise DatasetError(f"{path}: GTZAN fault-filtered {split} list not found. The lists come from "
                               f"{SPLITS_SOURCE}; put them in {splits_dir} or pass splits_dir=...")
        text = path.read_text(encoding="utf-8-sig")
        lists[split] = [line.strip() for line in text.splitlines() if line.strip()]
    return lists


def read_jams_beats(path: Path) -> np.ndarray:
    """(n,) float64 sorted beat times of the namespace-"beat" annotation whose
    sandbox.annotation_type is "beat". Raises ValueError saying what is wrong."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"not valid JSON: {err}") from err
    for annotation in document.get("annotations", []) if isinstance(document, dict) else []:
        sandbox = annotation.get("sandbox") or {}
        if annotation.get("namespace") == "beat" and sandbox.get("annotation_type") == "beat":
            times = np.sort(np.asarray(_observation_times(annotation.get("data", [])), dtype=np.float64))
            if times.size == 0:
                raise ValueError("the beat annotation is empty")
            return times
    raise ValueError("no annotation with namespace 'beat' and sandbox.annotation_type 'beat'")


def _observation_times(data: object) -> list[float]:
    # JAMS >= 0.3 writes a list of observations; JAMS 0.2's JamsFrame wrote a dict of columns.
    if isinstance(data, dict):
        return list(data.get("time", []))
    return [observation["time"] for observation in data]


def _require_nonempty(splits: Splits | dict[str, list], root: Path) -> None:
    for split in SPLITS:
        if not splits[split]:
            raise DatasetError(f"{root}: the {split} split is empty after leaving out missing, unreadable "
                               f"or unannotated files (see {LIST_FILES[split]})")


def _note(notes: list[str], what: str, names: list[str], shown: int = 3) -> None:
    if names:
        more = ", ..." if len(names) > shown else ""
        notes.append(f"{len(names)} {what}; left out: {', '.join(names[:shown])}{more}")


# ----------------------------------------------------------------------------- writing


def write_layout(root: Path, examples: Sequence[LayoutExample]) -> None:
    """Write `examples` as GTZAN + GTZAN-Rhythm ship: `genres/<genre>/<genre>.000NN.wav`
    (numbered per genre from 00000 in example order), the three `*_filtered.txt` lists at the
    root, and, for examples with beats, `GTZAN-Rhythm_v2_ismir2015_lbd/jams/<file>.wav.jams`.

    `label` is the genre name; beats come from `extra["beats"]` (a label that is itself a beat
    array is taken as the beats, with the genre from `extra["genre"]`, default "blues");
    `extra["downbeats"]` is optional (written as an empty downbeat annotation otherwise).
    """
    root = Path(root)
    lines: dict[str, list[str]] = {split: [] for split in SPLITS}
    counters: dict[str, int] = {}
    for example in examples:
        if example.split not in lines:
            raise ValueError(f"example {example.name!r}: unknown split {example.split!r}; expected one of {SPLITS}")
        genre, beats = _genre_and_beats(example)
        file_name = f"{genre}.{counters.setdefault(genre, 0):05d}.wav"
        counters[genre] += 1
        path = root / "genres" / genre / file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, example.audio, example.sample_rate)
        lines[example.split].append(f"{genre}/{file_name}")
        if beats is not None:
            duration = len(example.audio) / example.sample_rate
            downbeats = np.asarray(example.extra.get("downbeats", []), dtype=np.float64)
            _write_jams(root / RHYTHM_DIR / "jams" / f"{file_name}.jams", beats, downbeats, duration)
    for split, names in lines.items():
        (root / LIST_FILES[split]).write_text("".join(f"{name}\n" for name in sorted(names)), encoding="utf-8")


def _genre_and_beats(example: LayoutExample) -> tuple[str, np.ndarray | None]:
    if isinstance(example.label, str):
        genre, beats = example.label, example.extra.get("beats")
    else:
        genre, beats = example.extra.get("genre", "blues"), example.label
    if not re.fullmatch(r"[^/\\.\s][^/\\]*", genre):
        raise ValueError(f"example {example.name!r}: genre {genre!r} cannot be a folder name")
    return genre, None if beats is None else np.asarray(beats, dtype=np.float64)


def _write_jams(path: Path, beats: np.ndarray, downbeats: np.ndarray, duration: float) -> None:
    """GTZAN-Rhythm's JAMS structure (docs/evaluation.md §9): two namespace-"beat" annotations
    told apart by sandbox.annotation_type; observations with duration 0, confidence 1, value 1."""
    document = {
        "annotations": [
            _beat_annotation(beats, "beat", duration),
            _beat_annotation(downbeats, "downbeat", duration),
            # The real files also carry tag_open annotations (meter, tempo, swing); the loader skips them.
            {"annotation_metadata": _annotation_metadata(), "namespace": "tag_open", "data": [],
             "sandbox": {}, "time": 0.0, "duration": duration},
        ],
        "file_metadata": {"title": path.name[: -len(".wav.jams")], "artist": "", "release": "",
                          "duration": duration, "identifiers": {}, "jams_version": "0.2.0"},
        "sandbox": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")


def _beat_annotation(times: np.ndarray, annotation_type: str, duration: float) -> dict:
    data = [{"time": float(t), "duration": 0.0, "value": 1, "confidence": 1} for t in times]
    return {"annotation_metadata": _annotation_metadata(), "namespace": "beat", "data": data,
            "sandbox": {"annotation_type": annotation_type}, "time": 0.0, "duration": duration}


def _annotation_metadata() -> dict:
    return {"curator": {"name": "", "email": ""}, "annotator": {}, "version": "", "corpus": "GTZAN-Rhythm",
            "annotation_tools": "", "annotation_rules": "", "validation": "", "data_source": ""}

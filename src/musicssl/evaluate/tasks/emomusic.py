"""EmoMusic (1000 Songs for Emotional Analysis of Music) arousal/valence regression (docs/evaluation.md §2.4).

The dataset ships `annotations.tar.gz` (`songs_info.csv`, `static_annotations.csv`, ...; comma
separated, values padded with spaces/tabs) and `clips_45sec.tar.gz` (`clips_45seconds/<song_id>.mp3`,
744 songs, one 45-s clip each). MARBLE v1 reuses jukemir's protocol: targets [mean_arousal,
mean_valence] z-normalised with the mean and (population) std of the MediaEval-2013
"development" songs; MediaEval-2013 "evaluation" songs are the test split; the development songs
go to train or valid by the SHA-1 of the normalised artist name modulo 10 (8:2). The MERT cfg
feeds the first 30 s of each clip in 5-s windows.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from itertools import count
from pathlib import Path

import numpy as np
import soundfile as sf

from musicssl.evaluate.tasks.base import (
    SPLITS, DatasetError, Item, LayoutExample, Protocol, Splits, Task, check_options, check_split_sizes,
)

SONGS_INFO = "songs_info.csv"
STATIC_ANNOTATIONS = "static_annotations.csv"
METADATA_DIRS = ("", "annotations")  # the archive unpacked at the root, or into annotations/
AUDIO_DIR = "clips_45seconds"
OUTPUTS = ("arousal", "valence")     # jukemir/MARBLE order: arousal first
TEST_SET = "evaluation"              # "Mediaeval 2013 set" value of the test songs; the rest is "development"
# jukemir: ratios = ["train"] * 8 + ["valid"] * 2, indexed by sha1(artist) % 10, so 8 and 9 are valid.
VALID_RESIDUES = frozenset({8, 9})
FULL_SONGS = 744
FULL_SIZES = {"train": 504, "valid": 115, "test": 125}
SONGS_COLUMNS = ("song_id", "Artist", "Mediaeval 2013 set")
ANNOTATION_COLUMNS = ("song_id", "mean_arousal", "mean_valence")


class EmoMusic(Task):
    protocol = Protocol(
        name="emo", title="EMO", kind="regression", outputs=OUTPUTS, metrics=("r2", "r2_arousal", "r2_valence"),
        window_seconds=5.0, crop_seconds=30.0,  # MERT cfg: first 30 s of the 45-s clip, 5-s windows
        plateau_patience=5, early_stop_patience=20,
    )
    default_dir = "EMO"
    source = ("http://cvml.unige.ch/databases/emoMusic/ (annotations.tar.gz: songs_info.csv, "
              "static_annotations.csv; clips_45sec.tar.gz: clips_45seconds/<song_id>.mp3)")

    def load(self, root: Path, **options: str) -> Splits:
        check_options(self, options, ())
        root = Path(root)
        notes: list[str] = []
        songs = read_csv(self._metadata_file(root, SONGS_INFO), SONGS_COLUMNS, notes)
        annotation_rows = read_csv(self._metadata_file(root, STATIC_ANNOTATIONS), ANNOTATION_COLUMNS, notes)
        annotations = {row["song_id"]: row for row in annotation_rows}
        songs = _annotated_songs(songs, annotations, notes)
        targets = normalised_targets(songs, annotations, notes)  # song_id -> (2,) float32
        splits = self._items(root, songs, targets, notes)
        if len(songs) == FULL_SONGS:
            check_split_sizes(self, splits, FULL_SIZES)
        return splits

    def _metadata_file(self, root: Path, name: str) -> Path:
        candidates = [root / folder / name for folder in METADATA_DIRS]
        for path in candidates:
            if path.is_file():
                return path
        raise DatasetError(f"{candidates[0]}: EmoMusic metadata not found (also looked in {candidates[1]}). "
                           f"It comes from {self.source}")

    def _items(self, root: Path, songs: list[dict[str, str]], targets: dict[str, np.ndarray],
               notes: list[str]) -> Splits:
        splits = Splits([], [], [], notes)
        missing = []
        for song in songs:
            path = root / AUDIO_DIR / f"{song['song_id']}.mp3"
            if not path.is_file():
                missing.append(path.name)
                continue
            split = "test" if song["Mediaeval 2013 set"] == TEST_SET else artist_split(song["Artist"])
            splits[split].append(Item(song["song_id"], path, targets[song["song_id"]]))
        _note(notes, f"songs of {SONGS_INFO} have no clip in {root / AUDIO_DIR}", missing)
        for split in SPLITS:
            if not splits[split]:
                raise DatasetError(f"{root}: the EmoMusic {split} split is empty (test = MediaEval 2013 "
                                   f"'{TEST_SET}' songs, train/valid = the others by artist hash)")
        return splits


# ----------------------------------------------------------------------------- reading


def read_csv(path: Path, required: Sequence[str], notes: list[str]) -> list[dict[str, str]]:
    """Rows of an EmoMusic CSV with keys and values stripped (the files pad them with spaces and
    tabs). Song ids are normalised to their integer form ("0002" -> "2"), as the clip file names.
    Rows with the wrong number of fields or a non-numeric song_id become a note."""
    # errors="replace": a stray non-UTF-8 byte in an artist name must not stop the run; the artist
    # hash drops non-ASCII characters anyway. skipinitialspace: ', "a, b"' is one quoted field.
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        reader = csv.reader(f, skipinitialspace=True)
        header = [name.strip() for name in next(reader, [])]
        absent = [name for name in required if name not in header]
        if absent:
            raise DatasetError(f"{path}: missing column(s) {absent}; found {header}")
        rows, malformed = [], []
        for line_number, fields in enumerate(reader, start=2):
            if not any(field.strip() for field in fields):
                continue
            row = dict(zip(header, (field.strip() for field in fields)))
            if len(fields) != len(header) or not _is_number(row["song_id"]):
                malformed.append(f"line {line_number}")
                continue
            row["song_id"] = str(int(float(row["song_id"])))
            rows.append(row)
    _note(notes, f"rows of {path.name} are malformed (field count differs from the header, or bad song_id)",
          malformed)
    return rows


def _annotated_songs(songs: list[dict[str, str]], annotations: dict[str, dict[str, str]],
                     notes: list[str]) -> list[dict[str, str]]:
    kept, unannotated, duplicates, bad_values = [], [], [], []
    seen: set[str] = set()
    for song in songs:
        song_id = song["song_id"]
        if song_id in seen:
            duplicates.append(song_id)
        elif song_id not in annotations:
            unannotated.append(song_id)
        elif not all(_is_number(annotations[song_id][column]) for column in ("mean_arousal", "mean_valence")):
            bad_values.append(song_id)
        else:
            seen.add(song_id)
            kept.append(song)
    _note(notes, f"song_ids repeat in {SONGS_INFO} (first kept)", duplicates)
    _note(notes, f"songs of {SONGS_INFO} have no row in {STATIC_ANNOTATIONS}", unannotated)
    _note(notes, f"songs have a non-numeric mean_arousal or mean_valence in {STATIC_ANNOTATIONS}", bad_values)
    return kept


def normalised_targets(songs: list[dict[str, str]], annotations: dict[str, dict[str, str]],
                       notes: list[str]) -> dict[str, np.ndarray]:
    """song_id -> (2,) float32 [arousal, valence], z-normalised with the mean and population std
    (np.std, as jukemir) of the non-evaluation songs, computed before any audio check."""
    raw = {song["song_id"]: np.array([float(annotations[song["song_id"]]["mean_arousal"]),
                                      float(annotations[song["song_id"]]["mean_valence"])]) for song in songs}
    development = np.array([raw[song["song_id"]] for song in songs if song["Mediaeval 2013 set"] != TEST_SET])
    if len(development) == 0:
        raise DatasetError(f"{SONGS_INFO}: no song outside the MediaEval 2013 '{TEST_SET}' set, so no "
                           f"train/valid songs and no normalisation statistics")
    mean, std = development.mean(axis=0), development.std(axis=0)
    if np.any(std == 0):
        notes.append(f"{STATIC_ANNOTATIONS}: a target is constant over the development songs; not scaled")
        std = np.where(std == 0, 1.0, std)
    return {song_id: ((value - mean) / std).astype(np.float32) for song_id, value in raw.items()}


def normalise_artist(artist: str) -> str:
    """jukemir's artist key: lower case, only ASCII letters and whitespace, whitespace collapsed."""
    kept = "".join(c for c in artist.lower() if ord(c) < 128 and (c.isalpha() or c.isspace()))
    return " ".join(kept.split())


def artist_split(artist: str) -> str:
    """'train' or 'valid' for a development song: SHA-1 of the normalised artist name mod 10."""
    residue = int(hashlib.sha1(normalise_artist(artist).encode("utf-8")).hexdigest(), 16) % 10
    return "valid" if residue in VALID_RESIDUES else "train"


def _is_number(text: str) -> bool:
    try:
        return np.isfinite(float(text))
    except ValueError:
        return False


def _note(notes: list[str], what: str, names: list[str], shown: int = 3) -> None:
    if names:
        more = ", ..." if len(names) > shown else ""
        notes.append(f"{len(names)} {what}; left out: {', '.join(names[:shown])}{more}")


# ----------------------------------------------------------------------------- writing


def write_layout(root: Path, examples: Sequence[LayoutExample]) -> None:
    """Write `examples` as EmoMusic ships: `clips_45seconds/<song_id>.mp3` (song ids 1, 2, ...
    in example order) and the two CSVs at the root. `label` is {"arousal": a, "valence": v} in
    raw units (the loader z-normalises). Test examples are MediaEval "evaluation" songs; for the
    others the artist (extra["artist"], default "artist <letters>") gets letter suffixes until
    its hash lands in the requested split (digits would not do: the hash ignores them)."""
    root = Path(root)
    songs = [["song_id", "file_name", "Artist", "Song title", "start of the segment (min.sec)",
              "end of the segment (min.sec)", "Genre", "Mediaeval 2013 set"]]
    annotations = [["song_id", "mean_arousal", "std_arousal", "mean_valence", "std_valence"]]
    for song_id, example in enumerate(examples, start=1):
        if example.split not in SPLITS:
            raise ValueError(f"example {example.name!r}: unknown split {example.split!r}; expected one of {SPLITS}")
        artist = _artist_for(example.split, example.extra.get("artist") or f"artist {_letters(song_id)}")
        path = root / AUDIO_DIR / f"{song_id}.mp3"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, example.audio, example.sample_rate, format="MP3")
        media_eval_set = TEST_SET if example.split == "test" else "development"
        songs.append([str(song_id), f"{song_id}.mp3", artist, example.name, "0.00", "0.45",
                      example.extra.get("genre", "Pop"), media_eval_set])
        label = dict(example.label)
        if not set(OUTPUTS) <= set(label):
            raise ValueError(f"example {example.name!r}: label needs keys {OUTPUTS}, got {sorted(label)}")
        annotations.append([str(song_id), repr(float(label["arousal"])), "0", repr(float(label["valence"])), "0"])
    for name, rows in ((SONGS_INFO, songs), (STATIC_ANNOTATIONS, annotations)):
        with open(root / name, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(rows)


def _artist_for(split: str, base: str) -> str:
    if split == "test":
        return base
    for index in count():
        candidate = base if index == 0 else f"{base} {_letters(index)}"
        if artist_split(candidate) == split:
            return candidate
    raise AssertionError("unreachable")


def _letters(number: int) -> str:
    """1 -> 'a', 26 -> 'z', 27 -> 'aa', ... (bijective base 26)."""
    letters = ""
    while number > 0:
        number, remainder = divmod(number - 1, 26)
        letters = chr(ord("a") + remainder) + letters
    return letters

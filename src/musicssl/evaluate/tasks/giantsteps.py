"""GiantSteps key detection (docs/evaluation.md §2.2): 24 keys, songs cut into 30-s segments, a song-level
decision by an ensemble over its segments, scored with mir_eval's weighted key score.

Layout under the data root (the two annotation repositories as cloned or unzipped from GitHub,
each with the Beatport LOFI previews added under `audio/`):

    giantsteps-mtg-key-dataset/            train + valid (a `-master` or `-<commit>` suffix is fine)
        annotations/annotations.txt        TAB, LF: ID, MANUAL KEY ("D# minor", "-", "X / Y"), C (0/1/2)
        annotations/beatport_metadata.txt  TAB: ID, ARTIST ("A, B" for collaborations), SONG TITLE, ...
        md5/<ID>.LOFI.md5                  one per track: the list MARBLE enumerates
        audio/<ID>.LOFI.mp3
    giantsteps-key-dataset/                test
        annotations/key/<ID>.LOFI.key      "Eb minor" (flats, no newline)
        md5/<ID>.LOFI.md5
        audio/<ID>.LOFI.mp3

Train/valid follow the jukemir protocol MARBLE adopted ([MB] benchmark/tasks/GS/preprocess.py):
keep confidence C == 2 and single-key tracks, spell keys with flats, split by a hash of the artist
names; test is every GiantSteps-key track. Published sizes: 923 / 236 / 604 songs.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import soundfile as sf

from musicssl.audio import AudioError, audio_info
from musicssl.evaluate.tasks.base import (
    DatasetError, Item, LayoutExample, Protocol, Splits, Task, check_options, require_file,
    left_out_note,
)

FLAT_TONICS = ("C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B")
KEYS: tuple[str, ...] = tuple(f"{tonic} {mode}" for mode in ("major", "minor") for tonic in FLAT_TONICS)
# Every tonic spelling the annotations use (MTG-key: sharps; GiantSteps-key: flats) -> pitch class.
_PITCH_CLASS = {name.lower(): index for index, name in enumerate(FLAT_TONICS)}
_PITCH_CLASS.update({"c#": 1, "d#": 3, "f#": 6, "g#": 8, "a#": 10})

SEGMENT_SECONDS = 30.0           # jukemir/MARBLE cut every preview into full 30-s clips
ARTIST_SLOTS = 116               # SHA-1(artist) mod 116 ...
TRAIN_SLOTS = 100                # ... residues 0..99 -> train, 100..115 -> valid (see artist_split)
PUBLISHED_SONGS = {"train": 923, "valid": 236, "test": 604}
TRAIN_REPO = "giantsteps-mtg-key-dataset"
TEST_REPO = "giantsteps-key-dataset"
_SOURCE = ("github.com/GiantSteps/giantsteps-mtg-key-dataset (commit fd7b8c5) and "
           "github.com/GiantSteps/giantsteps-key-dataset (commit c8cb8aa); audio: the LOFI previews "
           "listed with md5s in MARBLE's benchmark/tasks/GS/assets/giantsteps.json")


def normalize_key(text: str) -> str | None:
    """'d# minor' / 'D# minor' / 'Eb minor' -> 'Eb minor' (one of KEYS); None if `text` is not
    a single key (e.g. '-', 'C minor / F# minor', 'G minor/major')."""
    parts = text.split()
    if len(parts) != 2 or parts[1].lower() not in ("major", "minor"):
        return None
    pitch_class = _PITCH_CLASS.get(parts[0].lower())
    if pitch_class is None:
        return None
    return f"{FLAT_TONICS[pitch_class]} {parts[1].lower()}"


def split_artists(field: str) -> list[str]:
    """Beatport's ARTIST field lists collaborators comma-separated (jukemir splits on ',')."""
    return [name.strip() for name in field.strip().split(",")]


def artist_slot(name: str) -> int:
    """SHA-1 of the lower-cased UTF-8 name, as an integer, mod 116 (jukemir)."""
    return int(hashlib.sha1(name.lower().encode("utf-8")).hexdigest(), 16) % ARTIST_SLOTS


def artist_split(artist_lists: Iterable[list[str]]) -> dict[str, str]:
    """Artist -> 'train' | 'valid' over every Beatport metadata row.

    jukemir's list `["train"] * 100 + ["valid"] * 16` indexed by the slot makes residues 0..99
    train and 100..115 valid (its comment: "induces a target of 80/20" songs once collaborators
    move). Then every collaborator of a valid artist becomes valid, in two passes over all rows
    (so two hops of collaboration), exactly as jukemir does.
    """
    rows = [list(artists) for artists in artist_lists]
    split = {a: "train" if artist_slot(a) < TRAIN_SLOTS else "valid" for artists in rows for a in artists}
    for _ in range(2):
        for artists in rows:
            if any(split[a] == "valid" for a in artists):
                split.update({a: "valid" for a in artists})
    return split


def segment_offsets(duration: float, segment: float = SEGMENT_SECONDS) -> list[float]:
    """Start times of the full `segment`-second pieces of a `duration`-second track (the partial
    tail is dropped, as jukemir's clipping does)."""
    count = int(np.floor(duration / segment + 1e-9))
    return [k * segment for k in range(count)]


# ----------------------------------------------------------------------------- reading


def _find_repo(root: Path, name: str) -> Path:
    """`root/name`, or the single `root/name-<suffix>` left by a GitHub zip (`-master`, `-<sha>`)."""
    if (root / name).is_dir():
        return root / name
    found = sorted(p for p in root.glob(f"{name}-*") if p.is_dir())
    if len(found) == 1:
        return found[0]
    if not found:
        raise DatasetError(f"{root}: folder {name}/ (or {name}-master, {name}-<commit>) not found. "
                           f"It comes from {_SOURCE}")
    raise DatasetError(f"{root}: several copies of {name}: {[p.name for p in found]}; keep one")


def _read_tsv(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    # csv's default quoting, as jukemir's csv.DictReader: keeps our split identical to theirs.
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{path}: columns {missing} missing (header {reader.fieldnames}); "
                               f"expected the file from {_SOURCE}")
        return list(reader)


def _track_ids(repo: Path) -> list[str]:
    """IDs of the tracks the repo lists: one md5/<ID>.LOFI.md5 each (what MARBLE enumerates)."""
    md5_dir = repo / "md5"
    if not md5_dir.is_dir():
        raise DatasetError(f"{md5_dir}: md5 folder not found (one <ID>.LOFI.md5 per track). "
                           f"It comes from {_SOURCE}")
    ids = [p.name.split(".")[0] for p in md5_dir.glob("*.md5")]
    return sorted(ids, key=lambda i: (len(i), i))


def _train_valid_tracks(repo: Path, notes: list[str]) -> dict[str, tuple[str, str]]:
    """MTG-key track ID -> (key, 'train' | 'valid'), after the C == 2 / single-key filter."""
    annotations_path = require_file(repo / "annotations" / "annotations.txt", "MTG-key annotations", _SOURCE)
    metadata_path = require_file(repo / "annotations" / "beatport_metadata.txt", "Beatport metadata", _SOURCE)
    annotations = {r["ID"].strip(): r for r in _read_tsv(annotations_path, ("ID", "MANUAL KEY", "C"))}
    artists = {r["ID"].strip(): split_artists(r["ARTIST"] or "") for r in _read_tsv(metadata_path, ("ID", "ARTIST"))}
    split_of = artist_split(artists.values())
    tracks: dict[str, tuple[str, str]] = {}
    unannotated, unknown_artist, bad_key, mixed = [], [], [], []
    for track in _track_ids(repo):
        row = annotations.get(track)
        if row is None:
            unannotated.append(track)
            continue
        manual_key, confidence = (row["MANUAL KEY"] or "").strip(), (row["C"] or "").strip()
        if confidence != "2" or "/" in manual_key:   # Korzeniowski & Widmer's filter (jukemir)
            continue
        key = normalize_key(manual_key)
        if key is None:
            bad_key.append(f"{track} ({manual_key!r})")
            continue
        if track not in artists:
            unknown_artist.append(track)
            continue
        splits = {split_of[a] for a in artists[track]}
        if len(splits) > 1:  # a collaboration chain longer than two hops: jukemir would assert
            mixed.append(track)
        tracks[track] = (key, "valid" if "valid" in splits else "train")
    for what, names in ((f"MTG-key tracks with an md5 but no row in {annotations_path.name}", unannotated),
                        (f"MTG-key tracks with an unreadable MANUAL KEY in {annotations_path.name}", bad_key),
                        (f"MTG-key tracks missing from {metadata_path.name}", unknown_artist)):
        if names:
            notes.append(left_out_note(what, names))
    if mixed:
        notes.append(f"{len(mixed)} MTG-key tracks mix train and valid artists after two collaborator "
                     f"passes; put in valid: {', '.join(mixed[:5])}")
    return tracks


def _test_tracks(repo: Path, notes: list[str]) -> dict[str, tuple[str, str]]:
    """GiantSteps-key track ID -> (key, 'test') from annotations/key/<ID>.LOFI.key."""
    tracks, missing, bad = {}, [], []
    for track in _track_ids(repo):
        path = repo / "annotations" / "key" / f"{track}.LOFI.key"
        if not path.is_file():
            missing.append(track)
            continue
        text = path.read_text(encoding="utf-8").strip()
        key = normalize_key(text)
        if key is None:
            bad.append(f"{track} ({text!r})")
            continue
        tracks[track] = (key, "test")
    if missing:
        notes.append(left_out_note(f"GiantSteps-key tracks without annotations/key/<ID>.LOFI.key in {repo}", missing))
    if bad:
        notes.append(left_out_note(f"GiantSteps-key tracks with an unreadable key file in {repo}", bad))
    return tracks


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise DatasetError(f"task gs: option segment_seconds={text!r} is not a positive number of seconds")
    return value


def _segments(track: str, key: str, path: Path, segment: float) -> list[Item]:
    """One Item per full segment; raises AudioError for a missing or undecodable file."""
    duration = audio_info(path).duration_seconds
    return [Item(key=f"{track}-{k}", path=path, target=KEYS.index(key), group=track,
                 offset=offset, duration=segment)
            for k, offset in enumerate(segment_offsets(duration, segment))]


class GiantStepsKey(Task):
    protocol = Protocol(
        name="gs", title="GS", kind="multiclass", outputs=KEYS, metrics=("key_score",),
        window_seconds=None,       # each item is already one 30-s segment: one forward pass
        plateau_patience=5, early_stop_patience=20, max_epochs=100,   # MERT cfg (docs/evaluation.md §2.2)
        song_ensemble=True,        # song decision = ensemble over its segments, chosen on valid
    )
    default_dir = "GS"
    source = _SOURCE

    def load(self, root: Path, **options: str) -> Splits:
        """Options: segment_seconds (default 30, the protocol's; smaller only for synthetic data)."""
        check_options(self, options, ("segment_seconds",))
        segment = _positive_seconds(options.get("segment_seconds", str(SEGMENT_SECONDS)))
        root = Path(root)
        train_repo, test_repo = _find_repo(root, TRAIN_REPO), _find_repo(root, TEST_REPO)
        notes: list[str] = []
        tracks = _train_valid_tracks(train_repo, notes)
        test = _test_tracks(test_repo, notes)
        clash = sorted(set(tracks) & set(test))
        if clash:  # IDs are Beatport's, so a clash means a copied file; the test set wins
            notes.append(left_out_note("track IDs in both repositories (kept in test only)", clash))
        tracks.update(test)
        splits = Splits([], [], [], notes)
        missing, unreadable, short = [], [], []
        for track, (key, split) in tracks.items():
            path = (test_repo if split == "test" else train_repo) / "audio" / f"{track}.LOFI.mp3"
            try:
                items = _segments(track, key, path, segment)
            except AudioError as err:
                if path.exists():
                    unreadable.append(str(err))
                else:
                    missing.append(track)
                continue
            if not items:
                short.append(track)
            splits[split].extend(items)
        for what, names in (("tracks whose audio/<ID>.LOFI.mp3 is missing", missing),
                            ("unreadable audio files", unreadable),
                            (f"tracks shorter than one {segment:g}-s segment", short)):
            if names:
                notes.append(left_out_note(what, names))
        for split in ("train", "valid", "test"):
            if not splits[split]:
                reason = "; ".join(notes) or "no listed track passes the protocol's filters"
                raise DatasetError(f"{root}: no usable {split} tracks for task gs: {reason}")
        self._check_song_counts(splits)
        return splits

    def _check_song_counts(self, splits: Splits) -> None:
        """The protocol fixes song counts (923/236/604), not segment counts: a difference is a note."""
        found = {split: len({item.group for item in splits[split]}) for split in PUBLISHED_SONGS}
        if found != PUBLISHED_SONGS:
            splits.notes.append(f"gs: songs per split {found} differ from the protocol's "
                                f"{PUBLISHED_SONGS} (missing or extra files?)")

    def score(self, targets: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
        """targets: (N,) class ids; outputs: (N, 24) song-level scores -> mean mir_eval weighted
        key score of argmax(outputs) against targets (docs/evaluation.md §2.2)."""
        from musicssl.evaluate import metrics

        targets, outputs = np.asarray(targets), np.asarray(outputs)
        if outputs.ndim != 2 or outputs.shape != (len(targets), len(KEYS)):
            raise ValueError(f"gs score: expected outputs ({len(targets)}, {len(KEYS)}), got {outputs.shape}")
        references = [KEYS[int(t)] for t in targets]
        estimates = [KEYS[int(i)] for i in outputs.argmax(axis=1)]
        return {"key_score": float(metrics.key_weighted_score(references, estimates))}


# ----------------------------------------------------------------------------- writing


def _sharp_spelling(key: str) -> str:
    """'Eb minor' -> 'D# minor': the MTG-key repo spells keys with sharps."""
    tonic, mode = key.split()
    sharps = {"Db": "C#", "Eb": "D#", "Gb": "F#", "Ab": "G#", "Bb": "A#"}
    return f"{sharps.get(tonic, tonic)} {mode}"


def _artist_for(split: str, taken: set[str]) -> str:
    """A fresh artist name whose hash slot sends a solo track to `split`."""
    index = 0
    while True:
        name = f"Synthetic Artist {index}"
        slot_split = "train" if artist_slot(name) < TRAIN_SLOTS else "valid"
        if name not in taken and slot_split == split:
            taken.add(name)
            return name
        index += 1


def _write_track(repo: Path, track: str, example: LayoutExample) -> None:
    audio_path = repo / "audio" / f"{track}.LOFI.mp3"
    audio_path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(audio_path, np.asarray(example.audio, dtype=np.float32), example.sample_rate, format="MP3")
    (repo / "md5").mkdir(parents=True, exist_ok=True)
    digest = hashlib.md5(audio_path.read_bytes()).hexdigest()
    (repo / "md5" / f"{track}.LOFI.md5").write_text(digest, encoding="utf-8")


def write_layout(root: Path, examples: Sequence[LayoutExample]) -> None:
    """Write `examples` as the two GiantSteps repositories under `root`.

    label: a key in any spelling ("Eb minor", "D# minor"). extra: "artist" (else a generated
    artist whose hash slot puts the track in `example.split`), "id" (Beatport ID, else
    1000000 + index). train/valid tracks go to giantsteps-mtg-key-dataset with confidence 2;
    test tracks to giantsteps-key-dataset. Audio is written as MP3 at the example's rate (an MP3
    rate: 8, 11.025, 12, 16, 22.05, 24, 32, 44.1 or 48 kHz); a track yields one item per full
    30-s segment, so give at least 30 s (or load with segment_seconds). Writes the whole
    annotation files: call once per root.
    """
    root = Path(root)
    train_repo, test_repo = root / TRAIN_REPO, root / TEST_REPO
    annotation_rows, metadata_rows = ["ID\tMANUAL KEY\tC"], [
        "ID\tARTIST\tSONG TITLE\tMIX\tLABEL\tBP GENRE\tBP BPM\tBP KEY"]
    taken = {str(e.extra["artist"]) for e in examples if "artist" in e.extra}
    for index, example in enumerate(examples):
        key = normalize_key(str(example.label))
        if key is None:
            raise ValueError(f"example {example.name!r}: label {example.label!r} is not a key like 'Eb minor'")
        track = str(example.extra.get("id", 1000000 + index))
        if example.split == "test":
            _write_track(test_repo, track, example)
            key_path = test_repo / "annotations" / "key" / f"{track}.LOFI.key"
            key_path.parent.mkdir(parents=True, exist_ok=True)
            key_path.write_text(key, encoding="utf-8")
            continue
        _write_track(train_repo, track, example)
        artist = str(example.extra.get("artist") or _artist_for(example.split, taken))
        sharp = _sharp_spelling(key)
        annotation_rows.append(f"{track}\t{sharp}\t2")
        title = " ".join(example.name.replace('"', " ").split())   # no TAB, newline or quote
        metadata_rows.append(f"{track}\t{artist}\t{title}\tOriginal Mix\tSynthetic\tTechno\t128\t{sharp}")
        key_path = train_repo / "annotations" / "key" / f"{track}.LOFI.key"
        key_path.parent.mkdir(parents=True, exist_ok=True)
        key_path.write_text(f"{sharp.lower()}\t2\t", encoding="utf-8")   # the repo's per-track format
    (train_repo / "annotations").mkdir(parents=True, exist_ok=True)
    (test_repo / "md5").mkdir(parents=True, exist_ok=True)
    (train_repo / "md5").mkdir(parents=True, exist_ok=True)
    (train_repo / "annotations" / "annotations.txt").write_text("\n".join(annotation_rows) + "\n", encoding="utf-8")
    (train_repo / "annotations" / "beatport_metadata.txt").write_text("\n".join(metadata_rows) + "\n", encoding="utf-8")

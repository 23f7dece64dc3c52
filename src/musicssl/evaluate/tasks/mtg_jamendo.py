"""MTG-Jamendo auto-tagging: instrument, mood/theme, genre and top-50 tags (docs/evaluation.md §2.10–2.13).

Layout under the data root:

    splits/split-0/autotagging_<category>-{train,validation,test}.tsv
        (or data/splits/split-0/ where the data root is a clone of the repository, or
        mtg-jamendo-dataset/data/splits/split-0/ with the clone inside the data root)
        TAB + CRLF; header TRACK_ID ARTIST_ID ALBUM_ID PATH DURATION TAGS; the tags are the
        remaining fields ("instrument---piano", "mood/theme---happy", "genre---rock")
    audio-low/NN/<id>.low.mp3   the repository's download script, --dataset raw_30s --type audio-low
        (or audio/NN/<id>.mp3 for the full-quality download)

Each item is a whole track (full length, not a 30-s excerpt) read in 30-s windows whose logits
are averaged. The tag list is the union of the tags of the train, validation and test files in
order of first appearance (MARBLE), so it is only known after `load`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf

from musicssl.evaluate.tasks.base import (
    DatasetError, Item, LayoutExample, Protocol, Splits, Task, check_options, check_split_sizes, require_file,
    left_out_note,
)

HEADER = ("TRACK_ID", "ARTIST_ID", "ALBUM_ID", "PATH", "DURATION", "TAGS")
SPLIT_FILES = {"train": "train", "valid": "validation", "test": "test"}
# Where the split files are looked for: a hand-made folder, the data root being a clone of
# the repository (its files sit in data/splits/split-0), or the clone inside the data root.
SPLITS_DIRS = ("splits/split-0", "data/splits/split-0", "mtg-jamendo-dataset/data/splits/split-0")
CATEGORY_PREFIXES = {"instrument": "instrument---", "moodtheme": "mood/theme---", "genre": "genre---"}
_SOURCE = ("github.com/MTG/mtg-jamendo-dataset: split files in data/splits/split-0, audio with its "
           "scripts/download/download.py --dataset raw_30s --type audio-low")


def read_split_file(path: Path) -> list[tuple[str, str, list[str]]]:
    """(TRACK_ID, PATH, tags) per row of one split TSV; malformed rows raise DatasetError."""
    require_file(path, "MTG-Jamendo split file", _SOURCE)
    lines = path.read_text(encoding="utf-8").splitlines()   # splitlines drops the CR of CRLF
    if not lines or tuple(lines[0].rstrip("\t").split("\t")) != HEADER:
        raise DatasetError(f"{path}: header {lines[0] if lines else '(empty file)'!r} is not "
                           f"{chr(9).join(HEADER)!r}; expected a split file from {_SOURCE}")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 5:
            raise DatasetError(f"{path}, line {number}: {len(fields)} fields, expected at least 5 "
                               f"({chr(9).join(HEADER)})")
        rows.append((fields[0].strip(), fields[3].strip(), [t.strip() for t in fields[5:] if t.strip()]))
    return rows


def tag_list(rows_per_split: dict[str, list[tuple[str, str, list[str]]]]) -> tuple[str, ...]:
    """Union of the tags over train, validation, test, in order of first appearance."""
    tags: dict[str, None] = {}
    for split in SPLIT_FILES:
        for _, _, row_tags in rows_per_split[split]:
            tags.update(dict.fromkeys(row_tags))
    return tuple(tags)


class _AudioIndex:
    """Which audio files exist, from one directory listing per NN/ folder (55k rows, no stat each)."""

    def __init__(self, audio_dir: Path):
        self.audio_dir = audio_dir
        self._listings: dict[str, set[str]] = {}

    def find(self, relative: str) -> Path | None:
        """PATH 'NN/ID.mp3' -> audio_dir/NN/ID.low.mp3 (audio-low) or audio_dir/NN/ID.mp3."""
        folder, _, name = relative.rpartition("/")
        if folder not in self._listings:
            path = self.audio_dir / folder
            self._listings[folder] = set(os.listdir(path)) if path.is_dir() else set()
        stem = name[:-4] if name.endswith(".mp3") else name
        for candidate in (f"{stem}.low.mp3", name):
            if candidate in self._listings[folder]:
                return self.audio_dir / folder / candidate
        return None


def _resolve(root: Path, value: str | None, defaults: Sequence[str]) -> Path:
    """An option path (absolute, or relative to root if it exists there), else the first default
    that exists, else the first default (errors then name it)."""
    if value is not None:
        path = Path(value).expanduser()
        return path if path.is_absolute() or not (root / path).exists() else root / path
    candidates = [root / d for d in defaults]
    return next((p for p in candidates if p.is_dir()), candidates[0])


class _MTGTask(Task):
    category = ""                               # the file-name part: autotagging_<category>-...
    published_sizes: dict[str, int] = {}        # split-0 counts (docs/evaluation.md §2.10–2.13)
    default_dir = "MTG"
    source = _SOURCE

    def load(self, root: Path, **options: str) -> Splits:
        """Options: splits_dir (default: the first of SPLITS_DIRS under <root> that exists),
        audio_dir (default <root>/audio-low, else <root>/audio)."""
        check_options(self, options, ("splits_dir", "audio_dir"))
        root = Path(root)
        splits_dir = _resolve(root, options.get("splits_dir"), SPLITS_DIRS)
        if not splits_dir.is_dir():
            others = ", ".join(str(root / d) for d in SPLITS_DIRS[1:])
            looked = "" if "splits_dir" in options else f" (nor {others})"
            raise DatasetError(f"{splits_dir}: MTG-Jamendo split folder not found{looked}. "
                               f"It comes from {_SOURCE}")
        audio_dir = _resolve(root, options.get("audio_dir"), ("audio-low", "audio"))
        if not audio_dir.is_dir():
            looked = "" if "audio_dir" in options else f" (nor {root / 'audio'})"
            raise DatasetError(f"{audio_dir}: MTG-Jamendo audio folder not found{looked}. "
                               f"It comes from {_SOURCE}")
        rows = {split: read_split_file(splits_dir / f"autotagging_{self.category}-{name}.tsv")
                for split, name in SPLIT_FILES.items()}
        tags = tag_list(rows)
        self.protocol = type(self).protocol.replace(outputs=tags)
        splits = self._items(rows, tags, _AudioIndex(audio_dir), f"autotagging_{self.category}")
        for split, name in SPLIT_FILES.items():
            if not splits[split]:
                listed = f"autotagging_{self.category}-{name}.tsv lists none"
                reason = "; ".join(splits.notes) if rows[split] else listed
                raise DatasetError(f"{root}: no usable {split} tracks for task {self.protocol.name}: {reason}")
        if splits_dir.name == "split-0":   # other splits have other sizes
            check_split_sizes(self, splits, self.published_sizes)
        return splits

    def _items(self, rows: dict, tags: tuple[str, ...], audio: _AudioIndex, stem: str) -> Splits:
        index = {tag: i for i, tag in enumerate(tags)}
        splits = Splits([], [], [], [])
        seen: set[str] = set()
        missing, duplicates, untagged = [], [], []
        for split, name in SPLIT_FILES.items():
            for track, relative, row_tags in rows[split]:
                if track in seen:
                    duplicates.append(f"{track} ({stem}-{name}.tsv)")
                    continue
                path = audio.find(relative)
                if path is None:
                    missing.append(relative)
                    continue
                seen.add(track)
                if not row_tags:
                    untagged.append(track)
                target = np.zeros(len(tags), dtype=np.float32)   # (C,)
                target[[index[t] for t in row_tags]] = 1.0
                splits[split].append(Item(key=track, path=path, target=target))
        if missing:
            splits.notes.append(left_out_note(f"tracks of {stem}-*.tsv without audio under {audio.audio_dir}", missing))
        if duplicates:
            splits.notes.append(left_out_note("rows repeating a track already listed", duplicates))
        if untagged:
            splits.notes.append(f"{len(untagged)} tracks of {stem}-*.tsv have no tags (kept with an "
                                f"all-zero target): {', '.join(untagged[:5])}")
        return splits


def _protocol(name: str, title: str) -> Protocol:
    # outputs are filled in by load() from the split files; () until then.
    return Protocol(name=name, title=title, kind="multilabel", outputs=(), metrics=("roc_auc", "ap"),
                    window_seconds=30.0,   # full track, non-overlapping 30-s windows (docs/evaluation.md §2.10)
                    plateau_patience=3, early_stop_patience=10, max_epochs=100)


class MTGInstrument(_MTGTask):
    protocol = _protocol("mtg_instrument", "MTG-Instr")
    category = "instrument"
    published_sizes = {"train": 14395, "valid": 5466, "test": 5115}    # 40 tags


class MTGMoodTheme(_MTGTask):
    protocol = _protocol("mtg_moodtheme", "MTG-Mood")
    category = "moodtheme"
    published_sizes = {"train": 9949, "valid": 3802, "test": 4231}     # 56 tags


class MTGGenre(_MTGTask):
    protocol = _protocol("mtg_genre", "MTG-Genre")
    category = "genre"
    published_sizes = {"train": 32572, "valid": 11043, "test": 11479}  # 87 tags


class MTGTop50(_MTGTask):
    protocol = _protocol("mtg_top50", "MTG-Top50")
    category = "top50tags"
    published_sizes = {"train": 32136, "valid": 10888, "test": 11356}  # 50 tags


# ----------------------------------------------------------------------------- writing


def _category_tags(tags: Sequence[str], category: str) -> list[str]:
    """The tags of one category file: those with its prefix, plus any unprefixed tag."""
    if category == "top50tags":
        return sorted(tags)
    known = tuple(CATEGORY_PREFIXES.values())
    return sorted(t for t in tags if t.startswith(CATEGORY_PREFIXES[category]) or not t.startswith(known))


def write_layout(root: Path, examples: Sequence[LayoutExample]) -> None:
    """Write `examples` as split-0 TSVs (root/splits/split-0, TAB + CRLF) and audio-low MP3s.

    label: a tuple of tags, ideally prefixed ("genre---rock", "instrument---piano",
    "mood/theme---happy"). A row goes to the top50tags file with all its tags and to each
    category file with that category's tags (unprefixed tags go to every file); a category file
    gets the row only if it has tags there. extra: "track_id" (int, else index + 1), "artist".
    Audio is MP3 at the example's rate (an MP3 rate, e.g. 16 kHz). Call once per root.
    """
    root = Path(root)
    lines: dict[tuple[str, str], list[str]] = {}
    for index, example in enumerate(examples):
        if example.split not in SPLIT_FILES:
            raise ValueError(f"example {example.name!r}: unknown split {example.split!r}")
        track_number = int(example.extra.get("track_id", index + 1))
        relative = f"{track_number % 100:02d}/{track_number}.mp3"
        audio_path = root / "audio-low" / f"{track_number % 100:02d}" / f"{track_number}.low.mp3"
        audio_path.parent.mkdir(parents=True, exist_ok=True)
        audio = np.asarray(example.audio, dtype=np.float32)
        sf.write(audio_path, audio, example.sample_rate, format="MP3")
        artist = str(example.extra.get("artist", f"artist_{index:06d}"))
        head = [f"track_{track_number:07d}", artist, f"album_{index:06d}", relative,
                f"{len(audio) / example.sample_rate:.1f}"]
        for category in (*CATEGORY_PREFIXES, "top50tags"):
            tags = _category_tags([str(t) for t in example.label], category)
            if tags or category == "top50tags":
                lines.setdefault((category, example.split), []).append("\t".join(head + tags))
    splits_dir = root / "splits" / "split-0"
    splits_dir.mkdir(parents=True, exist_ok=True)
    for category in (*CATEGORY_PREFIXES, "top50tags"):
        for split, name in SPLIT_FILES.items():
            rows = ["\t".join(HEADER)] + lines.get((category, split), [])
            with open(splits_dir / f"autotagging_{category}-{name}.tsv", "w", encoding="utf-8", newline="") as f:
                f.write("\r\n".join(rows) + "\r\n")

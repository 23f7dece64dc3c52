"""MagnaTagATune (MTT) auto-tagging: the 50 most frequent tags, MARBLE's folder split (docs/evaluation.md §2.1).

The dataset ships as `annotations_final.csv` (TAB separated, fields possibly double-quoted, CRLF
line ends: `clip_id`, 188 binary tag columns, `mp3_path` last) next to the unzipped `mp3/`
folder, whose 16 sub-folders `0`..`f` hold ~29 s mono MP3 clips. MARBLE v1 ranks the tag columns
by positive count over all rows and keeps the top 50 as outputs; the split is the first hex digit
of the folder (0-b train, c valid, d-f test). Clips without any top-50 tag are kept (MARBLE's
filter is commented out), unlike the musicnn split.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from musicssl.evaluate.tasks.base import (
    SPLITS, DatasetError, Item, LayoutExample, Protocol, Splits, Task, check_options, check_split_sizes,
    require_file,
)

ANNOTATIONS_FILE = "annotations_final.csv"
TOP_K = 50
# MARBLE's top-50 (docs/evaluation.md §2.1; [M2] MTT LABEL2IDX): the outputs before any data is read.
PUBLISHED_TOP50 = (
    "guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast", "piano",
    "ambient", "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male", "singing",
    "vocals", "no vocals", "harpsichord", "loud", "quiet", "flute", "woman", "male vocal", "no vocal",
    "pop", "soft", "sitar", "solo", "man", "classic", "choir", "voice", "new age", "dance", "male voice",
    "female vocal", "beats", "harp", "cello", "no voice", "weird", "country", "metal", "female voice",
    "choral",
)
# Clips whose MP3s are corrupt in the official zip (jukemir excludes these clip_ids; MARBLE issue #5
# lists three corrupt files, in train folders 6, 8 and 9). Leaving them out gives the published sizes.
CORRUPT_CLIP_IDS = frozenset({35644, 55753, 57881})
FULL_ROWS = 25_863
FULL_SIZES = {"train": 18_706, "valid": 1_825, "test": 5_329}
# MARBLE preprocess: int(folder, 16) < 12 -> train, == 12 -> valid, else test (12:1:3).
SPLIT_OF_FOLDER = {**{digit: "train" for digit in "0123456789ab"}, "c": "valid",
                   **{digit: "test" for digit in "def"}}


@dataclass(frozen=True)
class AnnotationRow:
    clip_id: int
    mp3_path: str          # relative, e.g. "0/american_bach_soloists-...-117-146.mp3"
    tags: np.ndarray       # (num_tag_columns,) bool


class MTTTagging(Task):
    protocol = Protocol(
        name="mtt", title="MTT", kind="multilabel", outputs=PUBLISHED_TOP50, metrics=("roc_auc", "ap"),
        window_seconds=None,  # MERT cfg: the whole clip in one pass
        plateau_patience=3, early_stop_patience=10,
    )
    default_dir = "MTT"
    source = ("https://mirg.city.ac.uk/datasets/magnatagatune/ (annotations_final.csv, and mp3.zip.001-.003 "
              "concatenated and unzipped into mp3/)")

    def load(self, root: Path, **options: str) -> Splits:
        check_options(self, options, ())
        root = Path(root)
        annotations = require_file(root / ANNOTATIONS_FILE, "MagnaTagATune tag annotations", self.source)
        notes: list[str] = []
        tag_names, rows = read_annotations(annotations, notes)
        top = top_tag_columns(rows, len(tag_names))
        if len(tag_names) < TOP_K:
            notes.append(f"{annotations}: only {len(tag_names)} tag columns (the real file has 188); all are outputs")
        # The tag list comes from the data, so the protocol is per instance (class default: MARBLE's list).
        self.protocol = type(self).protocol.replace(outputs=tuple(tag_names[i] for i in top))
        splits = self._items(root, rows, top, notes)
        if len(rows) == FULL_ROWS:
            check_split_sizes(self, splits, FULL_SIZES)
        return splits

    def _items(self, root: Path, rows: list[AnnotationRow], top: np.ndarray, notes: list[str]) -> Splits:
        audio_dir = find_audio_dir(root)
        splits = Splits([], [], [], notes)
        missing, empty, corrupt = [], [], []
        for row in rows:
            path = audio_dir / row.mp3_path
            if row.clip_id in CORRUPT_CLIP_IDS:
                corrupt.append(row.mp3_path)
            elif not path.is_file():
                missing.append(row.mp3_path)
            elif path.stat().st_size == 0:
                empty.append(row.mp3_path)
            else:
                target = row.tags[top].astype(np.float32)  # (50,) 0/1
                splits[SPLIT_OF_FOLDER[row.mp3_path[0]]].append(Item(row.mp3_path, path, target))
        _note(notes, "clips with a known-corrupt MP3 in the official zip (clip_id 35644, 55753, 57881)", corrupt)
        _note(notes, f"clips listed in {ANNOTATIONS_FILE} have no MP3 under {audio_dir}", missing)
        _note(notes, "MP3 files are empty (0 bytes)", empty)
        untagged = sum(int(not item.target.any()) for split in SPLITS for item in splits[split])
        if untagged:
            notes.append(f"{untagged} clips have none of the top-{len(top)} tags; kept, as MARBLE does "
                         f"(docs/evaluation.md §2.1)")
        for split in SPLITS:
            if not splits[split]:
                raise DatasetError(f"{root}: the {split} split is empty (folders "
                                   f"{''.join(d for d, s in SPLIT_OF_FOLDER.items() if s == split)}); "
                                   f"is the audio unzipped under {audio_dir}?")
        return splits


def find_audio_dir(root: Path) -> Path:
    """MARBLE unzips to data/MTT/mp3/<x>/...; a bare unzip puts the folders at the root."""
    return root / "mp3" if (root / "mp3").is_dir() else root


def read_annotations(path: Path, notes: list[str]) -> tuple[list[str], list[AnnotationRow]]:
    """Tag column names and the well-formed rows of annotations_final.csv; bad rows become notes."""
    with open(path, newline="", encoding="utf-8-sig") as f:  # newline="": the csv module handles CRLF
        reader = csv.reader(f, delimiter="\t")
        header = [name.strip() for name in next(reader, [])]
        if len(header) < 3 or header[0] != "clip_id" or header[-1] != "mp3_path":
            raise DatasetError(f"{path}: expected a TAB-separated header 'clip_id<TAB>tags...<TAB>mp3_path', "
                               f"found {header[:3]}...{header[-1:]}")
        rows, bad, duplicates = [], [], []
        seen: set[object] = set()
        for line_number, fields in enumerate(reader, start=2):
            if not any(field.strip() for field in fields):
                continue
            row = _parse_row(fields, len(header))
            if row is None:
                bad.append(f"line {line_number}")
            elif row.clip_id in seen or row.mp3_path in seen:
                duplicates.append(row.mp3_path)
            else:
                seen.update((row.clip_id, row.mp3_path))
                rows.append(row)
    _note(notes, f"rows of {path.name} are malformed (wrong field count, non-0/1 tag, bad clip_id or "
                 f"mp3_path outside folders 0-f)", bad)
    _note(notes, f"rows of {path.name} repeat an earlier clip_id or mp3_path", duplicates)
    return header[1:-1], rows


def _parse_row(fields: list[str], num_columns: int) -> AnnotationRow | None:
    fields = [field.strip() for field in fields]
    flags = fields[1:-1]
    if len(fields) != num_columns or any(flag not in ("0", "1") for flag in flags):
        return None
    mp3_path = fields[-1]
    if not re.fullmatch(r"-?\d+", fields[0]) or len(mp3_path) < 3 or mp3_path[1] != "/" \
            or mp3_path[0] not in SPLIT_OF_FOLDER:
        return None
    return AnnotationRow(int(fields[0]), mp3_path, np.array([flag == "1" for flag in flags], dtype=bool))


def top_tag_columns(rows: list[AnnotationRow], num_tags: int) -> np.ndarray:
    """Indices of the TOP_K tag columns by positive count over ALL rows (MARBLE counts before any
    audio filtering), most frequent first; ties go to the earlier column, so the order is stable."""
    counts = np.sum([row.tags for row in rows], axis=0) if rows else np.zeros(num_tags, dtype=int)
    order = sorted(range(num_tags), key=lambda column: (-int(counts[column]), column))
    return np.array(order[:TOP_K], dtype=int)


def _note(notes: list[str], what: str, names: list[str], shown: int = 3) -> None:
    if names:
        more = ", ..." if len(names) > shown else ""
        notes.append(f"{len(names)} {what}; left out: {', '.join(names[:shown])}{more}")


# ----------------------------------------------------------------------------- writing


def write_layout(root: Path, examples: Sequence[LayoutExample]) -> None:
    """Write `examples` as MTT ships: MP3s under mp3/<hex folder>/ and annotations_final.csv
    (TAB, every field double-quoted, CRLF). `label` is a tuple of tag names (a str is one tag).
    Train examples cycle through folders 0-b, valid go to c, test cycle through d-f; the clip's
    mp3_path (the loader's item key) is `<folder>/<name>.mp3` with `name` made file-safe and unique."""
    root = Path(root)
    folders = {"train": "0123456789ab", "valid": "c", "test": "def"}
    tags = _tag_columns(examples)
    lines: list[list[str]] = [["clip_id", *tags, "mp3_path"]]
    used: set[str] = set()
    clip_ids = (clip_id for clip_id in range(1, 1 << 30) if clip_id not in CORRUPT_CLIP_IDS)
    for index, example in enumerate(examples):
        if example.split not in folders:
            raise ValueError(f"example {example.name!r}: unknown split {example.split!r}; expected one of {SPLITS}")
        folder = folders[example.split][index % len(folders[example.split])]
        mp3_path = _unique(f"{folder}/{_safe_name(example.name)}.mp3", used)
        path = root / "mp3" / mp3_path
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, example.audio, example.sample_rate, format="MP3")
        labels = set(_labels_of(example))
        lines.append([str(next(clip_ids)), *("1" if tag in labels else "0" for tag in tags), mp3_path])
    with open(root / ANNOTATIONS_FILE, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, delimiter="\t", quoting=csv.QUOTE_ALL, lineterminator="\r\n").writerows(lines)


def _labels_of(example: LayoutExample) -> tuple[str, ...]:
    return (example.label,) if isinstance(example.label, str) else tuple(example.label)


def _tag_columns(examples: Sequence[LayoutExample]) -> list[str]:
    """Tag names in order of first appearance (the column order, which breaks count ties)."""
    return list(dict.fromkeys(tag for example in examples for tag in _labels_of(example)))


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "clip"


def _unique(path: str, used: set[str]) -> str:
    stem, candidate, counter = path[:-4], path, 1
    while candidate in used:
        counter += 1
        candidate = f"{stem}-{counter}.mp3"
    used.add(candidate)
    return candidate

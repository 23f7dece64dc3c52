"""The label file format, owned by the data layer that reads it.

A label directory holds `labels.json` (grid, k, how the labels were made: read by
`read_label_set`) and one `{split}.km` per split: one line of space-separated cluster ids per
manifest row, at the grid's frame rate. `targets/` writes these files; `data/` reads them
row by row on demand (`LabelRows`, several on one grid stacked by `StackedLabelRows`). A codebook
directory (`codebooks.json` + one label directory per codebook) stands for its label directories.

Identity: `labels.json` records every argument that determines the labels (`IDENTITY_FIELDS`)
and the fingerprint of each manifest split it labelled (`manifest_fingerprints`); consumers
check the rows they train on with `check_made_from`, and a run records `LabelSet.fingerprint`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from musicssl import atomic, audio
from musicssl.config import fingerprint, read_json
from musicssl.data.manifest import Manifest

LABELS_JSON = "labels.json"
# Several codebooks on one grid (`musicssl labels rvq`): CODES/codebooks.json lists CODES/codebook_i,
# each an ordinary label directory; `--labels CODES` reads them all, in order.
CODEBOOKS_JSON = "codebooks.json"
CODEBOOKS_FORMAT = "musicssl-codebooks"
# the arguments that determine the clusters (labels.json keys); the manifest's rows are the rest
IDENTITY_FIELDS = ("feature", "k", "seed", "fit_fraction", "max_frames")


class LabelError(ValueError):
    """Labels that do not fit their manifest; the message names the file and row."""


@dataclass(frozen=True)
class LabelGrid:
    """Where labels sit in time: frame t covers samples [t * hop, t * hop + window)."""

    sample_rate: int
    hop: int
    window: int

    @property
    def rate_hz(self) -> float:
        return self.sample_rate / self.hop

    def frames(self, num_samples: int) -> int:
        return audio.num_frames(num_samples, hop=self.hop, receptive_field=self.window)


def label_file(label_dir: Path, split: str, shard: int = 0, num_shards: int = 1) -> Path:
    name = f"{split}.km" if num_shards == 1 else f"{split}.km.shard{shard}-of-{num_shards}"
    return label_dir / name


# ---------------------------------------------------------------------------------------------
# the label directory's description


@dataclass(frozen=True)
class LabelSet:
    directory: Path
    grid: LabelGrid
    k: int
    info: dict

    @property
    def made_from(self) -> dict[str, str]:
        """{split: fingerprint of the manifest rows it was labelled from}; empty for old sets."""
        return self.info.get("manifest_fingerprints", {})

    @property
    def fingerprint(self) -> str:
        """Identity of the labels (a run records it): the arguments, the rows the clusters were fitted
        on, and the centroids themselves. Stable while the directory is unchanged, old sets included."""
        kmeans = self.directory / "kmeans.json"
        centroids = json.loads(kmeans.read_text()).get("centroids_sha256") if kmeans.exists() else None
        return fingerprint({**{field: self.info.get(field) for field in IDENTITY_FIELDS},
                            "train_rows": self.made_from.get("train"), "centroids": centroids})


def check_made_from(label_set: LabelSet, split: str, manifest: Manifest, manifest_dir: str | Path) -> None:
    """Refuse labels made from other rows (same count and lengths pass `check_labels`, so a manifest
    re-made with another --seed would train on misaligned labels). Old sets record none: accepted."""
    recorded = label_set.made_from.get(split)
    if recorded is not None and recorded != manifest.fingerprint:
        kind = label_set.info.get("feature", {}).get("kind", "mfcc|pitch|layer")
        raise LabelError(f"{label_set.directory}: {split} labels were made from a manifest with other rows "
                         f"(fingerprint {recorded}, this manifest {manifest.fingerprint}): re-run musicssl labels "
                         f"{kind} --data {manifest_dir} --out {label_set.directory} --overwrite")


def read_label_set(label_dir: str | Path) -> LabelSet:
    label_dir = Path(label_dir)
    path = label_dir / LABELS_JSON
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found; make labels with `musicssl labels mfcc|layer`")
    info = read_json(path)
    try:
        grid = LabelGrid(**{key: info["grid"][key] for key in ("sample_rate", "hop", "window")})
        return LabelSet(label_dir, grid, int(info["k"]), info)
    except KeyError as missing:
        raise LabelError(f"{path}: missing field {missing}") from None
    except (TypeError, ValueError) as error:  # a list where the object belongs, "k": "x", ...
        raise LabelError(f"{path}: malformed ({error})") from None


def expand_label_dirs(directories: str | Path | list) -> list[Path]:
    """Label directories, a codebook directory (`musicssl labels rvq`: CODEBOOKS_JSON listing one label
    directory per codebook, in order) replaced by its label directories."""
    directories = [directories] if isinstance(directories, (str, Path)) else list(directories)
    expanded = []
    for directory in map(Path, directories):
        listing = directory / CODEBOOKS_JSON
        if not listing.exists():
            expanded.append(directory)
            continue
        info = read_json(listing)
        info = info if isinstance(info, dict) else {}
        names = info.get("codebooks")
        if info.get("format") != CODEBOOKS_FORMAT or not isinstance(names, list) or not names:
            raise LabelError(f"{listing}: not a codebook listing (format {CODEBOOKS_FORMAT!r} with a list of "
                             "'codebooks')")
        expanded += [directory / str(name) for name in names]
    return expanded


def write_label_json(label_dir: Path, info: dict) -> None:
    atomic.write_text(label_dir / LABELS_JSON, json.dumps(info, indent=2) + "\n")  # per-process temporary


# ---------------------------------------------------------------------------------------------
# a whole `.km` file, checked against its manifest


@dataclass
class LabelSummary:
    rows: int
    frames: int
    k: int
    used_clusters: int
    entropy_bits: float

    def line(self, split: str) -> str:
        return (f"{split}: {self.rows} rows, {self.frames} labels, {self.used_clusters}/{self.k} clusters "
                f"used, entropy {self.entropy_bits:.2f} bits (max {math.log2(self.k):.2f})")


def read_labels(path: Path) -> list[np.ndarray]:
    try:
        return [np.array(line.split(), dtype=np.int64) for line in path.read_text(encoding="utf-8").splitlines()]
    except (ValueError, OverflowError) as error:  # UnicodeDecodeError included: a binary file
        raise LabelError(f"{path}: not a label file of integer cluster ids ({error})") from None


def check_labels(path: Path, manifest: Manifest, grid: LabelGrid, k: int) -> LabelSummary:
    """Each row's label count must match its audio's frame count within 1 frame per 10 s of
    audio (at least 1); ids must be in [0, k); more than one cluster must be used."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: label file not found")
    rows = read_labels(path)
    if len(rows) != len(manifest):
        raise LabelError(f"{path}: {len(rows)} rows, the manifest has {len(manifest)}")
    counts = np.zeros(k, dtype=np.int64)
    for index, ids in enumerate(rows):
        samples = manifest.num_samples(index)
        expected, tolerance = grid.frames(samples), max(1, math.ceil(samples / grid.sample_rate / 10))
        if abs(len(ids) - expected) > tolerance:
            raise LabelError(f"{path}: row {index + 1} ({manifest.items[index][0]}) has {len(ids)} labels, "
                             f"its audio has {expected} frames at {grid.rate_hz:g} Hz")
        if len(ids) and (ids.min() < 0 or ids.max() >= k):
            raise LabelError(f"{path}: row {index + 1} has ids outside 0..{k - 1}")
        counts += np.bincount(ids, minlength=k)
    used = int((counts > 0).sum())
    if used < 2:
        raise LabelError(f"{path}: only {used} cluster used; the labels carry no information")
    share = counts[counts > 0] / counts.sum()
    return LabelSummary(len(rows), int(counts.sum()), k, used, float(-(share * np.log2(share)).sum()))


# ---------------------------------------------------------------------------------------------
# row by row on demand


class LabelRows:
    """Row ``i`` of a label file (``{split}.km``) as int64 ids, read from disk when asked.

    Only the byte offset of each line is kept (8 bytes per row), not the labels. Pickling drops the
    open file; each process (DataLoader worker, forked or spawned) opens its own, so no two
    processes share a file position.
    """

    def __init__(self, path: str | Path):
        self._handle, self._pid = None, None
        self.path = Path(path)
        self.offsets = _line_offsets(self.path)  # (rows + 1,) row i is bytes [offsets[i], offsets[i+1])

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> np.ndarray:
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.path}: row {index} out of range ({len(self)} rows)")
        index %= len(self)
        if self._handle is None or self._pid != os.getpid():
            self.close()  # a handle inherited through fork shares its file position with the parent
            self._handle, self._pid = self.path.open("rb"), os.getpid()
        start, stop = int(self.offsets[index]), int(self.offsets[index + 1])
        self._handle.seek(start)
        return np.array(self._handle.read(stop - start).split(), dtype=np.int64)  # (T,)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __del__(self):
        self.close()

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_handle": None, "_pid": None}


class StackedLabelRows:
    """Several label sets on one grid (codebooks, fairseq's multiple label files): row ``i`` is
    (T, S) int64, one column per set, cut to the shortest set's row (sets made on the same grid
    have equal counts; `check_labels` allows a frame of slack)."""

    def __init__(self, sets: list[LabelRows]):
        if len(sets) < 2:
            raise ValueError("StackedLabelRows needs at least two label sets; use LabelRows for one")
        rows = {len(labels) for labels in sets}
        if len(rows) > 1:
            raise ValueError(f"label sets differ in row count: {[(str(s.path), len(s)) for s in sets]}")
        self.sets = sets
        self.path = sets[0].path

    def __len__(self) -> int:
        return len(self.sets[0])

    def __getitem__(self, index: int) -> np.ndarray:
        rows = [labels[index] for labels in self.sets]
        length = min(len(row) for row in rows)
        return np.stack([row[:length] for row in rows], axis=1)  # (T, S)


def _line_offsets(path: Path, block_bytes: int = 1 << 24) -> np.ndarray:
    """Start of every line and the end of the last one; a missing final newline is tolerated."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: label file not found")
    starts, position = [np.zeros(1, dtype=np.int64)], 0
    with path.open("rb") as handle:
        while block := handle.read(block_bytes):
            newlines = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == ord("\n"))
            starts.append(newlines.astype(np.int64) + position + 1)
            position += len(block)
    offsets = np.concatenate(starts)
    return offsets if offsets[-1] == position else np.append(offsets, position)

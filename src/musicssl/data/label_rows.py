"""Label files read row by row on demand (a .km file per split; several on one grid stacked)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np




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

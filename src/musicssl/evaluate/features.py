"""Frozen features of a task's items, extracted once and cached on disk.

Each item is cut into the protocol's windows (crop to the first `crop_seconds`, then
non-overlapping `window_seconds` windows; a last window shorter than `min_window_seconds` is
dropped unless it is the only one; docs/evaluation.md §1.1). Every window is seen alone by the model
(windows of equal length share a forward pass, without padding: `batching.py`) and is
mean-pooled over time per layer: one cache row `(K, D)` per window. Frame-level tasks (beats)
keep one row per frame instead, on a grid centred at t / frame_rate (the window is padded by
half a receptive field at both ends, so frame t's receptive field is centred on time t / fps).

Cache layout, `<cache>/<source>-<fingerprint>/<task>-<settings hash>/`:
- `rows.f16`: float16 rows `(K, D)`, appended item after item (half the disk of float32). They
  stay float16 when read (`load`): memory-mapped when the asked rows are one run of the file,
  else one float16 copy, never a float32 table (MTG-Jamendo's ~400k windows x 13 x 768 would be
  16 GB); the probe converts each batch;
- `index.jsonl`: one line per finished item, `{"key", "start", "count"}` or `{"key", "error"}`.
A line is written only after its rows, so a killed run resumes where it stopped (rows past the
last indexed item are truncated). Sharded extraction (`shard=(i, n)`: array jobs, torchrun)
writes `rows-<i>-of-<n>.f16` + `index-<i>-of-<n>.jsonl` per process in the same folder; every
cache reads all index files, so the single-process layout and shards mix freely. Items are
looked up by key, so adding items to a dataset extracts only the new ones. The fingerprint follows the weights, not the folder name.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from musicssl import atomic, audio
from musicssl.evaluate.batching import DecodeAhead, batched_rows
from musicssl.evaluate.sources import Source
from musicssl.evaluate.tasks.base import Item, Protocol

CACHE_VERSION = 1


def window_bounds(num_samples: int, sample_rate: int, protocol: Protocol) -> list[tuple[int, int]]:
    """Sample ranges [start, stop) of the windows of one item (after the protocol's crop)."""
    total = num_samples
    if protocol.crop_seconds is not None:
        total = min(total, int(round(protocol.crop_seconds * sample_rate)))
    if protocol.window_seconds is None or protocol.kind == "beats":
        return [(0, total)]
    size = int(round(protocol.window_seconds * sample_rate))
    minimum = int(round(protocol.min_window_seconds * sample_rate))
    bounds = [(start, min(start + size, total)) for start in range(0, total, size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < minimum:
        bounds.pop()  # MARBLE keeps a last window only if it is at least 1 s long
    return bounds


def settings_of(source: Source, protocol: Protocol) -> dict:
    """Everything that changes cached rows besides the weights and the item list."""
    return {"version": CACHE_VERSION, "kind": protocol.kind, "frame_level": protocol.kind == "beats",
            "window_seconds": protocol.window_seconds, "min_window_seconds": protocol.min_window_seconds,
            "crop_seconds": protocol.crop_seconds, "sample_rate": source.sample_rate,
            "num_layers": source.num_layers}


@dataclass
class CachedFeatures:
    """Rows of the requested items, in item order. `spans[i]` = (start, count) into `rows`."""

    rows: np.ndarray            # (R, K, D) float16, or (R, D) when one layer was asked for; may be a
                                # read-only memmap of the cache file (convert batches, not the table)
    spans: list[tuple[int, int]]
    items: list[Item]           # the items that have features (failed ones are left out)

    def item_index(self) -> np.ndarray:
        """(R,) the position in `items` of every row."""
        return np.concatenate([np.full(count, i) for i, (_, count) in enumerate(self.spans)]).astype(np.int64)


class FeatureCache:
    # Audio per forward pass (windows of equal length are batched up to it), and per write of the
    # cache. 30 s: a 30-s window goes alone, shorter ones together. Two 30-s windows in one pass
    # cost 4 % (AVX2) to 8 % (Zen 5: 3.53 against 3.27 s a window, hubert_base, 2 threads) more
    # than one at a time; the GEMMs of a larger batch fall out of cache (docs/performance.md).
    batch_seconds: float = 30.0
    flush_seconds: float = 600.0

    def __init__(self, cache_root: str | Path, source: Source, task_name: str, protocol: Protocol,
                 shard: tuple[int, int] | None = None):
        """`shard` = (i, n): this process extracts the i-th of n shares of the items into its
        own files, `rows-<i>-of-<n>.f16` and `index-<i>-of-<n>.jsonl`; every cache reads all."""
        self.source = source
        self.protocol = protocol
        self.frame_level = protocol.kind == "beats"
        settings = settings_of(source, protocol)
        digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
        safe_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", source.name).strip("_") or "model"
        folder = protocol.feature_set or task_name
        self.directory = Path(cache_root) / f"{safe_name}-{source.fingerprint}" / f"{folder}-{digest}"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.shard = check_shard(shard)
        suffix = "" if self.shard == (0, 1) else f"-{self.shard[0]}-of-{self.shard[1]}"
        self.rows_path = self.directory / f"rows{suffix}.f16"
        self.index_path = self.directory / f"index{suffix}.jsonl"
        meta = {"source": source.describe(), "features_of": folder, "settings": settings}
        # shards write it at once: each through its own temporary, whole or not at all
        atomic.write_text(self.directory / "meta.json", json.dumps(meta, indent=1, default=str))
        self.row_shape = (source.num_layers, source.frame_dim if self.frame_level else source.pooled_dim)
        own = self._read_index(self.index_path, self.rows_path)
        self._truncate_rows(sum(entry.get("count", 0) for entry in own.values()))
        self.num_rows = sum(entry.get("count", 0) for entry in own.values())
        self.refresh()

    # ------------------------------------------------------------------ index

    def refresh(self) -> None:
        """Read every shard's index again (what other processes have finished since)."""
        self.index = {}
        for path in sorted(self.directory.glob("index*.jsonl")):
            match = re.fullmatch(r"index(-\d+-of-\d+)?\.jsonl", path.name)
            if match:
                self.index.update(self._read_index(path, self.directory / f"rows{match.group(1) or ''}.f16"))
        self.index.update(self._read_index(self.index_path, self.rows_path))  # ours win a duplicate key

    @staticmethod
    def _read_index(index_path: Path, rows_path: Path) -> dict[str, dict]:
        index: dict[str, dict] = {}
        if not index_path.exists():
            return index
        for line in index_path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                break  # a line cut by a kill (or still being written by another shard)
            index[entry["key"]] = {**entry, "rows": rows_path}
        return index

    def _truncate_rows(self, num_rows: int) -> None:
        """Rows past our last indexed item were cut by a kill: drop them (our own file only)."""
        size = num_rows * int(np.prod(self.row_shape)) * 2
        if self.rows_path.exists() and self.rows_path.stat().st_size > size:
            with open(self.rows_path, "r+b") as f:
                f.truncate(size)

    def shard_items(self, items: Sequence[Item]) -> list[Item]:
        """This shard's share: whole files (one decode each), the j-th file of the sorted file
        list to shard j mod n, whatever is already cached, so every process agrees."""
        index, count = self.shard
        if count == 1:
            return list(items)
        paths = sorted({str(item.path) for item in items})
        mine = {path for j, path in enumerate(paths) if j % count == index}
        return [item for item in items if str(item.path) in mine]

    def missing(self, items: Sequence[Item]) -> list[Item]:
        return [item for item in items if item.key not in self.index]

    def errors(self) -> dict[str, str]:
        return {key: entry["error"] for key, entry in self.index.items() if "error" in entry}

    # ------------------------------------------------------------------ extraction

    def extract(self, items: Sequence[Item], progress: bool = True) -> int:
        """Extract every item not cached yet; returns how many were extracted. Unreadable
        items are recorded with their error and skipped (reported, never fatal). Files are
        decoded ahead in a thread; windows of equal length share forward passes (at most
        `batch_seconds` of audio each); rows are written every `flush_seconds` of audio."""
        todo = sorted(self.missing(self.shard_items(items)), key=lambda item: (str(item.path), item.offset))
        if not todo:
            return 0
        bar = tqdm(total=len(todo), desc=f"features {self.directory.parent.name[:24]}/{self.directory.name}",
                   unit="item", disable=not progress, file=sys.stderr)
        paths = list(dict.fromkeys(item.path for item in todo))
        pending: list[tuple[Item, list[np.ndarray] | audio.AudioError]] = []
        pending_samples, flush_samples = 0, self.flush_seconds * self.source.sample_rate
        with open(self.rows_path, "ab") as rows, open(self.index_path, "a") as index, \
                DecodeAhead(paths, self.source.sample_rate) as decoded:
            files = iter(decoded)
            loaded_path, wav, error = None, None, None
            for item in todo:
                if item.path != loaded_path:
                    loaded_path, wav, error = next(files)
                try:
                    if error is not None:
                        raise error
                    windows = self._item_windows(item, wav)
                    pending.append((item, windows))
                    pending_samples += sum(window.size for window in windows)
                except (audio.AudioError, OSError) as err:
                    pending.append((item, err))
                if pending_samples >= flush_samples:
                    self._write(pending, rows, index, bar)
                    pending, pending_samples = [], 0
            self._write(pending, rows, index, bar)
        bar.close()
        return len(todo)

    def _item_windows(self, item: Item, wav: np.ndarray) -> list[np.ndarray]:
        """The windows of one item (views of the decoded file; frame-level: the padded item)."""
        rate = self.source.sample_rate
        start = int(round(item.offset * rate))
        stop = wav.size if item.duration is None else start + int(round(item.duration * rate))
        segment = wav[start:stop]
        if segment.size == 0:
            raise audio.AudioError(item.path, f"item {item.key} starts at {item.offset:.2f} s, past the end "
                                              f"({wav.size / rate:.2f} s)")
        if self.frame_level:
            pad = self.source.center_pad
            return [np.pad(segment, (pad, pad))]
        return [segment[a:b] for a, b in window_bounds(segment.size, rate, self.protocol)]

    def _write(self, pending: list, rows, index, bar) -> None:
        """Run the pending items' windows in batches, then append their rows and index lines."""
        windows = [window for _, job in pending if isinstance(job, list) for window in job]
        results = iter(batched_rows(self.source, windows, pooled=not self.frame_level,
                                    batch_samples=int(self.batch_seconds * self.source.sample_rate)))
        for item, job in pending:
            outputs = [next(results) for _ in job] if isinstance(job, list) else [job]
            failed = [output for output in outputs if isinstance(output, Exception)]
            if failed:
                entry = {"key": item.key, "error": str(failed[0])}
                tqdm.write(f"skipped {item.key}: {failed[0]}", file=sys.stderr)
            else:
                # frame-level: (K, T, D) -> (T, K, D), one row per frame; else one (K, D) row per window
                features = outputs[0].transpose(1, 0, 2) if self.frame_level else np.stack(outputs)
                rows.write(features.astype(np.float16).tobytes())
                rows.flush()
                entry = {"key": item.key, "start": self.num_rows, "count": len(features)}
                self.num_rows += len(features)
            index.write(json.dumps(entry) + "\n")
            index.flush()
            self.index[item.key] = {**entry, "rows": self.rows_path}
        bar.update(len(pending))

    # ------------------------------------------------------------------ reading

    def load(self, items: Sequence[Item], layer: int | None = None) -> CachedFeatures:
        """Rows of `items` (extract them first); one layer (R, D) or all (R, K, D), float16: a
        read-only view of the cache file when they are one run of it, else one float16 copy."""
        missing = self.missing(items)
        if missing:
            raise RuntimeError(f"{len(missing)} items have no cached features (first: {missing[0].key}); "
                               "call extract() first")
        kept = [item for item in items if "error" not in self.index[item.key]]
        entries = [self.index[item.key] for item in kept]
        counts = np.array([entry["count"] for entry in entries], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64) if entries else counts
        spans = [(int(start), int(count)) for start, count in zip(starts, counts)]
        return CachedFeatures(rows=self._gather(entries, layer), spans=spans, items=kept)

    def _gather(self, entries: list[dict], layer: int | None) -> np.ndarray:
        row_shape = (self.row_shape[1],) if layer is not None else self.row_shape
        runs: list[list] = []  # [rows file, start, stop): runs of consecutive rows in one file
        for entry in entries:
            if runs and runs[-1][0] == entry["rows"] and runs[-1][2] == entry["start"]:
                runs[-1][2] += entry["count"]
            else:
                runs.append([entry["rows"], entry["start"], entry["start"] + entry["count"]])
        if not runs:
            return np.zeros((0, *row_shape), np.float16)
        tables = {path: self._table(path) for path in {run[0] for run in runs}}
        pick = (lambda block: block[:, layer]) if layer is not None else (lambda block: block)
        if len(runs) == 1:
            path, start, stop = runs[0]
            return pick(tables[path][start:stop])  # a view: no row is read until used
        rows = np.empty((sum(stop - start for _, start, stop in runs), *row_shape), np.float16)
        position = 0
        for path, start, stop in runs:  # filled in place: no list of pieces, no concatenation copy
            rows[position:position + stop - start] = pick(tables[path][start:stop])
            position += stop - start
        return rows

    def _table(self, path: Path) -> np.ndarray:
        """A rows file as a read-only (N, K, D) float16 memmap (whole rows only: another shard
        may be appending to it)."""
        row_bytes = int(np.prod(self.row_shape)) * 2
        count = path.stat().st_size // row_bytes
        return np.memmap(path, dtype=np.float16, mode="r", shape=(count, *self.row_shape))


def check_shard(shard: tuple[int, int] | None) -> tuple[int, int]:
    if shard is None:
        return (0, 1)
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {index} of {count}: expected 0 <= shard < num_shards")
    return (int(index), int(count))

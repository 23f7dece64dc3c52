"""How the feature cache feeds a source: files decoded ahead in a background thread, and
windows of equal length sent through the model together.

Decoding (libsndfile, soxr) releases the GIL, so a thread overlaps it with the forward passes;
a bounded queue keeps at most `depth` decoded files in memory. Windows are grouped by exact
length, so a batch needs no padding: each window's hidden states are those of its own forward
pass (see `Encoder.extract_batch`).
"""

from __future__ import annotations

import queue
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from musicssl import audio

_DONE = object()


class DecodeAhead:
    """Iterate `(path, wav or None, error or None)` for `paths` in order, decoded in a background
    thread up to `depth` files ahead. Unreadable files come with their AudioError/OSError; any
    other exception is raised in the consumer. Use as a context manager (stops the thread)."""

    def __init__(self, paths: Sequence[Path], sample_rate: int, depth: int = 4):
        self._paths, self._rate = list(paths), sample_rate
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="decode-ahead", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for path in self._paths:
            try:
                result = (path, audio.load_audio(path, self._rate), None)
            except (audio.AudioError, OSError) as err:
                result = (path, None, err)
            except BaseException as err:  # noqa: BLE001 - handed to the consumer, raised there
                result = (path, None, err)
            if not self._put(result):
                return
        self._put(_DONE)

    def _put(self, result) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(result, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[tuple[Path, np.ndarray | None, Exception | None]]:
        while True:
            result = self._queue.get()
            if result is _DONE:
                return
            path, wav, error = result
            if error is not None and not isinstance(error, (audio.AudioError, OSError)):
                raise error
            yield path, wav, error

    def __enter__(self) -> DecodeAhead:
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def batched_rows(source, windows: Sequence[np.ndarray], pooled: bool,
                 batch_samples: int) -> list[np.ndarray | audio.AudioError]:
    """For every window, `source.pool(source.frames(w))` (K, D') when `pooled`, else
    `source.frames(w)` (K, T, D), or the AudioError it raised. Windows of equal length go
    through the source together, at most `batch_samples` samples per call."""
    results: list = [None] * len(windows)
    by_length: dict[int, list[int]] = defaultdict(list)
    for index, window in enumerate(windows):
        by_length[window.size].append(index)
    for length, indices in by_length.items():
        per_call = max(1, batch_samples // max(length, 1))
        for first in range(0, len(indices), per_call):
            chunk = indices[first:first + per_call]
            for index, rows in zip(chunk, _run(source, [windows[i] for i in chunk], pooled)):
                results[index] = rows
    return results


def _run(source, windows: list[np.ndarray], pooled: bool) -> list:
    try:
        batch = np.stack(windows)  # (B, N)
        return list(source.pooled_batch(batch) if pooled else source.frames_batch(batch))
    except audio.AudioError as err:
        if len(windows) == 1:
            return [err]
        # one bad window (e.g. non-finite samples) must not fail its neighbours: one at a time
        return [rows for window in windows for rows in _run(source, [window], pooled)]

"""The frames k-means is fitted on: a seeded, streaming, memory-bounded sample (`FrameSampler`).

Each frame is kept with probability `sample_fraction` (fairseq fits on a fraction of the frames,
e.g. 10 %), and a reservoir caps what is kept at `max_frames` rows, so memory is at most
`max_frames x D` float32 whatever the corpus size. Fitting is in kmeans.py.
"""

from __future__ import annotations

import numpy as np
import torch


def check_sampling(sample_fraction: float | None, max_frames: int | None) -> None:
    if sample_fraction is not None and not 0.0 < sample_fraction <= 1.0:
        raise ValueError(f"sample_fraction must be in (0, 1] or None, got {sample_fraction}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")


class FrameSampler:
    """Seeded, streaming, memory-bounded sample of frames for fitting k-means.

    Call `add(features)` once per utterance, (T, D), in a fixed order. Each frame is selected
    with probability `sample_fraction` (None = all frames); the selected frames go through a
    reservoir of `max_frames` rows (algorithm R, None = unbounded), so every selected frame is
    equally likely to end up in `frames()` and memory never exceeds `max_frames * D` float32.
    The result depends only on the seed and the sequence of `add` calls.

    Counters: `seen` (frames passed to add), `selected` (frames that passed the fraction
    filter), `kept` (frames held now = min(selected, max_frames)).
    """

    def __init__(self, sample_fraction: float | None = None, max_frames: int | None = None, seed: int = 0):
        check_sampling(sample_fraction, max_frames)
        self.sample_fraction = sample_fraction
        self.max_frames = max_frames
        self.seed = seed
        self._rng = np.random.Generator(np.random.PCG64(seed))
        self._buffer: np.ndarray | None = None  # (capacity, D) float32, rows [:kept] valid
        self.dim: int | None = None
        self.seen = 0
        self.selected = 0

    @property
    def kept(self) -> int:
        return self.selected if self.max_frames is None else min(self.selected, self.max_frames)

    @property
    def nbytes(self) -> int:
        """Bytes of the frame buffer (max_frames * D * 4 once allocated, if capped)."""
        return 0 if self._buffer is None else self._buffer.nbytes

    def add(self, features: np.ndarray | torch.Tensor) -> int:
        """Offer one utterance's frames (T, D); returns how many of them were selected."""
        if isinstance(features, torch.Tensor):
            features = features.detach().cpu().numpy()
        features = np.asarray(features)
        if features.ndim != 2:
            raise ValueError(f"expected features of shape (T, D), got {features.shape}")
        if self.dim is None:
            self.dim = int(features.shape[1])
        elif features.shape[1] != self.dim:
            raise ValueError(f"features have dim {features.shape[1]}, earlier ones had {self.dim}")
        num = features.shape[0]
        self.seen += num
        if num == 0:
            return 0
        if self.sample_fraction is None or self.sample_fraction >= 1.0:
            chosen = features
        else:
            chosen = features[self._rng.random(num) < self.sample_fraction]
        count = chosen.shape[0]
        if count:
            self._store(chosen)
        return count

    def _store(self, chosen: np.ndarray) -> None:
        count = chosen.shape[0]
        start = self.selected  # stream position of chosen[0] among selected frames
        self.selected += count
        cap = self.max_frames
        direct = count if cap is None else max(0, min(count, cap - start))
        if direct:
            self._ensure_capacity(start + direct)
            self._buffer[start:start + direct] = chosen[:direct]
        if direct == count:
            return
        # Algorithm R: the selected frame at stream position i >= cap replaces slot j ~ U{0..i}
        # if j < cap. Vectorised over the utterance; when several frames hit the same slot the
        # last one wins, exactly as in the sequential algorithm.
        positions = np.arange(start + direct, start + count, dtype=np.int64)
        slots = self._rng.integers(0, positions + 1)
        hit = np.flatnonzero(slots < cap)
        if hit.size == 0:
            return
        hit_slots = slots[hit]
        _, last_reversed = np.unique(hit_slots[::-1], return_index=True)
        last = hit[hit.size - 1 - last_reversed]
        self._buffer[slots[last]] = chosen[direct + last]

    def _ensure_capacity(self, rows: int) -> None:
        capacity = 0 if self._buffer is None else self._buffer.shape[0]
        if rows <= capacity:
            return
        if self.max_frames is not None:
            # One allocation of the whole cap, never grown or copied: np.empty only reserves
            # address space, pages become resident as rows are written.
            new_capacity = self.max_frames
        else:
            new_capacity = max(rows, 2 * capacity, 1024)
        buffer = np.empty((new_capacity, self.dim), dtype=np.float32)
        if self._buffer is not None:
            buffer[:capacity] = self._buffer
        self._buffer = buffer

    def frames(self, copy: bool = True) -> np.ndarray:
        """The kept frames, (kept, D) float32; `copy=False` returns a view of the buffer
        (valid until the next `add`)."""
        if self._buffer is None:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        view = self._buffer[: self.kept]
        return view.copy() if copy else view

    def __repr__(self) -> str:
        return (f"FrameSampler(sample_fraction={self.sample_fraction}, max_frames={self.max_frames}, "
                f"seed={self.seed}, seen={self.seen}, selected={self.selected}, kept={self.kept})")

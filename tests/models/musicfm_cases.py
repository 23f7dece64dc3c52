"""The seeded quantiser cases shared by `make parity-bestrq` (benchmarks/bestrq_parity.py, which
runs MusicFM's code on them) and tests/models/test_bestrq_reference.py (which checks our code
against the answers it pinned)."""

from __future__ import annotations

import numpy as np

# (name, input_dim, codebook_size, seed, frames): MusicFM's own shape (4 x 128 mels, 4,096 codes,
# seed 142), ours (2 x 128 mels at 50 Hz), and codebook 1 of a two-codebook run (seed 143).
QUANTIZER_CASES = [("musicfm_512", 512, 4096, 142, 1500), ("ours_256", 256, 4096, 142, 1000),
                   ("ours_256_codebook1", 256, 4096, 143, 1000)]
CODE_DIM = 16  # MusicFM codebook_dim


def case_frames(name: str, input_dim: int, frames: int) -> np.ndarray:
    """(1, frames, input_dim) float32 from numpy's PCG64 (the same numbers on every machine): unit
    normals, like globally normalised mel, plus a slow drift so neighbouring frames are alike."""
    rng = np.random.default_rng([sum(map(ord, name)), input_dim])
    steps = rng.standard_normal((frames, input_dim))
    drift = np.cumsum(steps, axis=0) / np.sqrt(np.arange(1, frames + 1))[:, None]
    return (0.5 * rng.standard_normal((frames, input_dim)) + drift)[None].astype(np.float32)

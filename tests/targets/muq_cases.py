"""Seeded cases on which our Mel-RVQ is compared with MuQ's own `ResidualVectorQuantize`
(benchmarks/muq_rvq_parity.py live, tests/targets/test_mel_rvq.py against the pinned answers).

Plain numpy and no musicssl import: benchmarks/muq_rvq_side.py reads it in MuQ's venv too.
The inputs come from numpy's generator (the same numbers on every CPU), shaped like normalised
stacked mel frames: a few smooth spectral shapes switched on and off over time, plus noise.
"""

from __future__ import annotations

import numpy as np

INPUT_DIM = 512  # 128 mels x 4 frames

# name, num_codebooks, codebook_size, code_dim, init_seed, batch, tokens, input seed
CASES = [
    ("base", 8, 1024, 16, 0, 2, 120, 1),  # MuQ's shapes
    ("tiny", 4, 256, 16, 7, 3, 50, 2),  # our tiny preset's
]
REPLACEMENT_SEED = 5  # the generator drawn before the forward that replaces every stale code
ADAM_STEPS = 3  # steps of the fitting loop compared (every code is due at the second)
STALE_TOLERANCE = 100  # ResidualVectorQuantize's default


def case_input(batch: int, tokens: int, seed: int) -> np.ndarray:
    """(B, 512, T) float32 in MuQ's layout."""
    rng = np.random.default_rng(seed)
    bands = np.arange(INPUT_DIM) % 128
    shapes = np.stack([np.exp(-0.5 * ((bands - centre) / width) ** 2)
                       for centre, width in zip(rng.uniform(0, 128, 12), rng.uniform(3, 20, 12))])  # (12, 512)
    activity = rng.random((batch, 12, tokens)) < 0.3  # (B, 12, T)
    x = np.einsum("kd,bkt->bdt", 3.0 * shapes, activity * rng.uniform(0.5, 1.5, (batch, 12, tokens)))
    x += 0.3 * rng.standard_normal((batch, INPUT_DIM, tokens))
    return ((x - x.mean()) / x.std()).astype(np.float32)

"""Our random-projection quantiser pinned to MusicFM's: tokens and matrix entries MusicFM's own
RandomProjectionQuantizer gave on the seeded cases of tests/models/musicfm_cases.py, stored in
fixtures/musicfm_reference.safetensors by `make parity-bestrq` (benchmarks/bestrq_parity.py
--write-fixtures), compared here without MusicFM.

Against MusicFM itself (same CPU, same float32 operations on the same shapes) the tokens are equal
bit for bit, and `make parity-bestrq` asks for that. Here, on any CPU, two roundings may differ:
torch's normal_ has an AVX2 kernel and a plain one (other sin/log approximations: a few ulps per
matrix entry), and the projection / distance sums may be added in another order. So a frame's
token must equal MusicFM's wherever the best code leads the second by more than both sides'
rounding can move a similarity (derived per frame below); near-ties may go either way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from musicssl.models.bestrq import RandomProjectionQuantizer
from tests.models.musicfm_cases import CODE_DIM, QUANTIZER_CASES, case_frames
from tests.numerics import U32, gamma, matmul_bound

FIXTURE = Path(__file__).parent / "fixtures" / "musicfm_reference.safetensors"
MATRIX_ULPS = 8  # Box-Muller through two libm-grade approximations (log, cos) and a sqrt, then a scale


def similarity_tolerance(frames: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """(N,) bound on how far float32 rounding on either side can move a frame's cosine with a code.
    The projected vector p = x P is off by the sum bound (plus the matrix entries' ulps), which
    turns its direction by at most 2 |error| / |p|; the normalised codes and the cdist
    (|a|^2 + |b|^2 - 2 a.b over 16 dims, unit vectors) add gamma(18) x 4 and a few ulps."""
    x, p = frames.astype(np.float64), projection.astype(np.float64)
    error = matmul_bound(frames, projection) + MATRIX_ULPS * U32 * (np.abs(x) @ np.abs(p))  # (N, E)
    norm = np.linalg.norm(x @ p, axis=1)
    return 2 * np.linalg.norm(error, axis=1) / norm + 4 * gamma(CODE_DIM + 2) + 8 * U32


@pytest.mark.parametrize("name, input_dim, codebook_size, seed, count", QUANTIZER_CASES)
def test_tokens_equal_musicfms_wherever_rounding_cannot_decide(name, input_dim, codebook_size, seed, count):
    reference = load_file(str(FIXTURE))
    quantizer = RandomProjectionQuantizer(input_dim, CODE_DIM, codebook_size, 1, seed)
    projection, codebook = quantizer.projection[0].numpy(), quantizer.codebook[0].numpy()
    for matrix, key in ((projection, "projection"), (codebook, "codebook")):
        ours = matrix.reshape(-1)[reference[f"{name}/{key}_positions"]]
        theirs = reference[f"{name}/{key}_values"]
        assert np.abs(ours - theirs).max() <= MATRIX_ULPS * U32 * np.abs(theirs).max(), key
    frames = case_frames(name, input_dim, count)
    tokens = quantizer(torch.from_numpy(frames))[0, :, 0].numpy()
    theirs = reference[f"{name}/tokens"].astype(np.int64)[0]
    flat = frames[0]
    direction = flat.astype(np.float64) @ projection.astype(np.float64)
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    codes = codebook.astype(np.float64) / np.linalg.norm(codebook.astype(np.float64), axis=1, keepdims=True)
    similarity = direction @ codes.T  # (N, K)
    top2 = np.sort(similarity, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * similarity_tolerance(flat, projection)
    assert clear.mean() > 0.9, f"only {clear.mean():.1%} of frames have a clear nearest code"
    assert np.array_equal(tokens[clear], theirs[clear])
    # a near-tie still picks one of the codes within reach of the best
    reachable = similarity[np.arange(len(tokens)), tokens] >= top2[:, 1] - 4 * similarity_tolerance(flat, projection)
    assert reachable.all()
    assert len(np.unique(theirs)) > 200  # the frames reach many codes, not a few

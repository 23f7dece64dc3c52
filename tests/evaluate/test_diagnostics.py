"""Collapse statistics against their definitions, on rows whose answers are known exactly."""

from __future__ import annotations

import numpy as np
import pytest

from musicssl.evaluate.diagnostics import collapse_stats, effective_rank, mean_pairwise_cosine


def test_cosine_equals_the_mean_over_explicit_pairs():
    x = np.random.default_rng(0).standard_normal((40, 6)) + 0.5
    x[7] = 0.0  # a zero row: orthogonal to every other
    norms = np.linalg.norm(x, axis=1)
    pairs = [x[i] @ x[j] / (norms[i] * norms[j]) if norms[i] and norms[j] else 0.0
             for i in range(len(x)) for j in range(len(x)) if i != j]
    # float64 sums of ~1,600 terms of magnitude <= 1 in two orders: <= 1600 * 2^-53 * 2 apart
    assert mean_pairwise_cosine(x) == pytest.approx(np.mean(pairs), abs=1e-12)


def test_effective_rank_of_equal_and_single_directions():
    assert effective_rank(np.array([3.0, 3.0, 3.0, 0.0])) == pytest.approx(3.0, rel=1e-15)
    assert effective_rank(np.array([5.0])) == 1.0
    assert effective_rank(np.zeros(4)) == 0.0


def test_collapsed_and_spread_layers_are_told_apart():
    rng = np.random.default_rng(1)
    n, dim = 200, 16
    direction = rng.standard_normal(dim)
    collapsed = np.outer(1 + 0.1 * rng.standard_normal(n), direction)  # every row on one line
    # rank 4 with equal singular values: orthonormal columns times the same scale
    basis = np.linalg.qr(rng.standard_normal((n, 4)))[0]
    basis -= basis.mean(0)
    basis = np.linalg.qr(basis)[0]  # still orthonormal, now centred too (up to rounding)
    spread = np.zeros((n, dim))
    spread[:, :4] = 10 * basis
    rows = np.stack([collapsed, spread], 1).astype(np.float32)  # (N, 2 layers, D)
    stats = collapse_stats(rows)
    assert stats["cosine"][0] == pytest.approx(1.0, abs=1e-6)
    assert stats["effective_rank"][0] < 1.01 and stats["top_share"][0] > 0.999
    # float32 storage of the rows moves the singular values by ~1e-7 relative
    assert stats["effective_rank"][1] == pytest.approx(4.0, rel=1e-5)
    assert stats["top_share"][1] == pytest.approx(0.25, rel=1e-5)


def test_rows_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match=r"\(N >= 2, K, D\)"):
        collapse_stats(np.zeros((1, 3, 4)))

"""Is a representation collapsing? Statistics of frozen feature rows, layer by layer, for
reading a learning curve beside its probe scores (benchmarks/learning_curve.py).

A self-supervised model can satisfy its pretext task while its features lose what tells
inputs apart: every row drifting to one direction (data2vec's failure mode, which its
instance-normalised targets guard against), or into a few dimensions. Three numbers per layer,
each with its reading:
- `cosine`: the mean cosine similarity of two different rows, uncentred. 1 = every row points
  the same way (collapse, or one large shared offset: an anisotropy the standardised probe
  removes, so read it with `effective_rank`); ~0 for isotropic rows.
- `effective_rank`: exp of the entropy of the normalised singular values of the centred rows
  (Roy & Vetterli, 2007): 1 when one direction holds all the variation, r for r equal
  directions, at most min(N, D).
- `top_share`: the share of the variance (squared singular values) on the first principal
  direction.
"""

from __future__ import annotations

import numpy as np


def collapse_stats(rows: np.ndarray) -> dict[str, list[float]]:
    """rows: (N, K, D) feature rows of every layer (float16 or float32, as cached), N >= 2.
    Returns {"cosine", "effective_rank", "top_share"}: one value per layer, computed in float64."""
    rows = np.asarray(rows)
    if rows.ndim != 3 or len(rows) < 2:
        raise ValueError(f"collapse_stats: rows must be (N >= 2, K, D), found shape {rows.shape}")
    stats: dict[str, list[float]] = {"cosine": [], "effective_rank": [], "top_share": []}
    for layer in range(rows.shape[1]):
        x = rows[:, layer].astype(np.float64)  # (N, D)
        stats["cosine"].append(mean_pairwise_cosine(x))
        singular = np.linalg.svd(x - x.mean(0), compute_uv=False)
        stats["effective_rank"].append(effective_rank(singular))
        variance = singular ** 2
        stats["top_share"].append(float(variance[0] / variance.sum()) if variance.sum() > 0 else 1.0)
    return stats


def mean_pairwise_cosine(x: np.ndarray) -> float:
    """Mean of cos(x_i, x_j) over the N (N - 1) ordered pairs i != j, from the sum of the unit
    rows: |sum u|^2 = N + sum_{i != j} cos. A zero row counts as orthogonal to every other."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    units = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    n = len(units)
    total = units.sum(0)
    return float((total @ total - (norms > 0).sum()) / (n * (n - 1)))


def effective_rank(singular: np.ndarray) -> float:
    """exp(H(p)), p = s / sum(s) over the non-zero singular values; 0 for an all-zero matrix."""
    singular = np.asarray(singular, dtype=np.float64)
    singular = singular[singular > 0]
    if singular.size == 0:
        return 0.0
    p = singular / singular.sum()
    return float(np.exp(-(p * np.log(p)).sum()))

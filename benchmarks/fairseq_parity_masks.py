"""Span masks vs fairseq's compute_mask_indices: the settings, our draws and the statistical
tests (used by benchmarks/fairseq_parity.py, which gets fairseq's draws from fairseq_side.py)."""

from __future__ import annotations

import numpy as np
import torch

from musicssl.models.masking import MaskConfig, mask_spans

MASK_FRAMES = 249  # a 5 s crop
MASK_LENGTHS = (249, 217, 163, 96)  # valid frames of the 4 items: 3 padded


def mask_settings() -> dict[str, MaskConfig]:
    """The paper's Music2Vec grid (span 5/10/15 x prob 0.5/0.65/0.8, data2vec's min_masks 1),
    HuBERT's (0.8, 10, 2), and one without equalisation (the raw spans)."""
    settings = {f"span{L}_p{p}": MaskConfig(mask_prob=p, mask_length=L, min_masks=1)
                for L in (5, 10, 15) for p in (0.5, 0.65, 0.8)}
    settings["hubert_span10_p0.8_min2"] = MaskConfig(mask_prob=0.8, mask_length=10, min_masks=2)
    settings["span10_p0.65_unequalised"] = MaskConfig(mask_prob=0.65, mask_length=10, min_masks=1,
                                                      require_same_masks=False)
    return settings


def mask_padding() -> torch.Tensor:
    return torch.arange(MASK_FRAMES)[None] >= torch.tensor(MASK_LENGTHS)[:, None]  # (B, T)


def our_masks(config: MaskConfig, draws: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    padding = mask_padding()
    return np.stack([mask_spans(len(MASK_LENGTHS), MASK_FRAMES, config, padding, rng).numpy() for _ in range(draws)])


def run_lengths(masks: np.ndarray) -> np.ndarray:
    """(draws, B, T) bool -> (draws, T + 1) histogram of the lengths of maximal masked runs."""
    padded = np.concatenate([np.zeros(masks.shape[:2] + (1,), bool), masks, np.zeros(masks.shape[:2] + (1,), bool)], -1)
    edges = np.diff(padded.astype(np.int8), axis=-1)  # +1 at a run's start, -1 after its end
    hist = np.zeros((masks.shape[0], masks.shape[-1] + 1), np.int64)
    for d in range(masks.shape[0]):
        starts, ends = np.nonzero(edges[d] == 1), np.nonzero(edges[d] == -1)
        np.add.at(hist[d], ends[1] - starts[1], 1)  # row-major order pairs each start with its end
    return hist


def merge_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two histograms over the same bins -> a (bins, merged) 0/1 matrix that merges neighbours
    (from the first bin on) until each merged bin expects >= 5 counts on either side (the usual
    condition for the chi-square approximation); empty bins fold into their neighbours."""
    share = min(a.sum(), b.sum()) / (a.sum() + b.sum())
    groups, current, count = np.zeros(len(a), np.int64), 0, 0.0
    for j, total in enumerate(a + b):
        groups[j], count = current, count + total
        if count * share >= 5:
            current, count = current + 1, 0.0
    if count > 0 and current > 0:
        groups[groups == current] = current - 1  # a short last group joins the one before
    merge = np.zeros((len(a), groups.max() + 1))
    merge[np.arange(len(a)), groups] = 1
    return merge


def chi2_statistic(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson's chi-square statistic of the 2 x m table [a; b] (over the last axis)."""
    n_a, n_b = a.sum(-1, keepdims=True), b.sum(-1, keepdims=True)
    column = a + b
    expect_a, expect_b = n_a * column / (n_a + n_b), n_b * column / (n_a + n_b)
    return ((a - expect_a) ** 2 / expect_a + (b - expect_b) ** 2 / expect_b).sum(-1)


def histogram(values: np.ndarray, bins: np.ndarray) -> np.ndarray:
    return (values[:, None] == bins[None]).sum(0).astype(float)


def permutation_p(per_draw_a: np.ndarray, per_draw_b: np.ndarray, permutations: int = 2000) -> float:
    """p of the chi-square statistic of the pooled histograms, its null distribution from
    permutations of whole draws (rows) between the two sides."""
    both = np.concatenate([per_draw_a, per_draw_b]).astype(float)
    merge = merge_matrix(per_draw_a.sum(0), per_draw_b.sum(0))
    observed = chi2_statistic(per_draw_a.sum(0) @ merge, per_draw_b.sum(0) @ merge)
    rng, exceed = np.random.default_rng(0), 0
    total = both.sum(0)
    for start in range(0, permutations, 250):
        sides = np.stack([rng.permutation(len(both)) < len(per_draw_a) for _ in range(min(250, permutations - start))])
        a = sides.astype(float) @ both  # (perms, bins)
        exceed += int((chi2_statistic(a @ merge, (total[None] - a) @ merge) >= observed - 1e-9).sum())
    return (exceed + 1) / (permutations + 1)


def compare_masks(table, ours: dict, fs: dict, tests: int) -> None:
    """Per setting two tests, each on statistics that are independent across draws:
    - mask fraction: the masked share of the batch's valid frames, one value per draw;
      chi-square test of homogeneity on its histogram (bins merged until each expects >= 5),
      p from the chi-square distribution; the two-sample KS p (scipy ks_2samp) beside it.
    - span lengths: the lengths of maximal masked runs, pooled per side; runs of one draw are not
      independent, so the chi-square statistic of the pooled histograms is referred to its
      distribution under 2000 permutations of whole draws between the sides (a permutation test).
    A test fails when p < 0.01 / (number of tests) (Bonferroni over the whole run); our draws and
    fairseq's come from different seeds. Means are "ours vs fairseq"."""
    from scipy.stats import chi2, ks_2samp

    alpha = 0.01 / tests
    valid = sum(MASK_LENGTHS)
    for name in ours:
        a, b = ours[name], fs[name]
        fa, fb = a.sum((1, 2)), b.sum((1, 2))  # masked frames per draw
        values = np.union1d(fa, fb)
        ha, hb = histogram(fa, values), histogram(fb, values)
        merge = merge_matrix(ha, hb)
        ha, hb = ha @ merge, hb @ merge
        p_fraction = float(chi2.sf(chi2_statistic(ha, hb), len(ha) - 1))
        ks = ks_2samp(fa / valid, fb / valid).pvalue
        table.add_test(f"masks {name}", f"fraction {fa.mean() / valid:.4f} vs {fb.mean() / valid:.4f}",
                       p_fraction, alpha, f"chi-square, {len(ha) - 1} dof; KS p={ks:.3f}")
        ra, rb = run_lengths(a), run_lengths(b)
        used = (ra.sum(0) + rb.sum(0)) > 0
        p_span = permutation_p(ra[:, used], rb[:, used])
        mean_a = (ra * np.arange(ra.shape[1])).sum() / ra.sum()
        mean_b = (rb * np.arange(rb.shape[1])).sum() / rb.sum()
        table.add_test(f"masks {name}", f"span length {mean_a:.3f} vs {mean_b:.3f}", p_span, alpha,
                       "chi-square statistic, 2000 permutations of draws")


def unpack_masks(packed: torch.Tensor) -> np.ndarray:
    return np.unpackbits(packed.numpy(), axis=-1, count=MASK_FRAMES).astype(bool)

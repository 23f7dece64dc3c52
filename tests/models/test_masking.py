"""Span masking (docs/method.md §2): statistics, invariants and a line-by-line fairseq re-statement."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from musicssl.models.masking import MaskConfig, mask_spans

HUBERT = MaskConfig(mask_prob=0.8, mask_length=10, min_masks=2)
DATA2VEC = MaskConfig(mask_prob=0.65, mask_length=10, min_masks=1)
FRAMES = 249  # 5 s at 16 kHz (docs/method.md §1.1)


def _suffix_padding(lengths: list[int], frames: int) -> torch.Tensor:
    return torch.arange(frames)[None, :] >= torch.tensor(lengths)[:, None]


def _runs(row: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of every run of True in a 1-D bool array."""
    edges = np.diff(np.concatenate([[0], row.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return list(zip(starts.tolist(), (ends - starts).tolist()))


def _reference(
    shape: tuple[int, int],
    padding_mask: torch.Tensor | None,
    mask_prob: float,
    mask_length: int,
    min_masks: int,
    require_same_masks: bool,
    rng: np.random.Generator,
) -> np.ndarray:
    """fairseq compute_mask_indices (static, overlap allowed, num_mask_ver=2), restated slowly.

    Follows fairseq/data/data_utils.py statement by statement, with one shared generator.
    """
    bsz, all_sz = shape
    mask = np.full((bsz, all_sz), False)
    mask_idcs = []
    for i in range(bsz):
        sz = all_sz - int(padding_mask[i].long().sum().item()) if padding_mask is not None else all_sz
        num_mask = int(mask_prob * sz / float(mask_length) + rng.random())
        num_mask = max(min_masks, num_mask)
        lengths = np.full(num_mask, mask_length)
        min_len = min(lengths)
        if sz - min_len <= num_mask:
            min_len = sz - num_mask - 1
        mask_idc = rng.choice(sz - min_len, num_mask, replace=False)
        mask_idc = np.asarray(
            [mask_idc[j] + offset for j in range(len(mask_idc)) for offset in range(lengths[j])]
        )
        mask_idcs.append(np.unique(mask_idc[mask_idc < sz]))
    target_len = min(len(m) for m in mask_idcs) if require_same_masks else None
    for i, mask_idc in enumerate(mask_idcs):
        if target_len is not None and len(mask_idc) > target_len:
            mask_idc = rng.choice(mask_idc, target_len, replace=False)
        mask[i, mask_idc] = True
    return mask


def _mean_fraction(config: MaskConfig, trials: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    masks = [mask_spans(16, FRAMES, config, generator=rng) for _ in range(trials)]
    return torch.stack(masks).float().mean().item()


@pytest.mark.parametrize(
    ("config", "before", "after"),
    [
        # Monte-Carlo numbers of the spec (HuBERT) and of 4000 batches of ours (data2vec).
        (HUBERT, 0.567, 0.487),
        (DATA2VEC, 0.493, 0.419),  # spec: "about 42 % after equalisation"
    ],
)
def test_masked_fraction_matches_monte_carlo(config: MaskConfig, before: float, after: float) -> None:
    # 150 batches of 16: standard error ~0.001 before and ~0.002 after equalisation.
    raw = replace(config, require_same_masks=False)
    assert _mean_fraction(raw, 150, seed=1) == pytest.approx(before, abs=0.02)
    assert _mean_fraction(config, 150, seed=2) == pytest.approx(after, abs=0.02)


@pytest.mark.parametrize("config", [HUBERT, DATA2VEC])
def test_equal_masked_counts_across_batch(config: MaskConfig) -> None:
    rng = np.random.default_rng(0)
    lengths = [249, 248, 200, 120, 31, 15, 11, 10, 5]
    padding = _suffix_padding(lengths, FRAMES)
    for _ in range(20):
        for pad in (None, padding):
            counts = mask_spans(len(lengths), FRAMES, config, pad, generator=rng).sum(dim=1)
            assert torch.all(counts == counts[0]), counts


def test_padding_never_masked() -> None:
    rng = np.random.default_rng(1)
    gen = torch.Generator().manual_seed(1)
    for _ in range(30):
        lengths = rng.integers(1, FRAMES + 1, size=12).tolist()
        suffix = _suffix_padding(lengths, FRAMES)
        scattered = torch.rand(12, FRAMES, generator=gen) < 0.3  # not a suffix: still never masked
        for pad in (suffix, scattered):
            for config in (HUBERT, replace(HUBERT, require_same_masks=False)):
                mask = mask_spans(12, FRAMES, config, pad, generator=rng)
                assert not torch.any(mask & pad)


def test_spans_before_equalisation_are_runs_of_at_least_mask_length() -> None:
    # Non-degenerate sizes: starts < sz - L, so no span is clipped and every merged run is a
    # union of whole L-spans; the last valid frame is never masked (fairseq's open bound).
    rng = np.random.default_rng(2)
    config = replace(HUBERT, require_same_masks=False)
    lengths = [249, 240, 180, 100, 40, 25]
    padding = _suffix_padding(lengths, FRAMES)
    for _ in range(30):
        mask = mask_spans(len(lengths), FRAMES, config, padding, generator=rng).numpy()
        for row, size in zip(mask, lengths):
            runs = _runs(row)
            assert runs and all(length >= config.mask_length for _, length in runs)
            assert not row[size - 1]


def test_reproducible_with_seed() -> None:
    def draw(generator: object) -> torch.Tensor:
        return mask_spans(8, FRAMES, HUBERT, generator=generator)

    assert torch.equal(draw(np.random.default_rng(7)), draw(np.random.default_rng(7)))
    assert not torch.equal(draw(np.random.default_rng(7)), draw(np.random.default_rng(8)))
    assert torch.equal(draw(7), draw(7))
    assert torch.equal(draw(torch.Generator().manual_seed(3)), draw(torch.Generator().manual_seed(3)))
    assert not torch.equal(draw(torch.Generator().manual_seed(3)), draw(torch.Generator().manual_seed(4)))
    torch.manual_seed(5)
    first = draw(None)
    torch.manual_seed(5)
    assert torch.equal(first, draw(None))
    # A generator passed in is advanced: consecutive batches differ.
    rng = np.random.default_rng(7)
    assert not torch.equal(draw(rng), draw(rng))


@pytest.mark.parametrize("min_masks", [1, 2, 3])
def test_short_sequences_respect_min_masks(min_masks: int) -> None:
    rng = np.random.default_rng(3)
    length = 10
    config = MaskConfig(mask_prob=0.8, mask_length=length, min_masks=min_masks, require_same_masks=False)
    for size in range(1, 3 * length + 1):
        for _ in range(20):
            count = int(mask_spans(1, size, config, generator=rng).sum())
            # >= min_masks distinct starts: at least L + m - 1 frames, or all but the first
            # frame when the degenerate start range [0, n + 1) and clipping at sz apply.
            assert min(length + min_masks - 1, size - 1) <= count <= size


def test_degenerate_cases_match_fairseq_counts() -> None:
    rng = np.random.default_rng(4)
    config = replace(HUBERT, require_same_masks=False)
    seen: dict[int, set[int]] = {size: set() for size in (1, 5, 10, 12, 13)}
    for size in seen:
        for _ in range(200):
            seen[size].add(int(mask_spans(1, size, config, generator=rng).sum()))
    # sz <= L: n = 2 starts from [0, 3), spans clipped at sz: masked = [min start, sz).
    assert seen[1] == {0, 1} and seen[5] == {4, 5} and seen[10] == {9, 10}
    # sz = 12 (degenerate, 12 - 10 <= 2) and 13 (not): starts {0,1} / {0,2} / {1,2} of [0, 3).
    assert seen[12] == {11, 12} and seen[13] == {11, 12}
    # Fully padded sample (sz = 0) masks nothing, and so does everyone after equalisation.
    pad = _suffix_padding([0, 249], FRAMES)
    assert not mask_spans(2, FRAMES, HUBERT, pad, generator=rng).any()


def test_zero_spans_gives_empty_mask() -> None:
    # n == 0 is reachable only with min_masks=0; fairseq raises there, we return no mask.
    config = MaskConfig(mask_prob=0.05, mask_length=10, min_masks=0, require_same_masks=False)
    counts = {int(mask_spans(1, 40, config, generator=np.random.default_rng(s)).sum()) for s in range(50)}
    assert 0 in counts and counts <= {0, 10}


@pytest.mark.parametrize("require_same_masks", [True, False])
def test_matches_line_by_line_fairseq_restatement(require_same_masks: bool) -> None:
    cases = np.random.default_rng(5)
    for trial in range(25):
        batch = int(cases.integers(1, 12))
        frames = int(cases.integers(1, 300))
        prob, length, min_masks = [(0.8, 10, 2), (0.65, 10, 1), (0.5, 4, 3), (0.9, 1, 1)][trial % 4]
        lengths = cases.integers(0 if trial % 5 == 0 else 1, frames + 1, size=batch).tolist()
        pad = _suffix_padding(lengths, frames) if trial % 3 else None
        config = MaskConfig(prob, length, min_masks, require_same_masks)
        ours = mask_spans(batch, frames, config, pad, generator=np.random.default_rng(trial))
        ref = _reference(
            (batch, frames), pad, prob, length, min_masks, require_same_masks, np.random.default_rng(trial)
        )
        assert np.array_equal(ours.numpy(), ref), (trial, batch, frames, lengths)


def test_output_type_and_shape() -> None:
    mask = mask_spans(3, 50, HUBERT, generator=0, device="cpu")
    assert mask.dtype == torch.bool and mask.shape == (3, 50) and mask.device.type == "cpu"
    assert mask_spans(0, 50, HUBERT, generator=0).shape == (0, 50)
    with pytest.raises(ValueError):
        mask_spans(2, 50, HUBERT, torch.zeros(3, 50, dtype=torch.bool), generator=0)

"""Span masking of the frame sequence for masked prediction (docs/method.md §2).

A reimplementation of fairseq's ``compute_mask_indices`` (``fairseq/data/data_utils.py``) for
the one configuration both base recipes use: ``mask_selection="static"``, ``no_overlap=False``,
``mask_other=0``, ``mask_dropout=0``, ``add_masks=False``, no channel masking, and the
per-sample span count of current fairseq (``num_mask_ver=2``).

Per sample, with ``sz`` the number of non-padded frames and ``L = mask_length``
(docs/method.md §2):

1. span count ``n = max(min_masks, int(mask_prob * sz / L + u))``, ``u ~ U[0, 1)`` drawn per
   sample (probabilistic rounding);
2. ``n`` distinct start frames drawn uniformly without replacement from ``[0, sz - L)``.
   Note the open bound: a start is at most ``sz - L - 1``, so in the normal case the last
   valid frame is never masked (a fairseq quirk we keep).
   Degenerate case ``sz - L <= n`` (short sequences): fairseq replaces the bound by
   ``sz - (sz - n - 1) = n + 1``, i.e. starts are ``n`` distinct values of ``[0, n + 1)``; the
   spans keep their full length ``L`` and step 3 clips them. ``n + 1`` may exceed ``sz``
   (``sz <= L``), then some starts fall on padding and mask nothing;
3. each start ``s`` masks ``s .. s + L - 1``; indices ``>= sz`` are dropped and overlapping
   spans merge (the union);
4. equalisation (``require_same_masks``): every sample keeps a uniformly random subset of its
   masked frames, of the size of the smallest masked count in the batch. The kept frames no
   longer form whole spans (HuBERT and data2vec both train on such masks);
5. padding is never masked.

Deliberate differences from fairseq, both on inputs fairseq rejects:

- ``n == 0`` (only reachable with ``min_masks=0``) gives an empty mask; fairseq raises
  ("this should never happen" for static lengths).
- A short sequence may end up entirely masked (e.g. ``sz <= L``); current fairseq raises
  ("the entire sequence is masked"), the fairseq HuBERT was trained with did not check. We do
  not raise: equalisation usually trims it, and a masking helper should not crash training.

Padding: fairseq assumes the padding is a suffix (as its collater builds it) and masks local
indices ``0 .. sz - 1``. We place the local indices on the non-padded frames in order, which is
the same thing for suffix padding and still never masks padding otherwise.

Randomness: numpy's ``np.random.Generator`` (fairseq's current choice, ``default_rng``), in the
order fairseq draws: for each sample, ``random()`` then ``choice(bound, n, replace=False)``;
then, for each sample with more than the batch minimum, ``choice(masked, m, replace=False)``
on its sorted masked local indices. One generator serves the whole batch (fairseq makes one per
sample, seeded from fresh entropy unless given ``seed/epoch/indices``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

_SEED_HIGH = 2**62  # seeds drawn from a torch generator: any non-negative int64 is fine


@dataclass(frozen=True)
class MaskConfig:
    """Span masking hyper-parameters. Defaults are HuBERT base (docs/method.md §2)."""

    mask_prob: float = 0.8  # HuBERT base 0.80 (data2vec 0.65)
    mask_length: int = 10  # span length L, both recipes
    min_masks: int = 2  # HuBERT 2, data2vec 1
    # True: equalise the masked count across the batch (fairseq default). False gives the raw
    # span-expanded masks (used by tests and statistics).
    require_same_masks: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_prob:
            raise ValueError(f"mask_prob must be >= 0, got {self.mask_prob}")
        if self.mask_length < 1:
            raise ValueError(f"mask_length must be >= 1, got {self.mask_length}")
        if self.min_masks < 0:
            raise ValueError(f"min_masks must be >= 0, got {self.min_masks}")


def mask_spans(
    batch: int,
    frames: int,
    config: MaskConfig,
    padding_mask: Tensor | None = None,
    generator: np.random.Generator | torch.Generator | int | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Sample a (batch, frames) bool mask, True = masked frame (docs/method.md §2).

    ``padding_mask``: (batch, frames) bool, True = padding. ``generator``: a numpy Generator
    (used and advanced in place), a torch Generator or an int (seeds a numpy Generator), or
    None (seeded from torch's global RNG, so ``torch.manual_seed`` makes it reproducible).
    The mask is built on the CPU and moved to ``device``.
    """
    rng = numpy_generator(generator)
    valid = _valid_positions(batch, frames, padding_mask)
    local = [span_indices(len(v), config, rng) for v in valid]  # docs/method.md §2 steps 1-3
    if config.require_same_masks:
        local = equalise(local, rng)  # docs/method.md §2 step 4
    mask = np.zeros((batch, frames), dtype=bool)
    for i, (positions, idx) in enumerate(zip(valid, local)):
        mask[i, positions[idx]] = True  # local -> absolute frames: padding never masked (§2 step 5)
    return torch.from_numpy(mask).to(device)


def numpy_generator(generator: np.random.Generator | torch.Generator | int | None) -> np.random.Generator:
    """The numpy Generator to draw from; a torch generator (or the global one) supplies its seed."""
    if isinstance(generator, np.random.Generator):
        return generator
    if isinstance(generator, (int, np.integer)):
        return np.random.default_rng(int(generator))
    if generator is None or isinstance(generator, torch.Generator):
        # One draw from the torch generator: advancing it means the next call differs.
        seed = torch.randint(0, _SEED_HIGH, (1,), generator=generator).item()
        return np.random.default_rng(seed)
    raise TypeError(f"unsupported generator type {type(generator).__name__}")


def span_indices(size: int, config: MaskConfig, rng: np.random.Generator) -> np.ndarray:
    """Sorted masked indices in ``[0, size)`` of one sample, before equalisation (§2 steps 1-3)."""
    length = config.mask_length
    # Step 1: probabilistic rounding of the expected span count; int() == floor (positive).
    num = max(config.min_masks, int(config.mask_prob * size / float(length) + rng.random()))
    if num == 0:
        return np.empty(0, dtype=np.int64)  # fairseq raises here; see module docstring
    # Step 2: fairseq's degenerate case shrinks the start range to [0, num + 1).
    bound = size - length if size - length > num else num + 1
    starts = rng.choice(bound, num, replace=False)
    # Step 3: expand, clip at the sequence end, merge overlaps.
    idx = (starts[:, None] + np.arange(length)).ravel()
    return np.unique(idx[idx < size])


def equalise(indices: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Subsample every sample's masked indices to the batch minimum count (§2 step 4).

    Sample order and the argument of ``choice`` (the sorted index array) follow fairseq, so the
    draws are the same for the same generator state.
    """
    target = min((len(idx) for idx in indices), default=0)
    return [rng.choice(idx, target, replace=False) if len(idx) > target else idx for idx in indices]


def _valid_positions(batch: int, frames: int, padding_mask: Tensor | None) -> list[np.ndarray]:
    """Per sample, the absolute indices of its non-padded frames, in order."""
    if padding_mask is None:
        return [np.arange(frames)] * batch
    if tuple(padding_mask.shape) != (batch, frames):
        raise ValueError(f"padding_mask shape {tuple(padding_mask.shape)} != {(batch, frames)}")
    keep = ~padding_mask.detach().to("cpu", torch.bool).numpy()
    return [np.flatnonzero(row) for row in keep]

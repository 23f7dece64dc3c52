"""MERT's model against direct computations: 8 cross-entropies summed (no 1/8), the CQT of the clean
audio regressed at masked frames with weight 1 x sample_size, and the in-batch mixture's segments
(what they add, and their counts, lengths, offsets and probability in distribution)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from musicssl.models.mert import MERT, MERTConfig, MixtureConfig, Segment, apply_mixture, draw_mixture
from tests.conftest import micro_config
from tests.numerics import U32, gamma

CODEBOOKS = (5,) * 8


@pytest.fixture(autouse=True)
def no_grad():
    with torch.no_grad():  # values only
        yield


@pytest.fixture(scope="module")
def model() -> MERT:
    torch.manual_seed(0)
    backbone = micro_config("hubert", sample_rate=24_000, dropout=0.0, attention_dropout=0.0, input_dropout=0.0,
                            layerdrop=0.0)
    return MERT(MERTConfig(backbone=backbone, num_classes=5, extra_codebooks=CODEBOOKS[1:], label_rate_hz=75.0,
                           final_dim=8))


def batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    wav = 0.3 * torch.randn(3, 24_000, generator=generator)  # 1 s clips: 74 frames
    labels = torch.randint(0, 5, (3, 75, 8), generator=generator)
    mask = torch.rand(3, 74, generator=generator) < 0.5
    return wav, labels, mask


def test_codebook_losses_are_summed_and_the_cqt_mse_enters_times_sample_size(model):
    wav, labels, mask = batch()
    result = model(wav, None, labels, mask=mask)
    assert model.final_proj.out_features == 8 * 8  # final_dim per codebook
    ce = [result[f"masked_ce_sum{suffix}"] for suffix in ["", *(f"_{i}" for i in range(1, 8))]]
    size = result["sample_size"]
    assert float(size) == float(mask[:, :74].sum())  # every frame has a label of every codebook
    # the CQT term, directly: a linear map of the last hidden state at masked frames vs the clean CQT
    hidden = model.backbone(wav, None, mask=mask).last_hidden_state  # (B, T, D)
    targets = model.cqt(wav).transpose(1, 2)[:, :74]  # (B, T, 336)
    mse = F.mse_loss(model.cqt_head(hidden[mask]), targets[mask])
    assert float(result["cqt_se_sum"] / result["cqt_frames"]) == pytest.approx(float(mse.detach()), rel=gamma(336 * 64))
    terms = [*ce, 10 * result["feature_penalty"] * size, mse.detach() * size]
    expected = sum(float(t.detach()) for t in terms)
    # four float32 roundings of the same terms, summed in another order
    bound = gamma(len(terms) + 4) * sum(abs(float(t.detach())) for t in terms)
    assert abs(float(result["loss"].detach()) - expected) <= bound  # the eight sums themselves, no 1/8


def test_cqt_targets_come_from_the_clean_audio_and_the_encoder_hears_the_mixture(model):
    wav, labels, mask = batch(1)
    plan = [[Segment(source=100, length=12_000, position=5_000)], [], [Segment(30_000, 12_000, 0)]]
    result = model(wav, None, labels, mask=mask, mixture=plan)
    mixed = apply_mixture(wav, plan, 1.0)
    _, hidden, masked = model.masked_prediction(mixed, None, labels, mask)
    predicted = model.cqt_head(hidden[masked])
    clean = F.mse_loss(predicted, model.cqt(wav).transpose(1, 2)[:, :74][masked])
    noisy = F.mse_loss(predicted, model.cqt(mixed).transpose(1, 2)[:, :74][masked])
    ours = float(result["cqt_se_sum"] / result["cqt_frames"])
    assert ours == pytest.approx(float(clean), rel=gamma(336 * 64)) and abs(float(noisy) - ours) > 1e-3 * ours
    # the prediction losses too are those of the mixed input
    direct = model(mixed, None, labels, mask=mask)["masked_ce_sum"]
    assert float(result["masked_ce_sum"]) == pytest.approx(float(direct), rel=8 * U32 * 64)


def test_mixture_adds_segments_of_the_other_clean_clips_at_gain_one():
    wav = torch.arange(12, dtype=torch.float32).reshape(3, 4)  # rows [0..3], [4..7], [8..11]
    plan = [[Segment(source=3, length=2, position=1), Segment(source=0, length=2, position=2)], [],
            [Segment(source=5, length=3, position=0)]]
    mixed = apply_mixture(wav, plan, 1.0)
    # clip 0's pool is rows 1, 2: [4..11]; segments [7, 8] at 1 and [4, 5] at 2 (overlapping ones add)
    assert mixed[0].tolist() == [0, 1 + 7, 2 + 8 + 4, 3 + 5]
    assert torch.equal(mixed[1], wav[1])
    assert mixed[2].tolist() == [8 + 5, 9 + 6, 10 + 7, 11]  # pool [0..7]: a segment spanning two clips
    assert apply_mixture(wav, plan, 0.5)[2].tolist() == [8 + 2.5, 9 + 3, 10 + 3.5, 11]


def chi_square_p(observed: np.ndarray, expected: np.ndarray) -> float:
    """Pearson's goodness-of-fit p-value, df = bins - 1 (regularised upper gamma)."""
    statistic = float(((observed - expected) ** 2 / expected).sum())
    return float(torch.special.gammaincc(torch.tensor((len(observed) - 1) / 2, dtype=torch.float64),
                                         torch.tensor(statistic / 2, dtype=torch.float64)))


def binomial_p(successes: int, trials: int, p: float) -> float:
    """Exact two-sided binomial test (the outcomes no more likely than the one observed)."""
    log = [math.lgamma(trials + 1) - math.lgamma(k + 1) - math.lgamma(trials - k + 1) + k * math.log(p)
           + (trials - k) * math.log1p(-p) for k in range(trials + 1)]
    return float(sum(math.exp(v) for v in log if v <= log[successes] + 1e-7))


def test_mixture_draws_follow_merts_distributions():
    """Statistical test, fixed seed: a correct sampler passes each of the six p > 1e-3 checks with
    probability 0.999 (all of them with >= 0.994); a wrong range, count or probability fails by
    orders of magnitude at 12,000 clips."""
    config, clip, size = MixtureConfig(), 120_000, 8  # MERT-95M: 5 s clips, segments 0.5-1.0 s
    rng = np.random.default_rng(1234)
    plans = [plan for _ in range(1500) for plan in draw_mixture(size, clip, config, rng)]
    mixed = [plan for plan in plans if plan]
    assert binomial_p(len(mixed), len(plans), 0.5) > 1e-3
    counts = np.bincount([len(plan) for plan in mixed], minlength=4)
    assert counts[0] == 0 and counts[4:].sum() == 0 and chi_square_p(counts[1:], np.full(3, len(mixed) / 3)) > 1e-3
    segments = [segment for plan in mixed for segment in plan]
    lengths = np.array([s.length for s in segments])
    assert lengths.min() >= 12_000 and lengths.max() <= 24_000
    bins = (lengths - 12_000) * 12 // 12_001  # 12 bins of the 12,001 lengths
    share = np.bincount((np.arange(12_001) * 12) // 12_001, minlength=12) / 12_001
    assert chi_square_p(np.bincount(bins, minlength=12), share * len(lengths)) > 1e-3
    positions = np.array([s.position / (clip - s.length + 1) for s in segments])
    assert 0 <= positions.min() and positions.max() < 1
    assert chi_square_p(np.bincount((positions * 10).astype(int), minlength=10), np.full(10, len(segments) / 10)) > 1e-3
    sources = np.array([s.source for s in segments]) / ((size - 1) * clip - 24_000 + 1)
    assert sources.max() < 1 and chi_square_p(np.bincount((sources * 10).astype(int), minlength=10),
                                              np.full(10, len(segments) / 10)) > 1e-3
    # the intended meaning of the probability (MERT's `rand > p` would mix 80 % here)
    rare = [plan for _ in range(500) for plan in draw_mixture(8, clip, MixtureConfig(probability=0.2), rng)]
    assert binomial_p(sum(bool(plan) for plan in rare), len(rare), 0.2) > 1e-3


def test_no_mixture_without_another_clip_or_room_for_a_segment():
    rng = np.random.default_rng(0)
    assert draw_mixture(1, 120_000, MixtureConfig(probability=1.0), rng) == [[]]  # MERT: its except, clean
    assert draw_mixture(4, 20_000, MixtureConfig(probability=1.0), rng) == [[]] * 4  # shorter than a segment
    assert all(draw_mixture(4, 30_000, MixtureConfig(probability=1.0), rng))


def test_mixtures_are_keyed_by_seed_update_and_first_item(model):
    from musicssl.data.pretrain import Batch
    from musicssl.train.mert import MERTTask

    task = MERTTask(model.config, 24_000, seed=3)

    def plan(seed: int, update: int, first: int):
        task.seed = seed
        item = Batch(wav=torch.zeros(8, 120_000), lengths=torch.full((8,), 120_000), labels=None,
                     indices=torch.arange(first, first + 8), skipped=0)
        return task.model.mixture_plan(8, 120_000, task.mixture_generator(item, update))

    assert plan(3, 10, 0) == plan(3, 10, 0) and any(plan(3, 10, 0))
    assert plan(3, 11, 0) != plan(3, 10, 0) and plan(3, 10, 8) != plan(3, 10, 0) and plan(4, 10, 0) != plan(3, 10, 0)

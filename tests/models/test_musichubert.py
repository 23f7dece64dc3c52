"""MusicHuBERT head and loss against direct computations."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from musicssl.models.musichubert import MusicHubert, MusicHubertConfig, align_labels
from tests.conftest import micro_config
from tests.numerics import float64_calibrated, gamma


def exact_result(model: MusicHubert, wav, labels, mask) -> dict:
    """The same forward in float64: the truth that both float32 computations round from."""
    return copy.deepcopy(model).double()(wav.double(), None, labels, mask=mask)


def assert_rounding_close(ours, direct, truth) -> None:
    """Our float32 value vs the direct float32 formula, within the rounding that the direct
    formula itself shows against the float64 truth (tests/numerics.py)."""
    error, tolerance = float64_calibrated(ours, direct, truth)
    assert error <= tolerance, (error, tolerance)


def micro_model(num_classes=7, **changes) -> MusicHubert:
    torch.manual_seed(0)
    config = MusicHubertConfig(backbone=micro_config("hubert", dropout=0.0, attention_dropout=0.0,
                                                     input_dropout=0.0, layerdrop=0.0),
                               num_classes=num_classes, **changes)
    return MusicHubert(config)


def test_align_labels_takes_every_second_label_at_100_hz():
    labels = torch.arange(20)[None]  # 100 Hz ids 0..19
    assert align_labels(labels, 8, 100.0, 50.0).tolist() == [[0, 2, 4, 6, 8, 10, 12, 14]]
    assert align_labels(labels, 30, 100.0, 50.0).shape == (1, 10)  # trimmed to the labels available
    assert align_labels(labels, 5, 50.0, 50.0).tolist() == [[0, 1, 2, 3, 4]]


def test_matmul_head_equals_a_direct_per_frame_cross_entropy():
    model = micro_model(extra_classes=4).eval()
    wav = torch.randn(2, 8000, generator=torch.Generator().manual_seed(1))
    frames = 24
    labels = torch.randint(0, 7, (2, 2 * frames + 1), generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(2, frames, dtype=torch.bool)
    mask[0, 2:12] = mask[1, 5:15] = True
    result = model(wav, None, labels, mask=mask)

    hidden = model.backbone(wav, mask=mask).last_hidden_state
    direct_masked, direct_unmasked, correct = 0.0, 0.0, 0
    for b in range(2):
        for t in range(frames):
            o = model.final_proj(hidden[b, t])
            logits = torch.stack([torch.cosine_similarity(o, e, dim=0) for e in model.label_embeddings]) / 0.1
            target = int(labels[b, 2 * t])
            ce = -torch.log_softmax(logits, dim=0)[target]
            if mask[b, t]:
                direct_masked += ce
                correct += int(logits.argmax() == target)
            else:
                direct_unmasked += ce
    truth = exact_result(model, wav, labels, mask)
    assert_rounding_close(result["masked_loss_sum"], direct_masked, truth["masked_loss_sum"])
    assert_rounding_close(result["unmasked_loss_sum"], direct_unmasked, truth["unmasked_loss_sum"])
    assert int(result["masked_correct"]) == correct and int(result["sample_size"]) == 20
    penalty = model.backbone(wav).cnn_features.pow(2).mean()
    assert_rounding_close(result["loss"], direct_masked + 10 * penalty * 20, truth["loss"])


def test_unmasked_weight_and_padding_are_respected():
    model = micro_model(unmasked_weight=0.5).eval()
    wav = torch.randn(2, 8000)
    lengths = torch.tensor([8000, 4000])  # item 1 has 12 valid frames of 24
    labels = torch.randint(0, 7, (2, 48))
    result = model(wav, lengths, labels, generator=0)
    counted = result["masked_count"] + result["unmasked_count"]
    assert int(counted) == 24 + 12
    penalty = result["feature_penalty"]
    terms = [result["masked_loss_sum"], 0.5 * result["unmasked_loss_sum"], 10 * penalty * result["sample_size"]]
    # the same three float32 terms, maybe summed in another order: gamma(3) of their magnitudes,
    # plus the two products' roundings
    tolerance = gamma(5) * sum(t.abs().item() for t in terms)
    assert abs(result["loss"].item() - sum(terms).item()) <= tolerance


@pytest.mark.parametrize("masked_weight, unmasked_weight", [(1.0, 0.0), (1.0, 0.5), (0.0, 1.0)])
def test_sample_size_counts_the_frames_of_each_loss_that_is_on_as_fairseq(masked_weight, unmasked_weight):
    # fairseq hubert_criterion: sample_size += masked count if pred_masked_weight > 0, += unmasked
    # count if pred_nomask_weight > 0; the feature penalty is multiplied by that sample size.
    model = micro_model(masked_weight=masked_weight, unmasked_weight=unmasked_weight).eval()
    result = model(torch.randn(2, 8000), torch.tensor([8000, 4000]), torch.randint(0, 7, (2, 48)), generator=0)
    expected = result["masked_count"] * (masked_weight > 0) + result["unmasked_count"] * (unmasked_weight > 0)
    assert result["sample_size"] == expected
    terms = masked_weight * result["masked_loss_sum"] + unmasked_weight * result["unmasked_loss_sum"]
    torch.testing.assert_close(result["loss"], terms + 10 * result["feature_penalty"] * expected)


def test_span_masking_is_seeded_and_hubert_sized():
    model = micro_model()
    wav, labels = torch.randn(4, 16000 * 5), torch.randint(0, 7, (4, 498))
    first = model.eval()(wav, None, labels, generator=3)
    again = model(wav, None, labels, generator=3)
    assert torch.equal(first["loss"], again["loss"])
    # 0.8 / 10 / min 2 masks about half of 249 frames (docs/method.md §2).
    assert 0.35 < float(first["sample_size"]) / (4 * 249) < 0.65
    assert dataclasses.asdict(model.config.mask)["mask_prob"] == 0.8


def test_two_codebooks_sum_two_cross_entropies_with_their_own_projection_and_embeddings():
    model = micro_model(num_classes=7, extra_codebooks=(5,), extra_classes=4).eval()
    assert model.final_proj.out_features == 2 * model.config.final_dim
    assert model.label_embeddings.shape[0] == (7 + 4) + (5 + 4)
    wav = torch.randn(2, 8000, generator=torch.Generator().manual_seed(1))
    frames, dim = 24, model.config.final_dim
    generator = torch.Generator().manual_seed(2)
    labels = torch.stack([torch.randint(0, 7, (2, 2 * frames), generator=generator),
                          torch.randint(0, 5, (2, 2 * frames), generator=generator)], dim=-1)  # (B, T, 2)
    labels[1, 10, 1] = -1  # a frame with no pitch label is left out of both codebooks
    mask = torch.zeros(2, frames, dtype=torch.bool)
    mask[0, 2:12] = mask[1, 3:13] = True
    result = model(wav, None, labels, mask=mask)

    hidden = model.backbone(wav, mask=mask).last_hidden_state
    ce, correct = [0.0, 0.0], [0, 0]
    rows = [model.label_embeddings[:11], model.label_embeddings[11:]]
    for b in range(2):
        for t in range(frames):
            if not mask[b, t] or (b, t) == (1, 5):
                continue
            projected = model.final_proj(hidden[b, t])
            for codebook in range(2):
                o = projected[codebook * dim:(codebook + 1) * dim]
                logits = torch.stack([torch.cosine_similarity(o, e, dim=0) for e in rows[codebook]]) / 0.1
                target = int(labels[b, 2 * t, codebook])
                ce[codebook] = ce[codebook] - torch.log_softmax(logits, dim=0)[target]
                correct[codebook] += int(logits.argmax() == target)
    assert int(result["sample_size"]) == 19 and int(result["masked_count_1"]) == 19
    truth = exact_result(model, wav, labels, mask)
    assert_rounding_close(result["masked_ce_sum"], ce[0], truth["masked_ce_sum"])
    assert_rounding_close(result["masked_ce_sum_1"], ce[1], truth["masked_ce_sum_1"])
    assert_rounding_close(result["masked_loss_sum"], ce[0] + ce[1], truth["masked_loss_sum"])
    assert [int(result["masked_correct"]), int(result["masked_correct_1"])] == correct
    with pytest.raises(ValueError, match=r"got 1 label set\(s\).*k = \(7, 5\)"):
        model(wav, None, labels[..., 0], mask=mask)


def test_one_codebook_keeps_hubert_shapes_and_names():
    model = micro_model(num_classes=7)
    assert model.config.codebooks == (7,) and model.final_proj.out_features == model.config.final_dim
    labels = torch.randint(0, 7, (2, 48))
    single = model.eval()(torch.randn(2, 8000), None, labels, mask=torch.ones(2, 24, dtype=torch.bool))
    assert not any(key.endswith("_1") for key in single)
    assert torch.equal(single["masked_loss_sum"], single["masked_ce_sum"])  # one codebook: the same sum


def _mean_pairwise_cosine(rows: torch.Tensor) -> float:
    unit = torch.nn.functional.normalize(rows, dim=-1)
    similarity = unit @ unit.T
    return float((similarity.sum() - similarity.diagonal().sum()) / (len(rows) * (len(rows) - 1)))


def test_label_embedding_init_fairseq_uniform_or_spread_normal():
    # fairseq's U[0, 1) rows all point into one orthant: every logit starts alike. "normal" rows
    # are near-orthogonal, so the cosine logits tell classes apart from the first update.
    fairseq = micro_model(num_classes=100).label_embeddings.detach()
    spread = micro_model(num_classes=100, label_embedding_init="normal").label_embeddings.detach()
    assert fairseq.min() >= 0 and fairseq.max() < 1
    assert _mean_pairwise_cosine(fairseq) == pytest.approx(0.75, abs=0.03)  # E[u]^2 / E[u^2] = 3/4
    assert abs(_mean_pairwise_cosine(spread)) < 0.02
    with pytest.raises(ValueError, match="label_embedding_init must be one of uniform, normal"):
        micro_model(label_embedding_init="xavier")

"""Probe metrics against direct scikit-learn / mir_eval calls, and hand-computed cases.

Tolerances: these are float64 computations of a few hundred terms at most, on the same inputs as
the reference, so they agree to ~1e-14; pytest.approx's default (1e-6 relative) and abs=1e-12 are
far above that and far below any real difference (a mis-ranked item moves a score by >= 1/n).
ROC-AUC and AP are computed all tags at once (not by sklearn's per-tag calls): the same rational
numbers as sklearn's, summed in another order. Each is a mean over T tags of a sum of at most N
terms in [0, 1] whose total is at most 1, so the two float64 results differ by at most
gamma(N + T) in float64 (Higham), `sum_tolerance` below: ~1e-13 for these sizes."""

from __future__ import annotations

import warnings

import mir_eval
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, average_precision_score, r2_score, roc_auc_score

from musicssl.evaluate import metrics
from tests.numerics import gamma

U64 = 2.0 ** -53


def sum_tolerance(targets: np.ndarray) -> float:
    return 2 * gamma(sum(targets.shape), U64)


def _multilabel(seed: int, n: int = 60, tags: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, tags)) < 0.3).astype(np.int64)
    targets[0], targets[1] = 1, 0  # every tag has both classes
    scores = rng.normal(size=(n, tags)) + targets  # informative but imperfect
    return targets, scores


# ----------------------------------------------------------------------------- sklearn wrappers

def test_accuracy_equals_sklearn_on_argmax():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 7))
    targets = rng.integers(0, 7, 200)
    expected = accuracy_score(targets, logits.argmax(1))
    assert metrics.accuracy(targets, logits) == expected
    assert 0.05 < expected < 0.3  # random logits: chance level, so the comparison is not trivial


def test_accuracy_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"targets must have shape \(4,\)"):
        metrics.accuracy(np.zeros(3, dtype=int), np.zeros((4, 2)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_and_ap_equal_sklearn_macro(seed):
    targets, scores = _multilabel(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no tag is excluded, so nothing may warn
        roc = metrics.roc_auc_macro(targets, scores)
        ap = metrics.average_precision_macro(targets, scores)
    assert roc == pytest.approx(roc_auc_score(targets, scores, average="macro"), rel=0, abs=sum_tolerance(targets))
    assert ap == pytest.approx(average_precision_score(targets, scores, average="macro"), rel=0, abs=sum_tolerance(targets))
    assert 0.6 < roc < 0.95 and 0.4 < ap < 0.95


@pytest.mark.parametrize("seed", [0, 1])
def test_roc_auc_and_ap_equal_sklearn_with_ties_and_float32(seed):
    """Tied scores (coarse float32 steps, whole blocks of equal values, a tag of only positives
    for AP) and a size like MTT's validation split: the all-tags-at-once sums against sklearn."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((1825, 50)) < 0.1).astype(np.int64)
    targets[0], targets[1] = 1, 0
    scores = np.round(rng.normal(size=targets.shape) + targets, 1).astype(np.float32)  # ~60 distinct values
    scores[:200, 3] = 0.5  # a block of ties across both classes
    roc = metrics.roc_auc_macro(targets, scores)
    ap = metrics.average_precision_macro(targets, scores)
    assert roc == pytest.approx(roc_auc_score(targets, scores, average="macro"), rel=0, abs=sum_tolerance(targets))
    assert ap == pytest.approx(average_precision_score(targets, scores, average="macro"), rel=0, abs=sum_tolerance(targets))
    only_positive = np.ones((40, 1), dtype=np.int64)
    assert metrics.average_precision_macro(only_positive, scores[:40, :1]) == 1.0


def test_roc_auc_is_the_same_on_logits_and_probabilities():
    targets, logits = _multilabel(3)
    from_probabilities = metrics.roc_auc_macro(targets, metrics.sigmoid(logits))
    assert metrics.roc_auc_macro(targets, logits) == pytest.approx(from_probabilities)


def test_constant_tags_are_excluded_with_a_warning():
    targets, scores = _multilabel(4, tags=4)
    targets[:, 1] = 0  # no positive: undefined for ROC-AUC and AP
    targets[:, 2] = 1  # no negative: undefined for ROC-AUC only (AP = 1)
    with pytest.warns(UserWarning, match="excluded 2 of 4 tags"):
        roc = metrics.roc_auc_macro(targets, scores)
    assert roc == pytest.approx(roc_auc_score(targets[:, [0, 3]], scores[:, [0, 3]], average="macro"), rel=0,
                                abs=sum_tolerance(targets))
    with pytest.warns(UserWarning, match="excluded 1 of 4 tags"):
        ap = metrics.average_precision_macro(targets, scores)
    assert ap == pytest.approx(average_precision_score(targets[:, [0, 2, 3]], scores[:, [0, 2, 3]], average="macro"),
                               rel=0, abs=sum_tolerance(targets))
    assert average_precision_score(targets[:, [2]], scores[:, [2]]) == 1.0


def test_a_single_defined_tag_is_scored_alone():
    targets, scores = _multilabel(5, tags=3)
    targets[:, 1:] = 0
    with pytest.warns(UserWarning, match="excluded 2 of 3"):
        assert metrics.roc_auc_macro(targets, scores) == pytest.approx(roc_auc_score(targets[:, 0], scores[:, 0]),
                                                                       rel=0, abs=sum_tolerance(targets))


def test_no_defined_tag_raises():
    targets = np.zeros((10, 3), dtype=int)
    targets[:, 0] = 1
    with pytest.raises(ValueError, match="all 3 tags"):
        metrics.roc_auc_macro(targets, np.random.default_rng(0).random((10, 3)))
    with pytest.raises(ValueError, match="0/1"):
        metrics.average_precision_macro(targets * 2, np.zeros((10, 3)))


def test_non_finite_scores_are_refused():
    targets, scores = _multilabel(7)
    scores[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        metrics.roc_auc_macro(targets, scores)
    with pytest.raises(ValueError, match="NaN or infinity"):
        metrics.average_precision_macro(targets, scores)


def test_per_probe_metrics_equal_one_probe_at_a_time():
    """A grid validates P probes at once: accuracy_each and roc_auc_macro_each equal the
    one-probe calls (accuracy exactly: integer hit counts; ROC-AUC: the same columns sorted, then
    a mean over each probe's tags, within the float64 sum tolerance), with a constant tag and ties."""
    rng = np.random.default_rng(7)
    classes = rng.integers(0, 4, 50)
    logits = rng.normal(size=(6, 50, 4)).round(1)  # ties in argmax are broken the same way
    assert metrics.accuracy_each(classes, logits).tolist() == [metrics.accuracy(classes, one) for one in logits]
    targets, _ = _multilabel(3, n=50, tags=6)
    targets[:, 2] = 0  # excluded from every probe's mean
    scores = rng.normal(size=(5, 50, 6)).round(1) + targets
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        each = metrics.roc_auc_macro_each(targets, scores)
        one_by_one = [metrics.roc_auc_macro(targets, one) for one in scores]
    assert each == pytest.approx(one_by_one, rel=0, abs=sum_tolerance(targets))
    with pytest.raises(ValueError, match="NaN or infinity"):
        metrics.roc_auc_macro_each(targets, np.where(scores > 2, np.nan, scores))
    with pytest.raises(ValueError, match="3-D"):
        metrics.roc_auc_macro_each(targets, scores[0])


def test_r2_per_output_equals_sklearn_raw_values():
    rng = np.random.default_rng(6)
    targets = rng.normal(size=(80, 2))
    predictions = targets * [0.8, 0.3] + rng.normal(scale=0.5, size=(80, 2))
    scores = metrics.r2_per_output(targets, predictions)
    np.testing.assert_array_equal(scores, r2_score(targets, predictions, multioutput="raw_values"))
    assert scores.shape == (2,) and scores[0] > scores[1]


def test_sigmoid_and_softmax_values():
    logits = np.array([[-800.0, 0.0, np.log(3.0)], [1.0, 2.0, 3.0]])
    np.testing.assert_allclose(metrics.sigmoid(logits[0]), [0.0, 0.5, 0.75])
    probabilities = metrics.softmax(logits)
    np.testing.assert_allclose(probabilities[1], np.exp([1.0, 2.0, 3.0]) / np.exp([1.0, 2.0, 3.0]).sum())
    np.testing.assert_allclose(probabilities.sum(1), 1.0)
    assert np.isfinite(metrics.softmax([[1000.0, 0.0]])).all()


# ----------------------------------------------------------------------------- key score

@pytest.mark.parametrize("reference, estimate, expected", [
    ("C major", "C major", 1.0),
    ("C major", "G major", 0.5),    # fifth above
    ("C major", "F major", 0.0),    # fifth below: mir_eval credits only the fifth above
    ("A minor", "E minor", 0.5),
    ("A minor", "D minor", 0.0),
    ("C major", "A minor", 0.3),    # relative minor
    ("A minor", "C major", 0.3),    # relative major
    ("C major", "C minor", 0.2),    # parallel
    ("C major", "D major", 0.0),
    ("C major", "E minor", 0.0),
])
def test_key_weighted_score_cases(reference, estimate, expected):
    assert metrics.key_weighted_score([reference], [estimate]) == expected
    assert mir_eval.key.weighted_score(reference, estimate) == expected  # what mir_eval itself returns


def test_key_spellings_sharps_flats_and_case():
    assert metrics.key_weighted_score(["C# major"], ["db MAJOR"]) == 1.0
    assert metrics.key_weighted_score(["Eb minor"], ["d# Minor"]) == 1.0
    assert metrics.key_weighted_score(["B♭ major"], ["F major"]) == 0.5
    assert metrics.key_weighted_score(["bb minor"], ["Db major"]) == 0.3


def test_key_score_is_the_mean_over_pairs():
    rng = np.random.default_rng(7)
    names = ["C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"]
    keys = [f"{names[i]} {mode}" for i, mode in zip(rng.integers(0, 12, 300), rng.choice(["major", "minor"], 300))]
    reference, estimate = keys[:150], keys[150:]
    expected = np.mean([mir_eval.key.weighted_score(r, e) for r, e in zip(reference, estimate)])
    assert metrics.key_weighted_score(reference, estimate) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("bad", ["H major", "C dorian", "Cmajor", "", "C# major extra", "X"])
def test_bad_key_strings_raise_naming_the_string(bad):
    with pytest.raises(ValueError, match=repr(bad).replace("(", r"\(")):
        metrics.key_weighted_score(["C major"], [bad])


def test_key_lists_must_pair_up():
    with pytest.raises(ValueError, match="2 reference keys but 1"):
        metrics.key_weighted_score(["C major", "D major"], ["C major"])


# ----------------------------------------------------------------------------- beat F

BEATS = np.arange(5.0, 15.0, 0.5)  # 20 beats, all after mir_eval's 5-s trim


# -50 ms moves the first estimate to 4.95 s, which only the track mean trims: P 1, R 19/20 -> 38/39
@pytest.mark.parametrize("shift, expected, expected_track_mean",
                         [(0.0, 1.0, 1.0), (0.05, 1.0, 1.0), (-0.05, 1.0, 38 / 39), (0.1, 0.0, 0.0)])
def test_beat_f_for_shifted_estimates(shift, expected, expected_track_mean):
    scores = metrics.beat_f_measure([BEATS], [BEATS + shift])
    assert scores["beat_f"] == scores["beat_precision"] == scores["beat_recall"] == expected
    assert scores["beat_f_track_mean"] == pytest.approx(expected_track_mean)


def test_half_the_beats_gives_precision_1_recall_half():
    scores = metrics.beat_f_measure([BEATS], [BEATS[::2]])
    assert scores["beat_precision"] == 1.0 and scores["beat_recall"] == 0.5
    assert scores["beat_f"] == pytest.approx(2 / 3)
    assert scores["beat_f_track_mean"] == pytest.approx(2 / 3)


def test_micro_aggregate_differs_from_track_mean():
    # track 1: all 20 beats right (F 1); track 2: 4 right beats out of 20 (P 1, R 0.2, F 1/3)
    scores = metrics.beat_f_measure([BEATS, BEATS], [BEATS, BEATS[:4]])
    # summed: M = 24, E = 24, R = 40 -> P = 1, R = 0.6, F = 2 * 0.6 / 1.6 = 0.75
    assert scores["beat_precision"] == 1.0 and scores["beat_recall"] == pytest.approx(0.6)
    assert scores["beat_f"] == pytest.approx(0.75)
    assert scores["beat_f_track_mean"] == pytest.approx((1 + 1 / 3) / 2)


def test_only_the_track_mean_trims_the_first_five_seconds():
    reference = np.arange(0.5, 10.0, 0.5)  # 19 beats, 9 of them before 5 s
    estimate = reference[reference < 5.0]
    scores = metrics.beat_f_measure([reference], [estimate])
    assert scores["beat_precision"] == 1.0 and scores["beat_recall"] == pytest.approx(9 / 19)
    assert scores["beat_f"] == pytest.approx(9 / 14)  # 2 * (9/19) / (1 + 9/19)
    assert scores["beat_f_track_mean"] == 0.0        # nothing left after the trim


def test_empty_tracks_count_zero_matches():
    scores = metrics.beat_f_measure([BEATS, BEATS, np.array([])], [BEATS, np.array([]), BEATS])
    # M = 20, E = 40, R = 40
    assert scores["beat_precision"] == 0.5 and scores["beat_recall"] == 0.5 and scores["beat_f"] == 0.5
    assert scores["beat_f_track_mean"] == pytest.approx(1 / 3)
    nothing = metrics.beat_f_measure([np.array([])], [np.array([])])
    assert nothing == {"beat_f": 0.0, "beat_precision": 0.0, "beat_recall": 0.0, "beat_f_track_mean": 0.0}


def test_beat_f_equals_direct_mir_eval_calls_on_random_tracks():
    rng = np.random.default_rng(8)
    references, estimates = [], []
    for _ in range(6):
        reference = np.cumsum(rng.uniform(0.3, 0.7, 50))
        jittered = reference + rng.normal(scale=0.05, size=50)
        estimate = np.sort(np.concatenate([jittered[rng.random(50) < 0.8], rng.uniform(0, reference[-1], 5)]))
        references.append(reference)
        estimates.append(estimate)
    scores = metrics.beat_f_measure(references, estimates, window=0.07)
    matched = sum(len(mir_eval.util.match_events(r, e, 0.07)) for r, e in zip(references, estimates))
    precision = matched / sum(map(len, estimates))
    recall = matched / sum(map(len, references))
    assert scores["beat_precision"] == pytest.approx(precision, abs=1e-12)
    assert scores["beat_recall"] == pytest.approx(recall, abs=1e-12)
    assert scores["beat_f"] == pytest.approx(mir_eval.util.f_measure(precision, recall), abs=1e-12)
    track_mean = np.mean([mir_eval.beat.f_measure(mir_eval.beat.trim_beats(r), mir_eval.beat.trim_beats(e))
                          for r, e in zip(references, estimates)])
    assert scores["beat_f_track_mean"] == pytest.approx(track_mean, abs=1e-12)
    assert 0.4 < scores["beat_f"] < 0.95


def test_beat_inputs_are_checked():
    with pytest.raises(ValueError, match=r"estimates\[0\] is not sorted"):
        metrics.beat_f_measure([BEATS], [BEATS[::-1]])
    with pytest.raises(ValueError, match="2 reference tracks but 1"):
        metrics.beat_f_measure([BEATS, BEATS], [BEATS])

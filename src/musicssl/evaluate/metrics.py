"""Probe metrics: thin, documented wrappers over scikit-learn and mir_eval (docs/evaluation.md §1, §2).

Each function states which library call it reduces to, so a reported number can be reproduced
with the library alone. Where MARBLE v1 (torchmetrics, hand-written beat aggregation) differs
from the library's default, the docstring says which one we follow and why.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

import mir_eval
import numpy as np
import scipy.special
from sklearn.metrics import r2_score

BEAT_WINDOW_SECONDS = 0.07  # MARBLE's f_measure_threshold (docs/evaluation.md §2.9), also mir_eval's default
TRIM_SECONDS = 5.0          # mir_eval.beat.trim_beats default, used by the per-track mean only

# "Eb minor", "c# Major", "B♭ minor": tonic letter, optional accidental, major/minor (GiantSteps, §2.2)
_KEY_PATTERN = re.compile(r"^\s*([A-Ga-g])([#b♯♭]?)\s+(major|minor)\s*$", re.IGNORECASE)


# ----------------------------------------------------------------------------- logits -> scores

def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Element-wise logistic function (multi-label probabilities), overflow-free."""
    return scipy.special.expit(np.asarray(logits, dtype=np.float64))


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax over `axis` (multi-class probabilities), shifted by the max for stability."""
    return scipy.special.softmax(np.asarray(logits, dtype=np.float64), axis=axis)


# ----------------------------------------------------------------------------- clip-level

def accuracy(targets: np.ndarray, logits: np.ndarray) -> float:
    """Micro accuracy of argmax(logits) (GTZAN, NSynth, VocalSet; docs/evaluation.md §2.3, §2.5-2.8).

    targets: (N,) class ids; logits: (N, C) logits or probabilities (argmax is the same).
    Equals sklearn.metrics.accuracy_score(targets, logits.argmax(1)): the same float64 mean of
    the hits, without its input validation (~1.5 ms a call; a probe grid scores hundreds of runs).
    """
    logits = _check_2d(logits, "logits")
    return float(accuracy_each(targets, logits[None])[0])


def accuracy_each(targets: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """accuracy of P probes at once: logits (P, N, C) -> (P,) float64 (a probe grid validates
    every run every epoch). The hit counts are integers, so each equals accuracy's exactly."""
    targets, logits = np.asarray(targets), np.asarray(logits)
    if logits.ndim != 3 or targets.shape != (logits.shape[1],):
        raise ValueError(f"accuracy: targets must have shape ({logits.shape[-2]},) to match logits "
                         f"{logits.shape[-2:]}, found {targets.shape}")
    return np.mean(targets == logits.argmax(axis=2), axis=1)


def roc_auc_macro(targets: np.ndarray, scores: np.ndarray) -> float:
    """Macro ROC-AUC over tags: sklearn roc_auc_score(average="macro") (MTT, MTG; docs/evaluation.md §2.1).

    targets: (N, C) 0/1; scores: (N, C) logits or probabilities (ROC-AUC is rank-based, so both
    give the same number). A tag whose targets are constant on this split (no positive, or no
    negative) has no ROC curve: we exclude it and warn how many were excluded, so the mean is
    over the tags where the metric is defined. sklearn alone would return NaN, and MARBLE's
    torchmetrics AUROC scores such a tag 0 (it warns and keeps it), which lowers the mean: our
    number equals MARBLE's only when every tag has both classes (true of the full test splits).
    Raises ValueError if no tag is left.

    Computed for all tags at once as the Mann-Whitney statistic (tied scores take their mean
    rank, the half credit of the ROC curve's diagonal steps): the same rational number as
    sklearn's trapezoids, ~1e-16 apart in float64 (tests/evaluate/test_metrics.py). sklearn
    validates and sorts tag by tag: ~2 ms a tag, and a probe grid scores 250 runs x 50 tags.
    """
    targets, scores = _check_multilabel(targets, scores, "roc_auc_macro")
    return float(_roc_auc_macro(targets, scores[None])[0])


def roc_auc_macro_each(targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """roc_auc_macro of P probes at once: targets (N, C), scores (P, N, C) -> (P,) float64,
    from one sort of all P x C columns (the same arithmetic per column as roc_auc_macro)."""
    scores = np.asarray(scores)
    if scores.ndim != 3:
        raise ValueError(f"roc_auc_macro_each: scores must be 3-D (P, N, C), found shape {scores.shape}")
    targets, _ = _check_multilabel(targets, scores[0], "roc_auc_macro")
    if not np.isfinite(scores).all():
        raise ValueError(f"roc_auc_macro: scores contain NaN or infinity ({int((~np.isfinite(scores)).sum())} values)")
    return _roc_auc_macro(targets, scores)


def _roc_auc_macro(targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """targets (N, C) int 0/1, scores (P, N, C) checked -> (P,) macro ROC-AUC of each probe."""
    probes, size, _ = scores.shape
    positives = targets.sum(axis=0)
    defined = (positives > 0) & (positives < size)
    _warn_excluded("roc_auc_macro", int((~defined).sum()), targets.shape[1], "constant targets (all 0 or all 1)")
    columns = scores[:, :, defined].transpose(0, 2, 1).reshape(-1, size)  # (P x T, N): probe-major columns
    hits, start, end = _tied_blocks(np.tile(targets[:, defined], probes), columns.T)
    n_pos = np.tile(positives[defined], probes).astype(np.float64)
    mean_rank = (start + end) / 2 + 1  # 1-based rank, ties averaged
    u = (hits * mean_rank).sum(axis=1) - n_pos * (n_pos + 1) / 2
    return np.mean((u / (n_pos * (size - n_pos))).reshape(probes, -1), axis=1)


def average_precision_macro(targets: np.ndarray, scores: np.ndarray) -> float:
    """Macro average precision over tags: sklearn average_precision_score(average="macro").

    targets: (N, C) 0/1; scores: (N, C). AP is undefined for a tag without positives (sklearn
    warns and scores it 0, torchmetrics returns NaN and drops it from the mean): we exclude such
    tags and warn how many. A tag with only positives is defined (AP = 1) and kept.
    Raises ValueError if no tag is left.

    sklearn's step sum, AP = sum over distinct thresholds t (descending) of
    (R(t) - R(t_prev)) P(t), for all tags at once: every positive counts 1/positives times the
    precision at the end of its block of tied scores. Equal to sklearn's within float64 rounding
    (tests/evaluate/test_metrics.py), without its per-tag validation.
    """
    targets, scores = _check_multilabel(targets, scores, "average_precision_macro")
    defined = targets.sum(axis=0) > 0
    _warn_excluded("average_precision_macro", int((~defined).sum()), targets.shape[1], "no positive target")
    hits, start, _ = _tied_blocks(targets[:, defined], scores[:, defined])
    positives = hits.sum(axis=1)
    # precision at a score = positives / items scoring at least that much, counted from its block's start
    positives_before = np.cumsum(hits, axis=1) - hits
    at_least = positives[:, None] - np.take_along_axis(positives_before, start, 1)
    precision = at_least / (hits.shape[1] - start)
    return float(np.mean((hits * precision).sum(axis=1) / positives))


def _tied_blocks(targets: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every tag's items sorted by ascending score: (hits, start, end), each (T, N): the sorted
    targets, and the first and last sorted position of each item's block of equal scores. One
    unstable sort of tag-major rows (the order inside a block does not matter here): several
    times faster than a stable sort or than sorting strided columns."""
    scores = np.ascontiguousarray(scores.T)  # (T, N)
    order = np.argsort(scores, axis=1, kind="quicksort")
    ranked = np.take_along_axis(scores, order, 1)
    hits = np.take_along_axis(np.ascontiguousarray(targets.T), order, 1)
    size = ranked.shape[1]
    position = np.arange(size)
    first = np.ones_like(ranked, dtype=bool)
    first[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
    last = np.ones_like(first)
    last[:, :-1] = first[:, 1:]
    start = np.maximum.accumulate(np.where(first, position, 0), axis=1)
    end = np.minimum.accumulate(np.where(last, position, size)[:, ::-1], axis=1)[:, ::-1]
    return hits, start, end


def r2_per_output(targets: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """Coefficient of determination per output (EMO valence, arousal; docs/evaluation.md §2.4).

    targets, predictions: (N, C). Returns (C,) = sklearn r2_score(multioutput="raw_values").
    """
    targets = _check_2d(targets, "targets")
    predictions = _check_2d(predictions, "predictions")
    if targets.shape != predictions.shape:
        raise ValueError(f"r2_per_output: targets {targets.shape} and predictions {predictions.shape} differ")
    return np.asarray(r2_score(targets, predictions, multioutput="raw_values"), dtype=np.float64)


def key_weighted_score(reference: Sequence[str], estimate: Sequence[str]) -> float:
    """Mean of mir_eval.key.weighted_score over (reference, estimate) pairs (GiantSteps, §2.2).

    Per pair: 1.0 same key; 0.5 same mode with the estimate a fifth ABOVE the reference (a fifth
    below scores 0: mir_eval is asymmetric, and MARBLE uses it as is); 0.3 relative major/minor;
    0.2 parallel major/minor; 0.0 otherwise. Keys are "<tonic> <mode>": tonic A-G with an
    optional sharp or flat ("Eb", "C#", "B♭"), mode major/minor in any case. Any other string
    raises ValueError naming it.
    """
    if len(reference) != len(estimate):
        raise ValueError(f"key_weighted_score: {len(reference)} reference keys but {len(estimate)} estimates")
    if len(reference) == 0:
        raise ValueError("key_weighted_score: no keys to score")
    scores = [mir_eval.key.weighted_score(_normalise_key(ref, "reference"), _normalise_key(est, "estimate"))
              for ref, est in zip(reference, estimate)]
    return float(np.mean(scores))


# ----------------------------------------------------------------------------- beats

def beat_f_measure(references: Sequence[np.ndarray], estimates: Sequence[np.ndarray],
                   window: float = BEAT_WINDOW_SECONDS) -> dict[str, float]:
    """Beat F-measure at ±`window` seconds over a set of tracks (GTZAN Rhythm, docs/evaluation.md §2.9).

    references, estimates: one (n,) array of beat times in seconds per track.

    "beat_f", "beat_precision", "beat_recall" follow MARBLE v1's GTZANBT metric: per track,
    M = len(mir_eval.util.match_events(ref, est, window)); M, E = #estimates and R = #references
    are summed over tracks, then P = M/E, R = M/R, F = 2PR/(P+R) (a micro-aggregate; all three
    are 0 when E or R is 0). No beat is trimmed: MARBLE calls match_events directly.

    "beat_f_track_mean" is the usual convention instead: the mean over tracks of
    mir_eval.beat.f_measure after mir_eval.beat.trim_beats on both lists, i.e. beats before
    5 s are dropped (what mir_eval.beat.evaluate does). A track with no beat left scores 0.
    """
    if len(references) != len(estimates):
        raise ValueError(f"beat_f_measure: {len(references)} reference tracks but {len(estimates)} estimates")
    if len(references) == 0:
        raise ValueError("beat_f_measure: no tracks to score")
    matched = estimated = referenced = 0
    track_scores = []
    for index, (ref, est) in enumerate(zip(references, estimates)):
        ref = _check_beats(ref, f"references[{index}]")
        est = _check_beats(est, f"estimates[{index}]")
        matched += len(mir_eval.util.match_events(ref, est, window)) if ref.size and est.size else 0
        estimated += est.size
        referenced += ref.size
        track_scores.append(_track_f_measure(ref, est, window))
    precision = matched / estimated if estimated and referenced else 0.0
    recall = matched / referenced if estimated and referenced else 0.0
    f_score = 2 * precision * recall / (precision + recall) if matched else 0.0
    return {"beat_f": float(f_score), "beat_precision": float(precision), "beat_recall": float(recall),
            "beat_f_track_mean": float(np.mean(track_scores))}


def _track_f_measure(ref: np.ndarray, est: np.ndarray, window: float) -> float:
    """mir_eval's per-track F after its default 5-s trim; empty lists give 0 without warnings."""
    ref = mir_eval.beat.trim_beats(ref, TRIM_SECONDS)
    est = mir_eval.beat.trim_beats(est, TRIM_SECONDS)
    if ref.size == 0 or est.size == 0:
        return 0.0  # mir_eval returns 0 here too, after a warning we do not need per track
    return float(mir_eval.beat.f_measure(ref, est, f_measure_threshold=window))


# ----------------------------------------------------------------------------- checks

def _check_2d(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, C), found shape {array.shape}")
    return array


def _check_multilabel(targets: np.ndarray, scores: np.ndarray, caller: str) -> tuple[np.ndarray, np.ndarray]:
    targets = _check_2d(targets, "targets")
    scores = _check_2d(scores, "scores")
    if targets.shape != scores.shape:
        raise ValueError(f"{caller}: targets {targets.shape} and scores {scores.shape} differ")
    if not np.isin(targets, (0, 1)).all():
        raise ValueError(f"{caller}: targets must be 0/1, found values {np.unique(targets)[:10]}")
    if not np.isfinite(scores).all():  # as sklearn: a NaN would make every comparison of the ranking false
        raise ValueError(f"{caller}: scores contain NaN or infinity ({int((~np.isfinite(scores)).sum())} values)")
    return targets.astype(np.int64), scores


def _warn_excluded(caller: str, excluded: int, total: int, reason: str) -> None:
    if excluded == total:
        raise ValueError(f"{caller}: all {total} tags have {reason} on this split; the metric is undefined")
    if excluded:
        warnings.warn(f"{caller}: excluded {excluded} of {total} tags with {reason}; "
                      f"the macro mean is over the other {total - excluded}", stacklevel=3)


def _normalise_key(key: str, role: str) -> str:
    """'eb MINOR' -> 'Eb minor', the spelling mir_eval validates (it wants a lower-case mode)."""
    match = _KEY_PATTERN.match(key) if isinstance(key, str) else None
    if match is None:
        raise ValueError(f"key_weighted_score: {role} key {key!r} is not '<tonic> <mode>' "
                         f"(tonic A-G with optional # or b, mode major or minor), e.g. 'Eb minor'")
    letter, accidental, mode = match.groups()
    accidental = {"♯": "#", "♭": "b"}.get(accidental, accidental.lower())
    return f"{letter.upper()}{accidental} {mode.lower()}"


def _check_beats(beats: np.ndarray, name: str) -> np.ndarray:
    beats = np.asarray(beats, dtype=np.float64)
    if beats.ndim != 1:
        raise ValueError(f"beat_f_measure: {name} must be a 1-D array of times, found shape {beats.shape}")
    if not np.isfinite(beats).all() or (beats < 0).any():
        raise ValueError(f"beat_f_measure: {name} has negative or non-finite times")
    if (np.diff(beats) < 0).any():
        raise ValueError(f"beat_f_measure: {name} is not sorted in time")
    return beats

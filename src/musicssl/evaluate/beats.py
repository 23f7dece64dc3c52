"""Beat times from frame-level beat activations (GTZAN Rhythm, docs/evaluation.md §2.9 and its addendum).

`dbn_beats` is madmom's `DBNBeatTrackingProcessor` (offline mode), which MARBLE runs on the
probe's per-frame P(beat) with its defaults, re-implemented in numpy: madmom 0.16 does not
import on Python 3.11 / numpy 2, and the beat-only DBN that can be assembled from madmom-infer's
parts scores every sparse transition and stores a back-pointer for every state at every frame.
`dbn_beats_batch` decodes many clips in one pass. A probe's beat validation split (45 clips of
8 s at 50 fps, decoded every epoch; benchmarks/beat_decode_speed.py): 0.17 s batched, 0.43 s one
clip at a time, 2.1 s for madmom-infer's Viterbi alone (docs/evaluation.md §8 notes 0.66 s for
one 30-s track with building its model).

The model (Krebs, Böck & Widmer, ISMIR 2015; Böck, Krebs & Widmer, ISMIR 2014):
- States: for every beat period ("interval", in frames) I_k between 60·fps/max_bpm and
  60·fps/min_bpm, I_k states for the positions 0 .. I_k-1 inside the beat. Flattened in madmom's
  order (intervals ascending, then positions), S = sum(I_k) states: 1,449 at 50 fps.
- Transitions: inside a beat the pointer moves one position per frame with probability 1; from
  the last position of interval j to the first of interval k with probability
  exp(-λ·|I_k/I_j - 1|), normalised over k (λ = transition_lambda; values ≤ machine epsilon are 0).
- Observations: the first 1/observation_lambda of every beat are "beat" states with density
  p(act) = act; the others have (1 - act) / (observation_lambda - 1).
- Viterbi with a uniform initial distribution. Only the K first states have more than one
  predecessor, so a frame costs one K×K tempo-change maximum plus one addition per state (the
  positions inside a beat sit in rings that need no shifting, see `viterbi_paths`), and only
  the K winning predecessors are stored per frame. Ties resolve to the lowest predecessor
  and the lowest final state, as in madmom; the additions are done in madmom's order, so the
  path is the same to the bit (tests/evaluate/test_beats.py checks it against madmom-infer).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.signal

# madmom DBNBeatTrackingProcessor defaults, which MARBLE keeps (docs/evaluation.md §2.9)
MIN_BPM = 55.0
MAX_BPM = 215.0
TRANSITION_LAMBDA = 100.0
OBSERVATION_LAMBDA = 16
# Only for the rescue decode when exact 0/1 activations leave no finite path (see dbn_beats).
_RESCUE_EPSILON = 1e-7


@dataclass(frozen=True)
class BeatStateSpace:
    """madmom's BeatStateSpace + transition + observation pointers, flattened (see module doc)."""

    intervals: np.ndarray         # (K,) beat periods in frames, ascending
    first: np.ndarray             # (K,) flat index of position 0 of each interval
    last: np.ndarray              # (K,) flat index of the last position of each interval
    positions: np.ndarray         # (S,) position inside the beat, in [0, 1)
    is_beat: np.ndarray           # (S,) bool: the first 1/observation_lambda of the beat
    log_tempo_change: np.ndarray  # (K, K) log P(next interval k | interval j), rows j

    @property
    def num_states(self) -> int:
        return len(self.positions)


def tempo_intervals(min_interval: float, max_interval: float, num_tempi: int | None = None) -> np.ndarray:
    """Beat periods (frames) to model: every integer from round(min) to round(max), or, when
    `num_tempi` is smaller than that, about `num_tempi` log-spaced ones (madmom's rule: grow the
    log grid until `num_tempi` distinct integers remain)."""
    intervals = np.arange(np.round(min_interval), np.round(max_interval) + 1)
    if num_tempi is not None and num_tempi < len(intervals):
        count, intervals = num_tempi, np.empty(0)
        while len(intervals) < num_tempi:
            grid = np.logspace(np.log2(min_interval), np.log2(max_interval), count, base=2)
            intervals = np.unique(np.round(grid))
            count += 1
    return intervals.astype(np.int64)


def tempo_change_log_probabilities(intervals: np.ndarray, transition_lambda: float) -> np.ndarray:
    """(K, K) log P(interval k follows interval j) at a beat boundary; rows j sum to 1 in the
    linear domain. Computed with madmom's exact operations so that ties and rounding match."""
    ratio = intervals.astype(float) / intervals.astype(float)[:, np.newaxis]  # (from j, to k)
    probability = np.exp(-transition_lambda * np.abs(ratio - 1.0))
    probability[probability <= np.spacing(1)] = 0.0
    probability /= np.sum(probability, axis=1)[:, np.newaxis]
    with np.errstate(divide="ignore"):
        return np.log(probability)


@functools.lru_cache(maxsize=16)
def beat_state_space(fps: float, min_bpm: float = MIN_BPM, max_bpm: float = MAX_BPM,
                     num_tempi: int | None = None, transition_lambda: float = TRANSITION_LAMBDA,
                     observation_lambda: float = OBSERVATION_LAMBDA) -> BeatStateSpace:
    """Build (and cache: every track of a task shares it) the state space for these settings."""
    if not 0 < min_bpm < max_bpm:
        raise ValueError(f"need 0 < min_bpm < max_bpm, found min_bpm={min_bpm}, max_bpm={max_bpm}")
    if observation_lambda <= 1:
        raise ValueError(f"observation_lambda must be > 1 (the beat part of a period is 1/observation_lambda), "
                         f"found {observation_lambda}")
    intervals = tempo_intervals(60.0 * fps / max_bpm, 60.0 * fps / min_bpm, num_tempi)
    if len(intervals) == 0 or intervals[0] < 1:
        raise ValueError(f"fps={fps} with max_bpm={max_bpm} gives beat periods under one frame")
    last = np.cumsum(intervals) - 1
    first = last - intervals + 1
    # np.linspace as in madmom: p/I computed another way can differ in the last bit exactly
    # where p/I == 1/observation_lambda, which would move the beat/non-beat border.
    positions = np.concatenate([np.linspace(0, 1, interval, endpoint=False) for interval in intervals])
    arrays = dict(intervals=intervals, first=first, last=last, positions=positions,
                  is_beat=positions < 1.0 / observation_lambda,
                  log_tempo_change=tempo_change_log_probabilities(intervals, transition_lambda))
    for array in arrays.values():
        array.flags.writeable = False  # shared through the cache
    return BeatStateSpace(**arrays)


def viterbi_path(log_beat: np.ndarray, log_other: np.ndarray, space: BeatStateSpace) -> tuple[np.ndarray, float]:
    """Most likely state sequence. log_beat, log_other: (T,) observation log densities of beat
    and non-beat states. Returns ((T,) flat state indices, log probability); the path is empty
    when every path has probability 0 (log probability -inf)."""
    (path, log_probability), = viterbi_paths(log_beat[np.newaxis], log_other[np.newaxis], space)
    return path, log_probability


def viterbi_paths(log_beat: np.ndarray, log_other: np.ndarray,
                  space: BeatStateSpace) -> list[tuple[np.ndarray, float]]:
    """`viterbi_path` for B sequences of one length at once. log_beat, log_other: (B, T).

    Inside a beat the scores only move one position per frame, so instead of shifting S scores
    every frame each interval keeps its I_k scores in a ring: at frame t the state at position p
    lives in slot (t - p) mod I_k. The slot of position 0 at frame t is the one that held the
    last position at t - 1, so the beat boundary reads and overwrites the same K slots. Every
    score is still the one sum, in the same order, that madmom computes, so paths and log
    probabilities are the same to the bit; the batch shares numpy's per-call overhead."""
    num_sequences, num_frames = log_beat.shape
    rows = np.arange(num_sequences)[:, np.newaxis]
    to_interval = np.arange(len(space.intervals))
    tempo_change = np.ascontiguousarray(space.log_tempo_change.T)  # (K to, K from): argmax on the last axis
    ring_start, ring_length, position = _rings(space)
    beat_state = np.flatnonzero(space.is_beat)  # (NB,) the first positions of every interval
    scores = np.broadcast_to(np.log(np.full(space.num_states, 1.0 / space.num_states)),  # uniform start
                             (num_sequences, space.num_states)).copy()  # (B, S) ring slots
    came_from = np.empty((num_frames, num_sequences, len(space.intervals)), dtype=np.int32)  # (T, B, K) winning j
    for frame in range(num_frames):
        entry = space.first + frame % space.intervals  # (K,) slots: last position at t-1, position 0 at t
        boundary = scores[:, np.newaxis, entry] + tempo_change  # (B, K to, K from)
        best = boundary.argmax(axis=2)  # first maximum = lowest predecessor, madmom's tie-break
        came_from[frame] = best
        scores[:, entry] = boundary[rows, to_interval, best]
        beat_slots = ring_start[beat_state] + (frame - position[beat_state]) % ring_length[beat_state]
        before = scores[:, beat_slots]
        scores += log_other[:, frame, np.newaxis]
        scores[:, beat_slots] = before + log_beat[:, frame, np.newaxis]
    scores = scores[:, ring_start + (num_frames - 1 - position) % ring_length]  # back to the flat state order
    results = []
    for sequence in range(num_sequences):
        final = int(np.argmax(scores[sequence]))  # lowest state on ties, as madmom
        log_probability = float(scores[sequence, final])
        if num_frames == 0 or np.isneginf(log_probability):
            results.append((np.empty(0, dtype=np.int64), log_probability))
        else:
            results.append((_backtrack(final, came_from[:, sequence], space), log_probability))
    return results


def _rings(space: BeatStateSpace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every flat state (S,): the first slot of its interval's ring (= the interval's first
    state), the ring's length (the interval) and the state's integer position in the beat."""
    interval_of = np.repeat(np.arange(len(space.intervals)), space.intervals)
    ring_start = space.first[interval_of]
    return ring_start, space.intervals[interval_of], np.arange(space.num_states) - ring_start


def _backtrack(final: int, came_from: np.ndarray, space: BeatStateSpace) -> np.ndarray:
    """Follow one beat at a time: inside a beat the predecessor is the previous position, so
    only a beat's first frame needs the stored tempo-change winner."""
    interval_of = np.repeat(np.arange(len(space.intervals)), space.intervals)  # (S,)
    path = np.empty(len(came_from), dtype=np.int64)
    frame, state = len(came_from) - 1, final
    while frame >= 0:
        interval = interval_of[state]
        start = max(frame - (state - space.first[interval]), 0)  # frame of this beat's position 0
        path[start:frame + 1] = state - np.arange(frame - start, -1, -1)
        state = space.last[came_from[start, interval]]
        frame = start - 1
    return path


def dbn_beats(activations: np.ndarray, fps: float, min_bpm: float = MIN_BPM, max_bpm: float = MAX_BPM,
              num_tempi: int | None = None, transition_lambda: float = TRANSITION_LAMBDA,
              observation_lambda: float = OBSERVATION_LAMBDA, threshold: float = 0.0,
              correct: bool = True) -> np.ndarray:
    """Beat times (seconds, ascending) decoded from (T,) beat activations in [0, 1] at `fps`
    frames per second, as madmom's DBNBeatTrackingProcessor(fps=fps, ...).process_offline.

    threshold: if > 0, decode only from the first to the last frame with activation ≥ threshold.
    correct: True puts each beat on the activation maximum inside the run of beat states the
    path passes through (madmom's default); False takes the frames where the beat position
    wraps around, kept only if they are beat states.

    Logs are taken in the activations' own dtype, as madmom does (float32 probe outputs decode
    exactly as madmom would decode them). Activations of exactly 0 or 1 make some states
    impossible; if that leaves no possible path (madmom then fails), we warn and decode the
    activations clipped to [1e-7, 1 - 1e-7] instead.
    """
    return dbn_beats_batch([activations], fps, min_bpm, max_bpm, num_tempi, transition_lambda,
                           observation_lambda, threshold, correct)[0]


def dbn_beats_batch(sequences: Sequence[np.ndarray], fps: float, min_bpm: float = MIN_BPM,
                    max_bpm: float = MAX_BPM, num_tempi: int | None = None,
                    transition_lambda: float = TRANSITION_LAMBDA, observation_lambda: float = OBSERVATION_LAMBDA,
                    threshold: float = 0.0, correct: bool = True) -> list[np.ndarray]:
    """`dbn_beats` of each (T_i,) sequence, with the same result to the bit. Sequences of one
    length (after the threshold crop) and dtype share one Viterbi pass: a probe's validation
    clips all have one length, and decoding them together is what makes the DBN cheap enough
    to monitor every epoch."""
    space = beat_state_space(float(fps), float(min_bpm), float(max_bpm), num_tempi,
                             float(transition_lambda), float(observation_lambda))
    crops = [_crop_to_threshold(activations, threshold) if threshold else (activations, 0)
             for activations in (_check_activations(activations, fps) for activations in sequences)]
    groups: dict[tuple, list[int]] = {}
    for index, (activations, _) in enumerate(crops):
        if activations.any():  # madmom: nothing above 0 (or nothing left) -> no beats
            groups.setdefault((len(activations), activations.dtype), []).append(index)
    results = [np.empty(0, dtype=np.float64)] * len(crops)
    for indices in groups.values():
        log_beat, log_other = _log_densities(np.stack([crops[index][0] for index in indices]), observation_lambda)
        for index, (path, _) in zip(indices, viterbi_paths(log_beat, log_other, space)):
            activations, first = crops[index]
            if path.size == 0:
                path = _rescue_path(activations, observation_lambda, space)
            frames = (_beats_on_peaks(space.is_beat[path], activations) if correct
                      else _beats_on_wraps(path, space))
            results[index] = (frames + first) / float(fps)
    return results


def _rescue_path(activations: np.ndarray, observation_lambda: float, space: BeatStateSpace) -> np.ndarray:
    warnings.warn("dbn_beats: activations of exactly 0/1 leave no possible beat path; "
                  f"decoding them clipped to [{_RESCUE_EPSILON}, 1 - {_RESCUE_EPSILON}]", RuntimeWarning)
    rescued = np.clip(activations.astype(np.float64), _RESCUE_EPSILON, 1 - _RESCUE_EPSILON)
    return viterbi_path(*_log_densities(rescued, observation_lambda), space)[0]


def _log_densities(activations: np.ndarray, observation_lambda: float) -> tuple[np.ndarray, np.ndarray]:
    """(..., T) log densities of beat and non-beat states (madmom's RNNBeatTrackingObservationModel)."""
    with np.errstate(divide="ignore"):
        log_beat = np.log(activations).astype(np.float64)
        log_other = np.log((1.0 - activations) / (observation_lambda - 1)).astype(np.float64)
    return log_beat, log_other


def _crop_to_threshold(activations: np.ndarray, threshold: float) -> tuple[np.ndarray, int]:
    """The span from the first to the last frame ≥ threshold, and its first frame."""
    above = np.flatnonzero(activations >= threshold)
    if above.size == 0:
        return activations[:0], 0
    return activations[above[0]:above[-1] + 1], int(above[0])


def _beats_on_peaks(in_beat_states: np.ndarray, activations: np.ndarray) -> np.ndarray:
    """One beat per run of beat states along the path: the run's activation maximum (first
    one on ties, as np.argmax in madmom)."""
    edges = np.diff(np.concatenate(([0], in_beat_states.astype(np.int8), [0])))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return np.array([start + np.argmax(activations[start:stop]) for start, stop in zip(starts, stops)],
                    dtype=np.int64)


def _beats_on_wraps(path: np.ndarray, space: BeatStateSpace) -> np.ndarray:
    """madmom's correct=False: strict local minima of the beat position (cyclic ends), if beat states."""
    frames = scipy.signal.argrelmin(space.positions[path], mode="wrap")[0]
    return frames[space.is_beat[path[frames]]].astype(np.int64)


def peak_pick_beats(activations: np.ndarray, fps: float, threshold: float = 0.5,
                    min_interval_seconds: float = 60.0 / MAX_BPM) -> np.ndarray:
    """Fallback decoder (and fast training monitor): local maxima of the activations that reach
    `threshold`, at least `min_interval_seconds` apart (default: the DBN's fastest tempo,
    215 BPM). Where two peaks are closer, the lower one goes (scipy.signal.find_peaks'
    `distance` rule). The first and last frames can be beats. Returns seconds."""
    activations = _check_activations(activations, fps)
    distance = max(1, int(round(min_interval_seconds * fps)))
    padded = np.pad(activations.astype(np.float64), 1, constant_values=-1.0)  # edges may peak
    peaks, _ = scipy.signal.find_peaks(padded, height=threshold, distance=distance)
    return (peaks - 1) / float(fps)


def _check_activations(activations: np.ndarray, fps: float) -> np.ndarray:
    activations = np.asarray(activations)
    if activations.ndim != 1:
        raise ValueError(f"beat activations must be 1-D (T,), found shape {activations.shape}")
    if not np.issubdtype(activations.dtype, np.floating):
        activations = activations.astype(np.float64)
    if not np.isfinite(activations).all() or (activations < 0).any() or (activations > 1).any():
        raise ValueError("beat activations must be probabilities in [0, 1] (softmax or sigmoid of the "
                         f"probe's logits); found min {np.nanmin(activations)}, "
                         f"max {np.nanmax(activations)}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, found {fps}")
    return activations

"""madmom's beat DBN assembled from madmom-infer's parts: the reference of our decoder in
tests/evaluate/test_beats.py and the baseline of benchmarks/beat_decode_speed.py.

madmom-infer has no beat-only DBN processor, so this builds one from its BeatStateSpace,
BeatTransitionModel, RNNBeatTrackingObservationModel and HiddenMarkovModel, and applies madmom's
DBNBeatTrackingProcessor.process_offline post-processing around it (threshold crop, beat-range
correction, frames -> seconds). Needs madmom-infer (the `test` extra)."""

from __future__ import annotations

import numpy as np
import scipy.signal
from madmom_infer.features import beats_hmm as madmom_beats_hmm
from madmom_infer.features import downbeats as madmom_downbeats
from madmom_infer.ml import hmm as madmom_hmm


class ObservationModel(madmom_beats_hmm.RNNBeatTrackingObservationModel):
    """madmom-infer's log_densities calls np.asarray(..., ndmin=1), a TypeError on numpy 2.4;
    same densities, computed in the input's dtype like madmom."""

    def log_densities(self, observations):
        observations = np.atleast_1d(np.asarray(observations))
        densities = np.empty((len(observations), 2), dtype=float)
        densities[:, 0] = np.log((1.0 - observations) / (self.observation_lambda - 1))
        densities[:, 1] = np.log(observations)
        return densities


def madmom_dbn(fps, min_bpm=55.0, max_bpm=215.0, num_tempi=None, transition_lambda=100.0, observation_lambda=16):
    """(state space, observation model, HMM) with madmom's DBNBeatTrackingProcessor defaults."""
    space = madmom_beats_hmm.BeatStateSpace(60.0 * fps / max_bpm, 60.0 * fps / min_bpm, num_tempi)
    transitions = madmom_beats_hmm.BeatTransitionModel(space, transition_lambda)
    observations = ObservationModel(space, observation_lambda)
    return space, observations, madmom_hmm.HiddenMarkovModel(transitions, observations)


def madmom_beats(activations, fps, threshold=0.0, correct=True, dbn=None, **settings):
    """madmom's DBNBeatTrackingProcessor.process_offline around madmom-infer's HMM. `dbn`: a
    `madmom_dbn(fps, **settings)` built once, for callers that decode many clips."""
    space, observations, hmm = dbn or madmom_dbn(fps, **settings)
    first = 0
    if threshold:
        activations, first = madmom_downbeats.threshold_activations(activations, threshold)
    if not activations.any():
        return np.empty(0)
    with np.errstate(divide="ignore"):
        path, _ = hmm.viterbi(activations)
    if correct:
        beat_range = observations.pointers[path]
        idx = np.nonzero(np.diff(beat_range.astype(int)))[0] + 1
        if beat_range[0]:
            idx = np.r_[0, idx]
        if beat_range[-1]:
            idx = np.r_[idx, beat_range.size]
        frames = [np.argmax(activations[left:right]) + left for left, right in idx.reshape((-1, 2))]
    else:
        frames = scipy.signal.argrelmin(space.state_positions[path], mode="wrap")[0]
        frames = frames[observations.pointers[path[frames]] == 1]
    return (np.asarray(frames, dtype=int) + first) / float(fps)

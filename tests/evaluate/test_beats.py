"""Beat decoding: parity of our DBN with madmom-infer's HMM parts, and the peak-picking fallback.

madmom-infer has no beat-only DBN processor: the reference (tests/evaluate/madmom_reference.py)
assembles one from its parts, with madmom's process_offline post-processing around it. Nothing
here loads weights.

Parity is exact (same Viterbi path to the state, same log probability to the bit, same beat
times): our decoder adds the same float64 terms in the same order and breaks ties the same way
(lowest predecessor, lowest final state), so there is no rounding slack to allow for.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from musicssl.evaluate import beats, metrics

pytest.importorskip("madmom_infer")
from tests.evaluate.madmom_reference import madmom_beats as _madmom_beats  # noqa: E402
from tests.evaluate.madmom_reference import madmom_dbn as _madmom_dbn  # noqa: E402

FPS = 50.0  # HuBERT / data2vec / music2vec token rate (docs/evaluation.md §2.9)


# ----------------------------------------------------------------------------- activations

def _beat_times(bpm: float, start: float, stop: float) -> np.ndarray:
    return np.arange(start, stop, 60.0 / bpm)


def _clean(beat_times: np.ndarray, seconds: float, fps: float = FPS) -> np.ndarray:
    """A sharp bump on the frame of each beat (0.9) and its neighbours (0.3) over a 0.01 floor."""
    activations = np.full(int(seconds * fps), 0.01)
    frames = np.round(beat_times * fps).astype(int)
    for offset, value in ((-1, 0.3), (1, 0.3), (0, 0.9)):
        activations[np.clip(frames + offset, 0, len(activations) - 1)] = value
    return activations


def _noisy(beat_times: np.ndarray, seconds: float, seed: int, fps: float = FPS) -> np.ndarray:
    """Clean bumps, some missing, plus uniform noise and spurious peaks."""
    rng = np.random.default_rng(seed)
    kept = beat_times[rng.random(len(beat_times)) < 0.85]
    activations = 0.6 * _clean(kept, seconds, fps) + 0.35 * rng.random(int(seconds * fps))
    spurious = rng.integers(0, len(activations), 8)
    activations[spurious] = rng.uniform(0.4, 0.9, 8)
    return np.clip(activations, 0.001, 0.999)


def _tempo_change() -> tuple[np.ndarray, np.ndarray]:
    """120 BPM up to 9.9 s, then 96 BPM (beat period 25 -> 31.25 frames at a beat)."""
    first = _beat_times(120, 0.4, 10.0)
    times = np.concatenate([first, np.arange(first[-1] + 0.625, 20.0, 0.625)])
    return times, _clean(times, 20.0)


SEQUENCES = {
    "clean_120": lambda: _clean(_beat_times(120, 0.3, 20.0), 20.0),
    "clean_90": lambda: _clean(_beat_times(90, 0.1, 20.0), 20.0),
    "noisy_120": lambda: _noisy(_beat_times(120, 0.2, 20.0), 20.0, seed=1),
    "noisy_90": lambda: _noisy(_beat_times(90, 0.5, 20.0), 20.0, seed=2),
    "tempo_change": lambda: _tempo_change()[1],
    "pure_noise": lambda: np.random.default_rng(3).uniform(0.0, 0.6, 1000),
}


# ----------------------------------------------------------------------------- parity

@pytest.mark.parametrize("name", list(SEQUENCES))
def test_viterbi_path_equals_madmom_infer(name):
    activations = SEQUENCES[name]()
    _, _, hmm = _madmom_dbn(FPS)
    expected_path, expected_log_probability = hmm.viterbi(activations)
    space = beats.beat_state_space(FPS)
    path, log_probability = beats.viterbi_path(*beats._log_densities(activations, 16), space)
    np.testing.assert_array_equal(path, expected_path)
    assert log_probability == expected_log_probability


@pytest.mark.parametrize("name", list(SEQUENCES))
def test_dbn_beats_equal_madmom_infer(name):
    activations = SEQUENCES[name]()
    expected = _madmom_beats(activations, FPS)
    np.testing.assert_array_equal(beats.dbn_beats(activations, FPS), expected)
    assert len(expected) > 10


@pytest.mark.parametrize("options", [
    dict(threshold=0.3),                         # crop to the first..last frame >= 0.3, then offset
    dict(correct=False),                         # beats where the beat position wraps
    dict(num_tempi=30),                          # log-spaced tempo grid
    dict(transition_lambda=10.0, observation_lambda=8, min_bpm=60.0, max_bpm=180.0),
])
def test_dbn_options_equal_madmom_infer(options):
    activations = SEQUENCES["noisy_90"]()
    activations[:40] = 0.05  # a quiet intro for the threshold to crop
    expected = _madmom_beats(activations, FPS, **options)
    np.testing.assert_array_equal(beats.dbn_beats(activations, FPS, **options), expected)
    assert len(expected) > 10


def test_float32_activations_at_75_fps_equal_madmom_infer():
    # MERT-v1's 75-Hz frames; probe probabilities arrive as float32 (logs taken in float32, as madmom)
    activations = _noisy(_beat_times(128, 0.25, 15.0), 15.0, seed=4, fps=75.0).astype(np.float32)
    np.testing.assert_array_equal(beats.dbn_beats(activations, 75.0), _madmom_beats(activations, 75.0))


# ----------------------------------------------------------------------------- behaviour

# The first beat comes within one beat period: before a longer silent intro the DBN, whose path
# must pass through beat states at least once per period, would put a beat in the silence.
@pytest.mark.parametrize("bpm, start", [(120, 0.3), (90, 0.1), (140, 0.2)])
def test_clean_activations_give_perfect_f(bpm, start):
    truth = _beat_times(bpm, start, 30.0)
    estimate = beats.dbn_beats(_clean(truth, 30.0), FPS)
    scores = metrics.beat_f_measure([truth], [estimate])
    assert scores["beat_f"] == 1.0
    assert len(estimate) == len(truth)
    assert np.abs(estimate - truth).max() <= 0.5 / FPS + 1e-9  # frame quantisation only


def test_tempo_change_is_followed():
    truth, activations = _tempo_change()
    scores = metrics.beat_f_measure([truth], [beats.dbn_beats(activations, FPS)])
    assert scores["beat_f"] == 1.0


def test_silence_gives_no_beats():
    assert beats.dbn_beats(np.zeros(500), FPS).size == 0
    assert beats.dbn_beats(np.full(500, 0.1), FPS, threshold=0.5).size == 0
    assert beats.dbn_beats(np.zeros(0), FPS).size == 0


def test_impossible_path_is_rescued_with_a_warning():
    # Exactly 1.0 for 20 frames forbids every non-beat state there, and no beat region is that
    # long: madmom's Viterbi finds no path (it warns and returns nothing); we warn and clip.
    activations = _clean(_beat_times(120, 0.3, 10.0), 10.0)
    activations[100:120] = 1.0
    _, _, hmm = _madmom_dbn(FPS)
    with warnings.catch_warnings(), np.errstate(divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        assert hmm.viterbi(activations)[0].size == 0
    with pytest.warns(RuntimeWarning, match="no possible beat path"):
        estimate = beats.dbn_beats(activations, FPS)
    truth = _beat_times(120, 0.3, 10.0)
    assert metrics.beat_f_measure([truth], [estimate])["beat_recall"] == 1.0


def test_invalid_activations_raise():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        beats.dbn_beats(np.array([0.2, 1.5, 0.1]), FPS)
    with pytest.raises(ValueError, match="1-D"):
        beats.dbn_beats(np.zeros((10, 2)), FPS)
    with pytest.raises(ValueError, match="min_bpm"):
        beats.dbn_beats(np.full(10, 0.5), FPS, min_bpm=200.0, max_bpm=100.0)


def test_state_space_size_at_50_fps():
    space = beats.beat_state_space(FPS)
    # periods round(3000/215) = 14 .. round(3000/55) = 55 frames
    np.testing.assert_array_equal(space.intervals, np.arange(14, 56))
    assert space.num_states == sum(range(14, 56)) == 1449
    # beat states: positions p / I < 1/16, e.g. p in {0, 1} for I = 25 (120 BPM), {0..3} for I = 55
    assert space.is_beat[space.first[25 - 14]:space.last[25 - 14] + 1].sum() == 2
    assert space.is_beat[space.first[-1]:].sum() == 4


# ----------------------------------------------------------------------------- peak picking

def test_peak_picking_on_known_input():
    activations = np.zeros(100)
    activations[[0, 30, 35, 60, 99]] = [0.9, 0.8, 0.6, 0.4, 0.7]
    # 0.4 is under the threshold; 35 is 5 frames after the higher peak at 30, closer than
    # round(60/215 * 50) = 14 frames; the first and last frames can be beats
    np.testing.assert_array_equal(beats.peak_pick_beats(activations, FPS), np.array([0, 30, 99]) / FPS)
    np.testing.assert_array_equal(beats.peak_pick_beats(activations, FPS, threshold=0.3, min_interval_seconds=0.05),
                                  np.array([0, 30, 35, 60, 99]) / FPS)


def test_peak_picking_on_clean_activations_is_perfect():
    truth = _beat_times(120, 0.3, 20.0)
    estimate = beats.peak_pick_beats(_clean(truth, 20.0), FPS)
    assert metrics.beat_f_measure([truth], [estimate])["beat_f"] == 1.0


def test_batched_decoding_equals_one_sequence_at_a_time():
    # Equal lengths share one Viterbi pass, the others go alone; a float32 sequence must not be
    # stacked with float64 ones (its logs are taken in float32, as madmom). Order is kept.
    sequences = [SEQUENCES[name]() for name in ("clean_120", "noisy_90", "pure_noise", "tempo_change",
                                                 "noisy_120", "clean_90")]
    sequences += [sequences[1][:700], np.zeros(500), sequences[2].astype(np.float32)]
    lengths = {len(sequence) for sequence in sequences}
    assert len(lengths) < len(sequences) - 2  # most of them are batched with others
    for options in (dict(), dict(threshold=0.3, correct=False)):
        batched = beats.dbn_beats_batch(sequences, FPS, **options)
        assert len(batched) == len(sequences)
        for sequence, result in zip(sequences, batched):
            np.testing.assert_array_equal(result, _madmom_beats(sequence, FPS, **options) if sequence.any()
                                          else np.empty(0))


def test_batched_viterbi_paths_equal_madmom_infer():
    activations = np.stack([SEQUENCES[name]() for name in ("clean_120", "noisy_90", "noisy_120")])
    _, _, hmm = _madmom_dbn(FPS)
    results = beats.viterbi_paths(*beats._log_densities(activations, 16), beats.beat_state_space(FPS))
    for row, (path, log_probability) in zip(activations, results):
        expected_path, expected_log_probability = hmm.viterbi(row)
        np.testing.assert_array_equal(path, expected_path)
        assert log_probability == expected_log_probability

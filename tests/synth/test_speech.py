"""The speech synthesiser: deterministic per seed, and speech-like rather than music-like.

The statistic: the share of 10-ms frames 35 dB below the clip's loud frames (`pause_share`).
Speech stops between phrases and at consonant closures (10-20 % of frames in read speech);
mixed music holds a sustained bed of notes and falls silent almost never. On the music
synthesiser's songs it is 0.00 for every clip tried, on both speech engines 0.06-0.21. The 2-8 Hz
share of the envelope's modulation spectrum, the textbook syllable-rate cue, overlaps: the
generated songs' note rates put 0.18-0.74 of their modulation there (speech 0.53-0.74), so it
is reported, not tested.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from musicssl.synth.songs import render, sample_song
from musicssl.synth.speech import (FORMANT_VOICES, SAMPLE_RATE, espeak_available, generate_clips, speech_statistics,
                                   synthesize_speech)


def clips(engine: str, seed: int, hours: float = 0.01):
    return [(voice, audio) for voice, _, audio in generate_clips(hours, seed, engine)]


def test_formant_speech_is_deterministic_per_seed():
    first, again, other = (clips("formant", seed, hours=0.003) for seed in (3, 3, 4))
    assert [v for v, _ in first] == ([v.name for v in FORMANT_VOICES] * 9)[: len(first)]   # voices in turn
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(first, again))
    assert not np.array_equal(first[0][1], other[0][1])


def music_pause_shares(count: int = 5) -> list[float]:
    return [speech_statistics(render(sample_song(np.random.default_rng(100 + i), 6.0))[0])["pause_share"]
            for i in range(count)]


@pytest.mark.parametrize("engine", ["formant", pytest.param("espeak", marks=pytest.mark.skipif(
    not espeak_available(), reason="optional espeakng-loader not installed"))])
def test_speech_pauses_where_music_does_not(engine):
    speech = [speech_statistics(audio)["pause_share"] for _, audio in clips(engine, 0)]
    assert len(speech) >= 4 and min(speech) > 0.04, speech
    assert max(music_pause_shares()) < 0.01


def test_the_corpus_is_16_khz_files_per_voice_and_refuses_a_used_folder(tmp_path):
    summary = synthesize_speech(tmp_path / "speech", 0.004, seed=1, engine="formant")
    files = sorted((tmp_path / "speech").rglob("*.wav"))
    assert len(files) == summary["files"] >= 2 and {f.parent.name for f in files} == set(summary["voices"])
    assert {sf.info(str(f)).samplerate for f in files} == {SAMPLE_RATE}
    with pytest.raises(FileExistsError, match="not empty"):
        synthesize_speech(tmp_path / "speech", 0.004, engine="formant")


@pytest.mark.skipif(not espeak_available(), reason="optional espeakng-loader not installed")
def test_espeak_speech_is_deterministic_per_seed_across_processes():
    # eSpeak keeps state between utterances inside a process: the corpus is fixed per seed as a
    # whole (clips in order), which is what two fresh processes must agree on
    import subprocess
    import sys

    script = ("import hashlib; from musicssl.synth.speech import generate_clips; "
              "print([hashlib.sha1(a.tobytes()).hexdigest() for _, _, a in generate_clips(0.003, 5, 'espeak')])")
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    assert runs[0] == runs[1] and runs[0].count("'") >= 2

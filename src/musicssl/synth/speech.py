"""Speech-like audio for the study's speech-domain control, generated offline and kept apart from
the music synthesiser (nothing here imports it, nor it this).

Two engines, one layout (OUT/<voice>/<voice>_<n>.wav, 16 kHz mono PCM, and OUT/speech.json):
- "espeak": eSpeak NG through the optional `espeakng-loader` package (it ships libespeak-ng and
  the voice data; nothing is downloaded). Pseudo-words of consonant-vowel syllables read by
  several languages' voices at varied pitch, pitch range and rate: real articulation and
  prosody, no text corpus needed.
- "formant": a numpy source-filter synthesiser, the fallback: glottal pulses on a jittered,
  declining F0 contour with accents, three formants gliding between vowel targets, fricative
  noise bursts, syllables at ~4-5 a second, pauses between phrases, several voices.
Both are deterministic per seed: the same seed and hours give the same files. With the formant
engine clip n depends only on (seed, n); eSpeak carries state from one utterance to the next
inside a process (the same clip synthesised again differs), so its clip n also depends on the
clips before it, which the seed fixes (checked across processes).

`speech_statistics` is the test's contrast with music (docs/study.md#the-speech-corpus).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000
CLIP_SECONDS = (4.0, 10.0)

# Formant targets (Hz) of cardinal vowels: Peterson & Barney's adult male means, rounded.
VOWELS = {"i": (270, 2290, 3010), "e": (530, 1840, 2480), "a": (730, 1090, 2440), "o": (570, 840, 2410),
          "u": (300, 870, 2240), "@": (500, 1500, 2500)}


@dataclass(frozen=True)
class Voice:
    name: str
    f0: float              # mean speaking F0 (Hz)
    formant_scale: float   # vocal-tract length: women ~1.15, children ~1.3 of men's formants
    rate: float            # syllables a second


FORMANT_VOICES = (Voice("m1", 110, 1.0, 4.2), Voice("m2", 130, 1.03, 4.8), Voice("f1", 205, 1.15, 4.5),
                  Voice("f2", 230, 1.18, 5.0), Voice("c1", 280, 1.3, 3.8))
# eSpeak NG voice names shipped in espeakng-loader's data: several languages (and so prosodies)
ESPEAK_VOICES = ("en", "de", "fr", "es", "it", "pl", "nl", "pt")


def synthesize_speech(out_dir: str | Path, hours: float, seed: int = 0, engine: str = "auto") -> dict:
    """Write about `hours` of speech under `out_dir` (new or empty); returns the summary written
    to speech.json."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir}: not empty; speech is written to a new or empty folder")
    if engine == "auto":
        engine = "espeak" if espeak_available() else "formant"
    if engine not in ("espeak", "formant"):
        raise ValueError(f"unknown speech engine {engine!r}: espeak or formant")
    import soundfile as sf

    clips = list(generate_clips(hours, seed, engine))
    for voice, index, audio in clips:
        folder = out_dir / voice
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / f"{voice}_{index:05d}.wav", audio, SAMPLE_RATE, subtype="PCM_16")
    seconds = sum(len(audio) for _, _, audio in clips) / SAMPLE_RATE
    summary = {"engine": engine, "seed": seed, "files": len(clips), "hours": round(seconds / 3600, 4),
               "sample_rate": SAMPLE_RATE, "voices": sorted({voice for voice, _, _ in clips})}
    (out_dir / "speech.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def generate_clips(hours: float, seed: int, engine: str):
    """(voice name, index, float32 audio at 16 kHz) until `hours` of audio, in order (see the
    module's docstring on determinism)."""
    total, index = 0.0, 0
    while total < hours * 3600:
        rng = np.random.default_rng([seed, index])
        seconds = float(rng.uniform(*CLIP_SECONDS))
        if engine == "espeak":
            voice = ESPEAK_VOICES[index % len(ESPEAK_VOICES)]
            audio = espeak_clip(voice, seconds, rng)
        else:
            voice_spec = FORMANT_VOICES[index % len(FORMANT_VOICES)]
            voice, audio = voice_spec.name, formant_clip(voice_spec, seconds, rng)
        yield voice, index, audio
        total += len(audio) / SAMPLE_RATE
        index += 1


# ---------------------------------------------------------------- formant engine


def formant_clip(voice: Voice, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Phrases of syllables separated by pauses; each syllable an optional fricative onset and a
    voiced vowel whose formants glide from the previous vowel's."""
    n = int(seconds * SAMPLE_RATE)
    voiced_gain, noise_gain = np.zeros(n), np.zeros(n)
    f0 = np.full(n, float(voice.f0))
    formants = np.zeros((n, 3))
    t, previous = int(rng.uniform(0.05, 0.3) * SAMPLE_RATE), VOWELS["@"]
    formants[:] = previous
    while t < n - SAMPLE_RATE // 5:
        phrase_end = min(n, t + int(rng.uniform(1.2, 3.0) * SAMPLE_RATE))
        phrase_start = t
        while t < phrase_end:
            length = int(SAMPLE_RATE / voice.rate * rng.uniform(0.6, 1.4))
            onset = int(length * rng.uniform(0.2, 0.4)) if rng.random() < 0.6 else 0
            end = min(n, t + length)
            if onset:  # fricative: noise, its level varying by consonant
                noise_gain[t:t + onset] = rng.uniform(0.15, 0.5) * np.hanning(min(onset, n - t))
            target = np.array(VOWELS[rng.choice(list(VOWELS))]) * voice.formant_scale
            vowel = end - (t + onset)
            if vowel > 0:
                glide = np.clip(np.arange(vowel) / (0.4 * vowel), 0, 1)[:, None]  # co-articulation
                formants[t + onset:end] = previous + (target - previous) * glide
                voiced_gain[t + onset:end] = np.sin(np.linspace(0, np.pi, vowel)) ** 0.7 * rng.uniform(0.6, 1.0)
                accent = 1 + (0.25 * rng.random() if rng.random() < 0.3 else 0.0)
                f0[t + onset:end] = voice.f0 * accent
            previous = target
            t = end
        # declination over the phrase, then a pause
        span = slice(phrase_start, min(t, n))
        f0[span] *= np.linspace(1.12, 0.85, span.stop - span.start)
        t += int(rng.uniform(0.15, 0.6) * SAMPLE_RATE)
        formants[min(t, n):] = previous
    # F0: smoothed steps plus jitter (a slow random walk of a few per cent)
    kernel = np.hanning(801)
    f0 = np.convolve(np.pad(f0, 400, mode="edge"), kernel / kernel.sum(), mode="valid")
    f0 *= np.exp(np.cumsum(rng.normal(0, 0.0015, n)) * 0.05 + rng.normal(0, 0.01, n))
    phase = np.cumsum(f0 / SAMPLE_RATE)
    pulses = np.diff(np.floor(phase), prepend=0.0)  # one impulse per glottal period
    voiced = _filter_frames(pulses * voiced_gain, formants, voice_bandwidths=(60, 90, 150))
    noise = _highpass(rng.normal(0, 1, n), 2500.0) * noise_gain
    audio = voiced / (np.abs(voiced).max() + 1e-9) + 0.6 * noise
    return (0.5 * audio / (np.abs(audio).max() + 1e-9)).astype(np.float32)


def _filter_frames(source: np.ndarray, formants: np.ndarray, voice_bandwidths: tuple[float, ...],
                   frame: int = 512, hop: int = 128) -> np.ndarray:
    """Time-varying formant filtering by overlap-add: each frame's spectrum times the cascade of
    second-order resonances at that frame's formants, with a -12 dB/octave glottal tilt."""
    n = len(source)
    padded = np.pad(source, (frame, frame))
    window = np.hanning(frame)
    freqs = np.fft.rfftfreq(frame, 1 / SAMPLE_RATE)
    tilt = 1 / (1 + (freqs / 100.0) ** 2)
    out = np.zeros(len(padded))
    for start in range(0, len(padded) - frame, hop):
        centre = min(n - 1, max(0, start + frame // 2 - frame))
        gain = tilt.copy()
        for formant, bandwidth in zip(formants[centre], voice_bandwidths):
            gain *= formant ** 2 / np.sqrt((formant ** 2 - freqs ** 2) ** 2 + (bandwidth * freqs) ** 2)
        spectrum = np.fft.rfft(padded[start:start + frame] * window) * gain
        out[start:start + frame] += np.fft.irfft(spectrum, frame) * window
    return out[frame:frame + n]


def _highpass(noise: np.ndarray, cutoff: float) -> np.ndarray:
    spectrum = np.fft.rfft(noise)
    freqs = np.fft.rfftfreq(len(noise), 1 / SAMPLE_RATE)
    return np.fft.irfft(spectrum * (freqs > cutoff), len(noise))


# ---------------------------------------------------------------- eSpeak NG engine


def espeak_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("espeakng_loader") is not None


_ESPEAK: dict = {}


def _espeak():
    """libespeak-ng loaded once, in synchronous mode, with a callback that collects samples."""
    if not _ESPEAK:
        import ctypes

        import espeakng_loader

        library = ctypes.cdll.LoadLibrary(espeakng_loader.get_library_path())
        rate = library.espeak_Initialize(2, 0, espeakng_loader.get_data_path().encode(), 0)  # 2: synchronous
        if rate <= 0:
            raise RuntimeError("eSpeak NG did not initialise (espeakng-loader's data folder)")
        chunks: list[np.ndarray] = []
        callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

        def collect(samples, count, events):
            if count > 0:
                chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
            return 0

        callback = callback_type(collect)
        library.espeak_SetSynthCallback(callback)
        _ESPEAK.update(library=library, rate=rate, chunks=chunks, callback=callback)
    return _ESPEAK


def pseudo_text(rng: np.random.Generator, words: int) -> str:
    onsets = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "sh", "ch", "br", "st", "")
    vowels = ("a", "e", "i", "o", "u", "ai", "ou")
    codas = ("", "", "n", "s", "t", "r", "l", "m")
    text = []
    for index in range(words):
        word = "".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas)
                       for _ in range(int(rng.integers(1, 4))))
        text.append(word + ("," if rng.random() < 0.1 else "") + ("." if index % 7 == 6 else ""))
    return " ".join(text) + "."


def espeak_clip(voice: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Pseudo-words read by `voice` at a random rate (wpm), pitch and pitch range, resampled to 16 kHz."""
    import soxr

    engine = _espeak()
    library, chunks = engine["library"], engine["chunks"]
    library.espeak_SetVoiceByName(voice.encode())
    for parameter, low, high in ((1, 130, 210), (3, 20, 80), (4, 30, 90)):  # rate, pitch, range
        library.espeak_SetParameter(parameter, int(rng.integers(low, high)), 0)
    chunks.clear()
    text = pseudo_text(rng, int(seconds * 2.5) + 2).encode()
    library.espeak_Synth(text, len(text) + 1, 0, 0, 0, 0, None, None)
    audio = np.concatenate(chunks).astype(np.float32) / 32768 if chunks else np.zeros(1, np.float32)
    audio = soxr.resample(audio, engine["rate"], SAMPLE_RATE)
    return audio[: int(seconds * SAMPLE_RATE)].astype(np.float32)


# ---------------------------------------------------------------- speech vs music


def speech_statistics(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> dict[str, float]:
    """pause_share: fraction of 10-ms frames 35 dB or more below the clip's 95th-percentile frame
    energy (speech stops between phrases and at closures; mixed music rarely falls silent);
    modulation_share: share of the energy envelope's modulation spectrum (0.5-32 Hz) that lies at
    the syllable rates 2-8 Hz."""
    hop = sample_rate // 100
    frames = len(audio) // hop
    energy = (audio[: frames * hop].reshape(frames, hop).astype(np.float64) ** 2).mean(axis=1) + 1e-12
    level = 10 * np.log10(energy)
    pause_share = float(np.mean(level < np.percentile(level, 95) - 35))
    envelope = np.sqrt(energy) - np.sqrt(energy).mean()
    power = np.abs(np.fft.rfft(envelope * np.hanning(frames))) ** 2
    freqs = np.fft.rfftfreq(frames, 1 / 100)
    band = power[(freqs >= 2) & (freqs <= 8)].sum()
    return {"pause_share": pause_share,
            "modulation_share": float(band / (power[(freqs >= 0.5) & (freqs <= 32)].sum() + 1e-12))}

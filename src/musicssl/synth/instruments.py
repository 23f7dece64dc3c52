"""Instrument voices for the synthetic music generator (`synth/songs.py`), and `perform`, which
plays a list of note events into a mix.

The synthesis methods are plain functions of a fundamental, a length and a few timbre scalars:
`harmonic_tone` (additive, by wavetable, with an evolving spectrum), `partial_sum` (free
inharmonic partials, each with its own decay), `fm_tone` (carrier/modulator ratio, index
envelope), `plucked_string` (Karplus-Strong, tuned exactly with an allpass) and `drum_hit`
(kick: pitched sine sweep; snare: noise + tone; hi-hats: high-passed noise). The eleven NSynth
instrument families (docs/evaluation.md §2.5) are recipes over them. An `Instrument` is one family
member: its timbre is drawn once from (family, index), and every note varies around it
(detune, brightness, envelope), so telling families apart is about timbre, not a fixed waveform.

Everything is mono float32 at 16 kHz, the rate of the models probed (docs/evaluation.md §1.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import signal

SAMPLE_RATE = 16_000
NYQUIST_LIMIT = 0.45 * SAMPLE_RATE  # partials above this would alias

# NSynth's instrument_family_str values, in its order (docs/evaluation.md §2.5)
FAMILIES = ("bass", "brass", "flute", "guitar", "keyboard", "mallet", "organ", "reed", "string",
            "synth_lead", "vocal")
# Playable MIDI range per family (inclusive), close to the real instruments'.
PITCH_RANGE = {"bass": (28, 55), "brass": (45, 82), "flute": (60, 96), "guitar": (40, 84),
               "keyboard": (24, 96), "mallet": (48, 96), "organ": (36, 88), "reed": (48, 86),
               "string": (36, 96), "synth_lead": (40, 96), "vocal": (48, 81)}
# Timbre of an instrument, drawn once per (family, index): tuple = uniform range, list = choice.
TIMBRES: dict[str, dict[str, tuple | list]] = {
    "bass": {"ratio": [1, 2], "index": (1.0, 3.5), "index_decay": (0.04, 0.25), "decay": (0.3, 1.0),
             "sustain": (0.25, 0.6), "release": (0.04, 0.1)},
    "brass": {"tilt": (0.8, 1.3), "flare": (0.08, 0.25), "attack": (0.03, 0.08), "vibrato": (0.0, 12.0),
              "release": (0.08, 0.15)},
    "flute": {"h2": (0.15, 0.5), "h3": (0.05, 0.25), "breath": (0.02, 0.08), "vibrato": (8.0, 25.0),
              "attack": (0.05, 0.12), "release": (0.08, 0.15)},
    "guitar": {"brightness": (0.3, 0.9), "decay": (1.5, 5.0), "pick": (0.08, 0.3), "release": (0.05, 0.1)},
    "keyboard": {"tilt": (1.1, 1.8), "hammer": (0.1, 0.17), "decay": (0.4, 1.2),
                 "release": (0.1, 0.2)},
    "mallet": {"mode2": [3.93, 4.0], "mode3": (9.2, 10.2), "decay": (1.0, 3.0), "tremolo": (0.0, 0.35),
               "release": (0.1, 0.2)},
    "organ": {"drawbars": (0.0, 1.0), "leslie": (0.0, 0.2), "leslie_hz": (0.8, 6.5), "release": (0.04, 0.08)},
    "reed": {"tilt": (0.7, 1.3), "even": (0.05, 0.3), "breath": (0.005, 0.03), "attack": (0.02, 0.06),
             "release": (0.05, 0.1)},
    "string": {"tilt": (0.8, 1.4), "body": (250.0, 550.0), "vibrato": (10.0, 25.0), "attack": (0.08, 0.25),
               "release": (0.15, 0.3)},
    "synth_lead": {"ratio": [1, 2, 3], "index": (1.0, 4.0), "index_decay": (0.2, 1.0), "detune": (4.0, 15.0),
                   "release": (0.05, 0.15)},
    "vocal": {"formant_scale": (0.9, 1.15), "vibrato": (20.0, 45.0), "release": (0.1, 0.2)},
    "drums": {"kick_low": (45.0, 60.0), "kick_sweep": (90.0, 180.0), "kick_decay": (0.2, 0.4),
              "snare_tone": (160.0, 240.0), "snare_decay": (0.1, 0.2), "hat_cutoff": (4500.0, 6500.0),
              "hat_decay": (0.03, 0.06)},
}
# Vowel formants (Hz) of an adult voice, after Peterson & Barney's averages.
VOWELS = ((730, 1090, 2440), (530, 1840, 2480), (270, 2290, 3010), (570, 840, 2410), (300, 870, 2240))
# General MIDI drum notes used for drum events
KICK, SNARE, CLOSED_HAT, OPEN_HAT = 36, 38, 42, 46


def midi_to_hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69.0) / 12.0)


def adsr(held: int, release: int, attack: float, decay: float, sustain: float) -> np.ndarray:
    """(held + release,) float32 envelope: linear attack, exponential decay to `sustain` while the
    note is held, then a smooth fall to exactly 0 over `release` samples (no click at the end)."""
    held = max(held, 1)
    t = np.arange(held, dtype=np.float32) / np.float32(SAMPLE_RATE)
    attack_samples = min(held, max(int(attack * SAMPLE_RATE), 16))
    if sustain >= 1:
        body = np.ones(held, np.float32)
    else:
        body = np.float32(sustain) + np.float32(1 - sustain) * np.exp((t[attack_samples - 1] - t) / np.float32(decay))
    body[:attack_samples] = np.arange(attack_samples, dtype=np.float32) / attack_samples
    tail = body[-1] * (1 - np.arange(release, dtype=np.float32) / max(release, 1)) ** 3
    return np.concatenate([body, tail])


def pitch_track(f0: float, n: int, vibrato_cents: float, rng: np.random.Generator) -> np.ndarray:
    """(n,) instantaneous frequency in Hz: f0 with a vibrato that fades in over 0.3 s."""
    t = np.arange(n, dtype=np.float32) / SAMPLE_RATE
    rate, phase = np.float32(rng.uniform(4.5, 6.5)), np.float32(rng.uniform(0, 2 * np.pi))
    depth = np.float32(vibrato_cents / 1200) * np.minimum(t / 0.3, 1.0)
    return f0 * np.exp2(depth * np.sin(np.float32(2 * np.pi) * rate * t + phase)).astype(np.float64)


TABLE_SIZE = 4096  # samples per wavetable cycle: nearest-sample lookup error is below -60 dB
TABLE_SHIFT = 32 - 12  # phase (32-bit fraction of a cycle) -> table index


def phase_of(freq: float | np.ndarray, n: int) -> np.ndarray:
    """(n,) uint32 phase in units of 2^-32 cycle for `freq` (Hz, scalar or (n,) track). Integer
    overflow wraps exactly like phase, so it stays exact however long the note (and costs less
    than float64 modulo arithmetic)."""
    if np.ndim(freq) == 0:
        return np.arange(n, dtype=np.uint32) * np.uint32(round(float(freq) / SAMPLE_RATE * 2**32))
    steps = np.round(np.asarray(freq, dtype=np.float64) / SAMPLE_RATE * 2**32).astype(np.uint32)
    return np.cumsum(steps, dtype=np.uint32)


@lru_cache(maxsize=128)
def _sine_table(count: int) -> np.ndarray:
    """(count, TABLE_SIZE) float32: one cycle of harmonics 1..count."""
    k = np.arange(1, count + 1, dtype=np.float64)[:, None]
    return np.sin(2 * np.pi * k * np.arange(TABLE_SIZE)[None] / TABLE_SIZE).astype(np.float32)


def harmonic_tone(freq: float | np.ndarray, n: int, amps: np.ndarray, late_amps: np.ndarray | None = None,
                  late_weight: np.ndarray | None = None) -> np.ndarray:
    """Additive synthesis of harmonics 1..K (amplitudes amps (K,)) by wavetable lookup: one
    cycle is summed once per note, then read at the phase of `freq` (Hz, scalar or (n,) track,
    e.g. with vibrato). That costs O(n), not O(K n), which makes the demo corpus fast to
    generate. A second spectrum `late_amps`, crossfaded in by `late_weight` (n,) in [0, 1],
    lets the timbre evolve (a piano darkening as it decays, brass brightening as it swells).
    Harmonics above NYQUIST_LIMIT at the highest frequency are dropped. (n,) float32."""
    count = min(len(amps), max(1, int(NYQUIST_LIMIT // np.max(freq))))
    index = (phase_of(freq, n) + np.uint32(1 << (TABLE_SHIFT - 1))) >> TABLE_SHIFT   # nearest table sample
    index &= TABLE_SIZE - 1
    waves = _sine_table(count)                                                        # (K, T)
    tone = (amps[:count].astype(np.float32) @ waves)[index]
    if late_amps is not None:
        late = (late_amps[:count].astype(np.float32) @ waves)[index]
        tone += late_weight.astype(np.float32) * (late - tone)
    return tone


def partial_sum(f0: float, n: int, ratios: np.ndarray, amps: np.ndarray, decays: np.ndarray) -> np.ndarray:
    """Additive synthesis of free (possibly inharmonic) partials, each decaying on its own:
    sum_k amps[k] exp(-decays[k] t) sin(2 pi ratios[k] f0 t), (n,) float32. O(K n): meant for
    the few modes of struck bars; harmonic tones use the wavetable of `harmonic_tone`."""
    audible = ratios * f0 < NYQUIST_LIMIT
    t = np.arange(n, dtype=np.float64) / SAMPLE_RATE
    phase = ((ratios[audible, None] * f0 * t[None]) % 1.0).astype(np.float32)          # (K, n)
    weights = np.exp(-decays[audible, None].astype(np.float32) * t[None].astype(np.float32))
    return amps[audible].astype(np.float32) @ (np.sin(np.float32(2 * np.pi) * phase) * weights)


def fm_tone(freq: float | np.ndarray, n: int, ratio: int, index: np.ndarray) -> np.ndarray:
    """Two-operator FM: sin(2 pi phase + index(t) sin(2 pi ratio phase)), (n,) float32. An integer
    ratio keeps the spectrum harmonic; the index envelope (n,) sets the brightness over time."""
    carrier = phase_of(freq, n)
    index = np.minimum(index, NYQUIST_LIMIT / (ratio * np.max(freq)) - 1.0)  # Carson bandwidth below Nyquist
    modulator = _sine_table(1)[0][(carrier * np.uint32(ratio)) >> TABLE_SHIFT]   # uint32 product wraps: ratio * phase
    angle = (carrier >> 8).astype(np.float32) * np.float32(2 * np.pi / 2**24)
    return np.sin(angle + index.astype(np.float32) * modulator)


def _loop_delay(omega: float, length: int, damping: float, c: float) -> float:
    """Phase delay (samples) at `omega` of z^-L * loss filter * allpass, the Karplus-Strong loop."""
    z = np.exp(-1j * omega)
    loss = (1 - damping) + damping * z
    allpass = (c + z) / (1 + c * z)
    return length - np.angle(loss * allpass) / omega


def plucked_string(f0: float, n: int, brightness: float, decay: float, pick: float,
                   rng: np.random.Generator) -> np.ndarray:
    """Karplus-Strong: a noise burst circulating in a delay loop with a lowpass loss filter
    (1-s) + s z^-1 and a first-order allpass that makes the loop exactly one period long (the
    integer delay alone would detune high notes by up to half a semitone). (n,) float64."""
    period = SAMPLE_RATE / f0
    omega = 2 * np.pi * f0 / SAMPLE_RATE
    per_period = 10.0 ** (-3.0 * period / (decay * SAMPLE_RATE))     # fundamental at -60 dB after `decay` s
    # loss filter s: darker string, more loss; capped so that it takes at most half of the
    # fundamental's decay in dB (plain KS makes high notes die within a fraction of a second)
    damping = 0.5 - 0.4 * min(max(brightness, 0.0), 1.0)
    cap = (1 - per_period) / (2 * (1 - np.cos(omega)))               # s (1 - s) <= cap
    damping = min(damping, (1 - np.sqrt(1 - 4 * cap)) / 2 if cap < 0.25 else 0.5)
    length = int(np.floor(period - damping - 0.1))
    fraction = period - damping - length
    for _ in range(4):   # fixed-point iteration on the loop's exact phase delay at f0
        c = (1 - fraction) / (1 + fraction)
        fraction += period - _loop_delay(omega, length, damping, c)
    c = (1 - fraction) / (1 + fraction)
    gain = per_period / abs((1 - damping) + damping * np.exp(-1j * omega))   # loop gain at f0 = per_period
    burst = rng.uniform(-1, 1, length)
    burst = signal.lfilter([brightness], [1, brightness - 1], burst)  # one-pole lowpass
    burst = burst - np.roll(burst, max(1, int(pick * length)))       # pick position comb
    excitation = np.zeros(n)
    excitation[:length] = burst[: min(length, n)]
    denominator = np.zeros(length + 3)
    denominator[:2] = (1, c)
    denominator[length:length + 3] -= gain * np.array([(1 - damping) * c, (1 - damping) + damping * c, damping])
    return signal.lfilter([1, c], denominator, excitation)


@lru_cache(maxsize=64)
def _noise_filter(kind: str, low: float, high: float = 0.0) -> np.ndarray:
    band = [low, high] if kind == "bandpass" else low
    return signal.butter(2, band, btype=kind, fs=SAMPLE_RATE, output="sos")


@lru_cache(maxsize=64)
def _noise_bank(kind: str, low: float, high: float) -> np.ndarray:
    """8 s of filtered white noise (fixed seed): notes read random slices of it, far cheaper
    than filtering fresh noise for every hi-hat stroke and every breath."""
    noise = np.random.default_rng(12345).standard_normal(8 * SAMPLE_RATE)
    return signal.sosfilt(_noise_filter(kind, low, high), noise).astype(np.float32)


def filtered_noise(n: int, rng: np.random.Generator, kind: str, low: float, high: float = 0.0) -> np.ndarray:
    """(n,) Butterworth-filtered white noise; cutoffs rounded to 100 Hz so the caches stay small."""
    bank = _noise_bank(kind, round(low, -2), round(high, -2))
    if n > bank.size:
        return np.resize(bank, n)
    start = int(rng.integers(bank.size - n + 1))
    return bank[start:start + n]


def drum_hit(midi: int, velocity: float, timbre: dict, rng: np.random.Generator) -> np.ndarray:
    """One drum stroke, General MIDI numbering (36 kick, 38 snare, 42 closed / 46 open hi-hat)."""
    jitter = rng.uniform(0.9, 1.1)   # no two strokes of a real kit are alike
    if midi == KICK:
        n = int(timbre["kick_decay"] * 2.5 * SAMPLE_RATE)
        t = np.arange(n) / SAMPLE_RATE
        freq = timbre["kick_low"] + timbre["kick_sweep"] * np.exp(-t / 0.04)        # pitch sweep down
        body = np.sin(2 * np.pi * np.cumsum(freq) / SAMPLE_RATE) * np.exp(-t / (timbre["kick_decay"] * jitter / 3))
        body[:48] += 0.5 * rng.standard_normal(48) * np.linspace(1, 0, 48) * velocity  # beater click
        return body
    if midi == SNARE:
        n = int(timbre["snare_decay"] * 2 * SAMPLE_RATE)
        t = np.arange(n) / SAMPLE_RATE
        rattle = filtered_noise(n, rng, "bandpass", 1500.0, 7000.0) * np.exp(-t / (timbre["snare_decay"] * jitter / 3))
        tone = np.sin(2 * np.pi * timbre["snare_tone"] * jitter * t) * np.exp(-t / 0.03)
        return (0.4 + 0.6 * velocity) * rattle / 0.3 + 0.6 * tone
    if midi in (CLOSED_HAT, OPEN_HAT):
        decay = timbre["hat_decay"] * (6.0 if midi == OPEN_HAT else 1.0) * jitter
        n = int(decay * 4 * SAMPLE_RATE)
        t = np.arange(n) / SAMPLE_RATE
        return filtered_noise(n, rng, "highpass", timbre["hat_cutoff"]) * np.exp(-t / (decay / 3)) / 0.25
    raise ValueError(f"drum note {midi}: expected one of {KICK, SNARE, CLOSED_HAT, OPEN_HAT} (General MIDI)")


# --- the eleven families: (f0, held, release, velocity, timbre, rng) -> (held + release,) ---------

def _harmonics(count: int) -> np.ndarray:
    return np.arange(1, count + 1, dtype=np.float64)


def _bass(f0, held, release, v, tb, rng):
    # FM bass: a plucked index envelope (bright attack that darkens) over a decaying amplitude
    n = held + release
    t = np.arange(n) / SAMPLE_RATE
    index = tb["index"] * (0.4 + 0.8 * v) * (0.3 + 0.7 * np.exp(-t / (tb["index_decay"] * rng.uniform(0.8, 1.25))))
    env = adsr(held, release, 0.004, tb["decay"] * rng.uniform(0.8, 1.25), tb["sustain"])
    return env * (fm_tone(f0, n, tb["ratio"], index) + 0.5 * np.sin(2 * np.pi * f0 * t))


def _brass(f0, held, release, v, tb, rng):
    # brass brightens as it swells: the spectrum moves from dull to bright with the envelope
    n, k = held + release, _harmonics(24)
    env = adsr(held, release, tb["attack"] * rng.uniform(0.8, 1.25), 0.3, 0.8)
    bright = k ** -(tb["tilt"] + rng.normal(0, 0.08))
    dull = bright * np.exp(-tb["flare"] * (1.6 - v) * 3 * (k - 1))
    return env * harmonic_tone(pitch_track(f0, n, tb["vibrato"], rng), n, dull, bright, env * (0.3 + 0.7 * v))


def _flute(f0, held, release, v, tb, rng):
    n, k = held + release, _harmonics(6)
    env = adsr(held, release, tb["attack"] * rng.uniform(0.8, 1.25), 0.3, 0.9)
    amps = np.array([1.0, tb["h2"], tb["h3"], tb["h3"] / 3, tb["h3"] / 6, tb["h3"] / 10]) * (0.8 + 0.4 * v) ** k
    tone = harmonic_tone(pitch_track(f0, n, tb["vibrato"], rng), n, amps)
    return env * (tone + filtered_noise(n, rng, "bandpass", 1000.0, 6000.0) * tb["breath"] * 8)


def _guitar(f0, held, release, v, tb, rng):
    brightness = min(max(tb["brightness"] + 0.3 * (v - 0.5) + rng.normal(0, 0.05), 0.05), 1.0)
    string = plucked_string(f0, held + release, brightness, tb["decay"] * rng.uniform(0.8, 1.25), tb["pick"], rng)
    return adsr(held, release, 0.001, 1e3, 1.0) * string


def _keyboard(f0, held, release, v, tb, rng):
    # piano-like: hammer-position notches in the spectrum, a decay that is faster up high and
    # a tone that darkens as it decays (high partials die first)
    n, k = held + release, _harmonics(20)
    t = np.arange(n, dtype=np.float32) / SAMPLE_RATE
    amps = k ** -(tb["tilt"] - 0.8 * v + rng.normal(0, 0.08)) * (np.abs(np.sin(np.pi * k * tb["hammer"])) + 0.05)
    decay = 1 / (tb["decay"] * (f0 / 261.6) ** 0.5 * rng.uniform(0.8, 1.25))   # seconds
    env = adsr(held, release, 0.002, decay, 0.0)
    return env * harmonic_tone(f0, n, amps, amps * np.exp(-0.5 * (k - 1)), 1 - np.exp(-t / (0.3 * decay)))


def _mallet(f0, held, release, v, tb, rng):
    # a struck bar: inharmonic modes that die fast, a soft click, an optional motor tremolo
    n = held + release
    t = np.arange(n, dtype=np.float32) / SAMPLE_RATE
    ratios = np.array([1.0, tb["mode2"], tb["mode3"]])
    amps = np.array([1.0, 0.1 + 0.35 * v, 0.05 + 0.2 * v])
    decays = tb["decay"] * rng.uniform(0.8, 1.25) * np.array([1.0, 3.0, 6.0])
    tone = partial_sum(f0, n, ratios, amps, decays) * (1 - tb["tremolo"] * (0.5 + 0.5 * np.sin(2 * np.pi * 5.5 * t)))
    tone[:80] += filtered_noise(80, rng, "highpass", 2000.0) * np.linspace(v, 0, 80) * 0.3
    return adsr(held, release, 0.001, 1e3, 1.0) * tone


def _organ(f0, held, release, v, tb, rng):
    # drawbars 8', 4', 2 2/3', 2', 1 3/5', 1 1/3', 1' = harmonics 1-6 and 8 (no 16': the
    # sounding pitch stays the key's)
    n = held + release
    t = np.arange(n, dtype=np.float32) / SAMPLE_RATE
    amps = np.zeros(8)
    amps[[0, 1, 2, 3, 4, 5, 7]] = np.asarray(tb["drawbars"]) * rng.uniform(0.9, 1.1, 7)
    leslie = 1 + tb["leslie"] * np.sin(2 * np.pi * tb["leslie_hz"] * t + rng.uniform(0, 6.3))
    return adsr(held, release, 0.008, 1.0, 1.0) * leslie * harmonic_tone(f0, n, amps)


def _reed(f0, held, release, v, tb, rng):
    # clarinet-like: a cylindrical bore favours odd harmonics
    n, k = held + release, _harmonics(25)
    amps = k ** -(tb["tilt"] - 0.4 * v) * np.where(k % 2 == 1, 1.0, tb["even"])
    env = adsr(held, release, tb["attack"] * rng.uniform(0.8, 1.25), 0.2, 0.9)
    tone = harmonic_tone(pitch_track(f0, n, 6.0, rng), n, amps)
    return env * (tone + filtered_noise(n, rng, "bandpass", 1500.0, 5000.0) * tb["breath"] * 10)


def _string(f0, held, release, v, tb, rng):
    # bowed: a sawtooth-like spectrum shaped by a body resonance, slow attack, vibrato
    n, k = held + release, _harmonics(30)
    body = 1 + 1.5 * np.exp(-0.5 * (np.log2(k * f0 / tb["body"]) / 0.4) ** 2)
    amps = k ** -(tb["tilt"] - 0.3 * v + rng.normal(0, 0.05)) * body
    env = adsr(held, release, tb["attack"] * rng.uniform(0.8, 1.25), 0.4, 0.85)
    return env * harmonic_tone(pitch_track(f0, n, tb["vibrato"], rng), n, amps)


def _synth_lead(f0, held, release, v, tb, rng):
    # two detuned FM voices (chorus), index decaying from its attack value
    n = held + release
    t = np.arange(n) / SAMPLE_RATE
    index = tb["index"] * (0.5 + v) * (0.4 + 0.6 * np.exp(-t / tb["index_decay"]))
    cents = tb["detune"] * rng.uniform(0.8, 1.25)
    voices = sum(fm_tone(f0 * 2 ** (s * cents / 1200), n, tb["ratio"], index) for s in (-0.5, 0.5))
    return adsr(held, release, 0.01, 0.4, 0.75) * voices


def _vocal(f0, held, release, v, tb, rng):
    # sung vowel: harmonics weighted by three formant resonances of a vowel drawn per note
    n = held + release
    k = _harmonics(int(NYQUIST_LIMIT // f0))
    formants = np.array(VOWELS[rng.integers(len(VOWELS))]) * tb["formant_scale"]
    resonance = sum(gain / (1 + ((k * f0 - formant) / (60 + 0.08 * formant)) ** 2)
                    for formant, gain in zip(formants, (1.0, 0.7, 0.3)))
    amps = k ** -(1.0 - 0.4 * v) * (0.15 + resonance)
    env = adsr(held, release, 0.05, 0.3, 0.9)
    return env * harmonic_tone(pitch_track(f0, n, tb["vibrato"], rng), n, amps)


VOICES = {"bass": _bass, "brass": _brass, "flute": _flute, "guitar": _guitar, "keyboard": _keyboard,
          "mallet": _mallet, "organ": _organ, "reed": _reed, "string": _string, "synth_lead": _synth_lead,
          "vocal": _vocal}


@dataclass(frozen=True)
class Instrument:
    """One member of a family: `timbre` is fixed by (family, index), notes vary around it."""

    family: str
    index: int
    timbre: dict

    @property
    def name(self) -> str:
        """NSynth's instrument_str format, e.g. "guitar_synthetic_002"."""
        return f"{self.family}_synthetic_{self.index:03d}"

    def play(self, midi: float, seconds: float, velocity: float, rng: np.random.Generator) -> np.ndarray:
        """A note held for `seconds` plus the instrument's release: (N,) float32, peak 0.3..1 by
        velocity (0..1] (louder and, per family, brighter). Detuned by at most 6 cents."""
        if self.family == "drums":
            hit = drum_hit(int(midi), velocity, self.timbre, rng)
        else:
            low, high = PITCH_RANGE[self.family]
            if not low - 12 <= midi <= high + 12:
                raise ValueError(f"{self.name}: MIDI pitch {midi} is far outside the family's range {low}..{high}")
            f0 = midi_to_hz(midi + min(max(rng.normal(0, 3), -6.0), 6.0) / 100)
            held = max(int(seconds * SAMPLE_RATE), 1)
            release = int(self.timbre["release"] * SAMPLE_RATE)
            hit = VOICES[self.family](f0, held, release, float(velocity), self.timbre, rng)
        peak = float(np.max(np.abs(hit)))
        return (hit * ((0.3 + 0.7 * velocity) / peak if peak > 0 else 0.0)).astype(np.float32)


def make_instrument(family: str, index: int) -> Instrument:
    """The `index`-th instrument of a family (or the drum kit "drums"): same arguments, same timbre."""
    if family not in TIMBRES:
        raise ValueError(f"unknown instrument family {family!r}; expected one of {sorted(TIMBRES)}")
    code = sorted(TIMBRES).index(family)
    rng = np.random.default_rng([7919, code, index])   # not the dataset seed: an instrument is the same everywhere
    timbre = {}
    for key, spec in TIMBRES[family].items():
        if key == "drawbars":   # seven levels; the 8' fundamental stays strong
            timbre[key] = tuple(np.concatenate([[rng.uniform(0.6, 1.0)], rng.uniform(*spec, 6) ** 2]))
        elif isinstance(spec, list):
            timbre[key] = spec[int(rng.integers(len(spec)))]
        else:
            timbre[key] = float(rng.uniform(*spec))
    return Instrument(family, index, timbre)


# --- performing a score ----------------------------------------------------------------------

# Relative RMS level of each part in the mix (before the per-song random variation).
PART_LEVELS = {"lead": 1.0, "harmony": 0.6, "bass": 0.7, "drums": 0.5}
LONGEST_TAIL = 1.5  # seconds a note can sound after its note-off (open hi-hat, release)
VELOCITY_STEPS = 8  # velocity resolution of the per-song note cache


@dataclass(frozen=True)
class Note:
    onset: float       # seconds from the start of the clip (< 0: before it)
    duration: float    # seconds held
    midi: int          # pitch, or a General MIDI drum note for the "drums" part
    velocity: float    # 0..1
    part: str          # "lead", "harmony", "bass" or "drums"


def perform(notes: list[Note], instruments: dict[str, Instrument], seconds: float, rng: np.random.Generator,
            distortion: dict[str, float] | None = None) -> np.ndarray:
    """Play `notes` on the part's instrument into a (round(seconds * 16 kHz),) float32 mix.

    Each note starts at the sample nearest its onset (beat annotations stay exact to 1/32 ms).
    Like a sampler, a song replays a note it has already rendered with the same part, pitch,
    length and velocity step (1/8), scaled to the exact velocity: repeated drum strokes, bass
    eighths and chords then cost nothing, which makes generation several times faster.
    Parts are mixed at PART_LEVELS of RMS, each varied by +-2 dB (sd) per song; `distortion`
    gives a tanh drive per part (metal guitars); a noise floor 60 dB down is added."""
    n = int(round(seconds * SAMPLE_RATE))
    notes = [note for note in notes if note.onset + note.duration + LONGEST_TAIL > 0 and note.onset < seconds]
    pre = int(np.ceil(max([0.0] + [-note.onset for note in notes]) * SAMPLE_RATE))
    buffers = {part: np.zeros(pre + n, np.float32) for part in instruments}
    played: dict[tuple, np.ndarray] = {}
    for note in notes:
        start = pre + int(round(note.onset * SAMPLE_RATE))
        held = 0 if note.part == "drums" else min(int(note.duration * SAMPLE_RATE), pre + n - start)
        step = max(1, round(note.velocity * VELOCITY_STEPS))
        key = (note.part, note.midi, held, step)
        if key not in played:
            played[key] = instruments[note.part].play(note.midi, held / SAMPLE_RATE, step / VELOCITY_STEPS, rng)
        gain = (0.3 + 0.7 * note.velocity) / (0.3 + 0.7 * step / VELOCITY_STEPS)   # play()'s peak rule
        sound = played[key][: pre + n - start]
        buffers[note.part][start:start + sound.size] += np.float32(gain) * sound
    mix = np.zeros(n, np.float32)
    for part, buffer in buffers.items():
        x = buffer[pre:]
        drive = (distortion or {}).get(part, 0.0)
        if drive:
            x = np.tanh(drive * x / max(float(np.max(np.abs(x))), 1e-6)) / np.tanh(drive)
        rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
        if rms > 0:
            mix += x * np.float32(PART_LEVELS[part] * 10 ** (rng.normal(0, 2) / 20) / rms)
    # a recording's hiss, 60 dB under the music: no stretch of a sparse song is digital silence
    return mix + np.float32(1e-3 * np.sqrt(np.mean(mix ** 2))) * rng.standard_normal(n, dtype=np.float32)

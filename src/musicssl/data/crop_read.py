"""Read one crop of a file at the model's rate without decoding the rest of it.

``read_span(path, rate, expected, start, stop)`` returns what ``audio.load_audio(path, rate)[start:stop]``
returns, decoding only ``[start, stop)`` plus the resampler's margin on each side:

* the read starts on a native frame ``a`` whose time is also a whole output sample
  (``a`` a multiple of ``native / gcd``), so output sample ``j`` of the piece is output sample
  ``a * rate / native + j`` of the whole file, on the same time grid;
* soxr "HQ" is a linear-phase FIR: an output sample depends on the input within its filter's reach.
  Measured with an impulse (44.1 -> 16 kHz), the response exceeds 1e-7 of its peak over +-100 output
  samples and 1e-8 over -337..+194; ``MARGIN_SECONDS`` (32 ms, 512 samples at 16 kHz) keeps what
  the piece lacks below 1e-8 of the signal, under float32 rounding. Inside the margin the piece
  equals the whole-file output up to the float32 rounding of the filter sums (2e-7 on noise of
  std 0.3); at the file's own ends the two see the same edge. Equal rates read the span exactly.

Seeking (``SoundFile.seek``) was measured sample-exact with libsndfile 1.2.2 for WAV, FLAC, Ogg
Vorbis and MP3 (mpg123; with and without a LAME/Xing header): 20 random seeks per format, each
1 s read equal to the whole decode, 0 differences. A format not in ``EXACT_SEEK``, or a file whose
header length does not give the manifest's sample count (an MP3 whose header count is an estimate,
a file replaced since the manifest was built), raises :class:`WholeFile`: the caller decodes the
whole file, which also checks the length exactly.
"""

from __future__ import annotations

import math
import os

import numpy as np
import soundfile as sf
import soxr

from musicssl import audio

EXACT_SEEK = frozenset({"WAV", "WAVEX", "W64", "RF64", "AIFF", "FLAC", "OGG", "MP3"})  # libsndfile format names
MARGIN_SECONDS = 0.032


class WholeFile(Exception):
    """This file's crop cannot be read on its own exactly; ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def crop_offset(num_samples: int, crop_samples: int, rng: np.random.Generator) -> int:
    """The offset ``audio.random_crop`` draws for a file of ``num_samples``: the same draw, so
    reading the crop alone keeps every crop of a seeded run."""
    return int(rng.integers(0, num_samples - crop_samples + 1)) if num_samples > crop_samples else 0


def read_span(path: str | os.PathLike, sample_rate: int, expected: int, start: int, stop: int) -> np.ndarray:
    """Mono float32 samples ``[start, stop)`` at ``sample_rate`` of a file whose whole decode has
    ``expected`` samples. Raises ``audio.AudioError`` (cannot decode) or :class:`WholeFile`."""
    path = os.fspath(path)
    with audio._open(path) as f:
        if f.format not in EXACT_SEEK:
            raise WholeFile(f"format {f.format} is not one measured to seek exactly")
        native = int(f.samplerate)
        if round(f.frames * sample_rate / native) != expected:
            raise WholeFile(f"its header gives {f.frames} frames at {native} Hz, not the manifest's "
                            f"{expected} samples at {sample_rate} Hz")
        try:
            return _read(f, path, native, sample_rate, start, stop)
        except audio._DECODE_ERRORS as error:
            raise audio.AudioError(path, f"cannot decode: {audio._decode_reason(error)}") from error


def _read(f: sf.SoundFile, path: str, native: int, rate: int, start: int, stop: int) -> np.ndarray:
    if native == rate:
        return _frames(f, path, start, stop)
    g = math.gcd(native, rate)
    step_in, step_out = native // g, rate // g  # step_in native frames last exactly step_out output samples
    margin = math.ceil(MARGIN_SECONDS * rate)
    first = max(0, (start - margin) // step_out)  # in steps
    last = -(-(stop + margin) // step_out)
    # An odd native rate aligns rarely (44,101 Hz: every 44,101 frames): the read grows, stays exact.
    begin, end = first * step_in, min(int(f.frames), last * step_in)
    piece = soxr.resample(_frames(f, path, begin, end), native, rate, quality=audio.RESAMPLE_QUALITY)
    offset = first * step_out
    if len(piece) < stop - offset:
        raise WholeFile(f"frames {begin}..{end} resampled to {len(piece)} samples, fewer than the crop needs")
    return np.ascontiguousarray(piece[start - offset:stop - offset], dtype=np.float32)  # (stop - start,)


def _frames(f: sf.SoundFile, path: str, begin: int, end: int) -> np.ndarray:
    """Native frames ``[begin, end)``, averaged to mono as ``audio.load_audio`` does."""
    f.seek(begin)
    block = f.read(end - begin, dtype="float32", always_2d=True)  # (n, C)
    if len(block) != end - begin:
        raise WholeFile(f"read {len(block)} frames at {begin}, the header promised {end - begin}")
    audio._check_finite(block, begin, path)
    return block.mean(axis=1, dtype=np.float32)  # (n,)

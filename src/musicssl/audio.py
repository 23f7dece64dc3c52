"""Audio I/O and sample-level helpers shared by training, feature extraction and probing.

Everything that touches audio files goes through :func:`load_audio` / :func:`audio_info`, so
that every user-facing failure (missing file, undecodable file, empty or corrupt audio, clip
too short for the model) surfaces as one :class:`AudioError` whose message names the file and
says what is wrong with it.

Conventions: waveforms are float32 numpy arrays, mono ``(N,)`` or channel-first ``(C, N)``;
lengths and offsets are in samples. :func:`plan_chunks` splits a long signal into windows
whose frame-level outputs concatenate to exactly the frames of a single pass (see there).

Backends: decoding is done by soundfile (libsndfile: wav, flac, ogg/vorbis, mp3, ...) and
resampling by soxr at quality ``"HQ"``; no torchaudio/librosa.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import soundfile as sf
import soxr

__all__ = [
    "AudioError",
    "AudioInfo",
    "Chunk",
    "audio_info",
    "check_length",
    "check_num_samples",
    "crop_or_pad",
    "find_audio_files",
    "load_audio",
    "num_frames",
    "plan_chunks",
    "random_crop",
    "resample",
    "stream_audio",
    "stream_chunks",
    "to_mono",
]

RESAMPLE_QUALITY = "HQ"
# Extensions scanned for in folders (any case); decoding itself goes by content, not name.
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aif", ".aiff")


def find_audio_files(root: str | os.PathLike) -> list[Path]:
    """Every file under `root` with an audio extension, sorted so runs are reproducible."""
    return sorted(p for p in Path(root).rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)

# soundfile >= 0.11 raises SoundFileError subclasses (LibsndfileError is a RuntimeError);
# older builds raise plain RuntimeError, so catch both.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    getattr(sf, "SoundFileError", RuntimeError),
    RuntimeError,
)
# libsndfile's SFE_BAD_FILE_READ / "File does not exist or is not a regular file": for a
# file we have already seen exists, mpg123 produces this on truncated or garbage MP3 data.
_LIBSNDFILE_BAD_OPEN = 7


class AudioError(ValueError):
    """A problem with one audio file. ``str()`` names the file and the problem."""

    def __init__(self, path: Any, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):
        # Default exception pickling would call __init__(message) and fail; DataLoader
        # workers pickle exceptions to send them to the main process.
        return (type(self), (self.path, self.problem))


@dataclass(frozen=True)
class AudioInfo:
    """Header information of an audio file.

    ``num_frames`` (and hence ``duration_seconds``) comes from the file header. For MP3 it
    is libsndfile's estimate (from the Xing/LAME header or the file size): a truncated MP3
    keeps the full header count while decoding yields fewer frames.
    """

    path: str
    sample_rate: int
    channels: int
    num_frames: int
    duration_seconds: float
    format: str


# ----------------------------------------------------------------------------- decoding


def _require_file(path: str) -> None:
    if not os.path.exists(path):
        raise AudioError(path, "file not found")
    if not os.path.isfile(path):
        raise AudioError(path, "not a regular file (is it a directory?)")


def _decode_reason(err: BaseException) -> str:
    """soundfile's reason without its "Error opening '<path>':" prefix (we name the path)."""
    reason = getattr(err, "error_string", None) or str(err)
    if getattr(err, "code", None) == _LIBSNDFILE_BAD_OPEN:
        # The file exists (checked before), so libsndfile's literal message would mislead.
        reason = (
            "libsndfile could not parse the stream (it reports 'file does not exist or is not "
            "a regular file', which for an existing file means truncated or corrupt data)"
        )
    return reason.strip().rstrip(".")


def _open(path: str) -> sf.SoundFile:
    _require_file(path)
    try:
        return sf.SoundFile(path)
    except _DECODE_ERRORS as err:
        raise AudioError(path, f"cannot decode: {_decode_reason(err)}") from err


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Header information of ``path``; raises :class:`AudioError` if missing or undecodable."""
    path = os.fspath(path)
    with _open(path) as f:
        return AudioInfo(
            path=path,
            sample_rate=int(f.samplerate),
            channels=int(f.channels),
            num_frames=int(f.frames),
            duration_seconds=f.frames / f.samplerate,
            format=str(f.format),
        )


def _check_finite(block: np.ndarray, first_frame: int, path: str) -> None:
    finite = np.isfinite(block)
    if not finite.all():
        bad = int(np.flatnonzero(~finite.all(axis=1))[0])
        raise AudioError(path, f"non-finite samples (NaN or inf) at sample {first_frame + bad}")


def _resampled_blocks(
    f: sf.SoundFile, path: str, sample_rate: int, mono: bool, block_frames: int
) -> Iterator[np.ndarray]:
    """Read ``f`` block by block and yield each block resampled, then soxr's flushed tail.

    Blocks are ``(n,)`` when ``mono`` else ``(n, C)``; empty ones are skipped. Decoding stops
    at the real end of the stream, however many frames the header announced. Raises
    :class:`AudioError` for non-finite samples, an undecodable stream or a file with no
    samples, and warns when fewer frames decode than the header announced (truncated file).
    """
    channels = 1 if mono else f.channels
    stream = None
    if f.samplerate != sample_rate:
        stream = soxr.ResampleStream(
            f.samplerate, sample_rate, channels, dtype="float32", quality=RESAMPLE_QUALITY
        )
    frames_read = 0
    while True:
        # A read loop rather than relying on f.frames: for MP3 the header count is an
        # estimate, and read() simply returns fewer frames at the real end of the stream.
        try:
            block = f.read(block_frames, dtype="float32", always_2d=True)
        except _DECODE_ERRORS as err:
            raise AudioError(path, f"cannot decode: {_decode_reason(err)}") from err
        if len(block) == 0:
            break
        _check_finite(block, frames_read, path)
        frames_read += len(block)
        block = block.mean(axis=1, dtype=np.float32) if mono else block
        block = block if stream is None else stream.resample_chunk(block)
        if len(block):
            yield block
    if frames_read == 0:
        raise AudioError(path, "empty audio (0 samples)")
    if frames_read < 0.99 * f.frames:
        warnings.warn(
            f"{path}: decoded {frames_read} frames but the header announces {f.frames}; "
            "the file is probably truncated",
            stacklevel=3,
        )
    if stream is not None:
        empty = np.zeros((0,) if mono else (0, channels), dtype=np.float32)
        tail = stream.resample_chunk(empty, last=True)  # flush soxr's filter delay
        if len(tail):
            yield tail


def _check_rates(sample_rate: int, block_seconds: float) -> None:
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if block_seconds <= 0:
        raise ValueError(f"block_seconds must be positive, got {block_seconds}")


def stream_audio(
    path: str | os.PathLike, sample_rate: int, *, block_seconds: float = 60.0
) -> Iterator[np.ndarray]:
    """Decode ``path`` as a stream of mono float32 ``(n,)`` blocks at ``sample_rate``.

    The same decoder and soxr ``"HQ"`` stream as :func:`load_audio`, so the concatenated
    blocks equal ``load_audio(path, sample_rate)`` bit for bit (soxr computes the same
    samples whatever blocks it is fed), while only one block of ``block_seconds`` (native
    rate) and its resampled copy are in memory at a time: memory is flat in the file's
    length. Errors are those of :func:`load_audio`, raised when the stream reaches them (a
    non-finite sample after some blocks were yielded, "empty audio" at the end); the file
    is opened, and "file not found" / "cannot decode" raised, on the first ``next()``.
    """
    _check_rates(sample_rate, block_seconds)
    path = os.fspath(path)
    with _open(path) as f:
        block_frames = max(1, int(block_seconds * f.samplerate))
        yield from _resampled_blocks(f, path, sample_rate, True, block_frames)


def load_audio(
    path: str | os.PathLike,
    sample_rate: int,
    *,
    mono: bool = True,
    block_seconds: float = 60.0,
) -> np.ndarray:
    """Decode an audio file to float32 at ``sample_rate``.

    Any soundfile-readable file works (wav/flac/ogg/mp3; libsndfile detects the format from
    the content, so extension case does not matter). Channels are averaged to mono unless
    ``mono=False``; resampling uses soxr ``"HQ"``. The file is decoded and resampled in
    blocks of ``block_seconds`` (streaming soxr), so only one native-rate block is in memory
    at a time next to the float32 output at the target rate (:func:`stream_audio` yields
    the blocks instead of holding them).

    Returns ``(N,)`` float32, or ``(C, N)`` float32 when ``mono=False``.
    Output length is ``round(frames * sample_rate / native_rate)`` (soxr's length).

    Raises :class:`AudioError` with ``problem`` one of: ``"file not found"``,
    ``"cannot decode: <reason>"``, ``"empty audio (0 samples)"``,
    ``"non-finite samples (NaN or inf) at sample <index>"`` (index in native-rate frames).
    An MP3 cut off mid-stream usually decodes without error to a prefix; a warning is issued
    when fewer frames decode than the header announced.
    """
    _check_rates(sample_rate, block_seconds)
    path = os.fspath(path)
    with _open(path) as f:
        block_frames = max(1, int(block_seconds * f.samplerate))
        out = list(_resampled_blocks(f, path, sample_rate, mono, block_frames))
    wav = np.concatenate(out, axis=0)
    return wav if mono else np.ascontiguousarray(wav.T)


# ----------------------------------------------------------------------------- arrays


def check_length(
    wav: np.ndarray, min_samples: int, path: Any = "<array>", *, sample_rate: int = 16000
) -> None:
    """Raise :class:`AudioError` if ``wav`` (``(..., N)``) has fewer than ``min_samples``.

    ``sample_rate`` only serves to state the length in seconds in the message.
    """
    check_num_samples(int(wav.shape[-1]), min_samples, path, sample_rate=sample_rate)


def check_num_samples(n: int, min_samples: int, path: Any = "<array>", *, sample_rate: int = 16000) -> None:
    """:func:`check_length` for a signal known only by its length (a decoded stream)."""
    if n < min_samples:
        raise AudioError(
            path,
            f"too short: {n} samples ({n / sample_rate:.3f} s) at {sample_rate} Hz; "
            f"the model needs at least {min_samples} samples (its receptive field)",
        )


def to_mono(wav: np.ndarray) -> np.ndarray:
    """``(C, N)`` or ``(N,)`` -> ``(N,)`` float32, the mean over channels."""
    wav = np.asarray(wav)
    if wav.ndim == 1:
        return wav.astype(np.float32, copy=False)
    if wav.ndim != 2:
        raise ValueError(f"expected (N,) or (C, N), got shape {wav.shape}")
    return wav.mean(axis=0, dtype=np.float32)


def resample(wav: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Resample ``(N,)`` or ``(C, N)`` with soxr ``"HQ"``; float32 out.

    Equal rates return the input itself (converted to float32 only if needed).
    """
    wav = np.asarray(wav)
    if wav.ndim not in (1, 2):
        raise ValueError(f"expected (N,) or (C, N), got shape {wav.shape}")
    if orig_rate <= 0 or target_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_rate} -> {target_rate}")
    if orig_rate == target_rate:
        return wav.astype(np.float32, copy=False)
    if wav.shape[-1] == 0:
        return np.zeros(wav.shape, dtype=np.float32)
    x = wav.astype(np.float32, copy=False)
    # soxr wants channels last.
    y = soxr.resample(x.T if x.ndim == 2 else x, orig_rate, target_rate, quality=RESAMPLE_QUALITY)
    y = y.astype(np.float32, copy=False)
    return np.ascontiguousarray(y.T) if x.ndim == 2 else y


def crop_or_pad(wav: np.ndarray, num_samples: int, *, offset: int = 0) -> np.ndarray:
    """``(..., N)`` -> ``(..., num_samples)``: ``wav[..., offset:offset+num_samples]``, then
    zeros appended at the end if that is short. Without padding the result is a view."""
    if num_samples < 0 or offset < 0:
        raise ValueError(f"num_samples and offset must be >= 0, got {num_samples}, {offset}")
    piece = wav[..., offset : offset + num_samples]
    missing = num_samples - piece.shape[-1]
    if missing == 0:
        return piece
    pad = [(0, 0)] * (wav.ndim - 1) + [(0, missing)]
    return np.pad(piece, pad)


def random_crop(
    wav: np.ndarray, num_samples: int, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """Crop ``(..., N)`` to ``num_samples`` at a uniform offset in ``[0, N - num_samples]``.

    Returns ``(crop, offset)``; if ``N <= num_samples``, returns ``(wav, 0)`` unchanged (no
    random number is drawn then, so seeded streams stay aligned only for long clips).
    """
    n = wav.shape[-1]
    if n <= num_samples:
        return wav, 0
    offset = int(rng.integers(0, n - num_samples + 1))
    return wav[..., offset : offset + num_samples], offset


# ----------------------------------------------------------------------------- chunking


@dataclass(frozen=True)
class Chunk:
    """One window of a chunked pass.

    ``start``/``stop``: the SAMPLE range ``[start, stop)`` to feed to the model (``start`` is
    always a multiple of ``hop``, so the chunk's frame grid coincides with the global one).
    ``keep_start``/``keep_stop``: the FRAME range, counted in the chunk's own output (frame 0
    of the chunk starts at sample ``start``), that this chunk owns. Global frame index of
    kept frame ``k`` is ``start // hop + k``.
    """

    start: int
    stop: int
    keep_start: int
    keep_stop: int

    @property
    def num_kept(self) -> int:
        return self.keep_stop - self.keep_start


def num_frames(num_samples: int, *, hop: int = 320, receptive_field: int = 400) -> int:
    """Frames of a conv front end with this hop and receptive field (0 if too short)."""
    if num_samples < receptive_field:
        return 0
    return (num_samples - receptive_field) // hop + 1


def plan_chunks(
    num_samples: int,
    chunk_samples: int,
    *,
    hop: int = 320,
    receptive_field: int = 400,
    context_samples: int = 0,
) -> list[Chunk]:
    """Split a ``num_samples`` signal into windows for chunked frame-level feature extraction.

    Model: frame ``t`` covers samples ``[t*hop, t*hop + receptive_field)``; a single pass
    yields ``T = (num_samples - receptive_field)//hop + 1`` frames (0 if shorter, in which
    case the plan is empty). Running the model on each ``x[start:stop]``, keeping frames
    ``[keep_start, keep_stop)`` of its output and concatenating gives exactly ``T`` frames,
    frame ``t`` of the result starting at sample ``t*hop``.

    How chunks are formed:

    * ``chunk_samples`` is rounded down to a multiple of ``hop`` (at least ``hop``); each
      chunk owns ``F = chunk_samples // hop`` consecutive frames ``[f0, f0+F)``, the last one
      owns what remains.
    * ``context_samples`` is rounded UP to a multiple of ``hop`` (``ctx``). The window is
      ``start = max(0, f0*hop - ctx)``, ``stop = min(num_samples, (f0+F-1)*hop +
      receptive_field + ctx)``: the samples the owned frames need, plus ``ctx`` either side;
      the last window always ends at ``num_samples``, so a single-chunk plan is one pass.
    * If a last, partial chunk would own fewer than ``receptive_field`` samples' worth of
      frames (``R < F`` and ``R*hop < receptive_field``), it is merged into the previous
      chunk, which then owns ``F + R`` frames; so no chunk is run just for a sliver.

    Relation to one pass over the whole signal: frame grid and frame count are identical.
    A CNN front end whose normalisation is per time step (layer norm) or fixed gives identical
    features, because each frame only sees its receptive field. Group/instance norm over time
    and every transformer layer see only ``[start, stop)``, so their outputs differ from a
    single pass, most near chunk edges; ``context_samples`` gives each owned frame that much
    extra audio on both sides (at the cost of recomputing it) and shrinks the difference.
    """
    if min(hop, receptive_field, chunk_samples) <= 0:
        raise ValueError("hop, receptive_field and chunk_samples must be positive")
    if num_samples < 0 or context_samples < 0:
        raise ValueError("num_samples and context_samples must be >= 0")
    total = num_frames(num_samples, hop=hop, receptive_field=receptive_field)
    per_chunk = max(1, chunk_samples // hop)
    ctx = math.ceil(context_samples / hop) * hop

    bounds = list(range(0, total, per_chunk)) + [total]
    remainder = bounds[-1] - bounds[-2] if total else 0
    if len(bounds) > 2 and remainder < per_chunk and remainder * hop < receptive_field:
        del bounds[-2]  # hand the sliver to the previous chunk

    chunks = []
    for f0, f1 in zip(bounds[:-1], bounds[1:]):
        start = max(0, f0 * hop - ctx)
        # The last window runs to the end: the trailing samples that make no frame still enter
        # a group norm's statistics in one pass, and a one-chunk plan must equal one pass.
        stop = num_samples if f1 == total else min(num_samples, (f1 - 1) * hop + receptive_field + ctx)
        keep_start = f0 - start // hop
        chunks.append(Chunk(start, stop, keep_start, keep_start + (f1 - f0)))
    return chunks


def stream_chunks(
    blocks: Iterable[np.ndarray],
    chunk_samples: int,
    *,
    hop: int = 320,
    receptive_field: int = 400,
    context_samples: int = 0,
) -> Iterator[tuple[Chunk, np.ndarray]]:
    """``plan_chunks(N, ...)`` of a signal that arrives in ``(n,)`` blocks, each chunk with
    its samples ``x[start:stop]``, without knowing ``N`` (the blocks' total) in advance.

    A chunk that is not the last one of the plan for the ``received`` samples so far, and
    whose window ends before ``received``, is the same in the plan of every longer signal
    (more frames only add or merge chunks after it), so it is yielded at once and the samples
    before the next window are dropped: memory is about one window plus one chunk, whatever
    ``N``. The rest is planned when the blocks end. So an MP3 whose header length is only an
    estimate is cut exactly as ``plan_chunks`` cuts its decoded samples. Windows are views
    into a buffer that is replaced, never written to, as more blocks arrive.
    """
    sizes = dict(hop=hop, receptive_field=receptive_field, context_samples=context_samples)
    buffer, base, done = np.zeros(0, np.float32), 0, 0  # buffer[0] is sample `base`
    # Blocks enter a chunk at a time: the buffer stays about one window plus one chunk, however
    # long the decoder's blocks are, and a short track holds what a long one holds.
    step = max(1, chunk_samples)
    for block in (whole[i : i + step] for whole in blocks for i in range(0, len(whole), step)):
        buffer = np.concatenate([buffer, block])
        received = base + len(buffer)
        plan = plan_chunks(received, chunk_samples, **sizes)
        for chunk in plan[done:-1]:
            if chunk.stop >= received:  # its window may still grow: wait for more samples
                break
            yield chunk, buffer[chunk.start - base : chunk.stop - base]
            done += 1
        if plan:
            drop = plan[done].start - base  # chunk `done` starts at frame done * F in any plan
            buffer, base = buffer[drop:], base + drop
    for chunk in plan_chunks(base + len(buffer), chunk_samples, **sizes)[done:]:
        yield chunk, buffer[chunk.start - base : chunk.stop - base]

"""Frozen feature extraction: `load_model(path)` and `Encoder.extract(...)`.

The only way evaluation code reaches a model. Any directory with a transformers-format
config.json and weights loads: our exported backbones and pre-training checkpoints, or a local
copy of a transformers HubertModel / Data2VecAudioModel checkpoint.

Long audio is processed in chunks (`audio.plan_chunks`): the frame grid and frame count are
exactly those of one pass over the whole track, and each chunk's frames are computed from that
chunk's window only. So the CNN output of a per-frame-normalised (layer-norm) model is identical
to one pass, while Transformer layers, whose attention is global, see at most
`chunk_seconds + 2 * context_seconds` of audio: near chunk edges they differ from one pass,
and `context_seconds` (extra audio on both sides, computed and discarded) narrows that gap.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from musicssl import audio
from musicssl.atomic import atomic_path
from musicssl.interop.huggingface import FAIRSEQ_NORMALIZE_EPS, load_pretrained
from musicssl.interop.musicfm import is_musicfm_dir, is_muq_dir, load_musicfm, load_muq
from musicssl.models.backbone import Backbone, normalize_waveform
from musicssl.models.musicfm import MelConformer


DTYPES = ("auto", "fp32", "bf16")  # auto: bf16 autocast on CUDA, fp32 on a CPU
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 flags of CPUs that compute bf16 natively


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """"fp32" or "bf16": what the encoder computes in. bf16 on a CPU only where the CPU computes it
    natively: emulated bf16 is slower than fp32 and rounds more (the option is refused, saying why)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if dtype == "bf16" and device.type == "cpu" and not cpu_flags() & set(NATIVE_BF16_FLAGS):
        raise ValueError("--dtype bf16: this CPU has no native bf16 (none of the flags "
                         f"{', '.join(NATIVE_BF16_FLAGS)} in /proc/cpuinfo); emulated bf16 would be slower than fp32")
    return dtype


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Encoder:
    """A frozen backbone with its preprocessing. `num_hidden_states` = L + 1 (index 0 is the
    Transformer input, index i the output of block i)."""

    def __init__(self, backbone: Backbone | MelConformer, device: torch.device | str | None = None, name: str = "",
                 normalize_eps: float = FAIRSEQ_NORMALIZE_EPS, dtype: str = "auto"):
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = resolve_dtype(dtype, self.device)  # bf16: autocast around the forward, features float32
        self.normalize_eps = normalize_eps  # transformers' feature extractor: 1e-7 (see Preprocessing)
        self.backbone = backbone.to(self.device).eval()
        self.config = backbone.config
        self.name = name

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def frame_rate_hz(self) -> float:
        return self.config.frame_rate_hz

    @property
    def num_hidden_states(self) -> int:
        return self.config.num_layers + 1

    @property
    def dim(self) -> int:
        return self.config.dim

    def resolve_layers(self, layers: Sequence[int] | None) -> list[int]:
        """None -> all hidden states; negative indices count from the end, as in Python."""
        total = self.num_hidden_states
        if layers is None:
            return list(range(total))
        resolved = []
        for layer in layers:
            if not -total <= layer < total:
                raise ValueError(f"layer {layer} out of range: this model has hidden states 0..{total - 1}")
            resolved.append(layer % total)
        return resolved

    def prepare(self, wav: np.ndarray | Tensor, sample_rate: int, source: str = "<array>") -> Tensor:
        """(N,) or (C, N) at any rate -> (N,) float32 mono at the model rate, checked."""
        array = wav.detach().cpu().numpy() if isinstance(wav, Tensor) else np.asarray(wav)
        array = audio.to_mono(array.astype(np.float32, copy=False))
        array = audio.resample(array, sample_rate, self.sample_rate)
        if not _all_finite(array):
            raise audio.AudioError(source, "non-finite samples (NaN or inf)")
        audio.check_length(array, self.config.receptive_field, source, sample_rate=self.sample_rate)
        signal = torch.from_numpy(np.ascontiguousarray(array))
        if self.config.normalize_waveform:
            # Whole-track statistics, as transformers' feature extractor normalises its input.
            signal = normalize_waveform(signal[None], torch.tensor([signal.numel()]), self.normalize_eps)[0]
        return signal

    @torch.no_grad()
    def extract(self, wav: np.ndarray | Tensor, sample_rate: int, layers: Sequence[int] | None = None,
                chunk_seconds: float | None = 30.0, context_seconds: float = 0.0,
                source: str = "<array>") -> Tensor:
        """Hidden states of one recording: returns float32 (K, T, D) on the CPU, K = len(layers)
        in the order asked, T = (N - receptive_field) // hop + 1 at the model rate.
        chunk_seconds=None runs the whole track in one pass."""
        indices = self.resolve_layers(layers)
        signal = self.prepare(wav, sample_rate, source)
        frames = audio.num_frames(signal.numel(), hop=self.config.hop, receptive_field=self.config.receptive_field)
        features = torch.empty(len(indices), frames, self.dim)  # filled in place: no second copy at the end
        position = 0
        for piece in self._pieces(signal, indices, chunk_seconds, context_seconds):
            features[:, position:position + piece.shape[1]] = piece
            position += piece.shape[1]
        return features

    @torch.no_grad()
    def extract_mean(self, wav: np.ndarray | Tensor, sample_rate: int, layers: Sequence[int] | None = None,
                     chunk_seconds: float | None = 30.0, context_seconds: float = 0.0,
                     source: str = "<array>") -> Tensor:
        """`extract(...).mean(1)`, float32 (K, D), without ever holding (K, T, D): the frames of
        each chunk are added to a float64 running sum, so memory is flat in the track's length
        (a 3-hour track of a base model's 13 layers would be ~22 GB of frames) and the sum of
        hundreds of thousands of frames loses nothing to float32 rounding."""
        indices = self.resolve_layers(layers)
        signal = self.prepare(wav, sample_rate, source)
        total = torch.zeros(len(indices), self.dim, dtype=torch.float64)  # (K, D)
        count = 0
        for piece in self._pieces(signal, indices, chunk_seconds, context_seconds):  # (K, t, D)
            total += piece.double().sum(1)
            count += piece.shape[1]
        return (total / count).float()

    def _pieces(self, signal: Tensor, indices: list[int], chunk_seconds: float | None,
                context_seconds: float) -> Iterator[Tensor]:
        """The frames of `signal` chunk by chunk, (K, t, D) each, in order: `audio.plan_chunks`."""
        _check_chunking(chunk_seconds, context_seconds)
        total = signal.numel()
        chunk = total if chunk_seconds is None else max(int(chunk_seconds * self.sample_rate), self.config.hop)
        plan = audio.plan_chunks(total, chunk, hop=self.config.hop, receptive_field=self.config.receptive_field,
                                 context_samples=int(context_seconds * self.sample_rate))
        for chunk in plan:
            yield self._run_window(signal[chunk.start:chunk.stop], indices)[:, chunk.keep_start:chunk.keep_stop]

    @torch.inference_mode()
    def extract_batch(self, windows: np.ndarray, pool: bool = False, source: str = "<array>") -> Tensor:
        """Every hidden state of B windows of equal length at the model rate, in one forward
        pass: (B, N) float32 -> float32 (B, K, T, D) on the CPU, or (B, K, D) time means with
        `pool`. Each window is prepared as `extract` prepares a whole track (its own waveform
        normalisation), and no padding is involved, so row b equals `extract(windows[b])` up
        to float32 rounding (the batch changes the order of no sum within a window)."""
        if windows.ndim != 2:
            raise ValueError(f"windows must be (batch, samples), got shape {windows.shape}")
        if not np.all(np.isfinite(windows)):
            raise audio.AudioError(source, "non-finite samples (NaN or inf)")
        audio.check_length(windows, self.config.receptive_field, source, sample_rate=self.sample_rate)
        signal = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32)).to(self.device)
        if self.config.normalize_waveform:
            signal = normalize_waveform(signal, torch.full((len(signal),), signal.shape[1], device=self.device))
        with self._autocast():
            out = self.backbone(signal)
        states = list(out.layers[:-1]) + [out.last_hidden_state]
        if pool:  # (B, T, D) -> (B, D) per layer, on the device: only K x D numbers per window come back
            return torch.stack([state.float().mean(1) for state in states], 1).cpu()  # (B, K, D)
        return torch.stack([state.float() for state in states], 1).cpu()  # (B, K, T, D)

    def _run_window(self, window: Tensor, indices: list[int]) -> Tensor:
        wav = window[None].to(self.device)  # (1, n)
        # Stop after the deepest block asked for; a pre-LN model's last state gets its final norm.
        deepest = max(indices)
        with self._autocast():
            out = self.backbone(wav, num_layers=max(deepest, 1))
        states = list(out.layers)
        if deepest == self.config.num_layers:
            states[-1] = out.last_hidden_state
        return torch.stack([states[i][0].float().cpu() for i in indices])  # (K, T, D)

    def _autocast(self):
        if self.dtype == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def extract_file(self, path: str | Path, layers: Sequence[int] | None = None,
                     chunk_seconds: float | None = 30.0, context_seconds: float = 0.0, pool: str = "none") -> Tensor:
        """(K, T, D) frames of an audio file, or with pool="mean" their (K, D) mean (`extract_mean_file`)."""
        if pool == "mean":
            return self.extract_mean_file(path, layers, chunk_seconds, context_seconds)
        wav = audio.load_audio(path, self.sample_rate)
        return self.extract(wav, self.sample_rate, layers, chunk_seconds, context_seconds, source=str(path))

    @torch.no_grad()
    def extract_mean_file(self, path: str | Path, layers: Sequence[int] | None = None,
                          chunk_seconds: float | None = 30.0, context_seconds: float = 0.0,
                          block_seconds: float = 60.0) -> Tensor:
        """`extract(load_audio(path)).mean(1)`, float32 (K, D), with memory flat in the track's
        length, decoded audio included: the file is decoded as a stream of `block_seconds`
        blocks (`audio.stream_audio`), cut into exactly the windows `extract` would run
        (`audio.stream_chunks`) and pooled in a float64 running sum, as `extract_mean`. A model
        that standardises its input (data2vec) first reads the file once for the track's mean
        and variance (float64), so the second pass feeds the same normalised samples.
        `block_seconds` is load_audio's default: libsndfile decodes a truncated MP3 differently
        when read in other block sizes."""
        _check_chunking(chunk_seconds, context_seconds)
        indices, source = self.resolve_layers(layers), str(path)
        stats = None
        if self.config.normalize_waveform:
            stats = _track_moments(audio.stream_audio(path, self.sample_rate, block_seconds=block_seconds))
        blocks = _CountedBlocks(audio.stream_audio(path, self.sample_rate, block_seconds=block_seconds))
        total = torch.zeros(len(indices), self.dim, dtype=torch.float64)  # (K, D)
        count = 0
        for plan, samples in self._stream_windows(blocks, chunk_seconds, context_seconds):
            window = torch.from_numpy(samples)  # (n,)
            if stats is not None:
                window = _standardise(window, stats[1], stats[2], self.normalize_eps)
            piece = self._run_window(window, indices)[:, plan.keep_start:plan.keep_stop]  # (K, t, D)
            total += piece.double().sum(1)
            count += piece.shape[1]
        audio.check_num_samples(blocks.samples, self.config.receptive_field, source, sample_rate=self.sample_rate)
        if stats is not None and stats[0] != blocks.samples:
            raise audio.AudioError(source, f"decoded {stats[0]} samples, then {blocks.samples}: did the file change?")
        return (total / count).float()

    def _stream_windows(self, blocks: Iterable[np.ndarray], chunk_seconds: float | None,
                        context_seconds: float) -> Iterator[tuple[audio.Chunk, np.ndarray]]:
        """`_pieces`' windows, cut from a stream (one pass: a chunk longer than any track)."""
        chunk = sys.maxsize if chunk_seconds is None else max(int(chunk_seconds * self.sample_rate), self.config.hop)
        return audio.stream_chunks(blocks, chunk, hop=self.config.hop, receptive_field=self.config.receptive_field,
                                   context_samples=int(context_seconds * self.sample_rate))


class _CountedBlocks:
    """Blocks passed through, their samples counted (the stream's length is known at its end)."""

    def __init__(self, blocks: Iterable[np.ndarray]):
        self.blocks, self.samples = blocks, 0

    def __iter__(self) -> Iterator[np.ndarray]:
        for block in self.blocks:
            self.samples += len(block)
            yield block


def _check_chunking(chunk_seconds: float | None, context_seconds: float) -> None:
    if chunk_seconds is not None and not chunk_seconds > 0:
        raise ValueError(f"chunk_seconds must be > 0 or None (one pass), got {chunk_seconds}")
    if not context_seconds >= 0:
        raise ValueError(f"context_seconds must be >= 0, got {context_seconds}")


def _track_moments(blocks: Iterator[np.ndarray]) -> tuple[int, float, float]:
    """(samples, mean, population variance) of a streamed track, in float64: the blocks' own
    moments merged pairwise (Chan et al.'s update), which unlike a running sum of squares loses
    nothing to cancellation when the mean is large against the spread."""
    count, mean, squares = 0, 0.0, 0.0  # squares: sum of squared deviations from `mean`
    for block in blocks:
        values = block.astype(np.float64)
        block_mean = float(values.mean())
        block_squares = float(np.square(values - block_mean).sum())
        delta, merged = block_mean - mean, count + len(values)
        mean += delta * len(values) / merged
        squares += block_squares + delta * delta * count * len(values) / merged
        count = merged
    return count, mean, squares / max(count, 1)


def _standardise(window: Tensor, mean: float, variance: float, eps: float) -> Tensor:
    """`normalize_waveform`'s arithmetic (float32, same operations) with whole-track statistics."""
    mean32, variance32 = torch.tensor(mean, dtype=torch.float32), torch.tensor(variance, dtype=torch.float32)
    return (window - mean32) / torch.sqrt(variance32 + eps)


def _all_finite(array: np.ndarray, block: int = 1 << 20) -> bool:
    """`np.isfinite(array).all()` a block at a time: no mask as long as a 3-hour track (173 MB)."""
    flat = array.reshape(-1)
    return all(np.isfinite(flat[start:start + block]).all() for start in range(0, flat.size, block))


def load_model(path: str | Path, device: torch.device | str | None = None, dtype: str = "auto",
               **overrides) -> Encoder:
    """Open a model directory (config.json + model.safetensors or pytorch_model.bin): ours, a
    pre-training checkpoint, or transformers'; or MusicFM's or MuQ's published layout. `overrides` change non-weight config fields
    (e.g. isolate_padding=False to reproduce transformers on padded batches)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model directory")
    if not path.is_dir():
        raise ValueError(f"{path}: a model is a directory holding config.json and weights, not a file")
    for is_layout, load in ((is_musicfm_dir, load_musicfm), (is_muq_dir, load_muq)):  # interop/musicfm.py
        if is_layout(path):
            if overrides:
                raise ValueError(f"{path}: a MusicFM / MuQ directory takes no config overrides, got {sorted(overrides)}")
            return Encoder(load(path), device=device, name=path.name, dtype=dtype)
    backbone, preprocessing = load_pretrained(path, **overrides)
    return Encoder(backbone, device=device, name=path.name, normalize_eps=preprocessing.normalize_eps, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# many files -> one .npz, written incrementally so memory does not grow with the corpus

def expand_audio_paths(items: Sequence[str | Path]) -> list[Path]:
    """Files as given; directories scanned recursively for audio by extension (any case)."""
    paths = []
    for item in map(Path, items):
        if item.is_dir():
            paths += audio.find_audio_files(item)
        else:
            paths.append(item)
    return paths


class NothingExtracted(ValueError):
    """No input file could be read: the output is not written (an existing one is kept)."""


def check_output_file(out: str | Path) -> Path:
    """Refuse, before any work, an output file that cannot be written: an existing directory in
    its place, a file where a parent directory should be, a read-only parent."""
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"{out}: is a directory; the output is a file (e.g. {out / 'features.npz'})")
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent  # the folder the missing parents would be made in
    if not ancestor.is_dir():
        raise ValueError(f"{out}: cannot be written: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"{out}: cannot be written: no permission to write in {ancestor}")
    return out


def extract_to_npz(encoder: Encoder, paths: Sequence[Path], out: str | Path, layers: Sequence[int] | None = None,
                   chunk_seconds: float | None = 30.0, context_seconds: float = 0.0, pool: str = "none",
                   progress: bool = True) -> tuple[int, list[tuple[str, str]]]:
    """Write one array per file, keyed by the path as given: (K, T, D) float32 frames, or (K, D)
    with pool="mean" (`extract_mean_file`: the file is streamed, memory flat in the track's
    length); plus `layers`, `frame_rate_hz`, `sample_rate` and `files`. A file that fails is reported and skipped; if
    none is read, NothingExtracted is raised and `out` is left as it was (an existing archive is
    only ever replaced by a complete new one). Returns (files written, [(path, reason), ...])."""
    import zipfile

    from tqdm import tqdm

    if pool not in ("none", "mean"):
        raise ValueError(f"pool must be 'none' or 'mean', got {pool!r}")
    indices = encoder.resolve_layers(layers)
    out = check_output_file(out)
    failures, names = [], []
    with atomic_path(out) as partial, zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for path in tqdm(paths, desc="extract", unit="file", disable=not progress):
            try:
                array = encoder.extract_file(path, indices, chunk_seconds, context_seconds, pool)
            except (audio.AudioError, OSError) as error:
                failures.append((str(path), str(error)))
                tqdm.write(f"skipped {error}", file=sys.stderr)
                continue
            _write_member(archive, str(path), array.numpy())
            names.append(str(path))
        if not names:  # raised inside: atomic_path removes the partial archive, `out` stays as it was
            raise NothingExtracted(f"{out}: not written: none of the {len(paths)} input file(s) could be read "
                                   f"(first: {failures[0][1]})")
        _write_member(archive, "layers", np.asarray(indices))
        _write_member(archive, "frame_rate_hz", np.asarray(encoder.frame_rate_hz))
        _write_member(archive, "sample_rate", np.asarray(encoder.sample_rate))
        _write_member(archive, "files", np.asarray(names, dtype=str))
    return len(names), failures


def _write_member(archive, key: str, array: np.ndarray) -> None:
    with archive.open(key + ".npy", "w", force_zip64=True) as member:
        np.lib.format.write_array(member, np.require(array, requirements="C"), allow_pickle=False)

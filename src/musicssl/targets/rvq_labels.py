"""`musicssl labels rvq`: residual codes as label directories the trainer reads, one per codebook
(MERT's 8 acoustic codebooks; docs/method.md §10.3), from a fitted Mel-RVQ (`--rvq`, `musicssl rvq fit`)
or from EnCodec 24 kHz at 6 kbps (`--codec encodec --checkpoint FILE.th`, the codes MERT-v1 trains on).

    CODES/codebooks.json              {"format": "musicssl-codebooks", "codebooks": ["codebook_0", ...],
                                       "grid": ..., "source": {kind, the RVQ's directory and config
                                       fingerprint | the checkpoint's path, sha256 and the codec settings}}
    CODES/codebook_i/labels.json      an ordinary label set: grid, k, how it was made, manifest fingerprints
    CODES/codebook_i/{split}.km       one line of codes per manifest row

`--labels CODES` stands for its codebooks in order (data/label_files.expand_label_dirs), so nothing
(no dictionary file, no label names) is left for the user to get right. Each row is tokenised whole
(eval mode, float32), a token per `hop` samples: a row of n samples has n // hop codes per codebook
(the grid's window is the hop). Files not at the tokenizer's rate are resampled (soxr, as every
reader here), said once.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from musicssl import atomic, audio
from musicssl.config import fingerprint, to_dict
from musicssl.data.label_files import (CODEBOOKS_FORMAT, CODEBOOKS_JSON, LABELS_JSON, LabelGrid, check_labels,
                                       label_file)
from musicssl.data.manifest import check_sample_rate, read_manifest
from musicssl.interop.encodec import load_encodec
from musicssl.targets.rvq_fit import load_mel_rvq

CODECS = ("encodec",)


@dataclass(frozen=True)
class CodeSource:
    """What tokenises a row: (n,) float32 waveform at `sample_rate` -> (n // hop, num_codebooks) codes."""

    tokens: Callable[[torch.Tensor], torch.Tensor]
    sample_rate: int
    hop: int
    num_codebooks: int
    codebook_size: int
    seed: int | None
    info: dict  # codebooks.json's "source", each labels.json's "feature"


def codebook_name(index: int) -> str:
    return f"codebook_{index}"


def write_rvq_labels(manifest_dir: str | Path, out: str | Path, rvq_dir: str | Path,
                     splits: tuple[str, ...] = ("train", "valid"), device: str = "cpu") -> Path:
    """A Mel-RVQ's codes; see `write_codes`."""
    rvq_dir = Path(rvq_dir)
    rvq = load_mel_rvq(rvq_dir).to(device)
    config = rvq.config

    def tokens(wav: torch.Tensor) -> torch.Tensor:
        codes = rvq.tokens(wav[None].to(device))[0]  # (T, S), -1 where no token was computed
        return codes[(codes >= 0).all(-1)]  # none for a file shorter than a token or half the STFT window

    return write_codes(manifest_dir, out, CodeSource(
        tokens, config.sample_rate, config.token_hop, config.num_codebooks, config.codebook_size, config.init_seed,
        {"kind": "mel_rvq", "rvq": str(rvq_dir.resolve()), "rvq_config": fingerprint(to_dict(config))}), splits)


def write_codec_labels(manifest_dir: str | Path, out: str | Path, codec: str, checkpoint: str | Path,
                       splits: tuple[str, ...] = ("train", "valid"), device: str = "cpu") -> Path:
    """EnCodec 24 kHz codes at 6 kbps (8 codebooks of 1,024 at 75 Hz) from the user's checkpoint: the
    file is read and checked (one line naming it, nothing written) before any audio is."""
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; known: {', '.join(CODECS)}")
    checkpoint = Path(checkpoint)
    tokenizer, sha = load_encodec(checkpoint)
    tokenizer = tokenizer.to(device)
    config = tokenizer.config
    settings = {"sample_rate": config.sample_rate, "bandwidth_kbps": config.bandwidth_kbps,
                "frame_rate": config.frame_rate, "num_codebooks": config.num_codebooks,
                "codebook_size": config.codebook_size, "normalize": config.normalize,
                "segment_seconds": config.segment_seconds}
    info = {"kind": "encodec", "checkpoint": str(checkpoint.resolve()), "sha256": sha, "codec": settings,
            "codec_config": fingerprint(to_dict(config))}
    return write_codes(manifest_dir, out, CodeSource(
        lambda wav: tokenizer.tokens(wav[None].to(device))[0], config.sample_rate, config.hop,
        config.num_codebooks, config.codebook_size, None, info), splits)


def write_codes(manifest_dir: str | Path, out: str | Path, source: CodeSource,
                splits: tuple[str, ...] = ("train", "valid")) -> Path:
    """Tokenise every row of each split's manifest (a split without a tsv is skipped, train is
    required) and write OUT whole (a temporary sibling renamed at the end)."""
    manifest_dir = Path(manifest_dir)
    grid = LabelGrid(source.sample_rate, source.hop, source.hop)
    manifests = {}
    for split in splits:
        path = manifest_dir / f"{split}.tsv"
        if not path.exists() and split != "train":
            continue
        check_sample_rate(path, source.sample_rate)  # a missing train.tsv: one line naming it
        manifests[split] = read_manifest(path)
    resampled = _ResampleNote(source.sample_rate)
    with atomic.atomic_path(out) as partial:
        partial.mkdir(parents=True)
        names = [codebook_name(i) for i in range(source.num_codebooks)]
        for name in names:
            (partial / name).mkdir()
        for split, manifest in manifests.items():
            handles = [label_file(partial / name, split).open("w", encoding="utf-8") for name in names]
            try:
                for row in range(len(manifest)):
                    resampled.check(manifest.path(row))
                    codes = _row_codes(source, manifest.path(row))  # (T, S)
                    for codebook, handle in enumerate(handles):
                        handle.write(" ".join(map(str, codes[:, codebook].tolist())) + "\n")
            finally:
                for handle in handles:
                    handle.close()
        fingerprints = {split: manifest.fingerprint for split, manifest in manifests.items()}
        for index, name in enumerate(names):
            info = {"feature": {**source.info, "codebook": index}, "k": source.codebook_size, "seed": source.seed,
                    "fit_fraction": None, "max_frames": None,
                    "grid": {"sample_rate": grid.sample_rate, "hop": grid.hop, "window": grid.window,
                             "rate_hz": grid.rate_hz},
                    "manifest_fingerprints": fingerprints}
            for split, manifest in manifests.items():
                summary = check_labels(label_file(partial / name, split), manifest, grid, source.codebook_size)
                info.setdefault("summary", {})[split] = summary.line(split)
                print(f"{name} {summary.line(split)}", file=sys.stderr)
            atomic.write_text(partial / name / LABELS_JSON, json.dumps(info, indent=2) + "\n")
        listing = {"format": CODEBOOKS_FORMAT, "version": 1, "codebooks": names, "grid": info["grid"],
                   "source": source.info}
        atomic.write_text(partial / CODEBOOKS_JSON, json.dumps(listing, indent=2) + "\n")
    return Path(out)


class _ResampleNote:
    """Says once, on stderr, that audio at another rate is resampled to the tokenizer's."""

    def __init__(self, sample_rate: int):
        self.sample_rate, self.said = sample_rate, False

    def check(self, path: Path) -> None:
        if self.said:
            return
        try:
            rate = audio.audio_info(path).sample_rate
        except (audio.AudioError, OSError):
            return  # the row's decoding says what is wrong with it
        if rate != self.sample_rate:
            print(f"note: {path} is {rate} Hz audio, resampled to {self.sample_rate} Hz (soxr HQ), as is every "
                  f"file here not at {self.sample_rate} Hz (said once)", file=sys.stderr)
            self.said = True


def _row_codes(source: CodeSource, path: Path) -> np.ndarray:
    """(T, S) codes of one file, T = samples // hop."""
    wav = torch.from_numpy(np.ascontiguousarray(audio.load_audio(path, source.sample_rate), dtype=np.float32))
    return source.tokens(wav).cpu().numpy()

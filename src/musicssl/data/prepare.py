"""`musicssl prepare`: decode a manifest's files once, at the model's rate, into int16 shards.

Layout of a prepared directory (``PREPARED``)::

    prepared.json                       format, sample rate, per split: rows, shards, manifest digest
                                        (rows + root) and fingerprint (rows: what label sets record)
    train.tsv                           the source manifest, row for row (fairseq's format: label
                                        files made for the source manifest line up with it)
    train-00003-of-00008.i16            shard 3: its rows' samples back to back, mono int16
    train-00003-of-00008.npz            shard 3's index: offset, length (-1: unreadable), scale per row

Shard k holds rows ``[k * R // n, (k + 1) * R // n)``. A row is stored as ``round(x / step)`` with
``step = scale / 32768`` and ``scale = max(1, peak * 32768 / 32767)``: int16 without clipping (a
resampled file may exceed 1.0), and a 16-bit file already at the model's rate is stored exactly
(libsndfile reads PCM_16 as k / 32768). Quantisation error <= step / 2.

Why this format: reading a crop is one contiguous slice of a memory map (no decoder, no
resampler; benchmarks/loader_speed.py measures it against decoding), and shards are plain files
that any number of processes or array jobs write independently.

Resumable and parallel: a shard's samples and then its index are written under temporary names and
renamed; a shard whose index exists is done and skipped. ``shard=i`` writes only shard i (one
array job), otherwise every unfinished shard is written by ``workers`` processes. Every job checks
that ``prepared.json`` agrees (same manifest, rate and shard count) before writing.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from musicssl import atomic, audio
from musicssl.config import read_json
from musicssl.data.manifest import Manifest, check_sample_rate, read_manifest, write_manifest

PREPARED = "prepared.json"
FORMAT = "musicssl int16 shards v1"
ROWS_PER_SHARD = 256  # default shard size: ~2 GB of 4-minute songs, ~40 MB of 5 s clips at 16 kHz


def is_prepared(directory: str | Path) -> bool:
    return (Path(directory) / PREPARED).is_file()


def shard_name(split: str, shard: int, num_shards: int) -> str:
    return f"{split}-{shard:05d}-of-{num_shards:05d}"


def shard_rows(num_rows: int, shard: int, num_shards: int) -> range:
    return range(shard * num_rows // num_shards, (shard + 1) * num_rows // num_shards)


def _digest(manifest: Manifest) -> str:
    text = "\n".join(f"{path}\t{count}" for path, count in manifest.items)
    return hashlib.sha256(f"{manifest.root}\n{text}".encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# writing


@dataclass
class PrepareSummary:
    written: list[str]  # shards written by this call
    done: int  # shards complete in all
    total: int
    unreadable: int  # rows of the shards written here that could not be stored


def prepare(manifest_dir: str | Path, out_dir: str | Path, sample_rate: int = 16_000, splits=("train",),
            num_shards: int | None = None, shard: int | None = None, workers: int | None = None,
            progress: bool = True) -> PrepareSummary:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plans = [_plan_split(Path(manifest_dir), out_dir, split, sample_rate, num_shards) for split in splits]
    meta = {"format": FORMAT, "sample_rate": sample_rate,
            "splits": {split: {"rows": rows, "num_shards": n, "manifest": digest, "fingerprint": fingerprint}
                       for split, rows, n, digest, fingerprint in plans}}
    _agree_on_metadata(out_dir, meta)
    jobs = [(str(manifest_dir), str(out_dir), split, k, n, sample_rate) for split, _, n, *_ in plans
            for k in range(n) if (shard is None or k == shard) and not _done(out_dir, split, k, n)]
    if shard is not None and any(shard >= n for _, _, n, *_ in plans):
        raise ValueError(f"--shard {shard} is out of range: {[(s, n) for s, _, n, *_ in plans]} (split, shards)")
    workers = min(len(jobs), workers if workers is not None else min(4, os.cpu_count() or 1)) or 1
    results = _run(jobs, workers, progress)
    done = sum(_done(out_dir, split, k, n) for split, _, n, *_ in plans for k in range(n))
    return PrepareSummary([name for name, _ in results], done, sum(n for _, _, n, *_ in plans),
                          sum(bad for _, bad in results))


def _plan_split(manifest_dir: Path, out_dir: Path, split: str, sample_rate: int,
                num_shards: int | None) -> tuple[str, int, int, str, str]:
    manifest = read_manifest(manifest_dir / f"{split}.tsv")
    if not is_prepared(manifest_dir):
        check_sample_rate(manifest_dir / f"{split}.tsv", sample_rate, manifest)
    if len(manifest) == 0:
        raise ValueError(f"{manifest_dir / f'{split}.tsv'}: no rows to prepare")
    n = num_shards if num_shards is not None else -(-len(manifest) // ROWS_PER_SHARD)
    if not 1 <= n <= len(manifest):
        raise ValueError(f"--num-shards must be in 1..{len(manifest)} for {split} ({len(manifest)} rows), got {n}")
    target = out_dir / f"{split}.tsv"
    if not target.exists():  # the same rows in the same order: label files keep lining up
        write_manifest(target, manifest.root, list(manifest.items), sample_rate)
    return split, len(manifest), n, _digest(manifest), manifest.fingerprint


def _agree_on_metadata(out_dir: Path, meta: dict) -> None:
    path = out_dir / PREPARED
    if path.exists():
        old = read_json(path)
        same = old.get("format") == FORMAT and old.get("sample_rate") == meta["sample_rate"] and all(
            _same_split(old.get("splits", {}).get(split), value) for split, value in meta["splits"].items())
        if not same:
            raise ValueError(f"{path}: this directory was prepared with {old}, not {meta}; use another --out "
                             "or the same manifest, --sample-rate and --num-shards")
        meta = {**old, "splits": {**old["splits"], **meta["splits"]}}
    atomic.write_text(path, json.dumps(meta, indent=2) + "\n")  # jobs racing here write the same content


def _same_split(old: dict | None, new: dict) -> bool:
    """A field the old record lacks (`fingerprint`, before it was recorded) agrees: its digest covers the rows."""
    return old is not None and all(old.get(key, value) == value for key, value in new.items())


def _done(out_dir: Path, split: str, shard: int, num_shards: int) -> bool:
    return (out_dir / f"{shard_name(split, shard, num_shards)}.npz").is_file()


def _run(jobs: list[tuple], workers: int, progress: bool) -> list[tuple[str, int]]:
    from tqdm import tqdm

    if workers <= 1:
        results = map(_write_shard_star, jobs)
        pool = None
    else:
        pool = ProcessPoolExecutor(max_workers=workers)
        results = pool.map(_write_shard_star, jobs)
    try:
        return list(tqdm(results, total=len(jobs), desc="prepare", unit="shard", disable=not progress))
    finally:
        if pool is not None:
            pool.shutdown()


def _write_shard_star(job: tuple) -> tuple[str, int]:
    return write_shard(*job)


def write_shard(manifest_dir: str, out_dir: str, split: str, shard: int, num_shards: int,
                sample_rate: int) -> tuple[str, int]:
    """Decode, resample and store one shard; returns (its name, rows that could not be stored)."""
    manifest = read_manifest(Path(manifest_dir) / f"{split}.tsv")
    name = shard_name(split, shard, num_shards)
    data, index = Path(out_dir) / f"{name}.i16", Path(out_dir) / f"{name}.npz"
    rows = shard_rows(len(manifest), shard, num_shards)
    offsets, lengths, scales = (np.zeros(len(rows), dtype) for dtype in (np.int64, np.int64, np.float32))
    position, unreadable = 0, 0
    with atomic.atomic_path(data) as partial, partial.open("wb") as handle:
        for i, row in enumerate(rows):
            wav = _decode(manifest, row, sample_rate)  # (N,) or None
            offsets[i] = position
            if wav is None:
                lengths[i], scales[i] = -1, 1.0
                unreadable += 1
                continue
            scales[i] = max(1.0, float(np.abs(wav).max(initial=0.0)) * 32768 / 32767)
            quantised = np.round(wav * (32768 / scales[i])).astype(np.int16)  # |.| <= 32767
            handle.write(quantised.tobytes())
            lengths[i], position = len(wav), position + len(wav)
    # the index last: it marks the shard complete (a handle: np.savez would append .npz to a name)
    with atomic.atomic_path(index) as partial, partial.open("wb") as handle:
        np.savez(handle, offsets=offsets, lengths=lengths, scales=scales)
    return name, unreadable


def _decode(manifest: Manifest, row: int, sample_rate: int) -> np.ndarray | None:
    path, expected = manifest.path(row), manifest.num_samples(row)
    try:
        wav = audio.load_audio(path, sample_rate)
    except (audio.AudioError, OSError, RuntimeError) as error:
        print(f"prepare: row {row} {path}: {getattr(error, 'problem', error)}; stored as unreadable", file=sys.stderr)
        return None
    if len(wav) != expected:
        print(f"prepare: row {row} {path}: decodes to {len(wav)} samples at {sample_rate} Hz, the manifest says "
              f"{expected} (changed since the manifest, or another --sample-rate); stored as unreadable",
              file=sys.stderr)
        return None
    return wav


# ---------------------------------------------------------------------------------------------
# reading


class PreparedCorpus:
    """Rows of a prepared split: ``read(row, start, stop)`` is float32 samples of that row.

    Shards are memory-mapped on first use in each process (a pickled instance, as DataLoader
    workers get it, carries the indices only and maps its own)."""

    def __init__(self, directory: str | Path, split: str, sample_rate: int):
        self.directory, self.split = Path(directory), split
        meta = read_json(self.directory / PREPARED)
        if meta.get("format") != FORMAT:
            raise ValueError(f"{self.directory / PREPARED}: format {meta.get('format')!r}, expected {FORMAT!r}")
        if meta["sample_rate"] != sample_rate:
            raise ValueError(f"{self.directory}: prepared at {meta['sample_rate']} Hz, the model reads {sample_rate} Hz; "
                             f"run `musicssl prepare --sample-rate {sample_rate}` into another directory")
        if split not in meta["splits"]:
            raise ValueError(f"{self.directory}: split {split!r} was not prepared (have {sorted(meta['splits'])})")
        info = meta["splits"][split]
        self.num_shards = info["num_shards"]
        missing = [k for k in range(self.num_shards) if not _done(self.directory, split, k, self.num_shards)]
        if missing:
            raise ValueError(f"{self.directory}: {len(missing)} of {self.num_shards} {split} shards are not written "
                             f"yet (first: {missing[:5]}); run `musicssl prepare` again to finish them")
        parts = [np.load(self.directory / f"{shard_name(split, k, self.num_shards)}.npz")
                 for k in range(self.num_shards)]
        self.offsets = np.concatenate([p["offsets"] for p in parts])  # (R,)
        self.lengths = np.concatenate([p["lengths"] for p in parts])  # (R,) -1: unreadable
        self.steps = np.concatenate([p["scales"] for p in parts]) / np.float32(32768)  # (R,)
        self.shard_of = np.concatenate([np.full(len(p["offsets"]), k, np.int32) for k, p in enumerate(parts)])
        if len(self.offsets) != info["rows"]:
            raise ValueError(f"{self.directory}: shards hold {len(self.offsets)} {split} rows, prepared.json says "
                             f"{info['rows']}")
        self.digest = info["manifest"]
        self.fingerprint = info.get("fingerprint")  # the rows' (Manifest.fingerprint); None: prepared before it
        self._maps: dict[int, np.memmap] = {}

    def check_manifest(self, manifest: Manifest) -> None:
        if _digest(manifest) != self.digest or self.fingerprint not in (None, manifest.fingerprint):
            raise ValueError(f"{self.directory}/{self.split}.tsv differs from the manifest the shards were made from "
                             f"(fingerprint {self.fingerprint}, the tsv {manifest.fingerprint}); run `musicssl "
                             "prepare` from the current manifest into a new --out")

    def read(self, row: int, start: int, stop: int) -> np.ndarray | None:
        """(stop - start,) float32, or None if the row could not be decoded when prepared."""
        if self.lengths[row] < 0:
            return None
        shard = int(self.shard_of[row])
        if shard not in self._maps:
            path = self.directory / f"{shard_name(self.split, shard, self.num_shards)}.i16"
            self._maps[shard] = np.memmap(path, dtype=np.int16, mode="r")
        first = int(self.offsets[row])
        return self._maps[shard][first + start:first + stop].astype(np.float32) * self.steps[row]

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_maps": {}}

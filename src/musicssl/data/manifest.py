"""Manifests: fairseq's tsv listing of a corpus, so existing HuBERT/MERT recipe files work here.

    /abs/root/dir
    relative/path.flac<TAB>num_samples
    ...

`num_samples` is the length at the model's sample rate after decoding and resampling (what
`audio.load_audio(path, rate)` returns), so label counts can be checked against it exactly.
Building a manifest decodes every file once: a file that cannot be decoded, is empty, holds
NaN/inf or is shorter than the minimum is reported (stderr and a report file) and left out, as is
a file whose name holds a tab or a line break (the tsv cannot store it).

Identity: `Manifest.fingerprint` digests the rows (relative path and sample count, in order; not
the root, so a moved corpus or a prepared copy keeps it). Labels and prepared shards record the
fingerprint of the rows they were made from and refuse another. `write_manifest` also keeps
`manifest.json` beside the tsv ({split: {rows, fingerprint}}) for tools that only want to read
it; the tsv itself stays fairseq's format, and checks recompute the fingerprint from the rows.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from musicssl import atomic, audio
from musicssl.config import fingerprint

REPORT_NAME = "manifest_report.tsv"
SIDECAR_NAME = "manifest.json"


class ManifestError(ValueError):
    """A malformed manifest; the message names the file and line."""


@dataclass(frozen=True)
class Manifest:
    root: Path
    items: tuple[tuple[str, int], ...]  # (path relative to root, num_samples)

    def __len__(self) -> int:
        return len(self.items)

    @cached_property
    def fingerprint(self) -> str:
        """What labels and shards made from these rows record: any reordering changes it."""
        return fingerprint([[relative, count] for relative, count in self.items])

    def path(self, index: int) -> Path:
        return self.root / self.items[index][0]

    def num_samples(self, index: int) -> int:
        return self.items[index][1]

    def shard(self, shard: int, num_shards: int) -> range:
        """Row indices of one of `num_shards` contiguous shards (merging keeps the row order)."""
        if not 0 <= shard < num_shards:
            raise ValueError(f"shard must be in 0..{num_shards - 1}, got {shard}")
        return range(len(self) * shard // num_shards, len(self) * (shard + 1) // num_shards)


def read_manifest(path: str | Path) -> Manifest:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: manifest not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ManifestError(f"{path}: not a text manifest (not UTF-8)") from None
    if not lines or not lines[0].strip():
        raise ManifestError(f"{path}:1: the first line must be the audio root directory")
    if "\t" in lines[0]:
        raise ManifestError(f"{path}:1: the first line must be the root directory alone, got {lines[0]!r}")
    items = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise ManifestError(f"{path}:{number}: expected 'relative/path<TAB>num_samples', got {line!r}")
        try:
            count = int(fields[1])
        except ValueError:
            raise ManifestError(f"{path}:{number}: num_samples {fields[1]!r} is not an integer") from None
        if count <= 0:
            raise ManifestError(f"{path}:{number}: num_samples must be positive, got {count}")
        items.append((fields[0], count))
    return Manifest(Path(lines[0].strip()), tuple(items))


def write_manifest(path: str | Path, root: str | Path, items: Sequence[tuple[str, int]],
                   sample_rate: int | None = None) -> None:
    """`sample_rate`: the rate the sample counts are at, kept in the sidecar (a reader at another
    rate is refused: `check_sample_rate`)."""
    path = Path(path)
    lines = [str(Path(root).resolve())] + [f"{relative}\t{count}" for relative, count in items]
    # array jobs of `musicssl prepare` write the same manifest at once: atomic's temporary is
    # per process, so one job cannot rename the other's file away (ENOENT)
    with atomic.atomic_path(path) as partial:
        partial.write_text("\n".join(lines) + "\n", encoding="utf-8")
    _record_in_sidecar(path, Manifest(Path(root), tuple(items)), sample_rate)


def _record_in_sidecar(path: Path, manifest: Manifest, sample_rate: int | None) -> None:
    sidecar = path.with_name(SIDECAR_NAME)
    try:
        splits = json.loads(sidecar.read_text())["splits"] if sidecar.exists() else {}
    except (ValueError, KeyError, TypeError):
        splits = {}  # a damaged sidecar is only a cache of the rows: rewrite it
    splits[path.stem] = {"rows": len(manifest), "fingerprint": manifest.fingerprint}
    if sample_rate is not None:
        splits[path.stem]["sample_rate"] = sample_rate
    atomic.write_text(sidecar, json.dumps({"splits": splits}, indent=2, sort_keys=True) + "\n")


def recorded_sample_rate(path: str | Path) -> int | None:
    """The rate `musicssl manifest` counted `path`'s samples at (None: not recorded, an older or
    hand-made manifest)."""
    path = Path(path)
    try:
        entry = json.loads(path.with_name(SIDECAR_NAME).read_text())["splits"][path.stem]
        return int(entry["sample_rate"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_sample_rate(path: str | Path, sample_rate: int, manifest: Manifest | None = None, rows: int = 3) -> None:
    """A manifest's sample counts are at one rate: read at another, every file looks changed. The
    rate `musicssl manifest` recorded, or for a manifest without the record (older, hand-made) the
    rate the first readable rows' headers imply. `manifest`: `path` already read (not read again)."""
    again = f"list the audio again with `musicssl manifest AUDIO_DIR -o DIR --sample-rate {sample_rate}`"
    recorded = recorded_sample_rate(path)
    if recorded is not None:
        if recorded != sample_rate:
            raise ManifestError(f"{path}: its sample counts are at {recorded} Hz, this model reads {sample_rate} Hz; "
                                f"{again}")
        return
    manifest = manifest if manifest is not None else read_manifest(path)
    for index in range(min(rows, len(manifest))):
        try:
            info = audio.audio_info(manifest.path(index))
        except (audio.AudioError, OSError):
            continue
        implied = manifest.num_samples(index) * info.sample_rate / max(info.num_frames, 1)
        if abs(implied - sample_rate) > 0.01 * sample_rate:
            raise ManifestError(f"{path}: its rows count samples at about {implied:.0f} Hz ({manifest.path(index)}: "
                                f"{info.num_frames} frames at {info.sample_rate} Hz listed as "
                                f"{manifest.num_samples(index)}), this model reads {sample_rate} Hz; {again}")
        return


def untsvable(relative: str) -> bool:
    """A name the tsv cannot hold: a tab splits its row, a line break (any that `splitlines`
    honours, as `read_manifest` does) starts a new one."""
    return "\t" in relative or len(f"x{relative}x".splitlines()) > 1


def probe(path: Path, sample_rate: int, min_samples: int) -> tuple[int | None, str]:
    """(num_samples at `sample_rate`, "") for a usable file, or (None, reason)."""
    try:
        wav = audio.load_audio(path, sample_rate)
        audio.check_length(wav, min_samples, path, sample_rate=sample_rate)
    except audio.AudioError as error:
        return None, error.problem
    except (OSError, RuntimeError, MemoryError) as error:
        return None, f"cannot decode: {error}"
    return int(wav.shape[-1]), ""


def _probe_star(args) -> tuple[int | None, str]:
    return probe(*args)


def probe_all(paths: Sequence[Path], sample_rate: int, min_samples: int, workers: int,
              progress: bool = True) -> Iterator[tuple[Path, int | None, str]]:
    from tqdm import tqdm

    jobs = [(path, sample_rate, min_samples) for path in paths]
    if workers <= 1:
        results = map(_probe_star, jobs)
    else:
        pool = ProcessPoolExecutor(max_workers=workers)
        results = pool.map(_probe_star, jobs, chunksize=8)
    for path, (count, reason) in tqdm(zip(paths, results), total=len(paths), desc="manifest",
                                      unit="file", disable=not progress):
        yield path, count, reason
    if workers > 1:
        pool.shutdown()


@dataclass
class ManifestSummary:
    train: int
    valid: int
    failed: list[tuple[str, str]]
    hours: float


def build_manifest(audio_dir: str | Path, out_dir: str | Path, valid_percent: float = 0.0, seed: int = 0,
                   sample_rate: int = 16_000, min_samples: int = 400, workers: int | None = None,
                   progress: bool = True) -> ManifestSummary:
    """Scan `audio_dir`, write `train.tsv`, `valid.tsv` and the failure report to `out_dir`."""
    root, out_dir = Path(audio_dir).resolve(), Path(out_dir)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a directory")
    if not 0.0 <= valid_percent < 100.0:
        raise ValueError(f"valid_percent must be in [0, 100), got {valid_percent}")
    paths = audio.find_audio_files(root)
    if not paths:
        raise FileNotFoundError(f"{root}: no audio files ({', '.join(audio.AUDIO_SUFFIXES)})")
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    if untsvable(str(root)):
        raise ValueError(f"{root}: the root directory's name holds a tab or line break; the manifest's "
                         "first line cannot store it (rename or link the folder)")
    good, failed = [], []
    paths = _storable(paths, root, failed)
    for path, count, reason in probe_all(paths, sample_rate, min_samples, workers, progress):
        relative = path.relative_to(root).as_posix()
        if count is None:
            failed.append((relative, reason))
            print(f"skipped {relative}: {reason}", file=sys.stderr)
        else:
            good.append((relative, count))
    if not good:
        raise ValueError(f"{root}: none of the {len(failed)} audio files could be used (see stderr)")
    train, valid = split_items(good, valid_percent, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(out_dir / "train.tsv", root, train, sample_rate)
    write_manifest(out_dir / "valid.tsv", root, valid, sample_rate)
    report = "".join(f"{_report_name(relative)}\t{reason}\n" for relative, reason in failed)
    atomic.write_text(out_dir / REPORT_NAME, "path\treason\n" + report)
    hours = sum(count for _, count in good) / sample_rate / 3600
    return ManifestSummary(len(train), len(valid), failed, hours)


def _storable(paths: list[Path], root: Path, failed: list[tuple[str, str]]) -> list[Path]:
    """The paths a tsv row can hold; each other one is reported (stderr, `failed`) and left out
    before decoding: written verbatim it would break its row and fail the next step."""
    kept = []
    for path in paths:
        relative = path.relative_to(root).as_posix()
        if not untsvable(relative):
            kept.append(path)
            continue
        failed.append((relative, "file name holds a tab or line break"))
        print(f"skipped {relative!r}: its name holds a tab or line break, which a tsv row cannot store; "
              "rename it", file=sys.stderr)
    return kept


def _report_name(relative: str) -> str:
    return repr(relative) if untsvable(relative) else relative  # the report is a tsv too


def split_items(items: list[tuple[str, int]], valid_percent: float,
                seed: int) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """A seeded random `valid_percent` of files for validation; both lists keep path order."""
    count = int(round(len(items) * valid_percent / 100.0))
    chosen = set(np.random.default_rng(seed).permutation(len(items))[:count].tolist())
    train = [item for index, item in enumerate(items) if index not in chosen]
    valid = [item for index, item in enumerate(items) if index in chosen]
    return train, valid

"""Pre-training labels: one line of cluster ids per manifest row, at the label rate.

Three steps, each restartable on its own (docs/method.md §3.1-3.4):

1. fit: stream a seeded fraction of the train files through the frame features, keep a
   bounded reservoir of frames, fit k-means; writes `kmeans.json` + `centroids.npy`.
2. assign: features -> nearest centroid for every row of a split, or of one contiguous shard
   of it (`--shard i --num-shards n`, for array jobs); writes `{split}.km` or shard files.
3. merge (after sharding) and check: row counts, frame counts per row, cluster usage.

`labels.json` describes the whole label set (feature kind and parameters, k, seed, fit
fraction, frame cap, the fingerprints of the manifest rows it labels, the k-means record,
per-split usage), so a label directory explains itself. Re-running into it with the same
arguments resumes; with any other one it is refused unless `overwrite` replaces the whole set.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from musicssl import audio
from musicssl.data.label_files import (IDENTITY_FIELDS, LABELS_JSON, LabelError, LabelGrid, LabelSummary,
                                       check_labels, check_made_from, label_file, read_label_set, write_label_json)
from musicssl.data.manifest import Manifest, read_manifest
from musicssl.frame_features import MfccExtractor, PitchExtractor, describe, describe_pitch
from musicssl.targets.features import MFCC_PRESETS, PITCH_PRESETS, layer_features
from musicssl.targets.frame_sampler import FrameSampler
from musicssl.targets.kmeans import KMeansConfig, fit_kmeans
from musicssl.targets.kmeans_model import KMeansModel


# ---------------------------------------------------------------------------------------------
# frame features: MFCC (100 Hz) or a layer of a model (its frame rate)


class FrameFeatures(Protocol):
    grid: LabelGrid

    def __call__(self, wav: np.ndarray) -> np.ndarray: ...  # (N,) at grid.sample_rate -> (T, D)
    def describe(self) -> dict: ...


class _SignalFeatures:
    """A batched torch extractor (wav (B, N) -> (B, T, D), lengths) run on one file at a time."""

    def __init__(self, extractor: torch.nn.Module, grid: LabelGrid, record: dict, device: str | None):
        self.grid, self.record = grid, record
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.extractor = extractor.to(self.device)

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            features, _ = self.extractor(torch.from_numpy(wav)[None].to(self.device))
        return features[0].float().cpu().numpy()  # (T, D)

    def describe(self) -> dict:
        return self.record


def _preset(presets: dict, name: str, what: str):
    if name not in presets:
        raise ValueError(f"unknown {what} preset {name!r}; known: {sorted(presets)}")
    return presets[name]


class MfccFeatures(_SignalFeatures):
    def __init__(self, preset: str = "mfcc39", device: str | None = None):
        c = self.config = _preset(MFCC_PRESETS, preset, "MFCC")
        super().__init__(MfccExtractor(c), LabelGrid(c.sample_rate, c.hop, c.window_samples), describe(c), device)


class PitchFeatures(_SignalFeatures):
    """Semitone spectra (or chroma) on the MFCC grid: labels for a second, harmonic codebook."""

    def __init__(self, preset: str = "semitone84", device: str | None = None):
        c = self.config = _preset(PITCH_PRESETS, preset, "pitch")
        super().__init__(PitchExtractor(c), LabelGrid(c.sample_rate, c.hop, c.grid_window), describe_pitch(c), device)


class LayerFeatures:
    """Hidden state `layer` of a model (the second HuBERT iteration uses block 6 of the first)."""

    def __init__(self, model: str | Path, layer: int, device: str | None = None, chunk_seconds: float = 30.0):
        from musicssl.extract import load_model

        self.encoder = load_model(model, device=device)
        self.layer = self.encoder.resolve_layers([layer])[0]
        self.model, self.chunk_seconds = str(model), chunk_seconds
        config = self.encoder.config
        self.grid = LabelGrid(config.sample_rate, config.hop, config.receptive_field)

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        return layer_features(self.encoder, wav, self.grid.sample_rate, self.layer, self.chunk_seconds)

    def describe(self) -> dict:
        return {"kind": "layer", "model": self.model, "layer": self.layer, "dim": self.encoder.dim,
                "frame_rate_hz": self.grid.rate_hz, "sample_rate": self.grid.sample_rate,
                "chunk_seconds": self.chunk_seconds}


def _features_of_row(manifest: Manifest, row: int, features: FrameFeatures) -> np.ndarray:
    path = manifest.path(row)
    wav = audio.load_audio(path, features.grid.sample_rate)
    if wav.shape[-1] != manifest.num_samples(row):
        raise LabelError(f"{path}: decodes to {wav.shape[-1]} samples, the manifest says "
                         f"{manifest.num_samples(row)}; the file changed since the manifest was built")
    return features(wav)


class _Throughput:
    """Audio hours per minute of wall time, for the summary line."""

    def __init__(self, sample_rate: int):
        self.sample_rate, self.samples, self.started = sample_rate, 0, time.perf_counter()

    def line(self, what: str, files: int) -> str:
        minutes = (time.perf_counter() - self.started) / 60
        hours = self.samples / self.sample_rate / 3600
        return (f"{what}: {files} files, {hours:.3f} h of audio in {minutes * 60:.1f} s "
                f"({hours / max(minutes, 1e-9):.2f} audio-hours/min)")


# ---------------------------------------------------------------------------------------------
# 1. fit


def fit_clusters(manifest: Manifest, features: FrameFeatures, config: KMeansConfig,
                 fit_fraction: float = 0.1, progress: bool = True) -> KMeansModel:
    """k-means on frames of a seeded `fit_fraction` of the files (fairseq's `percent`, drawn per
    file), with at most `config.max_frames` frames kept (reservoir) so memory stays bounded."""
    from tqdm import tqdm

    if not 0.0 < fit_fraction <= 1.0:
        raise ValueError(f"fit_fraction must be in (0, 1], got {fit_fraction}")
    rng = np.random.default_rng(config.seed)
    count = max(1, math.ceil(len(manifest) * fit_fraction))
    rows = sorted(rng.choice(len(manifest), size=count, replace=False).tolist())
    # Files are the sampling unit here (fairseq's percent), so every frame of a chosen file is
    # offered to the reservoir; config.sample_fraction is not applied on top.
    sampler = FrameSampler(sample_fraction=None, max_frames=config.max_frames, seed=config.seed)
    speed = _Throughput(features.grid.sample_rate)
    for row in tqdm(rows, desc="fit: features", unit="file", disable=not progress):
        sampler.add(_features_of_row(manifest, row, features))
        speed.samples += manifest.num_samples(row)
    print(speed.line("fit features", len(rows)), file=sys.stderr)
    return fit_kmeans(sampler, dataclasses.replace(config, sample_fraction=None), feature=features.describe())


# ---------------------------------------------------------------------------------------------
# 2. assign


def assign_split(manifest: Manifest, features: FrameFeatures, model: KMeansModel, out: Path,
                 rows: range | None = None, progress: bool = True) -> None:
    """One line of space-separated cluster ids per row, written atomically."""
    from tqdm import tqdm

    rows = rows if rows is not None else range(len(manifest))
    partial = out.with_name(out.name + ".partial")
    speed = _Throughput(features.grid.sample_rate)
    with partial.open("w") as handle:
        for row in tqdm(rows, desc=f"labels: {out.name}", unit="file", disable=not progress):
            ids = model.assign(_features_of_row(manifest, row, features))
            handle.write(" ".join(map(str, ids.tolist())) + "\n")
            speed.samples += manifest.num_samples(row)
    partial.replace(out)
    print(speed.line(f"labels {out.name}", len(rows)), file=sys.stderr)


def merge_shards(label_dir: Path, split: str, num_shards: int) -> Path:
    """Concatenate `{split}.km.shard{i}-of-{n}` in shard order into `{split}.km`."""
    shards = [label_file(label_dir, split, i, num_shards) for i in range(num_shards)]
    missing = [str(p) for p in shards if not p.exists()]
    if missing:
        raise FileNotFoundError(f"cannot merge {split}: missing shard files {missing}")
    out = label_file(label_dir, split)
    partial = out.with_name(out.name + ".partial")
    with partial.open("w") as handle:
        for shard in shards:
            handle.write(shard.read_text())
    partial.replace(out)
    return out


# ---------------------------------------------------------------------------------------------
# 3. the whole job: fit, assign, check (the format and its checks live in data/label_files.py)


def _clusters(manifest_dir: Path, label_dir: Path, features: FrameFeatures, config: KMeansConfig,
              fit_fraction: float, sharded: bool, progress: bool) -> KMeansModel:
    """Load the clusters of `label_dir`, or fit them (not inside a shard job: shards must share them)."""
    if (label_dir / "kmeans.json").exists():
        model = KMeansModel.load(label_dir)
        if model.record.get("feature") != features.describe() or model.k != config.k:
            raise LabelError(f"{label_dir}: holds k = {model.k} clusters of {model.record.get('feature')}, not k = "
                             f"{config.k} of {features.describe()}; use another --out directory or --overwrite")
        return model
    if sharded:
        raise LabelError(f"{label_dir}: no clusters yet; fit them once with --fit-only, then run the shards")
    manifest = read_manifest(manifest_dir / "train.tsv")
    if not len(manifest):
        raise LabelError(f"{manifest_dir / 'train.tsv'}: no rows to fit clusters on")
    model = fit_clusters(manifest, features, config, fit_fraction, progress)
    model.save(label_dir)
    return model


def make_labels(manifest_dir: str | Path, label_dir: str | Path, features: FrameFeatures, config: KMeansConfig,
                fit_fraction: float = 0.1, splits: tuple[str, ...] = ("train", "valid"), shard: int = 0,
                num_shards: int = 1, fit_only: bool = False, progress: bool = True,
                overwrite: bool = False) -> dict[str, LabelSummary]:
    """Fit (if needed) and assign; unsharded runs are checked and summarised right away."""
    manifest_dir, label_dir = Path(manifest_dir), Path(label_dir)
    manifests = {split: read_manifest(manifest_dir / f"{split}.tsv") for split in dict.fromkeys(("train", *splits))}
    if overwrite:
        _clear_label_set(label_dir, num_shards)
    label_dir.mkdir(parents=True, exist_ok=True)
    identity = _identity(features, config, fit_fraction)
    fingerprints = {split: m.fingerprint for split, m in manifests.items()}
    existing = _claim(label_dir, identity, fingerprints)  # before any work: refuse other arguments
    model = _clusters(manifest_dir, label_dir, features, config, fit_fraction, num_shards > 1, progress)
    info = _label_info(existing, identity, features.grid, manifest_dir, fingerprints)
    if existing != info:
        write_label_json(label_dir, info)  # shard jobs resuming the same set rewrite nothing
    summaries = {}
    for split in () if fit_only else splits:
        manifest = manifests[split]
        if not len(manifest):
            continue
        rows = manifest.shard(shard, num_shards) if num_shards > 1 else None
        out = label_file(label_dir, split, shard, num_shards)
        assign_split(manifest, features, model, out, rows, progress)
        if num_shards == 1:
            summaries[split] = _record_summary(label_dir, info, split, manifest, features.grid, model.k)
    return summaries


def _label_info(existing: dict | None, identity: dict, grid: LabelGrid, manifest_dir: Path,
                fingerprints: dict[str, str]) -> dict:
    """labels.json's content: the existing one (same arguments) or a new one, with the fingerprints of
    the splits labelled now added, in its JSON form (so an unchanged set compares equal)."""
    info = existing or {**identity, "grid": {"sample_rate": grid.sample_rate, "hop": grid.hop,
                                             "window": grid.window, "rate_hz": grid.rate_hz},
                        "manifest": str(manifest_dir.resolve()), "kmeans": "kmeans.json", "splits": {}}
    info = {**info, "manifest_fingerprints": {**info.get("manifest_fingerprints", {}), **fingerprints}}
    return json.loads(json.dumps(info))


def _identity(features: FrameFeatures, config: KMeansConfig, fit_fraction: float) -> dict:
    """Every argument that determines the labels (IDENTITY_FIELDS), as labels.json stores it."""
    values = {"feature": features.describe(), "k": config.k, "seed": config.seed, "fit_fraction": fit_fraction,
              "max_frames": config.max_frames}
    return json.loads(json.dumps({field: values[field] for field in IDENTITY_FIELDS}))


def _claim(label_dir: Path, identity: dict, fingerprints: dict[str, str]) -> dict | None:
    """labels.json of `label_dir` if it was made with these arguments and rows (resume), None if there
    is none; anything else is refused, naming the fields (old sets lack some fields: not compared)."""
    if not (label_dir / LABELS_JSON).exists():
        return None
    info = read_label_set(label_dir).info
    recorded = {**_flat({f: info[f] for f in IDENTITY_FIELDS if f in info}),
                **{f"rows of {split}.tsv": fp for split, fp in info.get("manifest_fingerprints", {}).items()}}
    wanted = {**_flat(identity), **{f"rows of {split}.tsv": fp for split, fp in fingerprints.items()}}
    differing = [field for field in recorded if field in wanted and recorded[field] != wanted[field]]
    if differing:
        changes = "; ".join(f"{field}: {recorded[field]!r} there, {wanted[field]!r} now" for field in differing)
        raise LabelError(f"{label_dir}: holds labels made with other arguments ({changes}); use another --out, "
                         "the same arguments, or --overwrite to replace the whole set")
    return info


def _flat(values: dict, prefix: str = "") -> dict:
    """{"feature": {"dim": 39}} -> {"feature.dim": 39}: a refusal names the leaf that differs."""
    flat = {}
    for key, value in values.items():
        flat.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


def _clear_label_set(label_dir: Path, num_shards: int) -> None:
    """Remove every file of a label set (split files of any split, shards, clusters, labels.json),
    so nothing of the old set is left beside the new one; other files are not touched."""
    if num_shards > 1:
        raise LabelError("--overwrite with --num-shards would delete the other shard jobs' files; "
                         "overwrite once with --fit-only, then run the shards")
    if not label_dir.is_dir():
        return
    patterns = (LABELS_JSON, "kmeans.json", "centroids.npy", "*.km", "*.km.shard*-of-*", "*.partial", ".*.partial")
    for path in {p for pattern in patterns for p in label_dir.glob(pattern) if p.is_file()}:
        path.unlink()


def merge_labels(manifest_dir: str | Path, label_dir: str | Path, num_shards: int,
                 splits: tuple[str, ...] = ("train", "valid")) -> dict[str, LabelSummary]:
    manifest_dir, label_set = Path(manifest_dir), read_label_set(label_dir)
    summaries = {}
    for split in splits:
        manifest = read_manifest(manifest_dir / f"{split}.tsv")
        if not len(manifest):
            continue
        check_made_from(label_set, split, manifest, manifest_dir)
        merge_shards(label_set.directory, split, num_shards)
        summaries[split] = _record_summary(label_set.directory, label_set.info, split, manifest,
                                           label_set.grid, label_set.k)
    return summaries


def _record_summary(label_dir: Path, info: dict, split: str, manifest: Manifest, grid: LabelGrid,
                    k: int) -> LabelSummary:
    summary = check_labels(label_file(label_dir, split), manifest, grid, k)
    info["splits"][split] = {"rows": summary.rows, "labels": summary.frames,
                             "used_clusters": summary.used_clusters, "entropy_bits": summary.entropy_bits}
    write_label_json(label_dir, info)
    print(summary.line(split), file=sys.stderr)
    return summary

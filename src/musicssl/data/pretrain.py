"""Pre-training data: random crops of manifest rows, aligned label crops, micro-batches per update.

Data flow, for one optimizer update on one rank::

    UpdatePlan.micro_batches(epoch, update)          keys (epoch, row), this rank's share
      -> PretrainDataset[(epoch, row)]               random crop, read it (crop_read.py, or prepared
                                                     shards: prepare.py), label crop, (normalize)
      -> collate(items)                              drop bad items, crop to the shortest -> Batch (B, n)
      -> UpdateLoader.iterate(start_update)          accumulation_steps Batches per update

Determinism. Nothing here draws from a global or per-worker random state:

* the order of items is ``default_rng([seed, epoch]).permutation(num_items)``, cut into groups of
  ``crops_per_update`` (the global batch); rank ``r`` of ``W`` takes the ``r``-th contiguous slice;
* the crop of an item is drawn from ``default_rng([seed, epoch, row])``, from the manifest's length
  (so the crop is known before anything is decoded);
* the DataLoader has its own generator: starting its iterator no longer draws from the global torch
  generator, which dropout draws from (that draw made 0 vs 2 workers, and kill + resume, differ).

So the crop a row gets depends only on (seed, epoch, row): not on the world size, the batch it
lands in, the DataLoader worker that decodes it, or whether the run was resumed. With the global
batch fixed (accumulation makes up for fewer ranks), a DDP run sees exactly the crops of a single
process run, update by update, and resuming at global update ``k`` (``UpdateLoader.iterate(k)``)
replays what an uninterrupted run would have read from there on.

Bad files never stop training: an item that cannot be decoded, is shorter than ``min_samples``, or
no longer decodes to the manifest's length becomes ``None`` (logged once per file and process);
``collate`` drops it and counts it in ``Batch.skipped``.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import count
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from musicssl import audio
from musicssl.data.crop_read import WholeFile, crop_offset, read_span
from musicssl.data.label_files import (LabelGrid, LabelRows, StackedLabelRows, check_labels, check_made_from, label_file,
                                       read_label_set)
from musicssl.data.manifest import Manifest, check_sample_rate, read_manifest
from musicssl.data.prepare import PreparedCorpus, is_prepared
from musicssl.models.backbone import normalize_waveform

Key = tuple[int, int]  # (epoch, manifest row)


@dataclass(frozen=True)
class DataConfig:
    crop_seconds: float = 5.0  # the paper's 5 s crops (fairseq max_sample_size 80000 at 16 kHz)
    min_seconds: float = 2.0  # fairseq min_sample_size 32000 at 16 kHz: shorter files are skipped
    batch_seconds: float = 80.0  # global audio per optimizer update (all ranks, all micro-batches)
    micro_batch_seconds: float = 20.0  # audio per forward pass on one rank
    seed: int = 0
    # DataLoader worker processes (0: decode in the training process). They do not change the run:
    # items depend on their keys only, and the loader has its own generator (UpdateLoader).
    num_workers: int = 4
    # Decode only the crop and the resampler's margin (data/crop_read.py) instead of the whole
    # file; the same samples up to float32 rounding, the same crops and labels.
    crop_only: bool = True

    def __post_init__(self):
        for name in ("crop_seconds", "batch_seconds", "micro_batch_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"data.{name} must be positive, got {getattr(self, name)}")
        if self.min_seconds < 0 or self.num_workers < 0:
            raise ValueError("data.min_seconds and data.num_workers must be >= 0")
        if self.crops_per_micro_batch < 1 or self.crops_per_update < 1:
            raise ValueError(f"data.batch_seconds ({self.batch_seconds}) and data.micro_batch_seconds "
                             f"({self.micro_batch_seconds}) must hold at least one {self.crop_seconds} s crop")

    @property
    def crops_per_update(self) -> int:
        return round(self.batch_seconds / self.crop_seconds)

    @property
    def crops_per_micro_batch(self) -> int:
        return round(self.micro_batch_seconds / self.crop_seconds)


# ---------------------------------------------------------------------------------------------
# items: one crop per (epoch, row)


def _why_counts_differ(decoded: int, expected: int, sample_rate: int) -> str:
    """A manifest listed at another rate gives every file this count at that rate, not a changed file."""
    for rate in (8000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000):
        if rate != sample_rate and abs(round(decoded * rate / sample_rate) - expected) <= 1:
            return (f"that is this file at {rate} Hz: the manifest was made with --sample-rate {rate}, the model "
                    f"reads {sample_rate} Hz (list the audio again with --sample-rate {sample_rate})")
    return "the file changed since the manifest was built"


class PretrainDataset(Dataset):
    """Map-style dataset keyed by ``(epoch, row)``; ``dataset[(epoch, row)]`` is a dict or None.

    The dict holds ``index`` (the row), ``offset`` (crop start in samples), ``wav`` float32 (n,)
    with ``n = min(crop_samples, file length)``, and with labels ``labels`` int64 (t,) and
    ``labels_per_sample`` (label rate / sample rate, which ``collate`` needs to cut labels);
    (t, S) with S label sets (StackedLabelRows).
    Labels are cropped as fairseq's ``collater_frm_label``: first label ``round(offset * ratio)``,
    count ``min(round(n * ratio), labels left in the row)``.
    ``normalize`` standardises each crop after cropping (data2vec's ``normalize``).
    ``prepared`` (data/prepare.py) reads crops from int16 shards instead of the files.
    ``crop_only`` decodes just the crop (``read_span``); a file it cannot read exactly is decoded
    whole (``whole_file`` True in the item, logged once per file and process).
    """

    def __init__(self, manifest: Manifest, sample_rate: int, crop_samples: int, min_samples: int, seed: int,
                 labels: LabelRows | StackedLabelRows | None = None, label_grid: LabelGrid | None = None,
                 normalize: bool = False, crop_only: bool = True, prepared: PreparedCorpus | None = None):
        if crop_samples <= 0 or min_samples < 0:
            raise ValueError(f"crop_samples must be > 0 and min_samples >= 0, got {crop_samples}, {min_samples}")
        if (labels is None) != (label_grid is None):
            raise ValueError("labels and label_grid go together: give both or neither")
        if labels is not None and len(labels) != len(manifest):
            raise ValueError(f"{labels.path}: {len(labels)} label rows, the manifest has {len(manifest)}")
        if label_grid is not None and label_grid.sample_rate != sample_rate:
            raise ValueError(f"labels were made from audio at {label_grid.sample_rate} Hz, but training "
                             f"reads audio at {sample_rate} Hz; their frames would not line up")
        self.manifest, self.sample_rate, self.seed = manifest, sample_rate, seed
        self.crop_samples, self.min_samples = crop_samples, min_samples
        self.labels, self.label_grid, self.normalize, self.crop_only = labels, label_grid, normalize, crop_only
        self.prepared = prepared
        self.skipped: Counter[str] = Counter()  # reason -> items skipped in THIS process
        self._logged: set[int] = set()
        self._logged_whole: set[int] = set()

    def __len__(self) -> int:
        return len(self.manifest)

    def __getitem__(self, key: Key) -> dict | None:
        epoch, index = key
        expected = self.manifest.num_samples(index)
        if expected < self.min_samples:
            return self._skip(index, "too short", f"{expected} samples, fewer than min {self.min_samples}")
        # The draw audio.random_crop makes on the decoded file, which has the manifest's length.
        offset = crop_offset(expected, self.crop_samples, np.random.default_rng([self.seed, epoch, index]))
        stop = offset + min(self.crop_samples, expected)
        wav, whole = self._read(index, offset, stop)  # (n,)
        if wav is None:
            return None
        # Copy: a view would keep the whole file alive and ship it from worker to trainer.
        crop = torch.from_numpy(np.array(wav, dtype=np.float32))
        if self.normalize:
            crop = normalize_waveform(crop[None], torch.tensor([len(crop)]))[0]
        item = {"index": index, "offset": offset, "wav": crop, "whole_file": whole}
        if self.labels is not None:
            ratio = self.label_grid.rate_hz / self.sample_rate
            item["labels"] = torch.from_numpy(self._crop_labels(index, offset, len(crop), ratio))
            item["labels_per_sample"] = ratio
        return item

    def _read(self, index: int, start: int, stop: int) -> tuple[np.ndarray | None, bool]:
        """Samples [start, stop) of row ``index``, and whether the whole file was decoded."""
        if self.prepared is not None:
            wav = self.prepared.read(index, start, stop)
            return (wav if wav is not None else self._skip(index, "undecodable", "unreadable when prepared")), False
        if self.crop_only:
            try:
                return read_span(self.manifest.path(index), self.sample_rate, self.manifest.num_samples(index),
                                 start, stop), False
            except (audio.AudioError, OSError, RuntimeError) as error:
                return self._skip(index, "undecodable", getattr(error, "problem", str(error))), False
            except WholeFile as fallback:
                if index not in self._logged_whole:
                    self._logged_whole.add(index)
                    print(f"reading {self.manifest.path(index)} whole: {fallback.reason}", file=sys.stderr)
        wav = self._load(index)
        return (None if wav is None else wav[start:stop]), True

    def _load(self, index: int) -> np.ndarray | None:
        path, expected = self.manifest.path(index), self.manifest.num_samples(index)
        try:
            wav = audio.load_audio(path, self.sample_rate)
        except (audio.AudioError, OSError, RuntimeError) as error:
            return self._skip(index, "undecodable", getattr(error, "problem", str(error)))
        if len(wav) != expected:
            return self._skip(index, "changed", f"decodes to {len(wav)} samples, the manifest says "
                                                f"{expected}; {_why_counts_differ(len(wav), expected, self.sample_rate)}")
        return wav

    def _skip(self, index: int, kind: str, reason: str) -> None:
        self.skipped[kind] += 1
        if index not in self._logged:
            self._logged.add(index)
            print(f"skipping {self.manifest.path(index)} ({kind}): {reason}", file=sys.stderr)
        return None

    def _crop_labels(self, index: int, offset: int, num_samples: int, ratio: float) -> np.ndarray:
        row = self.labels[index]  # (T,) or (T, S)
        start = round(offset * ratio)
        length = max(0, min(round(num_samples * ratio), len(row) - start))
        return row[start:start + length]  # (t,) or (t, S)


# ---------------------------------------------------------------------------------------------
# batches


@dataclass
class Batch:
    wav: Tensor  # (B, n) float32, every crop cut to the shortest
    lengths: Tensor  # (B,) long, all n (kept so the model API takes padded batches too)
    labels: Tensor | None  # (B, t) long, or (B, t, S) with S label sets
    indices: Tensor  # (B,) long, manifest rows
    skipped: int  # items of this micro-batch that were None
    whole_file_reads: int = 0  # items decoded whole: crop_only could not read their crop alone

    def pin_memory(self) -> Batch:  # DataLoader(pin_memory=True) calls this on custom batch types
        return self._map(Tensor.pin_memory)

    def _map(self, function: Callable[[Tensor], Tensor]) -> Batch:
        labels = None if self.labels is None else function(self.labels)
        return Batch(function(self.wav), function(self.lengths), labels, function(self.indices), self.skipped,
                     self.whole_file_reads)


def collate(items: list[dict | None]) -> Batch | None:
    """Drop None items; cut every crop to the shortest (its first n samples, as fairseq crops
    to the shortest without padding); None if nothing is left.

    Labels: item i keeps ``min(len_i, round(n * label_rate / sample_rate))`` labels, then all are
    cut to the shortest of those, so labels need no padding. A file that ends early can thus
    shorten every row of its batch by a label or two (fairseq's ``collater_frm_label`` does the
    same); label j of every row still covers samples from ``j / label_rate`` seconds of its crop.
    """
    kept = [item for item in items if item is not None]
    if not kept:
        return None
    n = min(len(item["wav"]) for item in kept)
    wav = torch.stack([item["wav"][:n] for item in kept])  # (B, n)
    return Batch(wav=wav, lengths=torch.full((len(kept),), n, dtype=torch.long), labels=_collate_labels(kept, n),
                 indices=torch.tensor([item["index"] for item in kept], dtype=torch.long),
                 skipped=len(items) - len(kept), whole_file_reads=sum(item.get("whole_file", False) for item in kept))


def _collate_labels(items: list[dict], num_samples: int) -> Tensor | None:
    with_labels = sum("labels" in item for item in items)
    if with_labels == 0:
        return None
    if with_labels != len(items):
        raise ValueError("some items have labels and others do not; they come from different datasets")
    lengths = [min(len(item["labels"]), round(num_samples * item["labels_per_sample"])) for item in items]
    t = min(lengths)
    return torch.stack([item["labels"][:t] for item in items])  # (B, t) or (B, t, S)


# ---------------------------------------------------------------------------------------------
# which items each rank reads, update by update


class UpdatePlan:
    """Deterministic order of items, sharded by rank.

    Epoch e uses the permutation ``default_rng([seed, e])`` of ``range(num_items)``; update u of the
    epoch takes the global items ``perm[u*G:(u+1)*G]`` (G = crops_per_update; the incomplete last
    group is dropped); rank r of W takes the r-th contiguous slice of G/W items and splits it into
    micro-batches of m = crops_per_micro_batch. G must be divisible by W*m;
    ``accumulation_steps = G // (W*m)``.
    """

    def __init__(self, num_items: int, config: DataConfig, world_size: int = 1, rank: int = 0):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
        group, micro = config.crops_per_update, config.crops_per_micro_batch
        if group % (world_size * micro):
            raise ValueError(_divisibility_help(config, world_size))
        if num_items < group:
            raise ValueError(f"{num_items} items, fewer than the {group} crops of one update "
                             f"(data.batch_seconds={config.batch_seconds:g} / data.crop_seconds="
                             f"{config.crop_seconds:g}); lower data.batch_seconds or add audio")
        self.num_items, self.seed, self.world_size, self.rank = num_items, config.seed, world_size, rank
        self.crops_per_update, self.micro_batch_size = group, micro
        self.crops_per_rank = group // world_size
        self.accumulation_steps = group // (world_size * micro)
        self.updates_per_epoch = num_items // group
        self._cache: tuple[int, np.ndarray] | None = None

    def permutation(self, epoch: int) -> np.ndarray:
        if self._cache is None or self._cache[0] != epoch:  # one O(num_items) shuffle per epoch
            self._cache = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.num_items))
        return self._cache[1]

    def global_items(self, epoch: int, update: int) -> np.ndarray:
        """The G rows of this update, all ranks, in rank order."""
        if not 0 <= update < self.updates_per_epoch:
            raise IndexError(f"update {update} of an epoch of {self.updates_per_epoch} updates")
        return self.permutation(epoch)[update * self.crops_per_update:(update + 1) * self.crops_per_update]

    def micro_batches(self, epoch: int, update: int) -> list[list[Key]]:
        mine = self.global_items(epoch, update)[self.rank * self.crops_per_rank:(self.rank + 1) * self.crops_per_rank]
        m = self.micro_batch_size
        return [[(epoch, int(row)) for row in mine[s:s + m]] for s in range(0, self.crops_per_rank, m)]

    def position(self, global_update: int) -> tuple[int, int]:
        """(epoch, update within the epoch) of a global update counter."""
        if global_update < 0:
            raise ValueError(f"global_update must be >= 0, got {global_update}")
        return divmod(global_update, self.updates_per_epoch)


def _divisibility_help(config: DataConfig, world_size: int) -> str:
    group, micro, crop = config.crops_per_update, config.crops_per_micro_batch, config.crop_seconds
    step = world_size * micro
    batches = sorted({max(1, group // step) * step, (group // step + 1) * step})
    text = (f"data.batch_seconds={config.batch_seconds:g} ({group} crops of {crop:g} s) must split into "
            f"{world_size} ranks x micro-batches of {micro} crops (data.micro_batch_seconds="
            f"{config.micro_batch_seconds:g}), but {group} is not divisible by {step}. Use data.batch_seconds "
            f"in {[b * crop for b in batches]}")
    if group % world_size == 0:
        micros = [d for d in range(1, group // world_size + 1) if (group // world_size) % d == 0]
        text += f", or data.micro_batch_seconds in {[d * crop for d in micros]}"
    return text + " (or another number of ranks)."


class _KeySampler:
    """Batch sampler for DataLoader: this rank's micro-batches of keys, from a global update on, forever."""

    def __init__(self, plan: UpdatePlan, start_update: int):
        self.plan, self.start_update = plan, start_update

    def __iter__(self) -> Iterator[list[Key]]:
        for global_update in count(self.start_update):
            yield from self.plan.micro_batches(*self.plan.position(global_update))


class UpdateLoader:
    """Yields ``(global update, [Batch | None] * accumulation_steps)`` forever, from ``start_update``.

    With ``num_workers > 0`` a DataLoader decodes in worker processes over one endless batch sampler,
    so workers live across epochs (no re-spawn at epoch boundaries) and prefetch; its output order,
    and every tensor, equal the ``num_workers=0`` path because items depend only on their keys.
    """

    def __init__(self, dataset: PretrainDataset, plan: UpdatePlan, num_workers: int = 0,
                 pin_memory: bool = False):
        self.dataset, self.plan, self.num_workers, self.pin_memory = dataset, plan, num_workers, pin_memory
        self.skipped_total = 0  # bad items seen so far, counted from the batches (so across workers)

    def iterate(self, start_update: int = 0) -> Iterator[tuple[int, list[Batch | None]]]:
        micro_batches = self._micro_batches(start_update)
        for update in count(start_update):
            group = [next(micro_batches) for _ in range(self.plan.accumulation_steps)]
            self.skipped_total += sum(self.plan.micro_batch_size if b is None else b.skipped for b in group)
            yield update, group

    def _micro_batches(self, start_update: int) -> Iterator[Batch | None]:
        sampler = _KeySampler(self.plan, start_update)
        if self.num_workers == 0:
            for keys in sampler:
                batch = collate([self.dataset[key] for key in keys])
                yield batch.pin_memory() if self.pin_memory and batch is not None else batch
            return
        # Its own generator: without one, starting the iterator draws the workers' base seed from
        # the global torch generator, the one dropout draws from, so every dropout mask after it
        # depended on the number of workers and on whether the run was resumed (the items do not
        # use the workers' seeds: they depend on their keys only).
        generator = torch.Generator().manual_seed(self.plan.seed)
        loader = DataLoader(self.dataset, batch_sampler=sampler, collate_fn=collate, num_workers=self.num_workers,
                            pin_memory=self.pin_memory, prefetch_factor=2, persistent_workers=True,
                            generator=generator)
        iterator = iter(loader)
        try:
            yield from iterator
        finally:
            del iterator  # shuts the workers down when the caller stops iterating


# ---------------------------------------------------------------------------------------------
# from files


def build_pretrain_data(manifest_dir: str | Path, split: str = "train",
                        label_dir: str | Path | Sequence[str | Path] | None = None,
                        sample_rate: int = 16_000, config: DataConfig = DataConfig(), normalize: bool = False,
                        world_size: int = 1, rank: int = 0) -> tuple[PretrainDataset, UpdatePlan]:
    """Dataset and plan for ``{manifest_dir}/{split}.tsv`` (read from shards if ``manifest_dir`` is a
    `musicssl prepare` directory); with ``label_dir`` (one directory, or
    several on one grid), each ``{split}.km`` is checked against the manifest first: made from these
    rows (their fingerprint), a row and frame count per row (every rank checks; rank 0 prints the
    summary lines)."""
    manifest = read_manifest(Path(manifest_dir) / f"{split}.tsv")
    if not is_prepared(manifest_dir):  # a prepared corpus says its own rate (PreparedCorpus)
        check_sample_rate(Path(manifest_dir) / f"{split}.tsv", sample_rate, manifest)
    labels, grid = None, None
    if label_dir is not None:
        directories = [label_dir] if isinstance(label_dir, (str, Path)) else list(label_dir)
        label_sets = [read_label_set(directory) for directory in directories]
        grid = label_sets[0].grid
        rows = []
        for label_set in label_sets:
            if label_set.grid != grid:
                raise ValueError(f"{label_set.directory}: labels on grid {label_set.grid}, but "
                                 f"{label_sets[0].directory} is on {grid}; label sets trained together must "
                                 "share one frame grid")
            check_made_from(label_set, split, manifest, manifest_dir)  # same rows, not only the same lengths
            path = label_file(label_set.directory, split)
            summary = check_labels(path, manifest, label_set.grid, label_set.k)
            if rank == 0:
                print(summary.line(split), file=sys.stderr)
            rows.append(LabelRows(path))
        labels = rows[0] if len(rows) == 1 else StackedLabelRows(rows)
    crop_samples, min_samples = round(config.crop_seconds * sample_rate), round(config.min_seconds * sample_rate)
    short = sum(n < min_samples for _, n in manifest.items)
    if short and rank == 0:
        print(f"{split}: {short} of {len(manifest)} files are shorter than data.min_seconds="
              f"{config.min_seconds:g} and will be skipped", file=sys.stderr)
    prepared = None
    if is_prepared(manifest_dir):  # `musicssl prepare` output: crops from its shards
        prepared = PreparedCorpus(manifest_dir, split, sample_rate)
        prepared.check_manifest(manifest)
    dataset = PretrainDataset(manifest, sample_rate, crop_samples, min_samples, config.seed, labels, grid, normalize,
                              config.crop_only, prepared)
    try:
        return dataset, UpdatePlan(len(dataset), config, world_size, rank)
    except ValueError as error:
        if len(dataset) >= config.crops_per_update:  # a config error, not the manifest's
            raise
        raise ValueError(f"{Path(manifest_dir) / f'{split}.tsv'}: {error}") from None

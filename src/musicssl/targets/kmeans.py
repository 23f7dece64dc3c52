"""K-means targets for MusicHuBERT: sample frames, fit centroids, assign cluster ids.

MusicHuBERT (HuBERT on music) is trained to predict, for every frame, the id of the nearest of
k centroids fitted on features of the training audio: MFCC frames (39- or 60-dim at 100 Hz,
k = 500 or 2000) in the first iteration, hidden states of a previous model (768-dim at 50 Hz)
later. This module holds the three steps:

- `FrameSampler`: streaming, seeded, memory-bounded selection of the frames to fit on. Each
  frame is kept with probability `sample_fraction` (fairseq fits on a fraction of the frames,
  e.g. 10 %), and a reservoir caps what is kept at `max_frames` rows, so memory is at most
  `max_frames x D` float32 whatever the corpus size.
- `fit_kmeans(frames, config) -> KMeansModel`: k-means++ initialisation and Lloyd iterations
  with faiss (default) or scikit-learn's MiniBatchKMeans with the settings of fairseq's
  `examples/hubert/simple_kmeans/learn_kmeans.py`.
- `KMeansModel.assign(features)`: nearest centroid by squared Euclidean distance,
  ||x||^2 - 2 x.c + ||c||^2 in batched float32 torch matmuls (CPU or CUDA), ties to the lowest
  index. `save`/`load` write `centroids.npy` + `kmeans.json` (no pickle anywhere).

Library choice (`benchmarks/kmeans_speed.py`, 1,000,000 x 39 synthetic MFCC-like frames,
k = 2000, 2 threads, Xeon (Sapphire Rapids, KVM), shared with other jobs):

    faiss reached scikit-learn's (fairseq settings) inertia after 9 iterations, 48 s vs 247 s
    (5.1x); at 25 iterations it is 1.3 % lower. Full table: benchmarks/kmeans_speed.py.

Assignment precision: distances are computed in float32 on features and centroids shifted by
the centroids' mean (which leaves every distance unchanged in exact arithmetic but removes the
large common offset of e.g. MFCC c0, the main source of float32 cancellation). With
`exact=True`, rows whose best and second-best float32 distances are closer than a rounding
error bound are recomputed in float64, so labels equal a float64 brute force; exact duplicate
centroids always resolve to the lowest index.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

# faiss: Lloyd iterations when `max_iter` is None. faiss's own default (ClusteringParameters.niter)
# is 25; benchmarks/kmeans_speed.py shows the objective has flattened by then (see docstring).
FAISS_DEFAULT_NITER = 25
# sklearn: fairseq learn_kmeans.py defaults (--max_iter 100, --n_init 20).
SKLEARN_DEFAULT_MAX_ITER = 100
SKLEARN_DEFAULT_N_INIT = 20
# faiss: number of k-means restarts (ClusteringParameters.nredo); faiss's default is 1.
FAISS_DEFAULT_NREDO = 1
# faiss: frames the k-means++ initialisation runs on (see KMeansConfig.init_max_frames).
INIT_MAX_FRAMES_DEFAULT = 100_000

CENTROIDS_FILE = "centroids.npy"
RECORD_FILE = "kmeans.json"
FORMAT_NAME = "musicssl.kmeans"
FORMAT_VERSION = 1

Library = Literal["faiss", "sklearn"]


@dataclass(frozen=True)
class KMeansConfig:
    """How to fit k-means. `None` for `max_iter` / `n_init` means the chosen library's default
    listed below; the resolved values are stored in the model's record."""

    # Number of clusters. MusicHuBERT: 500 (first iteration, MFCC) or 2000; HuBERT uses 100/500.
    k: int = 500
    # fairseq learn_kmeans.py: --seed 0 (np.random.seed(0) before fitting).
    seed: int = 0
    # faiss: faster than sklearn at equal-or-better inertia, see benchmarks/kmeans_speed.py.
    library: Library = "faiss"
    # Iterations. None -> sklearn 100 (fairseq --max_iter, epochs over the data for
    # MiniBatchKMeans) or faiss 25 (faiss's ClusteringParameters.niter; full Lloyd passes).
    max_iter: int | None = None
    # Restarts. None -> sklearn 20 (fairseq --n_init; k-means++ inits, best kept) or faiss 1
    # (faiss's ClusteringParameters.nredo; each redo is a whole run of `max_iter` iterations).
    n_init: int | None = None
    # sklearn MiniBatchKMeans settings, all from fairseq learn_kmeans.py.
    batch_size: int = 10_000
    tol: float = 0.0
    max_no_improvement: int = 100
    reassignment_ratio: float = 0.0
    init_size: int | None = None
    # faiss: faiss subsamples to k * max_points_per_centroid frames (faiss default 256) without
    # telling; None -> never subsample (we already sampled with FrameSampler).
    max_points_per_centroid: int | None = None
    # faiss: k-means++ initialisation on a seeded random subsample of at most this many frames
    # (the Lloyd iterations then use all frames). k-means++ costs M x k distance evaluations
    # in k sequential steps, 30 % of the whole fit at 1M frames, k = 2000, with no effect on the
    # final inertia (benchmarks/kmeans_speed.py). sklearn's MiniBatchKMeans does the same
    # (`init_size`, 30000 frames with fairseq's settings). None -> initialise on all frames.
    init_max_frames: int | None = INIT_MAX_FRAMES_DEFAULT
    # Frame sampling for FrameSampler. fairseq hubert/simple_kmeans README: `--percent 0.1`.
    sample_fraction: float | None = 0.1
    # Cap on the frames kept for fitting (memory: max_frames * D * 4 bytes, 156 MB at D = 39,
    # 3 GB at D = 768); 1M frames = 500 per centroid at k = 2000, about twice faiss's own
    # subsampling level (256 per centroid). None -> no cap.
    max_frames: int | None = 1_000_000

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.library not in ("faiss", "sklearn"):
            raise ValueError(f"library must be 'faiss' or 'sklearn', got {self.library!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed} (faiss treats negative seeds as 'random')")
        if self.max_iter is not None and self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")
        if self.n_init is not None and self.n_init < 1:
            raise ValueError(f"n_init must be >= 1, got {self.n_init}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.init_max_frames is not None and self.init_max_frames < 1:
            raise ValueError(f"init_max_frames must be >= 1 or None, got {self.init_max_frames}")
        if self.max_points_per_centroid is not None and self.max_points_per_centroid < 1:
            raise ValueError(f"max_points_per_centroid must be >= 1, got {self.max_points_per_centroid}")
        _check_sampling(self.sample_fraction, self.max_frames)

    def resolved_max_iter(self) -> int:
        if self.max_iter is not None:
            return self.max_iter
        return FAISS_DEFAULT_NITER if self.library == "faiss" else SKLEARN_DEFAULT_MAX_ITER

    def resolved_n_init(self) -> int:
        if self.n_init is not None:
            return self.n_init
        return FAISS_DEFAULT_NREDO if self.library == "faiss" else SKLEARN_DEFAULT_N_INIT

    def sampler(self) -> FrameSampler:
        """A FrameSampler with this config's sampling knobs and seed."""
        return FrameSampler(self.sample_fraction, self.max_frames, seed=self.seed)


def _check_sampling(sample_fraction: float | None, max_frames: int | None) -> None:
    if sample_fraction is not None and not 0.0 < sample_fraction <= 1.0:
        raise ValueError(f"sample_fraction must be in (0, 1] or None, got {sample_fraction}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


class FrameSampler:
    """Seeded, streaming, memory-bounded sample of frames for fitting k-means.

    Call `add(features)` once per utterance, (T, D), in a fixed order. Each frame is selected
    with probability `sample_fraction` (None = all frames); the selected frames go through a
    reservoir of `max_frames` rows (algorithm R, None = unbounded), so every selected frame is
    equally likely to end up in `frames()` and memory never exceeds `max_frames * D` float32.
    The result depends only on the seed and the sequence of `add` calls.

    Counters: `seen` (frames passed to add), `selected` (frames that passed the fraction
    filter), `kept` (frames held now = min(selected, max_frames)).
    """

    def __init__(self, sample_fraction: float | None = None, max_frames: int | None = None, seed: int = 0):
        _check_sampling(sample_fraction, max_frames)
        self.sample_fraction = sample_fraction
        self.max_frames = max_frames
        self.seed = seed
        self._rng = np.random.Generator(np.random.PCG64(seed))
        self._buffer: np.ndarray | None = None  # (capacity, D) float32, rows [:kept] valid
        self.dim: int | None = None
        self.seen = 0
        self.selected = 0

    @property
    def kept(self) -> int:
        return self.selected if self.max_frames is None else min(self.selected, self.max_frames)

    @property
    def nbytes(self) -> int:
        """Bytes of the frame buffer (max_frames * D * 4 once allocated, if capped)."""
        return 0 if self._buffer is None else self._buffer.nbytes

    def add(self, features: np.ndarray | torch.Tensor) -> int:
        """Offer one utterance's frames (T, D); returns how many of them were selected."""
        if isinstance(features, torch.Tensor):
            features = features.detach().cpu().numpy()
        features = np.asarray(features)
        if features.ndim != 2:
            raise ValueError(f"expected features of shape (T, D), got {features.shape}")
        if self.dim is None:
            self.dim = int(features.shape[1])
        elif features.shape[1] != self.dim:
            raise ValueError(f"features have dim {features.shape[1]}, earlier ones had {self.dim}")
        num = features.shape[0]
        self.seen += num
        if num == 0:
            return 0
        if self.sample_fraction is None or self.sample_fraction >= 1.0:
            chosen = features
        else:
            chosen = features[self._rng.random(num) < self.sample_fraction]
        count = chosen.shape[0]
        if count:
            self._store(chosen)
        return count

    def _store(self, chosen: np.ndarray) -> None:
        count = chosen.shape[0]
        start = self.selected  # stream position of chosen[0] among selected frames
        self.selected += count
        cap = self.max_frames
        direct = count if cap is None else max(0, min(count, cap - start))
        if direct:
            self._ensure_capacity(start + direct)
            self._buffer[start:start + direct] = chosen[:direct]
        if direct == count:
            return
        # Algorithm R: the selected frame at stream position i >= cap replaces slot j ~ U{0..i}
        # if j < cap. Vectorised over the utterance; when several frames hit the same slot the
        # last one wins, exactly as in the sequential algorithm.
        positions = np.arange(start + direct, start + count, dtype=np.int64)
        slots = self._rng.integers(0, positions + 1)
        hit = np.flatnonzero(slots < cap)
        if hit.size == 0:
            return
        hit_slots = slots[hit]
        _, last_reversed = np.unique(hit_slots[::-1], return_index=True)
        last = hit[hit.size - 1 - last_reversed]
        self._buffer[slots[last]] = chosen[direct + last]

    def _ensure_capacity(self, rows: int) -> None:
        capacity = 0 if self._buffer is None else self._buffer.shape[0]
        if rows <= capacity:
            return
        if self.max_frames is not None:
            # One allocation of the whole cap, never grown or copied: np.empty only reserves
            # address space, pages become resident as rows are written.
            new_capacity = self.max_frames
        else:
            new_capacity = max(rows, 2 * capacity, 1024)
        buffer = np.empty((new_capacity, self.dim), dtype=np.float32)
        if self._buffer is not None:
            buffer[:capacity] = self._buffer
        self._buffer = buffer

    def frames(self, copy: bool = True) -> np.ndarray:
        """The kept frames, (kept, D) float32; `copy=False` returns a view of the buffer
        (valid until the next `add`)."""
        if self._buffer is None:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        view = self._buffer[: self.kept]
        return view.copy() if copy else view

    def __repr__(self) -> str:
        return (f"FrameSampler(sample_fraction={self.sample_fraction}, max_frames={self.max_frames}, "
                f"seed={self.seed}, seen={self.seen}, selected={self.selected}, kept={self.kept})")


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------

_UNIT_ROUNDOFF_F32 = 2.0 ** -24


@dataclass(eq=False)
class KMeansModel:
    """Centroids (k, D) float32 and the record of how they were made."""

    centroids: np.ndarray
    record: dict = field(default_factory=dict)
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        centroids = np.asarray(self.centroids)
        if centroids.ndim != 2 or centroids.shape[0] < 1 or centroids.shape[1] < 1:
            raise ValueError(f"centroids must have shape (k, D) with k, D >= 1, got {centroids.shape}")
        if not np.all(np.isfinite(centroids)):
            raise ValueError("centroids contain NaN or Inf")
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    def __repr__(self) -> str:
        return f"KMeansModel(k={self.k}, dim={self.dim}, library={self.record.get('library')!r})"

    # -- assignment ----------------------------------------------------------------------------

    def _tensors(self, device: torch.device) -> dict[str, torch.Tensor]:
        # Derived tensors per device; centroids are treated as read-only (replace, don't edit).
        key = (str(device), id(self.centroids))
        if key not in self._cache:
            c64 = self.centroids.astype(np.float64)
            shift64 = c64.mean(axis=0)
            centered64 = c64 - shift64
            shift32 = shift64.astype(np.float32)
            centered32 = self.centroids - shift32
            # Lowest index among exact duplicates of each centroid: ties between duplicate
            # centroids go to the lowest index whatever the rounding of the matmul.
            _, first, inverse = np.unique(self.centroids, axis=0, return_index=True, return_inverse=True)
            canonical = first[inverse.reshape(-1)].astype(np.int64)
            as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
            self._cache[key] = {
                "c32": as_t(centered32),
                "cnorm32": as_t((centered32.astype(np.float64) ** 2).sum(1).astype(np.float32)),
                "shift32": as_t(shift32),
                "c64": as_t(centered64),
                "cnorm64": as_t((centered64 ** 2).sum(1)),
                "shift64": as_t(shift64),
                "centroids32": as_t(self.centroids),
                "centroids64": as_t(c64),
                "canonical": as_t(canonical),
                "cmax": float(np.sqrt((centered64 ** 2).sum(1).max())),
            }
        return self._cache[key]

    def _assign_batch(self, x: torch.Tensor, t: dict, exact: bool, start: int) -> torch.Tensor:
        xc = x - t["shift32"]
        # ||c||^2 - 2 x.c : the per-row constant ||x||^2 does not change the argmin.
        dist = torch.addmm(t["cnorm32"], xc, t["c32"].T, beta=1.0, alpha=-2.0)
        best, index = dist.min(dim=1)  # first minimum on ties
        if not bool(torch.isfinite(best).all()):
            bad = int(start + torch.nonzero(~torch.isfinite(best))[0, 0])
            raise ValueError(f"features contain NaN or Inf (frame {bad})")
        if exact and self.k > 1:
            dist.scatter_(1, index[:, None], float("inf"))
            second = dist.min(dim=1).values
            # Bound on the float32 rounding error of a distance difference: inner products of
            # length D (error <= D u |x||c|), squared norms, the shift, the sums.
            radius = xc.norm(dim=1) + t["cmax"]
            tolerance = 2.0 * (self.dim + 2) * _UNIT_ROUNDOFF_F32 * radius * radius
            rows = torch.nonzero(second - best <= tolerance).squeeze(1)
            if rows.numel():
                x64 = x[rows].double() - t["shift64"]
                dist64 = torch.addmm(t["cnorm64"], x64, t["c64"].T, beta=1.0, alpha=-2.0)
                index[rows] = dist64.argmin(dim=1)
        return t["canonical"][index]

    def _batches(self, features, batch_frames: int, device):
        """Yield (start, stop, float32 tensor on device) over the flattened (N, D) frames."""
        if batch_frames < 1:
            raise ValueError(f"batch_frames must be >= 1, got {batch_frames}")
        if isinstance(features, torch.Tensor):
            flat = features.detach()
            device = torch.device(device) if device is not None else flat.device
        else:
            flat = np.asarray(features)
            device = torch.device(device) if device is not None else torch.device("cpu")
        if flat.ndim not in (2, 3):
            raise ValueError(f"expected features of shape (T, D) or (B, T, D), got {tuple(flat.shape)}")
        if flat.shape[-1] != self.dim:
            raise ValueError(f"features have dim {flat.shape[-1]}, centroids have dim {self.dim}")
        lead = tuple(flat.shape[:-1])
        flat = flat.reshape(-1, self.dim)
        tensors = self._tensors(device)

        def batches():
            for start in range(0, flat.shape[0], batch_frames):
                stop = min(start + batch_frames, flat.shape[0])
                chunk = flat[start:stop]
                if isinstance(chunk, torch.Tensor):
                    x = chunk.to(device=device, dtype=torch.float32)
                else:
                    chunk = np.asarray(chunk, dtype=np.float32)
                    if not (chunk.flags.c_contiguous and chunk.flags.writeable):
                        chunk = np.array(chunk, dtype=np.float32, order="C")
                    x = torch.from_numpy(chunk).to(device)
                yield start, stop, x

        return lead, int(flat.shape[0]), tensors, batches()

    @torch.no_grad()
    def assign(self, features: np.ndarray | torch.Tensor, batch_frames: int = 65536,
               device: str | torch.device | None = None, *, exact: bool = False) -> np.ndarray:
        """Index of the nearest centroid (squared Euclidean) for each frame, int64.

        `features`: (T, D) or (B, T, D), numpy or torch (any float dtype; computed in float32).
        Returns (T,) or (B, T). Computed `batch_frames` frames at a time on `device` (default:
        the tensor's device, CPU for numpy). Ties go to the lowest index. `exact=True` recomputes
        in float64 the rows whose two best float32 distances are within rounding error, so the
        result equals a float64 brute force (costs one more pass over the distance matrix).
        """
        lead, total, tensors, batches = self._batches(features, batch_frames, device)
        out = torch.empty(total, dtype=torch.int64)
        for start, stop, x in batches:
            out[start:stop] = self._assign_batch(x, tensors, exact, start).cpu()
        return out.numpy().reshape(lead)

    @torch.no_grad()
    def inertia(self, features: np.ndarray | torch.Tensor, batch_frames: int = 65536,
                device: str | torch.device | None = None, *, exact: bool = False) -> float:
        """Mean squared distance of the frames to their nearest centroid (float64 sum)."""
        _, total, tensors, batches = self._batches(features, batch_frames, device)
        if total == 0:
            raise ValueError("no frames to compute inertia on")
        accumulated = 0.0
        for start, _, x in batches:
            index = self._assign_batch(x, tensors, exact, start)
            residual = x.double() - tensors["centroids64"][index]
            accumulated += float((residual * residual).sum())
        return accumulated / total

    # -- persistence ---------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write `directory/centroids.npy` and `directory/kmeans.json`; returns the directory."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / CENTROIDS_FILE, self.centroids, allow_pickle=False)
        header = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "centroids_file": CENTROIDS_FILE,
            "centroids_shape": [self.k, self.dim],
            "centroids_dtype": "float32",
            "centroids_sha256": _sha256(self.centroids),
            "record": self.record,
        }
        text = json.dumps(header, indent=2, default=_json_default, allow_nan=False)
        (directory / RECORD_FILE).write_text(text + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> KMeansModel:
        """Read a directory written by `save`, checking that both files agree."""
        directory = Path(directory)
        json_path, npy_path = directory / RECORD_FILE, directory / CENTROIDS_FILE
        if not json_path.is_file():
            raise FileNotFoundError(f"{json_path}: missing (expected a k-means directory written by KMeansModel.save)")
        try:
            header = json.loads(json_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{json_path}: not valid JSON ({error})") from error
        if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
            raise ValueError(f"{json_path}: not a {FORMAT_NAME} file (format={header.get('format') if isinstance(header, dict) else None!r})")
        if header.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{json_path}: unsupported format_version {header.get('format_version')!r}")
        shape = header.get("centroids_shape")
        if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(s, int) and s >= 1 for s in shape)):
            raise ValueError(f"{json_path}: bad centroids_shape {shape!r}")
        record = header.get("record")
        if not isinstance(record, dict):
            raise ValueError(f"{json_path}: missing 'record' object")
        for name, value in (("k", shape[0]), ("dim", shape[1])):
            if name in record and record[name] != value:
                raise ValueError(f"{json_path}: record {name}={record[name]} but centroids_shape is {shape}")
        if not npy_path.is_file():
            raise FileNotFoundError(f"{npy_path}: missing (listed in {json_path})")
        try:
            centroids = np.load(npy_path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            raise ValueError(f"{npy_path}: cannot read as a .npy array without pickle ({error})") from error
        if centroids.dtype != np.float32:
            raise ValueError(f"{npy_path}: dtype {centroids.dtype}, expected float32")
        if list(centroids.shape) != shape:
            raise ValueError(f"{npy_path}: shape {list(centroids.shape)} does not match {json_path} centroids_shape {shape}")
        digest = header.get("centroids_sha256")
        if digest is not None and digest != _sha256(centroids):
            raise ValueError(f"{npy_path}: contents do not match the sha256 in {json_path} (file changed or corrupted)")
        if not np.all(np.isfinite(centroids)):
            raise ValueError(f"{npy_path}: centroids contain NaN or Inf")
        return cls(centroids, record)


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


# ---------------------------------------------------------------------------------------------
# Fitting
# ---------------------------------------------------------------------------------------------


def fit_kmeans(frames: np.ndarray | torch.Tensor | FrameSampler, config: KMeansConfig | None = None, *,
               feature: dict | None = None, frames_seen: int | None = None) -> KMeansModel:
    """Fit k-means++-initialised k-means on `frames` (M, D) with `config.library`.

    `frames` may be a FrameSampler (its frames and counters are used). `feature` describes the
    features (e.g. MFCC parameters) and is stored under record["feature"]; `frames_seen` is
    the number of frames the sample was drawn from (default: M, or the sampler's count).
    """
    config = config or KMeansConfig()
    selected = None
    if isinstance(frames, FrameSampler):
        sampler = frames
        frames_seen = sampler.seen if frames_seen is None else frames_seen
        selected = sampler.selected
        frames = sampler.frames(copy=False)  # read only by the fit
    elif isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    frames = np.ascontiguousarray(frames, dtype=np.float32)
    if frames.ndim != 2:
        raise ValueError(f"expected frames of shape (M, D), got {frames.shape}")
    num, dim = frames.shape
    if num < config.k:
        raise ValueError(f"need at least k={config.k} frames to fit k={config.k} clusters, got {num}")
    if dim < 1:
        raise ValueError("frames have dimension 0")
    if not np.all(np.isfinite(frames)):
        raise ValueError("frames contain NaN or Inf")
    if feature is not None:
        try:
            json.dumps(feature, default=_json_default, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise TypeError(f"feature description must be JSON-serializable: {error}") from error

    max_iter, n_init = config.resolved_max_iter(), config.resolved_n_init()
    start = time.perf_counter()
    if config.library == "faiss":
        centroids, details = _fit_faiss(frames, config, max_iter, n_init)
    else:
        centroids, details = _fit_sklearn(frames, config, max_iter, n_init)
    fit_seconds = time.perf_counter() - start

    import musicssl

    record: dict[str, Any] = {
        "library": config.library,
        "library_version": details.pop("version"),
        "k": config.k,
        "dim": dim,
        "seed": config.seed,
        "max_iter": max_iter,
        "n_init": n_init,
        "init": "k-means++",
        "config": dataclasses.asdict(config),
        "frames_fit": num,
        "frames_selected": num if selected is None else selected,
        "frames_seen": num if frames_seen is None else int(frames_seen),
        "sample_fraction": config.sample_fraction,
        "max_frames": config.max_frames,
        "fit_seconds": fit_seconds,
        **details,
        "feature": feature,
        "musicssl_version": musicssl.__version__,
        "numpy_version": np.__version__,
        "torch_version": torch.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    model = KMeansModel(centroids, record)
    model.record["inertia_per_frame"] = model.inertia(frames)
    return model


def _fit_faiss(frames: np.ndarray, config: KMeansConfig, max_iter: int, n_init: int):
    import faiss

    num, dim = frames.shape
    per_centroid = config.max_points_per_centroid
    if per_centroid is None:  # faiss subsamples when num > k * max_points_per_centroid
        per_centroid = max(256, -(-num // config.k))
    parameters = dict(
        niter=max_iter,
        seed=config.seed,
        init_method=faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS,  # faiss's default is random init
        max_points_per_centroid=per_centroid,
        min_points_per_centroid=1,  # silences faiss's "please provide at least 39 k points" print
        spherical=False,
        verbose=False,
    )
    fit_frames = min(num, config.k * per_centroid)
    init_frames = num if config.init_max_frames is None else min(num, config.init_max_frames)
    if init_frames >= num:
        # faiss's own k-means++ on all frames, nredo restarts with their own inits
        kmeans = faiss.Kmeans(dim, config.k, nredo=n_init, **parameters)
        kmeans.train(frames)
        best, stats = kmeans.centroids, kmeans.iteration_stats
        init_seconds = None
    else:
        # faiss's k-means++ (ClusteringInitialization) on a seeded subsample, then Lloyd on
        # all frames from those centroids; one init per restart, the lowest objective wins.
        rng = np.random.default_rng(config.seed)
        subsample = np.ascontiguousarray(frames[np.sort(rng.choice(num, init_frames, replace=False))])
        best, stats, best_objective, init_seconds = None, [], math.inf, 0.0
        for restart in range(n_init):
            tick = time.perf_counter()
            initial = np.empty((config.k, dim), dtype=np.float32)
            initializer = faiss.ClusteringInitialization(dim, config.k)
            initializer.method = faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS
            initializer.seed = config.seed + 1 + restart * 15486557  # faiss's seeding of redos
            initializer.init_centroids(init_frames, faiss.swig_ptr(subsample), faiss.swig_ptr(initial), 0, None)
            init_seconds += time.perf_counter() - tick
            kmeans = faiss.Kmeans(dim, config.k, nredo=1, **parameters)
            kmeans.train(frames, init_centroids=initial)
            objective = kmeans.iteration_stats[-1]["obj"] if kmeans.iteration_stats else math.inf
            stats += kmeans.iteration_stats
            if best is None or objective < best_objective:
                best, best_objective = kmeans.centroids, objective
    details = {
        "version": faiss.__version__,
        "max_points_per_centroid": per_centroid,
        "faiss_frames_used": fit_frames,
        "init_frames": init_frames,
        # faiss objective (sum of squared distances / frames) measured at the start of each
        # iteration, i.e. for the centroids of the previous one; all restarts concatenated.
        "objective_per_iteration": [float(s["obj"]) / fit_frames for s in stats],
        # seconds from the start of the fit to the end of each iteration (n_init == 1 only)
        "seconds_at_iteration": _cumulative_seconds(stats, init_seconds, n_init),
        "empty_cluster_splits": int(sum(s["nsplit"] for s in stats)),
    }
    if init_seconds is not None:
        details["init_seconds"] = init_seconds
    elif n_init == 1 and stats:  # faiss times init + first iteration together
        details["init_seconds_approx"] = float(stats[0]["time"] - stats[0]["time_search"])
    return np.asarray(best, dtype=np.float32), details


def _cumulative_seconds(stats: list[dict], init_seconds: float | None, n_init: int) -> list[float] | None:
    if n_init != 1:
        return None
    # faiss's per-iteration "time" counts from after its preprocessing, before the init
    offset = 0.0 if init_seconds is None else init_seconds
    return [offset + float(s["time"]) for s in stats]


def _fit_sklearn(frames: np.ndarray, config: KMeansConfig, max_iter: int, n_init: int):
    import sklearn
    from sklearn.cluster import MiniBatchKMeans

    kmeans = MiniBatchKMeans(
        n_clusters=config.k,
        init="k-means++",
        max_iter=max_iter,
        batch_size=config.batch_size,
        tol=config.tol,
        max_no_improvement=config.max_no_improvement,
        n_init=n_init,
        reassignment_ratio=config.reassignment_ratio,
        compute_labels=False,
        init_size=config.init_size,
        # fairseq calls np.random.seed(seed) and leaves random_state=None (the global
        # RandomState); a RandomState(seed) is the same stream without touching global state.
        random_state=np.random.RandomState(config.seed),
        verbose=0,
    )
    kmeans.fit(frames)
    details = {
        "version": sklearn.__version__,
        "batch_size": config.batch_size,
        "n_steps": int(kmeans.n_steps_),
        "n_iter": int(kmeans.n_iter_),
    }
    init_size = getattr(kmeans, "_init_size", None)  # sklearn: 3 * batch_size by default
    if init_size is not None:
        details["init_frames"] = int(min(init_size, frames.shape[0]))
    return np.asarray(kmeans.cluster_centers_, dtype=np.float32), details


__all__ = ["KMeansConfig", "FrameSampler", "KMeansModel", "fit_kmeans"]

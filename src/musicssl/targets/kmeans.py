"""K-means targets for MusicHuBERT: sample frames, fit centroids, assign cluster ids.

MusicHuBERT (HuBERT on music) is trained to predict, for every frame, the id of the nearest of
k centroids fitted on features of the training audio: MFCC frames (39- or 60-dim at 100 Hz,
k = 500 or 2000) in the first iteration, hidden states of a previous model (768-dim at 50 Hz)
later. The three steps, each in its module:

- `FrameSampler` (frame_sampler.py): streaming, seeded, memory-bounded selection of the frames
  to fit on. Each frame is kept with probability `sample_fraction` (fairseq fits on a fraction of the frames,
  e.g. 10 %), and a reservoir caps what is kept at `max_frames` rows, so memory is at most
  `max_frames x D` float32 whatever the corpus size.
- `fit_kmeans(frames, config) -> KMeansModel` (here): k-means++ initialisation and Lloyd
  iterations with faiss (default) or scikit-learn's MiniBatchKMeans with the settings of fairseq's
  `examples/hubert/simple_kmeans/learn_kmeans.py`.
- `KMeansModel.assign(features)` (kmeans_model.py): nearest centroid by squared Euclidean
  distance, ||x||^2 - 2 x.c + ||c||^2 in batched float32 torch matmuls (CPU or CUDA), ties to the lowest
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
import json
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

import numpy as np
import torch

from musicssl.targets.frame_sampler import FrameSampler, check_sampling
from musicssl.targets.kmeans_model import KMeansModel, json_default

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
        check_sampling(self.sample_fraction, self.max_frames)

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
            json.dumps(feature, default=json_default, allow_nan=False)
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


__all__ = ["KMeansConfig", "fit_kmeans"]

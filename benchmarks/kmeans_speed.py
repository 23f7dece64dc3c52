"""faiss-cpu k-means against scikit-learn's MiniBatchKMeans with fairseq's settings.

Run (from the repository root):

    .venv/bin/python benchmarks/kmeans_speed.py                          # 1M x 39, k = 2000
    .venv/bin/python benchmarks/kmeans_speed.py --frames 100000 --k 500  # quick mode
    .venv/bin/python benchmarks/kmeans_speed.py --runs faiss,sklearn_n_init1 --json out.json

Data: `mfcc_like(frames, dim, seed)`, float32, seeded. A mixture of 1000 anisotropic Gaussians
with Zipf-distributed weights (a few very common "sounds", a long tail), laid out like
MFCC + deltas: dims are split into static / delta / delta-delta thirds, the per-dim scale
falls with the cepstral index (12 / (1 + j) ** 0.5) and is 0.3x for deltas and 0.1x for
delta-deltas, c0 carries a +40 offset (log-energy). Each component has its own random
rotation and a log-normal spread per axis, so clusters are correlated and elongated.
The frames are shuffled.

Runs (all fit on all `--frames` frames; each is one call to `fit_kmeans`):

- sklearn_fairseq: MiniBatchKMeans(init="k-means++", max_iter=100, batch_size=10000, tol=0,
  max_no_improvement=100, n_init=20, reassignment_ratio=0, compute_labels=False,
  init_size=None), random_state = RandomState(0) -- fairseq learn_kmeans.py.
- sklearn_n_init1: the same with n_init=1 (one k-means++ init instead of 20).
- faiss: our default, faiss.Kmeans with faiss's k-means++ init, niter=25, nredo=1, no
  subsampling (max_points_per_centroid raised to cover every frame).

Reported per run: fit seconds (wall time of the library's fit), inertia per frame on all the
frames (mean squared distance to the nearest centroid, `KMeansModel.inertia`, same code for
every run), and against faiss: time ratio run/faiss (> 1: faiss faster) and inertia ratio
run/faiss (> 1: faiss better). `faiss objective` lists faiss's own objective per frame at a
few iterations (the curve that justifies niter=25).

Assignment (on the faiss centroids, all frames): `KMeansModel.assign` (torch, batches of
65536 frames, float32; and exact=True, which recomputes near-ties in float64) against
faiss.IndexFlatL2.search(x, 1); median of `--repeats` runs, interleaved. Also the fraction of
labels that differ from a float64 computation on the first 100k frames, and from faiss.

Threads: `--threads` (default 2) for OpenMP/MKL/OpenBLAS (environment, set before numpy is
imported), torch.set_num_threads and faiss.omp_set_num_threads.

Results, 2026-11-22, 2-core Intel Xeon (Sapphire Rapids, KVM), 24 GB, torch 2.13 CPU,
faiss-cpu 1.15.1, scikit-learn 1.9.1; the machine was shared with another job using ~1.7
cores throughout, so absolute times are inflated (both libraries alike):

    2026-11-22, 2 threads, shared with other jobs (times vary up to 2x between repeats):
    run                       iters  n_init  fit s (2 repeats)  inertia/frame
    faiss (k-means++ on 100k)    25       1     533, 122         58.43
    faiss, k-means++ on all      25       1     188, 401         58.48
    faiss, k-means++ on 30k      25       1     130, 161         58.54
    faiss                        50       1     273, 216         58.27
    sklearn, fairseq settings   100      20     304, 191         59.20  (early stop after 6 epochs)
    sklearn, n_init 1           100       1      58,  55         59.06
    faiss reaches sklearn-fairseq's 59.20 after 9 iterations: 48 s vs 247 s (5.1x).

    Re-run on a quiet machine (session 4, `--runs faiss,sklearn_fairseq --no-assign`):
    faiss (25 iterations) 124.6 s, 58.43; sklearn, fairseq settings, 190.6 s, 59.20 (1.53x);
    faiss reaches 59.20 after 9 iterations, 47.6 s: 4.0x. The shared-machine 5.1x above
    flattered faiss. `KMeansModel.assign` (torch matmuls) takes 5.2 s per pass over the 1M
    frames here, like a faiss iteration: a hand-written Lloyd loop would not be faster.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=39)
    parser.add_argument("--k", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", default="faiss,faiss_initall,sklearn_fairseq,sklearn_n_init1",
                        help="comma-separated: sklearn_fairseq, sklearn_n_init1, faiss (our default) or "
                             "faiss with options: faiss_niter50, faiss_initall (k-means++ on all frames), "
                             "faiss_init30000, combined as faiss_niter50_initall")
    parser.add_argument("--sklearn-n-init", type=int, default=20,
                        help="n_init of the sklearn_fairseq run (fairseq: 20)")
    parser.add_argument("--faiss-niter", type=int, default=None, help="override faiss niter (default: ours, 25)")
    parser.add_argument("--fit-repeats", type=int, default=1,
                        help="fit every run this many times (order rotated); the median time is reported")
    parser.add_argument("--repeats", type=int, default=3, help="assignment timing repeats")
    parser.add_argument("--no-assign", action="store_true", help="skip the assignment timing")
    parser.add_argument("--json", default=None, help="write all results to this file")
    parser.add_argument("--report", default=None, help="only print the tables of an earlier --json file")
    return parser.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(ARGS.threads)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from musicssl.targets.kmeans import KMeansConfig, fit_kmeans  # noqa: E402


def mfcc_like(frames: int, dim: int = 39, seed: int = 0, components: int = 1000) -> np.ndarray:
    """Seeded MFCC-like frames (frames, dim) float32; see the module docstring."""
    rng = np.random.default_rng(seed)
    third = max(1, dim // 3)
    cepstral_index = np.arange(dim) % third
    group = np.minimum(np.arange(dim) // third, 2)
    scale = 12.0 / (1.0 + cepstral_index) ** 0.5 * np.array([1.0, 0.3, 0.1])[group]
    offset = np.where(np.arange(dim) == 0, 40.0, 0.0)
    weights = 1.0 / np.arange(1, components + 1) ** 1.1
    counts = rng.multinomial(frames, weights / weights.sum())
    means = offset + scale * rng.standard_normal((components, dim)) * 0.8
    out = np.empty((frames, dim), dtype=np.float32)
    start = 0
    for c in range(components):
        n = int(counts[c])
        if n == 0:
            continue
        rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        spread = 0.35 * rng.lognormal(0.0, 0.5, dim)
        z = rng.standard_normal((n, dim)) * spread
        out[start:start + n] = means[c] + (z @ rotation.T) * scale
        start += n
    return out[rng.permutation(frames)]


def run_config(name: str, args) -> KMeansConfig:
    """`faiss[_niterN][_initN|_initall]`, `sklearn_fairseq` or `sklearn_n_init1`."""
    common = dict(k=args.k, seed=args.seed, sample_fraction=None, max_frames=None)
    if name == "sklearn_fairseq":
        return KMeansConfig(library="sklearn", max_iter=100, n_init=args.sklearn_n_init, **common)
    if name == "sklearn_n_init1":
        return KMeansConfig(library="sklearn", max_iter=100, n_init=1, **common)
    tokens = name.split("_")
    if tokens[0] != "faiss":
        raise ValueError(f"unknown run {name!r}")
    options = {"max_iter": args.faiss_niter}
    for token in tokens[1:]:
        if token.startswith("niter"):
            options["max_iter"] = int(token[5:])
        elif token == "initall":
            options["init_max_frames"] = None
        elif token.startswith("init"):
            options["init_max_frames"] = int(token[4:])
        else:
            raise ValueError(f"unknown faiss option {token!r} in run {name!r}")
    return KMeansConfig(library="faiss", **options, **common)


def fit_run(name: str, x: np.ndarray, args) -> tuple[dict, object]:
    config = run_config(name, args)
    print(f"[{time.strftime('%H:%M:%S')}] fitting {name} ...", flush=True)
    model = fit_kmeans(x, config)
    record = model.record
    result = {
        "run": name,
        "library": record["library"],
        "max_iter": record["max_iter"],
        "n_init": record["n_init"],
        "init_frames": record.get("init_frames", config.init_size or min(3 * config.batch_size, x.shape[0])),
        "fit_seconds": record["fit_seconds"],
        "inertia_per_frame": record["inertia_per_frame"],  # on all frames = the fitting set
    }
    for key in ("n_steps", "n_iter", "init_seconds", "init_seconds_approx", "objective_per_iteration",
                "seconds_at_iteration", "faiss_frames_used"):
        if record.get(key) is not None:
            result[key] = record[key]
    extra = {key: round(result[key], 1) if isinstance(result[key], float) else result[key]
             for key in ("n_steps", "n_iter", "init_seconds", "init_seconds_approx") if key in result}
    print(f"[{time.strftime('%H:%M:%S')}]   {name}: {result['fit_seconds']:.1f} s, "
          f"inertia/frame {result['inertia_per_frame']:.4f} {extra}", flush=True)
    return result, model


def time_to_reach(result: dict, target: float) -> tuple[int, float] | None:
    """(iterations, seconds) after which faiss's own objective is <= target, from its curve.

    objective_per_iteration[i] is measured in iteration i + 1 for the centroids left by i
    updates, which a run with niter = i would return at seconds_at_iteration[i - 1]."""
    curve, seconds = result.get("objective_per_iteration"), result.get("seconds_at_iteration")
    if not curve or not seconds:
        return None
    for i in range(1, len(curve)):
        if curve[i] <= target:
            return i, seconds[i - 1]
    return None


def time_assignment(model, x: np.ndarray, repeats: int) -> dict:
    import faiss

    index = faiss.IndexFlatL2(model.dim)
    index.add(model.centroids)
    runs = {
        "torch assign (float32)": lambda: model.assign(x),
        "torch assign exact=True": lambda: model.assign(x, exact=True),
        "faiss IndexFlatL2.search": lambda: index.search(x, 1)[1].reshape(-1),
    }
    times = {name: [] for name in runs}
    labels = {}
    for _ in range(repeats):  # interleaved, so machine noise hits all alike
        for name, fn in runs.items():
            start = time.perf_counter()
            labels[name] = fn()
            times[name].append(time.perf_counter() - start)
    result = {name: statistics.median(t) for name, t in times.items()}
    fast, exact, faiss_labels = (labels[name] for name in runs)
    subset = slice(0, min(100_000, x.shape[0]))
    reference = _float64_labels(model, x[subset])
    result["differ float32 vs float64 (first 100k)"] = float(np.mean(fast[subset] != reference))
    result["differ exact vs float64 (first 100k)"] = float(np.mean(exact[subset] != reference))
    result["differ faiss vs float64 (first 100k)"] = float(np.mean(faiss_labels[subset] != reference))
    result["differ float32 vs faiss (all)"] = float(np.mean(fast != faiss_labels))
    return result


def summarize(name: str, attempts: list[dict]) -> dict:
    """One row per run from its repeats: the least-disturbed repeat (min time) and the median."""
    first = attempts[0]
    if any(a["inertia_per_frame"] != first["inertia_per_frame"] for a in attempts):
        print(f"WARNING: {name} is not deterministic across repeats: "
              f"{[a['inertia_per_frame'] for a in attempts]}")
    fastest = min(attempts, key=lambda a: a["fit_seconds"])
    result = {key: value for key, value in fastest.items()}
    result["fit_seconds_min"] = fastest["fit_seconds"]
    result["fit_seconds_median"] = statistics.median(a["fit_seconds"] for a in attempts)
    result["attempts"] = [{key: a.get(key) for key in ("fit_seconds", "init_seconds", "init_seconds_approx")}
                          for a in attempts]
    return result


def print_fits(results: list[dict]) -> None:
    print()
    print("fit s: min over repeats (least disturbed by other jobs) and median; init s and the")
    print("iteration times below are those of the min repeat; ratios use the min times.")
    print(f"{'run':<16} {'max_iter':>8} {'n_init':>6} {'init on':>8} {'fit s min':>9} {'median':>7} "
          f"{'init s':>6} {'inertia/frame':>13} {'time/faiss':>10} {'inertia/faiss':>13}")
    base = next((r for r in results if r["run"] == "faiss"), None)
    for r in results:
        time_ratio = r["fit_seconds_min"] / base["fit_seconds_min"] if base else float("nan")
        inertia_ratio = r["inertia_per_frame"] / base["inertia_per_frame"] if base else float("nan")
        r["time_ratio_vs_faiss"], r["inertia_ratio_vs_faiss"] = time_ratio, inertia_ratio
        init_s = r.get("init_seconds", r.get("init_seconds_approx"))
        init_s = f"{init_s:6.1f}" if init_s is not None else f"{'-':>6}"
        print(f"{r['run']:<16} {r['max_iter']:>8} {r['n_init']:>6} {r['init_frames']:>8} "
              f"{r['fit_seconds_min']:>9.1f} {r['fit_seconds_median']:>7.1f} {init_s} "
              f"{r['inertia_per_frame']:>13.4f} {time_ratio:>10.2f} {inertia_ratio:>13.4f}")
    print("fit seconds of each repeat: " + "; ".join(
        f"{r['run']} " + ", ".join(f"{a['fit_seconds']:.1f}" for a in r["attempts"]) for r in results))
    for r in results:
        curve = r.get("objective_per_iteration")
        if r["library"] != "faiss" or not curve:
            continue
        marks = sorted({i for i in (0, 4, 9, 14, 19, 24, 49, 99) if i < len(curve)} | {len(curve) - 1})
        print(f"{r['run']} objective per frame at iteration: " + ", ".join(f"{i + 1}: {curve[i]:.3f}" for i in marks))
        for other in results:
            if other["library"] != "sklearn":
                continue
            reached = time_to_reach(r, other["inertia_per_frame"])
            text = (f"after {reached[0]} iterations, {reached[1]:.1f} s (sklearn: {other['fit_seconds_min']:.1f} s)"
                    if reached else "not reached")
            print(f"  {r['run']} reaches {other['run']}'s inertia {other['inertia_per_frame']:.3f} {text}")


def print_assignment(assignment: dict, frames: int, k: int, repeats: int) -> None:
    print(f"\nassignment of {frames} frames to k={k} (faiss run's centroids), median of {repeats}:")
    for name, value in assignment.items():
        unit = "s" if not name.startswith("differ") else ""
        print(f"  {name:<42} {value:.6g} {unit}")


def _float64_labels(model, x: np.ndarray, batch: int = 8192) -> np.ndarray:
    c = torch.from_numpy(model.centroids.astype(np.float64))
    out = []
    for start in range(0, x.shape[0], batch):
        xb = torch.from_numpy(x[start:start + batch].astype(np.float64))
        dist = (xb * xb).sum(1, keepdim=True) - 2 * xb @ c.T + (c * c).sum(1)
        out.append(dist.argmin(1).numpy())
    return np.concatenate(out)


def main(args) -> dict:
    import faiss
    import sklearn

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    info = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
        "python": sys.version.split()[0],
        "torch": torch.__version__, "faiss": faiss.__version__, "sklearn": sklearn.__version__,
        "threads": args.threads, "frames": args.frames, "dim": args.dim, "k": args.k,
    }
    print(json.dumps(info), flush=True)
    start = time.perf_counter()
    x = mfcc_like(args.frames, args.dim, args.seed)
    print(f"data {x.shape} generated in {time.perf_counter() - start:.1f} s", flush=True)

    names = [name.strip() for name in args.runs.split(",")]
    attempts: dict[str, list[dict]] = {name: [] for name in names}
    models = {}
    for repeat in range(args.fit_repeats):  # rotate the order, so machine noise spreads evenly
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            result, model = fit_run(name, x, args)
            attempts[name].append(result)
            models.setdefault(name, model)
    results = [summarize(name, attempts[name]) for name in names]
    print_fits(results)

    assignment = None
    if not args.no_assign and models:
        model = models.get("faiss") or next(iter(models.values()))
        print(f"\n[{time.strftime('%H:%M:%S')}] timing assignment ...", flush=True)
        assignment = time_assignment(model, x, args.repeats)
        print_assignment(assignment, x.shape[0], model.k, args.repeats)

    output = {"info": info, "fits": results, "assignment": assignment, "repeats": args.repeats}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(output, f, indent=2)
    return output


def report(path: str) -> None:
    """Print the tables again from a --json file."""
    with open(path) as f:
        output = json.load(f)
    print(json.dumps(output["info"]))
    print_fits(output["fits"])
    if output.get("assignment"):
        print_assignment(output["assignment"], output["info"]["frames"], output["info"]["k"], output["repeats"])


if __name__ == "__main__":
    if ARGS.report:
        report(ARGS.report)
    else:
        main(ARGS)

"""k-means targets: fitting recovers known clusters, assignment equals brute force, sampling is
bounded, seeded and uniform, save/load is exact and checked."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from musicssl.targets.frame_sampler import FrameSampler
from musicssl.targets.kmeans import KMeansConfig, fit_kmeans
from musicssl.targets.kmeans_model import KMeansModel
from tests.numerics import U32, gamma

pytest.importorskip("faiss")
pytest.importorskip("sklearn")
from scipy.optimize import linear_sum_assignment  # noqa: E402  (scipy comes with scikit-learn)
from sklearn.metrics import adjusted_rand_score  # noqa: E402

LIBRARIES = ["faiss", "sklearn"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These problems are tiny: threads only add overhead, and OpenMP workers spin-waiting on a
    busy machine made single fits take seconds. Limits torch, faiss and sklearn (OpenMP, BLAS)
    to one thread for this module and restores them after."""
    import faiss
    from threadpoolctl import threadpool_limits

    torch_threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(torch_threads)
        faiss.omp_set_num_threads(faiss_threads)


def brute_force(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Float64 full distance matrix, argmin (first index on ties)."""
    x64, c64 = x.reshape(-1, x.shape[-1]).astype(np.float64), centroids.astype(np.float64)
    labels = [((x64[i:i + 128, None, :] - c64[None]) ** 2).sum(-1).argmin(1) for i in range(0, len(x64), 128)]
    return np.concatenate(labels or [np.zeros(0, np.int64)]).reshape(x.shape[:-1])


@pytest.fixture(scope="module")
def blobs():
    """8 well-separated Gaussian blobs in 10-D, 400 points each (std 0.1, 42 apart)."""
    rng = np.random.default_rng(123)
    means = np.zeros((8, 10))
    means[np.arange(8), np.arange(8)] = 30.0
    means += rng.normal(0, 1, means.shape)
    labels = np.repeat(np.arange(8), 400)
    x = (means[labels] + rng.normal(0, 0.1, (labels.size, 10))).astype(np.float32)
    order = rng.permutation(labels.size)
    return x[order], labels[order], means


# --- fitting -------------------------------------------------------------------------------------


@pytest.mark.parametrize("library", LIBRARIES)
def test_fit_recovers_known_clusters(blobs, library):
    x, labels, means = blobs
    model = fit_kmeans(x, KMeansConfig(k=8, library=library), feature={"kind": "blobs"})  # defaults
    predicted = model.assign(x)
    assert adjusted_rand_score(labels, predicted) == 1.0
    rows, cols = linear_sum_assignment(((model.centroids[:, None] - means[None]) ** 2).sum(-1))
    errors = np.linalg.norm(model.centroids[rows] - means[cols], axis=1)
    assert errors.max() < 0.05  # 0.1 / sqrt(400) * sqrt(10) ~ 0.016 expected
    if library == "faiss":  # Lloyd converged: centroids are the cluster means
        for c in range(8):
            # faiss sums a cluster's ~50 points in float32, in its own order: gamma(n) of sum |x| / n
            members = x[predicted == c].astype(np.float64)
            bound = 2 * gamma(len(members)) * np.abs(members).mean(0) + U32 * np.abs(members.mean(0))
            assert np.all(np.abs(model.centroids[c] - members.mean(0)) <= bound)
    # inertia per frame ~ 10 dims * 0.1^2
    assert model.record["inertia_per_frame"] == pytest.approx(model.inertia(x))
    assert 0.08 < model.record["inertia_per_frame"] < 0.12
    assert model.record["library"] == library
    assert model.record["feature"] == {"kind": "blobs"}


@pytest.mark.parametrize("n_init", [1, 3])
def test_faiss_init_on_subsample(blobs, n_init):
    """k-means++ on 500 of the 3200 frames, Lloyd on all of them."""
    x, labels, means = blobs
    model = fit_kmeans(x, KMeansConfig(k=8, init_max_frames=500, n_init=n_init))
    assert adjusted_rand_score(labels, model.assign(x)) == 1.0
    assert model.record["init_frames"] == 500 and model.record["n_init"] == n_init
    # faiss stops a restart early once the objective stops changing (converged)
    assert n_init <= len(model.record["objective_per_iteration"]) <= 25 * n_init
    again = fit_kmeans(x, KMeansConfig(k=8, init_max_frames=500, n_init=n_init))
    np.testing.assert_array_equal(model.centroids, again.centroids)


def test_library_defaults_are_resolved():
    faiss_cfg, sk_cfg = KMeansConfig(), KMeansConfig(library="sklearn")
    assert (faiss_cfg.resolved_max_iter(), faiss_cfg.resolved_n_init()) == (25, 1)
    assert (sk_cfg.resolved_max_iter(), sk_cfg.resolved_n_init()) == (100, 20)
    assert KMeansConfig().library == "faiss"


@pytest.mark.parametrize("library", LIBRARIES)
def test_too_few_frames_is_a_clear_error(library):
    x = np.random.default_rng(0).normal(size=(9, 3)).astype(np.float32)
    with pytest.raises(ValueError, match=r"need at least k=10 frames to fit k=10 clusters, got 9"):
        fit_kmeans(x, KMeansConfig(k=10, library=library))


def test_bad_inputs():
    with pytest.raises(ValueError, match="NaN"):
        fit_kmeans(np.full((20, 2), np.nan, np.float32), KMeansConfig(k=2))
    with pytest.raises(ValueError, match="library"):
        KMeansConfig(library="scipy")
    with pytest.raises(ValueError, match="sample_fraction"):
        KMeansConfig(sample_fraction=1.5)


@pytest.mark.parametrize("library", LIBRARIES)
def test_same_seed_same_centroids(library):
    x = np.random.default_rng(1).normal(size=(3000, 8)).astype(np.float32)
    # the default library with its defaults; sklearn with fewer inits/epochs to stay fast
    options = {} if library == "faiss" else {"n_init": 2, "max_iter": 10}
    first = fit_kmeans(x, KMeansConfig(k=40, seed=3, library=library, **options))
    second = fit_kmeans(x, KMeansConfig(k=40, seed=3, library=library, **options))
    other = fit_kmeans(x, KMeansConfig(k=40, seed=4, library=library, **options))
    np.testing.assert_array_equal(first.centroids, second.centroids)
    assert not np.array_equal(first.centroids, other.centroids)


def test_faiss_does_not_subsample():
    x = np.random.default_rng(2).normal(size=(6000, 4)).astype(np.float32)
    model = fit_kmeans(x, KMeansConfig(k=10))  # faiss's own limit would be 10 * 256 = 2560
    assert model.record["faiss_frames_used"] == 6000
    assert model.record["max_points_per_centroid"] >= 600


def test_fit_from_sampler_records_counts():
    rng = np.random.default_rng(5)
    config = KMeansConfig(k=5, sample_fraction=0.5, max_frames=400, seed=1)
    sampler = config.sampler()
    for _ in range(10):
        sampler.add(rng.normal(size=(100, 6)).astype(np.float32))
    model = fit_kmeans(sampler, config, feature={"name": "mfcc", "n_mfcc": 13})
    record = model.record
    assert record["frames_seen"] == 1000
    assert record["frames_fit"] == 400
    assert 400 <= record["frames_selected"] <= 600
    assert record["dim"] == 6 and record["k"] == 5


# --- assignment ----------------------------------------------------------------------------------


@pytest.mark.parametrize("exact", [False, True])
def test_assign_equals_brute_force(exact):
    rng = np.random.default_rng(7)
    centroids = rng.normal(size=(37, 13)).astype(np.float32)
    model = KMeansModel(centroids)
    x = rng.normal(size=(2500, 13)).astype(np.float32)
    expected = brute_force(x, centroids)
    np.testing.assert_array_equal(model.assign(x[:50], batch_frames=1, exact=exact), expected[:50])
    for batch_frames in (333, 1024, 65536):  # 2500 = 7 * 333 + 169: partial last batch
        np.testing.assert_array_equal(model.assign(x, batch_frames=batch_frames, exact=exact), expected)
    labels = model.assign(torch.from_numpy(x), batch_frames=500, exact=exact)
    assert labels.dtype == np.int64 and labels.shape == (2500,)
    np.testing.assert_array_equal(labels, expected)
    # (B, T, D), numpy and torch, batches crossing utterance boundaries
    batched = x[:2400].reshape(4, 600, 13)
    np.testing.assert_array_equal(model.assign(batched, batch_frames=1000, exact=exact), expected[:2400].reshape(4, 600))
    np.testing.assert_array_equal(model.assign(torch.from_numpy(batched).double(), batch_frames=77, exact=exact),
                                  expected[:2400].reshape(4, 600))
    # a non-contiguous, read-only view
    view = np.asfortranarray(x)
    view.flags.writeable = False
    np.testing.assert_array_equal(model.assign(view, batch_frames=999, exact=exact), expected)


def test_assign_large_offset_exact_equals_brute_force():
    """MFCC-like: a big common offset and a spread of scales; exact=True must match float64."""
    rng = np.random.default_rng(8)
    scale = 12.0 / np.sqrt(1 + np.arange(39) % 13)
    offset = np.where(np.arange(39) == 0, 300.0, 0.0)
    centroids = (offset + scale * rng.normal(size=(300, 39))).astype(np.float32)
    x = (centroids[rng.integers(0, 300, 4000)] + scale * rng.normal(size=(4000, 39))).astype(np.float32)
    # near-ties on purpose: midpoints between pairs of centroids
    x[:200] = ((centroids[:200] + centroids[100:300]) / 2).astype(np.float32)
    model = KMeansModel(centroids)
    expected = brute_force(x, centroids)
    np.testing.assert_array_equal(model.assign(x, exact=True, batch_frames=1500), expected)
    fast = model.assign(x)  # float32 only: may flip the (float32-rounded) midpoints, nothing else
    np.testing.assert_array_equal(fast[200:], expected[200:])


def test_ties_go_to_lowest_index():
    rng = np.random.default_rng(9)
    base = rng.normal(size=(20, 5)).astype(np.float32)
    centroids = np.concatenate([base, base[[3, 7]], base[[3]]])  # 20, 21, 22 duplicate 3, 7, 3
    centroids = centroids[rng.permutation(len(centroids))]
    model = KMeansModel(centroids)
    x = np.concatenate([centroids, centroids + rng.normal(0, 1e-3, centroids.shape).astype(np.float32),
                        rng.normal(size=(500, 5)).astype(np.float32)])
    expected = brute_force(x, centroids)
    for exact in (False, True):
        labels = model.assign(x, batch_frames=64, exact=exact)
        np.testing.assert_array_equal(labels, expected)
    # every duplicate group maps to its lowest index
    first = {}
    for i, row in enumerate(map(bytes, centroids)):
        first.setdefault(row, i)
    np.testing.assert_array_equal(model.assign(centroids), [first[bytes(r)] for r in centroids])
    assert model.assign(np.zeros((0, 5), np.float32)).shape == (0,)


def test_assign_rejects_bad_input():
    model = KMeansModel(np.eye(3, dtype=np.float32))
    with pytest.raises(ValueError, match="dim 4"):
        model.assign(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="shape"):
        model.assign(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="NaN or Inf .frame 5"):
        bad = np.zeros((8, 3), np.float32)
        bad[5, 1] = np.nan
        model.assign(bad, batch_frames=4)


def test_inertia_is_mean_squared_distance():
    rng = np.random.default_rng(10)
    centroids = rng.normal(size=(16, 6)).astype(np.float32)
    x = rng.normal(size=(1000, 6)).astype(np.float32)
    dist = ((x[:, None].astype(np.float64) - centroids[None]) ** 2).sum(-1).min(1)
    assert KMeansModel(centroids).inertia(x, batch_frames=300) == pytest.approx(dist.mean(), rel=1e-9)


# --- sampling ------------------------------------------------------------------------------------


def utterances(seed: int, count: int, dim: int = 3):
    rng = np.random.default_rng(seed)
    start = 0
    for _ in range(count):
        length = int(rng.integers(0, 400))
        frames = np.arange(start, start + length, dtype=np.float32)[:, None].repeat(dim, 1)
        start += length
        yield frames


def test_sampler_respects_cap():
    sampler = FrameSampler(sample_fraction=0.5, max_frames=300, seed=0)
    for utterance in utterances(0, 60):
        sampler.add(utterance)
        assert sampler.kept <= 300
        assert sampler.nbytes <= 300 * 3 * 4
    assert sampler.seen > 5000 and sampler.selected > 2000
    frames = sampler.frames()
    assert frames.shape == (300, 3) and frames.dtype == np.float32
    assert len(np.unique(frames[:, 0])) == 300  # distinct frames, no duplicates


def test_sampler_fraction_within_binomial_bounds():
    sampler = FrameSampler(sample_fraction=0.1, seed=0)
    for _ in range(100):
        sampler.add(np.zeros((1000, 2), np.float32))
    n, p = 100_000, 0.1
    assert sampler.seen == n
    assert abs(sampler.kept - n * p) < 5 * np.sqrt(n * p * (1 - p))
    assert sampler.frames().shape == (sampler.kept, 2)
    everything = FrameSampler(seed=0)
    everything.add(np.ones((10, 2)))
    assert everything.kept == 10 and everything.frames().dtype == np.float32


def test_sampler_deterministic_given_seed():
    def run(seed):
        sampler = FrameSampler(sample_fraction=0.3, max_frames=500, seed=seed)
        for utterance in utterances(1, 40):
            sampler.add(utterance)
        return sampler.frames()

    np.testing.assert_array_equal(run(5), run(5))
    assert not np.array_equal(run(5), run(6))


@pytest.mark.parametrize("fraction", [None, 0.5])
def test_reservoir_gives_each_frame_equal_chance(fraction):
    """Frame i is kept with probability cap * p / (expected selected); count over many seeds."""
    total, cap, trials = 2000, 100, 300
    lengths = np.random.default_rng(0).multinomial(total, np.full(23, 1 / 23))
    frames = np.arange(total, dtype=np.float32)[:, None]
    counts = np.zeros(total)
    for seed in range(trials):
        sampler = FrameSampler(sample_fraction=fraction, max_frames=cap, seed=seed)
        start = 0
        for length in lengths:
            sampler.add(frames[start:start + length])
            start += length
        kept = sampler.frames()[:, 0].astype(int)
        assert len(kept) == cap
        counts[kept] += 1
    # 10 bins of 200 consecutive frames (early / late in the stream): each expects
    # trials * cap / 10 = 3000 inclusions; sd < sqrt(3000) ~ 55; allow 5 sd.
    per_bin = counts.reshape(10, -1).sum(1)
    np.testing.assert_allclose(per_bin, trials * cap / 10, atol=5 * np.sqrt(trials * cap / 10))
    # first and last frames of the stream are not favoured
    assert abs(counts[:100].mean() - counts[-100:].mean()) < 5


# --- persistence ---------------------------------------------------------------------------------


@pytest.fixture
def fitted():
    x = np.random.default_rng(11).normal(size=(500, 4)).astype(np.float32)
    return fit_kmeans(x, KMeansConfig(k=7, sample_fraction=None), feature={"name": "mfcc", "n_mfcc": 13},
                      frames_seen=5000)


def test_save_load_round_trip(tmp_path, fitted):
    directory = fitted.save(tmp_path / "km")
    assert sorted(p.name for p in directory.iterdir()) == ["centroids.npy", "kmeans.json"]
    loaded = KMeansModel.load(directory)
    assert loaded.centroids.dtype == np.float32
    np.testing.assert_array_equal(loaded.centroids, fitted.centroids)
    assert loaded.record == json.loads(json.dumps(fitted.record))
    header = json.loads((directory / "kmeans.json").read_text())
    assert header["centroids_shape"] == [7, 4]
    record = header["record"]
    for key in ("library", "library_version", "k", "seed", "config", "frames_fit", "frames_selected",
                "frames_seen", "dim", "inertia_per_frame", "fit_seconds", "feature", "max_iter", "n_init"):
        assert key in record, key
    assert (record["k"], record["dim"], record["frames_fit"], record["frames_seen"]) == (7, 4, 500, 5000)
    assert record["feature"] == {"name": "mfcc", "n_mfcc": 13}
    assert record["config"]["k"] == 7 and record["config"]["library"] == record["library"]
    x = np.random.default_rng(12).normal(size=(300, 4)).astype(np.float32)
    np.testing.assert_array_equal(loaded.assign(x), fitted.assign(x))


def test_load_errors_name_the_file(tmp_path, fitted):
    directory = fitted.save(tmp_path / "km")
    npy, js = directory / "centroids.npy", directory / "kmeans.json"

    np.save(npy, np.zeros((7, 5), np.float32))  # wrong shape
    with pytest.raises(ValueError, match=r"centroids\.npy: shape \[7, 5\] does not match .*kmeans\.json"):
        KMeansModel.load(directory)

    changed = fitted.centroids.copy()
    changed[0, 0] += 1
    np.save(npy, changed)  # right shape, wrong contents
    with pytest.raises(ValueError, match=r"centroids\.npy: contents do not match the sha256"):
        KMeansModel.load(directory)

    np.save(npy, np.array([{"a": 1}], dtype=object), allow_pickle=True)  # would need pickle
    with pytest.raises(ValueError, match=r"centroids\.npy: cannot read"):
        KMeansModel.load(directory)

    npy.write_bytes(b"not a numpy file")
    with pytest.raises(ValueError, match=r"centroids\.npy"):
        KMeansModel.load(directory)

    np.save(npy, fitted.centroids.astype(np.float64))
    with pytest.raises(ValueError, match=r"centroids\.npy: dtype float64"):
        KMeansModel.load(directory)

    fitted.save(directory)
    js.write_text(js.read_text()[:50])  # truncated JSON
    with pytest.raises(ValueError, match=r"kmeans\.json: not valid JSON"):
        KMeansModel.load(directory)

    js.unlink()
    with pytest.raises(FileNotFoundError, match=r"kmeans\.json"):
        KMeansModel.load(directory)

    fitted.save(directory)
    npy.unlink()
    with pytest.raises(FileNotFoundError, match=r"centroids\.npy"):
        KMeansModel.load(directory)


def test_feature_must_be_json(tmp_path):
    x = np.random.default_rng(13).normal(size=(50, 2)).astype(np.float32)
    with pytest.raises(TypeError, match="JSON"):
        fit_kmeans(x, KMeansConfig(k=2), feature={"window": object()})

"""benchmarks/curve_stability.py's bookkeeping: the learns verdict (issue 31's criterion and the
majority-code floor) from written logs, and the majority share of a label set. The runs themselves
take an hour each: the script runs them, these tests check what it concludes from them."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "curve_stability.py"


@pytest.fixture(scope="module")
def stability():
    spec = importlib.util.spec_from_file_location("curve_stability", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["curve_stability"] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules["curve_stability"]


def write_run(root: Path, name: str, accuracy: dict[int, float], kind: str = "musichubert",
              top_share: float | None = None) -> dict:
    run_dir = root / name
    run_dir.mkdir()
    lines = [{"step": 0, "collapse/effective_rank": 100.0, "collapse/init_effective_rank": 100.0}]
    targets = {} if top_share is None else {"targets/top_share": top_share}
    for step, value in accuracy.items():
        lines += [{"step": s, "accuracy/masked": value, **targets} for s in range(step - 90, step + 1, 10)]
        lines.append({"step": step, "collapse/effective_rank": 10.0 * value})
    (run_dir / "log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines) + "{torn\n")
    return {"kind": kind, "seed": 1, "kernel": "avx2", "dir": run_dir, "seconds": 1.0, "checkpoints": {}}


def test_learns_needs_doubling_and_the_majority_floor(stability, tmp_path):
    runs = {"doubles": write_run(tmp_path, "doubles", {1000: 0.10, 2000: 0.25}),
            "flat": write_run(tmp_path, "flat", {1000: 0.09, 2000: 0.09}),
            "below_prior": write_run(tmp_path, "below_prior", {1000: 0.03, 2000: 0.07})}
    rows = {row["run"]: row for row in stability.stability_rows(runs, [0, 1000, 2000], 100, {}, prior=0.089)}
    assert rows["doubles"]["learns"] and not rows["flat"]["learns"]
    assert not rows["below_prior"]["learns"]  # doubled, but from below what a constant prediction scores
    assert rows["doubles"]["pretext"] == {1000: pytest.approx(0.10), 2000: pytest.approx(0.25)}
    assert rows["doubles"]["rank"] == {0: 100.0, 1000: pytest.approx(1.0), 2000: pytest.approx(2.5)}
    averages = {("doubles", 0): 40.0, ("doubles", 2000): 39.0}
    assert not stability.stability_rows({"doubles": runs["doubles"]}, [0, 1000, 2000], 100, averages)[0]["learns"]
    text = stability.stability_markdown(list(rows.values()), [0, 1000, 2000], "test CPU", prior=0.089)
    assert "1 of 3 runs learn" in text and "above 0.089" in text


def test_bestrq_is_held_to_its_own_targets_majority_share(stability, tmp_path):
    # BEST-RQ logs its targets' top share; the MFCC labels' prior does not apply to it
    runs = {"above": write_run(tmp_path, "above", {1000: 0.02, 2000: 0.08}, "bestrq", top_share=0.05),
            "below": write_run(tmp_path, "below", {1000: 0.02, 2000: 0.08}, "bestrq", top_share=0.12)}
    rows = {row["run"]: row for row in stability.stability_rows(runs, [0, 1000, 2000], 100, {}, prior=0.5)}
    assert rows["above"]["learns"] and not rows["below"]["learns"]


def test_majority_share_counts_the_training_labels(stability, tmp_path):
    (tmp_path / "train.km").write_text("1 1 2 3\n1 4\n")
    assert stability.majority_share(tmp_path) == pytest.approx(3 / 6)
    assert stability.majority_share(tmp_path / "missing") is None


def test_merts_inputs_are_the_corpus_at_24k_and_8_codebooks_at_75_hz(stability, tmp_path, monkeypatch):
    """`--models mert`: the corpus listed again at 24 kHz and a briefly fitted 75 Hz Mel-RVQ's codes,
    one label set per codebook on MERT's grid, made once and reused."""
    from musicssl.cli import main
    from musicssl.data.label_files import read_label_set
    from musicssl.data.manifest import recorded_sample_rate
    from tests.train.test_pretrain_musichubert import pitched_corpus

    pitched_corpus(tmp_path / "corpus", files=4, seconds=3.0)
    assert main(["manifest", str(tmp_path / "corpus"), "-o", str(tmp_path / "data"), "--valid-percent", "0",
                 "--workers", "1"]) == 0
    monkeypatch.setattr(stability, "MERT_CODES_FIT", (*stability.MERT_CODES_FIT, "fit.steps=3", "fit.stats_crops=4",
                                                      "fit.batch_size=4"))  # seconds, not the curve's 150 steps
    inputs = stability.method_inputs("mert", tmp_path / "out", tmp_path / "data", [])
    assert inputs.manifest == tmp_path / "out" / "manifest24k"
    assert recorded_sample_rate(inputs.manifest / "train.tsv") == 24_000
    (codes,) = inputs.labels
    names = json.loads((codes / "codebooks.json").read_text())["codebooks"]
    assert len(names) == 8
    grid = read_label_set(codes / names[0]).grid
    assert (grid.sample_rate, grid.rate_hz) == (24_000, 75.0)
    stamp = (codes / "codebooks.json").stat().st_mtime_ns
    assert stability.method_inputs("mert", tmp_path / "out", tmp_path / "data", []).labels == (codes,)
    assert (codes / "codebooks.json").stat().st_mtime_ns == stamp  # not made again

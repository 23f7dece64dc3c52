"""`musicssl probe` and `musicssl benchmark` end to end: a generated dataset in GTZAN's
shipped layout, a micro model, the real CLI, and the files a user reads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from musicssl.cli import main
from musicssl.evaluate.sources import EncoderSource, MfccSource
from musicssl.evaluate.tasks.base import LayoutExample
from musicssl.evaluate.tasks.gtzan import write_layout
from musicssl.interop.huggingface import export_pretrained
from tests.conftest import micro_backbone, tone

GENRES = ("blues", "metal")


def clicks(seconds: float, period: float, sample_rate: int = 16000) -> tuple[np.ndarray, np.ndarray]:
    """A low tone with a loud click train: the beats are the clicks."""
    wav = tone(seconds, sample_rate, frequency=110.0) * 0.3
    beats = np.arange(0.2, seconds - 0.1, period)
    for beat in beats:
        start = int(beat * sample_rate)
        wav[start:start + 160] += 0.8 * np.hanning(160)
    return wav.astype(np.float32), beats


def write_gtzan(root):
    """24 two-second clips of two genres, told apart by pitch and tempo, in GTZAN's layout."""
    examples = []
    for index in range(24):
        genre = GENRES[index % 2]
        wav, beats = clicks(2.0, 0.5 if genre == "blues" else 0.35)
        wav += tone(2.0, frequency=300.0 if genre == "blues" else 1200.0, seed=index) * 0.5
        split = ("train",) * 3 + ("valid", "test")
        examples.append(LayoutExample(name=f"{genre}{index}", audio=wav, sample_rate=16000,
                                      split=split[(index // 2) % 5], label=genre, extra={"beats": beats}))
    write_layout(root, examples)
    return root


@pytest.fixture(scope="module")
def gtzan_root(tmp_path_factory):
    return write_gtzan(tmp_path_factory.mktemp("GTZAN"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return export_pretrained(micro_backbone("hubert"), tmp_path_factory.mktemp("model") / "micro")


FAST = ["--lrs", "5e-3", "--max-epochs", "4", "--quiet"]


def test_probe_cli_writes_results_and_reuses_the_cache(tmp_path, gtzan_root, model_dir, monkeypatch, capsys):
    out = tmp_path / "probe"
    argv = ["probe", str(model_dir), "--task", "gtzan", "--data", str(gtzan_root), "-o", str(out), *FAST]
    assert main(argv) == 0
    payload = json.loads((out / "results.json").read_text())
    (result,) = payload["results"]
    assert result["task"] == "gtzan" and result["model"] == "micro"
    assert result["sizes"] == {"train": 16, "valid": 4, "test": 4}
    assert len(result["runs"]) == 4  # layers 0, 1, 2 and the weighted sum, one lr, one seed
    assert 0.0 <= result["test"]["accuracy"] <= 1.0
    chosen = [run for run in result["runs"] if run["layer"] == result["layer"]]
    assert result["valid"]["accuracy"] == max(run["valid"]["accuracy"] for run in result["runs"])
    assert chosen[0]["test"]["accuracy"] == result["test"]["accuracy"]
    assert payload["versions"]["torch"] and payload["probe_config"]["learning_rates"] == [5e-3]
    table = (out / "results.md").read_text()
    assert "| model | GTZAN Acc | Avg |" in table and "| micro |" in table
    assert (out / "plots" / "gtzan_layers.png").stat().st_size > 1000

    # Second run, more seeds: the probe runs again, but no feature is extracted.
    def no_extraction(*args, **kwargs):
        raise AssertionError("features were extracted again")

    monkeypatch.setattr(EncoderSource, "frames", no_extraction)
    assert main([*argv, "--seeds", "2", "--batch-size", "4", "--layer-weight-init", "zeros"]) == 0
    payload = json.loads((out / "results.json").read_text())
    result = payload["results"][0]
    assert len(result["runs"]) == 8 and set(result["test_std"]) >= {"accuracy"}
    assert payload["probe_config"]["batch_size"] == 4 and payload["probe_config"]["layer_weight_init"] == "zeros"


def test_benchmark_cli_table_has_one_row_per_model(tmp_path, gtzan_root, model_dir):
    root = tmp_path / "data"
    root.mkdir()
    (root / "GTZAN").symlink_to(gtzan_root, target_is_directory=True)
    out = tmp_path / "bench"
    argv = ["benchmark", str(model_dir), "mfcc", "--tasks", "gtzan,gtzan_beats", "--data-root", str(root),
            "-o", str(out), "--layers", "0", "--beat-decoder", "peaks", *FAST]
    assert main(argv) == 0
    lines = (out / "results.md").read_text().splitlines()
    header = lines.index("| model | GTZAN Acc | GTZANBT F1 | Avg |")
    rows = lines[header + 2:header + 4]
    assert [row.split(" | ")[0] for row in rows] == ["| micro", "| mfcc"]
    for row in rows:  # Avg is the mean of the task columns
        cells = [float(cell) for cell in row.strip("| ").split(" | ")[1:]]
        # each cell is printed to 0.1: three roundings of at most 0.05, the two halved by the mean
        assert cells[2] == pytest.approx((cells[0] + cells[1]) / 2, abs=0.05 + 0.05 + 1e-9)
    results = json.loads((out / "results.json").read_text())["results"]
    beats = [r for r in results if r["task"] == "gtzan_beats"]
    assert len(beats) == 2 and all(0.0 <= r["test"]["beat_f"] <= 1.0 for r in beats)
    assert {"beat_f_track_mean", "beat_precision", "beat_recall"} <= set(beats[0]["test"])
    assert MfccSource().pooled_dim == 78


def test_probe_cli_reports_a_missing_dataset(tmp_path, model_dir, capsys):
    assert main(["probe", str(model_dir), "--task", "gtzan", "--data", str(tmp_path / "nope"), "-o",
                 str(tmp_path / "o"), *FAST]) == 2
    assert "no such dataset folder" in capsys.readouterr().err
    assert main(["probe", str(model_dir), "--task", "nosuchtask", "--data", str(tmp_path), *FAST]) == 2
    assert "unknown task" in capsys.readouterr().err


def test_saved_results_are_reused_only_for_the_same_weights(tmp_path, gtzan_root, model_dir, monkeypatch):
    # A run folder retrained in place, or a name given to other weights, must be probed again:
    # saved (model, task) results follow the weights' fingerprint, not the model's name.
    import musicssl.evaluate.benchmark as benchmark

    other = export_pretrained(micro_backbone("hubert", seed=1), tmp_path / "other" / "micro")
    probed = []
    real_probe = benchmark.probe_task
    monkeypatch.setattr(benchmark, "probe_task", lambda task, splits, cache, *args, **kwargs:
                        probed.append(cache.source.fingerprint) or real_probe(task, splits, cache, *args, **kwargs))
    root = tmp_path / "data"
    root.mkdir()
    (root / "GTZAN").symlink_to(gtzan_root, target_is_directory=True)

    def run(weights):
        argv = ["benchmark", f"mine={weights}", "--tasks", "gtzan", "--data-root", str(root), "-o",
                str(tmp_path / "bench"), "--layers", "0", *FAST]
        assert main(argv) == 0
        return json.loads((tmp_path / "bench" / "results.json").read_text())["results"][0]

    first = run(model_dir)
    assert run(model_dir) == first and len(probed) == 1  # same weights: reused
    run(other)
    assert len(probed) == 2 and probed[0] != probed[1]  # same name, other weights: probed again
    saved = json.loads((tmp_path / "bench" / "runs" / "mine" / "gtzan.json").read_text())
    assert saved["fingerprint"] == probed[1]


def test_benchmark_names_every_unreadable_dataset_then_skips_them_on_request(tmp_path, gtzan_root, model_dir,
                                                                            capsys):
    root = tmp_path / "data"
    root.mkdir()
    (root / "GTZAN").symlink_to(gtzan_root)
    (root / "MTT").mkdir()  # there, but without its annotation files
    argv = ["benchmark", str(model_dir), "--tasks", "gtzan,mtt,emo", "--data-root", str(root),
            "-o", str(tmp_path / "out"), "--layers", "2", *FAST]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "2 of 3 datasets cannot be read; --skip-missing runs the others" in err
    assert f"mtt: {root / 'MTT'}" in err and "emo: " in err and str(root / "EMO") in err  # both, in one message
    assert not (tmp_path / "out" / "results.json").exists()  # nothing ran before the check

    assert main(argv + ["--skip-missing"]) == 0
    err = capsys.readouterr().err
    assert "skipping 2 of 3 datasets (--skip-missing)" in err
    payload = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [result["task"] for result in payload["results"]] == ["gtzan"]
    assert [note.split(":")[0] for note in payload["failures"]] == ["mtt", "emo"]

    (root / "GTZAN").unlink()
    assert main(argv + ["--skip-missing"]) == 2  # nothing left to run: the error, not an empty table
    assert "3 of 3 datasets cannot be read:" in capsys.readouterr().err

"""`musicssl demo --preset smoke`: every stage of the demo, through the real command, at a
size the suite can afford; and a second run resumes without redoing anything."""

from __future__ import annotations

import json

import pytest

from musicssl.cli import main
from musicssl.demo import DEMO_PRESETS, DEMO_TASKS
from musicssl.evaluate.sources import EncoderSource

ROWS = ["MusicHuBERT", "Music2Vec", "random-init HuBERT", "random-init data2vec", "MFCC stats"]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--preset", "smoke", "--out", str(out), "--quiet"]) == 0
    return out


def test_demo_writes_every_stage(demo_dir):
    data = demo_dir / "data"
    assert sorted(p.name for p in data.iterdir()) == ["EMO", "GS", "GTZAN", "MTT", "NSynth", "corpus", "synth.json"]
    assert (demo_dir / "manifest" / "train.tsv").exists() and (demo_dir / "labels" / "train.km").exists()
    assert json.loads((demo_dir / "labels_pitch" / "labels.json").read_text())["feature"]["kind"] == "pitch"
    hubert = json.loads((demo_dir / "musichubert" / "config.json").read_text())["model"]
    assert hubert["extra_codebooks"] == [DEMO_PRESETS["smoke"].k]  # MFCC and pitch codebooks, one k each
    steps = DEMO_PRESETS["smoke"].hubert_steps
    assert (demo_dir / "musichubert" / "checkpoints" / f"step_{steps:08d}" / "model.safetensors").exists()
    assert (demo_dir / "music2vec" / "checkpoints" / f"step_{steps:08d}" / "model.safetensors").exists()
    timings = json.loads((demo_dir / "timings.json").read_text())
    assert set(timings) == {"generate", "labels", "musichubert", "music2vec", "probe", "total"}
    verdict = json.loads((demo_dir / "verdict.json").read_text())
    assert [(v["model"], v["control"]) for v in verdict] == [("MusicHuBERT", "random-init HuBERT"),
                                                             ("Music2Vec", "random-init data2vec")]
    assert all(len(v["wins"]) + len(v["ties"]) + len(v["losses"]) == len(DEMO_TASKS) for v in verdict)
    assert "## Pre-training vs its own random init" in (demo_dir / "results.md").read_text()


def test_demo_table_has_every_model_and_task(demo_dir):
    payload = json.loads((demo_dir / "results.json").read_text())
    assert payload["failures"] == []
    found = {(r["model"], r["task"]) for r in payload["results"]}
    assert found == {(model, task) for model in ROWS for task in DEMO_TASKS}
    table = (demo_dir / "results.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| model |"))
    assert header.split(" | ")[1:] == ["MTT ROC", "MTT AP", "GS Score", "GTZAN Acc", "GTZANBT F1",
                                      "EMO R2A", "EMO R2V", "NSynthI Acc", "NSynthP Acc", "Avg |"]
    for model in ROWS:
        row = next(line for line in table.splitlines() if line.startswith(f"| {model} |"))
        assert len(row.split(" | ")) == len(header.split(" | "))
    assert len(list((demo_dir / "plots").glob("*.png"))) == len(DEMO_TASKS)


def test_demo_resumes_without_redoing_work(demo_dir, monkeypatch):
    def no_extraction(*args, **kwargs):
        raise AssertionError("features were extracted again")

    monkeypatch.setattr(EncoderSource, "frames", no_extraction)
    before = (demo_dir / "results.json").read_text()
    assert main(["demo", "--preset", "smoke", "--out", str(demo_dir), "--quiet"]) == 0
    after = json.loads((demo_dir / "results.json").read_text())
    assert after["results"] == json.loads(before)["results"]

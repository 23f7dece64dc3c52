"""Every registered task through the real `musicssl probe` command: a small fake dataset in
the shipped layout (written by the task module's `write_layout`, whose format the loader tests
check against hand-written files), a micro model, and the numbers in results.json."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest

from musicssl.cli import main
from musicssl.evaluate.tasks import TASK_NAMES, get_task
from musicssl.evaluate.tasks.base import LayoutExample
from musicssl.interop.huggingface import export_pretrained
from tests.conftest import micro_backbone, tone

SPLIT_CYCLE = ("train", "train", "train", "valid", "test")


def audio(seconds: float, index: int, label_index: int) -> np.ndarray:
    return tone(seconds, frequency=200.0 * (1 + label_index), seed=index)


def example(index: int, label, label_index: int, seconds: float, split: str | None = None, **extra) -> LayoutExample:
    return LayoutExample(name=f"ex{index}", audio=audio(seconds, index, label_index), sample_rate=16000,
                         split=split or SPLIT_CYCLE[index % 5], label=label, extra=extra)


def mtt_examples():
    tags = [("guitar",), ("piano",), ("guitar", "piano")]
    return [example(i, tags[i % 3], i % 3, 1.5) for i in range(20)]


def gs_examples():
    keys = ["C major", "A minor"]
    return [example(i, keys[i % 2], i % 2, 2.2) for i in range(20)]


def gtzan_examples():
    genres = ["blues", "rock"]
    return [example(i, genres[i % 2], i % 2, 2.0, beats=np.arange(0.25, 2.0, 0.5), downbeats=np.array([0.25]))
            for i in range(20)]


def emo_examples():
    return [example(i, {"arousal": float(i % 4), "valence": float(i % 3)}, i % 4, 6.5) for i in range(20)]


def nsynth_examples():
    families = ["bass", "flute"]
    return [example(i, families[i % 2], i % 2, 1.0, pitch=40 + i, velocity=100, instrument=i % 2)
            for i in range(20)]


def vocalset_examples():
    techniques = ["belt", "breathy"]
    singers = ["f1", "f2", "m1", "m3", "m2", "f8"]
    return [example(i, techniques[i % 2], i % 2, 3.5, singer=singers[i % 6]) for i in range(36)]


def mtg_examples():
    tags = [("genre---rock", "instrument---guitar", "mood/theme---happy"),
            ("genre---jazz", "instrument---piano", "mood/theme---sad")]
    return [example(i, tags[i % 2], i % 2, 1.5) for i in range(20)]


DATASETS = {"mtt": ("mtt", mtt_examples), "gs": ("giantsteps", gs_examples), "gtzan": ("gtzan", gtzan_examples),
            "gtzan_beats": ("gtzan", gtzan_examples), "emo": ("emomusic", emo_examples),
            "nsynth_instrument": ("nsynth", nsynth_examples), "nsynth_pitch": ("nsynth", nsynth_examples),
            "vocalset_technique": ("vocalset", vocalset_examples), "vocalset_singer": ("vocalset", vocalset_examples),
            "mtg_instrument": ("mtg_jamendo", mtg_examples), "mtg_moodtheme": ("mtg_jamendo", mtg_examples),
            "mtg_genre": ("mtg_jamendo", mtg_examples), "mtg_top50": ("mtg_jamendo", mtg_examples)}
OPTIONS = {"gs": ["--option", "segment_seconds=1"]}


def test_every_registered_task_has_a_cli_test():
    assert set(DATASETS) == set(TASK_NAMES)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return export_pretrained(micro_backbone("data2vec"), tmp_path_factory.mktemp("model") / "micro")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Each dataset written once per module, shared by the tasks that read it."""
    roots = {}
    for module_name, make in {entry[0]: entry[1] for entry in DATASETS.values()}.items():
        root = tmp_path_factory.mktemp(module_name)
        importlib.import_module(f"musicssl.evaluate.tasks.{module_name}").write_layout(root, make())
        roots[module_name] = root
    return roots


@pytest.mark.parametrize("task_name", TASK_NAMES)
def test_probe_cli_runs_every_task(task_name, tmp_path, model_dir, datasets):
    module_name, _ = DATASETS[task_name]
    out = tmp_path / "out"
    argv = ["probe", str(model_dir), "--task", task_name, "--data", str(datasets[module_name]), "-o", str(out),
            "--layers", "1,weighted", "--lrs", "1e-3", "--max-epochs", "2", "--beat-decoder", "dbn", "--quiet",
            *OPTIONS.get(task_name, [])]
    assert main(argv) == 0
    (result,) = json.loads((out / "results.json").read_text())["results"]
    protocol = get_task(task_name).protocol
    assert result["task"] == task_name and result["monitor"] == protocol.metrics[0]
    assert all(result["sizes"][split] > 0 for split in ("train", "valid", "test"))
    assert [run["layer"] for run in result["runs"]] == [1, "weighted"]
    for metric in protocol.metrics:
        value = result["test"][metric]
        assert np.isfinite(value)
        if protocol.kind != "regression":
            assert 0.0 <= value <= 1.0
    if protocol.song_ensemble:  # GiantSteps: every strategy scored, the chosen one reported
        assert {"key_score_vote", "key_score_max_logit", "key_score_mean_logit", "key_score_mean_softmax",
                "clip_key_score"} <= set(result["test"])
    assert f"| {protocol.title} " in (out / "results.md").read_text()

"""`musicssl benchmark` never merges two models into one row nor lets one task's tiny or damaged
dataset abort the others (issue 26, items 1 and 9): through the real CLI, on generated data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from musicssl.cli import main
from musicssl.evaluate.benchmark import row_names
from musicssl.evaluate.tasks import emomusic
from musicssl.evaluate.tasks.base import LayoutExample
from musicssl.interop.huggingface import export_pretrained
from tests.conftest import micro_backbone, tone
from tests.evaluate.test_benchmark_cli import FAST, write_gtzan


@pytest.fixture(scope="module")
def gtzan_root(tmp_path_factory):
    return write_gtzan(tmp_path_factory.mktemp("GTZAN"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return export_pretrained(micro_backbone("hubert"), tmp_path_factory.mktemp("model") / "micro")


def data_root(tmp_path: Path, gtzan: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    (root / "GTZAN").symlink_to(gtzan, target_is_directory=True)
    return root


def checkpoint(tmp_path: Path, run: str, seed: int) -> Path:
    return export_pretrained(micro_backbone("hubert", seed=seed), tmp_path / run / "checkpoints" / "step_00000008")


def table_rows(markdown: str) -> dict[str, list[str]]:
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| model |"))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def test_row_names_take_the_shortest_distinct_part_of_the_paths(tmp_path):
    a, b = checkpoint(tmp_path / "a", "run", 0), checkpoint(tmp_path / "b", "run", 1)
    assert row_names([str(a), str(b), "mfcc"]) == ["a/run@step_00000008", "b/run@step_00000008", "mfcc"]
    assert row_names([str(a)]) == ["run@step_00000008"]  # alone: the short name
    assert row_names([f"mine={a}", str(b)]) == ["mine", "run@step_00000008"]
    for twice in ([f"x={a}", f"x={b}"], [str(a), str(a)], [f"mfcc={a}", "mfcc"]):
        with pytest.raises(ValueError, match="name them NAME=PATH"):
            row_names(twice)


def test_two_checkpoints_of_runs_with_one_name_get_a_row_each(tmp_path, gtzan_root):
    a, b = checkpoint(tmp_path / "a", "run", 0), checkpoint(tmp_path / "b", "run", 1)
    out = tmp_path / "bench"
    assert main(["benchmark", str(a), str(b), "--tasks", "gtzan", "--data-root", str(data_root(tmp_path, gtzan_root)),
                 "-o", str(out), "--layers", "0", *FAST]) == 0
    payload = json.loads((out / "results.json").read_text())
    names = ["a/run@step_00000008", "b/run@step_00000008"]
    assert [result["model"] for result in payload["results"]] == names
    assert sorted(payload["models"]) == names
    assert payload["models"][names[0]]["fingerprint"] != payload["models"][names[1]]["fingerprint"]
    rows = table_rows((out / "results.md").read_text())
    for result in payload["results"]:  # each row shows its own model's score
        assert rows[result["model"]][0] == f"{100 * result['test']['accuracy']:.1f}"
    assert sorted(path.name for path in (out / "runs").iterdir()) == ["a_run_step_00000008", "b_run_step_00000008"]


def test_a_name_given_twice_is_refused_before_any_work(tmp_path, gtzan_root, capsys):
    a, b = checkpoint(tmp_path / "a", "run", 0), checkpoint(tmp_path / "b", "run", 1)
    root = data_root(tmp_path, gtzan_root)
    for models in ([f"mine={a}", f"mine={b}"], [str(a), str(a)]):
        assert main(["benchmark", *models, "--tasks", "gtzan", "--data-root", str(root), "-o",
                     str(tmp_path / "out"), *FAST]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "name them NAME=PATH" in err and "Traceback" not in err
        assert not (tmp_path / "out").exists()


def test_one_name_for_other_weights_never_shares_cached_features(tmp_path, gtzan_root, model_dir):
    other = export_pretrained(micro_backbone("hubert", seed=1), tmp_path / "other" / "micro")
    root, cache = data_root(tmp_path, gtzan_root), tmp_path / "cache"
    for weights in (model_dir, other):
        assert main(["benchmark", f"mine={weights}", "--tasks", "gtzan", "--data-root", str(root), "-o",
                     str(tmp_path / "bench"), "--cache", str(cache), "--layers", "0", *FAST]) == 0
    folders = sorted(cache.iterdir())
    assert len(folders) == 2 and all(folder.name.startswith("mine-") for folder in folders)
    rows = [np.fromfile(next(folder.glob("gtzan-*")) / "rows.f16", np.float16) for folder in folders]
    assert rows[0].shape == rows[1].shape and not np.array_equal(rows[0], rows[1])  # each model's own features


def write_emo(root: Path, splits: list[str]) -> Path:
    examples = [LayoutExample(name=f"song{i}", audio=tone(2.0, seed=i, frequency=200.0 + 50 * i), sample_rate=16000,
                              split=split, label={"arousal": float(i), "valence": float(-i)})
                for i, split in enumerate(splits)]
    emomusic.write_layout(root / "EMO", examples)
    return root / "EMO"


@pytest.mark.parametrize("damage", ["tiny", "unreadable"])
def test_a_task_that_cannot_be_scored_is_listed_and_the_others_run(tmp_path, gtzan_root, model_dir, damage,
                                                                   capsys):
    root = data_root(tmp_path, gtzan_root)
    if damage == "tiny":  # one test song: R2 is undefined
        write_emo(root, ["train"] * 4 + ["valid"] * 2 + ["test"])
        reason = "test split has 1 usable item(s) (R2 needs at least 2)"
    else:  # two test songs, one of them not audio
        emo = write_emo(root, ["train"] * 4 + ["valid"] * 2 + ["test"] * 2)
        (emo / emomusic.AUDIO_DIR / "8.mp3").write_text("not audio")
        reason = "test split has 1 usable item(s) (R2 needs at least 2), 1 of 2 unreadable; unreadable: "
    out = tmp_path / "bench"
    # emo comes first in the paper's order: gtzan must still be probed after it failed
    assert main(["benchmark", str(model_dir), "--tasks", "emo,gtzan", "--data-root", str(root), "-o", str(out),
                 "--layers", "0", *FAST]) == 1
    failed = [line for line in capsys.readouterr().err.splitlines() if line.startswith("musicssl benchmark: failed")]
    assert len(failed) == 1 and f"micro / emo: skipped: {reason}" in failed[0]
    if damage == "unreadable":
        assert "8.mp3" in failed[0]
    payload = json.loads((out / "results.json").read_text())
    assert [result["task"] for result in payload["results"]] == ["gtzan"]
    assert len(payload["failures"]) == 1 and reason in payload["failures"][0]
    markdown = (out / "results.md").read_text()
    assert "## Not probed" in markdown and f"- micro / emo: skipped: {reason}" in markdown
    assert table_rows(markdown)["micro"][0] == f"{100 * payload['results'][0]['test']['accuracy']:.1f}"


@pytest.mark.parametrize("argument", [["--seeds", "0"], ["--batch-size", "0"], ["--max-epochs", "-1"],
                                      ["--lrs", "1e-3,-1"], ["--lrs", ","], ["--num-shards", "0"], ["--shard", "-1"]])
def test_probe_and_benchmark_refuse_out_of_range_numbers_at_parse_time(tmp_path, argument, capsys):
    for command in (["probe", "mfcc", "--task", "gtzan", "--data", str(tmp_path)],
                    ["benchmark", "mfcc", "--data-root", str(tmp_path)]):
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "-o", str(tmp_path / "out"), *argument])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert f"argument {argument[0]}: expected " in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_benchmark_refuses_a_file_as_its_output_folder(tmp_path, gtzan_root, capsys):
    out = tmp_path / "results"
    out.write_text("a file")
    assert main(["benchmark", "mfcc", "--tasks", "gtzan", "--data-root", str(data_root(tmp_path, gtzan_root)),
                 "-o", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "results: is a file; the output is a folder" in err
    assert out.read_text() == "a file"

"""benchmarks/device_check.py's report: the table and JSON written from (fake) check results, and
the loader's ratio derived from the pre-training step it must feed. The checks themselves need
minutes (and a GPU): the script runs them, these tests only its bookkeeping."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "device_check.py"


@pytest.fixture(scope="module")
def device_check():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["device_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules["device_check"]


def result(name, status="ok", **fields):
    return {"name": name, "what": f"{name} path", "seconds": 12.4, "budget_s": 60.0, "figure": "",
            "ratio": "", "figures": {}, "status": status, **fields}


MACHINE = {"device": "cuda", "gpu": "NVIDIA H100 80GB HBM3", "cuda": "12.8", "torch": "2.13.0",
           "transformers": "4.99", "python": "3.11.9", "cpu": "AMD EPYC", "cpu_count": 16, "threads": 16}


def test_table_and_json_hold_every_check_and_name_the_failures(device_check, tmp_path):
    results = [result("backbone", figure="train fp32 0.051 s MFU 41%", ratio="1.20x fp32 | bf16"),
               result("tests", "failed", error="RuntimeError: 1 failed, 0 errors of 2 CUDA tests"),
               result("probe_grid", "timed out", error="no result within its budget of 60 s", seconds=60.0)]
    table = device_check.write_outputs(tmp_path, results, MACHINE, "2026-12-07T06:00:00", quick=False)
    lines = (tmp_path / "device_check.md").read_text().splitlines()
    assert (tmp_path / "device_check.md").read_text() == table
    assert lines[0] == ("Device check, 2026-12-07T06:00:00: NVIDIA H100 80GB HBM3 (torch 2.13.0, CUDA 12.8, "
                        "16 threads)")
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| check")]
    assert len(rows) == 3
    # a "|" inside a figure is escaped, so every row keeps its 6 cells
    assert rows[0] == "| backbone | backbone path | train fp32 0.051 s MFU 41% | 1.20x fp32 \\| bf16 | 12 | ok |"
    assert rows[1].endswith("| 12 | failed: RuntimeError: 1 failed, 0 errors of 2 CUDA tests |")
    assert rows[2].endswith("| 60 | timed out: no result within its budget of 60 s |")
    saved = json.loads((tmp_path / "device_check.json").read_text())
    assert saved["machine"]["gpu"] == "NVIDIA H100 80GB HBM3" and saved["date"] == "2026-12-07T06:00:00"
    assert saved["all_ok"] is False and [c["status"] for c in saved["checks"]] == ["ok", "failed", "timed out"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["device_check.json", "device_check.md"]  # no partials


def test_run_is_ok_only_when_every_check_is(device_check):
    assert device_check.all_ok([result("a"), result("b")])
    assert not device_check.all_ok([result("a"), result("b", "not run")])
    assert not device_check.all_ok([])


def test_loader_ratio_is_feed_rate_over_the_bf16_step_consumption(device_check):
    # a bf16 step of 2 x 5 s of audio in 0.125 s consumes 80 audio-s/s; 2000 fed -> 25x
    step = result("musichubert", figures={"consumed_audio_s_per_s": {"fp32": 40.0, "bf16": 80.0}})
    loader = result("loader", figures={"prepared": 2000.0})
    device_check.link_loader_to_step([step, loader])
    assert loader["figures"]["feed_over_consumption"] == pytest.approx(25.0, rel=1e-12)
    assert loader["ratio"] == "25.0x a MusicHuBERT bf16 step's 80 audio-s/s"
    failed = result("loader", figures={"prepared": 2000.0})
    device_check.link_loader_to_step([result("musichubert", "failed", error="x"), failed])
    assert failed["ratio"] == "" and "feed_over_consumption" not in failed["figures"]


def test_a_check_that_raises_is_recorded_with_its_one_line_error(device_check, tmp_path, monkeypatch):
    def broken(sizes):
        raise ValueError("CUDA error: an illegal memory access\nsecond line")

    monkeypatch.setattr(device_check, "CHECKS", (device_check.Check("broken", "raises", 1, broken),))
    device_check.run_child("broken", device_check.Sizes("cpu", True), tmp_path / "r.json")
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved == {"status": "failed", "error": "ValueError: CUDA error: an illegal memory access"}

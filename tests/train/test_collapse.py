"""The collapse alarm: its statistics, its warning, and that it never changes a training run."""

from __future__ import annotations

import numpy as np
import torch

from musicssl.train.collapse import BATCH_FILE, CollapseConfig, CollapseMonitor, layer_statistics
from tests.train.test_pretrain_musichubert import MICRO, final_state, log, pretrain, prepared  # noqa: F401


def test_statistics_read_one_direction_as_rank_one_and_isotropic_frames_as_high_rank():
    rng = np.random.default_rng(0)
    direction = rng.standard_normal(64)
    collapsed = torch.from_numpy(rng.standard_normal((400, 1)) * direction + 1e-6 * rng.standard_normal((400, 64)))
    stats = layer_statistics(collapsed)
    assert stats["collapse/top_share"] > 0.999
    assert stats["collapse/effective_rank"] < 1.1
    isotropic = layer_statistics(torch.from_numpy(rng.standard_normal((4000, 64))))
    # 64 equal directions up to sampling noise (singular values within ~15 % of each other)
    assert 55 < isotropic["collapse/effective_rank"] <= 64
    assert isotropic["collapse/top_share"] < 2.0 / 64


def test_warning_after_patience_checks_below_the_floor_then_a_recovery_line(tmp_path, capsys):
    monitor = CollapseMonitor(CollapseConfig(every=1, floor_fraction=0.2, patience=2), tmp_path, enabled=True)
    for rank in (50.0, 9.0, 30.0, 9.0, 9.0, 9.0, 40.0):  # reference 50: floor 10
        monitor._alarm(rank, 2)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("warning: layer 2 looks collapsed: effective rank 9.0")
    assert lines[1] == "layer 2 recovered: effective rank 40.0"


def test_monitored_run_logs_rank_and_trains_exactly_as_an_unmonitored_one(prepared, tmp_path):  # noqa: F811
    # dropout and LayerDrop on: the monitor's forward (eval mode) must not draw from their generator
    common = [*MICRO, "data.batch_seconds=8", "data.micro_batch_seconds=4", "trainer.max_steps=4",
              "trainer.log_every=1"]
    pretrain(prepared, tmp_path / "on", *common, "trainer.collapse.every=2")
    pretrain(prepared, tmp_path / "off", *common, "trainer.collapse.every=0")
    on, off = final_state(tmp_path / "on"), final_state(tmp_path / "off")
    assert on.keys() == off.keys() and all(torch.equal(on[k], off[k]) for k in on)
    lines = log(tmp_path / "on")
    assert [r["step"] for r in lines] == [1, 2, 3, 4] and all("loss" in r for r in lines)  # no line of its own
    records = [r for r in lines if "collapse/effective_rank" in r]
    assert [r["step"] for r in records] == [2, 4]
    assert [r["step"] for r in lines if "collapse/init_effective_rank" in r] == [1]  # the random init, once
    assert 1.0 <= lines[0]["collapse/init_effective_rank"] <= 64
    assert all(1.0 <= r["collapse/effective_rank"] <= 64 and 0 < r["collapse/top_share"] <= 1 for r in records)
    assert (tmp_path / "on" / BATCH_FILE).exists() and not (tmp_path / "off" / BATCH_FILE).exists()
    assert not any("collapse/effective_rank" in r for r in log(tmp_path / "off"))

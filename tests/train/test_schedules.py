"""Learning-rate schedules: fairseq polynomial_decay and tri_stage, and their LambdaLR."""

from __future__ import annotations

import io
import math

import pytest
import torch

from musicssl.train.schedules import (
    ScheduleConfig,
    learning_rate,
    make_scheduler,
    polynomial_decay,
    tri_stage,
    tri_stage_steps,
)

PEAK = 5e-4
HUBERT = ScheduleConfig()  # polynomial, 32k warm-up, 400k updates
TRI = ScheduleConfig(kind="tri_stage")  # 12k / 360k / 28k


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 0.0),  # fairseq's first update runs at lr 0
        (1, PEAK / 32_000),
        (16_000, 2.5e-4),  # mid warm-up
        (32_000, PEAK),  # end of warm-up (inclusive)
        (216_000, 2.5e-4),  # half of the 368k decay updates
        (308_000, 1.25e-4),  # three quarters
        (399_999, PEAK / 368_000),
        (400_000, 0.0),  # end
        (1_000_000, 0.0),  # beyond the end
    ],
)
def test_polynomial_hubert_values(step: int, expected: float) -> None:
    assert learning_rate(HUBERT, step) == pytest.approx(expected, rel=1e-12, abs=1e-18)


def test_polynomial_power_and_end_lr() -> None:
    lr = polynomial_decay(216_000, PEAK, 32_000, 400_000, end_lr=1e-5, power=2.0)
    assert lr == pytest.approx((PEAK - 1e-5) * 0.5**2 + 1e-5, rel=1e-12)  # 1.325e-4
    assert polynomial_decay(400_000, PEAK, 32_000, 400_000, end_lr=1e-5) == 1e-5
    assert polynomial_decay(10, PEAK, 0, 100) == pytest.approx(PEAK * 0.9)  # no warm-up
    assert polynomial_decay(0, PEAK, 0, 100) == PEAK


def test_tri_stage_boundaries_for_400k() -> None:
    assert tri_stage_steps(400_000, (0.03, 0.90, 0.07)) == (12_000, 360_000, 28_000)
    # fairseq truncates: int(100 * 0.29) == 28.
    assert tri_stage_steps(100, (0.29, 0.01, 0.70)) == (28, 1, 70)
    with pytest.raises(ValueError):
        tri_stage_steps(100, (0.1, 0.1, 0.1))


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 5e-6),  # init = 0.01 * peak
        (6_000, 5e-6 + 4.95e-4 / 2),  # mid warm-up
        (11_999, 5e-6 + 4.95e-4 * 11_999 / 12_000),
        (12_000, PEAK),  # hold starts
        (200_000, PEAK),
        (372_000, PEAK),  # decay starts at exp(0)
        (386_000, PEAK * 0.1),  # half the decay: sqrt(0.01)
        (400_000, 5e-6),  # end of decay (inclusive): final = 0.01 * peak
        (400_001, 5e-6),
        (1_000_000, 5e-6),
    ],
)
def test_tri_stage_values(step: int, expected: float) -> None:
    assert learning_rate(TRI, step) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("config", [HUBERT, TRI, ScheduleConfig(power=2.0, end_lr=1e-5)])
def test_monotonic_pieces_and_continuity(config: ScheduleConfig) -> None:
    if config.kind == "polynomial":
        pieces = [(0, config.warmup_steps), (config.warmup_steps, config.total_steps + 10)]
        directions = [1, -1]
    else:
        w, h, d = tri_stage_steps(config.total_steps, config.phase_ratio)
        pieces = [(0, w), (w, w + h), (w + h, w + h + d + 10)]
        directions = [1, 0, -1]
    for (start, end), direction in zip(pieces, directions):
        steps = sorted(set(range(start, end + 1, 997)) | {start, start + 1, end - 1, end})
        lrs = [learning_rate(config, s) for s in steps]
        diffs = [b - a for a, b in zip(lrs, lrs[1:])]
        if direction > 0:
            assert all(x > 0 for x in diffs)
        elif direction < 0:
            assert all(x <= 0 for x in diffs)
        else:
            assert all(x == 0 for x in diffs)
    # Continuity: one update never moves the lr by more than the steepest slope allows
    # (warm-up peak/32k, tri-stage decay peak * ln(100)/28k ~ 1.6e-4 * peak).
    ends = {config.total_steps, config.total_steps + 1}
    for boundary in {end for _, end in pieces} | {start for start, _ in pieces if start} | ends:
        jump = abs(learning_rate(config, boundary) - learning_rate(config, boundary - 1))
        assert jump <= 2e-4 * config.peak_lr, boundary


def _optimizer(peak: float) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=peak)


@pytest.mark.parametrize(
    "config",
    [
        ScheduleConfig(warmup_steps=10, total_steps=100),
        ScheduleConfig(kind="tri_stage", total_steps=100),  # 3 / 90 / 7
        ScheduleConfig(kind="tri_stage", peak_lr=1e-3, total_steps=200, phase_ratio=(0.1, 0.4, 0.5)),
    ],
)
def test_lambda_lr_drives_optimizer(config: ScheduleConfig) -> None:
    optimizer = _optimizer(config.peak_lr)
    scheduler = make_scheduler(optimizer, config)
    for step in range(config.total_steps + 5):
        expected = learning_rate(config, step)
        # update `step` (0-based) runs with lr(step), as in fairseq's trainer
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12, abs=1e-20)
        assert scheduler.get_last_lr()[0] == optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()


def test_make_scheduler_requires_peak_lr() -> None:
    with pytest.raises(ValueError):
        make_scheduler(_optimizer(1e-3), HUBERT)


@pytest.mark.parametrize(
    "config",
    [ScheduleConfig(warmup_steps=10, total_steps=100), ScheduleConfig(kind="tri_stage", total_steps=100)],
)
def test_state_dict_round_trip_resumes_identically(config: ScheduleConfig) -> None:
    optimizer = _optimizer(config.peak_lr)
    scheduler = make_scheduler(optimizer, config)
    for _ in range(37):
        optimizer.step()
        scheduler.step()

    # Only plain data in the state: loads with weights_only (torch.load's default).
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert state["scheduler"]["lr_lambdas"] == [None]

    resumed_optimizer = _optimizer(config.peak_lr)
    resumed = make_scheduler(resumed_optimizer, config)
    resumed_optimizer.load_state_dict(state["optimizer"])
    resumed.load_state_dict(state["scheduler"])
    assert resumed.last_epoch == 37
    scheduler.load_state_dict(scheduler.state_dict())  # in-place round trip is harmless

    for _ in range(80):
        assert resumed_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
        assert resumed.get_last_lr() == scheduler.get_last_lr()
        for opt, sched in ((optimizer, scheduler), (resumed_optimizer, resumed)):
            opt.step()
            sched.step()
    assert resumed.last_epoch == 117
    final = resumed_optimizer.param_groups[0]["lr"]
    assert math.isclose(final, learning_rate(config, 117), rel_tol=1e-12, abs_tol=1e-20)


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        ScheduleConfig(kind="cosine")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ScheduleConfig(peak_lr=0.0)
    with pytest.raises(ValueError):
        ScheduleConfig(warmup_steps=500, total_steps=100)
    with pytest.raises(ValueError):
        ScheduleConfig(kind="tri_stage", phase_ratio=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError):
        polynomial_decay(-1, PEAK, 10, 100)
    assert tri_stage(0, PEAK, 100, init_lr_scale=0.0) == 0.0


def test_cnn_lr_scale_gives_the_cnn_its_own_group_on_the_same_schedule():
    from musicssl.models.musichubert import MusicHubertConfig
    from musicssl.train.tasks import MusicHubertTask
    from musicssl.train.trainer import TrainerConfig, _parameter_groups
    from tests.conftest import micro_config

    task = MusicHubertTask(MusicHubertConfig(backbone=micro_config("hubert"), num_classes=5), 16_000, 0)
    schedule = ScheduleConfig(peak_lr=1e-3, warmup_steps=10, total_steps=100)
    assert len(_parameter_groups(task, TrainerConfig(schedule=schedule))) == 1
    groups = _parameter_groups(task, TrainerConfig(schedule=schedule, cnn_lr_scale=0.1))
    cnn = {id(p) for p in task.model.backbone.feature_extractor.parameters()}
    assert {id(p) for p in groups[1]["params"]} == cnn
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(task.model.parameters()))
    optimizer = torch.optim.AdamW(groups, lr=schedule.peak_lr)
    scheduler = make_scheduler(optimizer, schedule)
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    main, scaled = (group["lr"] for group in optimizer.param_groups)
    assert main == pytest.approx(learning_rate(schedule, 10)) and scaled == pytest.approx(0.1 * main)
    with pytest.raises(ValueError, match="cnn_lr_scale must be > 0"):
        _parameter_groups(task, TrainerConfig(schedule=schedule, cnn_lr_scale=0.0))
    frozen = MusicHubertTask(MusicHubertConfig(backbone=micro_config("hubert", feature_grad_mult=0.0),
                                               num_classes=5), 16_000, 0)
    assert len(_parameter_groups(frozen, TrainerConfig(schedule=schedule, cnn_lr_scale=0.1))) == 1

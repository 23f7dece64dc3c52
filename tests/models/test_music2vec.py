"""Music2Vec teacher targets, EMA and loss against direct computations (docs/method.md §4)."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from musicssl.config import apply_overrides
from musicssl.data.pretrain import DataConfig
from musicssl.models.music2vec import (MUSIC2VEC_VARIANTS, Music2Vec, Music2VecConfig, RepresentationCollapse,
                                       ema_decay_at, music2vec_config)
from musicssl.train.trainer import TrainerConfig
from tests.numerics import float64_calibrated, gamma
from tests.conftest import micro_config, perturb_

DIM = 32  # micro_config's model dim
SAMPLES, FRAMES = 8000, 24  # 0.5 s at 16 kHz -> 24 frames


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Micro models gain nothing from intra-op threads, and lose seconds to them on a busy CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def micro_model(num_layers: int = 4, top_k: int = 3, seed: int = 0, perturb: bool = True, **changes) -> Music2Vec:
    torch.manual_seed(seed)
    backbone = dataclasses.replace(micro_config("data2vec", dropout=0.0, attention_dropout=0.0, layerdrop=0.0),
                                   num_layers=num_layers)
    model = Music2Vec(Music2VecConfig(backbone=backbone, average_top_k_layers=top_k, **changes))
    if perturb:
        perturb_(model, seed=seed)  # student and teacher get different noise: they differ
    return model


def padded_batch(short: int = 5000) -> tuple[torch.Tensor, torch.Tensor]:
    wav = torch.randn(2, SAMPLES, generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([SAMPLES, short])
    wav[1, short:] = 0.0
    return wav, lengths


def reference_targets(model: Music2Vec, features: torch.Tensor, valid_frames: list[int], top_k: int) -> torch.Tensor:
    """Capture each block's FFN output with hooks, instance-normalise each item's valid frames
    with explicit statistics, average the top K layers; padded frames stay zero."""
    encoder = model.teacher.encoder
    captured: list[torch.Tensor] = []
    hooks = [layer.feed_forward.register_forward_hook(lambda m, i, o: captured.append(o.detach()))
             for layer in encoder.layers]
    padding = torch.arange(features.shape[1])[None] >= torch.tensor(valid_frames)[:, None]
    with torch.no_grad():
        encoder(features, padding if padding.any() else None)
    for hook in hooks:
        hook.remove()
    expected = torch.zeros_like(features)
    for layer_output in captured[len(captured) - top_k:]:
        for b, n in enumerate(valid_frames):
            a = layer_output[b, :n]  # (n, D)
            mean, var = a.mean(0), a.var(0, unbiased=False)
            expected[b, :n] += (a - mean) / torch.sqrt(var + 1e-5) / top_k
    return expected


def assert_rounding_close(ours, reference, truth) -> None:
    """Our float32 result vs the reference formula in float32, within the rounding that the
    reference itself shows against its float64 run (tests/numerics.py)."""
    error, tolerance = float64_calibrated(ours, reference, truth)
    assert error <= tolerance, (error, tolerance)


def exact_twin(model: Music2Vec) -> Music2Vec:
    return copy.deepcopy(model).double()


# --- targets -------------------------------------------------------------------------------


@pytest.mark.parametrize("top_k", [3, 4])  # 8-of-12-like and all layers
@pytest.mark.parametrize("short", [5000, SAMPLES])  # padded batch and unpadded batch
def test_targets_equal_a_direct_per_layer_instance_norm_average(top_k, short):
    model = micro_model(top_k=top_k).eval()
    wav, lengths = padded_batch(short)
    out = model.backbone(wav, lengths)
    valid = out.lengths.tolist()
    assert valid[0] == FRAMES and (short == SAMPLES or valid[1] < FRAMES)
    targets = model.teacher.targets(out.features, out.padding_mask, top_k)
    assert targets.dtype == torch.float32 and targets.shape == (2, FRAMES, DIM)
    truth = reference_targets(exact_twin(model), out.features.double(), valid, top_k)
    assert_rounding_close(targets, reference_targets(model, out.features, valid, top_k), truth)


def test_padding_does_not_change_the_targets_of_valid_frames():
    model = micro_model().eval()
    wav, lengths = padded_batch()
    out = model.backbone(wav, lengths)
    n = int(out.lengths[1])
    batched = model.teacher.targets(out.features, out.padding_mask, 3)
    alone = model.teacher.targets(out.features[1:2, :n], None, 3)
    truth = exact_twin(model).teacher.targets(out.features[1:2, :n].double(), None, 3)
    assert_rounding_close(batched[1, :n], alone[0], truth[0])
    assert torch.all(batched[1, n:] == 0)


def test_final_layer_norm_then_instance_norm_of_the_average():
    model = micro_model().eval()
    wav, lengths = padded_batch()
    out = model.backbone(wav, lengths)
    valid = out.lengths.tolist()
    targets = model.teacher.targets(out.features, out.padding_mask, 3, layer_norm_targets=True,
                                    instance_norm_targets=True)
    average = reference_targets(model, out.features, valid, 3)
    exact_average = reference_targets(exact_twin(model), out.features.double(), valid, 3)

    def normed(y):
        y = (y - y.mean(-1, keepdim=True)) / torch.sqrt(y.var(-1, unbiased=False, keepdim=True) + 1e-5)
        return (y - y.mean(0)) / torch.sqrt(y.var(0, unbiased=False) + 1e-5)

    for b, n in enumerate(valid):
        assert_rounding_close(targets[b, :n], normed(average[b, :n]), normed(exact_average[b, :n]))


# --- EMA teacher ---------------------------------------------------------------------------


def test_ema_decay_anneals_linearly_to_the_end_value():
    values = [ema_decay_at(step, 0.999, 0.9999, 30_000) for step in (0, 15_000, 30_000, 40_000)]
    assert values == pytest.approx([0.999, 0.99945, 0.9999, 0.9999], abs=1e-12)


def test_teacher_starts_as_an_fp32_copy_of_the_student_in_other_tensors():
    model = micro_model(perturb=False)
    student = dict(model.backbone.encoder.named_parameters())
    teacher = dict(model.teacher.encoder.named_parameters())
    assert student.keys() == teacher.keys()
    for name, parameter in teacher.items():
        assert torch.equal(parameter, student[name]) and parameter.dtype == torch.float32
        assert parameter.data_ptr() != student[name].data_ptr()


def test_teacher_gets_no_gradient_and_stays_in_eval_mode():
    model = micro_model().train()
    assert not model.teacher.training and not model.teacher.encoder.layers[0].training
    assert all(not p.requires_grad for p in model.teacher.parameters())
    wav, lengths = padded_batch()
    model(wav, lengths, generator=0)["loss"].backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert model.final_proj.weight.grad is not None
    assert model.backbone.encoder.layers[-1].feed_forward.fc2.weight.grad is not None


@pytest.mark.parametrize("step", [0, 15_000])
def test_one_ema_update_averages_blocks_and_copies_the_pos_conv_exactly(step):
    model = micro_model()
    student = {name: p.detach().float() for name, p in model.backbone.encoder.named_parameters()}
    old = {name: p.detach().clone() for name, p in model.teacher.encoder.named_parameters()}
    decay = model.ema_step(step)
    assert decay == ema_decay_at(step, 0.999, 0.9999, 30_000)
    names = {"copied": 0, "averaged": 0}
    for name, parameter in model.teacher.encoder.named_parameters():
        if name.startswith("pos_conv."):
            names["copied"] += 1
            assert torch.equal(parameter, student[name]), name
            assert parameter.data_ptr() != student[name].data_ptr()
        else:
            names["averaged"] += 1
            assert torch.equal(parameter, decay * old[name] + (1 - decay) * student[name]), name
            assert not torch.equal(parameter, old[name]) and not torch.equal(parameter, student[name])
    # 3 pos convs x (weight, bias); encoder LayerNorm (2) + 4 blocks x (4 linears + 2 LayerNorms) x 2
    assert names == {"copied": 6, "averaged": 2 + 4 * 16}


# --- loss ----------------------------------------------------------------------------------


def masked_frames_case(**changes):
    """A padded batch whose mask also covers padded frames of item 1 (they must not count)."""
    model = micro_model(**changes).eval()
    wav, lengths = padded_batch()
    n = int(model.backbone.frame_lengths(lengths)[1])
    mask = torch.zeros(2, FRAMES, dtype=torch.bool)
    mask[0, 2:12] = True
    mask[1, 0:4] = True
    mask[1, n - 3:n + 3] = True  # 3 valid + 3 padded frames
    result = model(wav, lengths, mask=mask)
    hidden = model.backbone(wav, lengths, mask=mask).last_hidden_state
    clean = model.backbone(wav, lengths)  # the teacher sees the unmasked features
    targets = model.teacher.targets(clean.features, clean.padding_mask, 3)
    predictions, chosen = [], []
    for b, valid in enumerate([FRAMES, n]):
        for t in range(valid):
            if mask[b, t]:
                predictions.append(model.final_proj(hidden[b, t]))
                chosen.append(targets[b, t])
    return model, result, torch.stack(predictions).detach(), torch.stack(chosen)


def test_l2_loss_equals_a_direct_per_frame_sum_over_masked_valid_frames():
    _, result, predictions, targets = masked_frames_case()
    assert predictions.shape[0] == 10 + 4 + 3 and float(result["sample_size"]) == 17
    # float64 on the same float32 inputs is exact to ~1e-15; the loss is a sum of 17 * DIM
    # nonnegative squares (+ a subtraction, a square, a division each): gamma(n + 3) of itself.
    direct = sum(((p - y) ** 2).sum() for p, y in zip(predictions.double(), targets.double())) / math.sqrt(DIM)
    assert abs(result["loss"].item() - float(direct)) <= gamma(17 * DIM + 3) * float(direct)
    std = lambda x: torch.sqrt(x.var(0, unbiased=True) + 1e-6).mean() * 17
    assert_rounding_close(result["target_std_sum"], std(targets), std(targets.double()))
    assert_rounding_close(result["prediction_std_sum"], std(predictions), std(predictions.double()))


def test_smooth_l1_loss_with_beta_and_an_explicit_scale():
    _, result, predictions, targets = masked_frames_case(loss_beta=0.25)
    # nonnegative terms summed in float64 on the float32 inputs: ours is within gamma(n + 3) of it
    expected = F.smooth_l1_loss(predictions.double(), targets.double(), beta=0.25, reduction="sum") / math.sqrt(DIM)
    assert abs(result["loss"].item() - float(expected)) <= gamma(predictions.numel() + 3) * float(expected)
    _, result, predictions, targets = masked_frames_case(loss_scale=2.0)
    expected = 2.0 * ((predictions.double() - targets.double()) ** 2).sum()
    assert abs(result["loss"].item() - float(expected)) <= gamma(predictions.numel() + 3) * float(expected)


def test_span_masking_is_seeded_and_data2vec_sized():
    model = micro_model().eval()
    wav = torch.randn(4, 16000 * 5, generator=torch.Generator().manual_seed(2))
    first, again = model(wav, None, generator=3), model(wav, None, generator=3)
    assert torch.equal(first["loss"], again["loss"])
    # 0.65 / 10 / min 1 on 249 frames masks about 40 % after equalisation (docs/method.md §4.6).
    assert 0.25 < float(first["sample_size"]) / (4 * 249) < 0.55


# --- guards, checkpoints, presets ----------------------------------------------------------


def test_collapse_guard_raises_only_after_the_warm_up():
    model = micro_model(perturb=False)
    model.check_collapse(5000, 0.0, 0.0)  # fairseq checks once num_updates > 5000
    model.check_collapse(5001, 0.2, 0.02)
    with pytest.raises(RepresentationCollapse, match=r"target std 0\.05 .*min_target_std 0\.1"):
        model.check_collapse(5001, 0.05, 1.0)
    with pytest.raises(RepresentationCollapse, match=r"prediction std 0\.001 .*min_prediction_std 0\.01"):
        model.check_collapse(5001, 1.0, 0.001)
    assert issubclass(RepresentationCollapse, ValueError)


def test_head_state_dict_round_trip_restores_the_teacher_exactly():
    source = micro_model(seed=0)
    source.ema_step(10)
    heads = {name: tensor.clone() for name, tensor in source.head_state_dict().items()}
    teacher_keys = {f"teacher.encoder.{name}" for name in source.teacher.encoder.state_dict()}
    assert set(heads) == {"final_proj.weight", "final_proj.bias"} | teacher_keys
    target = micro_model(seed=1)
    assert not torch.equal(target.final_proj.weight, source.final_proj.weight)
    missing, unexpected = target.load_state_dict(heads, strict=False)
    assert not unexpected and all(name.startswith("backbone.") for name in missing)
    for name, tensor in source.head_state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor), name


def test_presets_and_named_variants_apply_to_a_run_config():
    assert music2vec_config("base").average_top_k_layers == 8
    tiny = music2vec_config("tiny")
    assert tiny.backbone.variant == "data2vec" and tiny.average_top_k_layers == 3
    assert (tiny.mask.mask_prob, tiny.mask.mask_length, tiny.mask.min_masks) == (0.65, 10, 1)

    @dataclasses.dataclass(frozen=True)
    class Run:
        model: Music2VecConfig = dataclasses.field(default_factory=Music2VecConfig)
        data: DataConfig = dataclasses.field(default_factory=DataConfig)
        trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)

    for name, overrides in MUSIC2VEC_VARIANTS.items():
        run = apply_overrides(Run(), [f"{key}={value}" for key, value in overrides.items()])
        for key, value in overrides.items():
            current = run
            for part in key.split("."):
                current = getattr(current, part)
            assert current == value and type(current) is type(value), (name, key)


def test_zero_initialised_head_predicts_the_target_mean_then_learns_from_the_first_update():
    model = micro_model(perturb=False, zero_init_final_proj=True)
    assert not model.final_proj.weight.any() and not model.final_proj.bias.any()
    wav = torch.randn(2, 4000, generator=torch.Generator().manual_seed(0))
    out = model(wav, mask=torch.ones(2, 12, dtype=torch.bool))
    # every prediction is 0, the mean of instance-normed targets: the loss is their sum of squares
    targets = model.teacher.targets(model.backbone(wav).features, None, 3)
    assert math.isclose(out["loss"].item(), targets.square().sum().item() / math.sqrt(targets.shape[-1]),
                        rel_tol=1e-5)
    assert out["prediction_std_sum"].item() == pytest.approx(math.sqrt(1e-6) * out["sample_size"].item())
    out["loss"].backward()
    # the head's weight gradient is the target/hidden cross-covariance: non-zero at once
    assert model.final_proj.weight.grad.abs().sum() > 0
    assert micro_model(perturb=False).final_proj.weight.any()  # fairseq's default init otherwise

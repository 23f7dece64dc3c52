"""GPU switches checked on CPU: each computes what the plain path computes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from musicssl.models.backbone import TransformerEncoder
from musicssl.models.music2vec import Music2Vec, Music2VecConfig
from musicssl.train.tasks import Music2VecTask, music2vec_run
from musicssl.train.trainer import make_optimizer
from tests.conftest import micro_config, perturb_
from tests.train.test_pretrain_musichubert import (DETERMINISTIC, MICRO, assert_same_parameters, final_state,
                                                   pretrain, prepared)  # noqa: F401 (the fixture)

EPS32 = float(np.finfo(np.float32).eps)


def ema_loop(teacher: torch.nn.Module, student: torch.nn.Module, decay: float, copied) -> None:
    """The per-tensor EMA the foreach version replaced."""
    students = dict(student.named_parameters())
    with torch.no_grad():
        for name, parameter in teacher.named_parameters():
            source = students[name].detach().float()
            if copied(name):
                parameter.copy_(source)
            else:
                parameter.mul_(decay).add_(source * (1.0 - decay))


def test_foreach_ema_update_is_bit_identical_to_the_per_tensor_loop():
    backbone = micro_config("data2vec", dropout=0.0, attention_dropout=0.0, layerdrop=0.0)
    model = Music2Vec(Music2VecConfig(backbone=backbone, average_top_k_layers=2))
    perturb_(model.teacher.encoder, seed=1)
    reference = {name: p.detach().clone() for name, p in model.teacher.encoder.named_parameters()}
    shadow = torch.nn.Module()
    shadow.encoder = TransformerEncoder(backbone)
    shadow.encoder.load_state_dict({**model.teacher.encoder.state_dict(), **reference})
    generator = torch.Generator().manual_seed(0)
    for step, decay in enumerate([0.999, 0.9999, 0.5, 1 / 3, 0.99990001, 0.0]):
        with torch.no_grad():  # the student moves between updates, as training moves it
            for p in model.backbone.encoder.parameters():
                p.add_(torch.randn(p.shape, generator=generator) * 0.01)
        model.teacher.update(model.backbone.encoder, decay)
        ema_loop(shadow.encoder, model.backbone.encoder, decay, model.teacher._is_copied)
        for name, parameter in model.teacher.encoder.named_parameters():
            assert torch.equal(parameter, dict(shadow.encoder.named_parameters())[name]), (step, name)


def test_fused_adamw_is_chosen_on_cuda_and_differs_from_foreach_by_rounding_only():
    run, _ = music2vec_run("tiny")
    task = Music2VecTask(run.model, 16_000, 0)
    trainer = dataclasses.replace(run.trainer, weight_decay=0.01)
    assert make_optimizer(task, trainer, torch.device("cuda")).defaults["fused"] is True
    assert not make_optimizer(task, trainer, torch.device("cpu")).defaults["fused"]
    assert not make_optimizer(task, dataclasses.replace(trainer, fused_adamw=False),
                              torch.device("cuda")).defaults["fused"]
    # The same AdamW in one fused kernel (CPU has one too): steps of 20 random gradients.
    weights = [torch.randn(64, 32, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    results = {}
    for fused in (False, True):
        params = [w.clone().requires_grad_() for w in weights]
        optimizer = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01,
                                      fused=fused or None, foreach=None if fused else True)
        generator = torch.Generator().manual_seed(7)
        for _ in range(20):
            for p in params:
                p.grad = torch.randn(p.shape, generator=generator)
            optimizer.step()
        results[fused] = params
    for plain, fused in zip(results[False], results[True]):
        # Each step rounds p - lr * (m_hat / (sqrt(v_hat) + eps) + wd * p) in a different order: a
        # few ulps of |p| per step (the moments themselves agree to an ulp), 4 per step allowed.
        assert (plain - fused).abs().max() <= 20 * 4 * EPS32 * plain.abs().max()


def test_layerdrop_draws_from_its_own_generator_not_the_global_one():
    config = dataclasses.replace(micro_config("hubert", dropout=0.0, attention_dropout=0.0, layerdrop=0.5),
                                 num_layers=8)
    encoder = TransformerEncoder(config).train()
    x = torch.randn(2, 30, config.dim)
    outputs = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)  # a different global stream each time
        encoder.layerdrop_generator = torch.Generator().manual_seed(123)
        hidden, ffn = encoder(x, None)
        outputs.append((hidden, ffn))
    expected = (torch.rand(8, generator=torch.Generator().manual_seed(123)) < 0.5).tolist()
    assert [f is None for f in outputs[0][1]] == expected and 0 < sum(expected) < 8
    for a, b in zip(outputs[0][0], outputs[1][0]):
        assert torch.equal(a, b)
    encoder.eval()
    assert all(f is not None for f in encoder(x, None)[1])  # evaluation runs every block


@pytest.mark.parametrize("dropout", [False, True])
def test_compile_switch_traces_the_training_step_without_changing_it(prepared, tmp_path, dropout):
    """torch.compile with the "eager" backend: dynamo captures the model and DDP wrapper as a
    GPU run would (graph breaks at the numpy masks included), the graph runs on the eager
    kernels: parameters after 2 updates are identical, dropout on or off. (Inductor's fused
    kernels round differently: that is a GPU check, see the notes.)"""
    common = [*MICRO, *([] if dropout else DETERMINISTIC), "trainer.max_steps=2", "data.batch_seconds=8",
              "data.micro_batch_seconds=4", "model.backbone.layerdrop=0.3"]
    pretrain(prepared, tmp_path / "eager", *common)
    pretrain(prepared, tmp_path / "compiled", *common, "trainer.compile=eager")
    assert_same_parameters(final_state(tmp_path / "eager"), final_state(tmp_path / "compiled"))

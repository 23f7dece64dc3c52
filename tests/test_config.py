"""Dotted overrides and the JSON round trip of run configs."""

from __future__ import annotations

import json

import pytest

from musicssl.config import ConfigError, Registry, apply_overrides, from_dict, to_dict
from musicssl.demo import DEMO_PRESETS
from musicssl.models.backbone_config import backbone_preset
from musicssl.train.tasks import MusicHubertRun, music2vec_run, musichubert_run


def test_overrides_are_parsed_by_field_type():
    run = musichubert_run("tiny", num_classes=500, label_rate_hz=100.0)
    changed = apply_overrides(run, ["trainer.max_steps=12", "model.mask.mask_prob=0.65",
                                    "model.backbone.isolate_padding=false", "trainer.betas=[0.9,0.95]",
                                    "data.crop_seconds=3", "trainer.precision=bf16"])
    assert changed.trainer.max_steps == 12 and changed.model.mask.mask_prob == 0.65
    assert changed.model.backbone.isolate_padding is False and changed.trainer.betas == (0.9, 0.95)
    assert changed.data.crop_seconds == 3.0 and isinstance(changed.data.crop_seconds, float)
    assert run.trainer.max_steps == 300  # the original is untouched


def test_related_fields_change_together():
    run, _ = music2vec_run("tiny")
    changed = apply_overrides(run, ["model.backbone.num_layers=2", "model.average_top_k_layers=2"])
    assert changed.model.average_top_k_layers == 2


@pytest.mark.parametrize("override, message", [
    ("trainer.max_step=3", "unknown config key 'trainer.max_step'"),
    ("trainer.max_steps=lots", "expected int"),
    ("trainer.max_steps", "must look like key=value"),
    ("model.backbone.isolate_padding=maybe", "expected true/false"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(musichubert_run("tiny", 8, 100.0), [override])


def test_json_round_trip_is_exact():
    run = musichubert_run("base", num_classes=2000, label_rate_hz=100.0)
    assert from_dict(MusicHubertRun, json.loads(json.dumps(to_dict(run)))) == run


def test_base_recipes_scale_the_cnn_gradient_as_specified_and_tiny_documents_its_changes():
    # docs/method.md §1.2: HuBERT scales the gradient into the CNN by 0.1, data2vec does not.
    assert musichubert_run("base", 500, 100.0).model.backbone.feature_grad_mult == 0.1
    assert music2vec_run("base")[0].model.backbone.feature_grad_mult == 1.0
    tiny = musichubert_run("tiny", 100, 100.0)
    # The CPU-scale deviation (docs/learning_curve.md): full CNN gradient; base's lr and warm-up share.
    assert tiny.model.backbone.feature_grad_mult == 1.0
    assert tiny.trainer.schedule.peak_lr == 5e-4
    assert tiny.trainer.schedule.warmup_steps / tiny.trainer.schedule.total_steps == 0.08
    # Music2Vec: only the tiny recipe starts its prediction head at zero and freezes the CNN.
    tiny_m2v, base_m2v = music2vec_run("tiny")[0].model, music2vec_run("base")[0].model
    assert tiny_m2v.zero_init_final_proj and tiny_m2v.backbone.feature_grad_mult == 0.0
    assert not base_m2v.zero_init_final_proj


def test_registry_lookup_of_an_unknown_name_lists_the_known_ones():
    sizes = Registry("size", {"small": 1, "large": 2})
    assert sizes["large"] == 2 and sizes.names() == ("small", "large") and dict(sizes) == {"small": 1, "large": 2}
    with pytest.raises(ConfigError) as error:
        sizes["huge"]
    assert str(error.value) == "unknown size 'huge'; known: small, large"
    # a KeyError too: Mapping's get and `in` keep their meaning, old `except KeyError` still catches
    assert isinstance(error.value, KeyError) and sizes.get("huge") is None and "huge" not in sizes


def test_registry_registers_by_decorator_and_refuses_a_name_twice():
    recipes = Registry("recipe")

    @recipes.register("double")
    def double(x):
        return 2 * x

    assert recipes["double"](4) == 8 and recipes.register("half", 0.5) == 0.5
    with pytest.raises(ValueError, match="recipe 'half' is registered twice"):
        recipes.register("half", 0.25)


@pytest.mark.parametrize("lookup, message", [
    (lambda: musichubert_run("huge", 8, 50.0), "unknown musichubert preset 'huge'; known: base, tiny"),
    (lambda: music2vec_run("huge"), "unknown music2vec preset 'huge'; known: base, tiny"),
    (lambda: music2vec_run("tiny", "span7"), "unknown Music2Vec variant 'span7'; known: vanilla, span5, span15"),
    # (other modules register more backbone presets when imported: the order is the import order)
    (lambda: backbone_preset("huge"), "unknown backbone preset 'huge'; known: "),
    (lambda: DEMO_PRESETS["huge"], "unknown demo preset 'huge'; known: demo, smoke"),
])
def test_every_preset_family_names_its_presets(lookup, message):
    with pytest.raises(ConfigError) as error:
        lookup()
    assert str(error.value).startswith(message)
    if "backbone" in message:
        assert {"hubert_base", "data2vec_base"} <= set(str(error.value).split("known: ")[1].split(", "))


def test_a_longer_run_keeps_the_presets_warmup_share_unless_the_warmup_is_set():
    from musicssl.train.tasks import resolve_run
    tiny = musichubert_run("tiny", 100, 100.0)
    longer = resolve_run(tiny, ["trainer.max_steps=8000"]).trainer.schedule
    assert (longer.total_steps, longer.warmup_steps) == (8000, 640)
    pinned = resolve_run(tiny, ["trainer.max_steps=8000", "trainer.schedule.warmup_steps=30"]).trainer.schedule
    assert (pinned.total_steps, pinned.warmup_steps) == (8000, 30)
    capped = resolve_run(tiny, ["trainer.max_steps=10", "trainer.schedule.warmup_steps=30"]).trainer.schedule
    assert capped.warmup_steps == 10
    # an explicit length keeps the share too (it was the preset's 24: the collapse-prone fixed warm-up)
    explicit = resolve_run(tiny, ["trainer.max_steps=100", "trainer.schedule.total_steps=8000"]).trainer.schedule
    assert (explicit.total_steps, explicit.warmup_steps) == (8000, 640)
    short = resolve_run(tiny, ["trainer.schedule.total_steps=6"]).trainer.schedule  # was refused: 24 > 6
    assert (short.total_steps, short.warmup_steps) == (6, 0)
    for bad in ("abc", "inf"):  # refused by the config's own check, naming the key
        with pytest.raises(Exception, match="total_steps"):
            resolve_run(tiny, [f"trainer.schedule.total_steps={bad}"])
    base = resolve_run(musichubert_run("base", 500, 50.0), []).trainer.schedule
    assert (base.total_steps, base.warmup_steps) == (250_000, 32_000)

"""Every invalid configuration fails at construction with one line naming the field."""

from __future__ import annotations

import math

import pytest

from nlviz import (
    ConfigError,
    DigitsConfig,
    LevelSpec,
    ModelConfig,
    MultiscaleConfig,
    RecallConfig,
    SurpriseConfig,
    TrainConfig,
)

BAD = [
    (lambda: LevelSpec(period=0), "period"),
    (lambda: LevelSpec(period=2.5), "period"),
    (lambda: LevelSpec(period=True), "period"),
    (lambda: LevelSpec(lr=0), "lr"),
    (lambda: LevelSpec(lr=-1e-3), "lr"),
    (lambda: LevelSpec(lr=math.nan), "lr"),
    (lambda: LevelSpec(lr=math.inf), "lr"),
    (lambda: LevelSpec(optimizer="rmsprop"), "optimizer"),
    (lambda: LevelSpec(kind="gru"), "kind"),
    (lambda: LevelSpec(width=0), "width"),
    (lambda: ModelConfig(levels=()), "levels"),
    (lambda: ModelConfig(variant="nested-ish"), "variant"),
    (lambda: ModelConfig(levels=(LevelSpec(), LevelSpec(kind="lstm"))), "levels[1].kind"),
    (lambda: ModelConfig(levels=(LevelSpec(width=8), LevelSpec(width=9)), variant="independent"), "levels.width"),
    (lambda: ModelConfig(residual="yes"), "residual"),
    (lambda: SurpriseConfig(every=0), "surprise.every"),
    (lambda: SurpriseConfig(sign="plus"), "surprise.sign"),
    (lambda: SurpriseConfig(clip=-1.0), "surprise.clip"),
    (lambda: SurpriseConfig(weights=()), "surprise.weights"),
    (lambda: TrainConfig(steps=0), "steps"),
    (lambda: TrainConfig(steps=1.5), "steps"),
    (lambda: TrainConfig(task="imagenet"), "task"),
    (lambda: TrainConfig(device="tpu"), "device"),
    (lambda: TrainConfig(batch_size=0), "batch_size"),
    (lambda: TrainConfig(head_lr=math.nan), "head_lr"),
    (lambda: TrainConfig(head_optimizer="dgd"), "head_optimizer"),
    (lambda: TrainConfig(accumulate="median"), "accumulate"),
    (lambda: TrainConfig(task="digits", task_options=RecallConfig()), "task_options"),
    (lambda: TrainConfig(surprise=SurpriseConfig(weights=(0.1, 0.2))), "surprise.weights"),
    (lambda: TrainConfig(surprise=SurpriseConfig(enabled=True), capture=False), "capture"),
    (lambda: MultiscaleConfig(fast_period=1), "task.fast_period"),
    (lambda: RecallConfig(correlation=1.0), "task.correlation"),
    (lambda: DigitsConfig(classes_per_task=0), "task.classes_per_task"),
    (lambda: DigitsConfig(test_fraction=0.0), "task.test_fraction"),
]


@pytest.mark.parametrize("make,field", BAD, ids=[f for _, f in BAD])
def test_bad_configuration_names_the_field(make, field):
    with pytest.raises(ConfigError) as info:
        make()
    message = str(info.value)
    assert message.startswith(f"{field}: "), message
    assert "\n" not in message


def test_defaults_are_valid_and_round_trip_through_a_dict():
    cfg = TrainConfig(task="digits", surprise=SurpriseConfig(enabled=True, weights=(0.1, 0.2, 0.3)))
    assert cfg.model.periods == (1, 8, 64)
    assert isinstance(cfg.task_options, DigitsConfig)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ConfigError, match="^stepz: not a TrainConfig field"):
        TrainConfig.from_dict({"stepz": 3})


def test_from_dict_rejects_unknown_nested_keys_with_a_config_error():
    d = TrainConfig().to_dict()
    d["model"]["levels"][0]["colour"] = "red"
    with pytest.raises(ConfigError, match="^config: .*colour"):
        TrainConfig.from_dict(d)


def test_level_clock_refuses_non_integer_periods():
    from nlviz import LevelClock

    for bad in [(2.5,), (0,), (), (True,)]:
        with pytest.raises(ValueError, match="^periods:"):
            LevelClock(bad)


def test_describe_names_every_setting_a_run_differs_in():
    config = TrainConfig(
        task="recall", task_options=RecallConfig(correlation=0.6), steps=70, batch_size=8, seed=3,
        model=ModelConfig(levels=(LevelSpec(period=1, kind="lstm", width=16), LevelSpec(period=4, width=16, hidden=33, optimizer="dgd", lr=2.5e-7)),
                          variant="independent", residual=False, norm=False),
        accumulate="mean", head_optimizer="sgd", head_lr=0.02, autocast="bf16",
        surprise=SurpriseConfig(enabled=True, weights=(0.1, 0.3), every=2, clip=1.5, sign="printed"),
        diverging_factor=50.0, diverging_stop=True)
    text = config.describe()
    for part in ("recall (correlation=0.6)", "70 steps of batch 8", "seed 3", "2 level(s)", "C=1 lstm width 16 adam lr 0.001",
                 "C=4 mlp width 16 hidden 33 dgd lr 2.5e-07", "independent, no residual, no LayerNorm", "chunk mean",
                 "stem and head sgd lr 0.02", "weights 0.1, 0.3 every 2 step(s), printed sign, clip 1.5",
                 "bf16 forward pass", "diverging past 50 x the early loss, then stop"):
        assert part in text, part
    assert "no surprise objective" in TrainConfig().describe() and "no diverging check" in TrainConfig(diverging_factor=0).describe()

"""Spec of the training options: TrainingArguments and the DeepSpeed config from a spec section
and how the stage runs (processes come from torchrun's WORLD_SIZE)."""

import importlib.util

import pytest

from selfreward.trainer import training
from selfreward.trainer.contract import ConfigError, ExecutionConfig
from tests.builders import defaulted_spec

SFT = defaulted_spec(("sft.batchSize", 16), ("sft.microBatchSize", 2))["sft"]


def arguments(processes=1, tmp="/tmp/out", **execution):
    given = {"zeroStage": 3, "checkpointEvery": 200, "gradientCheckpointing": False, "precision": "auto", **execution}
    return training.training_arguments(SFT, ExecutionConfig.model_validate(given), 100, tmp, 7)


@pytest.fixture
def processes(monkeypatch):
    def set_processes(count: int) -> None:
        monkeypatch.setenv("WORLD_SIZE", str(count))
    set_processes(1)
    return set_processes


@pytest.mark.parametrize(("count", "accumulation"), [(1, 8), (2, 4), (8, 1)])
def test_the_global_batch_is_the_same_whatever_the_process_count(processes, count, accumulation):
    processes(count)

    assert arguments()["gradient_accumulation_steps"] == accumulation


def test_a_global_batch_the_processes_cannot_share_is_a_config_error(processes):
    processes(3)

    with pytest.raises(ConfigError, match="batchSize 16 is not a multiple of microBatchSize 2 x 3 processes"):
        arguments()


def test_the_cosine_floor_is_a_rate_of_the_peak_so_zero_optimizers_can_schedule_it(processes):
    kwargs = arguments()["lr_scheduler_kwargs"]

    assert kwargs == {"min_lr_rate": pytest.approx(SFT["finalLearningRate"] / SFT["learningRate"])}


def test_checkpoints_and_gradient_checkpointing_follow_the_execution_options(processes):
    given = arguments(checkpointEvery=25, gradientCheckpointing=True)

    assert (given["save_steps"], given["gradient_checkpointing"]) == (25, True)


@pytest.mark.parametrize(("precision", "bf16"), [("auto", False), ("bf16", True), ("fp32", False)])
def test_on_cpu_training_is_float32_unless_bf16_is_asked_for(processes, precision, bf16):
    assert arguments(precision=precision)["bf16"] is bf16


def test_a_cpu_model_is_loaded_in_float32_even_to_train_in_bf16(tiny_model):
    import torch

    execution = ExecutionConfig(zeroStage=0, checkpointEvery=1, gradientCheckpointing=False, precision="bf16")

    assert training.load_model(tiny_model, 0.1, execution).dtype == torch.float32


def test_bf16_under_zero_on_cpu_is_refused_saying_what_to_do(processes):
    processes(2)

    with pytest.raises(ConfigError, match="precision bf16 with zeroStage 3 on CPU.*zeroStage 0.*precision fp32"):
        arguments(zeroStage=3, precision="bf16")


def test_one_process_trains_without_deepspeed_whatever_the_zero_stage(processes):
    assert "deepspeed" not in arguments(zeroStage=3)


def test_several_cpu_processes_use_gloo_and_zero_from_the_spec(processes):
    processes(2)

    given = arguments(zeroStage=3)

    assert given["ddp_backend"] == "gloo" and given["use_cpu"]
    assert given["deepspeed"]["zero_optimization"]["stage"] == 3
    assert given["deepspeed"]["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]


def test_zero_stage_0_with_several_processes_is_plain_data_parallel(processes):
    processes(2)

    assert "deepspeed" not in arguments(zeroStage=0)


def test_on_cpu_deepspeed_uses_plain_gloo_collectives_and_compiles_nothing(processes):
    import deepspeed.ops

    training.deepspeed_config(3, 2)

    assert deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] is False


def test_zero_without_deepspeed_installed_fails_saying_what_to_do(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))

    with pytest.raises(training.DeepSpeedMissing, match="zeroStage 3 with 2 processes needs DeepSpeed.*zeroStage 0"):
        training.deepspeed_config(3, 2)


@pytest.mark.parametrize(("zero", "count", "layout"), [(3, 2, {"zeroStage": 3, "processes": 2}),
                                                      (3, 1, {"zeroStage": 0, "processes": 1}),
                                                      (0, 4, {"zeroStage": 0, "processes": 4})])
def test_a_checkpoint_is_known_by_the_zero_stage_that_ran_and_the_process_count(processes, zero, count, layout):
    processes(count)

    execution = ExecutionConfig(zeroStage=zero, checkpointEvery=1, gradientCheckpointing=False, precision="auto")

    assert training.checkpoint_layout(execution) == layout


def test_lora_adapts_every_linear_layer_unless_modules_are_named():
    assert training.lora_config({"rank": 8, "alpha": 16, "dropout": 0.0}).target_modules == "all-linear"
    assert training.lora_config({"rank": 8, "alpha": 16, "dropout": 0.0, "targetModules": ["q_proj"]}).target_modules == {"q_proj"}

"""What SFT and DPO share: the model with the spec's dropout, TrainingArguments from the spec,
progress, DeepSpeed when it can run, checkpoints committed to storage, and the committed model.

Batch sizes are global: `batchSize` examples per optimizer step over all processes, made of
`microBatchSize` per device and gradient accumulation.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from selfreward.trainer import checkpoints
from selfreward.trainer.contract import ConfigError, StageConfig
from selfreward.trainer.failures import PermanentFailure
from selfreward.trainer.progress import Progress
from selfreward.trainer.stagekit import StageResult, run_single
from selfreward.trainer.storage import Storage, is_s3

DROPOUT_FIELDS = ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop", "hidden_dropout_prob")
WORKDIR_ENV = "SELFREWARD_WORKDIR"


class NothingToTrain(PermanentFailure, ValueError):
    """The training set is empty (e.g. the judge kept no pairs)."""


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def workdir(config: StageConfig) -> Path:
    """Local scratch of one training stage: saved checkpoints before their upload, the final model.

    Nothing here is needed to resume (committed checkpoints are); keyed by the run's uid and the
    output URI so two runs never share it.
    """
    root = Path(os.environ.get(WORKDIR_ENV, Path.home() / ".cache" / "selfreward" / "work"))
    key = hashlib.sha256(f"{config.run_uid}/{config.output('model')}".encode()).hexdigest()[:16]
    return root / config.namespace / config.run / f"iter-{config.iteration:02d}-{config.stage.value}-{key}"


def load_model(model_dir: Path, dropout: float):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model_config = AutoConfig.from_pretrained(model_dir)
    for name in DROPOUT_FIELDS:
        if hasattr(model_config, name):
            setattr(model_config, name, dropout)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return AutoModelForCausalLM.from_pretrained(model_dir, config=model_config, dtype=dtype)


def training_arguments(section: dict[str, Any], examples: int, output_dir: Path, seed: int) -> dict[str, Any]:
    """Keyword arguments shared by SFTConfig and DPOConfig, derived from an sft/dpo spec section."""
    import torch

    per_step = section["microBatchSize"] * world_size()
    if section["batchSize"] % per_step:
        raise ConfigError(
            f"batchSize {section['batchSize']} is not a multiple of microBatchSize {section['microBatchSize']} "
            f"x {world_size()} processes: the global batch would not be what the spec says"
        )
    accumulation = section["batchSize"] // per_step
    steps_per_epoch = max(1, math.ceil(examples / section["batchSize"]))
    total_steps = steps_per_epoch * section["epochs"]
    scheduler: dict[str, Any] = (
        {"lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": {"min_lr": section["finalLearningRate"]}}
        if section["schedule"] == "cosine"
        else {"lr_scheduler_type": "constant_with_warmup"}
    )
    arguments = {
        "output_dir": str(output_dir),
        "learning_rate": section["learningRate"],
        "per_device_train_batch_size": section["microBatchSize"],
        "gradient_accumulation_steps": accumulation,
        "num_train_epochs": section["epochs"],
        "max_length": section["maxLength"],
        "weight_decay": section["weightDecay"],
        "warmup_steps": int(total_steps * section["warmupRatio"]),
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": section["checkpointEvery"],
        "save_total_limit": 1,
        "save_only_model": False,
        "report_to": [],
        "seed": seed,
        "bf16": torch.cuda.is_available(),
        "use_cpu": not torch.cuda.is_available(),
        "disable_tqdm": True,
        **scheduler,
    }
    deepspeed = deepspeed_config(section["zeroStage"])
    if deepspeed:
        arguments["deepspeed"] = deepspeed
    return arguments


def deepspeed_config(stage: int) -> dict[str, Any] | None:
    """ZeRO settings for multi-GPU training; None where DeepSpeed cannot or need not run."""
    import importlib.util

    import torch

    if stage == 0 or not torch.cuda.is_available() or world_size() == 1 or importlib.util.find_spec("deepspeed") is None:
        return None
    return {
        "zero_optimization": {"stage": stage, "overlap_comm": True, "stage3_gather_16bit_weights_on_model_save": True},
        "bf16": {"enabled": "auto"},
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
    }


def count_over_length(tokenizer, conversations: list[list[dict[str, str]]], max_length: int) -> int:
    """How many chat conversations are longer than `max_length` tokens (they get truncated)."""
    return sum(
        1 for messages in conversations
        if len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]) > max_length
    )


def final_logs(log_history: list[dict[str, Any]], keys: dict[str, str]) -> dict[str, float]:
    """The last logged value of each wanted key, renamed: {"loss": "trainLoss"}."""
    found: dict[str, float] = {}
    for entry in log_history:
        for key, name in keys.items():
            if key in entry:
                found[name] = float(entry[key])
    return found


@dataclass
class Recipe:
    """How one trainer (SFT or DPO) differs: its classes, its options, its data and metrics."""

    section: str
    trainer_class: Callable[..., Any]
    config_class: Callable[..., Any]
    options: dict[str, Any]
    rows: list[dict[str, Any]]
    sequences: Callable[[dict[str, Any]], list[list[dict[str, str]]]]  # a row's chat sequences, to count the long ones
    over_length_metric: str
    metrics: dict[str, Any]
    logs: dict[str, str] = field(default_factory=lambda: {"loss": "finalLoss"})
    trainer_options: dict[str, Any] = field(default_factory=dict)


def run_stage(config: StageConfig, storage: Storage, model_dir_for, recipe_for: Callable[[], Recipe]) -> StageResult:
    """Train unless the model is committed from the same inputs; either way leave no checkpoints
    behind once it is (a crash between the model's commit and their removal would leak them)."""
    result = run_single(config, storage, config.output("model"), lambda: train(config, storage, model_dir_for, recipe_for()))
    if result.shards[0].skipped and int(os.environ.get("RANK", "0")) == 0:
        checkpoints.remove_all(storage, config.output("checkpoints"))
    return result


def train(config: StageConfig, storage: Storage, model_dir_for, recipe: Recipe) -> dict[str, Any]:
    """Train M_t into the stage's output model, resuming from its newest committed checkpoint."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    section = config.section(recipe.section)
    model_dir = model_dir_for(config.input("model"))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    too_long = count_over_length(tokenizer, [s for row in recipe.rows for s in recipe.sequences(row)], section["maxLength"])
    scratch = workdir(config)
    output_dir = scratch / "trainer"
    if world_size() == 1:  # with several processes, issue 10's launcher owns the scratch layout
        shutil.rmtree(scratch, ignore_errors=True)
    checkpoint_root = config.output("checkpoints")
    resume = checkpoints.latest(storage, checkpoint_root, storage.lineage["fingerprint"])
    resume_dir = checkpoints.download(storage, resume, scratch / "resume") if resume else None
    trainer = recipe.trainer_class(
        model=load_model(model_dir, section["dropout"]),
        args=recipe.config_class(**training_arguments(section, len(recipe.rows), output_dir, config.random_seed), **recipe.options),
        train_dataset=Dataset.from_list(recipe.rows).shuffle(seed=config.random_seed),
        processing_class=tokenizer,
        callbacks=[progress_callback(config.stage.value), commit_checkpoints_callback(storage, checkpoint_root, config.stage.value)],
        **recipe.trainer_options,
    )
    result = trainer.train(resume_from_checkpoint=str(resume_dir) if resume_dir else None)
    metrics = {
        **recipe.metrics,
        recipe.over_length_metric: too_long,
        "steps": trainer.state.global_step,
        "resumedFromStep": resume.step if resume else 0,
        "trainLoss": float(result.training_loss),
        **final_logs(trainer.state.log_history, recipe.logs),
    }
    commit_model(trainer, tokenizer, storage, config, metrics)
    if trainer.is_world_process_zero():
        checkpoints.remove_all(storage, checkpoint_root)  # the model is committed: nothing left to resume
    return metrics


def progress_callback(stage: str):
    from transformers import TrainerCallback

    class ReportProgress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.progress = Progress(stage, 0, state.max_steps, "steps")

        def on_step_end(self, args, state, control, **kwargs):
            self.progress.set(state.global_step, state.max_steps)

        def on_train_end(self, args, state, control, **kwargs):
            self.progress.finish()

    return ReportProgress()


def commit_checkpoints_callback(storage: Storage, root: str, stage: str):
    """After each save, world rank 0 commits the checkpoint to storage. The last step saves none:
    the model itself is committed right after, and its optimizer state would be of no use."""
    from transformers import TrainerCallback

    class CommitCheckpoints(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps:
                control.should_save = False
            return control

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                local = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                checkpoints.commit(storage, root, local, state.global_step, stage)

    return CommitCheckpoints()


def commit_model(trainer, tokenizer, storage: Storage, config: StageConfig, metrics: dict[str, Any]) -> None:
    """Save the trained model as a Hugging Face folder, then write the manifest last."""
    output = config.output("model")
    local = Path(output) if not is_s3(output) else workdir(config) / "final"
    trainer.save_model(str(local))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(local))
        files = storage.upload_folder(local, output)
        files.pop("_manifest.json", None)
        storage.commit(output, files, stage=config.stage.value, iteration=config.iteration, metrics=metrics)

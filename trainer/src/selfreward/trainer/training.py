"""What SFT and DPO share: the model with the spec's dropout, TrainingArguments from the spec,
DeepSpeed ZeRO and the memory options, progress, checkpoints committed to storage, and the
committed model.

A stage runs in every process torchrun started (launch.py in the operator). Batch sizes are
global: `batchSize` examples per optimizer step over all processes, made of `microBatchSize`
per device and gradient accumulation, and every process shuffles the data with the same seed,
so the process count does not change what is trained. World rank 0 alone commits.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from selfreward.trainer import checkpoints, nodelocal
from selfreward.trainer.contract import ConfigError, ExecutionConfig, StageConfig
from selfreward.trainer.failures import PermanentFailure
from selfreward.trainer.ranks import local_rank, node_count, node_rank, world_rank, world_size
from selfreward.trainer.progress import Progress
from selfreward.trainer.stagekit import StageResult, run_single
from selfreward.trainer.storage import Storage, is_s3

DROPOUT_FIELDS = ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop", "hidden_dropout_prob")
WORKDIR_ENV = "SELFREWARD_WORKDIR"
COLLECTIVE_TIMEOUT_SECONDS = 4 * 3600


class NothingToTrain(PermanentFailure, ValueError):
    """The training set is empty (e.g. the judge kept no pairs)."""


class DeepSpeedMissing(PermanentFailure, RuntimeError):
    """The spec asks for ZeRO and this environment has no DeepSpeed."""


def workdir(config: StageConfig) -> Path:
    """Local scratch of one training stage: saved checkpoints before their upload, a checkpoint
    downloaded to resume from, LoRA adapters before their merge, the final model.

    Nothing here is needed to resume (committed checkpoints are); keyed by the run's uid and the
    output URI so two runs never share it.
    """
    root = Path(os.environ.get(WORKDIR_ENV, Path.home() / ".cache" / "selfreward" / "work"))
    key = hashlib.sha256(f"{config.run_uid}/{config.output('model')}".encode()).hexdigest()[:16]
    return root / config.namespace / config.run / f"iter-{config.iteration:02d}-{config.stage.value}-{key}"


def load_model(model_dir: Path, dropout: float, execution: ExecutionConfig):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model_config = AutoConfig.from_pretrained(model_dir)
    for name in DROPOUT_FIELDS:
        if hasattr(model_config, name):
            setattr(model_config, name, dropout)
    # On CPU bf16 is autocast over float32 weights, which is also what gets saved: small updates
    # (DPO at 1e-6) would round away in bfloat16 weights.
    dtype = torch.bfloat16 if torch.cuda.is_available() and in_bf16(execution) else torch.float32
    return AutoModelForCausalLM.from_pretrained(model_dir, config=model_config, dtype=dtype)


def in_bf16(execution: ExecutionConfig) -> bool:
    """Whether training runs in bfloat16: asked for, or `auto` on a GPU."""
    import torch

    return execution.precision == "bf16" or (execution.precision == "auto" and torch.cuda.is_available())


def training_arguments(section: dict[str, Any], execution: ExecutionConfig, examples: int, output_dir: Path,
                       seed: int) -> dict[str, Any]:
    """Keyword arguments shared by SFTConfig and DPOConfig, from an sft/dpo spec section and how
    the stage runs."""
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
        # As a rate: the scheduler reads an absolute min_lr against optimizer.defaults, which
        # DeepSpeed's ZeRO optimizers do not have.
        {"lr_scheduler_type": "cosine_with_min_lr",
         "lr_scheduler_kwargs": {"min_lr_rate": section["finalLearningRate"] / section["learningRate"]}}
        if section["schedule"] == "cosine"
        else {"lr_scheduler_type": "constant_with_warmup"}
    )
    gpu = torch.cuda.is_available()
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
        "save_steps": execution.checkpoint_every,
        "save_total_limit": 1,
        "save_only_model": False,
        "gradient_checkpointing": execution.gradient_checkpointing,
        # Every collective may wait this long, the gather after a checkpoint's upload included
        # (a 70B checkpoint is hundreds of GB); the default 30 minutes would abort the job.
        "ddp_timeout": COLLECTIVE_TIMEOUT_SECONDS,
        "report_to": [],
        "seed": seed,
        "bf16": in_bf16(execution),
        "use_cpu": not gpu,
        "disable_tqdm": True,
        **scheduler,
    }
    if not gpu and world_size() > 1:
        arguments["ddp_backend"] = "gloo"
    deepspeed = deepspeed_config(execution.zero_stage, world_size())
    if deepspeed and not gpu and arguments["bf16"]:
        raise ConfigError(
            f"precision bf16 with zeroStage {execution.zero_stage} on CPU: DeepSpeed would train and save bfloat16 "
            "weights there; set zeroStage 0 (plain data parallelism) or precision fp32"
        )
    if deepspeed:
        arguments["deepspeed"] = deepspeed
    return arguments


def deepspeed_config(stage: int, processes: int) -> dict[str, Any] | None:
    """ZeRO settings for training with several processes; None for zeroStage 0 or one process
    (nothing to shard across), which train with plain DDP or alone.

    On CPU (gloo) it runs too, which is how the tests here prove it: DeepSpeed would otherwise
    compile its shared-memory allreduce at start, and worker images carry no compiler.
    """
    import importlib.util

    import torch

    if not zero_applies(stage, processes):
        return None
    if importlib.util.find_spec("deepspeed") is None:
        raise DeepSpeedMissing(
            f"zeroStage {stage} with {processes} processes needs DeepSpeed, which this environment lacks: use the "
            "training image, install selfreward-trainer[deepspeed], or set zeroStage 0 for plain data parallelism"
        )
    gpu = torch.cuda.is_available()
    if not gpu:
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return {
        "zero_optimization": {"stage": stage, "overlap_comm": gpu, "stage3_gather_16bit_weights_on_model_save": True},
        "bf16": {"enabled": "auto"},
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
    }


def checkpoint_layout(execution: ExecutionConfig) -> dict[str, int]:
    """What a checkpoint can be resumed by: DeepSpeed partitions optimizer state by process, so
    only the same ZeRO stage over the same number of processes reads it back."""
    stage = execution.zero_stage if zero_applies(execution.zero_stage, world_size()) else 0
    return {"zeroStage": stage, "processes": world_size()}


def zero_applies(stage: int, processes: int) -> bool:
    return stage > 0 and processes > 1


def lora_config(lora: dict[str, Any]):
    from peft import LoraConfig

    return LoraConfig(r=lora["rank"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                      target_modules=lora.get("targetModules") or "all-linear", task_type="CAUSAL_LM")


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
    result = run_single(config, storage, config.output("model"), lambda: train(config, storage, model_dir_for, recipe_for()),
                        owner=world_rank() == 0)
    if result.shards[0].skipped and world_rank() == 0:
        checkpoints.remove_all(storage, config.output("checkpoints"))
    return result


def train(config: StageConfig, storage: Storage, model_dir_for, recipe: Recipe) -> dict[str, Any]:
    """Train M_t into the stage's output model, resuming from its newest committed checkpoint
    that this ZeRO stage and process count can read."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    section = config.section(recipe.section)
    execution = config.how_to_train()
    model_dir = model_dir_for(config.input("model"))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    too_long = count_over_length(tokenizer, [s for row in recipe.rows for s in recipe.sequences(row)], section["maxLength"])
    scratch = nodelocal.fresh_folder(workdir(config))
    checkpoint_root = config.output("checkpoints")
    layout = checkpoint_layout(execution)
    resume = checkpoints.latest(storage, checkpoint_root, storage.lineage["fingerprint"], layout)
    resume_dir = checkpoints.download(storage, resume, scratch / "resume") if resume else None
    options = dict(recipe.trainer_options)
    if section.get("lora") is not None:
        options["peft_config"] = lora_config(section["lora"])
    # The arguments first: under ZeRO-3 the model then loads already partitioned across the
    # processes, instead of whole in each of them.
    arguments = recipe.config_class(**training_arguments(section, execution, len(recipe.rows), scratch / "trainer",
                                                         config.random_seed), **recipe.options)
    committing = commit_checkpoints_callback(storage, checkpoint_root, config.stage.value, layout, scratch / "uploading")
    trainer = recipe.trainer_class(
        model=load_model(model_dir, section["dropout"], execution),
        args=arguments,
        train_dataset=Dataset.from_list(recipe.rows).shuffle(seed=config.random_seed),
        processing_class=tokenizer,
        callbacks=[progress_callback(config.stage.value), committing],
        **options,
    )
    result = trainer.train(resume_from_checkpoint=str(resume_dir) if resume_dir else None)
    metrics = {
        **recipe.metrics,
        recipe.over_length_metric: too_long,
        "steps": trainer.state.global_step,
        "resumedFromStep": resume.step if resume else 0,
        "processes": layout["processes"],
        "zeroStage": layout["zeroStage"],
        "trainLoss": float(result.training_loss),
        "trainSeconds": round(float(result.metrics.get("train_runtime", 0.0)), 2),
        **committing.metrics(),
        **final_logs(trainer.state.log_history, recipe.logs),
    }
    commit_model(trainer, tokenizer, storage, config, metrics, model_dir, lora=section.get("lora") is not None)
    if trainer.is_world_process_zero():
        checkpoints.remove_all(storage, checkpoint_root)  # the model is committed: nothing left to resume
    return metrics


def progress_callback(stage: str):
    """Steps done, reported by world rank 0 (the others train the same steps)."""
    from transformers import TrainerCallback

    class ReportProgress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.progress = Progress(stage, 0, state.max_steps, "steps") if state.is_world_process_zero else None

        def on_step_end(self, args, state, control, **kwargs):
            if self.progress:
                self.progress.set(state.global_step, state.max_steps)

        def on_train_end(self, args, state, control, **kwargs):
            if self.progress:
                self.progress.finish()

    return ReportProgress()


def commit_checkpoints_callback(storage: Storage, root: str, stage: str, layout: dict[str, int], scratch: Path):
    """After each save, one process per node uploads the node's files of the checkpoint in the
    background while training goes on, and world rank 0 commits it. Every process waits for the
    previous upload before the next save and at the end of training, and all of them fail if
    any node's upload failed. The last step saves none: the model itself is committed right
    after, and its optimizer state would be of no use."""
    from transformers import TrainerCallback

    uploads = checkpoints.Uploads(storage, root, stage, layout, scratch, node=node_rank(), nodes=node_count(),
                                  commits=world_rank() == 0, part_timeout=COLLECTIVE_TIMEOUT_SECONDS)

    def finish_everywhere() -> None:
        failed = [error for error in gather_everywhere(uploads.finish()) if error]
        if failed:
            raise CheckpointUploadFailed(f"uploading a checkpoint: {failed[0]}")

    class CommitCheckpoints(TrainerCallback):
        def metrics(self) -> dict[str, float]:
            """This node's checkpoint uploads: their time in the background, and the training's
            time on them past the saves (links, and waiting for an upload before the next save)."""
            return {"checkpointUploadSeconds": round(uploads.upload_seconds, 2),
                    "checkpointWaitSeconds": round(uploads.wait_seconds, 2)}

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps:
                control.should_save = False
            return control

        def on_save(self, args, state, control, **kwargs):
            finish_everywhere()
            local = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            uploads.clear(state.global_step)
            barrier()  # every process has written its part (its ZeRO shards, its RNG state); nothing stale is left
            if local_rank() == 0:
                uploads.start(local, state.global_step)
                if world_rank() != 0:  # the Trainer rotates only the main process's local copies
                    shutil.rmtree(local, ignore_errors=True)

        def on_train_end(self, args, state, control, **kwargs):
            finish_everywhere()

    return CommitCheckpoints()


class CheckpointUploadFailed(RuntimeError):
    """A node could not upload its part of a checkpoint (retried: the attempt resumes from the last one)."""


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def gather_everywhere(item: Any) -> list[Any]:
    """Every process's `item`, in rank order, in every process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [item]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, item)
    return gathered


def commit_model(trainer, tokenizer, storage: Storage, config: StageConfig, metrics: dict[str, Any], model_dir: Path,
                 lora: bool) -> None:
    """Save the trained model as a Hugging Face folder, then write the manifest last. LoRA
    adapters are merged into M_t's weights first: the next stage loads a plain folder."""
    output = config.output("model")
    local = Path(output) if not is_s3(output) else workdir(config) / "final"
    if not lora:
        trainer.save_model(str(local))  # every process: ZeRO-3 gathers the shards for rank 0
    else:
        adapter = workdir(config) / "adapter"
        trainer.save_model(str(adapter))
        if trainer.is_world_process_zero():
            merge_adapter(model_dir, adapter, local, trainer.model.dtype)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(local))
        files = storage.upload_folder(local, output)
        files.pop("_manifest.json", None)
        storage.commit(output, files, stage=config.stage.value, iteration=config.iteration, metrics=metrics)


def merge_adapter(base: Path, adapter: Path, target: Path, dtype) -> None:
    """M_t plus the trained adapters, as one plain model folder. Loaded whole in this process,
    outside ZeRO-3's partitioning (which would wait for the other processes)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=dtype), adapter).merge_and_unload()
    merged.save_pretrained(str(target))

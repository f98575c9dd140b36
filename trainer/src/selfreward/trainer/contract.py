"""The stage contract: what a stage program is given (StageConfig) and what it reports (summary).

Every step of a run is `python -m selfreward.trainer <stage> --config <json>`. The config names
the input and output URIs explicitly, carries the spec sections the stage needs (already
defaulted by the CRD schema), how to run it (training: ZeRO stage, checkpoints, memory options)
and the shard index and count. The program prints one JSON line,
its summary, which also goes to the pod's termination message (at most 4 KiB): the operator
reads results from there and needs no storage credentials.
"""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from selfreward.trainer.failures import PermanentFailure
from selfreward.trainer.ranks import world_rank, world_size
from selfreward.trainer.storage import StorageOptions

TERMINATION_LOG = Path("/dev/termination-log")
TERMINATION_LIMIT = 4096
SHARD_INDEX_ENV = "JOB_COMPLETION_INDEX"


class Stage(str, Enum):
    INSTRUCT = "instruct"
    GENERATE = "generate"
    JUDGE = "judge"
    SFT = "sft"
    DPO = "dpo"
    EVALUATE = "evaluate"
    COMPARE = "compare"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class StorageConfig(_Strict):
    endpoint: str | None = None
    region: str | None = None
    addressing_style: str = Field("auto", alias="addressingStyle")

    def options(self) -> StorageOptions:
        return StorageOptions(self.endpoint, self.region, self.addressing_style)


class ExecutionConfig(_Strict):
    """How a training stage runs: none of it changes the model it makes, so none of it is in the
    stage's fingerprint (the operator's plan.EXECUTION_FIELDS). Values come from the CRD's
    defaults, never from here: a training config must carry them."""

    zero_stage: int = Field(alias="zeroStage", ge=0, le=3)
    checkpoint_every: int = Field(alias="checkpointEvery", ge=1)
    gradient_checkpointing: bool = Field(alias="gradientCheckpointing")
    precision: Literal["auto", "bf16", "fp32"]
    reference: Literal["precomputed", "model"] | None = Field(None, description="dpo only")


class StageConfig(_Strict):
    """One stage of one iteration. `shards` lists the shard indexes this process runs."""

    stage: Stage
    run: str
    run_uid: str = Field("", alias="runUid", description="the run's identity (metadata.uid on Kubernetes)")
    namespace: str
    iteration: int = Field(ge=1)
    attempt: int = Field(1, ge=1)
    inputs: dict[str, str | list[str]]
    outputs: dict[str, str]
    shard_count: int = Field(1, alias="shardCount", ge=1)
    input_shards: dict[str, int] = Field(
        default_factory=dict, alias="inputShards", description="shard count of each sharded input, as its stage ran"
    )
    shards: list[int] | None = None
    random_seed: int = Field(alias="randomSeed")
    processes: int = Field(1, ge=1, description="processes per pod: tensor-parallel size for inference")
    spec: dict[str, Any]
    execution: ExecutionConfig | None = None
    storage: StorageConfig = StorageConfig()

    @model_validator(mode="after")
    def _shards_in_range(self) -> "StageConfig":
        for index in self.shards or []:
            if not 0 <= index < self.shard_count:
                raise ValueError(f"shard {index} is outside 0..{self.shard_count - 1}")
        return self

    def shard_indexes(self) -> list[int]:
        """Shards to run: the config's list, else the Indexed Job's index, else all."""
        if self.shards is not None:
            return list(self.shards)
        if SHARD_INDEX_ENV in os.environ:
            return [int(os.environ[SHARD_INDEX_ENV])]
        return list(range(self.shard_count))

    def section(self, name: str) -> dict[str, Any]:
        try:
            return self.spec[name]
        except KeyError as error:
            raise ConfigError(f"config.spec.{name} is missing: stage {self.stage.value} needs it") from error

    def how_to_train(self) -> ExecutionConfig:
        if self.execution is None:
            raise ConfigError(f"config.execution is missing: stage {self.stage.value} needs it")
        return self.execution

    def input(self, name: str) -> str:
        value = self.inputs.get(name)
        if not isinstance(value, str):
            raise ConfigError(f"config.inputs.{name} is missing or not a URI")
        return value

    def input_shard_count(self, name: str) -> int:
        try:
            return self.input_shards[name]
        except KeyError as error:
            raise ConfigError(f"config.inputShards.{name} is missing: the shard count of input {name}") from error

    def input_list(self, name: str) -> list[str]:
        value = self.inputs.get(name, [])
        return [value] if isinstance(value, str) else list(value)

    def output(self, name: str) -> str:
        try:
            return self.outputs[name]
        except KeyError as error:
            raise ConfigError(f"config.outputs.{name} is missing") from error


def reports(summary: dict[str, Any]) -> bool:
    """Whether this process prints `summary`: world rank 0 speaks for a stage that succeeded;
    any process that failed says why (torchrun may stop rank 0 before it could)."""
    return world_rank() == 0 or not summary.get("ok")


class ConfigError(PermanentFailure, ValueError):
    """The stage config is invalid: a permanent failure, retrying cannot help."""


def parse_configs(text: str) -> list[StageConfig]:
    """Parse `--config`: inline JSON or @path; one object, or a list run in order."""
    if text.startswith("@"):
        text = Path(text[1:]).read_text(encoding="utf-8")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"--config is not valid JSON: {error}") from error
    items = raw if isinstance(raw, list) else [raw]
    configs = []
    for position, item in enumerate(items):
        try:
            configs.append(StageConfig.model_validate(item))
        except ValidationError as error:
            where = f"config[{position}]" if isinstance(raw, list) else "config"
            problems = "; ".join(
                f"{where}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
            )
            raise ConfigError(problems) from error
    return configs


def summary_line(summary: dict[str, Any], limit: int = TERMINATION_LIMIT) -> str:
    """The one-line JSON summary, shortened to `limit` bytes (its share of a termination
    message), always valid JSON."""
    line = json.dumps(summary, separators=(",", ":"), sort_keys=True)
    if len(line.encode()) <= limit:
        return line
    kept = ("stage", "iteration", "attempt", "ok", "permanent", "reason", "error", "metrics", "shards")
    trimmed = {k: summary[k] for k in kept if k in summary} | {"truncated": True}
    if "error" in trimmed:
        trimmed["error"] = str(trimmed["error"])[:1000]
    for optional in ("shards", "metrics", "error"):
        line = json.dumps(trimmed, separators=(",", ":"), sort_keys=True)
        if len(line.encode()) <= limit:
            return line
        trimmed.pop(optional, None)
    return json.dumps(trimmed, separators=(",", ":"), sort_keys=True)


_summary_stream = sys.stdout


def reserve_stdout_for_summaries() -> None:
    """Send everything else written to stdout (libraries, worker processes) to stderr.

    Stdout then carries the summary lines alone, which is what executors read.
    """
    global _summary_stream
    sys.stdout.flush()
    _summary_stream = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr


_reported: list[str] = []


def report(summary: dict[str, Any], stages: int = 1) -> None:
    """Print the summary on stdout, and in a pod add it to the termination log: one line per
    stage the process runs, each within its share of the 4 KiB the kubelet keeps."""
    line = summary_line(summary, TERMINATION_LIMIT // max(stages, 1) - 1)
    print(line, file=_summary_stream, flush=True)
    _reported.append(line)
    if TERMINATION_LOG.exists():  # the kubelet creates it in pods; never create it elsewhere
        try:
            if len(_reported) == 1 and world_size() > 1 and TERMINATION_LOG.stat().st_size:
                return  # another process of this pod spoke first: the first failure is the cause
            TERMINATION_LOG.write_text("\n".join(_reported))
        except OSError:
            pass

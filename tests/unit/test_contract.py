"""Spec of the stage contract: the --config a stage program is given, and the summary line it prints."""

import json
import sys

import pytest

from selfreward.trainer.contract import (
    SHARD_INDEX_ENV,
    TERMINATION_LIMIT,
    ConfigError,
    Stage,
    StageConfig,
    parse_configs,
    reports,
    summary_line,
)
from tests.builders import stage_config


def config(**overrides):
    return StageConfig.model_validate(stage_config(**overrides))


def refusal(raw):
    with pytest.raises(ConfigError) as raised:
        parse_configs(raw if isinstance(raw, str) else json.dumps(raw))
    return str(raised.value)


# --- parsing ----------------------------------------------------------------------------------


def test_one_object_is_one_config():
    (parsed,) = parse_configs(json.dumps(stage_config()))

    assert parsed.stage is Stage.GENERATE
    assert parsed.shard_count == 4
    assert parsed.random_seed == 1234


def test_a_list_is_several_configs_run_in_order():
    parsed = parse_configs(json.dumps([stage_config(stage="generate"), stage_config(stage="judge")]))

    assert [c.stage for c in parsed] == [Stage.GENERATE, Stage.JUDGE]


def test_a_config_can_be_read_from_a_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(stage_config(stage="dpo")), encoding="utf-8")

    (parsed,) = parse_configs(f"@{path}")

    assert parsed.stage is Stage.DPO


def test_defaults_of_a_minimal_config():
    parsed = config(shardCount=None)

    assert (parsed.attempt, parsed.shard_count, parsed.shards, parsed.processes) == (1, 1, None, 1)


def test_a_training_config_without_how_to_run_it_is_a_config_error():
    with pytest.raises(ConfigError, match="config.execution is missing: stage sft needs it"):
        config(stage="sft").how_to_train()


def test_how_a_stage_runs_is_read_from_the_config():
    execution = config(execution={"zeroStage": 3, "checkpointEvery": 50, "gradientCheckpointing": True,
                                  "precision": "bf16", "reference": "model"}).execution

    assert (execution.zero_stage, execution.checkpoint_every, execution.gradient_checkpointing,
            execution.precision, execution.reference) == (3, 50, True, "bf16", "model")


def test_bad_json_is_refused():
    assert "not valid JSON" in refusal('{"stage": ')


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        pytest.param(stage_config(colour="blue"), "config.colour", id="unknown-top-level-key"),
        pytest.param(stage_config(storage={"bucket": "x"}), "config.storage.bucket", id="unknown-nested-key"),
        pytest.param([stage_config(), stage_config(extra=1)], "config[1].extra", id="unknown-key-in-list-item"),
        pytest.param(stage_config(stage="train"), "config.stage", id="unknown-stage"),
        pytest.param(stage_config(iteration=0), "config.iteration", id="iteration-zero"),
        pytest.param(stage_config(run=None), "config.run", id="missing-run"),
        pytest.param(stage_config(execution={"zeroStage": 4, "checkpointEvery": 1, "gradientCheckpointing": False,
                                             "precision": "auto"}),
                     "config.execution.zeroStage", id="zero-stage-4"),
        pytest.param(stage_config(execution={"zeroStage": 3, "checkpointEvery": 1, "gradientCheckpointing": False,
                                             "precision": "auto", "reference": "frozen"}),
                     "config.execution.reference", id="unknown-reference"),
        pytest.param(stage_config(execution={"zeroStage": 3, "checkpointEvery": 1, "gradientCheckpointing": False,
                                             "precision": "fp16"}), "config.execution.precision", id="unknown-precision"),
        pytest.param(stage_config(execution={"zeroStage": 3}), "config.execution.checkpointEvery", id="execution-incomplete"),
    ],
)
def test_an_invalid_config_is_refused_naming_the_field(raw, where):
    assert where in refusal(raw)


@pytest.mark.parametrize("shards", [[4], [-1], [0, 7]], ids=["equal-to-count", "negative", "one-of-two"])
def test_shard_indexes_outside_the_count_are_refused(shards):
    assert "outside 0..3" in refusal(stage_config(shardCount=4, shards=shards))


# --- which shards a process runs --------------------------------------------------------------


def test_listed_shards_are_run_whatever_the_environment(monkeypatch):
    monkeypatch.setenv(SHARD_INDEX_ENV, "3")

    assert config(shards=[0, 2]).shard_indexes() == [0, 2]


def test_an_indexed_job_pod_runs_its_completion_index(monkeypatch):
    monkeypatch.setenv(SHARD_INDEX_ENV, "2")

    assert config().shard_indexes() == [2]


def test_outside_an_indexed_job_every_shard_is_run(monkeypatch):
    monkeypatch.delenv(SHARD_INDEX_ENV, raising=False)

    assert config(shardCount=3).shard_indexes() == [0, 1, 2]


# --- accessors --------------------------------------------------------------------------------


def test_a_missing_spec_section_is_a_config_error():
    with pytest.raises(ConfigError, match="config.spec.judge"):
        config().section("judge")


def test_a_missing_input_is_a_config_error():
    with pytest.raises(ConfigError, match="config.inputs.pairs"):
        config().input("pairs")


def test_a_single_uri_is_a_list_of_one():
    assert config(inputs={"earlierPrompts": "s3://b/p"}).input_list("earlierPrompts") == ["s3://b/p"]


# --- the summary line -------------------------------------------------------------------------


def test_a_small_summary_is_printed_whole_on_one_line():
    summary = {"stage": "judge", "iteration": 2, "ok": True, "metrics": {"pairs": 12}, "shards": [{"index": 0}]}

    line = summary_line(summary)

    assert "\n" not in line
    assert json.loads(line) == summary


def test_a_huge_summary_is_shortened_to_fit_a_termination_message():
    summary = {
        "stage": "generate",
        "iteration": 2,
        "ok": True,
        "metrics": {"candidates": 32000},
        "shards": [{"index": i, "file": f"s3://bucket/run/iter-02/candidates/shard-{i:05d}.jsonl"} for i in range(500)],
    }

    line = summary_line(summary)

    assert len(line.encode()) <= TERMINATION_LIMIT
    parsed = json.loads(line)
    assert parsed["truncated"] is True
    assert (parsed["stage"], parsed["ok"], parsed["metrics"]) == ("generate", True, {"candidates": 32000})


def test_a_summary_with_a_huge_error_is_still_valid_json():
    summary = {"stage": "sft", "iteration": 1, "ok": False, "reason": "InvalidConfig", "error": "bad row\n" * 1000}

    line = summary_line(summary)

    assert len(line.encode()) <= TERMINATION_LIMIT
    assert json.loads(line)["truncated"] is True


def test_a_shortened_failure_summary_keeps_its_reason_and_permanence():
    summary = {"stage": "sft", "ok": False, "permanent": True, "reason": "InvalidConfig", "error": "x" * 5000}

    parsed = json.loads(summary_line(summary))

    assert parsed["truncated"] is True
    assert (parsed["reason"], parsed["permanent"]) == ("InvalidConfig", True)


def test_a_chain_leaves_one_summary_line_per_stage_in_the_termination_message(tmp_path, monkeypatch):
    from selfreward.trainer import contract

    log = tmp_path / "termination-log"
    log.write_text("")
    monkeypatch.setattr(contract, "TERMINATION_LOG", log)
    monkeypatch.setattr(contract, "_reported", [])
    monkeypatch.setattr(contract, "_summary_stream", sys.stdout)
    big = {"ok": True, "metrics": {f"metric{i}": i for i in range(400)}}
    for stage in ("generate", "judge"):
        contract.report({"stage": stage, "iteration": 2, "attempt": 1, **big}, stages=2)

    lines = log.read_text().splitlines()
    assert [json.loads(line)["stage"] for line in lines] == ["generate", "judge"]
    assert len(log.read_text().encode()) <= TERMINATION_LIMIT


# --- who reports, under torchrun --------------------------------------------------------------


def test_in_a_pod_of_several_processes_the_first_summary_written_stays(tmp_path, monkeypatch):
    from selfreward.trainer import contract

    log = tmp_path / "termination-log"
    log.write_text('{"stage":"sft","ok":false,"reason":"NothingToTrain"}')  # what another rank wrote first
    monkeypatch.setattr(contract, "TERMINATION_LOG", log)
    monkeypatch.setattr(contract, "_reported", [])
    monkeypatch.setattr(contract, "_summary_stream", sys.stdout)
    monkeypatch.setenv("WORLD_SIZE", "2")

    contract.report({"stage": "sft", "ok": False, "reason": "ConnectionError"})

    assert json.loads(log.read_text())["reason"] == "NothingToTrain"


@pytest.mark.parametrize(("rank", "ok", "printed"), [
    pytest.param("0", True, True, id="rank-0-success"),
    pytest.param("1", True, False, id="other-rank-success"),
    pytest.param("0", False, True, id="rank-0-failure"),
    pytest.param("1", False, True, id="other-rank-failure"),
])
def test_rank_0_speaks_for_a_success_and_every_process_for_its_own_failure(monkeypatch, rank, ok, printed):
    monkeypatch.setenv("RANK", rank)

    assert reports({"stage": "sft", "ok": ok}) is printed


def test_a_process_nobody_launched_is_rank_0(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)

    assert reports({"stage": "sft", "ok": True})

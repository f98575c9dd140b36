"""Where training keeps its checkpoints: a rerun of the same stage resumes, nothing else does."""

from __future__ import annotations

from selfreward.trainer.contract import StageConfig
from selfreward.trainer.training import workdir
from tests.builders import ROOT, stage_config


def dpo_config(**overrides) -> StageConfig:
    fields = {
        "stage": "dpo",
        "shardCount": 1,
        "inputs": {"model": f"{ROOT}/iter-01/model", "pairs": f"{ROOT}/iter-02/pairs"},
        "outputs": {"model": f"{ROOT}/iter-02/model"},
        "runUid": "uid-1",
    }
    return StageConfig.model_validate(stage_config(**(fields | overrides)))


def test_the_same_stage_of_the_same_run_reuses_its_scratch():
    assert workdir(dpo_config()) == workdir(dpo_config(attempt=2))


def test_a_new_run_with_the_same_name_starts_clean():
    assert workdir(dpo_config()) != workdir(dpo_config(runUid="uid-2"))


def test_the_same_run_writing_elsewhere_starts_clean():
    assert workdir(dpo_config()) != workdir(dpo_config(outputs={"model": "s3://other/iter-02/model"}))

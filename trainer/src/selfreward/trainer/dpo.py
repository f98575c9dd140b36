"""Stage `dpo`: M_t -> M_(t+1) by DPO on the pairs M_t generated and judged; M_t is also the reference."""

from __future__ import annotations

from typing import Any

from selfreward.trainer.contract import StageConfig
from selfreward.trainer.judge import PAIRS_FILE
from selfreward.trainer.stagekit import StageResult, read_sharded
from selfreward.trainer.storage import Storage
from selfreward.trainer import training


def run(config: StageConfig, storage: Storage, model_dir_for) -> StageResult:
    return training.run_stage(config, storage, model_dir_for, lambda: _recipe(config, storage))


def preference_rows(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "prompt": [{"role": "user", "content": pair["prompt"]}],
            "chosen": [{"role": "assistant", "content": pair["chosen"]}],
            "rejected": [{"role": "assistant", "content": pair["rejected"]}],
        }
        for pair in pairs
    ]


def _recipe(config: StageConfig, storage: Storage) -> training.Recipe:
    from trl import DPOConfig, DPOTrainer

    section = config.section("dpo")
    pairs = read_sharded(storage, config.input("pairs"), PAIRS_FILE, config.input_shard_count("pairs"))
    if not pairs:
        raise training.NothingToTrain(
            f"{config.input('pairs')} holds no preference pairs: every prompt was a tie, a parse failure or below "
            "pairs.minScoreGap (see the judge stage's metrics). Retrying makes the same pairs: lower "
            "pairs.minScoreGap, raise promptGeneration.promptsPerIteration, or use constrainedScore"
        )
    return training.Recipe(
        section="dpo",
        trainer_class=DPOTrainer,
        config_class=DPOConfig,
        options={"beta": section["beta"], "loss_type": [section["lossType"]], "disable_dropout": section["dropout"] == 0},
        rows=preference_rows(pairs),
        sequences=lambda row: [row["prompt"] + row["chosen"], row["prompt"] + row["rejected"]],
        over_length_metric="sequencesOverMaxLength",
        metrics={"pairs": len(pairs)},
        logs={"loss": "finalLoss", "rewards/accuracies": "rewardAccuracy", "rewards/margins": "rewardMargin"},
        trainer_options={"ref_model": None},
    )

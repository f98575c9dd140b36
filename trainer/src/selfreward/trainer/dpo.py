"""Stage `dpo`: M_t -> M_(t+1) by DPO on the pairs M_t generated and judged; M_t is also the reference."""

from __future__ import annotations

from typing import Any

from selfreward.trainer.contract import StageConfig
from selfreward.trainer.judge import PAIRS_FILE
from selfreward.trainer.stagekit import StageResult, read_sharded, run_single
from selfreward.trainer.storage import Storage
from selfreward.trainer import training


def run(config: StageConfig, storage: Storage, model_dir_for) -> StageResult:
    output = config.output("model")
    return run_single(config, storage, output, lambda: _train(config, storage, model_dir_for, output))


def preference_rows(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "prompt": [{"role": "user", "content": pair["prompt"]}],
            "chosen": [{"role": "assistant", "content": pair["chosen"]}],
            "rejected": [{"role": "assistant", "content": pair["rejected"]}],
        }
        for pair in pairs
    ]


def _train(config: StageConfig, storage: Storage, model_dir_for, output: str) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    section = config.section("dpo")
    pairs = read_sharded(storage, config.input("pairs"), PAIRS_FILE)
    if not pairs:
        raise training.NothingToTrain(
            f"{config.input('pairs')} holds no preference pairs: every prompt was a tie, a parse failure or below "
            "pairs.minScoreGap (see the judge stage's metrics)"
        )
    model_dir = model_dir_for(config.input("model"))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = preference_rows(pairs)
    too_long = training.count_over_length(
        tokenizer, [r["prompt"] + r[side] for r in rows for side in ("chosen", "rejected")], section["maxLength"]
    )
    scratch = training.workdir(config)
    arguments = training.training_arguments(section, len(pairs), scratch, config.random_seed)
    trainer = DPOTrainer(
        model=training.load_model(model_dir, section["dropout"]),
        ref_model=None,
        args=DPOConfig(
            **arguments,
            beta=section["beta"],
            loss_type=[section["lossType"]],
            disable_dropout=section["dropout"] == 0,
        ),
        train_dataset=Dataset.from_list(rows).shuffle(seed=config.random_seed),
        processing_class=tokenizer,
        callbacks=[training.progress_callback(config.stage.value)],
    )
    result = trainer.train(resume_from_checkpoint=training.last_checkpoint(scratch))
    metrics = {
        "pairs": len(pairs),
        "sequencesOverMaxLength": too_long,
        "steps": trainer.state.global_step,
        "trainLoss": float(result.training_loss),
        **training.final_logs(
            trainer.state.log_history,
            {"loss": "finalLoss", "rewards/accuracies": "rewardAccuracy", "rewards/margins": "rewardMargin"},
        ),
    }
    training.commit_model(trainer, trainer.processing_class, storage, output, config, metrics)
    return metrics

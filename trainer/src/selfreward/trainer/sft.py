"""Stage `sft`: M0 -> M1 by supervised fine-tuning on seed IFT (and EFT) data, loss on targets only.

IFT rows train instruction following; EFT rows train judging: the input is the judge prompt
filled with a prompt and a response, the target is the justification and the score line.
"""

from __future__ import annotations

from typing import Any

from selfreward.trainer.contract import StageConfig
from selfreward.trainer.data import EvaluationRow, InstructionRow, read_rows, score_in_range
from selfreward.trainer.rubric import SCORE_LINE_PREFIX, render_judge_prompt
from selfreward.trainer.stagekit import StageResult
from selfreward.trainer.storage import Storage
from selfreward.trainer import training


def run(config: StageConfig, storage: Storage, model_dir_for) -> StageResult:
    return training.run_stage(config, storage, model_dir_for, lambda: _recipe(config, storage))


def conversations(
    instructions: list[InstructionRow], evaluations: list[EvaluationRow], judge: dict[str, Any]
) -> list[dict[str, Any]]:
    """Prompt-completion rows in chat form; TRL computes the loss on completions only.

    Judge examples use the judge prompt exactly as the judge stage will: the spec's template and
    score range (`judge` holds `template`, optional, and `scoreRange`).
    """
    low, high = judge["scoreRange"]["min"], judge["scoreRange"]["max"]
    rows = [_turn(row.prompt, row.response) for row in instructions]
    rows += [
        _turn(render_judge_prompt(row.prompt, row.response, judge.get("template"), low, high),
              f"{row.justification.strip()}\n{SCORE_LINE_PREFIX}{row.score}")
        for row in evaluations
    ]
    return rows


def _turn(user: str, assistant: str) -> dict[str, Any]:
    return {"prompt": [{"role": "user", "content": user}], "completion": [{"role": "assistant", "content": assistant}]}


def _recipe(config: StageConfig, storage: Storage) -> training.Recipe:
    from trl import SFTConfig, SFTTrainer

    judge = config.section("judge")
    instructions = read_rows(storage, config.input("instructions"), InstructionRow)
    evaluations = (
        read_rows(storage, config.input("evaluations"), EvaluationRow,
                  score_in_range(judge["scoreRange"]["min"], judge["scoreRange"]["max"]))
        if config.section("sft")["includeEvaluations"]
        else []
    )
    rows = conversations(instructions, evaluations, judge)
    return training.Recipe(
        section="sft",
        trainer_class=SFTTrainer,
        config_class=SFTConfig,
        options={"completion_only_loss": True, "packing": False, "dataset_num_proc": None},
        rows=rows,
        sequences=lambda row: [row["prompt"] + row["completion"]],
        over_length_metric="examplesOverMaxLength",
        metrics={
            "examples": len(rows),
            "instructionExamples": len(instructions),
            "evaluationExamples": len(evaluations),
        },
    )

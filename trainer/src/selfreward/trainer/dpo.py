"""Stage `dpo`: M_t -> M_(t+1) by DPO on the pairs M_t generated and judged; M_t is also the reference.

The reference enters the loss as log-probabilities of each pair's responses. By default they are
computed once, before training, so no second copy of the model stays in memory (what makes 8B
DPO fit one node); `reference: model` keeps the copy and evaluates it on every batch instead.
"""

from __future__ import annotations

from typing import Any

from selfreward.trainer.contract import ConfigError, StageConfig
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


def reference_in_memory_trainer():
    """TRL's DPOTrainer, its precomputed reference log-probs kept in memory by every process.

    TRL writes them to a cache file that only the global main process writes and then every
    process reads back, which the processes of other nodes (other pods) cannot see. And under
    DeepSpeed it wraps the policy in a second engine to compute them, which breaks ZeRO-3's
    parameter tracing once training starts ("pop from an empty deque"). Here M_t is loaded once
    more for the purpose (sharded under ZeRO-3) and dropped before training; the gathered values
    are already in every process.
    """
    from trl import DPOTrainer

    class DPOTrainerReferenceInMemory(DPOTrainer):
        def _precompute_ref_logps(self, dataset, name, batch_size):
            import gc

            import torch
            from torch.utils.data import DataLoader

            loader = self.accelerator.prepare(DataLoader(dataset, batch_size=batch_size, collate_fn=self.data_collator,
                                                         shuffle=False))
            reference = self._reference_for_precompute()
            chosen, rejected = [], []
            for batch in loader:
                batch_chosen, batch_rejected = self.accelerator.gather_for_metrics(self.compute_ref_log_probs(reference, batch))
                chosen.append(batch_chosen.float().cpu())
                rejected.append(batch_rejected.float().cpu())
            del reference
            gc.collect()  # a DeepSpeed engine holds reference cycles: free the copy before training
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return (dataset.add_column("ref_chosen_logps", torch.cat(chosen).numpy())
                    .add_column("ref_rejected_logps", torch.cat(rejected).numpy()))

        def _reference_for_precompute(self):
            """M_t: the policy itself before training (with LoRA, its adapters are turned off while
            it runs), or under DeepSpeed a copy in an engine of its own."""
            if not self.is_deepspeed_enabled:
                return self.ref_model or self.model
            from transformers import AutoModelForCausalLM
            from trl.models import prepare_deepspeed
            from trl.trainer.utils import add_fused_lm_head

            copy = AutoModelForCausalLM.from_pretrained(self.model.config.name_or_path, dtype=self.model.dtype)
            add_fused_lm_head(copy)  # as TRL prepares its own reference model
            return prepare_deepspeed(copy, self.accelerator)

    return DPOTrainerReferenceInMemory


def _recipe(config: StageConfig, storage: Storage) -> training.Recipe:
    from trl import DPOConfig, DPOTrainer

    section = config.section("dpo")
    reference = config.how_to_train().reference
    if reference is None:
        raise ConfigError("config.execution.reference is missing: stage dpo needs it")
    precomputed = reference == "precomputed"
    pairs = read_sharded(storage, config.input("pairs"), PAIRS_FILE, config.input_shard_count("pairs"))
    if not pairs:
        raise training.NothingToTrain(
            f"{config.input('pairs')} holds no preference pairs: every prompt was a tie, a parse failure or below "
            "pairs.minScoreGap (see the judge stage's metrics). Retrying makes the same pairs: lower "
            "pairs.minScoreGap, raise promptGeneration.promptsPerIteration, or use constrainedScore"
        )
    return training.Recipe(
        section="dpo",
        trainer_class=reference_in_memory_trainer() if precomputed else DPOTrainer,
        config_class=DPOConfig,
        options={"beta": section["beta"], "loss_type": [section["lossType"]], "disable_dropout": section["dropout"] == 0,
                 "precompute_ref_log_probs": precomputed},
        rows=preference_rows(pairs),
        sequences=lambda row: [row["prompt"] + row["chosen"], row["prompt"] + row["rejected"]],
        over_length_metric="sequencesOverMaxLength",
        metrics={"pairs": len(pairs)},
        logs={"loss": "finalLoss", "rewards/accuracies": "rewardAccuracy", "rewards/margins": "rewardMargin"},
        trainer_options={"ref_model": None},
    )

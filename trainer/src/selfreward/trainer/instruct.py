"""Stage `instruct`: the model writes new prompts few-shot; filters keep the usable ones.

Each request shows `fewShot.fromSeed` seed prompts and `fewShot.fromGenerated` prompts from
earlier iterations (or this one, once some are kept; seed prompts stand in at first). Sampling
goes in rounds until `promptsPerIteration` survive the filters or `maxRounds` is spent.
"""

from __future__ import annotations

import math
from typing import Any

from selfreward.trainer.backends import Backend, Sampling
from selfreward.trainer.contract import StageConfig
from selfreward.trainer.data import InstructionRow, read_rows
from selfreward.trainer.failures import PermanentFailure
from selfreward.trainer.filters import (
    PromptFilterConfig,
    RejectReason,
    build_fewshot_prompt,
    extract_prompt,
    filter_prompts,
)
from selfreward.trainer.progress import Progress
from selfreward.trainer.stagekit import StageResult, rng_for, run_single, sampling_seed
from selfreward.trainer.storage import Storage

PROMPTS_FILE = "prompts.jsonl"


class TooFewPrompts(PermanentFailure, RuntimeError):
    """Fewer prompts than `minPrompts` survived the filters: the same seed gives the same prompts."""


def run(config: StageConfig, storage: Storage, backend_for) -> StageResult:
    output = config.output("prompts")
    return run_single(config, storage, output, lambda: _make_prompts(config, storage, backend_for, output))


def _make_prompts(config: StageConfig, storage: Storage, backend_for, output: str) -> dict[str, Any]:
    section = config.section("promptGeneration")
    seed_prompts = [row.prompt for row in read_rows(storage, config.input("instructions"), InstructionRow)]
    earlier = [
        row["prompt"] for folder in config.input_list("earlierPrompts") for row in storage.read_committed_jsonl(folder, PROMPTS_FILE)
    ]
    filters = section["filters"]
    filter_config = PromptFilterConfig(
        min_words=filters["minWords"],
        max_words=filters["maxWords"],
        banned_keywords=tuple(filters["bannedKeywords"]),
        rouge_l_threshold=filters["rougeLThreshold"],
    )
    backend: Backend = backend_for(config.input("model"))
    target = section["promptsPerIteration"]
    rng = rng_for(config)
    kept: list[str] = []
    rejected = {reason.value: 0 for reason in RejectReason}
    sampled = 0
    progress = Progress(config.stage.value, 0, target, "prompts")
    for round_number in range(section["maxRounds"]):
        missing = target - len(kept)
        if missing <= 0:
            break
        requests = math.ceil(missing * section["oversample"])
        fewshot = [
            build_fewshot_prompt(_examples(rng, seed_prompts, earlier + kept, section["fewShot"])) for _ in range(requests)
        ]
        sampling = Sampling(
            n=1,
            temperature=section["temperature"],
            top_p=section["topP"],
            max_tokens=section["maxTokens"],
            seed=sampling_seed(config, round_number),
            stop=("\nTask:", "\n\n"),
        )
        outputs = backend.generate(fewshot, sampling)
        sampled += len(outputs)
        candidates = [extract_prompt(samples[0].text) or "" for samples in outputs]
        result = filter_prompts(candidates, seed_prompts + earlier + kept, filter_config)
        kept.extend(result.kept[:missing])
        for reason, count in result.rejected.items():
            rejected[reason.value] += count
        progress.set(len(kept))
    progress.finish()
    metrics = {
        "promptsKept": len(kept),
        "promptsSampled": sampled,
        **{f"rejected{reason}": count for reason, count in rejected.items()},
    }
    if len(kept) < section["minPrompts"]:
        raise TooFewPrompts(
            f"{len(kept)} prompts survived the filters, fewer than promptGeneration.minPrompts="
            f"{section['minPrompts']} (sampled {sampled}; rejected: "
            + ", ".join(f"{k} {v}" for k, v in rejected.items() if v)
            + "). A retry samples the same prompts: raise promptGeneration.maxRounds or oversample, "
            "loosen promptGeneration.filters, or lower minPrompts"
        )
    rows = [{"id": f"i{config.iteration:02d}-p{number:06d}", "prompt": prompt} for number, prompt in enumerate(kept)]
    files = storage.write_jsonl_file(output, PROMPTS_FILE, rows)
    storage.commit(output, files, stage="instruct", iteration=config.iteration, counts={"prompts": len(rows)}, metrics=metrics)
    return metrics


def _examples(rng, seed_prompts: list[str], generated: list[str], few_shot: dict[str, int]) -> list[str]:
    from_seed = rng.sample(seed_prompts, min(few_shot["fromSeed"], len(seed_prompts)))
    pool = generated if len(generated) >= few_shot["fromGenerated"] else [p for p in seed_prompts if p not in from_seed]
    from_generated = rng.sample(pool, min(few_shot["fromGenerated"], len(pool)))
    examples = from_seed + from_generated
    rng.shuffle(examples)
    return examples

"""Stage `compare`: M_t's answers to the held-out prompts against M_(t-1)'s, head to head.

Both answers come from the evaluate stages of iterations t and t-1 (`responses.jsonl`). The judge
(M_t by default, or the fixed model evaluation.headToHead.judge names, as the paper used an
outside judge) compares them in both orders, greedily so that the measurement repeats; the
outcomes per prompt and their counts are in pairwise.py. With judge.constrainedScore a judgement
without a verdict gets one by constrained decoding, as scores do (counted as constrainedVerdicts).
"""

from __future__ import annotations

from typing import Any

from selfreward.trainer.backends import Sampling
from selfreward.trainer.constrained import plan_choices, walk
from selfreward.trainer.contract import StageConfig
from selfreward.trainer.evaluate import RESPONSES_FILE
from selfreward.trainer.failures import PermanentFailure
from selfreward.trainer.pairwise import VERDICT_CHOICES, outcome, parse_verdict, render_comparison, tally, verdict_head
from selfreward.trainer.progress import Progress
from selfreward.trainer.stagekit import StageResult, run_single, sampling_seed
from selfreward.trainer.storage import Storage

VERDICTS_FILE = "verdicts.jsonl"


class ResponsesMismatch(PermanentFailure, ValueError):
    """The two models answered different held-out prompts (the holdout file changed between them)."""


def run(config: StageConfig, storage: Storage, backend_for) -> StageResult:
    output = config.output("comparison")
    return run_single(config, storage, output, lambda: _compare(config, storage, backend_for, output))


def _compare(config: StageConfig, storage: Storage, backend_for, output: str) -> dict[str, Any]:
    new = storage.read_committed_jsonl(config.input("responses"), RESPONSES_FILE)
    old = storage.read_committed_jsonl(config.input("previousResponses"), RESPONSES_FILE)
    if [row["prompt"] for row in new] != [row["prompt"] for row in old]:
        raise ResponsesMismatch(f"{config.input('responses')} and {config.input('previousResponses')} answer different "
                                "held-out prompts: was seed.evaluationHoldout changed between iterations?")
    backend = backend_for(config.input("model"))
    comparisons = []
    for a, b in zip(new, old):
        comparisons += [render_comparison(a["prompt"], a["response"], b["response"]),
                        render_comparison(a["prompt"], b["response"], a["response"])]
    prompts = backend.render_chat(comparisons)
    seed = sampling_seed(config, 0)
    sampling = Sampling(n=1, temperature=0.0, top_p=1.0, max_tokens=config.section("evaluation")["headToHead"]["maxTokens"], seed=seed)
    progress = Progress(config.stage.value, 0, len(prompts), "judgements")
    texts = [samples[0].text for samples in backend.generate(prompts, sampling, progress)]
    progress.finish()
    verdicts = [parse_verdict(text) for text in texts]
    failures = [index for index, verdict in enumerate(verdicts) if verdict is None]
    constrained = set()
    if failures and config.section("judge")["constrainedScore"]:
        heads = [verdict_head(texts[i]) for i in failures]
        tries = [plan_choices(backend.encode, prompts[i] + head, [" " + c for c in VERDICT_CHOICES]) for i, head in zip(failures, heads)]
        picked = walk(tries, lambda steps, round_number: backend.pick_tokens(steps, 0.0, seed + round_number))
        for index, head, choice in zip(failures, heads, picked):
            texts[index], verdicts[index] = head + choice, choice.strip()
            constrained.add(index)
    rows, outcomes = [], []
    for position, (a, b) in enumerate(zip(new, old)):
        first, second = 2 * position, 2 * position + 1
        result = outcome(verdicts[first], verdicts[second])
        outcomes.append(result)
        rows.append({"id": a["id"], "prompt": a["prompt"], "new": a["response"], "old": b["response"],
                     "judgements": [texts[first], texts[second]], "verdicts": [verdicts[first], verdicts[second]],
                     "constrained": [first in constrained, second in constrained], "outcome": result})
    metrics = {**tally(outcomes), "verdictParseFailures": len(failures), "constrainedVerdicts": len(constrained),
               "comparisons": len(texts)}
    files = storage.write_jsonl_file(output, VERDICTS_FILE, rows)
    storage.commit(output, files, stage="compare", iteration=config.iteration, metrics=metrics)
    return metrics

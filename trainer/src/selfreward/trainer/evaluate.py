"""Stage `evaluate`: how a model judges and how it answers, on the held-out prompts.

Reward model: the model judges every held-out response with the run's judge settings; a response
with fewer than pairs.minValidJudgements valid judgements is unscored (the same rule as for
pairs), and the scores are compared with the human ranking (pairwise accuracy, 5-best, exact
match, Spearman, Kendall tau; see metrics.py).

Answers: the model answers each held-out prompt once with the run's generation settings
(`responses.jsonl`): their mean length is comparable across iterations (the paper saw it grow),
and the compare stage judges them head to head against the previous model's.
"""

from __future__ import annotations

import json
from typing import Any

from selfreward.trainer.backends import Sampling
from selfreward.trainer.contract import StageConfig
from selfreward.trainer.data import HoldoutRow, read_rows
from selfreward.trainer.judging import judge_responses, judgement_counts
from selfreward.trainer.metrics import RankedPrompt, reward_model_metrics
from selfreward.trainer.pairs import mean_score, valid_scores
from selfreward.trainer.progress import Progress
from selfreward.trainer.stagekit import StageResult, run_single, sampling_seed
from selfreward.trainer.storage import Storage, join, sha256_bytes

JUDGEMENTS_FILE = "judgements.jsonl"
METRICS_FILE = "metrics.json"
RESPONSES_FILE = "responses.jsonl"


def run(config: StageConfig, storage: Storage, backend_for) -> StageResult:
    output = config.output("evaluation")
    return run_single(config, storage, output, lambda: _evaluate(config, storage, backend_for, output))


def _evaluate(config: StageConfig, storage: Storage, backend_for, output: str) -> dict[str, Any]:
    section = config.section("judge")
    min_valid = config.section("pairs")["minValidJudgements"]
    holdout = read_rows(storage, config.input("holdout"), HoldoutRow)
    items = [(row.prompt, response.text) for row in holdout for response in row.responses]
    backend = backend_for(config.input("model"))
    progress = Progress(config.stage.value, 0, len(items) * section["samples"], "judgements")
    all_judged = judge_responses(backend, items, section, sampling_seed(config, 0), progress)
    judged = iter(all_judged)
    progress.finish()

    ranked, rows = [], []
    for row in holdout:
        per_response = [next(judged) for _ in row.responses]
        scores = [[j.score for j in js] for js in per_response]
        ranked.append(RankedPrompt(tuple(r.rank for r in row.responses), tuple(valid_scores(s, min_valid) for s in scores)))
        rows.append({
            "prompt": row.prompt,
            "responses": [
                {"rank": r.rank, "mean": mean_score(s, min_valid), "scores": s, "constrained": [j.constrained for j in js]}
                for r, s, js in zip(row.responses, scores, per_response)
            ],
        })
    found = reward_model_metrics(ranked, top_score=section["scoreRange"]["max"])
    metrics = {_camel(k): v for k, v in found.items() if v is not None}
    metrics.update(judgement_counts([j for js in all_judged for j in js]))
    answers = _answer(config, backend, [row.prompt for row in holdout])
    metrics.update(responses=len(answers), responseChars=sum(len(a["response"]) for a in answers),
                   truncatedResponses=sum(a["truncated"] for a in answers))
    files = storage.write_jsonl_file(output, JUDGEMENTS_FILE, rows)
    files |= storage.write_jsonl_file(output, RESPONSES_FILE, answers)
    metrics_bytes = (json.dumps(found, indent=2, sort_keys=True) + "\n").encode()
    storage.write_bytes(join(output, METRICS_FILE), metrics_bytes)
    files[METRICS_FILE] = sha256_bytes(metrics_bytes)
    storage.commit(output, files, stage="evaluate", iteration=config.iteration, metrics=metrics)
    return metrics


def _answer(config: StageConfig, backend, prompts: list[str]) -> list[dict[str, Any]]:
    """One answer per held-out prompt, sampled as candidates are (generation section, n = 1)."""
    section = config.section("generation")
    sampling = Sampling(n=1, temperature=section["temperature"], top_p=section["topP"],
                        max_tokens=section["maxTokens"], seed=sampling_seed(config, 1))
    progress = Progress(config.stage.value, 0, len(prompts), "responses")
    completions = backend.generate(backend.render_chat(prompts), sampling, progress)
    progress.finish()
    return [{"id": f"h{index}", "prompt": prompt, "response": samples[0].text, "truncated": samples[0].truncated}
            for index, (prompt, samples) in enumerate(zip(prompts, completions, strict=True))]


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)

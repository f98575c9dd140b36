"""Scoring responses with the model as its own judge (used by `judge` and `evaluate`).

The judge writes a justification and a `Score: N` line freely (up to judge.maxTokens), and the
score is parsed. A judgement with no valid score is a parse failure: counted, never guessed.
With `constrainedScore`, a parse failure then gets a score by constrained decoding: its text is
cut at its last score label (or given a last line "Score:") and the score is sampled from the
model restricted to the valid values, each tokenized in context (constrained.py). Such a
judgement is marked `constrained`; it is still counted as a parse failure (the model did not
score it itself) and also as a constrained score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from selfreward.trainer.backends import Backend, Sampling
from selfreward.trainer.constrained import plan_choices, walk
from selfreward.trainer.progress import Progress
from selfreward.trainer.rubric import parse_score, render_judge_prompt, score_choices, score_head


@dataclass(frozen=True)
class Judgement:
    """One judgement. constrained: its score came from constrained decoding, not from the
    model's own score line. truncated: the free-written text was cut off at maxTokens."""

    text: str
    score: int | None
    constrained: bool = False
    truncated: bool = False


def judge_responses(
    backend: Backend,
    items: Sequence[tuple[str, str]],
    section: dict[str, Any],
    seed: int,
    progress: Progress | None = None,
) -> list[list[Judgement]]:
    """`section["samples"]` judgements of each (prompt, response), in order, batched."""
    low, high = section["scoreRange"]["min"], section["scoreRange"]["max"]
    template = section.get("template")
    prompts = backend.render_chat([render_judge_prompt(p, r, template, low, high) for p, r in items])
    sampling = Sampling(
        n=section["samples"],
        temperature=section["temperature"],
        top_p=section["topP"],
        max_tokens=section["maxTokens"],
        seed=seed,
    )
    completions = backend.generate(prompts, sampling, progress)
    judged = [
        [Judgement(c.text, parse_score(c.text, low, high), truncated=c.truncated) for c in samples]
        for samples in completions
    ]
    if section["constrainedScore"]:
        _constrain_unscored(backend, prompts, judged, low, high, section["temperature"], seed + 1)
    return judged


def _constrain_unscored(
    backend: Backend,
    prompts: Sequence[str],
    judged: list[list[Judgement]],
    low: int,
    high: int,
    temperature: float,
    seed: int,
) -> None:
    """Give every judgement without a valid score one by constrained decoding, in place."""
    missing = [(i, k) for i, samples in enumerate(judged) for k, j in enumerate(samples) if j.score is None]
    if not missing:
        return
    choices = [" " + choice for choice in score_choices(low, high)]  # the label is followed by a space
    heads = [score_head(judged[i][k].text) for i, k in missing]
    tries = [plan_choices(backend.encode, prompts[i] + head, choices) for (i, _), head in zip(missing, heads)]
    picked = walk(tries, lambda steps, round_number: backend.pick_tokens(steps, temperature, seed + round_number))
    for (i, k), head, choice in zip(missing, heads, picked):
        judged[i][k] = Judgement(head + choice, int(choice), constrained=True, truncated=judged[i][k].truncated)


def judgement_counts(judgements: Sequence[Judgement]) -> dict[str, int]:
    """parseFailures: judgements the model did not score itself (also when a score was then
    constrained); constrainedScores: those scored by constrained decoding; truncatedJudgements:
    those whose free text was cut off at maxTokens."""
    return {
        "parseFailures": sum(1 for j in judgements if j.score is None or j.constrained),
        "constrainedScores": sum(1 for j in judgements if j.constrained),
        "truncatedJudgements": sum(1 for j in judgements if j.truncated),
    }


def score_counts(judgements: Sequence[Judgement], low: int, high: int) -> dict[str, int]:
    counts = {f"score{value}": 0 for value in range(low, high + 1)}
    for judgement in judgements:
        if judgement.score is not None:
            counts[f"score{judgement.score}"] += 1
    return counts

"""Scoring responses with the model as its own judge (used by `judge` and `evaluate`).

Without constrained decoding, the judge writes a justification and a `Score: N` line that is
parsed; a judgement with no valid score is a parse failure, counted and never guessed. With
`constrainedScore`, the justification stops at the score line and the score itself is decoded
constrained to the valid digits, so weak models still give a parseable score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from selfreward.trainer.backends import Backend, Sampling
from selfreward.trainer.progress import Progress
from selfreward.trainer.rubric import SCORE_LINE_PREFIX, parse_score, render_judge_prompt, score_choices


@dataclass(frozen=True)
class Judgement:
    text: str
    score: int | None


def judge_responses(
    backend: Backend,
    items: Sequence[tuple[str, str]],
    section: dict[str, Any],
    seed: int,
    progress: Progress | None = None,
) -> list[list[Judgement]]:
    """`section["samples"]` judgements of each (prompt, response), in order, batched."""
    low, high = section["scoreRange"]["min"], section["scoreRange"]["max"]
    prompts = backend.render_chat([render_judge_prompt(p, r, section.get("template")) for p, r in items])
    constrained = section["constrainedScore"]
    sampling = Sampling(
        n=section["samples"],
        temperature=section["temperature"],
        top_p=section["topP"],
        max_tokens=section["maxTokens"],
        seed=seed,
        stop=(SCORE_LINE_PREFIX.strip(),) if constrained else (),
    )
    texts = backend.generate(prompts, sampling, progress)
    if not constrained:
        return [[Judgement(text, parse_score(text, low, high)) for text in samples] for samples in texts]
    heads = [(prompt, text.rstrip() + "\n" + SCORE_LINE_PREFIX) for prompt, samples in zip(prompts, texts) for text in samples]
    one = Sampling(1, section["temperature"], 1.0, 1, seed + 1)
    digits = backend.choose([prompt + head for prompt, head in heads], score_choices(low, high), one)
    flat = [Judgement(head + digit[0], int(digit[0])) for (_, head), digit in zip(heads, digits, strict=True)]
    per_item = section["samples"]
    return [flat[i * per_item : (i + 1) * per_item] for i in range(len(items))]


def mean_score(judgements: Sequence[Judgement]) -> float | None:
    scores = [j.score for j in judgements if j.score is not None]
    return sum(scores) / len(scores) if scores else None


def score_counts(judgements: Sequence[Judgement], low: int, high: int) -> dict[str, int]:
    counts = {f"score{value}": 0 for value in range(low, high + 1)}
    for judgement in judgements:
        if judgement.score is not None:
            counts[f"score{judgement.score}"] += 1
    return counts

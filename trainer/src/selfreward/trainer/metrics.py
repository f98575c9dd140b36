"""Reward-model metrics: how well the model's judge scores agree with human rankings.

The evaluation stage judges held-out prompts whose responses humans ranked, and these
functions compare the two, as the paper does: pairwise accuracy, 5-best, exact match,
Spearman and Kendall tau. Unparsed judgements (None) are counted and left out of each
metric's denominator, never replaced by a guess.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from statistics import fmean

from scipy.stats import kendalltau, spearmanr


@dataclass(frozen=True)
class RankedPrompt:
    """One prompt's responses: human ranks (1 = best, distinct) and mean judge scores."""

    human_ranks: tuple[int, ...]
    model_scores: tuple[float | None, ...]

    def __post_init__(self) -> None:
        if len(self.human_ranks) != len(self.model_scores):
            raise ValueError("human_ranks and model_scores must have one entry per response")
        if len(set(self.human_ranks)) != len(self.human_ranks):
            raise ValueError(f"human ranks must be distinct, got {self.human_ranks}")

    def scored_responses(self) -> list[tuple[int, float]]:
        """(human rank, model score) of the responses that have a score."""
        return [
            (rank, score)
            for rank, score in zip(self.human_ranks, self.model_scores)
            if score is not None
        ]

    @property
    def fully_scored(self) -> bool:
        return all(score is not None for score in self.model_scores)


def reward_model_metrics(
    prompts: Sequence[RankedPrompt], top_score: float = 5
) -> dict[str, float | int | None]:
    """All reward-model metrics; fractions are in 0..1 and None when nothing was measurable.

    - pairwise_accuracy: over response pairs of a prompt that both have a score, the share
      where the model scores the human-better one strictly higher (a model tie is wrong).
    - five_best: among responses scored exactly top_score, the share that are their
      prompt's human top response (lowest rank, normally 1).
    - exact_match: among prompts with at least two responses, all scored, the share where
      the model's scores strictly decrease along the human order (no ties).
    - spearman, kendall_tau: per prompt, between the scores and the negated human ranks of
      its scored responses, averaged over the prompts where they are defined (at least two
      scored responses whose scores are not all equal).
    """
    correct_pairs, pairs_evaluated = _pairwise_counts(prompts)
    five_best_hits, top_scored = _five_best_counts(prompts, top_score)
    exact_candidates = [p for p in prompts if p.fully_scored and len(p.human_ranks) >= 2]
    correlations = _per_prompt_correlations(prompts)
    return {
        "prompts": len(prompts),
        "unscored_responses": sum(p.model_scores.count(None) for p in prompts),
        "pairs_evaluated": pairs_evaluated,
        "pairwise_accuracy": _fraction(correct_pairs, pairs_evaluated),
        "five_best_responses": top_scored,
        "five_best": _fraction(five_best_hits, top_scored),
        "exact_match_prompts": len(exact_candidates),
        "exact_match": _fraction(
            sum(1 for p in exact_candidates if _matches_human_order(p)), len(exact_candidates)
        ),
        "correlation_prompts": len(correlations),
        "spearman": fmean(rho for rho, _ in correlations) if correlations else None,
        "kendall_tau": fmean(tau for _, tau in correlations) if correlations else None,
    }


def _pairwise_counts(prompts: Sequence[RankedPrompt]) -> tuple[int, int]:
    correct = evaluated = 0
    for prompt in prompts:
        for (rank_a, score_a), (rank_b, score_b) in combinations(prompt.scored_responses(), 2):
            evaluated += 1
            human_prefers_a = rank_a < rank_b
            model_prefers_a = score_a > score_b
            model_prefers_b = score_b > score_a
            correct += model_prefers_a if human_prefers_a else model_prefers_b
    return correct, evaluated


def _five_best_counts(prompts: Sequence[RankedPrompt], top_score: float) -> tuple[int, int]:
    hits = top_scored = 0
    for prompt in prompts:
        best_rank = min(prompt.human_ranks, default=None)
        for rank, score in prompt.scored_responses():
            if score == top_score:
                top_scored += 1
                hits += rank == best_rank
    return hits, top_scored


def _matches_human_order(prompt: RankedPrompt) -> bool:
    scores_in_human_order = [score for _, score in sorted(prompt.scored_responses())]
    return all(
        better > worse for better, worse in zip(scores_in_human_order, scores_in_human_order[1:])
    )


def _per_prompt_correlations(prompts: Sequence[RankedPrompt]) -> list[tuple[float, float]]:
    """(Spearman, Kendall tau) of each prompt where both are defined."""
    correlations = []
    for prompt in prompts:
        scored = prompt.scored_responses()
        scores = [score for _, score in scored]
        if len(set(scores)) < 2:
            continue  # fewer than two scores, or all equal: undefined (scipy says NaN)
        negated_ranks = [-rank for rank, _ in scored]
        spearman = float(spearmanr(scores, negated_ranks).statistic)
        kendall = float(kendalltau(scores, negated_ranks).statistic)
        if not (math.isnan(spearman) or math.isnan(kendall)):
            correlations.append((spearman, kendall))
    return correlations


def _fraction(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None

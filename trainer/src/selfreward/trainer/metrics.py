"""Reward-model metrics: how well the model's judge scores agree with human rankings.

The evaluation stage judges held-out prompts whose responses humans ranked, and these
functions compare the two, as the paper does: pairwise accuracy, 5-best, exact match,
Spearman and Kendall tau. Unscored responses (fewer valid judgements than
pairs.minValidJudgements, see pairs.valid_scores) are counted and left out of each metric's
denominator, never replaced by a guess.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from statistics import fmean

from scipy.stats import kendalltau, spearmanr

from selfreward.trainer.pairs import mean_score


@dataclass(frozen=True)
class RankedPrompt:
    """One prompt's responses: human ranks (1 = best, distinct) and the model's judge scores.

    judge_scores holds, per response, the valid scores of its K judgements (pairs.valid_scores),
    or None when the response is unscored. A response's model score is their mean, as for pairs.
    """

    human_ranks: tuple[int, ...]
    judge_scores: tuple[tuple[int, ...] | None, ...]

    def __post_init__(self) -> None:
        if len(self.human_ranks) != len(self.judge_scores):
            raise ValueError("human_ranks and judge_scores must have one entry per response")
        if len(set(self.human_ranks)) != len(self.human_ranks):
            raise ValueError(f"human ranks must be distinct, got {self.human_ranks}")
        if any(scores is not None and not scores for scores in self.judge_scores):
            raise ValueError("a scored response needs at least one score; write None for an unscored one")

    @property
    def model_scores(self) -> tuple[float | None, ...]:
        """Each response's mean judge score; None for an unscored response."""
        return tuple(None if scores is None else mean_score(scores) for scores in self.judge_scores)

    def scored_responses(self) -> list[tuple[int, float]]:
        """(human rank, model score) of the responses that have a score."""
        return [
            (rank, score)
            for rank, score in zip(self.human_ranks, self.model_scores)
            if score is not None
        ]

    @property
    def fully_scored(self) -> bool:
        return all(scores is not None for scores in self.judge_scores)


def reward_model_metrics(
    prompts: Sequence[RankedPrompt], top_score: int = 5
) -> dict[str, float | int | None]:
    """All reward-model metrics; fractions are in 0..1 and None when nothing was measurable.

    - pairwise_accuracy: over response pairs of a prompt that both have a score, the share
      where the model's mean score is strictly higher for the human-better one (a tie is wrong).
    - five_best: the paper (Yuan et al. 2024, reward-modeling metrics) reports how often the
      responses the model scores a perfect top_score ("5 out of 5") are the ones humans
      ranked highest. The paper's judge gives a response one score per judgement, and each of
      the K sampled judgements is one such scoring: so five_best is, over every valid
      judgement of a scored response that gives exactly top_score, the share whose response
      is its prompt's human top (lowest rank, normally 1). It estimates the paper's quantity
      whatever K is; requiring the mean of K samples to equal top_score would instead count
      only unanimous 5s, a stricter event that grows rarer as K grows.
      five_best_judgements is its denominator.
    - exact_match: among prompts with at least two responses, all scored, the share where
      the model's mean scores strictly decrease along the human order (no ties).
    - spearman, kendall_tau: per prompt, between the mean scores and the negated human ranks
      of its scored responses, averaged over the prompts where they are defined (at least two
      scored responses whose scores are not all equal).
    """
    correct_pairs, pairs_evaluated = _pairwise_counts(prompts)
    five_best_hits, top_scored = _five_best_counts(prompts, top_score)
    exact_candidates = [p for p in prompts if p.fully_scored and len(p.human_ranks) >= 2]
    correlations = _per_prompt_correlations(prompts)
    return {
        "prompts": len(prompts),
        "unscored_responses": sum(p.judge_scores.count(None) for p in prompts),
        "pairs_evaluated": pairs_evaluated,
        "pairwise_accuracy": _fraction(correct_pairs, pairs_evaluated),
        "five_best_judgements": top_scored,
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


def _five_best_counts(prompts: Sequence[RankedPrompt], top_score: int) -> tuple[int, int]:
    """(judgements giving top_score to their prompt's human top, judgements giving top_score)."""
    hits = top_scored = 0
    for prompt in prompts:
        best_rank = min(prompt.human_ranks, default=None)
        for rank, scores in zip(prompt.human_ranks, prompt.judge_scores):
            if scores is None:
                continue
            tops = scores.count(top_score)
            top_scored += tops
            hits += tops if rank == best_rank else 0
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

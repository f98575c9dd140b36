"""Preference-pair selection: from judged candidates of one prompt to one DPO pair, or a reason.

Each prompt has N candidate responses, each judged K times. A candidate competes only with at
least `min_valid_judgements` valid scores (pairs.minValidJudgements: a mean of one lucky parse
out of K is not a judgement); its score is then the mean of its valid scores. The pair is the
candidate with the highest mean score (chosen) against the one with the lowest (rejected).
Prompts that cannot give a pair are dropped with a reason, and the reasons are counted per
iteration: many ties or unscored prompts are the signs of a collapsing or illiterate judge.
This module holds the one rule for a response's score (`valid_scores`, `mean_score`), used by
the judge stage and the evaluation alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

# Means are averages of small integers; this only absorbs float rounding in the gap, so a
# gap of exactly min_score_gap is kept however the subtraction rounds.
_GAP_TOLERANCE = 1e-9


def valid_scores(scores: Iterable[int | None], min_valid: int = 1) -> tuple[int, ...] | None:
    """The valid scores of a response's judgements (None: unparsed), or None when fewer than
    `min_valid` (at least 1) are valid: the response is unscored."""
    if min_valid < 1:
        raise ValueError(f"min_valid must be >= 1, got {min_valid}")
    valid = tuple(score for score in scores if score is not None)
    return valid if len(valid) >= min_valid else None


def mean_score(scores: Iterable[int | None], min_valid: int = 1) -> float | None:
    """A response's score: the mean of its valid judge scores; None when it is unscored."""
    valid = valid_scores(scores, min_valid)
    return sum(valid) / len(valid) if valid is not None else None


@dataclass(frozen=True)
class JudgedCandidate:
    """One candidate response of a prompt and its K judge scores (None: unparsed judgement)."""

    index: int
    text: str
    scores: tuple[int | None, ...]

    @property
    def mean_score(self) -> float | None:
        """The mean of the valid scores (None when there is none); see `mean_score`."""
        return mean_score(self.scores)


class DropReason(str, Enum):
    TIE = "Tie"
    SCORE_GAP = "ScoreGapTooSmall"
    UNSCORED = "TooFewScored"


@dataclass(frozen=True)
class PairDecision:
    """The outcome for one prompt.

    chosen and rejected are set whenever at least two candidates were scored, also for a
    dropped tie or small gap, so dropped prompts can be inspected; they are None only for
    UNSCORED.
    """

    chosen: JudgedCandidate | None
    rejected: JudgedCandidate | None
    drop_reason: DropReason | None

    def __post_init__(self) -> None:
        if self.drop_reason is None and (self.chosen is None or self.rejected is None):
            raise ValueError("a kept pair needs both a chosen and a rejected candidate")

    @property
    def kept(self) -> bool:
        return self.drop_reason is None


def select_pair(
    candidates: Sequence[JudgedCandidate], min_score_gap: float = 0.0, min_valid_judgements: int = 1
) -> PairDecision:
    """Pick chosen (highest mean) and rejected (lowest mean) among the scored candidates.

    A candidate is scored when at least min_valid_judgements of its judgements have a valid
    score; the others are ignored (unscored). Among equal means, chosen is the one
    with the lowest index and rejected the one with the highest, so the result does not
    depend on the order of `candidates`. Drops: fewer than two scored candidates
    (UNSCORED), equal means (TIE), or a gap below min_score_gap (SCORE_GAP; a gap equal to
    it is kept, and min_score_gap 0 keeps every pair that is not a tie).
    """
    if min_score_gap < 0:
        raise ValueError(f"min_score_gap must be >= 0, got {min_score_gap}")
    scored = [
        (mean, candidate)
        for candidate in candidates
        if (mean := mean_score(candidate.scores, min_valid_judgements)) is not None
    ]
    if len(scored) < 2:
        return PairDecision(chosen=None, rejected=None, drop_reason=DropReason.UNSCORED)

    best_mean, chosen = min(scored, key=lambda item: (-item[0], item[1].index))
    worst_mean, rejected = min(scored, key=lambda item: (item[0], -item[1].index))
    if best_mean == worst_mean:
        drop_reason: DropReason | None = DropReason.TIE
    elif best_mean - worst_mean < min_score_gap - _GAP_TOLERANCE:
        drop_reason = DropReason.SCORE_GAP
    else:
        drop_reason = None
    return PairDecision(chosen=chosen, rejected=rejected, drop_reason=drop_reason)

"""Preference-pair selection: from judged candidates of one prompt to one DPO pair, or a reason.

Each prompt has N candidate responses, each judged K times. The pair is the candidate with
the highest mean score (chosen) against the one with the lowest (rejected). Prompts that
cannot give a pair are dropped with a reason, and the reasons are counted per iteration:
many ties or unscored prompts are the signs of a collapsing or illiterate judge.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from statistics import fmean

# Means are averages of small integers; this only absorbs float rounding in the gap, so a
# gap of exactly min_score_gap is kept however the subtraction rounds.
_GAP_TOLERANCE = 1e-9


@dataclass(frozen=True)
class JudgedCandidate:
    """One candidate response of a prompt and its K judge scores (None: unparsed judgement)."""

    index: int
    text: str
    scores: tuple[int | None, ...]

    @property
    def mean_score(self) -> float | None:
        valid = [score for score in self.scores if score is not None]
        return sum(valid) / len(valid) if valid else None


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


def select_pair(candidates: Sequence[JudgedCandidate], min_score_gap: float = 0.0) -> PairDecision:
    """Pick chosen (highest mean) and rejected (lowest mean) among the scored candidates.

    Candidates without any valid score are ignored. Among equal means, chosen is the one
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
        if (mean := candidate.mean_score) is not None
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


def summarize_decisions(decisions: Iterable[PairDecision]) -> dict[str, int | float | None]:
    """Counts per outcome, and the mean scores of the kept pairs (None when no pair was kept)."""
    decisions = list(decisions)
    kept = [decision for decision in decisions if decision.kept]
    return {
        "pairs": len(kept),
        "ties": _count(decisions, DropReason.TIE),
        "gap_too_small": _count(decisions, DropReason.SCORE_GAP),
        "unscored": _count(decisions, DropReason.UNSCORED),
        "mean_chosen_score": _mean_of(decision.chosen for decision in kept),
        "mean_rejected_score": _mean_of(decision.rejected for decision in kept),
    }


def _count(decisions: Sequence[PairDecision], reason: DropReason) -> int:
    return sum(1 for decision in decisions if decision.drop_reason is reason)


def _mean_of(candidates: Iterable[JudgedCandidate | None]) -> float | None:
    means = [candidate.mean_score for candidate in candidates if candidate is not None]
    valid = [mean for mean in means if mean is not None]
    return fmean(valid) if valid else None

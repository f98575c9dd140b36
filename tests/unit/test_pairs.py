"""Spec of preference-pair selection: which candidates become chosen/rejected, and when none do."""

import pytest

from selfreward.trainer.pairs import (
    DropReason,
    JudgedCandidate,
    PairDecision,
    mean_score,
    select_pair,
    valid_scores,
)


def candidates(*score_lists):
    """Candidates 0, 1, 2, ... with the given judge scores."""
    return [
        JudgedCandidate(index=i, text=f"response {i}", scores=tuple(scores))
        for i, scores in enumerate(score_lists)
    ]


@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        pytest.param((4, 5, 3), 4.0, id="all-valid"),
        pytest.param((4, None, 5), 4.5, id="none-ignored"),
        pytest.param((None, None), None, id="all-none"),
        pytest.param((), None, id="no-judgements"),
    ],
)
def test_mean_score(scores, expected):
    assert JudgedCandidate(index=0, text="", scores=scores).mean_score == expected
    assert mean_score(scores) == expected


@pytest.mark.parametrize(
    ("scores", "min_valid", "valid", "mean"),
    [
        pytest.param((4, 5, 3), 2, (4, 5, 3), 4.0, id="all-valid"),
        pytest.param((4, None, 5), 2, (4, 5), 4.5, id="exactly-the-minimum"),
        pytest.param((4, None, None), 2, None, None, id="one-valid-is-too-few"),
        pytest.param((4, None, None), 1, (4,), 4.0, id="minimum-one"),
        pytest.param((None, None, None), 1, None, None, id="none-valid"),
        pytest.param((3, 3, 3), 3, (3, 3, 3), 3.0, id="minimum-equal-to-samples"),
    ],
)
def test_a_response_needs_the_minimum_number_of_valid_judgements(scores, min_valid, valid, mean):
    assert valid_scores(scores, min_valid) == valid
    assert mean_score(scores, min_valid) == mean


def test_a_minimum_below_one_is_refused():
    with pytest.raises(ValueError):
        valid_scores((1, 2), 0)


@pytest.mark.parametrize(
    ("score_lists", "chosen", "rejected"),
    [
        pytest.param([(5, 5, 4), (2, 3, 2), (4, 4, 4)], 0, 1, id="highest-vs-lowest"),
        pytest.param([(1,), (3,), (2,), (5,)], 3, 0, id="any-position"),
        pytest.param([(4, None, None), (3, 3, 3)], 0, 1, id="one-valid-judgement-suffices"),
        pytest.param([(None, None), (5,), (1,)], 1, 2, id="unscored-candidate-ignored"),
        pytest.param([(None,), (2,), (None,), (5,)], 3, 1, id="only-scored-compete"),
    ],
)
def test_chosen_is_highest_mean_and_rejected_is_lowest(score_lists, chosen, rejected):
    decision = select_pair(candidates(*score_lists))

    assert decision.kept
    assert decision.drop_reason is None
    assert (decision.chosen.index, decision.rejected.index) == (chosen, rejected)


@pytest.mark.parametrize(
    ("score_lists", "chosen", "rejected"),
    [
        pytest.param([(5,), (5,), (2,), (2,)], 0, 3, id="lowest-index-chosen-highest-rejected"),
        pytest.param([(3,), (5,), (1,), (5,), (1,)], 1, 4, id="interleaved"),
    ],
)
def test_equal_means_are_broken_by_index(score_lists, chosen, rejected):
    decision = select_pair(candidates(*score_lists))

    assert (decision.chosen.index, decision.rejected.index) == (chosen, rejected)


def test_tie_breaks_do_not_depend_on_input_order():
    forward = candidates((5,), (5,), (2,), (2,))

    decision = select_pair(list(reversed(forward)))

    assert (decision.chosen.index, decision.rejected.index) == (0, 3)


@pytest.mark.parametrize(
    "score_lists",
    [
        pytest.param([(4, 4, 4), (4, 4, 4)], id="same-scores"),
        pytest.param([(5, 3), (4, 4), (3, 5)], id="same-means-different-scores"),
        pytest.param([(4,), (4, None), (None, None)], id="none-ignored-before-tie"),
    ],
)
def test_equal_means_are_a_tie(score_lists):
    decision = select_pair(candidates(*score_lists))

    assert decision.drop_reason is DropReason.TIE
    assert not decision.kept


def test_a_tie_still_names_the_candidates_for_inspection():
    decision = select_pair(candidates((4,), (4,), (4,)))

    assert (decision.chosen.index, decision.rejected.index) == (0, 2)


@pytest.mark.parametrize(
    "score_lists",
    [
        pytest.param([], id="no-candidates"),
        pytest.param([(5, 4)], id="one-candidate"),
        pytest.param([(None, None), (None,), (None,)], id="nothing-parsed"),
        pytest.param([(None, None), (3,), (None,)], id="one-scored"),
    ],
)
def test_fewer_than_two_scored_candidates_is_unscored(score_lists):
    decision = select_pair(candidates(*score_lists))

    assert decision.drop_reason is DropReason.UNSCORED
    assert (decision.chosen, decision.rejected) == (None, None)


@pytest.mark.parametrize(
    ("score_lists", "min_score_gap", "drop_reason"),
    [
        pytest.param([(5,), (4,)], 0.0, None, id="zero-gap-keeps-any-non-tie"),
        pytest.param([(5, 4, 4), (4, 4, 4)], 0.0, None, id="zero-gap-keeps-a-third"),
        pytest.param([(5,), (4,)], 1.0, None, id="gap-equal-to-minimum-kept"),
        pytest.param([(5,), (4,)], 1.5, DropReason.SCORE_GAP, id="gap-below-minimum-dropped"),
        # means 13/3 and 10/3: the float subtraction is not exactly 1
        pytest.param([(5, 4, 4), (4, 3, 3)], 1.0, None, id="gap-equal-despite-rounding"),
        pytest.param([(5, 4, 4), (4, 4, 4)], 0.5, DropReason.SCORE_GAP, id="third-below-half"),
        pytest.param([(4,), (4,)], 0.5, DropReason.TIE, id="tie-reported-before-gap"),
    ],
)
def test_minimum_score_gap(score_lists, min_score_gap, drop_reason):
    decision = select_pair(candidates(*score_lists), min_score_gap=min_score_gap)

    assert decision.drop_reason is drop_reason


def test_negative_minimum_gap_is_refused():
    with pytest.raises(ValueError):
        select_pair(candidates((5,), (1,)), min_score_gap=-1)


def test_a_kept_decision_needs_both_candidates():
    with pytest.raises(ValueError):
        PairDecision(chosen=None, rejected=None, drop_reason=None)


def test_drop_reasons_read_as_status_reasons():
    assert [reason.value for reason in DropReason] == ["Tie", "ScoreGapTooSmall", "TooFewScored"]


@pytest.mark.parametrize(
    ("score_lists", "min_valid", "drop_reason", "chosen", "rejected"),
    [
        # K = 3, minimum 2: the lone 5 of candidate 0 does not compete.
        pytest.param([(5, None, None), (4, 4, None), (2, 3, 2)], 2, None, 1, 2, id="lucky-single-parse-ignored"),
        pytest.param([(5, None, None), (4, 4, None), (2, 3, 2)], 1, None, 0, 2, id="minimum-one-lets-it-compete"),
        pytest.param([(5, None, None), (1, None, None), (3, 3, 3)], 2, DropReason.UNSCORED, None, None,
                     id="fewer-than-two-with-enough-scores"),
        pytest.param([(5, 5, 5), (1, 1, None)], 3, DropReason.UNSCORED, None, None, id="minimum-three"),
    ],
)
def test_candidates_with_too_few_valid_judgements_are_unscored(score_lists, min_valid, drop_reason, chosen, rejected):
    decision = select_pair(candidates(*score_lists), min_valid_judgements=min_valid)

    assert decision.drop_reason is drop_reason
    assert (decision.chosen and decision.chosen.index, decision.rejected and decision.rejected.index) == (
        chosen,
        rejected,
    )

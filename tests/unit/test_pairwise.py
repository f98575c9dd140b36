"""Spec of head-to-head judging: the verdict parser and the outcome of a prompt's two orders."""

import pytest

from selfreward.operator.status import derived_metrics
from selfreward.trainer.pairwise import outcome, parse_verdict, render_comparison, tally, verdict_head


@pytest.mark.parametrize(("text", "verdict"), [
    ("B is clearer.\nWinner: B", "B"),
    ("Winner: a tie", None),      # not verdict A
    ("Winner: A is better", None),
    ("Winner: TIE", "tie"),
    ("**Winner:** Tie", "tie"),
    ("First I thought Winner: A, but no.\nWinner: B", "B"),
    ("Winner: both", None),
    ("Winner:", None),
    ("Response A is better.", None),
    ("Winner: A.", "A"),
])
def test_the_last_winner_label_gives_the_verdict(text, verdict):
    assert parse_verdict(text) == verdict


@pytest.mark.parametrize("text", ["A is better.\nWinner: both", "No label at all", ""])
def test_a_constrained_verdict_after_the_head_parses(text):
    assert parse_verdict(verdict_head(text) + " B") == "B"


# (verdict with the newer model's answer as A, verdict with it as B) -> outcome for the newer model
@pytest.mark.parametrize(("new_first", "new_second", "expected"), [
    ("A", "B", "win"),       # preferred in both orders
    ("A", "tie", "win"),     # preferred once, a tie the other time
    ("tie", "B", "win"),
    ("B", "A", "loss"),      # the older model preferred in both orders
    ("tie", "A", "loss"),
    ("A", "A", "tie"),       # always the first answer: position bias, no preference
    ("B", "B", "tie"),
    ("tie", "tie", "tie"),
    (None, "B", "unjudged"),
    ("A", None, "unjudged"),
])
def test_the_two_orders_combine_into_one_outcome(new_first, new_second, expected):
    assert outcome(new_first, new_second) == expected


def test_tally_and_rates_match_a_hand_count():
    # 10 prompts: 5 wins, 2 losses, 2 ties, 1 unjudged; rates are over the 9 judged.
    outcomes = ["win"] * 5 + ["loss"] * 2 + ["tie"] * 2 + ["unjudged"]
    metrics = tally(outcomes)

    assert metrics == {"headToHeadWins": 5, "headToHeadLosses": 2, "headToHeadTies": 2, "headToHeadUnjudged": 1}
    assert derived_metrics("compare", metrics) == {**metrics, "winRate": 0.5556, "lossRate": 0.2222, "tieRate": 0.2222}


def test_no_judged_prompt_means_no_rates():
    assert derived_metrics("compare", tally(["unjudged"])) == tally(["unjudged"])


def test_the_comparison_shows_both_answers_under_their_labels():
    text = render_comparison("Name a colour.", "Red.", "Blue.")

    assert text.index("[Response A]\nRed.") < text.index("[Response B]\nBlue.")
    assert 'Winner: A", "Winner: B" or "Winner: tie"' in text

"""Spec of the reward-model metrics against human rankings, with the arithmetic written out."""

import warnings

import pytest

from selfreward.trainer.metrics import RankedPrompt, reward_model_metrics


def ranked(ranks, scores):
    """A prompt; each response's scores: None (unscored), one judgement's score, or a tuple of them."""
    judge_scores = tuple(s if s is None or isinstance(s, tuple) else (s,) for s in scores)
    return RankedPrompt(human_ranks=tuple(ranks), judge_scores=judge_scores)


def test_a_mixed_set_by_hand():
    prompts = [
        # A: the model's order is the human order.
        #   pairs (1,2) 5>4 ok, (1,3) 5>2 ok, (2,3) 4>2 ok; exact match; rho = tau = 1
        ranked([1, 2, 3], [5, 4, 2]),
        # B: a model tie. pair (1,2) 3=3 is wrong; no exact match; constant scores: no rho/tau
        ranked([1, 2], [3, 3]),
        # C: the model prefers the second-best.
        #   pairs (1,2) 2<5 wrong, (1,3) 2<4 wrong, (2,3) 5>4 ok; no exact match
        #   spearman: score ranks (1,3,2), negated-rank ranks (3,2,1), d = (-2,1,1),
        #     rho = 1 - 6 * 6 / (3 * (9 - 1)) = -0.5
        #   kendall: of the 3 pairs, (1,2) and (1,3) discordant, (2,3) concordant: tau = -1/3
        ranked([1, 2, 3], [2, 5, 4]),
    ]

    metrics = reward_model_metrics(prompts)

    assert metrics["prompts"] == 3
    assert metrics["unscored_responses"] == 0
    assert metrics["pairs_evaluated"] == 7  # 3 + 1 + 3
    assert metrics["pairwise_accuracy"] == pytest.approx(4 / 7)  # 3 + 0 + 1 correct
    assert metrics["five_best_judgements"] == 2  # A's rank 1 and C's rank 2
    assert metrics["five_best"] == 0.5  # only A's is the human top
    assert metrics["exact_match_prompts"] == 3
    assert metrics["exact_match"] == pytest.approx(1 / 3)  # A only
    assert metrics["correlation_prompts"] == 2  # A and C
    assert metrics["spearman"] == pytest.approx((1 + -0.5) / 2)
    assert metrics["kendall_tau"] == pytest.approx((1 + -1 / 3) / 2)


def test_unscored_responses_are_counted_and_left_out():
    prompts = [
        # D: the middle response is unscored. Scored: rank 1 -> 4, rank 3 -> mean(4, 5) = 4.5.
        #   pair (1,3) 4<4.5 wrong; not fully scored: no exact match candidate;
        #   two scored responses, inverted: rho = tau = -1
        ranked([1, 2, 3], [4, None, (4, 5)]),
        # E: nothing scored: no pair, no correlation, no exact match candidate
        ranked([2, 1], [None, None]),
        # F: pair (1,2) 4.5>3 ok; exact match; rho = tau = 1
        ranked([1, 2], [(5, 4), 3]),
    ]

    metrics = reward_model_metrics(prompts)

    assert metrics["unscored_responses"] == 3  # 1 + 2
    assert metrics["pairs_evaluated"] == 2
    assert metrics["pairwise_accuracy"] == 0.5
    assert metrics["exact_match_prompts"] == 1  # F
    assert metrics["exact_match"] == 1.0
    assert metrics["correlation_prompts"] == 2  # D and F
    assert metrics["spearman"] == pytest.approx(0.0)  # (-1 + 1) / 2
    assert metrics["kendall_tau"] == pytest.approx(0.0)


def test_five_best_is_none_when_no_response_scored_the_top():
    metrics = reward_model_metrics([ranked([1, 2], [4, 3]), ranked([1, 2], [None, 2])])

    assert metrics["five_best_judgements"] == 0
    assert metrics["five_best"] is None


# 5-best counts judgements: each valid judgement that gives the top score is one time the
# model scored that response a perfect 5, and a hit when the response is the human top.
@pytest.mark.parametrize(
    ("prompts", "top_score", "judgements", "five_best"),
    [
        # Rank 1 got (5, 5, 4), rank 2 got (5,): three 5s, two of them on the human top.
        pytest.param([ranked([1, 2], [(5, 5, 4), 5])], 5, 3, 2 / 3, id="each-judgement-of-5-counts"),
        # The mean of (5, 5, 4) is not 5, but its two 5s are still the model scoring it 5.
        pytest.param([ranked([1, 2], [(5, 5, 4), (4, 4, 4)])], 5, 2, 1.0, id="mean-below-top-still-counts"),
        pytest.param([ranked([1, 2], [(4, 4), (5, 5)])], 5, 2, 0.0, id="all-fives-on-the-second-best"),
        pytest.param(
            [ranked([1, 2], [5, 5]), ranked([1, 2], [5, 1])], 5, 3, 2 / 3, id="two-of-three"
        ),
        pytest.param([ranked([1, 2], [10, 5])], 10, 1, 1.0, id="custom-top-score"),
        # The human top is the prompt's lowest rank, here 2.
        pytest.param([ranked([2, 3], [5, 1])], 5, 1, 1.0, id="top-is-lowest-rank"),
        # An unscored response (too few valid judgements) gives no 5-best event.
        pytest.param([ranked([1, 2], [None, (5, 5)])], 5, 2, 0.0, id="unscored-response-left-out"),
    ],
)
def test_five_best(prompts, top_score, judgements, five_best):
    metrics = reward_model_metrics(prompts, top_score=top_score)

    assert metrics["five_best_judgements"] == judgements
    assert metrics["five_best"] == pytest.approx(five_best)


@pytest.mark.parametrize(
    ("ranks", "scores", "matches"),
    [
        pytest.param([1, 2, 3], [5, 4, 1], True, id="same-order"),
        pytest.param([3, 1, 2], [1, 5, 4], True, id="same-order-listed-shuffled"),
        pytest.param([1, 2, 3], [5, 4, 4], False, id="tie-is-no-match"),
        pytest.param([1, 2, 3], [5, 1, 4], False, id="swapped-tail"),
        pytest.param([1, 2, 3], [(5, 4), 4, (3, 4)], True, id="means-4.5-4-3.5"),
    ],
)
def test_exact_match(ranks, scores, matches):
    assert reward_model_metrics([ranked(ranks, scores)])["exact_match"] == float(matches)


def test_single_response_prompts_measure_nothing():
    metrics = reward_model_metrics([ranked([1], [5])])

    assert metrics["pairs_evaluated"] == 0
    assert metrics["pairwise_accuracy"] is None
    assert metrics["exact_match_prompts"] == 0
    assert metrics["correlation_prompts"] == 0


def test_constant_scores_are_skipped_for_correlation_without_warnings():
    prompts = [ranked([1, 2, 3], [4, 4, 4]), ranked([1, 2], [5, 5])]

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics = reward_model_metrics(prompts)

    assert metrics["correlation_prompts"] == 0
    assert metrics["spearman"] is None
    assert metrics["kendall_tau"] is None


def test_no_prompts_gives_counts_of_zero_and_no_fractions():
    assert reward_model_metrics([]) == {
        "prompts": 0,
        "unscored_responses": 0,
        "pairs_evaluated": 0,
        "pairwise_accuracy": None,
        "five_best_judgements": 0,
        "five_best": None,
        "exact_match_prompts": 0,
        "exact_match": None,
        "correlation_prompts": 0,
        "spearman": None,
        "kendall_tau": None,
    }


@pytest.mark.parametrize(
    ("ranks", "scores"),
    [
        pytest.param((1, 2), ((5,),), id="length-mismatch"),
        pytest.param((1, 1), ((5,), (4,)), id="repeated-rank"),
        pytest.param((1, 2), ((5,), ()), id="empty-scores-instead-of-none"),
    ],
)
def test_ranked_prompt_refuses_inconsistent_input(ranks, scores):
    with pytest.raises(ValueError):
        RankedPrompt(human_ranks=ranks, judge_scores=scores)


def test_model_scores_are_the_means_of_the_judge_scores():
    assert ranked([1, 2, 3], [(5, 4), None, 3]).model_scores == (4.5, None, 3.0)

"""Spec of the HTML report's series: what each plot shows, from status and the judged artifacts."""

from selfreward.operator.htmlreport import Artifacts, series, write
from selfreward.operator.status import summarize
from selfreward.operator.plan import Done
from tests.builders import defaulted_spec, status_with

SPEC = defaulted_spec()


def candidate(mean):
    return {"text": "an answer", "scores": [], "mean": mean, "judgements": ["fine\nScore: 3"], "constrained": []}


JUDGED = [  # two kept pairs (5 vs 2, 4 vs 1) and a tie
    {"prompt": "Name a fruit.", "candidates": [candidate(5.0), candidate(2.0), candidate(None)], "pair": "kept"},
    {"prompt": "Say hi.", "candidates": [candidate(1.0), candidate(4.0)], "pair": "kept"},
    {"prompt": "Count to 3.", "candidates": [candidate(3.0), candidate(3.0)], "pair": "tie"},
]
STATUS = summarize(status_with(
    (1, "sft", "Succeeded"), (1, "evaluate", "Succeeded", 1, {"metrics": {"pairwiseAccuracy": 0.6, "meanResponseChars": 300.0}}),
    (2, "judge", "Succeeded", 1, {"metrics": {"judgements": 20, "parseFailures": 5, "pairs": 2, "ties": 1, "gapTooSmall": 0}}),
    (2, "evaluate", "Succeeded", 1, {"metrics": {"pairwiseAccuracy": 0.7, "meanResponseChars": 420.0}}),
    (2, "compare", "Succeeded", 1, {"metrics": {"winRate": 0.5, "tieRate": 0.3, "lossRate": 0.2}}),
), Done(), SPEC)


def test_each_series_has_one_value_per_iteration_in_order():
    data = series(STATUS, Artifacts(judged={2: JUDGED}))

    assert data["iterations"] == [1, 2]
    assert data["pairwiseAccuracy"] == [0.6, 0.7]
    assert data["meanAnswerChars"] == [300.0, 420.0]
    assert (data["winRate"], data["tieRate"], data["lossRate"]) == ([None, 0.5], [None, 0.3], [None, 0.2])
    assert data["parseFailureRate"] == [None, 0.25]
    assert data["judgeTieRate"] == [None, round(1 / 3, 4)]


def test_chosen_and_rejected_are_the_best_and_worst_scored_candidates_of_kept_pairs():
    data = series(STATUS, Artifacts(judged={2: JUDGED}))

    assert (data["chosenScores"], data["rejectedScores"]) == ({"2": [5.0, 4.0]}, {"2": [2.0, 1.0]})


def test_the_page_holds_the_plots_the_series_and_escaped_examples(tmp_path):
    rows = [{**JUDGED[0], "prompt": "Is 2 < 3?"}]
    write(tmp_path, STATUS, Artifacts(judged={2: rows}), "default/demo")

    page = (tmp_path / "index.html").read_text()
    assert all((tmp_path / f"{name}.png").read_bytes().startswith(b"\x89PNG") for name in
               ("scores", "judge", "length", "reward", "headtohead"))
    assert "Is 2 &lt; 3?" in page and '<img src="scores.png"' in page

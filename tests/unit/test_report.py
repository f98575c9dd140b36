"""Spec of the per-iteration report: one row per iteration, and where each committed artifact lives."""

import pytest

from selfreward.operator.report import artifact_rows, iteration_rows
from tests.builders import ROOT, status_with


def row_of(*stages):
    (row,) = iteration_rows(status_with(*stages))
    return row


@pytest.mark.parametrize(
    ("stage", "metrics", "heading", "text"),
    [
        pytest.param("evaluate", {"pairwiseAccuracy": 0.787}, "pairwise acc", "78.7%", id="accuracy-percent"),
        pytest.param("evaluate", {"fiveBest": 0.415}, "5-best", "41.5%", id="five-best-percent"),
        pytest.param("evaluate", {"exactMatch": 0.1}, "exact match", "10.0%", id="exact-match-percent"),
        pytest.param("evaluate", {"spearman": 0.2791}, "Spearman", "0.279", id="float-three-places"),
        pytest.param("judge", {"pairs": 3964}, "pairs", "3964", id="integer-as-is"),
        pytest.param("judge", {"meanChosenScore": 4.5}, "chosen score", "4.500", id="mean-score"),
        pytest.param("dpo", {"trainLoss": 0.6931}, "DPO loss", "0.693", id="dpo-loss"),
        pytest.param("sft", {"trainLoss": 1.25}, "train loss", "1.250", id="sft-loss"),
    ],
)
def test_a_metric_is_formatted_for_its_column(stage, metrics, heading, text):
    assert row_of((2, stage, "Succeeded", 1, {"metrics": metrics}))[heading] == text


def test_a_missing_metric_is_a_dash():
    row = row_of((1, "sft", "Succeeded", 1, {"metrics": {"trainLoss": 1.0}}))

    assert row["pairs"] == "-"
    assert row["pairwise acc"] == "-"


def test_a_stage_without_metrics_gives_dashes():
    assert row_of((2, "judge", "Running"))["chosen score"] == "-"


def test_rows_name_the_iteration_and_its_model():
    status = status_with((1, "sft", "Succeeded"), (2, "instruct", "Running"))
    status["iterations"][0]["phase"] = "Succeeded"

    rows = iteration_rows(status)

    assert [(r["iteration"], r["phase"]) for r in rows] == [("1 (M1)", "Succeeded"), ("2 (M2)", "")]


def test_an_empty_status_has_no_rows():
    assert iteration_rows({}) == []
    assert artifact_rows({}) == []


def test_artifacts_are_listed_for_succeeded_stages_only():
    judge_outputs = {"pairs": f"{ROOT}/iter-02/pairs", "judgements": f"{ROOT}/iter-02/judgements"}
    status = status_with(
        (1, "sft", "Succeeded", 1, {"outputs": {"model": f"{ROOT}/iter-01/model"}}),
        (2, "judge", "Succeeded", 1, {"outputs": judge_outputs}),
        (2, "dpo", "Failed", 3, {"outputs": {"model": f"{ROOT}/iter-02/model"}}),
        (2, "evaluate", "Running", 1, {"outputs": {"evaluation": f"{ROOT}/iter-02/evaluation"}}),
    )

    assert artifact_rows(status) == [
        ("1", "sft/model", f"{ROOT}/iter-01/model"),
        ("2", "judge/judgements", f"{ROOT}/iter-02/judgements"),
        ("2", "judge/pairs", f"{ROOT}/iter-02/pairs"),
    ]


def test_checkpoints_are_not_listed_as_artifacts_once_the_model_is_committed():
    outputs = {"model": f"{ROOT}/iter-01/model", "checkpoints": f"{ROOT}/iter-01/checkpoints"}
    status = status_with((1, "sft", "Succeeded", 1, {"outputs": outputs}))

    assert artifact_rows(status) == [("1", "sft/model", f"{ROOT}/iter-01/model")]

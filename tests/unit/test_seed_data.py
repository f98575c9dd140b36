"""Spec of seed data files: JSON Lines rows checked one by one, every problem named by file and line."""

import json
from pathlib import Path

import pytest

from selfreward.trainer.data import (
    DataError,
    EvaluationRow,
    HoldoutRow,
    InstructionRow,
    parse_jsonl,
    score_in_range,
)

SEED = Path(__file__).resolve().parents[2] / "examples" / "seed"


def jsonl(*rows):
    """JSON Lines text: dict rows are encoded, str rows are written as they are."""
    return "\n".join(row if isinstance(row, str) else json.dumps(row) for row in rows) + "\n"


def ift(prompt="Name three rivers.", response="Nile, Amazon, Danube."):
    return {"prompt": prompt, "response": response}


def eft(score=4):
    return {"prompt": "Name a river.", "response": "The Nile.", "justification": "Correct and brief.", "score": score}


def holdout(*ranks):
    return {"prompt": "Name a river.", "responses": [{"text": f"answer {r}", "rank": r} for r in ranks]}


def problems(text, row_type, check=None, source="ift.jsonl"):
    with pytest.raises(DataError) as raised:
        parse_jsonl(text, source, row_type, check)
    return str(raised.value)


# --- the example seed files -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "row_type", "at_least"),
    [
        pytest.param("ift.jsonl", InstructionRow, 40, id="ift"),
        pytest.param("eft.jsonl", EvaluationRow, 20, id="eft"),
        pytest.param("holdout.jsonl", HoldoutRow, 10, id="holdout"),
    ],
)
def test_the_example_seed_files_parse(name, row_type, at_least):
    path = SEED / name

    rows = parse_jsonl(path.read_text(encoding="utf-8"), str(path), row_type)

    assert len(rows) >= at_least


def test_the_example_eft_scores_are_in_the_default_judge_range():
    path = SEED / "eft.jsonl"

    rows = parse_jsonl(path.read_text(encoding="utf-8"), str(path), EvaluationRow, score_in_range(0, 5))

    assert rows


def test_the_example_holdout_ranks_three_distinct_responses_per_prompt():
    path = SEED / "holdout.jsonl"

    rows = parse_jsonl(path.read_text(encoding="utf-8"), str(path), HoldoutRow)

    assert all(sorted(r.rank for r in row.responses) == [1, 2, 3] for row in rows)


# --- good rows --------------------------------------------------------------------------------


def test_rows_are_parsed_in_order_and_blank_lines_skipped():
    rows = parse_jsonl(jsonl(ift("first?"), "", "   ", ift("second?")), "ift.jsonl", InstructionRow)

    assert [row.prompt for row in rows] == ["first?", "second?"]


# --- bad rows ---------------------------------------------------------------------------------


def test_a_malformed_json_line_is_named_by_file_and_line():
    text = problems(jsonl(ift(), '{"prompt": "unterminated'), InstructionRow)

    assert "ift.jsonl:2: not valid JSON" in text


def test_a_missing_field_is_named_with_its_line():
    text = problems(jsonl(ift(), ift(), {"prompt": "No answer here."}), InstructionRow)

    assert "ift.jsonl:3:" in text
    assert "response" in text.split("ift.jsonl:3:")[1]


def test_an_unknown_field_is_refused():
    text = problems(jsonl({**ift(), "answer": "typo of response"}), InstructionRow)

    assert "ift.jsonl:1:" in text
    assert "answer" in text


def test_every_bad_line_is_reported():
    text = problems(jsonl("not json", ift(), {"prompt": "x"}), InstructionRow)

    assert "2 malformed row(s)" in text
    assert "ift.jsonl:1:" in text
    assert "ift.jsonl:3:" in text
    assert "ift.jsonl:2:" not in text


def test_a_long_list_of_problems_is_shortened():
    text = problems(jsonl(*["not json"] * 25), InstructionRow)

    assert "25 malformed row(s)" in text
    assert "ift.jsonl:20:" in text
    assert "ift.jsonl:21:" not in text
    assert "and 5 more" in text


@pytest.mark.parametrize(
    ("score", "low", "high"),
    [
        pytest.param(6, 0, 5, id="above"),
        pytest.param(-1, 0, 5, id="below"),
        pytest.param(0, 1, 10, id="below-custom-range"),
    ],
)
def test_a_score_outside_the_judges_range_is_refused(score, low, high):
    text = problems(jsonl(eft(score)), EvaluationRow, score_in_range(low, high), source="eft.jsonl")

    assert "eft.jsonl:1:" in text
    assert f"outside the judge's range {low}..{high}" in text


@pytest.mark.parametrize("score", [0, 5], ids=["lowest", "highest"])
def test_scores_at_the_ends_of_the_range_are_kept(score):
    (row,) = parse_jsonl(jsonl(eft(score)), "eft.jsonl", EvaluationRow, score_in_range(0, 5))

    assert row.score == score


def test_duplicate_ranks_in_a_holdout_row_are_refused():
    text = problems(jsonl(holdout(1, 2, 3), holdout(1, 1, 2)), HoldoutRow, source="holdout.jsonl")

    assert "holdout.jsonl:2:" in text
    assert "distinct" in text


def test_a_holdout_row_needs_two_responses():
    assert "holdout.jsonl:1:" in problems(jsonl(holdout(1)), HoldoutRow, source="holdout.jsonl")


@pytest.mark.parametrize("text", ["", "\n\n  \n"], ids=["empty", "blank-lines"])
def test_a_file_without_rows_is_refused(text):
    assert "no rows" in problems(text, InstructionRow)

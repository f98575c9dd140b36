"""Spec of the judge rubric: the prompt it renders and the score it reads back."""

import json
from pathlib import Path

import pytest

from selfreward.trainer.failures import PermanentFailure
from selfreward.trainer.rubric import (
    DEFAULT_JUDGE_TEMPLATE,
    SCORE_LINE_PREFIX,
    JudgeTemplateError,
    parse_score,
    render_judge_prompt,
    score_choices,
    score_head,
    validate_judge_template,
)


def test_default_template_renders_prompt_and_response():
    rendered = render_judge_prompt("How do magnets work?", "They have magnetic fields.")

    assert "How do magnets work?" in rendered
    assert "They have magnetic fields." in rendered
    assert "{" not in rendered


def test_braces_in_user_text_are_kept_verbatim():
    rendered = render_judge_prompt("Format {name} in Python", "Use f'{name}'.")

    assert "Format {name} in Python" in rendered
    assert "Use f'{name}'." in rendered


def test_default_template_asks_for_the_score_line():
    assert SCORE_LINE_PREFIX in DEFAULT_JUDGE_TEMPLATE
    assert "100 words" in DEFAULT_JUDGE_TEMPLATE


def test_default_template_is_compact_enough_for_tiny_models():
    assert 150 <= len(DEFAULT_JUDGE_TEMPLATE.split()) <= 220


@pytest.mark.parametrize(
    ("low", "high", "stated"),
    [
        pytest.param(0, 5, "a whole number from 0 to 5", id="paper-range"),
        pytest.param(1, 9, "a whole number from 1 to 9", id="spec-range"),
    ],
)
def test_default_template_states_the_score_range(low, high, stated):
    assert stated in render_judge_prompt("Q", "A", low=low, high=high)


def test_a_custom_template_may_state_the_score_range():
    rendered = render_judge_prompt("Q", "A", "{prompt}|{response}|{score_min}-{score_max}", low=1, high=7)

    assert rendered == "Q|A|1-7"


def test_custom_template_is_used():
    rendered = render_judge_prompt("Q", "A", template="Q={prompt} A={response} {{literal}}")

    assert rendered == "Q=Q A=A {literal}"


@pytest.mark.parametrize(
    ("template", "missing"),
    [
        pytest.param("Grade this: {response}", "{prompt}", id="no-prompt"),
        pytest.param("Grade the answer to {prompt}", "{response}", id="no-response"),
        pytest.param("Grade it.", "{prompt}", id="neither-names-the-first"),
    ],
)
def test_custom_template_without_a_placeholder_is_refused(template, missing):
    with pytest.raises(JudgeTemplateError, match=missing):
        render_judge_prompt("Q", "A", template=template)


def test_a_template_error_is_permanent_and_names_the_field():
    with pytest.raises(PermanentFailure, match="judge.template"):
        validate_judge_template("Grade it.")


@pytest.mark.parametrize(
    "template",
    [
        pytest.param("{prompt} {response} {extra}", id="unknown-field"),
        pytest.param("{prompt} {response} {}", id="positional-field"),
        pytest.param("{prompt} {response} {", id="unbalanced-brace"),
    ],
)
def test_custom_template_with_other_fields_is_refused(template):
    with pytest.raises(JudgeTemplateError):
        render_judge_prompt("Q", "A", template=template)


PARSE_CASES = [
    # (judge output, expected score)
    pytest.param("Relevant but shallow.\nScore: 3", 3, id="plain"),
    pytest.param("Score:4", 4, id="no-space"),
    pytest.param("Score:    2", 2, id="many-spaces"),
    pytest.param("score: 1", 1, id="lowercase"),
    pytest.param("SCORE: 5", 5, id="uppercase"),
    pytest.param("**Score:** 4", 4, id="bold-label"),
    pytest.param("**Score: 4**", 4, id="bold-line"),
    pytest.param("Score: **4**", 4, id="bold-value"),
    pytest.param("**Score**: 4", 4, id="bold-before-colon"),
    pytest.param("__Score:__ 5", 5, id="underscore-bold"),
    pytest.param("Final Score: 2", 2, id="word-before-label"),
    pytest.param("Total score: 0", 0, id="zero"),
    pytest.param("Score: 4/5", 4, id="slash-denominator"),
    pytest.param("Score: 4 / 5", 4, id="spaced-slash-denominator"),
    pytest.param("Score: 3 out of 5", 3, id="out-of-denominator"),
    pytest.param("Score: 4/10", None, id="other-denominator"),
    pytest.param("Score: 4 out of 10", None, id="other-out-of-denominator"),
    pytest.param("Score: 3.", 3, id="trailing-period"),
    pytest.param("Score: 3!\n", 3, id="trailing-exclamation"),
    pytest.param("Score: 4 points", 4, id="trailing-word"),
    pytest.param("Score: 4\n\nI hope this evaluation helps.", 4, id="text-after-score"),
    pytest.param("Score: 3.5", None, id="decimal"),
    pytest.param("Score: 4.0", None, id="decimal-zero"),
    pytest.param("Score: 4,5", None, id="decimal-comma"),
    pytest.param("Score: 3-4", None, id="range"),
    pytest.param("Score: 6", None, id="above-high"),
    pytest.param("Score: 45", None, id="two-digits"),
    pytest.param("Score: -1", None, id="negative"),
    pytest.param("Score: five", None, id="word-value"),
    pytest.param("Score:", None, id="label-without-value"),
    pytest.param("The response deserves a 4.", None, id="no-label"),
    pytest.param("", None, id="empty"),
    pytest.param("A score: 2 seems harsh.\nScore: 4", 4, id="last-label-wins"),
    pytest.param("Score: 4\nOn reflection, score: 3", 3, id="later-revision-wins"),
    pytest.param("Score: 4\nMy final score: unsure", None, id="unreadable-last-label"),
    pytest.param("subscore: 2", None, id="label-inside-a-word"),
]


@pytest.mark.parametrize(("output", "expected"), PARSE_CASES)
def test_parse_score(output, expected):
    assert parse_score(output) == expected


JUDGE_OUTPUTS = Path(__file__).parent / "data" / "judge_outputs.jsonl"


def judge_output_rows():
    lines = JUDGE_OUTPUTS.read_text(encoding="utf-8").splitlines()
    return [
        pytest.param(json.loads(line), id=f"line-{number}")
        for number, line in enumerate(lines, start=1)
        if line.strip()
    ]


@pytest.mark.parametrize("row", judge_output_rows())
def test_parse_score_on_recorded_judge_outputs(row):
    assert parse_score(row["output"]) == row["expected"], row["why"]


@pytest.mark.parametrize(
    ("output", "low", "high", "expected"),
    [
        pytest.param("Score: 7/10", 1, 10, 7, id="ten-point-scale"),
        pytest.param("Score: 7/5", 1, 10, None, id="denominator-must-equal-high"),
        pytest.param("Score: 0", 1, 10, None, id="below-low"),
        pytest.param("Score: 10", 1, 10, 10, id="high-is-inclusive"),
    ],
)
def test_parse_score_with_a_custom_range(output, low, high, expected):
    assert parse_score(output, low=low, high=high) == expected


def test_score_choices_lists_every_valid_score():
    assert score_choices(0, 5) == ["0", "1", "2", "3", "4", "5"]


def test_every_score_choice_parses_back():
    assert [parse_score(SCORE_LINE_PREFIX + choice) for choice in score_choices()] == [
        0, 1, 2, 3, 4, 5,
    ]


def test_score_choices_refuses_an_empty_range():
    with pytest.raises(ValueError):
        score_choices(5, 0)


@pytest.mark.parametrize(
    ("judgement", "head"),
    [
        pytest.param("Relevant but thin.", "Relevant but thin.\nScore:", id="no-label-appends-a-line"),
        pytest.param("Relevant.\n\n", "Relevant.\nScore:", id="trailing-blank-lines-dropped"),
        pytest.param("", "Score:", id="empty"),
        pytest.param("Good.\nScore: five", "Good.\nScore:", id="unreadable-value-cut"),
        pytest.param("Good.\nScore: 7", "Good.\nScore:", id="out-of-range-cut"),
        pytest.param("Good.\n**Score:** 3.5 maybe", "Good.\n**Score:", id="bold-label-cut"),
        pytest.param("score: 2 then\nFinal score: 4-5", "score: 2 then\nFinal Score:", id="last-label-cut"),
        pytest.param("It was cut off mid-sente", "It was cut off mid-sente\nScore:", id="truncated-text"),
    ],
)
def test_score_head_cuts_at_the_last_label_or_adds_one(judgement, head):
    assert score_head(judgement) == head


@pytest.mark.parametrize("judgement", ["", "Fine.", "Good.\nScore: five", "**Score**: 9", "x score: -1"])
def test_score_head_and_any_valid_score_parse_back(judgement):
    assert [parse_score(score_head(judgement) + " " + s) for s in score_choices()] == [0, 1, 2, 3, 4, 5]

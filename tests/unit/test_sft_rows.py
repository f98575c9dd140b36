"""SFT training rows: instruction rows as they are, judge (EFT) rows in the judge stage's own prompt."""

from __future__ import annotations

from selfreward.trainer.data import EvaluationRow, InstructionRow
from selfreward.trainer.rubric import render_judge_prompt
from selfreward.trainer.sft import conversations

INSTRUCTION = InstructionRow(prompt="Name a prime number.", response="7 is prime.")
EVALUATION = EvaluationRow(prompt="Name a prime.", response="9", justification="9 is not prime.", score=1)


def judge_section(low: int = 0, high: int = 5, template: str | None = None) -> dict:
    section = {"scoreRange": {"min": low, "max": high}}
    return section | ({"template": template} if template else {})


def test_an_instruction_row_is_a_prompt_and_its_completion():
    [row] = conversations([INSTRUCTION], [], judge_section())

    assert row == {"prompt": [{"role": "user", "content": "Name a prime number."}],
                   "completion": [{"role": "assistant", "content": "7 is prime."}]}


def test_a_judge_row_asks_with_the_judge_prompt_and_answers_with_justification_then_score():
    [row] = conversations([], [EVALUATION], judge_section())

    assert row["prompt"][0]["content"] == render_judge_prompt("Name a prime.", "9", None, 0, 5)
    assert row["completion"][0]["content"] == "9 is not prime.\nScore: 1"


def test_a_judge_row_states_the_specs_score_range():
    [row] = conversations([], [EVALUATION], judge_section(1, 9))

    assert "from 1 to 9" in row["prompt"][0]["content"]
    assert row["prompt"][0]["content"] == render_judge_prompt("Name a prime.", "9", None, 1, 9)


def test_a_judge_row_uses_the_specs_template():
    [row] = conversations([], [EVALUATION], judge_section(template="Q: {prompt}\nA: {response}\nGrade it."))

    assert row["prompt"][0]["content"] == "Q: Name a prime.\nA: 9\nGrade it."

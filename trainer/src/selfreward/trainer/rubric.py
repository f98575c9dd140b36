"""The judge's side of the loop: the additive 5-point rubric prompt and the score parser.

The same model that answers prompts also grades answers (LLM-as-a-Judge). This module
holds the judge prompt and the one rule that turns a judgement into a score, so that the
judge stage, the EFT data builder and the evaluation all read judgements the same way.
A judgement without a valid score is a parse failure: `parse_score` returns None and the
caller counts it; it never guesses.

Templates (the built-in one or judge.template) are format strings with the placeholders
{prompt} and {response} (required) and {score_min} and {score_max} (optional: the spec's
judge.scoreRange, so the prompt states the range the parser accepts).
"""

from __future__ import annotations

import re
import string

from selfreward.trainer.failures import PermanentFailure

PROMPT_FIELD = "prompt"
RESPONSE_FIELD = "response"
SCORE_MIN_FIELD = "score_min"
SCORE_MAX_FIELD = "score_max"
SCORE_LINE_PREFIX = "Score: "
SCORE_LABEL = SCORE_LINE_PREFIX.strip()
LOWEST_SCORE = 0
HIGHEST_SCORE = 5

DEFAULT_JUDGE_TEMPLATE = """\
You are grading how well a response answers a user's question. Build the grade point \
by point: start at 0 and add one point for each of these criteria that the response meets.
1. It stays on topic and offers at least some information connected to the question, \
even if incomplete.
2. It covers a substantial part of the question, though it leaves some of it unresolved.
3. It gives a useful answer to the essential parts of the question.
4. It reads clearly as an AI assistant's reply: it tackles the question directly and \
completely, and it is well organized and helpful.
5. It fits the question flawlessly: nothing irrelevant, expert-level knowledge, and it is \
excellent, engaging and insightful.

[Question]
{prompt}

[Response]
{response}

Explain your grade in no more than 100 words. Then write the final line exactly as \
"Score: N", where N is the total number of points, a whole number from {score_min} to {score_max}."""

# The last "score:" label wins. The value part is optional so that a final label followed by
# something unreadable ("Score: five") is still the last match, and yields no score.
_SCORE_PATTERN = re.compile(
    r"""
    (?<![a-z0-9])score          # the label, possibly after a word ("Final score")
    [ \t]*[*_]{0,2}[ \t]*:      # bold may close before the colon: "**Score**:"
    [ \t]*[*_]{0,2}[ \t]*       # or after it / around the value: "**Score:** 4", "Score: **4**"
    (?:
        (?P<value>\d+)
        (?:[ \t]*(?:/|out[ \t]+of)[ \t]*(?P<denominator>\d+))?
        (?P<not_an_integer>[.,]\d|[ \t]*[-\u2013][ \t]*\d)?   # "3.5", "4,0", "3-4"
    )?
    """,
    re.IGNORECASE | re.VERBOSE,
)


class JudgeTemplateError(PermanentFailure, ValueError):
    """judge.template cannot be used; the message names the placeholder to fix."""


def render_judge_prompt(
    prompt: str,
    response: str,
    template: str | None = None,
    low: int = LOWEST_SCORE,
    high: int = HIGHEST_SCORE,
) -> str:
    """Fill the judge template with one prompt, one candidate response and the score range."""
    if template is None:
        template = DEFAULT_JUDGE_TEMPLATE
    else:
        validate_judge_template(template)
    return template.format(prompt=prompt, response=response, score_min=low, score_max=high)


def validate_judge_template(template: str) -> None:
    """Raise JudgeTemplateError unless the template has {prompt} and {response}, and no field
    other than those and the optional {score_min} and {score_max}."""
    fields = _format_fields(template)
    for required in (PROMPT_FIELD, RESPONSE_FIELD):
        if required not in fields:
            raise JudgeTemplateError(f"judge.template is missing the {{{required}}} placeholder")
    unknown = sorted(fields - {PROMPT_FIELD, RESPONSE_FIELD, SCORE_MIN_FIELD, SCORE_MAX_FIELD})
    if unknown:
        raise JudgeTemplateError(
            f"judge.template has unknown placeholders {unknown} (allowed: {{prompt}}, {{response}}, "
            "{score_min}, {score_max}); write literal braces as {{ }}"
        )


def parse_score(text: str, low: int = LOWEST_SCORE, high: int = HIGHEST_SCORE) -> int | None:
    """Read the score from the last "Score:" label of a judgement; None when it is not valid.

    Valid: a whole number in [low, high] right after the label, optionally written as
    "N/high" or "N out of high". Anything else after the last label (a decimal, a range,
    a word, a negative number, another denominator) is a parse failure, even if an
    earlier label held a valid score.
    """
    last_label = last_match(_SCORE_PATTERN, text)
    if last_label is None or last_label["value"] is None or last_label["not_an_integer"]:
        return None
    denominator = last_label["denominator"]
    if denominator is not None and int(denominator) != high:
        return None
    value = int(last_label["value"])
    return value if low <= value <= high else None


def score_head(judgement: str) -> str:
    """The judgement up to where its score goes, for a score decoded under constraint.

    Cut at its last score label (whatever followed it did not parse), the label written as
    "Score:"; or, with no label at all, the text with a last line "Score:" appended. The
    head plus " N" always parses as N.
    """
    return head_at_last_label(judgement, _SCORE_PATTERN, SCORE_LABEL)


def last_match(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    """The last match of `pattern` in `text` (the last label wins), or None."""
    last = None
    for last in pattern.finditer(text):
        pass
    return last


def head_at_last_label(judgement: str, pattern: re.Pattern[str], label: str) -> str:
    """`judgement` cut at the start of its last `pattern` match with `label` written there, or with
    a last line `label` added when there is none: where a constrained choice is decoded."""
    last = last_match(pattern, judgement)
    if last is not None:
        return judgement[: last.start()] + label
    text = judgement.rstrip()
    return f"{text}\n{label}" if text else label


def score_choices(low: int = LOWEST_SCORE, high: int = HIGHEST_SCORE) -> list[str]:
    """Every valid score as text ("0".."5"); written after the label with its space, " 4"."""
    if low > high:
        raise ValueError(f"low ({low}) must not exceed high ({high})")
    return [str(score) for score in range(low, high + 1)]


def _format_fields(template: str) -> set[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise JudgeTemplateError(f"judge.template is not a valid format string: {error}") from error
    return {field for _, field, _, _ in parsed if field is not None}

"""Head-to-head judging: which of two models answered a held-out prompt better (pure).

The paper measures instruction following by having a judge compare M_t's answer with
M_(t-1)'s on the same held-out prompt, in both orders (so a judge that prefers whichever answer
comes first cancels out). This module holds the comparison prompt, the verdict parser and the
bookkeeping; the compare stage runs the judge.

Per prompt, the two orders' verdicts combine into one outcome for the newer model:
- win: it is preferred in both orders, or in one with a tie in the other;
- loss: the older model is, the same way;
- tie: both orders tie, or they disagree (each order prefers the answer in the same position);
- unjudged: an order has no valid verdict. Unjudged prompts are counted and left out of the rates.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Literal

from selfreward.trainer.rubric import head_at_last_label, last_match

Verdict = Literal["A", "B", "tie"]
Preference = Literal["new", "old", "tie"]
Outcome = Literal["win", "loss", "tie", "unjudged"]
OUTCOMES: tuple[Outcome, ...] = ("win", "loss", "tie", "unjudged")

VERDICT_LABEL = "Winner:"
VERDICT_CHOICES: tuple[Verdict, ...] = ("A", "B", "tie")

COMPARISON_TEMPLATE = """\
Two assistants answered the same question. Decide which response serves the user better: \
the one that answers the question more directly, correctly and helpfully, with nothing \
irrelevant. Do not prefer a response for being longer, and do not let the order in which \
they appear sway you.

[Question]
{prompt}

[Response A]
{first}

[Response B]
{second}

Explain your decision in no more than 60 words. Then write the final line exactly as \
"Winner: A", "Winner: B" or "Winner: tie"."""

# The last "winner:" label wins; the rest of its line must be A or B (capital: "Winner: a tie" is
# no verdict A) or tie (any case), with nothing more than emphasis or a full stop.
_VERDICT_PATTERN = re.compile(r"(?<![a-z])winner[ \t]*[*_]{0,2}[ \t]*:(?P<rest>[^\n]*)", re.IGNORECASE)
_VERDICT_VALUE = re.compile(r"[ \t*_]*(?P<value>A|B|[Tt][Ii][Ee])[ \t*_.]*")


def render_comparison(prompt: str, first: str, second: str) -> str:
    return COMPARISON_TEMPLATE.format(prompt=prompt, first=first, second=second)


def parse_verdict(text: str) -> Verdict | None:
    """The verdict of the last "Winner:" label; None when there is none or it is not A, B or tie."""
    last = last_match(_VERDICT_PATTERN, text)
    if last is None:
        return None
    value = _VERDICT_VALUE.fullmatch(last["rest"])
    if value is None:
        return None
    return "tie" if value["value"].lower() == "tie" else value["value"]


def verdict_head(judgement: str) -> str:
    """The judgement up to where its verdict goes, for a verdict decoded under constraint: cut at
    its last label, or with a last line "Winner:" added. The head plus " A" parses as A."""
    return head_at_last_label(judgement, _VERDICT_PATTERN, VERDICT_LABEL)


def preference(verdict: Verdict | None, new_is_first: bool) -> Preference | None:
    """Which model a verdict prefers, given where the newer model's answer was shown."""
    if verdict is None:
        return None
    if verdict == "tie":
        return "tie"
    return "new" if (verdict == "A") == new_is_first else "old"


def outcome(new_first: Verdict | None, new_second: Verdict | None) -> Outcome:
    """One prompt's outcome for the newer model from its two orders' verdicts: `new_first` judged
    with the newer model's answer as A, `new_second` with it as B."""
    preferences = {preference(new_first, True), preference(new_second, False)}
    if None in preferences:
        return "unjudged"
    if preferences <= {"new", "tie"} and "new" in preferences:
        return "win"
    if preferences <= {"old", "tie"} and "old" in preferences:
        return "loss"
    return "tie"


def tally(outcomes: Sequence[Outcome]) -> dict[str, int]:
    """Counts of each outcome, as the stage's additive metrics."""
    counts = Counter(outcomes)
    return {"headToHeadWins": counts["win"], "headToHeadLosses": counts["loss"],
            "headToHeadTies": counts["tie"], "headToHeadUnjudged": counts["unjudged"]}


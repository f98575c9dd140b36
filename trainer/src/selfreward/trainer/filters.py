"""Self-instruction: the few-shot prompt that asks for a new task, and the filters on the result.

The model invents new prompts by continuing a list of example tasks. Its raw output is cut
down to one task (`extract_prompt`), and the candidates are filtered before any response is
generated for them: too short or too long, tasks a text model cannot do (banned keywords),
and copies or near-copies (ROUGE-L) of prompts already in the pool.

The few-shot contract: the prompt lists each example as a line "Task: <text>" and ends with
"Task:", so the model continues with one new task and, if it goes on, starts the next one
with a new "Task:" line or a blank line. Everything from there on is discarded.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from rouge_score import tokenize as rouge_tokenize

TASK_MARKER = "Task:"
DEFAULT_FEWSHOT_PREAMBLE = (
    "Below are some tasks a user might give an AI assistant. "
    "Write one more task that is new and different from these."
)

_END_OF_TASK = re.compile(r"\n[ \t]*\n|\n[ \t]*" + re.escape(TASK_MARKER))


@dataclass(frozen=True)
class PromptFilterConfig:
    """Filter settings; their defaults live in the CRD, not here.

    banned_keywords match case-insensitively at the start of a word: "graph" bans "graph",
    "graphs" and "graphic" but not "paragraph". Catching inflections is worth the rare
    false positive: a wrongly dropped candidate costs nothing, a kept impossible task
    becomes training data.
    """

    min_words: int
    max_words: int
    banned_keywords: tuple[str, ...]
    rouge_l_threshold: float


class RejectReason(str, Enum):
    EMPTY = "Empty"
    TOO_SHORT = "TooShort"
    TOO_LONG = "TooLong"
    BANNED_KEYWORD = "BannedKeyword"
    DUPLICATE = "Duplicate"
    NEAR_DUPLICATE = "NearDuplicate"


@dataclass(frozen=True)
class FilterResult:
    """The kept prompts (stripped, in input order) and how many were rejected per reason."""

    kept: tuple[str, ...]
    rejected: dict[RejectReason, int]


def build_fewshot_prompt(examples: Sequence[str], preamble: str = DEFAULT_FEWSHOT_PREAMBLE) -> str:
    """The prompt that makes a model write one new task after the given example tasks."""
    one_line_examples = [" ".join(example.split()) for example in examples]
    if not one_line_examples or not all(one_line_examples):
        raise ValueError("few-shot prompt needs at least one example, and no empty example")
    example_lines = [f"{TASK_MARKER} {example}" for example in one_line_examples]
    return "\n".join([preamble.strip(), "", *example_lines, TASK_MARKER])


def extract_prompt(generated: str) -> str | None:
    """The new task from a continuation of the few-shot prompt; None when there is none.

    The task runs up to the first blank line or the first line that starts a new task, so
    a continuation that opens with either holds no task.
    """
    end_of_task = _END_OF_TASK.search(generated)
    task = generated if end_of_task is None else generated[: end_of_task.start()]
    return task.strip() or None


def filter_prompts(
    candidates: Sequence[str], existing: Sequence[str], config: PromptFilterConfig
) -> FilterResult:
    """Keep the candidates that pass every check, comparing each with existing and kept prompts.

    Checks run in this order and the first failing one is the reason counted: empty, word
    count (min_words..max_words inclusive), banned keyword, exact duplicate (after
    normalizing case, whitespace and end punctuation), near duplicate (ROUGE-L F-measure at
    or above rouge_l_threshold with any prompt of the pool). The paper's self-instruction
    follows Self-Instruct (Wang et al. 2023), which adds a new instruction only when its
    ROUGE-L with every existing one is below the threshold (0.7): a score exactly at the
    threshold is a near duplicate.

    Cost: the near-duplicate check compares each candidate with the whole pool (existing +
    kept), O(candidates * pool). Each text is tokenized once, and cheap upper bounds (length,
    shared words) skip most exact LCS computations: about 2 s for 300 candidates against
    3,000 prompts.
    """
    banned = _banned_keyword_pattern(config.banned_keywords)
    seen = {_normalize(prompt) for prompt in existing}
    pool = [_RougeText.of(prompt) for prompt in existing]
    kept: list[str] = []
    rejected = {reason: 0 for reason in RejectReason}
    for candidate in candidates:
        prompt = candidate.strip()
        reason = _first_failed_check(prompt, config, banned, seen, pool)
        if reason is not None:
            rejected[reason] += 1
            continue
        kept.append(prompt)
        seen.add(_normalize(prompt))
        pool.append(_RougeText.of(prompt))
    return FilterResult(kept=tuple(kept), rejected=rejected)


def rouge_l_fmeasure(target: str, prediction: str) -> float:
    """ROUGE-L F-measure, equal to RougeScorer(["rougeL"]).score(target, prediction).fmeasure."""
    return _RougeText.of(target).fmeasure_with(_RougeText.of(prediction))


def _first_failed_check(
    prompt: str,
    config: PromptFilterConfig,
    banned: re.Pattern[str] | None,
    seen: set[str],
    pool: Sequence[_RougeText],
) -> RejectReason | None:
    if not prompt:
        return RejectReason.EMPTY
    word_count = len(prompt.split())
    if word_count < config.min_words:
        return RejectReason.TOO_SHORT
    if word_count > config.max_words:
        return RejectReason.TOO_LONG
    if banned is not None and banned.search(prompt):
        return RejectReason.BANNED_KEYWORD
    if _normalize(prompt) in seen:
        return RejectReason.DUPLICATE
    if _is_near_duplicate(_RougeText.of(prompt), pool, config.rouge_l_threshold):
        return RejectReason.NEAR_DUPLICATE
    return None


def _banned_keyword_pattern(keywords: Sequence[str]) -> re.Pattern[str] | None:
    words = [keyword.split() for keyword in keywords if keyword.strip()]
    if not words:
        return None
    alternatives = [r"\s+".join(re.escape(word) for word in keyword) for keyword in words]
    return re.compile(r"\b(?:" + "|".join(alternatives) + ")", re.IGNORECASE)


def _normalize(prompt: str) -> str:
    return " ".join(prompt.lower().split()).strip(string.punctuation + string.whitespace)


def _is_near_duplicate(
    candidate: _RougeText, pool: Sequence[_RougeText], threshold: float
) -> bool:
    # Cheapest bound first: each is an upper bound of the exact score, so a bound below the
    # threshold proves the pair is no near duplicate.
    return any(
        candidate.length_bound_with(other) >= threshold
        and candidate.shared_words_bound_with(other) >= threshold
        and candidate.fmeasure_with(other) >= threshold
        for other in pool
    )


@dataclass(frozen=True)
class _RougeText:
    """A text tokenized once for ROUGE-L, with its word counts for a cheap upper bound."""

    tokens: tuple[str, ...]
    counts: Counter[str]

    @classmethod
    def of(cls, text: str) -> _RougeText:
        # What RougeScorer(["rougeL"], use_stemmer=False) does: lowercase ASCII words and
        # digits; importing it directly avoids loading nltk for a stemmer we do not use.
        tokens = tuple(rouge_tokenize.tokenize(text, None))
        return cls(tokens=tokens, counts=Counter(tokens))

    def fmeasure_with(self, prediction: _RougeText) -> float:
        return _fmeasure(_lcs_length(self.tokens, prediction.tokens), self, prediction)

    def length_bound_with(self, prediction: _RougeText) -> float:
        """An upper bound of fmeasure_with: a common subsequence is no longer than either text."""
        shorter = min(len(self.tokens), len(prediction.tokens))
        return _fmeasure(shorter, self, prediction)

    def shared_words_bound_with(self, prediction: _RougeText) -> float:
        """An upper bound of fmeasure_with: a common subsequence uses only shared words."""
        smaller, larger = sorted((self.counts, prediction.counts), key=len)
        shared = sum(min(count, larger[word]) for word, count in smaller.items())
        return _fmeasure(shared, self, prediction)


def _fmeasure(common: int, target: _RougeText, prediction: _RougeText) -> float:
    # The same arithmetic as rouge_score, so scores at the threshold compare identically.
    if not target.tokens or not prediction.tokens:
        return 0.0
    precision = common / len(prediction.tokens)
    recall = common / len(target.tokens)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _lcs_length(first: Sequence[str], second: Sequence[str]) -> int:
    previous_row = [0] * (len(second) + 1)
    for first_token in first:
        row = [0]
        for column, second_token in enumerate(second, start=1):
            if first_token == second_token:
                row.append(previous_row[column - 1] + 1)
            else:
                row.append(max(row[column - 1], previous_row[column]))
        previous_row = row
    return previous_row[-1]

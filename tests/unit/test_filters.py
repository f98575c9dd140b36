"""Spec of self-instruction: the few-shot prompt, reading its continuation, the filters."""

import dataclasses

import pytest
from rouge_score.rouge_scorer import RougeScorer

from selfreward.trainer.filters import (
    DEFAULT_FEWSHOT_PREAMBLE,
    PromptFilterConfig,
    RejectReason,
    build_fewshot_prompt,
    extract_prompt,
    filter_prompts,
    rouge_l_fmeasure,
)

CONFIG = PromptFilterConfig(
    min_words=3,
    max_words=12,
    banned_keywords=("image", "graph", "video game"),
    rouge_l_threshold=0.7,
)


def config(**changes):
    return dataclasses.replace(CONFIG, **changes)


def only_reason(candidate, existing=(), **changes):
    """The reason a lone candidate is rejected, or None when it is kept."""
    result = filter_prompts([candidate], existing, config(**changes))
    reasons = [reason for reason, count in result.rejected.items() if count]
    assert len(result.kept) + len(reasons) == 1
    return reasons[0] if reasons else None


# --- the few-shot prompt -------------------------------------------------------------------


def test_fewshot_prompt_lists_examples_and_ends_with_an_open_task():
    prompt = build_fewshot_prompt(["Name three rivers.", "Explain recursion."])

    assert prompt == (
        f"{DEFAULT_FEWSHOT_PREAMBLE}\n\nTask: Name three rivers.\nTask: Explain recursion.\nTask:"
    )


def test_fewshot_examples_are_put_on_one_line():
    prompt = build_fewshot_prompt(["Summarize this:\n\n  a long   text"], preamble="Tasks.")

    assert prompt == "Tasks.\n\nTask: Summarize this: a long text\nTask:"


@pytest.mark.parametrize(
    "examples",
    [pytest.param([], id="no-examples"), pytest.param(["Fine.", " \n "], id="blank-example")],
)
def test_fewshot_prompt_refuses_missing_examples(examples):
    with pytest.raises(ValueError):
        build_fewshot_prompt(examples)


# --- reading the new task from the continuation ---------------------------------------------


@pytest.mark.parametrize(
    ("generated", "expected"),
    [
        pytest.param(" Write a haiku about rain.", "Write a haiku about rain.", id="plain"),
        pytest.param(" Write a haiku.\nTask: List primes.", "Write a haiku.", id="next-task"),
        pytest.param(" Write a haiku.\n  Task: List primes.", "Write a haiku.", id="indented-next"),
        pytest.param(" Write a haiku.\n\nThe haiku:", "Write a haiku.", id="blank-line"),
        pytest.param(" Write a haiku.\n \t\nMore", "Write a haiku.", id="whitespace-blank-line"),
        pytest.param(
            " Sort these words:\napple\npear", "Sort these words:\napple\npear", id="multi-line"
        ),
        pytest.param("\nWrite a haiku.", "Write a haiku.", id="single-leading-newline"),
        pytest.param(" Compare Task: and Job:", "Compare Task: and Job:", id="marker-mid-line"),
        pytest.param("", None, id="empty"),
        pytest.param("   \n", None, id="whitespace"),
        pytest.param("\nTask: List primes.", None, id="opens-with-next-task"),
        pytest.param("\n\nWrite a haiku.", None, id="opens-with-blank-line"),
    ],
)
def test_extract_prompt(generated, expected):
    assert extract_prompt(generated) == expected


def test_a_task_written_after_the_fewshot_prompt_is_extracted():
    prompt = build_fewshot_prompt(["Name three rivers."])
    model_output = " Plan a week of vegetarian dinners.\nTask: Name three lakes.\n"

    assert extract_prompt((prompt + model_output)[len(prompt) :]) == (
        "Plan a week of vegetarian dinners."
    )


# --- the filters ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("candidate", "existing", "reason"),
    [
        pytest.param("Plan a week of vegetarian dinners.", [], None, id="kept"),
        pytest.param("   ", [], RejectReason.EMPTY, id="empty"),
        pytest.param("Plan dinners.", [], RejectReason.TOO_SHORT, id="too-short"),
        pytest.param(" ".join(["word"] * 13), [], RejectReason.TOO_LONG, id="too-long"),
        pytest.param("Describe this image, please.", [], RejectReason.BANNED_KEYWORD, id="banned"),
        pytest.param(
            "Plan a week of dinners.", ["Plan a week of dinners."], RejectReason.DUPLICATE,
            id="duplicate",
        ),
        pytest.param(
            "Plan a week of cheap dinners.", ["Plan a week of dinners."],
            RejectReason.NEAR_DUPLICATE, id="near-duplicate",
        ),
    ],
)
def test_each_reject_reason(candidate, existing, reason):
    assert only_reason(candidate, existing) is reason


@pytest.mark.parametrize(
    ("word_count", "reason"),
    [
        pytest.param(2, RejectReason.TOO_SHORT, id="one-below-min"),
        pytest.param(3, None, id="min-inclusive"),
        pytest.param(12, None, id="max-inclusive"),
        pytest.param(13, RejectReason.TOO_LONG, id="one-above-max"),
    ],
)
def test_word_limits_are_inclusive(word_count, reason):
    candidate = " ".join(f"w{i}" for i in range(word_count))

    assert only_reason(candidate) is reason


@pytest.mark.parametrize(
    ("candidate", "reason"),
    [
        pytest.param("Draw a GRAPH of the data.", RejectReason.BANNED_KEYWORD, id="any-case"),
        pytest.param("Plot two graphs of the data.", RejectReason.BANNED_KEYWORD, id="plural"),
        pytest.param("Make a graphic for my blog.", RejectReason.BANNED_KEYWORD, id="word-prefix"),
        pytest.param("Shorten this paragraph for me.", None, id="inside-a-word-is-fine"),
        pytest.param("Review the new video  game Hades.", RejectReason.BANNED_KEYWORD, id="phrase"),
        pytest.param("Rate this video of mine.", None, id="phrase-part-is-fine"),
    ],
)
def test_banned_keywords_match_at_the_start_of_a_word(candidate, reason):
    assert only_reason(candidate) is reason


@pytest.mark.parametrize(
    ("candidate", "existing"),
    [
        pytest.param("write a POEM about   the sea", "Write a poem about the sea.", id="case"),
        pytest.param("  Write a poem about the sea?!", "Write a poem about the sea", id="marks"),
    ],
)
def test_exact_duplicates_ignore_case_spacing_and_end_punctuation(candidate, existing):
    assert only_reason(candidate, [existing], rouge_l_threshold=1.0) is RejectReason.DUPLICATE


# ROUGE-L F = 2 * LCS / (words of one + words of the other) when both are given as here.
# "write a poem today" vs "write a story tomorrow": LCS "write a" = 2 of 4 + 4 words: F = 0.5.
# The ten-word pair shares its first seven words: F = 2 * 7 / 20 = 0.7 exactly, in floats too.
TEN_WORDS = "one two three four five six seven eight nine ten"
SEVEN_SHARED = "one two three four five six seven alpha beta gamma"


@pytest.mark.parametrize(
    ("existing", "candidate", "fmeasure", "threshold", "reason"),
    [
        pytest.param(TEN_WORDS, SEVEN_SHARED, 0.7, 0.7, RejectReason.NEAR_DUPLICATE, id="at-paper-threshold-rejected"),
        pytest.param(TEN_WORDS, SEVEN_SHARED, 0.7, 0.71, None, id="just-below-threshold-kept"),
        pytest.param("write a poem today", "write a story tomorrow", 0.5, 0.5, RejectReason.NEAR_DUPLICATE,
                     id="equal-to-threshold-rejected"),
        pytest.param("write a poem today", "write a story tomorrow", 0.5, 0.49, RejectReason.NEAR_DUPLICATE,
                     id="above-threshold-rejected"),
        pytest.param("write a poem today", "write a story tomorrow", 0.5, 0.51, None, id="below-threshold-kept"),
    ],
)
def test_near_duplicate_at_or_above_the_threshold_is_rejected(existing, candidate, fmeasure, threshold, reason):
    # Self-Instruct keeps a new instruction only when its ROUGE-L with every kept one is below the threshold.
    assert rouge_l_fmeasure(existing, candidate) == fmeasure
    assert RougeScorer(["rougeL"]).score(existing, candidate)["rougeL"].fmeasure == fmeasure
    assert only_reason(candidate, [existing], rouge_l_threshold=threshold) is reason


@pytest.mark.parametrize(
    ("candidate", "existing", "reason"),
    [
        pytest.param("", [], RejectReason.EMPTY, id="empty-before-too-short"),
        pytest.param(
            "Describe each image " + "in detail " * 6, [], RejectReason.TOO_LONG,
            id="length-before-banned",
        ),
        pytest.param(
            "Describe the image.", ["Describe the image."], RejectReason.BANNED_KEYWORD,
            id="banned-before-duplicate",
        ),
        pytest.param(
            "Plan a week of dinners.", ["Plan a week of dinners."], RejectReason.DUPLICATE,
            id="duplicate-before-near-duplicate",
        ),
    ],
)
def test_the_first_failing_check_is_the_reason(candidate, existing, reason):
    assert only_reason(candidate, existing) is reason


def test_candidates_are_compared_with_those_kept_before_them():
    result = filter_prompts(
        [
            "Plan a week of dinners.",
            "plan a week of DINNERS",
            "Plan a week of cheap dinners.",
            "Explain how tides work.",
        ],
        existing=[],
        config=CONFIG,
    )

    assert result.kept == ("Plan a week of dinners.", "Explain how tides work.")
    assert result.rejected[RejectReason.DUPLICATE] == 1
    assert result.rejected[RejectReason.NEAR_DUPLICATE] == 1


def test_existing_prompts_are_not_returned():
    result = filter_prompts(["Explain how tides work."], ["Name three rivers."], CONFIG)

    assert result.kept == ("Explain how tides work.",)


def test_kept_prompts_are_stripped_and_keep_their_order():
    result = filter_prompts(["  Explain how tides work.\n", "Name three rivers."], [], CONFIG)

    assert result.kept == ("Explain how tides work.", "Name three rivers.")


def test_every_reject_reason_is_counted_even_when_zero():
    result = filter_prompts([], [], CONFIG)

    assert result.rejected == {reason: 0 for reason in RejectReason}


def test_no_banned_keywords_bans_nothing():
    assert only_reason("Describe this image.", banned_keywords=()) is None


@pytest.mark.parametrize(
    ("target", "prediction"),
    [
        pytest.param("Write a poem about the sea.", "Write a short poem about a sea.", id="close"),
        pytest.param("Explain tides.", "List three rivers in Europe.", id="unrelated"),
        pytest.param("the the the cat", "the cat the", id="repeated-words"),
        pytest.param("Héllo, wörld! 42", "hello world 42", id="non-ascii"),
        pytest.param("", "anything", id="empty"),
        pytest.param("!!!", "???", id="no-tokens"),
    ],
)
def test_rouge_l_matches_rouge_score(target, prediction):
    expected = RougeScorer(["rougeL"], use_stemmer=False).score(target, prediction)["rougeL"]

    assert rouge_l_fmeasure(target, prediction) == expected.fmeasure

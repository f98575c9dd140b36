"""Spec of constrained choice decoding: each score's exact tokens in context, walked as a trie.

Two tokenizers built here with the `tokenizers` library (no download) show why the tokens must
be taken in context: a byte-level BPE writes " 4" as one token, a SentencePiece-style one (as
Llama-2) writes the space and the digit as two tokens, "▁" and "4".
"""

from __future__ import annotations

import pytest

from selfreward.trainer.constrained import (
    ConstrainedScoreUnsupported,
    TokenChoice,
    plan_choices,
    walk,
)
from selfreward.trainer.failures import PermanentFailure
from selfreward.trainer.tiny import train_tokenizer

SCORES = [" 0", " 1", " 2", " 3", " 4", " 5"]
CONTEXT = "The response answers the question well and clearly.\nScore:"
CORPUS = [
    f"The response answers part of the question. It is {word} and short.\nScore: {n}"
    for n in range(6)
    for word in ("clear", "vague", "helpful", "wrong", "polite")
] * 4


@pytest.fixture(scope="module")
def byte_level():
    return train_tokenizer(CORPUS, vocab_size=400, style="byte-level")


@pytest.fixture(scope="module")
def sentencepiece():
    return train_tokenizer(CORPUS, vocab_size=400, style="sentencepiece")


def encoder(tokenizer):
    return lambda text: tokenizer.encode(text, add_special_tokens=False).ids


def tokens(tokenizer, ids):
    return [tokenizer.id_to_token(i) for i in ids]


def test_the_two_tokenizers_write_a_score_differently(byte_level, sentencepiece):
    assert byte_level.encode("Score: 4").tokens[-1] == "Ġ4"  # space and digit: one token
    assert sentencepiece.encode("Score: 4").tokens[-2:] == ["▁", "4"]  # as Llama-2: two tokens


def test_byte_level_scores_are_one_token_each_after_the_context(byte_level):
    trie = plan_choices(encoder(byte_level), CONTEXT, SCORES)

    assert list(trie.prompt_ids) == encoder(byte_level)(CONTEXT)
    assert {choice: tokens(byte_level, ids) for choice, ids in trie.continuations.items()} == {
        f" {n}": [f"Ġ{n}"] for n in range(6)
    }


def test_sentencepiece_scores_share_the_space_token_which_goes_into_the_prompt(sentencepiece):
    encode = encoder(sentencepiece)
    trie = plan_choices(encode, CONTEXT, SCORES)

    assert list(trie.prompt_ids) == encode(CONTEXT) + [sentencepiece.token_to_id("▁")]
    assert {choice: tokens(sentencepiece, ids) for choice, ids in trie.continuations.items()} == {
        f" {n}": [str(n)] for n in range(6)
    }


@pytest.mark.parametrize("style", ["byte-level", "sentencepiece"])
@pytest.mark.parametrize("wanted", [0, 3, 5])
def test_a_walk_writes_exactly_the_tokens_of_context_plus_choice(style, wanted, byte_level, sentencepiece):
    tokenizer = byte_level if style == "byte-level" else sentencepiece
    encode = encoder(tokenizer)
    trie = plan_choices(encode, CONTEXT, SCORES)
    calls = []

    def pick(steps, round_number):
        calls.append(steps)
        (step,) = steps
        chosen = encode(CONTEXT + f" {wanted}")[len(step.prompt_ids)]
        assert chosen in step.allowed_ids
        return [chosen]

    assert walk([trie], pick) == [f" {wanted}"]
    assert len(calls) == 1  # one branching step: the digit; nothing else is asked
    assert len(calls[0][0].allowed_ids) == 6


def char_encode(text):
    """A character tokenizer: one token per character, its code point."""
    return [ord(c) for c in text]


def test_forced_tokens_are_appended_without_asking_the_model():
    # After the shared prefix "x", the choices are "ab1", "ab2" and "c": the model picks a/c,
    # then "b" is forced, then it picks 1/2.
    trie = plan_choices(char_encode, "x", ["ab1", "ab2", "c"])
    seen: list[list[TokenChoice]] = []

    def pick(steps, round_number):
        seen.append(steps)
        return [steps[0].allowed_ids[0]]  # "a" (97) before "c" (99); then "1" before "2"

    assert walk([trie], pick) == ["ab1"]
    assert [step.prompt_ids for (step,) in seen] == [char_encode("x"), char_encode("xab")]
    assert [step.allowed_ids for (step,) in seen] == [[ord("a"), ord("c")], [ord("1"), ord("2")]]


def test_walks_are_batched_per_round_and_finished_walks_wait():
    tries = [plan_choices(char_encode, ctx, ["ab1", "ab2", "c"]) for ctx in ("x", "y")]
    rounds = []

    def pick(steps, round_number):
        rounds.append((round_number, len(steps)))
        # the walk after "x" picks "c" and is done; the walk after "y" picks "a", then "2"
        return [
            step.allowed_ids[-1] if step.prompt_ids[0] == ord("x") or round_number == 1 else step.allowed_ids[0]
            for step in steps
        ]

    assert walk(tries, pick) == ["c", "ab2"]
    assert rounds == [(0, 2), (1, 1)]


def test_a_pick_outside_the_allowed_tokens_is_an_error():
    trie = plan_choices(char_encode, "x", [" 1", " 2"])

    with pytest.raises(RuntimeError, match="not among the allowed"):
        walk([trie], lambda steps, round_number: [ord("9")])


def test_no_walks_need_no_calls():
    assert walk([], lambda steps, round_number: pytest.fail("called")) == []


# --- tokenizers that cannot carry the constraint ------------------------------------------------


def digits_dropped(text):
    """A tokenizer that silently drops digits (a vocabulary without them and no unknown token)."""
    return [ord(c) for c in text if not c.isdigit()]


def digits_unknown(text):
    """A tokenizer that maps every digit to one unknown token."""
    return [0 if c.isdigit() else ord(c) for c in text]


@pytest.mark.parametrize(
    ("encode", "choices", "message"),
    [
        pytest.param(digits_dropped, SCORES, "cannot tell the scores", id="choice-tokenizes-to-nothing"),
        pytest.param(digits_unknown, SCORES, "cannot tell the scores", id="choices-all-unknown"),
        pytest.param(char_encode, [" 1", " 10"], "cannot tell the scores", id="one-choice-prefix-of-another"),
        pytest.param(char_encode, [" 10", " 1"], "cannot tell the scores", id="prefix-given-second"),
        pytest.param(char_encode, [" 1", " 12", " 3"], "cannot tell the scores", id="prefix-below-the-root"),
        pytest.param(char_encode, [" 12", " 1", " 3"], "cannot tell the scores", id="prefix-below-the-root-second"),
    ],
)
def test_a_tokenizer_that_cannot_write_the_choices_fails_permanently(encode, choices, message):
    with pytest.raises(ConstrainedScoreUnsupported, match=message) as raised:
        plan_choices(encode, CONTEXT, choices)

    assert isinstance(raised.value, PermanentFailure)
    assert "judge.constrainedScore: false" in str(raised.value)


def test_a_real_tokenizer_without_digits_fails_permanently():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    letters = Tokenizer(models.BPE(unk_token="<unk>"))
    letters.pre_tokenizer = pre_tokenizers.Whitespace()
    letters.train_from_iterator(["score the answer"] * 10, trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>"]))

    with pytest.raises(ConstrainedScoreUnsupported):
        plan_choices(encoder(letters), CONTEXT, SCORES)


def test_fewer_than_two_choices_is_a_programming_error():
    with pytest.raises(ValueError):
        plan_choices(char_encode, "x", [" 1"])

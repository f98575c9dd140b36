"""Spec of judging: the model's own score first; a constrained score only where it gave none, counted.

A fake backend returns fixed judgement texts and answers constrained steps; its tokenizer is the
SentencePiece-style one (a score is "▁", "4"), so the token ids it is asked about can be checked
against the tokenization of the final text.
"""

from __future__ import annotations

import pytest

from selfreward.trainer.backends import Completion
from selfreward.trainer.judging import Judgement, judge_responses, judgement_counts
from selfreward.trainer.rubric import parse_score
from selfreward.trainer.tiny import train_tokenizer

CORPUS = [f"The answer is {w}.\nScore: {n}" for n in range(10) for w in ("good", "poor", "fine")] * 4


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=300, style="sentencepiece")


class FakeBackend:
    """Writes the given judgement texts; picks the allowed token at `pick_index` when asked."""

    def __init__(self, tokenizer, outputs, pick_index=-1):
        self.tokenizer, self.outputs, self.pick_index = tokenizer, outputs, pick_index
        self.messages, self.samplings, self.steps = [], [], []

    def render_chat(self, user_messages):
        self.messages.extend(user_messages)
        return [f"<s>[INST] {m[:20]} [/INST]" for m in user_messages]

    def encode(self, text):
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def generate(self, prompts, sampling, progress=None):
        self.samplings.append(sampling)
        return [[c if isinstance(c, Completion) else Completion(c) for c in self.outputs[p]] for p in range(len(prompts))]

    def pick_tokens(self, steps, temperature, seed):
        self.steps.append((list(steps), temperature, seed))
        return [step.allowed_ids[self.pick_index] for step in steps]


def section(constrained, low=0, high=5, samples=3):
    return {
        "samples": samples,
        "temperature": 0.7,
        "topP": 0.9,
        "maxTokens": 64,
        "scoreRange": {"min": low, "max": high},
        "constrainedScore": constrained,
    }


OUTPUTS = [
    [
        "Clear and complete.\nScore: 3",  # the model's own valid score
        "It rambles on",  # no label at all
        Completion("Mostly right.\nScore: 7", truncated=False),  # out of range
    ],
    [
        Completion("Good start but it never", truncated=True),  # cut off at maxTokens
        "Polite.\n**Score:** five",  # unreadable value
        "Score: 4/5",  # valid
    ],
]


def test_without_the_constraint_unscored_judgements_stay_unscored(tokenizer):
    backend = FakeBackend(tokenizer, OUTPUTS)

    judged = judge_responses(backend, [("Q1", "A1"), ("Q2", "A2")], section(False), seed=7)

    assert [[j.score for j in js] for js in judged] == [[3, None, None], [None, None, 4]]
    assert not backend.steps
    assert judgement_counts([j for js in judged for j in js]) == {
        "parseFailures": 4,
        "constrainedScores": 0,
        "truncatedJudgements": 1,
    }


def test_the_judge_writes_freely_without_a_stop_at_the_score_line(tokenizer):
    backend = FakeBackend(tokenizer, OUTPUTS)

    judge_responses(backend, [("Q1", "A1"), ("Q2", "A2")], section(True), seed=7)

    (sampling,) = backend.samplings
    assert sampling.stop == () and sampling.n == 3 and sampling.max_tokens == 64


def test_the_constraint_scores_only_what_the_model_left_unscored(tokenizer):
    backend = FakeBackend(tokenizer, OUTPUTS, pick_index=-1)  # always the highest allowed score

    judged = judge_responses(backend, [("Q1", "A1"), ("Q2", "A2")], section(True), seed=7)

    assert [[(j.score, j.constrained) for j in js] for js in judged] == [
        [(3, False), (5, True), (5, True)],
        [(5, True), (5, True), (4, False)],
    ]
    texts = [j.text for js in judged for j in js]
    assert texts == [
        "Clear and complete.\nScore: 3",
        "It rambles on\nScore: 5",
        "Mostly right.\nScore: 5",
        "Good start but it never\nScore: 5",
        "Polite.\n**Score: 5",
        "Score: 4/5",
    ]
    assert all(parse_score(j.text) == j.score for js in judged for j in js)
    assert judgement_counts([j for js in judged for j in js]) == {
        "parseFailures": 4,  # the model did not score these itself
        "constrainedScores": 4,
        "truncatedJudgements": 1,
    }
    assert judged[1][0] == Judgement("Good start but it never\nScore: 5", 5, constrained=True, truncated=True)


def test_constrained_steps_are_the_exact_tokens_of_the_final_text(tokenizer):
    backend = FakeBackend(tokenizer, OUTPUTS, pick_index=2)  # the third allowed score: 2

    judged = judge_responses(backend, [("Q1", "A1"), ("Q2", "A2")], section(True), seed=7)

    ((steps, temperature, seed),) = backend.steps  # one batched call: the digit is the only branch
    assert (len(steps), temperature, seed) == (4, 0.7, 8)
    prompts = [f"<s>[INST] {m[:20]} [/INST]" for m in backend.messages]
    constrained = [(prompts[i], j) for i, js in enumerate(judged) for j in js if j.constrained]
    for step, (prompt, judgement) in zip(steps, constrained):
        assert judgement.score == 2
        assert step.prompt_ids + [step.allowed_ids[2]] == backend.encode(prompt + judgement.text)
        assert [tokenizer.id_to_token(i) for i in step.allowed_ids] == ["0", "1", "2", "3", "4", "5"]
        assert tokenizer.id_to_token(step.prompt_ids[-1]) == "▁"  # the space is a token of its own


def test_the_prompt_and_the_choices_follow_the_spec_score_range(tokenizer):
    backend = FakeBackend(tokenizer, [["No score here."]], pick_index=0)

    (judged,) = judge_responses(backend, [("Q", "A")], section(True, low=1, high=9, samples=1), seed=0)

    assert "a whole number from 1 to 9" in backend.messages[0]
    ((steps, _, _),) = backend.steps
    assert [tokenizer.id_to_token(i) for i in steps[0].allowed_ids] == [str(n) for n in range(1, 10)]
    assert judged[0].score == 1 and judged[0].text.endswith("Score: 1")


def test_nothing_to_constrain_asks_nothing(tokenizer):
    backend = FakeBackend(tokenizer, [["Fine.\nScore: 2", "Score: 0"]])

    (judged,) = judge_responses(backend, [("Q", "A")], section(True, samples=2), seed=0)

    assert [j.score for j in judged] == [2, 0]
    assert not backend.steps

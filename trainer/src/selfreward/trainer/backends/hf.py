"""transformers `generate` fallback for machines without vLLM: batched, never one prompt at a time."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from selfreward.trainer.backends import ChatTokenizer, Completion, Sampling
from selfreward.trainer.constrained import TokenChoice
from selfreward.trainer.progress import Progress

BATCH_ENV = "SELFREWARD_HF_BATCH"


class HfBackend(ChatTokenizer):
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
        self.end_ids = _end_token_ids(self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id)

    def _encode(self, prompts: Sequence[str]):
        return self.tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)

    def generate(self, prompts: Sequence[str], sampling: Sampling, progress: Progress | None = None) -> list[list[Completion]]:
        self.torch.manual_seed(sampling.seed)
        results: list[list[Completion]] = []
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
            new_tokens = output[:, encoded["input_ids"].shape[1] :]
            texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            completions = []
            for row, text in zip(new_tokens.tolist(), texts):
                cut = _cut_at_stop(text, sampling.stop)
                # Cut off: all max_tokens were generated with no end token and no stop string.
                # (A row that ended early is padded, and its pad is an end token or follows one.)
                ended = cut != text or any(token in self.end_ids for token in row)
                completions.append(Completion(cut, len(row) >= sampling.max_tokens and not ended))
            results.extend(completions[i * sampling.n : (i + 1) * sampling.n] for i in range(len(batch)))
            if progress is not None:
                progress.set(len(results) * sampling.n, len(prompts) * sampling.n)
        return results

    def pick_tokens(self, steps: Sequence[TokenChoice], temperature: float, seed: int) -> list[int]:
        torch = self.torch
        generator = torch.Generator(device="cpu").manual_seed(seed)
        picked: list[int] = []
        for start in range(0, len(steps), self.batch):
            batch = steps[start : start + self.batch]
            width = max(len(step.prompt_ids) for step in batch)
            pad = self.tokenizer.pad_token_id
            input_ids = torch.tensor([[pad] * (width - len(s.prompt_ids)) + list(s.prompt_ids) for s in batch])
            mask = torch.tensor([[0] * (width - len(s.prompt_ids)) + [1] * len(s.prompt_ids) for s in batch])
            # Positions as `generate` computes them for left padding, so a padded row reads as unpadded.
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.no_grad():
                logits = self.model(
                    input_ids=input_ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    position_ids=positions.to(self.device),
                ).logits[:, -1, :].float().cpu()
            for row, step in zip(logits, batch):
                allowed = list(step.allowed_ids)
                scores = row[allowed]
                if temperature > 0:
                    probs = torch.softmax(scores / temperature, dim=-1)
                    choice = int(torch.multinomial(probs, 1, generator=generator))
                else:
                    choice = int(scores.argmax())
                picked.append(allowed[choice])
        return picked

    def close(self) -> None:
        del self.model


def _end_token_ids(*values) -> set[int]:
    ids: set[int] = set()
    for value in values:
        if isinstance(value, int):
            ids.add(value)
        elif value is not None:
            ids.update(int(v) for v in value)
    return ids


def _cut_at_stop(text: str, stops: Sequence[str]) -> str:
    cut = len(text)
    for stop in stops:
        position = text.find(stop)
        if position != -1:
            cut = min(cut, position)
    return text[:cut]

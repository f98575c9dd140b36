"""What makes a folder a usable Hugging Face model: config, every weight file, a tokenizer.

Pure: it judges a listing of file names (and the safetensors index, when there is one), so the
same rule applies to a local folder, an S3 prefix a user uploaded with any S3 client, and a
committed model. A model is refused before anything loads it, naming what is missing.
"""

from __future__ import annotations

import json
from typing import Iterable

CONFIG = "config.json"
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def is_weight_file(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.endswith(".safetensors") or (base.startswith("pytorch_model") and base.endswith(".bin"))


def problems(names: Iterable[str], index_text: str | None = None) -> list[str]:
    """Why the files `names` (relative to the folder) are not a loadable model; empty when they are.

    `index_text` is the content of the weight index (model.safetensors.index.json) when the
    folder has one: every shard it names must be present, so a half-finished upload is caught.
    """
    present = set(names)
    if not present:
        return ["the folder is empty"]
    found: list[str] = []
    if CONFIG not in present:
        found.append(f"no {CONFIG}")
    if not any(is_weight_file(name) for name in present):
        found.append("no weights (*.safetensors or pytorch_model*.bin)")
    if not any(name in present for name in TOKENIZER_FILES):
        found.append("no tokenizer (" + ", ".join(TOKENIZER_FILES) + ")")
    if index_text is not None:
        try:
            shards = sorted(set(json.loads(index_text)["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            found.append("its weight index is not valid JSON with a weight_map")
        else:
            missing = [shard for shard in shards if shard not in present]
            if missing:
                found.append(f"{len(missing)} of {len(shards)} weight shards named by the index are missing: "
                             + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
    return found


def index_name(names: Iterable[str]) -> str | None:
    present = set(names)
    return next((name for name in WEIGHT_INDEXES if name in present), None)

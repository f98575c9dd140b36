"""Checks a local run makes before anything starts, and what it learns doing them.

The seed files must parse, row by row (a malformed row is reported with its file and line), and
every model the spec names must be a loadable Hugging Face folder: a plain folder the user
uploaded is fine, a missing or half-uploaded one is refused naming the field. Nothing runs until
all of it holds. Used by `selfreward run` and `selfreward validate`; the stage programs check
again on their own. The content identities found on the way let the planner rerun whatever was
made from a seed file or model that changed since.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Preflight:
    errors: list[str] = field(default_factory=list)
    identities: dict[str, str] = field(default_factory=dict)  # external input URI -> content identity


def storage_for(spec: dict[str, Any]):
    """The run's storage as spec.storage describes it (credentials come from the environment)."""
    from selfreward.trainer.storage import Storage, StorageOptions

    options = spec["storage"]
    return Storage(StorageOptions(options.get("endpoint"), options.get("region"), options["addressingStyle"]))


def model_fields(spec: dict[str, Any]) -> list[tuple[str, str]]:
    fields = [("spec.baseModel.uri", spec["baseModel"]["uri"])]
    if spec["promptGeneration"].get("model"):
        fields.append(("spec.promptGeneration.model", spec["promptGeneration"]["model"]))
    if spec["evaluation"]["headToHead"].get("judge"):
        fields.append(("spec.evaluation.headToHead.judge", spec["evaluation"]["headToHead"]["judge"]))
    return fields


def check(spec: dict[str, Any]) -> Preflight:
    """Read every seed file and look at every model; one message per problem."""
    from selfreward.trainer.data import DataError, EvaluationRow, HoldoutRow, InstructionRow, parse_jsonl, score_in_range
    from selfreward.trainer.failures import PermanentFailure
    from selfreward.trainer.storage import sha256_bytes

    storage = storage_for(spec)
    score_range = spec["judge"]["scoreRange"]
    files = [
        ("spec.seed.instructions", spec["seed"]["instructions"], InstructionRow, None),
        ("spec.seed.evaluations", spec["seed"]["evaluations"], EvaluationRow, score_in_range(score_range["min"], score_range["max"])),
    ]
    if spec["seed"].get("evaluationHoldout"):
        files.append(("spec.seed.evaluationHoldout", spec["seed"]["evaluationHoldout"], HoldoutRow, None))
    result = Preflight()
    for where, uri, row_type, row_check in files:
        try:
            data = storage.read_bytes(uri)
            parse_jsonl(data.decode("utf-8"), uri, row_type, row_check)
            result.identities[uri] = sha256_bytes(data)
        except DataError as error:
            result.errors.append(str(error))
        except FileNotFoundError:
            result.errors.append(f"{where}: {uri} does not exist")
        except Exception as error:  # storage unreachable or no credentials: say so, do not crash
            result.errors.append(f"{where}: cannot read {uri}: {type(error).__name__}: {error}")
    for where, uri in model_fields(spec):
        try:
            result.identities[uri] = storage.inspect_model(uri).identity
        except PermanentFailure as error:
            result.errors.append(f"{where}: {error}")
        except Exception as error:
            result.errors.append(f"{where}: cannot read {uri}: {type(error).__name__}: {error}")
    return result

"""Checks a local run makes before anything starts: the seed files parse, row by row.

A malformed seed row is reported with its file and line, and nothing runs. Used by
`selfreward run` and `selfreward validate`; the stage programs check again on their own.
"""

from __future__ import annotations

from typing import Any


def seed_errors(spec: dict[str, Any]) -> list[str]:
    """One message per unreadable or malformed seed file (empty when all are good)."""
    from selfreward.trainer.data import DataError, EvaluationRow, HoldoutRow, InstructionRow, read_rows, score_in_range
    from selfreward.trainer.storage import Storage, StorageOptions

    storage_spec = spec["storage"]
    storage = Storage(StorageOptions(storage_spec.get("endpoint"), storage_spec.get("region"), storage_spec["addressingStyle"]))
    score_range = spec["judge"]["scoreRange"]
    files = [
        ("seed.instructions", spec["seed"]["instructions"], InstructionRow, None),
        ("seed.evaluations", spec["seed"]["evaluations"], EvaluationRow, score_in_range(score_range["min"], score_range["max"])),
    ]
    if spec["seed"].get("evaluationHoldout"):
        files.append(("seed.evaluationHoldout", spec["seed"]["evaluationHoldout"], HoldoutRow, None))
    errors = []
    for field, uri, row_type, check in files:
        try:
            read_rows(storage, uri, row_type, check)
        except DataError as error:
            errors.append(str(error))
        except FileNotFoundError:
            errors.append(f"spec.{field}: {uri} does not exist")
        except Exception as error:  # storage unreachable or no credentials: say so, do not crash
            errors.append(f"spec.{field}: cannot read {uri}: {type(error).__name__}: {error}")
    return errors

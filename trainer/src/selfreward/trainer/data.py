"""Seed data files: JSON Lines rows validated one by one, errors named by file and line.

A malformed row is never skipped silently: the whole file is refused, listing every bad line,
so that a user fixes the data instead of training on part of it.
"""

from __future__ import annotations

import json
from typing import Any, Callable, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from selfreward.trainer.failures import PermanentFailure
from selfreward.trainer.storage import Storage

MAX_REPORTED = 20
Row = TypeVar("Row", bound=BaseModel)


class DataError(PermanentFailure, ValueError):
    """A data file has malformed rows; the message lists `file:line: problem` for each."""


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InstructionRow(_Row):
    prompt: str = Field(min_length=1)
    response: str = Field(min_length=1)


class EvaluationRow(_Row):
    prompt: str = Field(min_length=1)
    response: str
    justification: str = Field(min_length=1)
    score: int


class RankedResponse(_Row):
    text: str
    rank: int = Field(ge=1)


class HoldoutRow(_Row):
    prompt: str = Field(min_length=1)
    responses: list[RankedResponse] = Field(min_length=2)

    @field_validator("responses")
    @classmethod
    def _distinct_ranks(cls, responses: list[RankedResponse]) -> list[RankedResponse]:
        ranks = [r.rank for r in responses]
        if len(set(ranks)) != len(ranks):
            raise ValueError(f"ranks must be distinct, got {ranks}")
        return responses


def parse_jsonl(text: str, source: str, row_type: type[Row], check: Callable[[Row], str | None] | None = None) -> list[Row]:
    rows: list[Row] = []
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw: Any = json.loads(line)
            row = row_type.model_validate(raw)
        except json.JSONDecodeError as error:
            problems.append(f"{source}:{number}: not valid JSON ({error.msg} at column {error.colno})")
            continue
        except ValidationError as error:
            detail = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'row'}: {e['msg']}" for e in error.errors())
            problems.append(f"{source}:{number}: {detail}")
            continue
        extra = check(row) if check else None
        if extra:
            problems.append(f"{source}:{number}: {extra}")
            continue
        rows.append(row)
    if problems:
        shown = problems[:MAX_REPORTED]
        more = f"\n... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        raise DataError(f"{len(problems)} malformed row(s) in {source}:\n" + "\n".join(shown) + more)
    if not rows:
        raise DataError(f"{source}: no rows")
    return rows


def read_rows(storage: Storage, uri: str, row_type: type[Row], check: Callable[[Row], str | None] | None = None) -> list[Row]:
    return parse_jsonl(storage.read_text(uri), uri, row_type, check)


def score_in_range(low: int, high: int) -> Callable[[EvaluationRow], str | None]:
    def check(row: EvaluationRow) -> str | None:
        if not low <= row.score <= high:
            return f"score: {row.score} is outside the judge's range {low}..{high}"
        return None

    return check

"""Progress events: one JSON object per line on stderr, read live by the local executor.

`{"selfreward": "progress", "stage": "judge", "shard": 0, "done": 12, "total": 48, "unit": "judgements"}`
Anything else on stderr (library logs) passes through untouched.
"""

from __future__ import annotations

import json
import sys
import time

EVENT_KEY = "selfreward"


class Progress:
    """Counts work items of one shard and reports them at most every `interval` seconds."""

    def __init__(self, stage: str, shard: int, total: int, unit: str, interval: float = 0.5):
        self.stage, self.shard, self.total, self.unit = stage, shard, total, unit
        self.done = 0
        self.interval = interval
        self._last = 0.0
        self._emit(force=True)

    def set(self, done: int, total: int | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        self._emit()

    def finish(self) -> None:
        self.done = max(self.done, self.total)
        self._emit(force=True)

    def _emit(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval and self.done < self.total:
            return
        self._last = now
        event = {
            EVENT_KEY: "progress",
            "stage": self.stage,
            "shard": self.shard,
            "done": self.done,
            "total": self.total,
            "unit": self.unit,
        }
        print(json.dumps(event), file=sys.stderr, flush=True)


def note(stage: str, message: str, **fields: object) -> None:
    """A one-off event the executor shows as a line (e.g. a shard skipped)."""
    print(json.dumps({EVENT_KEY: "note", "stage": stage, "message": message, **fields}), file=sys.stderr, flush=True)


def parse_event(line: str) -> dict | None:
    if not line.startswith("{") or EVENT_KEY not in line:
        return None
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and EVENT_KEY in event else None

"""Running stage programs in tests as the executors do: a subprocess per group of stages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any


@dataclass
class StageRun:
    code: int
    summaries: list[dict[str, Any]]
    stderr: str

    def summary(self, stage: str) -> dict[str, Any]:
        return next(s for s in self.summaries if s["stage"] == stage)


def run_stages(configs: list[dict[str, Any]], env: dict[str, str] | None = None, timeout: float = 900) -> StageRun:
    """`python -m selfreward.trainer a,b --config [...]`, as the executors call it."""
    names = ",".join(c["stage"] for c in configs)
    process = subprocess.run(
        [sys.executable, "-m", "selfreward.trainer", names, "--config", json.dumps(configs)],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )
    summaries = [json.loads(line) for line in process.stdout.splitlines() if line.startswith("{")]
    return StageRun(process.returncode, summaries, process.stderr)

"""What the imported base model M0 does as a judge before any EFT: the evaluate stage of
examples/smollm2.yaml run on M0 (SmolLM2-135M-Instruct), so that M1's figures from a run can be
set against it (what the 300 judge examples bought).

    make -s .selfreward/models/smollm2-135m-instruct/config.json
    .venv/bin/python bench/base_model_evaluation.py

Runs the stage program as the executors do (one process, vLLM on CPU) with the example's judge
and generation settings on its 48 held-out prompts; prints and writes
bench/results/smollm2-m0-evaluation.json: the reward-model metrics, parse failures, constrained
scores, the answers' mean length, and the stage's wall time.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULT = REPO / "bench" / "results" / "smollm2-m0-evaluation.json"


def main() -> None:
    from selfreward.operator import layout
    from selfreward.operator import plan as planner
    from selfreward.operator.spec import load_run
    from selfreward.operator.stageconfig import stage_config

    run = load_run(REPO / "examples" / "smollm2.yaml")
    base = run.spec["baseModel"]["uri"]
    with tempfile.TemporaryDirectory() as scratch:
        root = layout.run_root(scratch, run.namespace, run.name)
        step = planner.step_for(run.spec, root, 1, "evaluate", 1)
        step = dataclasses.replace(step, inputs={**step.inputs, "model": base}, model=base)
        config = stage_config(run, root, step)
        started = time.monotonic()
        process = subprocess.run([sys.executable, "-m", "selfreward.trainer", "evaluate", "--config", json.dumps([config])],
                                 capture_output=True, text=True)
        seconds = round(time.monotonic() - started, 1)
    summaries = [json.loads(line) for line in process.stdout.splitlines() if line.startswith("{")]
    if process.returncode != 0 or not summaries:
        sys.exit(f"the evaluate stage failed ({process.returncode}):\n{process.stderr[-3000:]}")
    metrics = summaries[0]["metrics"]
    result = {"model": "SmolLM2-135M-Instruct (M0, imported, no EFT)", "seconds": seconds, "metrics": metrics,
              "meanResponseChars": round(metrics["responseChars"] / metrics["responses"], 1)}
    RESULT.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps(result, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()

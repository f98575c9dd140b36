"""What checkpoints cost a training stage: one SFT stage of a 135M-parameter model made for the
bench (8 layers, hidden 1024, the size of SmolLM2-135M), trained on one process on CPU with a
resumable checkpoint every 5 steps (weights, Adam state: 1.6 GB each), against the same stage
without checkpoints.

    .venv/bin/python bench/checkpoint_uploads.py [--steps-between 5]

The stage runs as the executors launch it (tests/fixtures/training.py), with the run's storage on
the local disk (an upload is a copy plus the sha256 of every file). Figures come from the
stage's own metrics: `trainSeconds` (the trainer's runtime: process start and model load left
out), `checkpointUploadSeconds` (uploads and commits, in the background) and
`checkpointWaitSeconds` (the training's own time on checkpoints past the saves: hard links and
waiting for an upload before the next save or at the end). The cost of checkpoints to the
training is the difference of `trainSeconds` with and without them.

Writes bench/results/checkpoint-uploads.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULT = REPO / "bench" / "results" / "checkpoint-uploads.json"
STEPS = 15  # 90 seed examples, batch 6, one epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps-between", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    args = parser.parse_args()
    from selfreward.trainer.tiny import make_tiny_model, texts_from_jsonl
    from tests.fixtures.training import train

    seed = REPO / "examples" / "seed"
    cases = {"withoutCheckpoints": STEPS + 1, "withCheckpoints": args.steps_between}
    results = {}
    with tempfile.TemporaryDirectory(prefix="ckptbench-") as scratch:
        base = make_tiny_model(Path(scratch) / "model", texts_from_jsonl(sorted(seed.glob("*.jsonl"))),
                               hidden_size=args.hidden, layers=args.layers, heads=args.hidden // 64)
        for name, every in cases.items():
            started = time.monotonic()
            trained = train(Path(scratch) / name, "sft", 1, ("sft.epochs", 1), ("sft.checkpointEvery", every), base=base)
            metrics = trained.summary["metrics"]
            results[name] = {key: metrics.get(key) for key in ("steps", "trainSeconds", "checkpointUploadSeconds",
                                                              "checkpointWaitSeconds")}  # None: code before the metrics
            results[name]["checkpointEvery"] = every
            results[name]["stageSeconds"] = round(time.monotonic() - started, 2)
            print(name, json.dumps(results[name]), file=sys.stderr, flush=True)
        parameters = sum(tensor.numel() for tensor in trained.tensors().values())
    cost = results["withCheckpoints"]["trainSeconds"] - results["withoutCheckpoints"]["trainSeconds"]
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} cores, CPU, storage on the local disk",
        "parameters": parameters, "cases": results,
        "checkpoints": (STEPS - 1) // args.steps_between,
        "checkpointCostSeconds": round(cost, 2),
    }
    if results["withCheckpoints"]["checkpointUploadSeconds"] is not None:
        result["uploadSecondsOffTheCriticalPath"] = round(results["withCheckpoints"]["checkpointUploadSeconds"]
                                                          - results["withCheckpoints"]["checkpointWaitSeconds"], 2)
    RESULT.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps(result, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()

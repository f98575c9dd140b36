"""Training with several processes on CPU: seconds per optimizer step and peak memory of the
largest process, for one process, plain data parallelism, ZeRO-2, ZeRO-3 and the memory
options, on the tiny model the tests use (2 layers, hidden 128: the figures show what each
mode adds around the arithmetic, not a GPU's speed).

    .venv/bin/python bench/distributed_training.py

Each case is one SFT or DPO stage launched as the executors launch it (torchrun, gloo), on the
90 seed examples (SFT: batch 6, 15 steps) or 60 pairs (DPO: batch 60, 1 step). Seconds per step
come from the trainer's own runtime (`trainSeconds` / `steps`, so process start and model load
are left out); memory is the peak resident set of the largest process of the launch (the
kernel's ru_maxrss of waited-for children, read in a fresh child per case).
Writes bench/results/distributed-training.json.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CASES = [
    ("sft", "one process", 1, []),
    ("sft", "2 processes, plain data parallel", 2, [("sft.zeroStage", 0)]),
    ("sft", "2 processes, ZeRO-2", 2, [("sft.zeroStage", 2)]),
    ("sft", "2 processes, ZeRO-3", 2, [("sft.zeroStage", 3)]),
    ("sft", "2 processes, ZeRO-3, gradient checkpointing", 2, [("sft.zeroStage", 3), ("sft.gradientCheckpointing", True)]),
    ("sft", "2 processes, ZeRO-3, LoRA rank 8", 2, [("sft.zeroStage", 3), ("sft.lora", {"rank": 8, "alpha": 16})]),
    ("dpo", "one process, reference model resident", 1, [("dpo.reference", "model")]),
    ("dpo", "one process, reference precomputed", 1, [("dpo.reference", "precomputed")]),
    ("dpo", "2 processes, ZeRO-3, reference precomputed", 2, [("dpo.zeroStage", 3)]),
]


def measure(case: tuple, base: str, folder: str) -> dict:
    """One case, in a fresh process so that ru_maxrss counts only this launch's processes."""
    from tests.fixtures.training import train

    stage, name, processes, edits = case
    trained = train(Path(folder), stage, processes, *edits, base=Path(base))
    metrics = trained.summary["metrics"]
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"stage": stage, "case": name, "processes": processes, "steps": metrics["steps"],
            "secondsPerStep": round(metrics["trainSeconds"] / metrics["steps"], 3),
            "peakRssMiB": round(peak_kib / 1024), "trainLoss": round(metrics["trainLoss"], 5)}


def main() -> None:
    from selfreward.trainer.tiny import make_tiny_model, texts_from_jsonl

    seed = REPO / "examples" / "seed"
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        base = make_tiny_model(Path(scratch) / "tiny", texts_from_jsonl(sorted(seed.glob("*.jsonl"))))
        for index, case in enumerate(CASES):
            with ProcessPoolExecutor(1) as fresh:
                result = fresh.submit(measure, case, str(base), f"{scratch}/case-{index}").result()
            print(json.dumps(result), flush=True)
            results.append(result)
    out = REPO / "bench" / "results" / "distributed-training.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()

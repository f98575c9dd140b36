"""`python -m selfreward.trainer <stage>[,<stage>...] --config <json | @file>`: run stage programs.

Several stages that use the same model may run in one process (one engine load); each still
writes its own manifest and prints its own summary line. The process stops at the first failure.
Exit codes: 0 all done, 1 failed (may succeed on retry), 2 invalid config or data (will not).
Under torchrun (training with several processes) world rank 0 prints the summary of a stage
that succeeded; a process that fails prints its own.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from typing import Any, Callable

from selfreward.trainer.contract import (ConfigError, Stage, StageConfig, parse_configs, report, reports,
                                         reserve_stdout_for_summaries)
from selfreward.trainer.failures import classify
from selfreward.trainer.stagekit import StageResult, lineage_of
from selfreward.trainer.storage import Storage

EXIT_RETRYABLE = 1
EXIT_PERMANENT = 2
LAUNCHER_ENV = "TORCHELASTIC_RUN_ID"  # set by torchrun in every process it starts


def die_with_launcher() -> None:
    """Linux: get SIGKILL when torchrun dies (killed with its executor, say), so no orphan keeps
    training and committing behind a new attempt's back."""
    import ctypes

    launcher = os.getppid()
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != launcher:  # it died before the line above
        os._exit(EXIT_RETRYABLE)


def end_with_children_on_sigterm() -> None:
    """On SIGTERM (the local executor died, or Kubernetes stops the pod) kill the processes this
    one started and exit at once. vLLM's engine runs in a child process that outlives its parent:
    without this, every stage interrupted this way left an idle engine holding gigabytes of memory.
    What was not committed is redone by the next attempt."""

    def end(signum, frame):
        import multiprocessing

        for child in multiprocessing.active_children():
            child.kill()
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, end)


def _runner(stage: Stage) -> Callable[..., StageResult]:
    from selfreward.trainer import compare, dpo, evaluate, generate, instruct, judge, sft

    return {
        Stage.INSTRUCT: instruct.run,
        Stage.GENERATE: generate.run,
        Stage.JUDGE: judge.run,
        Stage.EVALUATE: evaluate.run,
        Stage.COMPARE: compare.run,
        Stage.SFT: sft.run,
        Stage.DPO: dpo.run,
    }[stage]


INFERENCE = {Stage.INSTRUCT, Stage.GENERATE, Stage.JUDGE, Stage.EVALUATE, Stage.COMPARE}


def run_stage(config: StageConfig, storage: Storage) -> dict[str, Any]:
    started = time.monotonic()
    base = {"stage": config.stage.value, "iteration": config.iteration, "attempt": config.attempt}
    try:
        storage = storage.with_lineage(lineage_of(config, storage))
        if config.stage in INFERENCE:
            from selfreward.trainer.backends import open_backend

            def resource(uri: str):
                return open_backend(storage.local_folder(uri), config.random_seed, processes=config.processes)
        else:
            resource = storage.local_folder
        result = _runner(config.stage)(config, storage, resource)
    except Exception as error:  # the boundary: every failure becomes a summary with a reason
        traceback.print_exc(file=sys.stderr)
        permanent, reason = classify(error)
        return {
            **base,
            "ok": False,
            "permanent": permanent,
            "reason": reason,
            "error": str(error)[:2000],
        }
    return {
        **base,
        "ok": True,
        "seconds": round(time.monotonic() - started, 1),
        "shards": [{"index": s.index, "skipped": s.skipped} for s in result.shards],
        "metrics": result.metrics(),
        "outputs": config.outputs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m selfreward.trainer", description=__doc__.splitlines()[0])
    parser.add_argument("stages", help="stage name, or several joined by commas: " + ", ".join(s.value for s in Stage))
    parser.add_argument("--config", required=True, help="stage config as JSON, or @path to a JSON file")
    args = parser.parse_args(argv)
    reserve_stdout_for_summaries()
    end_with_children_on_sigterm()
    if LAUNCHER_ENV in os.environ:
        die_with_launcher()
    try:
        names = [Stage(name) for name in args.stages.split(",")]
        configs = parse_configs(args.config)
        if [c.stage for c in configs] != names:
            raise ConfigError(f"stages {args.stages!r} do not match the config's stages {[c.stage.value for c in configs]}")
    except (ConfigError, ValueError) as error:
        report({"stage": args.stages, "ok": False, "permanent": True, "reason": "InvalidConfig", "error": str(error)})
        return EXIT_PERMANENT
    storage = Storage(configs[0].storage.options())
    try:
        for config in configs:
            summary = run_stage(config, storage)
            if reports(summary):
                report(summary, stages=len(configs))
            if not summary["ok"]:
                return EXIT_PERMANENT if summary["permanent"] else EXIT_RETRYABLE
    finally:
        from selfreward.trainer.backends import close_all

        close_all()
    return 0


def exit_now(code: int) -> None:
    """End a process started by torchrun without interpreter teardown. Its summary and artifacts
    are written by now; what teardown (or destroying the process group) would still do is stop
    torch.distributed's communication threads, and a thread still joinable then aborts the
    process ("terminate called without an active exception", SIGABRT) when its peer has already
    gone, failing a launch that succeeded. Seen in CI under load, also after destroying the group."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_code = main()
    if LAUNCHER_ENV in os.environ:
        exit_now(exit_code)
    sys.exit(exit_code)

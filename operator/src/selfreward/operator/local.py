"""The local executor: runs a SelfRewardRun's steps as subprocesses on this machine.

It asks the planner for the next step, runs `python -m selfreward.trainer` for it (inference
stages that load the same model share one process; training runs under torchrun with the
placement's processes per replica, as in a PyTorchJob, this machine being its only node), records each summary line in the status
file and saves it after every change. Killed at any point (even SIGKILL), the same command
resumes: committed stages are skipped by the planner, committed shards by the stage program.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from selfreward.operator import launch, layout
from selfreward.operator import plan as planner
from selfreward.operator import status as status_core
from selfreward.operator.spec import RunDocument
from selfreward.operator.stageconfig import stage_config, summary_of

LOG_TAIL = 30


@dataclass(frozen=True)
class Paths:
    state: Path
    logs: Path
    uid: Path
    lock: Path

    @classmethod
    def for_run(cls, state_dir: Path, run: RunDocument) -> "Paths":
        base = state_dir / run.namespace / run.name
        return cls(base / "status.json", base / "logs", base / "uid", base / "lock")


def run_uid(path: Path) -> str:
    """The local run's identity, made on its first execution (metadata.uid's local stand-in)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(uuid.uuid4()))
    return path.read_text().strip()


def load_status(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def save_status(path: Path, status: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(status, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temporary, path)


class LocalExecutor:
    """Runs one run on this machine. `identities` are the content identities of the run's seed
    files and models (preflight.input_identities): a changed file reruns what was made from it."""

    def __init__(self, run: RunDocument, state_dir: Path, view: "View", python: str = sys.executable,
                 identities: dict[str, str] | None = None):
        self.run = run
        self.paths = Paths.for_run(state_dir, run)
        self.root = layout.run_root(run.spec["storage"]["uri"], run.namespace, run.name)
        self.view = view
        self.python = python
        self.identities = identities or {}

    def execute(self, retry_failed: bool = False) -> dict[str, Any]:
        """Run until the run succeeds, fails or is suspended; returns the final status.

        Holds the run's lock throughout: RunBusy when another executor runs it.
        """
        with RunLock(self.paths.lock):
            return self._execute(retry_failed)

    def _execute(self, retry_failed: bool) -> dict[str, Any]:
        spec = self.run.spec
        status = load_status(self.paths.state)
        if retry_failed:
            status = status_core.reset_failed(status)
        while True:
            decision = planner.plan(spec, status, self.root, self.identities)
            if isinstance(decision, planner.Waiting):
                # Status says Running, yet no process of ours runs it: the last executor died.
                # Rerun the same attempt; the stage program skips what was committed.
                self.view.line(f"iteration {decision.iteration} {decision.stage}: resuming an interrupted stage")
                decision = planner.resume_step(spec, status, self.root, decision, self.identities)
            status = status_core.summarize(status, decision, spec)
            save_status(self.paths.state, status)
            if not isinstance(decision, planner.Step):
                return status
            chain = planner.plan_chain(spec, status, self.root, status_core.record, first=decision, identities=self.identities)
            for step in chain:
                if step.restart:
                    self.view.line(f"iteration {step.iteration} {step.stage}: its inputs changed since it ran, "
                                   f"running it again (attempt {step.attempt})")
            status = self._run_chain(status, chain)

    def _run_chain(self, status: dict[str, Any], chain: list[planner.Step]) -> dict[str, Any]:
        names = ",".join(step.stage for step in chain)
        first = chain[0]
        uid = run_uid(self.paths.uid)
        configs = [stage_config(self.run, self.root, step, uid) for step in chain]
        log_path = self.paths.logs / f"iter-{first.iteration:02d}-{names.replace(',', '+')}-a{first.attempt}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.view.start_chain(chain)

        pending = list(chain)
        status = self._start(status, pending[0])
        program = ["-m", "selfreward.trainer", names, "--config", json.dumps(configs)]
        environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if first.kind == "training":
            placement = self.run.spec["placement"]["training"]
            command = launch.training_command(launch.local_launcher(self.python), 1, placement["processesPerReplica"],
                                              launch.local_rendezvous(), program)
            environment.update(launch.LOCAL_ENVIRONMENT)
            # torchrun's workers die with it by themselves (the stage program asks for SIGKILL).
            on_executor_death = signal.SIGKILL
        else:
            command = [self.python, *program]
            # The stage program ends its vLLM engine process on SIGTERM before it exits.
            on_executor_death = signal.SIGTERM
        with log_path.open("a", encoding="utf-8") as log:
            process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                bufsize=1,
                env=environment,
                preexec_fn=functools.partial(_die_with_parent, on_executor_death),
            )
            sink = LogSink(log)
            tail: deque[str] = deque(maxlen=LOG_TAIL)
            reader = threading.Thread(target=_pump_stderr, args=(process.stderr, sink, tail, self.view.event), daemon=True)
            reader.start()
            running: planner.Step | None = pending.pop(0)
            for line in process.stdout:
                sink.write(line)
                summary = summary_of(line)
                if summary is None or running is None:
                    continue
                status = status_core.record(status, running, summary)
                self.view.finish_step(running, summary)
                running = pending.pop(0) if summary["ok"] and pending else None
                if running is not None:
                    status = self._start(status, running)
                save_status(self.paths.state, status)
            code = process.wait()
            reader.join()
        if running is not None:
            summary = exit_summary(code, "".join(tail)[-1500:])
            status = status_core.record(status, running, summary)
            save_status(self.paths.state, status)
            self.view.finish_step(running, summary)
        if any(planner.stage_status(status, s.iteration, s.stage).get("state") == planner.StageState.FAILED.value for s in chain):
            self.view.line(f"log: {log_path}")
            self._back_off(status)
        return status

    def _start(self, status: dict[str, Any], step: planner.Step) -> dict[str, Any]:
        child = layout.child_name(self.run.name, step.iteration, step.stage, step.attempt)
        status = status_core.summarize(status_core.record_start(status, step, [child]), step, self.run.spec)
        save_status(self.paths.state, status)
        return status

    def _back_off(self, status: dict[str, Any]) -> None:
        decision = planner.plan(self.run.spec, status, self.root, self.identities)
        backoff = planner.retry_backoff(self.run.spec, status, decision) if isinstance(decision, planner.Step) else 0
        if backoff:
            self.view.line(f"retrying {decision.stage} (attempt {decision.attempt}) in {backoff:g}s")
            time.sleep(backoff)


def _die_with_parent(signal_number: int) -> None:
    """Linux: the stage program gets `signal_number` when the executor dies, so no orphan keeps writing."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal_number)


def exit_summary(code: int, last_output: str) -> dict[str, Any]:
    """The summary of a stage program that died before reporting: a kill (the kernel's OOM
    killer, or anyone's SIGKILL) and a crash are transient, retried within spec.retries."""
    if code == -signal.SIGKILL:
        reason, message = "OOMKilled", "stage program was killed by SIGKILL (out of memory, if nobody sent it)"
    elif code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        reason, message = "Killed", f"stage program was killed by {name}"
    else:
        reason, message = "ProcessExited", f"stage program exited with code {code} before reporting"
    # Status keeps 1,024 characters of a message: keep the end of the output, where the error is.
    return {"ok": False, "permanent": False, "reason": reason, "error": f"{message}; last output:\n{last_output[-800:]}"}


class LogSink:
    """One log file written from two threads (stdout and stderr pumps), a whole line at a time."""

    def __init__(self, log):
        self.log = log
        self.lock = threading.Lock()

    def write(self, line: str) -> None:
        with self.lock:
            self.log.write(line if line.endswith("\n") else line + "\n")
            self.log.flush()


class RunBusy(RuntimeError):
    """Another executor holds the run's lock."""


class RunLock:
    """One executor per run: an exclusive lock on `<state>/<ns>/<run>/lock`, naming its holder.

    The kernel releases it when the holder dies, even by SIGKILL, so a crashed run never blocks
    the command that resumes it.
    """

    def __init__(self, path: Path):
        self.path = path
        self.handle = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunBusy(f"the run is already running here ({holder}); its lock is {self.path}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
        handle.flush()
        self.handle = handle
        return self

    def __exit__(self, *exc_info) -> None:
        self.handle.close()


def _pump_stderr(stream, sink: LogSink, tail: deque, on_event: Callable[[dict[str, Any]], None]) -> None:
    from selfreward.trainer.progress import parse_event  # the stage programs' event format

    for line in stream:
        event = parse_event(line)
        if event is not None:
            on_event(event)
        else:
            sink.write(line)
            tail.append(line)


class View:
    """What the executor shows; the CLI provides a rich implementation, tests a silent one."""

    def line(self, text: str) -> None: ...
    def start_chain(self, chain: list[planner.Step]) -> None: ...
    def event(self, event: dict[str, Any]) -> None: ...
    def finish_step(self, step: planner.Step, summary: dict[str, Any]) -> None: ...

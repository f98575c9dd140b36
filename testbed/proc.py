"""Process, port and readiness helpers shared by the testbed and the test fixtures (stdlib only)."""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Mapping, Sequence

LOOPBACK = "127.0.0.1"
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.1,
               proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Poll `check` until it returns true; fail after `timeout` seconds or if `proc` exits."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not ready yet
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}{_tail(log)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready after {timeout:.0f} s{_tail(log)}")
        time.sleep(interval)


def _tail(log: Path | None, lines: int = 30) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return f"\n--- last lines of {log} ---\n" + "\n".join(text)


def http_ok(url: str, ctx: ssl.SSLContext | None = None, headers: Mapping[str, str] | None = None,
            timeout: float = 2.0) -> bool:
    """True when GET `url` answers 200 (any other answer or error is false)."""
    req = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:  # noqa: S310
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(name: str, argv: Sequence[str], log_dir: Path, pid_dir: Path,
          env: Mapping[str, str] | None = None, die_with_parent: bool = False,
          cwd: Path | None = None) -> subprocess.Popen:
    """Start `argv` in its own session, output to <log_dir>/<name>.log, pid to <pid_dir>/<name>.pid.

    die_with_parent: the kernel sends SIGTERM to the child if the calling process dies (used by
    the pytest fixtures, so a killed test run leaves no server behind). `up` leaves it off.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    pid_dir.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ)
    full_env.update(env or {})
    # Nothing of the testbed may reach out through a proxy.
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        full_env.pop(k, None)
    full_env["NO_PROXY"] = full_env["no_proxy"] = "127.0.0.1,localhost"
    with open(log_dir / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=full_env, cwd=cwd, start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )
    (pid_dir / f"{name}.pid").write_text(f"{proc.pid}\n")
    return proc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM the process group of `pid` (each testbed process leads its own), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            if not _alive(pid):
                return
            time.sleep(0.05)


def stop_pidfile(pid_file: Path, timeout: float = 10.0) -> bool:
    """Stop the process named by a pid file and remove the file. True if one was running."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        pid_file.unlink(missing_ok=True)
        return False
    running = _alive(pid) and _is_ours(pid, pid_file)
    if running:
        stop_pid(pid, timeout)
    pid_file.unlink(missing_ok=True)
    return running


def _start_time(pid: int) -> float:
    """Start time of `pid` in seconds since the epoch (from /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(") ", 1)[1].split()
    ticks = int(fields[19])  # field 22 of stat(5), counted after the command name
    with open("/proc/stat") as f:
        btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    return btime + ticks / os.sysconf("SC_CLK_TCK")


def _is_ours(pid: int, pid_file: Path) -> bool:
    """Guard against a recycled pid: the process must have started before its pid file was written."""
    try:
        return _start_time(pid) <= pid_file.stat().st_mtime + 2
    except (OSError, ValueError, IndexError):
        return False

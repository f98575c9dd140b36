"""Spec of the local executor's run lock and log file."""

import os
import subprocess
import sys
import threading

import pytest

from selfreward.operator.local import LogSink, RunBusy, RunLock

HOLD_THE_LOCK = """
import sys
from pathlib import Path
from selfreward.operator.local import RunLock
with RunLock(Path(sys.argv[1])):
    print("locked", flush=True)
    sys.stdin.read()
"""


# --- one executor per run ---------------------------------------------------------------------


def test_a_second_lock_on_the_same_run_is_refused_naming_the_holders_pid(tmp_path):
    path = tmp_path / "default" / "demo" / "lock"

    with RunLock(path):
        with pytest.raises(RunBusy) as refused:
            with RunLock(path):
                pass

    assert f"pid {os.getpid()} " in str(refused.value)
    assert str(path) in str(refused.value)


def test_the_lock_is_free_again_after_its_holder_is_done(tmp_path):
    path = tmp_path / "lock"
    with RunLock(path):
        pass

    with RunLock(path) as again:
        assert again.handle is not None


def test_locks_of_two_runs_do_not_conflict(tmp_path):
    with RunLock(tmp_path / "default" / "one" / "lock"):
        with RunLock(tmp_path / "default" / "two" / "lock"):
            pass


@pytest.mark.timeout(60)
def test_the_lock_of_a_killed_holder_is_free_at_once(tmp_path):
    path = tmp_path / "lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK, str(path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(RunBusy, match=f"pid {holder.pid} "):
            with RunLock(path):
                pass
    finally:
        holder.kill()
        holder.wait()

    with RunLock(path):
        pass


# --- the log file -----------------------------------------------------------------------------


def lines_of(writer, count=2000, width=3000):
    """`count` distinct lines of about `width` characters; every other one without its newline."""
    return [f"{writer}-{n:05d}-" + writer[0] * width + ("\n" if n % 2 else "") for n in range(count)]


def written_concurrently(path, lines_by_thread):
    """The log file's lines after one thread per entry wrote its lines through one LogSink at once."""
    with path.open("a", encoding="utf-8") as log:
        sink = LogSink(log)
        start = threading.Barrier(len(lines_by_thread))

        def pump(lines):
            start.wait()
            for line in lines:
                sink.write(line)

        threads = [threading.Thread(target=pump, args=(lines,)) for lines in lines_by_thread.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return path.read_text(encoding="utf-8").splitlines()


def test_two_threads_writing_to_the_log_never_interleave_within_a_line(tmp_path):
    lines = {"stdout": lines_of("stdout"), "stderr": lines_of("stderr")}

    written = written_concurrently(tmp_path / "run.log", lines)

    assert len(written) == 4000
    assert sorted(written) == sorted(line.rstrip("\n") for both in lines.values() for line in both)


def test_each_threads_lines_keep_their_order(tmp_path):
    lines = {"stdout": lines_of("stdout", 500, 100), "stderr": lines_of("stderr", 500, 100)}

    written = written_concurrently(tmp_path / "run.log", lines)

    for name, theirs in lines.items():
        assert [line for line in written if line.startswith(name)] == [line.rstrip("\n") for line in theirs]

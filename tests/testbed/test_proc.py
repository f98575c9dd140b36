"""Process helpers of the testbed: stopping by pid file never hits a recycled pid."""
import os
import subprocess
import sys
import time

import pytest

from testbed.proc import _alive, free_port, stop_pidfile, wait_until


def test_stop_pidfile_stops_the_process_it_names(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                            start_new_session=True)
    pid_file = tmp_path / "p.pid"
    pid_file.write_text(f"{proc.pid}\n")
    assert stop_pidfile(pid_file) is True
    assert proc.wait(timeout=5) is not None and not pid_file.exists()


def test_stop_pidfile_ignores_a_process_newer_than_its_pid_file(tmp_path):
    pid_file = tmp_path / "old.pid"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                            start_new_session=True)
    try:
        pid_file.write_text(f"{proc.pid}\n")
        hour_ago = time.time() - 3600
        os.utime(pid_file, (hour_ago, hour_ago))  # as if the pid had been recycled since
        assert stop_pidfile(pid_file) is False
        assert _alive(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def test_wait_until_reports_a_dead_process_and_a_deadline(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    dead.wait()
    with pytest.raises(RuntimeError, match="exited with 3"):
        wait_until(lambda: False, 5, "thing", proc=dead)
    with pytest.raises(TimeoutError):
        wait_until(lambda: False, 0.2, "thing")
    port = free_port()
    assert 1024 < port < 65536

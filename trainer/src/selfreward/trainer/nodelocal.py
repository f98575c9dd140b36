"""What the processes of one node share: local folders that several training processes (torchrun
starts them together, in one pod or on this machine) would otherwise race to clear or fill.

An exclusive lock on a file beside the folder orders them: the first process does the work, the
others find it done. The kernel drops the lock when its holder dies, so a crash never blocks.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from selfreward.trainer.ranks import world_size


@contextmanager
def exclusive(folder: Path) -> Iterator[None]:
    """Hold `<folder>.lock` (never deleted, so every process locks the same file)."""
    lock = folder.with_name(folder.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def launch_id() -> str:
    """The same for every process one torchrun started, different for the next launch: the
    launcher's pid and start time (a pid alone may be reused)."""
    parent = os.getppid()
    try:
        started = Path(f"/proc/{parent}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        started = ""
    return f"{os.environ.get('TORCHELASTIC_RUN_ID', '')}/{parent}/{started}"


def fresh_folder(folder: Path) -> Path:
    """`folder`, emptied once per launch: by the first of its processes to get here (a process
    alone empties it every time)."""
    marker = folder / ".launch"
    with exclusive(folder):
        if world_size() == 1 or not marker.exists() or marker.read_text() != launch_id():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            marker.write_text(launch_id())
    return folder


def filled_once(folder: Path, fill) -> Path:
    """`folder` after `fill(folder)` ran in exactly one process of this node (the others wait for
    it), unless an earlier fill completed."""
    complete = folder.with_name(folder.name + ".complete")
    with exclusive(folder):
        if not complete.exists():
            shutil.rmtree(folder, ignore_errors=True)
            fill(folder)
            complete.touch()
    return folder

"""Which process this is among those torchrun started for a training stage (one process, rank 0,
when nothing launched it)."""

from __future__ import annotations

import os


def world_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """Rank among the processes on this node (this pod)."""
    return int(os.environ.get("LOCAL_RANK", "0"))

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


def local_world_size() -> int:
    """Processes on this node (this pod)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def node_count() -> int:
    return max(1, world_size() // local_world_size())


def node_rank() -> int:
    return world_rank() // local_world_size()

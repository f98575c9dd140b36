"""How a training stage is started, the same for both executors: torchrun with the placement's
node count and processes per node, then the stage program.

On Kubernetes the training operator gives each PyTorchJob pod its node rank and the master's
address in PET_* variables; on one machine the local executor is the only node and rendezvous
happens on loopback. Either way every process runs `selfreward.trainer` with the same config;
world rank 0 commits and reports (selfreward.trainer.training).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class Rendezvous:
    node_rank: str
    master_addr: str
    master_port: str


# Expanded by the kubelet from the variables the training operator injects into every replica.
KUBEFLOW_RENDEZVOUS = Rendezvous("$(PET_NODE_RANK)", "$(PET_MASTER_ADDR)", "$(PET_MASTER_PORT)")
KUBEFLOW_LAUNCHER = ["torchrun"]


def local_rendezvous() -> Rendezvous:
    """This machine as the only node: loopback (its host name may not resolve) and a free port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return Rendezvous("0", "127.0.0.1", str(port))


# Collectives between the local processes stay on loopback too (gloo would otherwise listen on
# the address the host name resolves to).
LOCAL_ENVIRONMENT = {"GLOO_SOCKET_IFNAME": "lo"}


def local_launcher(python: str) -> list[str]:
    """torchrun of the environment the executor runs stage programs with."""
    return [python, "-m", "torch.distributed.run"]


def training_command(launcher: list[str], nodes: int, processes: int, rendezvous: Rendezvous,
                     stage_arguments: list[str]) -> list[str]:
    """`<launcher> <torchrun options> -m selfreward.trainer ...`: a failed process fails the launch
    (no in-place restarts: retries are the executor's, and resume from committed checkpoints)."""
    return [
        *launcher,
        "--nnodes", str(nodes), "--nproc-per-node", str(processes), "--node-rank", rendezvous.node_rank,
        "--master-addr", rendezvous.master_addr, "--master-port", rendezvous.master_port, "--max-restarts", "0",
        *stage_arguments,
    ]

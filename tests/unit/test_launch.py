"""Spec of the training launch: one torchrun command line for both executors."""

import socket

from selfreward.operator import launch

PROGRAM = ["-m", "selfreward.trainer", "sft", "--config", "{}"]


def test_the_command_is_the_launcher_its_options_then_the_stage_program():
    command = launch.training_command(["torchrun"], 4, 8, launch.KUBEFLOW_RENDEZVOUS, PROGRAM)

    assert command[0] == "torchrun"
    assert command[-len(PROGRAM):] == PROGRAM
    options = command[1:-len(PROGRAM)]
    assert dict(zip(options[::2], options[1::2])) == {
        "--nnodes": "4", "--nproc-per-node": "8", "--node-rank": "$(PET_NODE_RANK)",
        "--master-addr": "$(PET_MASTER_ADDR)", "--master-port": "$(PET_MASTER_PORT)", "--max-restarts": "0",
    }


def test_locally_the_machine_is_node_zero_and_meets_on_loopback():
    rendezvous = launch.local_rendezvous()

    assert (rendezvous.node_rank, rendezvous.master_addr) == ("0", "127.0.0.1")
    with socket.socket() as listener:  # the port it chose is free to listen on
        listener.bind(("127.0.0.1", int(rendezvous.master_port)))


def test_locally_torchrun_is_the_executors_own_python():
    assert launch.local_launcher("/env/bin/python") == ["/env/bin/python", "-m", "torch.distributed.run"]

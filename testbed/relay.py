"""TCP relays from inside the real node's network namespace to services on the host's loopback
(stdlib only).

The real node (containerd, kubelet, its pods) lives in a network namespace the testbed makes, so
nothing it runs can dial any address outside the testbed. Two things in there must reach the
control plane's services, which listen on the host's 127.0.0.1: kubelet the API server, and
worker pods the S3 server. This process opens its listening sockets inside the node's namespace
and then returns to the host's, so each accepted connection is relayed to a loopback port.

    python3 -m testbed.relay --netns /run/netns/NAME --lock FILE --ready FILE \\
        198.18.1.1:9000=127.0.0.1:41234 198.18.1.1:6443=127.0.0.1:41235

It also holds the host-wide lock of the real node (--lock) for as long as it runs: two testbeds
never run a real node at once on one machine.
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import fcntl
import os
import socket
import sys
from pathlib import Path

CLONE_NEWNET = 0x40000000


def setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


def relay_to(target: tuple[str, int]):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
    return handle


async def serve(routes: list[tuple[socket.socket, tuple[str, int]]], ready: Path) -> None:
    servers = [await asyncio.start_server(relay_to(target), sock=listener) for listener, target in routes]
    ready.write_text(f"{os.getpid()}\n")
    await asyncio.gather(*(server.serve_forever() for server in servers))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="testbed.relay")
    parser.add_argument("--netns", required=True, help="the node's network namespace (a /run/netns path)")
    parser.add_argument("--lock", required=True, help="host-wide lock file of the real node")
    parser.add_argument("--ready", required=True, help="written once every listener is open")
    parser.add_argument("routes", nargs="+", metavar="LISTEN=TARGET")
    args = parser.parse_args(argv)

    lock = open(args.lock, "a+")  # noqa: SIM115 - held for the life of the process
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        print(f"relay: another testbed runs the real node on this machine ({lock.read().strip()})", file=sys.stderr)
        return 3
    lock.seek(0)
    lock.truncate()
    lock.write(f"the node of the testbed whose relay is pid {os.getpid()}\n")
    lock.flush()

    host = os.open("/proc/self/ns/net", os.O_RDONLY)
    node = os.open(args.netns, os.O_RDONLY)
    routes = []
    setns(node)
    try:
        for route in args.routes:
            listen, _, target = route.partition("=")
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(address(listen))
            listener.listen(128)
            listener.setblocking(False)
            routes.append((listener, address(target)))
    finally:
        setns(host)  # every connection to a target is made from the host's namespace
    os.close(node)
    asyncio.run(serve(routes, Path(args.ready)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

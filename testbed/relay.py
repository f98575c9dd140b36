"""TCP relays from inside the real node's network namespace to services on the host's loopback,
and the namespace's DNS server (stdlib only).

The real node (containerd, kubelet, its pods) lives in a network namespace the testbed makes, so
nothing it runs can dial any address outside the testbed. Two things in there must reach the
control plane's services, which listen on the host's 127.0.0.1: kubelet the API server, and
worker pods the S3 server. This process opens its listening sockets inside the node's namespace
and then returns to the host's, so each accepted connection is relayed to a loopback port.

Pods also resolve names here (kubelet's clusterDNS): a fixed table of names answered with
addresses inside the namespace, e.g. the S3 server under the name a cluster's MinIO Service has,
so a run file written for a cluster works unchanged. Every other name is NXDOMAIN: nothing is
forwarded anywhere.

    python3 -m testbed.relay --netns /run/netns/NAME --lock FILE --ready FILE \\
        --dns 198.18.1.1:53 --name minio.minio.svc.cluster.local=198.18.1.1 \\
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
import struct
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


DNS_A, DNS_CLASS_IN = 1, 1
DNS_NXDOMAIN = 3


def dns_answer(query: bytes, names: dict[str, str]) -> bytes | None:
    """The reply to one DNS query (RFC 1035): an A record for a name in `names`, no record for its
    other types, NXDOMAIN for any other name. None for what is not a single-question query."""
    if len(query) < 12:
        return None
    ident, flags, questions = struct.unpack(">HHH", query[:6])
    if flags & 0x8000 or questions != 1:  # a response, or not one question
        return None
    labels, offset = [], 12
    while offset < len(query) and (length := query[offset]):
        if length & 0xC0 or offset + 1 + length > len(query):
            return None
        labels.append(query[offset + 1:offset + 1 + length].decode("ascii", "replace").lower())
        offset += 1 + length
    if offset + 5 > len(query):
        return None
    qtype, qclass = struct.unpack(">HH", query[offset + 1:offset + 5])
    question = query[12:offset + 5]
    address = names.get(".".join(labels))
    answers = b""
    if address and qtype == DNS_A and qclass == DNS_CLASS_IN:
        answers = struct.pack(">HHHIH", 0xC00C, DNS_A, DNS_CLASS_IN, 30, 4) + socket.inet_aton(address)
    rcode = 0 if address else DNS_NXDOMAIN
    reply_flags = 0x8000 | 0x0400 | (flags & 0x0100) | rcode  # response, authoritative, RD echoed
    return struct.pack(">HHHHHH", ident, reply_flags, 1, 1 if answers else 0, 0, 0) + question + answers


class DnsServer(asyncio.DatagramProtocol):
    def __init__(self, names: dict[str, str]):
        self.names = names

    def connection_made(self, transport: asyncio.DatagramTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, peer: tuple[str, int]) -> None:
        reply = dns_answer(data, self.names)
        if reply:
            self.transport.sendto(reply, peer)


async def serve(routes: list[tuple[socket.socket, tuple[str, int]]], ready: Path,
                dns: socket.socket | None = None, names: dict[str, str] | None = None) -> None:
    servers = [await asyncio.start_server(relay_to(target), sock=listener) for listener, target in routes]
    if dns:
        await asyncio.get_running_loop().create_datagram_endpoint(lambda: DnsServer(names or {}), sock=dns)
    ready.write_text(f"{os.getpid()}\n")
    await asyncio.gather(*(server.serve_forever() for server in servers))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="testbed.relay")
    parser.add_argument("--netns", required=True, help="the node's network namespace (a /run/netns path)")
    parser.add_argument("--lock", required=True, help="host-wide lock file of the real node")
    parser.add_argument("--ready", required=True, help="written once every listener is open")
    parser.add_argument("--dns", metavar="ADDRESS:PORT", help="answer DNS queries (UDP) here, inside the namespace")
    parser.add_argument("--name", action="append", default=[], metavar="NAME=ADDRESS",
                        help="a name the DNS server answers (repeatable)")
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
        dns = None
        if args.dns:
            dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            dns.bind(address(args.dns))
            dns.setblocking(False)
    finally:
        setns(host)  # every connection to a target is made from the host's namespace
    os.close(node)
    names = dict(entry.lower().split("=", 1) for entry in args.name)
    asyncio.run(serve(routes, Path(args.ready), dns, names))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

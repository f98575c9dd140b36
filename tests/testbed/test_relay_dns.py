"""The real node's DNS (testbed/relay.py): the names in its table resolve to their addresses, every
other name is NXDOMAIN, and what is not a plain query gets no reply. Pods' resolvers depend on
each of these answers (a pod on the node resolving a name is tested in tests/kube/test_real_node.py).
"""
import socket
import struct

import pytest

from testbed.relay import dns_answer

NAMES = {"minio.minio.svc.cluster.local": "198.18.1.1"}
A, AAAA, IN = 1, 28, 1


def query(name: str, qtype: int = A, ident: int = 0x1234, recursion_desired: bool = True) -> bytes:
    flags = 0x0100 if recursion_desired else 0
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.split("."))
    return struct.pack(">HHHHHH", ident, flags, 1, 0, 0, 0) + labels + b"\x00" + struct.pack(">HH", qtype, IN)


def header(reply: bytes) -> dict:
    ident, flags, questions, answers, _, _ = struct.unpack(">HHHHHH", reply[:12])
    return {"id": ident, "response": bool(flags & 0x8000), "authoritative": bool(flags & 0x0400),
            "recursion_desired": bool(flags & 0x0100), "rcode": flags & 0xF, "questions": questions, "answers": answers}


def test_a_name_in_the_table_gets_its_address():
    asked = query("minio.minio.svc.cluster.local")
    reply = dns_answer(asked, NAMES)
    assert header(reply) == {"id": 0x1234, "response": True, "authoritative": True, "recursion_desired": True,
                             "rcode": 0, "questions": 1, "answers": 1}
    assert reply[12:len(asked)] == asked[12:]  # the question, echoed
    pointer, rtype, rclass, ttl, length = struct.unpack(">HHHIH", reply[len(asked):len(asked) + 12])
    assert (pointer, rtype, rclass, length) == (0xC00C, A, IN, 4) and ttl > 0
    assert socket.inet_ntoa(reply[-4:]) == "198.18.1.1"


def test_names_are_matched_without_regard_to_case():
    assert header(dns_answer(query("MinIO.minio.SVC.cluster.local"), NAMES))["answers"] == 1


def test_another_record_type_of_a_known_name_is_an_empty_answer_not_an_error():
    reply = header(dns_answer(query("minio.minio.svc.cluster.local", qtype=AAAA), NAMES))
    assert (reply["rcode"], reply["answers"]) == (0, 0)


@pytest.mark.parametrize("name", ["example.com", "minio.minio.svc.cluster.local.default.svc.cluster.local", "minio"])
def test_every_other_name_does_not_exist(name):
    reply = header(dns_answer(query(name), NAMES))
    assert (reply["rcode"], reply["answers"], reply["authoritative"]) == (3, 0, True)


@pytest.mark.parametrize("packet", [
    b"\x00" * 5,                                                     # shorter than a header
    query("example.com")[:-3],                                       # cut inside the question
    struct.pack(">HHHHHH", 1, 0x8000, 1, 0, 0, 0) + query("x")[12:],  # a response, not a query
    struct.pack(">HHHHHH", 1, 0x0100, 2, 0, 0, 0) + query("x")[12:],  # two questions announced
    struct.pack(">HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c" + struct.pack(">HH", A, IN),  # a pointer
], ids=["short", "truncated", "response", "two-questions", "compressed-name"])
def test_what_is_not_a_plain_query_gets_no_reply(packet):
    assert dns_answer(packet, NAMES) is None

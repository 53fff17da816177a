"""Our message definitions against CRIU's own .proto files, golden bytes, and a reference decoder."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
from typing import Any, Dict, List, Tuple

import pytest

from criu_bindings import messages
from criu_bindings.wire import Enum, Message

PROTO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "proto")

OURS: Dict[str, Message] = {
    m.name: m
    for m in (
        messages.CRIU_PAGE_SERVER_INFO,
        messages.CRIU_VETH_PAIR,
        messages.EXT_MOUNT_MAP,
        messages.JOIN_NAMESPACE,
        messages.INHERIT_FD,
        messages.CGROUP_ROOT,
        messages.UNIX_SK,
        messages.CRIU_OPTS,
        messages.CRIU_DUMP_RESP,
        messages.CRIU_RESTORE_RESP,
        messages.CRIU_NOTIFY,
        messages.CRIU_FEATURES,
        messages.CRIU_VERSION,
        messages.CRIU_REQ,
        messages.CRIU_RESP,
        messages.TASK_KOBJ_IDS_ENTRY,
        messages.PLUGINS_ENTRY,
        messages.INVENTORY_ENTRY,
        messages.DUMP_STATS_ENTRY,
        messages.RESTORE_STATS_ENTRY,
        messages.STATS_ENTRY,
        messages.PAGEMAP_HEAD,
        messages.PAGEMAP_ENTRY,
    )
}
OUR_ENUMS: Dict[str, Enum] = {
    e.name: e
    for e in (
        messages.CRIU_REQ_TYPE,
        messages.CRIU_CG_MODE,
        messages.CRIU_NETWORK_LOCK_METHOD,
        messages.CRIU_PRE_DUMP_MODE,
        messages.LSMTYPE,
    )
}


# --- a small reader for CRIU's proto2 files ---------------------------------------------

_FIELD = re.compile(r"^\s*(required|optional|repeated)\s+([\w.]+)\s+(\w+)\s*=\s*(\d+)\s*(\[[^\]]*\])?\s*;")
_ENUM_VALUE = re.compile(r"^\s*(\w+)\s*=\s*(-?\w+)\s*;")


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def parse_protos() -> Tuple[Dict[str, List[Tuple[str, str, str, int, str]]], Dict[str, Dict[str, int]]]:
    """(messages: name -> [(label, type, name, number, options)], enums: name -> {value: number})."""
    msgs: Dict[str, List[Tuple[str, str, str, int, str]]] = {}
    enums: Dict[str, Dict[str, int]] = {}
    for fname in sorted(os.listdir(PROTO_DIR)):
        if not fname.endswith(".proto"):
            continue
        with open(os.path.join(PROTO_DIR, fname)) as f:
            lines = _strip_comments(f.read()).splitlines()
        stack: List[Tuple[str, str]] = []
        for line in lines:
            m = re.match(r"^\s*(message|enum)\s+(\w+)\s*\{", line)
            if m:
                stack.append((m.group(1), m.group(2)))
                if m.group(1) == "message":
                    msgs.setdefault(m.group(2), [])
                else:
                    enums.setdefault(m.group(2), {})
                continue
            if re.match(r"^\s*(extend|oneof)\b.*\{", line):
                stack.append(("other", ""))
                continue
            if re.match(r"^\s*\}", line):
                if stack:
                    stack.pop()
                continue
            if not stack:
                continue
            kind, name = stack[-1]
            if kind == "message":
                fm = _FIELD.match(line)
                if fm:
                    label, ftype, fname_, number, options = fm.groups()
                    msgs[name].append((label, ftype, fname_, int(number), options or ""))
            elif kind == "enum":
                em = _ENUM_VALUE.match(line)
                if em:
                    enums[name][em.group(1)] = int(em.group(2), 0)
    return msgs, enums


PROTO_MESSAGES, PROTO_ENUMS = parse_protos()
SCALAR_TYPES = {
    "int32", "int64", "uint32", "uint64", "sint32", "sint64", "bool", "fixed32", "fixed64",
    "sfixed32", "sfixed64", "float", "double", "string", "bytes",
}  # fmt: skip


def test_the_proto_reader_found_what_we_need() -> None:
    for name in OURS:
        assert name in PROTO_MESSAGES, name
    assert len(PROTO_MESSAGES["criu_opts"]) >= 69


@pytest.mark.parametrize("name", sorted(OURS))
def test_fields_match_criu_proto(name: str) -> None:
    ours = OURS[name]
    theirs = {number: (label, ftype, fname, options) for label, ftype, fname, number, options in PROTO_MESSAGES[name]}
    # every field CRIU declares is defined, with the same name, label and type
    assert sorted(theirs) == sorted(ours.by_number), f"{name}: field numbers differ"
    for number, (label, ftype, fname, options) in theirs.items():
        f = ours.by_number[number]
        assert f.name == fname, (name, number)
        assert f.label == label, (name, fname)
        if ftype in SCALAR_TYPES:
            assert f.type == ftype, (name, fname)
        elif ftype in PROTO_ENUMS:
            assert f.type == "enum" and f.enum is not None, (name, fname)
            assert f.enum.name == ftype
        else:
            assert f.type == "message" and f.message is not None, (name, fname)
            assert f.message.name == ftype
        packed = re.search(r"packed\s*=\s*true", options) is not None
        assert f.packed == packed, (name, fname)
        dm = re.search(r"default\s*=\s*(-?\w+)", options)
        if dm:
            raw = dm.group(1)
            expected: Any
            if f.type == "enum":
                assert f.enum is not None
                expected = f.enum.values[raw]
            else:
                expected = int(raw, 0)
            assert f.default == expected, (name, fname)
        else:
            assert f.default is None, (name, fname)


@pytest.mark.parametrize("name", sorted(OUR_ENUMS))
def test_enums_match_criu_proto(name: str) -> None:
    assert OUR_ENUMS[name].values == PROTO_ENUMS[name]


# --- golden bytes, derived by hand from the field numbers in rpc.proto --------------------


@pytest.mark.parametrize(
    "msg, value, golden",
    [
        # criu_req.type = 1 (varint): key 0x08; VERSION = 10
        (messages.CRIU_REQ, {"type": "VERSION"}, "080a"),
        # FEATURE_CHECK = 9; features = 5 (len): key 0x2a; mem_track=1, lazy_pages=2, pidfd_store=3
        (
            messages.CRIU_REQ,
            {"type": "FEATURE_CHECK", "features": {"mem_track": True, "lazy_pages": True, "pidfd_store": True}},
            "0809 2a06 0801 1001 1801",
        ),
        # NOTIFY = 6; notify_success = 3 (varint): key 0x18
        (messages.CRIU_REQ, {"type": "NOTIFY", "notify_success": True}, "0806 1801"),
        (messages.CRIU_REQ, {"type": "NOTIFY", "notify_success": False}, "0806 1800"),
        # DUMP = 1; opts = 2 (len): key 0x12, 19 bytes: images_dir_fd(1)=5, pid(2)=1234,
        # leave_running(3)=true, log_level(9)=4, log_file(10)="dump.log"
        (
            messages.CRIU_REQ,
            {
                "type": "DUMP",
                "opts": {
                    "images_dir_fd": 5,
                    "pid": 1234,
                    "leave_running": True,
                    "log_level": 4,
                    "log_file": "dump.log",
                },
            },
            "0801 1213 0805 10d209 1801 4804 5208 " + b"dump.log".hex(),
        ),
        # required images_dir_fd defaults to -1: ten-byte varint
        (messages.CRIU_REQ, {"type": "CHECK", "opts": {}}, "0803 120b 08ffffffffffffffffff01"),
        # criu_opts high field numbers: tcp_close = 52 -> key (52<<3|0) = 0x1a0 -> a003;
        # network_lock = 64 (enum NFTABLES=2) -> key 0x200 -> 8004; images_dir = 68 (len) -> key 0x222 -> a204
        (
            messages.CRIU_OPTS,
            {"images_dir_fd": 3, "tcp_close": True, "network_lock": "NFTABLES", "images_dir": "/d"},
            "0803 a00301 800402 a204022f64",
        ),
        # inherit_fd = 27 (len, repeated): key 27<<3|2 = 0xda -> da01
        (
            messages.CRIU_OPTS,
            {"images_dir_fd": 3, "inherit_fd": [{"key": "tty", "fd": 7}]},
            "0803 da0107 0a03747479 1007",
        ),
        # pagemap_entry as CRIU 4.1 writes it: vaddr(1) uint64, nr_pages(2), flags(4) = PE_PRESENT.
        # 0x7f0000001000 in 7-bit groups, low first: 0, 0x20, 0, 0, 0, 0x60, 0x1f
        (
            messages.PAGEMAP_ENTRY,
            {"vaddr": 0x7F0000001000, "compat_nr_pages": 3, "flags": 4},
            "0880a0808080e01f 1003 2004",
        ),
        # ...and as CRIU 4.2 writes it: compat_nr_pages(2) = 0, the count in nr_pages(5): key 0x28
        (
            messages.PAGEMAP_ENTRY,
            {"vaddr": 0x7F0000001000, "compat_nr_pages": 0, "flags": 4, "nr_pages": 3},
            "0880a0808080e01f 1000 2004 2803",
        ),
    ],
)
def test_golden_bytes(msg: Message, value: Dict[str, Any], golden: str) -> None:
    assert msg.encode(value) == bytes.fromhex(golden)
    decoded = msg.decode(bytes.fromhex(golden))
    expected = dict(value)
    if "type" in expected and isinstance(expected["type"], str):
        expected["type"] = messages.CRIU_REQ_TYPE.values[expected["type"]]
    if msg is messages.CRIU_OPTS and expected.get("network_lock") == "NFTABLES":
        expected["network_lock"] = 2
    if msg is messages.CRIU_REQ and expected.get("opts") == {}:
        expected["opts"] = {"images_dir_fd": -1}
    assert decoded == expected


def test_decode_what_criu_4_1_1_sent() -> None:
    # Captured from `criu swrk` 4.1.1 on this machine (VERSION and CHECK answers).
    assert messages.CRIU_RESP.decode(bytes.fromhex("080a10015206080410012001")) == {
        "type": 10,
        "success": True,
        "version": {"major_number": 4, "minor_number": 1, "sublevel": 1},
    }
    assert messages.CRIU_RESP.decode(bytes.fromhex("08031000")) == {"type": 3, "success": False}


def test_notify_response_layout() -> None:
    # type NOTIFY(6), success(2)=true, notify(5){script(1)="post-dump"}
    data = bytes.fromhex("0806 1001 2a0b 0a09") + b"post-dump"
    assert messages.CRIU_RESP.decode(data) == {"type": 6, "success": True, "notify": {"script": "post-dump"}}
    # with pid(2) as CRIU sends for post-restore and setup-namespaces: 2+12 + 3 = 17 bytes
    data = bytes.fromhex("0806 1001 2a11 0a0c") + b"post-restore" + bytes.fromhex("10d209")
    assert messages.CRIU_RESP.decode(data)["notify"] == {"script": "post-restore", "pid": 1234}


# --- differential test against google.protobuf (Debian's pycriu), when present -------------

SYSTEM_PYTHON = "/usr/bin/python3"
_REFERENCE = r"""
import json, sys
import pycriu.rpc_pb2 as rpc
from google.protobuf.descriptor import FieldDescriptor as FD

def todict(m):
    out = {}
    for f, v in m.ListFields():
        if f.type == FD.TYPE_MESSAGE:
            v = [todict(x) for x in v] if f.label == FD.LABEL_REPEATED else todict(v)
        elif f.label == FD.LABEL_REPEATED:
            v = list(v)
        out[f.name] = v
    return out

result = []
for name, hexdata in json.load(sys.stdin):
    m = getattr(rpc, name)()
    m.ParseFromString(bytes.fromhex(hexdata))
    result.append([todict(m), m.SerializeToString().hex()])
json.dump(result, sys.stdout)
"""


def _have_reference() -> bool:
    if not os.path.exists(SYSTEM_PYTHON) or not shutil.which(SYSTEM_PYTHON):
        return False
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import pycriu.rpc_pb2, google.protobuf"], capture_output=True, timeout=30
    )
    return probe.returncode == 0


def _random_value(msg: Message, rng: random.Random, known: Dict[str, Dict[str, Any]], depth: int = 0) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for f in msg.fields:
        if f.name not in known.get(msg.name, {}):
            continue  # the reference's older rpc.proto lacks it
        if f.label != "required" and rng.random() < 0.5:
            continue
        if f.type == "message":
            if depth > 2:
                if f.label == "required":
                    out[f.name] = {}
                continue
            assert f.message is not None
            v: Any = _random_value(f.message, rng, known, depth + 1)
        elif f.type == "enum":
            assert f.enum is not None
            # values the reference's enum knows (proto2 parsers drop unknown enum values)
            v = rng.choice(sorted(set(f.enum.values.values()) & set(known[msg.name][f.name])))
        elif f.type == "bool":
            v = rng.random() < 0.5
        elif f.type == "string":
            v = "".join(rng.choice("abc/é-_.λ") for _ in range(rng.randrange(6)))
        elif f.type == "int32":
            v = rng.choice([0, 1, -1, 2**31 - 1, -(2**31), rng.randrange(-(2**31), 2**31)])
        elif f.type == "uint32":
            v = rng.choice([0, 1, 2**32 - 1, rng.randrange(2**32)])
        elif f.type == "uint64":
            v = rng.choice([0, 2**64 - 1, rng.randrange(2**64)])
        else:
            raise AssertionError(f.type)
        out[f.name] = [v] if f.repeated else v
    return out


@pytest.mark.skipif(not _have_reference(), reason="no /usr/bin/python3 with pycriu and google.protobuf")
def test_encodings_agree_with_google_protobuf() -> None:
    # Which fields the reference (Debian's criu 3.17 rpc.proto) knows: only those are compared.
    names = ["criu_req", "criu_resp", "criu_opts"]
    introspect = (
        "import json, pycriu.rpc_pb2 as r\n"
        "d = {}\n"
        "for n in dir(r):\n"
        "    m = getattr(r, n)\n"
        "    if hasattr(m, 'DESCRIPTOR') and hasattr(m.DESCRIPTOR, 'fields'):\n"
        "        d[m.DESCRIPTOR.name] = {f.name: [v.number for v in f.enum_type.values] if f.enum_type else None\n"
        "                                for f in m.DESCRIPTOR.fields}\n"
        "print(json.dumps(d))\n"
    )
    known = json.loads(subprocess.check_output([SYSTEM_PYTHON, "-c", introspect]))
    rng = random.Random(7)
    cases = []
    for i in range(300):
        name = names[i % len(names)]
        msg = {m.name: m for m in (messages.CRIU_REQ, messages.CRIU_RESP, messages.CRIU_OPTS)}[name]
        cases.append((name, msg, _random_value(msg, rng, known)))
    payload = json.dumps([[name, msg.encode(value).hex()] for name, msg, value in cases])
    out = subprocess.run(
        [SYSTEM_PYTHON, "-c", _REFERENCE], input=payload, capture_output=True, text=True, timeout=60, check=True
    )
    results = json.loads(out.stdout)
    for (name, msg, value), (theirs, their_bytes) in zip(cases, results):
        ours = msg.decode(msg.encode(value))
        assert theirs == ours, name
        # google.protobuf re-serializes to exactly our bytes
        assert their_bytes == msg.encode(value).hex(), name

"""Protobuf wire codec: known vectors, round-trip properties, malformed input."""

from __future__ import annotations

import struct
import time
from typing import Any, Dict

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from criu_bindings import messages, wire
from criu_bindings.errors import (
    EncodeError,
    MalformedVarintError,
    MissingFieldError,
    OversizedError,
    TruncatedError,
    WireError,
    WireTypeError,
)
from criu_bindings.wire import Enum, Field, Message

COLOR = Enum("color", {"RED": 0, "GREEN": 1, "BLUE": -2})

INNER = Message(
    "inner",
    [
        Field(1, "a", "int32"),
        Field(2, "b", "string"),
        Field(3, "c", "uint64", "repeated", packed=True),
    ],
)

SCALARS = [
    "int32",
    "int64",
    "uint32",
    "uint64",
    "sint32",
    "sint64",
    "bool",
    "fixed32",
    "fixed64",
    "sfixed32",
    "sfixed64",
    "float",
    "double",
    "string",
    "bytes",
]
NUMERIC = [t for t in SCALARS if t not in ("string", "bytes")]

# One message with every type, optional, repeated (unpacked) and repeated packed.
_fields = []
for _i, _t in enumerate(SCALARS):
    _fields.append(Field(1 + _i, f"opt_{_t}", _t))
    _fields.append(Field(100 + _i, f"rep_{_t}", _t, "repeated"))
for _i, _t in enumerate(NUMERIC):
    _fields.append(Field(200 + _i, f"packed_{_t}", _t, "repeated", packed=True))
_fields += [
    Field(300, "color", "enum", enum=COLOR),
    Field(301, "colors", "enum", "repeated", packed=True, enum=COLOR),
    Field(302, "inner", "message", message=INNER),
    Field(303, "inners", "message", "repeated", message=INNER),
    Field(536870911, "max_number", "uint32"),
    Field(304, "needed", "uint32", "required"),
]
ALL_TYPES = Message("all_types", _fields)

CRIU_MESSAGES = [
    messages.CRIU_REQ,
    messages.CRIU_RESP,
    messages.CRIU_OPTS,
    messages.CRIU_NOTIFY,
    messages.CRIU_FEATURES,
    messages.CRIU_VERSION,
    messages.CRIU_DUMP_RESP,
    messages.CRIU_RESTORE_RESP,
    messages.INVENTORY_ENTRY,
    messages.STATS_ENTRY,
    messages.DUMP_STATS_ENTRY,
    messages.RESTORE_STATS_ENTRY,
    messages.PAGEMAP_HEAD,
    messages.PAGEMAP_ENTRY,
]


# --- strategies ------------------------------------------------------------------------

_INT = {
    "int32": (-(2**31), 2**31 - 1),
    "sint32": (-(2**31), 2**31 - 1),
    "sfixed32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "sint64": (-(2**63), 2**63 - 1),
    "sfixed64": (-(2**63), 2**63 - 1),
    "uint32": (0, 2**32 - 1),
    "fixed32": (0, 2**32 - 1),
    "uint64": (0, 2**64 - 1),
    "fixed64": (0, 2**64 - 1),
}


def value_strategy(f: Field, depth: int = 0) -> st.SearchStrategy[Any]:
    t = f.type
    if t in _INT:
        lo, hi = _INT[t]
        return st.integers(lo, hi)
    if t == "bool":
        return st.booleans()
    if t == "float":
        return st.floats(width=32, allow_nan=False)
    if t == "double":
        return st.floats(allow_nan=False)
    if t == "string":
        # lone surrogates stand for invalid UTF-8 bytes (surrogateescape): only \udc80-\udcff
        return st.text(st.characters(blacklist_categories=("Cs",)) | st.sampled_from("\udc80\udcff"))
    if t == "bytes":
        return st.binary()
    if t == "enum":
        assert f.enum is not None
        return st.sampled_from(sorted(f.enum.values.values())) | st.integers(-(2**31), 2**31 - 1)
    assert f.message is not None
    return message_strategy(f.message, depth + 1)


def message_strategy(msg: Message, depth: int = 0) -> st.SearchStrategy[Dict[str, Any]]:
    required: Dict[str, Any] = {}
    optional: Dict[str, Any] = {}
    for f in msg.fields:
        if f.type == "message" and depth > 2:
            continue
        s = value_strategy(f, depth)
        if f.repeated:
            optional[f.name] = st.lists(s, min_size=1, max_size=4)
        elif f.label == "required":
            required[f.name] = s
        else:
            optional[f.name] = s
    return st.fixed_dictionaries(required, optional=optional)


def _same(a: Any, b: Any) -> bool:
    """Equality where -0.0 == 0.0 is fine and NaN never occurs."""
    return a == b


# --- primitives ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, encoded",
    [
        (0, "00"),
        (1, "01"),
        (127, "7f"),
        (128, "8001"),
        (300, "ac02"),
        (2**32 - 1, "ffffffff0f"),
        (2**64 - 1, "ffffffffffffffffff01"),
    ],
)
def test_varint_known_vectors(value: int, encoded: str) -> None:
    assert wire.encode_varint(value).hex() == encoded
    assert wire.decode_varint(bytes.fromhex(encoded)) == (value, len(encoded) // 2)


@pytest.mark.parametrize("value, zz", [(0, 0), (-1, 1), (1, 2), (-2, 3), (2**31 - 1, 2**32 - 2), (-(2**31), 2**32 - 1)])
def test_zigzag_known_vectors(value: int, zz: int) -> None:
    assert wire.zigzag_encode(value, 32) == zz
    assert wire.zigzag_decode(zz) == value


@settings(deadline=None)
@given(st.integers(0, 2**64 - 1))
def test_varint_round_trip(value: int) -> None:
    data = wire.encode_varint(value)
    assert len(data) <= 10
    assert wire.decode_varint(data) == (value, len(data))


@settings(deadline=None)
@given(st.integers(-(2**63), 2**63 - 1))
def test_zigzag_round_trip(value: int) -> None:
    assert wire.zigzag_decode(wire.zigzag_encode(value)) == value


def test_negative_int32_is_ten_bytes_like_protobuf() -> None:
    # protobuf encodes negative int32 as the 64-bit two's complement varint
    msg = Message("m", [Field(1, "x", "int32")])
    assert msg.encode({"x": -1}).hex() == "08ffffffffffffffffff01"
    assert msg.decode(bytes.fromhex("08ffffffffffffffffff01")) == {"x": -1}


def test_varint_errors() -> None:
    with pytest.raises(TruncatedError):
        wire.decode_varint(b"\x80\x80")
    with pytest.raises(MalformedVarintError):
        wire.decode_varint(b"\xff" * 11 + b"\x01")
    with pytest.raises(EncodeError):
        wire.encode_varint(-1)
    with pytest.raises(EncodeError):
        wire.encode_varint(2**64)


# --- round trips -----------------------------------------------------------------------------


@settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(message_strategy(ALL_TYPES))
def test_all_types_round_trip(value: Dict[str, Any]) -> None:
    data = ALL_TYPES.encode(value)
    assert ALL_TYPES.decode(data) == value
    # canonical: re-encoding the decoding gives the same bytes
    assert ALL_TYPES.encode(ALL_TYPES.decode(data)) == data


@pytest.mark.parametrize("msg", CRIU_MESSAGES, ids=lambda m: m.name)
@settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_criu_messages_round_trip(msg: Message, data: st.DataObject) -> None:
    value = data.draw(message_strategy(msg))
    encoded = msg.encode(value)
    assert msg.decode(encoded) == value


@settings(deadline=None, max_examples=200)
@given(
    message_strategy(INNER),
    st.lists(
        st.tuples(st.integers(4, 1000), st.sampled_from([0, 1, 2, 5]), st.binary(max_size=20)),
        max_size=5,
    ),
)
def test_unknown_fields_are_skipped(value: Dict[str, Any], extra: list) -> None:
    data = bytearray(INNER.encode(value))
    for number, wt, blob in extra:
        data += wire.encode_varint(number << 3 | wt)
        if wt == 0:
            data += wire.encode_varint(int.from_bytes(blob[:8], "little"))
        elif wt == 1:
            data += blob[:8].ljust(8, b"\0")
        elif wt == 5:
            data += blob[:4].ljust(4, b"\0")
        else:
            data += wire.encode_varint(len(blob)) + blob
    assert INNER.decode(bytes(data)) == value


@settings(deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=20))
def test_packed_and_unpacked_both_decode(values: list) -> None:
    packed = Message("p", [Field(3, "c", "uint64", "repeated", packed=True)])
    unpacked = Message("u", [Field(3, "c", "uint64", "repeated")])
    a, b = packed.encode({"c": values}), unpacked.encode({"c": values})
    assert a != b or len(values) == 0
    for msg in (packed, unpacked):
        assert msg.decode(a) == {"c": values}
        assert msg.decode(b) == {"c": values}
    # mixed: a packed run followed by single elements
    assert packed.decode(a + b) == {"c": values + values}


def test_surrogateescape_keeps_invalid_utf8() -> None:
    msg = Message("m", [Field(1, "s", "string")])
    raw = b"\x0a\x03a\xffb"
    decoded = msg.decode(raw)
    assert decoded == {"s": "a\udcffb"}
    assert msg.encode(decoded) == raw


def test_repeated_message_field_occurrences_merge() -> None:
    # protobuf: a non-repeated message field seen twice is merged
    outer = Message("o", [Field(1, "inner", "message", message=INNER)])
    first = outer.encode({"inner": {"a": 1, "c": [1]}})
    second = outer.encode({"inner": {"b": "x", "c": [2]}})
    assert outer.decode(first + second) == {"inner": {"a": 1, "b": "x", "c": [1, 2]}}
    # and a scalar seen twice: last one wins
    assert INNER.decode(INNER.encode({"a": 1}) + INNER.encode({"a": 2})) == {"a": 2}


def test_required_fields() -> None:
    with pytest.raises(MissingFieldError):
        messages.CRIU_RESP.decode(b"\x08\x01")  # success (2) missing
    assert messages.CRIU_RESP.decode(b"\x08\x01", check_required=False) == {"type": 1}
    with pytest.raises(MissingFieldError):
        messages.CRIU_REQ.encode({})
    # a required field with a declared default is filled, like protobuf-c's INIT
    assert messages.CRIU_OPTS.decode(messages.CRIU_OPTS.encode({})) == {"images_dir_fd": -1}


def test_get_returns_declared_defaults() -> None:
    opts = messages.CRIU_OPTS
    assert opts.get({}, "log_level") == 2
    assert opts.get({}, "ghost_limit") == 0x100000
    assert opts.get({}, "external") == []
    assert opts.get({}, "leave_running") is False
    assert opts.get({"log_level": 4}, "log_level") == 4


def test_enum_names_and_numbers() -> None:
    assert messages.CRIU_REQ.encode({"type": "DUMP"}) == messages.CRIU_REQ.encode({"type": 1})
    assert messages.CRIU_REQ_TYPE.NOTIFY == 6
    assert messages.CRIU_REQ_TYPE.name_of(10) == "VERSION"
    assert messages.CRIU_REQ_TYPE.name_of(99) == "99"
    with pytest.raises(EncodeError):
        messages.CRIU_REQ.encode({"type": "NOPE"})
    # negative enum values are ten-byte varints, as int32
    m = Message("m", [Field(1, "c", "enum", enum=COLOR)])
    assert m.decode(m.encode({"c": "BLUE"})) == {"c": -2}


@pytest.mark.parametrize(
    "values",
    [
        {"unknown_field": 1},
        {"opt_int32": 2**31},
        {"opt_uint32": -1},
        {"opt_uint64": 2**64},
        {"opt_bool": 1},
        {"opt_int32": True},
        {"opt_int32": "1"},
        {"opt_string": b"bytes"},
        {"opt_bytes": "str"},
        {"opt_float": "1.0"},
        {"opt_float": 1e300},
        {"rep_int32": 5},
        {"rep_string": "abc"},
        {"inner": [1]},
        {"inner": {"zz": 1}},
    ],
)
def test_encode_rejects_bad_values(values: Dict[str, Any]) -> None:
    with pytest.raises(EncodeError):
        ALL_TYPES.encode({"needed": 1, **values})


def test_field_definitions_are_checked() -> None:
    with pytest.raises(ValueError):
        Field(0, "x", "int32")
    with pytest.raises(ValueError):
        Field(1, "x", "int33")
    with pytest.raises(ValueError):
        Field(1, "x", "string", "repeated", packed=True)
    with pytest.raises(ValueError):
        Field(1, "x", "message")
    with pytest.raises(ValueError):
        Message("m", [Field(1, "x", "int32"), Field(1, "y", "int32")])


# --- malformed input --------------------------------------------------------------------------


@pytest.mark.parametrize("msg", [ALL_TYPES, *CRIU_MESSAGES], ids=lambda m: m.name)
@settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_wire_error(msg: Message, data: bytes) -> None:
    try:
        msg.decode(data)
    except WireError:
        pass


@settings(deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow])
@given(message_strategy(ALL_TYPES))
def test_every_truncation_is_a_typed_error_or_a_valid_prefix(value: Dict[str, Any]) -> None:
    data = ALL_TYPES.encode(value)
    for cut in range(len(data)):
        try:
            ALL_TYPES.decode(data[:cut], check_required=False)
        except (TruncatedError, OversizedError):
            pass


@settings(deadline=None)
@given(st.binary(min_size=1, max_size=50), st.integers(0, 12))
def test_corrupted_bytes_never_escape_as_other_errors(data: bytes, flip: int) -> None:
    encoded = bytearray(messages.CRIU_REQ.encode({"type": "DUMP", "opts": {"pid": 1, "log_file": "x.log"}}))
    assume(flip < len(encoded))
    encoded[flip] ^= data[0] or 0xFF
    try:
        messages.CRIU_REQ.decode(bytes(encoded) + data)
    except WireError:
        pass


@pytest.mark.parametrize("length", [5, 2**31, 2**32 + 7, 2**63, 2**64 - 1])
def test_oversized_length_is_rejected_fast(length: int) -> None:
    data = b"\x12" + wire.encode_varint(length) + b"abcd"
    start = time.monotonic()
    with pytest.raises(OversizedError):
        messages.CRIU_REQ.decode(b"\x08\x01" + data)
    assert time.monotonic() - start < 0.5  # no allocation of `length` bytes


@pytest.mark.parametrize("wire_type", [3, 4, 6, 7])
def test_invalid_wire_types(wire_type: int) -> None:
    with pytest.raises(WireTypeError):
        messages.CRIU_REQ.decode(bytes([1 << 3 | wire_type, 0]))
    with pytest.raises(WireTypeError):  # also for unknown fields
        messages.CRIU_REQ.decode(b"\x08\x01" + bytes([15 << 3 | wire_type, 0]))


def test_wire_type_mismatch_on_a_known_field() -> None:
    with pytest.raises(WireTypeError):
        messages.CRIU_REQ.decode(b"\x0a\x01\x01")  # type (varint) sent length-delimited
    with pytest.raises(WireTypeError):
        messages.CRIU_REQ.decode(b"\x08\x01\x10\x01")  # opts (message) sent as varint


def test_field_number_zero_and_fixed_truncation() -> None:
    with pytest.raises(WireError):
        messages.CRIU_REQ.decode(b"\x00\x01")
    with pytest.raises(TruncatedError):
        ALL_TYPES.decode(bytes([8 << 3 | 5, 1, 2]), check_required=False)  # fixed32 cut
    with pytest.raises(TruncatedError):
        ALL_TYPES.decode(bytes([9 << 3 | 1, 1, 2, 3]), check_required=False)  # fixed64 cut
    packed_fixed = 200 + NUMERIC.index("fixed32")
    with pytest.raises(TruncatedError):  # packed fixed32 blob of 5 bytes
        ALL_TYPES.decode(wire.encode_varint(packed_fixed << 3 | 2) + b"\x05" + b"\0" * 5, check_required=False)


def test_deep_garbage_in_nested_message_is_typed() -> None:
    # criu_resp.version (10) holding a truncated varint
    data = b"\x08\x0a\x10\x01" + b"\x52\x02\x08\x80"
    with pytest.raises(TruncatedError):
        messages.CRIU_RESP.decode(data)


def test_float_values() -> None:
    m = Message("m", [Field(1, "f", "float"), Field(2, "d", "double")])
    data = m.encode({"f": 1.5, "d": -2.25})
    assert data == b"\x0d" + struct.pack("<f", 1.5) + b"\x11" + struct.pack("<d", -2.25)
    assert m.decode(data) == {"f": 1.5, "d": -2.25}

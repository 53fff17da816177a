"""A proto2 wire codec in pure stdlib, driven by declarative message definitions.

CRIU's RPC messages and image entries are plain protobuf (proto2). We need a
small part of them, so instead of depending on protobuf we describe each
message with `Message`/`Field`/`Enum` (see messages.py) and encode/decode
plain dicts:

- a decoded message is a ``dict`` of field name -> value; an absent optional
  field is absent from the dict (``"pid" in resp`` is protobuf's HasField);
  a repeated field is a ``list``; a nested message is a ``dict``; an enum is
  its ``int`` value; ``string`` is ``str`` (invalid UTF-8 survives as
  surrogate escapes), ``bytes`` is ``bytes``.
- unknown field numbers are skipped; a known field sent with another wire
  type is an error, except that repeated scalars are accepted packed or not.
- proto2 ``required`` fields must be present on decode; on encode a missing
  required field is filled from its declared default, or is an error.

Every failure on bad input is a `WireError` subclass, never a hang, a huge
allocation or another exception type: lengths are checked against the bytes
actually present before anything is sliced.
"""

from __future__ import annotations

import struct
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Sequence, Tuple

from .errors import (
    EncodeError,
    MalformedVarintError,
    MissingFieldError,
    OversizedError,
    TruncatedError,
    WireError,
    WireTypeError,
)

__all__ = [
    "VARINT",
    "FIXED64",
    "LENGTH_DELIMITED",
    "FIXED32",
    "Enum",
    "Field",
    "Message",
    "encode_varint",
    "decode_varint",
    "zigzag_encode",
    "zigzag_decode",
    "iter_fields",
]

# Wire types (https://protobuf.dev/programming-guides/encoding/).
VARINT = 0
FIXED64 = 1
LENGTH_DELIMITED = 2
START_GROUP = 3  # deprecated groups: rejected
END_GROUP = 4
FIXED32 = 5

MAX_FIELD_NUMBER = (1 << 29) - 1
_U64 = (1 << 64) - 1
_U32 = (1 << 32) - 1

# scalar type -> wire type
_WIRE_TYPE_OF = {
    "int32": VARINT,
    "int64": VARINT,
    "uint32": VARINT,
    "uint64": VARINT,
    "sint32": VARINT,
    "sint64": VARINT,
    "bool": VARINT,
    "enum": VARINT,
    "fixed32": FIXED32,
    "sfixed32": FIXED32,
    "float": FIXED32,
    "fixed64": FIXED64,
    "sfixed64": FIXED64,
    "double": FIXED64,
    "string": LENGTH_DELIMITED,
    "bytes": LENGTH_DELIMITED,
    "message": LENGTH_DELIMITED,
}

_INT_RANGES = {
    "int32": (-(1 << 31), (1 << 31) - 1),
    "sint32": (-(1 << 31), (1 << 31) - 1),
    "sfixed32": (-(1 << 31), (1 << 31) - 1),
    "enum": (-(1 << 31), (1 << 31) - 1),
    "int64": (-(1 << 63), (1 << 63) - 1),
    "sint64": (-(1 << 63), (1 << 63) - 1),
    "sfixed64": (-(1 << 63), (1 << 63) - 1),
    "uint32": (0, _U32),
    "fixed32": (0, _U32),
    "uint64": (0, _U64),
    "fixed64": (0, _U64),
}

_STRUCT = {
    "fixed32": struct.Struct("<I"),
    "sfixed32": struct.Struct("<i"),
    "float": struct.Struct("<f"),
    "fixed64": struct.Struct("<Q"),
    "sfixed64": struct.Struct("<q"),
    "double": struct.Struct("<d"),
}


# --- primitives ---------------------------------------------------------------


def encode_varint(value: int) -> bytes:
    """Encode an unsigned integer in [0, 2**64) as a base-128 varint."""
    if value < 0 or value > _U64:
        raise EncodeError(f"varint out of range: {value}")
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_varint(data: bytes, pos: int = 0, end: int | None = None) -> Tuple[int, int]:
    """Decode a varint at `pos`; return (value masked to 64 bits, position after it)."""
    if end is None:
        end = len(data)
    result = 0
    shift = 0
    start = pos
    while True:
        if pos >= end:
            raise TruncatedError("input ends inside a varint", start)
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result & _U64, pos
        shift += 7
        if shift >= 70:
            raise MalformedVarintError("varint longer than 10 bytes", start)


def zigzag_encode(value: int, bits: int = 64) -> int:
    """Map a signed integer to unsigned so that small magnitudes stay small (sint32/sint64)."""
    return ((value << 1) ^ (value >> (bits - 1))) & ((1 << bits) - 1)


def zigzag_decode(value: int) -> int:
    """Inverse of `zigzag_encode`."""
    return (value >> 1) ^ -(value & 1)


def _signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def iter_fields(data: bytes, start: int = 0, end: int | None = None) -> Iterator[Tuple[int, int, Any, int]]:
    """Low level: yield (field number, wire type, raw value, offset) for each field in `data`.

    The raw value is an int for VARINT/FIXED32/FIXED64 and a ``memoryview``
    slice for LENGTH_DELIMITED. Groups and invalid wire types are errors.
    """
    view = memoryview(data)
    for number, wire_type, value, offset, _ in _scan(view, start, len(view) if end is None else end):
        yield number, wire_type, value, offset


def _scan(view: memoryview, start: int, end: int) -> Iterator[Tuple[int, int, Any, int, int]]:
    """`iter_fields` plus the absolute start of each length-delimited payload."""
    pos = start
    while pos < end:
        offset = pos
        key, pos = decode_varint(view, pos, end)
        number, wire_type = key >> 3, key & 7
        if number == 0 or number > MAX_FIELD_NUMBER:
            raise WireError(f"invalid field number {number}", offset)
        if wire_type == VARINT:
            value, pos = decode_varint(view, pos, end)
        elif wire_type == FIXED64:
            if end - pos < 8:
                raise TruncatedError(f"field {number}: input ends inside a fixed64", offset)
            value = int.from_bytes(view[pos : pos + 8], "little")
            pos += 8
        elif wire_type == FIXED32:
            if end - pos < 4:
                raise TruncatedError(f"field {number}: input ends inside a fixed32", offset)
            value = int.from_bytes(view[pos : pos + 4], "little")
            pos += 4
        elif wire_type == LENGTH_DELIMITED:
            length, pos = decode_varint(view, pos, end)
            if length > end - pos:
                raise OversizedError(f"field {number}: length {length} exceeds the {end - pos} bytes left", offset)
            value = view[pos : pos + length]
            vstart = pos
            pos += length
            yield number, wire_type, value, offset, vstart
            continue
        else:
            raise WireTypeError(f"field {number}: unsupported wire type {wire_type}", offset)
        yield number, wire_type, value, offset, pos


# --- definitions ---------------------------------------------------------------


class Enum:
    """A protobuf enum: names to numbers. Decoding keeps unknown numbers as ints."""

    def __init__(self, name: str, values: Mapping[str, int]) -> None:
        self.name = name
        self.values: Dict[str, int] = dict(values)
        self.names: Dict[int, str] = {v: k for k, v in self.values.items()}

    def __getattr__(self, item: str) -> int:
        try:
            return self.__dict__["values"][item]
        except KeyError:
            raise AttributeError(item) from None

    def value_of(self, value: Any) -> int:
        """Return the number for a name or a number."""
        if isinstance(value, str):
            try:
                return self.values[value]
            except KeyError:
                raise EncodeError(f"{self.name}: unknown value name {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise EncodeError(f"{self.name}: expected a name or an int, got {type(value).__name__}")
        return value

    def name_of(self, number: int) -> str:
        """Return the name for a number, or the number as a string when unknown."""
        return self.names.get(number, str(number))

    def __repr__(self) -> str:
        return f"Enum({self.name!r})"


class Field:
    """One field of a message definition.

    Args:
        number: the field number on the wire.
        name: the key in decoded dicts.
        type: a scalar type name ("int32", "uint64", "bool", "string", ...),
            "enum" (with `enum`) or "message" (with `message`).
        label: "optional", "required" or "repeated".
        packed: for repeated numeric fields, encode as one packed blob.
        default: the proto2 default (used by `Message.get` and to fill a
            missing required field on encode).
    """

    __slots__ = ("number", "name", "type", "label", "packed", "message", "enum", "default", "wire_type")

    def __init__(
        self,
        number: int,
        name: str,
        type: str,
        label: str = "optional",
        *,
        packed: bool = False,
        message: Message | None = None,
        enum: Enum | None = None,
        default: Any = None,
    ) -> None:
        if type not in _WIRE_TYPE_OF:
            raise ValueError(f"field {name}: unknown type {type!r}")
        if label not in ("optional", "required", "repeated"):
            raise ValueError(f"field {name}: unknown label {label!r}")
        if not 0 < number <= MAX_FIELD_NUMBER:
            raise ValueError(f"field {name}: bad number {number}")
        if (type == "message") != (message is not None):
            raise ValueError(f"field {name}: a message field needs `message` and only it")
        if (type == "enum") != (enum is not None):
            raise ValueError(f"field {name}: an enum field needs `enum` and only it")
        if packed and (label != "repeated" or _WIRE_TYPE_OF[type] == LENGTH_DELIMITED):
            raise ValueError(f"field {name}: only repeated numeric fields can be packed")
        self.number = number
        self.name = name
        self.type = type
        self.label = label
        self.packed = packed
        self.message = message
        self.enum = enum
        self.default = default
        self.wire_type = _WIRE_TYPE_OF[type]

    @property
    def repeated(self) -> bool:
        return self.label == "repeated"

    def __repr__(self) -> str:
        return f"Field({self.number}, {self.name!r}, {self.type!r}, {self.label!r})"


class Message:
    """A message definition: an ordered set of `Field`s with encode/decode."""

    def __init__(self, name: str, fields: Iterable[Field]) -> None:
        self.name = name
        self.fields: Tuple[Field, ...] = tuple(sorted(fields, key=lambda f: f.number))
        self.by_number: Dict[int, Field] = {}
        self.by_name: Dict[str, Field] = {}
        for f in self.fields:
            if f.number in self.by_number or f.name in self.by_name:
                raise ValueError(f"{name}: duplicate field {f.number} {f.name}")
            self.by_number[f.number] = f
            self.by_name[f.name] = f

    def __repr__(self) -> str:
        return f"Message({self.name!r})"

    def get(self, values: Mapping[str, Any], name: str) -> Any:
        """Value of `name` in a decoded dict, else its declared default (proto2 getter)."""
        if name in values:
            return values[name]
        f = self.by_name[name]
        if f.repeated:
            return []
        if f.default is not None:
            return f.default
        return _ZERO.get(f.type)

    # -- encoding

    def encode(self, values: Mapping[str, Any]) -> bytes:
        """Serialize a dict of field name -> value, in field-number order."""
        if not isinstance(values, Mapping):
            raise EncodeError(f"{self.name}: expected a mapping, got {type(values).__name__}")
        unknown = set(values) - set(self.by_name)
        if unknown:
            raise EncodeError(f"{self.name}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
        out = bytearray()
        for f in self.fields:
            value = values.get(f.name)
            if value is None:
                if f.label == "required":
                    if f.default is None:
                        raise MissingFieldError(f"{self.name}.{f.name} is required")
                    value = f.default
                else:
                    continue
            if f.repeated:
                if isinstance(value, (str, bytes, bytearray, Mapping)) or not isinstance(value, Sequence):
                    raise EncodeError(f"{self.name}.{f.name}: a repeated field needs a list")
                if not value:
                    continue
                if f.packed:
                    blob = b"".join(_encode_scalar(f, v, self.name) for v in value)
                    out += _key(f.number, LENGTH_DELIMITED) + encode_varint(len(blob)) + blob
                else:
                    for v in value:
                        out += self._encode_one(f, v)
            else:
                out += self._encode_one(f, value)
        return bytes(out)

    def _encode_one(self, f: Field, value: Any) -> bytes:
        key = _key(f.number, f.wire_type)
        if f.type == "message":
            assert f.message is not None
            blob = f.message.encode(value)
            return key + encode_varint(len(blob)) + blob
        if f.type in ("string", "bytes"):
            blob = _encode_scalar(f, value, self.name)
            return key + encode_varint(len(blob)) + blob
        return key + _encode_scalar(f, value, self.name)

    # -- decoding

    def decode(self, data: bytes, *, check_required: bool = True) -> Dict[str, Any]:
        """Parse `data` into a dict. Raises a `WireError` subclass on malformed input."""
        view = memoryview(data)
        return self._decode(view, 0, len(view), check_required)

    def _decode(self, view: memoryview, start: int, end: int, check_required: bool) -> Dict[str, Any]:
        result: Dict[str, Any] = {}
        for number, wire_type, raw, offset, vstart in _scan(view, start, end):
            f = self.by_number.get(number)
            if f is None:
                continue  # unknown field: skipped, as protobuf does
            if wire_type != f.wire_type:
                if f.repeated and wire_type == LENGTH_DELIMITED and f.wire_type != LENGTH_DELIMITED:
                    result.setdefault(f.name, []).extend(self._decode_packed(f, raw, offset))
                    continue
                raise WireTypeError(f"{self.name}.{f.name}: wire type {wire_type}, expected {f.wire_type}", offset)
            if f.type == "message":
                assert f.message is not None
                value: Any = f.message._decode(view, vstart, vstart + len(raw), check_required)
            else:
                value = _decode_value(f.type, raw)
            if f.repeated:
                result.setdefault(f.name, []).append(value)
            elif f.type == "message" and f.name in result:
                result[f.name] = _merge(f.message, result[f.name], value)  # proto: repeated message merges
            else:
                result[f.name] = value
        if check_required:
            for f in self.fields:
                if f.label == "required" and f.name not in result:
                    raise MissingFieldError(f"{self.name}.{f.name} is required but absent", start)
        return result

    def _decode_packed(self, f: Field, raw: memoryview, offset: int) -> List[Any]:
        out: List[Any] = []
        if f.wire_type == VARINT:
            pos, end = 0, len(raw)
            while pos < end:
                value, pos = decode_varint(raw, pos, end)
                out.append(_decode_number(f.type, value))
            return out
        size = 4 if f.wire_type == FIXED32 else 8
        if len(raw) % size:
            raise TruncatedError(f"{self.name}.{f.name}: packed length {len(raw)} is not a multiple of {size}", offset)
        for i in range(0, len(raw), size):
            out.append(_decode_number(f.type, int.from_bytes(raw[i : i + size], "little")))
        return out


_ZERO = {
    "bool": False,
    "string": "",
    "bytes": b"",
    "float": 0.0,
    "double": 0.0,
    "message": None,
}
for _t in _INT_RANGES:
    _ZERO[_t] = 0


def _key(number: int, wire_type: int) -> bytes:
    return encode_varint((number << 3) | wire_type)


def _encode_scalar(f: Field, value: Any, owner: str) -> bytes:
    t = f.type
    where = f"{owner}.{f.name}"
    if t == "bool":
        if not isinstance(value, bool):
            raise EncodeError(f"{where}: expected bool, got {type(value).__name__}")
        return b"\x01" if value else b"\x00"
    if t == "string":
        if not isinstance(value, str):
            raise EncodeError(f"{where}: expected str, got {type(value).__name__}")
        try:
            return value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError as e:
            raise EncodeError(f"{where}: {e}") from None
    if t == "bytes":
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise EncodeError(f"{where}: expected bytes, got {type(value).__name__}")
        return bytes(value)
    if t in ("float", "double"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EncodeError(f"{where}: expected a number, got {type(value).__name__}")
        try:
            return _STRUCT[t].pack(value)
        except (OverflowError, struct.error) as e:
            raise EncodeError(f"{where}: {e}") from None
    if t == "enum":
        assert f.enum is not None
        value = f.enum.value_of(value)
    elif isinstance(value, bool) or not isinstance(value, int):
        raise EncodeError(f"{where}: expected int, got {type(value).__name__}")
    lo, hi = _INT_RANGES[t]
    if not lo <= value <= hi:
        raise EncodeError(f"{where}: {value} out of range for {t}")
    if t in _STRUCT:
        return _STRUCT[t].pack(value)
    if t in ("sint32", "sint64"):
        return encode_varint(zigzag_encode(value, 32 if t == "sint32" else 64))
    return encode_varint(value & _U64)  # negative int32/int64/enum: ten-byte two's complement


def _decode_value(t: str, raw: Any) -> Any:
    if t == "string":
        return bytes(raw).decode("utf-8", "surrogateescape")
    if t == "bytes":
        return bytes(raw)
    return _decode_number(t, raw)


def _decode_number(t: str, raw: int) -> Any:
    if t in ("uint64", "fixed64"):
        return raw
    if t in ("uint32", "fixed32"):
        return raw & _U32
    if t in ("int32", "enum", "sfixed32"):
        return _signed(raw, 32)
    if t in ("int64", "sfixed64"):
        return _signed(raw, 64)
    if t == "sint32":
        return zigzag_decode(raw & _U32)
    if t == "sint64":
        return zigzag_decode(raw)
    if t == "bool":
        return raw != 0
    if t == "float":
        return struct.unpack("<f", (raw & _U32).to_bytes(4, "little"))[0]
    if t == "double":
        return struct.unpack("<d", raw.to_bytes(8, "little"))[0]
    raise AssertionError(t)


def _merge(msg: Message | None, old: Dict[str, Any], new: Dict[str, Any]) -> Dict[str, Any]:
    """Protobuf merge of two decodings of the same message field."""
    assert msg is not None
    merged = dict(old)
    for name, value in new.items():
        f = msg.by_name[name]
        if f.repeated:
            merged[name] = list(merged.get(name, [])) + list(value)
        elif f.type == "message" and name in merged:
            merged[name] = _merge(f.message, merged[name], value)
        else:
            merged[name] = value
    return merged

"""The protobuf wire format, by hand: just enough for TensorBoard events and SentencePiece pieces.

Writing these few messages ourselves keeps the core free of TensorFlow and of
protobuf version constraints.
"""

from __future__ import annotations

from typing import Any, Iterator

VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5


def varint(value: int) -> bytes:
  """Base-128 varint; negative int64 values as 10-byte two's complement."""
  value &= 0xFFFFFFFFFFFFFFFF
  out = bytearray()
  while True:
    bits = value & 0x7F
    value >>= 7
    if value:
      out.append(bits | 0x80)
    else:
      out.append(bits)
      return bytes(out)


def key(field: int, wire_type: int) -> bytes:
  return varint(field << 3 | wire_type)


def len_field(field: int, payload: bytes) -> bytes:
  """A length-delimited field (string, bytes or sub-message)."""
  return key(field, LEN) + varint(len(payload)) + payload


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
  """(value, next position) of the varint at `pos`."""
  result = shift = 0
  while True:
    byte = buf[pos]
    pos += 1
    result |= (byte & 0x7F) << shift
    if not byte & 0x80:
      return result, pos
    shift += 7


def fields(buf: bytes) -> Iterator[tuple[int, Any]]:
  """(field number, raw value) pairs of one message: ints for varints, bytes otherwise."""
  pos = 0
  while pos < len(buf):
    tag, pos = read_varint(buf, pos)
    field, wire_type = tag >> 3, tag & 7
    if wire_type == VARINT:
      value, pos = read_varint(buf, pos)
    elif wire_type == FIXED64:
      value, pos = buf[pos:pos + 8], pos + 8
    elif wire_type == FIXED32:
      value, pos = buf[pos:pos + 4], pos + 4
    elif wire_type == LEN:
      size, pos = read_varint(buf, pos)
      value, pos = buf[pos:pos + size], pos + size
    else:
      raise ValueError(f"unsupported protobuf wire type {wire_type}")
    yield field, value

"""Protobuf's packed encoding for a model's repeated float/int attributes, the part of
compaction (:mod:`.compact`) that rewrites bytes rather than the graph; why a device's parser
reads it: :func:`packed_bytes`. Anything this cannot prove lossless raises
:class:`_NotLossless`, and compaction is then left out."""

from __future__ import annotations

import onnx


class _NotLossless(Exception):
    pass


def packed_bytes(proto: onnx.ModelProto) -> bytes:
    """``proto`` serialized with its repeated float/int attributes in packed encoding.

    onnx.proto is proto2 and declares ``AttributeProto.floats``/``ints`` unpacked: a tag byte
    before every value. Protobuf parsers must accept the packed form for any repeated scalar
    field, and it parses to the same message (checked here): a float costs 4 bytes instead of
    5, a small int 1 instead of 2.
    """
    data = proto.SerializeToString()
    packed = _pack(data, "model")
    if onnx.load_from_string(packed) != proto:
        raise _NotLossless
    return packed


_SUBMESSAGES = {"model": {7: "graph"}, "graph": {1: "node"}, "node": {5: "attr"}, "attr": {6: "graph", 11: "graph"}}


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _pack(data: bytes, kind: str) -> bytes:
    pieces: list[bytes | int] = []
    packed: dict[int, bytearray] = {}
    i = 0
    while i < len(data):
        start = i
        tag, i = _read_varint(data, i)
        number, wire = tag >> 3, tag & 7
        payload_at = i
        if wire == 0:
            _, i = _read_varint(data, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            length, payload_at = _read_varint(data, i)
            i = payload_at + length
        else:
            raise _NotLossless  # groups: not in onnx.proto
        if kind == "attr" and (number, wire) in ((7, 5), (8, 0)):
            if number not in packed:
                packed[number] = bytearray()
                pieces.append(number)
            packed[number] += data[payload_at:i]
            continue
        sub = _SUBMESSAGES[kind].get(number)
        if sub is not None and wire == 2:
            inner = _pack(data[payload_at:i], sub)
            pieces.append(_varint(tag) + _varint(len(inner)) + inner)
        else:
            pieces.append(data[start:i])
    out = bytearray()
    for piece in pieces:
        if isinstance(piece, int):
            out += _varint((piece << 3) | 2) + _varint(len(packed[piece])) + packed[piece]
        else:
            out += piece
    return bytes(out)

"""Flower ArrayRecords to and from NumPy arrays, key by key, and packed into one Array for the wire.

A packed record holds one Array (PACKED) with all of the record's arrays (`pedseg_core.packed_arrays`); its
index travels in the message's config (server to site) or site record (site to server) under PACKED_JSON, as
{record name: index}.
"""

from __future__ import annotations

import json

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

from pedseg_core.packed_arrays import pack, unpack

PACKED = "packed"  # the one Array of a packed record


def to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


def packed(arrays: dict[str, np.ndarray]) -> tuple[ArrayRecord, list[list]]:
    """(the arrays as a record of one packed Array, its index)."""
    buffer, index = pack(arrays)
    return ArrayRecord({PACKED: Array(buffer)}), index


def pack_records(content: RecordDict, names: tuple[str, ...]) -> str:
    """Pack those of the `names` records that `content` holds, in place; returns their PACKED_JSON."""
    indexes = {}
    for name in names:
        if name in content.array_records:
            content[name], indexes[name] = packed(to_numpy(content[name]))
    return json.dumps(indexes, separators=(",", ":"))


def unpacked(content: RecordDict, packed_json: str) -> dict[str, dict[str, np.ndarray]]:
    """The arrays of the records `packed_json` names, {record name: {key: array}}; ValueError (or KeyError,
    TypeError) when they do not match it."""
    indexes = json.loads(packed_json)
    if not isinstance(indexes, dict):
        raise ValueError("the packed index is not a mapping")
    return {name: unpack(content[name][PACKED].numpy(), index) for name, index in indexes.items()}


def unpack_records(content: RecordDict, packed_json: str) -> None:
    """Unpack, in place, the records `packed_json` names (errors as `unpacked`)."""
    for name, arrays in unpacked(content, packed_json).items():
        content[name] = to_record(arrays)

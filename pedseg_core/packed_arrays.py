"""Many arrays as one byte buffer, and back.

Flower sends every array of a message as its own object (and each in chunks of at most 5 MB), one request per
object; the demo network's 38 shared tensors make 80 objects a message, and on a loaded 2-core machine the
per-object latency, not the bytes, is most of a round's fixed cost (docs/decisions/0003-packed-fp16-arrays.md).
Packed, they travel as one array: as many objects as its 5 MB chunks. Nothing is converted: each array keeps its
dtype, shape and bytes.
"""

from __future__ import annotations

import numpy as np

NUMERIC_KINDS = "biufc"  # bool, signed and unsigned integers, floats, complex: never Python objects


def pack(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, list[list]]:
    """{key: array} -> (buffer [total bytes] uint8, index: [key, dtype, shape] per array, in buffer order)."""
    index = [[key, value.dtype.str, list(value.shape)] for key, value in arrays.items()]
    parts = [np.ascontiguousarray(value).reshape(-1).view(np.uint8) for value in arrays.values()]
    buffer = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
    return buffer, index


def unpack(buffer: np.ndarray, index: list[list]) -> dict[str, np.ndarray]:
    """The arrays `pack` packed; ValueError when the index does not describe the buffer exactly."""
    if buffer.dtype != np.uint8 or buffer.ndim != 1:
        raise ValueError(f"a packed buffer is 1-D uint8, got {buffer.dtype} {buffer.shape}")
    arrays, offset = {}, 0
    for entry in index:
        key, dtype, shape = entry
        dtype = np.dtype(dtype)
        if dtype.kind not in NUMERIC_KINDS or any(not isinstance(n, int) or n < 0 for n in shape):
            raise ValueError(f"packed array {key!r}: not a numeric array ({dtype}, shape {shape})")
        size = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
        if offset + size > buffer.size or key in arrays:
            raise ValueError(f"packed array {key!r}: beyond the buffer or repeated")
        arrays[str(key)] = buffer[offset:offset + size].view(dtype).reshape(shape).copy()
        offset += size
    if offset != buffer.size:
        raise ValueError(f"the packed buffer holds {buffer.size - offset} bytes more than its index describes")
    return arrays

"""Many arrays as one buffer: every dtype, shape and byte back as it was; a buffer that does not match its index
is refused."""

from __future__ import annotations

import numpy as np
import pytest

from pedseg_core.packed_arrays import pack, unpack

ARRAYS = {"conv.weight": np.random.default_rng(0).standard_normal((8, 4, 3, 3)).astype(np.float32),
          "half": np.linspace(-1, 1, 7, dtype=np.float16), "bn.num_batches_tracked": np.array(12, np.int64),
          "mask": np.array([True, False, True]), "empty": np.zeros((0, 5), np.float32),
          "strided": np.arange(24, dtype=np.int32).reshape(4, 6)[:, ::2]}


def test_every_array_comes_back_with_its_dtype_shape_and_bytes():
    buffer, index = pack(ARRAYS)
    assert buffer.dtype == np.uint8 and buffer.size == sum(a.nbytes for a in ARRAYS.values())
    back = unpack(buffer, index)
    assert list(back) == list(ARRAYS)
    for key, value in ARRAYS.items():
        assert back[key].dtype == value.dtype and back[key].shape == value.shape
        assert back[key].tobytes() == np.ascontiguousarray(value).tobytes()
        assert back[key].flags.writeable  # a copy, not a view of the received buffer


@pytest.mark.parametrize("change, message", [
    (lambda b, i: (b[:-1], i), "beyond the buffer"),
    (lambda b, i: (np.concatenate([b, b[:4]]), i), "4 bytes more"),
    (lambda b, i: (b, [[i[0][0], "|O", [2]]] + i[1:]), "not a numeric array"),
    (lambda b, i: (b, [[i[0][0], "<f4", [-1]]] + i[1:]), "not a numeric array"),
    (lambda b, i: (b, [i[1], i[1]] + i[2:]), "repeated"),
    (lambda b, i: (b.view(np.int8), i), "1-D uint8"),
])
def test_a_buffer_that_does_not_match_its_index_is_refused(change, message):
    with pytest.raises(ValueError, match=message):
        unpack(*change(*pack(ARRAYS)))

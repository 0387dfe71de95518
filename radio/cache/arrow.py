"""Tensors as plain Arrow: nested fixed-size lists that pyarrow and ``datasets`` read with shapes intact.

A (N, H, W, C) float16 array becomes ``fixed_size_list<fixed_size_list<fixed_size_list<halffloat>[C]>[W]>[H]``:
no Ray extension types, no pickled blobs, so a cache is readable by anything that reads Parquet.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

__all__ = ["tensor_to_arrow", "arrow_to_tensor", "tensor_type", "leaf_path"]

_ARROW_DTYPES = {np.dtype(np.int8): pa.int8(), np.dtype(np.uint8): pa.uint8(), np.dtype(np.float16): pa.float16(), np.dtype(np.float32): pa.float32(), np.dtype(np.int16): pa.int16(), np.dtype(np.int32): pa.int32(), np.dtype(np.int64): pa.int64()}


def tensor_type(shape: tuple[int, ...], dtype) -> pa.DataType:
    """Arrow type of one row holding a tensor of ``shape`` (per row, without the batch dim)."""
    t = _ARROW_DTYPES[np.dtype(dtype)]
    for n in reversed(shape):
        t = pa.list_(t, n)
    return t


def tensor_to_arrow(arr_N: np.ndarray) -> pa.FixedSizeListArray:
    """(N, *shape) array -> Arrow array of N rows of nested fixed-size lists (zero-copy where possible)."""
    arr_N = np.ascontiguousarray(arr_N)
    if arr_N.dtype not in _ARROW_DTYPES:
        raise TypeError(f"unsupported tensor dtype {arr_N.dtype}; supported: {sorted(map(str, _ARROW_DTYPES))}")
    out: pa.Array = pa.array(arr_N.reshape(-1), type=_ARROW_DTYPES[arr_N.dtype])
    for n in reversed(arr_N.shape[1:]):
        out = pa.FixedSizeListArray.from_arrays(out, n)
    return out


def arrow_to_tensor(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Inverse of :func:`tensor_to_arrow`: Arrow nested fixed-size lists -> (N, *shape) numpy array.

    Column-wise: the leaf values are flattened once and reshaped, with no per-row Python.
    """
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    n = len(col)
    shape = []
    t = col.type
    values = col
    while pa.types.is_fixed_size_list(t):
        shape.append(t.list_size)
        values = values.flatten()  # honours slice offsets, unlike .values
        t = t.value_type
    flat = values.to_numpy(zero_copy_only=False)
    return flat.reshape(n, *shape)


def leaf_path(column: str, depth: int) -> str:
    """Parquet's path of the leaf values of a nested list column (used to pick byte-stream-split)."""
    return column + ".list.element" * depth

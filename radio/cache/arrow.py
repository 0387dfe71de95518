"""Tensors as plain Arrow: one ``fixed_size_binary`` value per row holding the row's tensor bytes (C order),
with the shape and dtype in the field's metadata (``radio.tensor``). No extension types, no pickles.

Why not nested fixed-size lists (format v2's first draft): Parquet stores every leaf of a nested list with
repetition/definition levels, and float16 as a 2-byte FIXED_LEN_BYTE_ARRAY decoded value by value, so a
14x14x768 float16 column read at ~700 rows/s; as one fixed-size binary value per row it reads at ~11000 rows/s
uncompressed and ~7400 with lz4 (BENCHMARKS.md). Plain pyarrow reads it in one line:
``np.frombuffer(col.combine_chunks().buffers()[1], dtype).reshape(len(col), *shape)``, which is what
:func:`arrow_to_tensor` does with the shape and dtype from the field metadata.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    import xxhash

__all__ = [
    "tensor_to_arrow",
    "arrow_to_tensor",
    "column_tensor",
    "tensor_field",
    "column_digest",
    "fixed_width_digest",
    "TENSOR_META",
]

TENSOR_META = b"radio.tensor"
_DTYPES = ("int8", "uint8", "float16", "float32", "int16", "int32", "int64")


def tensor_field(name: str, shape: tuple[int, ...], dtype: pa.DataType) -> pa.Field:
    """The Arrow field of a column holding one ``shape`` tensor of ``dtype`` per row."""
    dt = np.dtype(dtype)
    if dt.name not in _DTYPES:
        raise TypeError(f"unsupported tensor dtype {dt}; supported: {list(_DTYPES)}")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    return pa.field(
        name,
        pa.binary(max(1, nbytes)),
        nullable=False,
        metadata={TENSOR_META: json.dumps({"shape": list(shape), "dtype": dt.name}).encode()},
    )


def tensor_to_arrow(arr_N: np.ndarray) -> pa.FixedSizeBinaryArray:
    """(N, *shape) array -> Arrow array of N fixed-size binary values (zero-copy for a contiguous array).
    Pair it with :func:`tensor_field` for the schema, so readers know the shape and dtype."""
    arr_N = np.ascontiguousarray(arr_N)
    if arr_N.dtype.name not in _DTYPES:
        raise TypeError(f"unsupported tensor dtype {arr_N.dtype}; supported: {list(_DTYPES)}")
    per_row = max(1, arr_N[0].nbytes if len(arr_N) else int(np.prod(arr_N.shape[1:])) * arr_N.itemsize)
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(per_row), len(arr_N), [None, pa.py_buffer(arr_N)])


def arrow_to_tensor(col: pa.Array | pa.ChunkedArray, field: pa.Field | None = None) -> np.ndarray:
    """Inverse of :func:`tensor_to_arrow`: -> (N, *shape) numpy array, a view of the Arrow buffer (read-only).

    ``field``: the column's schema field, which carries the shape and dtype (``table.schema.field(name)``;
    :func:`column_tensor` does this for a table or record batch).
    """
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if field is None:
        raise ValueError("arrow_to_tensor needs the column's field, whose metadata holds the tensor's shape and dtype")
    if TENSOR_META not in (field.metadata or {}) or not pa.types.is_fixed_size_binary(col.type):
        raise ValueError(
            f"column {field.name!r} ({col.type}) is not a tensor column of this cache format (fixed-size "
            f"binary with {TENSOR_META.decode()} metadata); rebuild the cache with `radio cache` "
            "into a new output path"
        )
    meta = json.loads(field.metadata[TENSOR_META])
    dt = np.dtype(meta["dtype"])
    n = len(col)
    width = col.type.byte_width
    buf = np.frombuffer(col.buffers()[1], dtype=np.uint8, count=(col.offset + n) * width)[col.offset * width :]
    return buf.view(dt).reshape(n, *meta["shape"])


def column_tensor(table: pa.Table | pa.RecordBatch, name: str) -> np.ndarray:
    """The tensor column ``name`` of a table or record batch as (N, *shape) numpy."""
    return arrow_to_tensor(table.column(name), table.schema.field(name))


def column_digest(col: pa.Array | pa.ChunkedArray) -> str | None:
    """xxh3-64 of a column's values (hex), whatever its chunking and buffer offsets: what a shard records per row
    group and column when it is written, and what a reader from an object store compares after decoding (see
    ``radio.cache.store.RemoteShard``). None for a type it does not cover (that file's pages are then checked)."""
    import xxhash

    values, lengths = xxhash.xxh3_64(), xxhash.xxh3_64()
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    for a in chunks:
        if not _digest_into(a, values, lengths):
            return None
    return xxhash.xxh3_64_hexdigest(f"{len(col)}:".encode() + values.digest() + lengths.digest())


def fixed_width_digest(rows: int, values: xxhash.xxh3_64) -> str:
    """:func:`column_digest` of a column of ``rows`` fixed-width values whose bytes were fed, in order, to the
    xxh3-64 hasher ``values`` (a reader that hashes the bytes as they arrive, see ``RemoteShard``)."""
    import xxhash

    return xxhash.xxh3_64_hexdigest(f"{rows}:".encode() + values.digest() + xxhash.xxh3_64().digest())


def _digest_into(a: pa.Array, values, lengths) -> bool:
    t, n = a.type, len(a)
    if pa.types.is_dictionary(t):
        a, t = a.dictionary_decode(), t.value_type
    if a.null_count:  # what a null slot reads back as is not what was written: such a file's pages are checked
        return False
    if pa.types.is_binary(t) or pa.types.is_string(t) or pa.types.is_large_binary(t) or pa.types.is_large_string(t):
        wide = pa.types.is_large_binary(t) or pa.types.is_large_string(t)
        offs = np.frombuffer(a.buffers()[1], np.int64 if wide else np.int32)[a.offset : a.offset + n + 1]
        lengths.update(np.diff(offs).astype(np.int64).tobytes())
        if n and offs[-1] > offs[0]:
            values.update(memoryview(a.buffers()[2])[int(offs[0]) : int(offs[-1])])
        return True
    if pa.types.is_boolean(t):
        values.update(np.asarray(a.to_numpy(zero_copy_only=False), dtype=np.bool_).tobytes())
        return True
    if pa.types.is_fixed_size_binary(t) or (pa.types.is_primitive(t) and t.bit_width % 8 == 0):
        width = t.byte_width if pa.types.is_fixed_size_binary(t) else t.bit_width // 8
        if n:
            values.update(memoryview(a.buffers()[1])[a.offset * width : (a.offset + n) * width])
        return True
    if pa.types.is_fixed_size_list(t):
        return _digest_into(a.flatten(), values, lengths)
    return False

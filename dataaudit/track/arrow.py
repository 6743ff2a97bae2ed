"""Arrow tables built from numpy arrays' own buffers, for the files the tracker writes.

`pa.table` and `pa.array` import pandas the first time they run (to look for its types). On the tracker's
writer thread that import holds the GIL for about 0.2 s on a two-core machine, and the training loop waits
for it, once per process, at the end of its first epoch. Built from buffers, a tracked process never
imports pandas.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa


def table(columns: dict[str, Any]) -> pa.Table:
    """A table of `columns`: 1-d numpy arrays (numbers, booleans, strings) or Arrow arrays."""
    return pa.Table.from_arrays([column(values) for values in columns.values()], names=list(columns))


def lists(values: np.ndarray) -> pa.FixedSizeListArray:
    """The rows of a 2-d numpy array as a column of fixed-size lists."""
    return pa.FixedSizeListArray.from_arrays(column(values.reshape(-1)), values.shape[1])


def column(values: Any) -> pa.Array:
    """A 1-d numpy array as an Arrow array (zero-copy for numbers); Arrow arrays pass through."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values
    values = np.ascontiguousarray(values)
    if values.ndim != 1:
        raise ValueError(f"an Arrow column needs a 1-d array; got shape {values.shape}")
    n = len(values)
    if values.dtype == np.bool_:
        return pa.Array.from_buffers(pa.bool_(), n, [None, pa.py_buffer(np.packbits(values, bitorder="little"))])
    if values.dtype.kind in "OU":
        data = [str(v).encode() for v in values]
        offsets = np.zeros(n + 1, np.int32)
        np.cumsum([len(b) for b in data], out=offsets[1:])
        return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(data))])
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), n, [None, pa.py_buffer(values)])

"""Arrow helpers of the edge-case selection: text compared on Arrow's buffers in place, ids read
at a few rows at a time, chunk-by-chunk takes, set lookups of a few ids."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

#: Above this many ids, look them up with Arrow (one hash of the set) rather than one by one.
_ARROW_LOOKUP_FROM = 20_000


def _arrow_strings(values: pd.Series) -> bool:
    """A pandas ``str``/``string`` column stored by Arrow."""
    return isinstance(values.dtype, pd.StringDtype) and values.dtype.storage == "pyarrow"


def _arrow_text_equal(arr: Any, texts: list[str], rows: np.ndarray | None) -> np.ndarray:
    """Whether each value (at ``rows``, or every value) of an Arrow string array equals one of
    ``texts``; a missing value equals nothing.

    Arrow's own ``equal``/``is_in`` compare every row's string: ~7 ms for 1M rows, plus a take
    (a copy of their text) to look at some rows only. This reads Arrow's buffers in place:
    lengths from the offsets, then the first byte of every row, then the other bytes of the
    rows still matching only: ~1 ms on the same column. Other Arrow types (dictionary,
    string_view) go to Arrow's ``is_in``. ``tests/test_edge_cases.py`` checks it against Arrow.
    """
    width = {pa.string(): np.int32, pa.large_string(): np.int64}.get(arr.type)
    if width is None:
        taken = arr if rows is None else _arrow_take(arr, rows)
        hit = pc.is_in(taken, value_set=pa.array(texts, type=arr.type))
        return np.asarray(hit.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
    wanted = [np.frombuffer(t.encode(), dtype=np.uint8) for t in texts]
    chunks = arr.chunks if isinstance(arr, pa.ChunkedArray) else [arr]
    bounds = np.cumsum([0, *(len(c) for c in chunks)])
    # (chunk, where in the output, rows of the chunk or None, first and end row of a block)
    parts: list[tuple[Any, Any, np.ndarray | None, int, int]] = []
    if rows is None:
        # Every row, in blocks whose temporaries stay in the CPU caches (8 MB of int64
        # lengths for 1M rows would not; measured ~2x slower).
        for i, chunk in enumerate(chunks):
            for lo in range(0, len(chunk), _TEXT_BLOCK):
                hi = min(lo + _TEXT_BLOCK, len(chunk))
                parts.append((chunk, slice(bounds[i] + lo, bounds[i] + hi), None, lo, hi))
    elif len(chunks) == 1:
        parts.append((chunks[0], slice(None), rows, 0, len(arr)))
    else:
        which = np.searchsorted(bounds, rows, side="right") - 1
        for i, chunk in enumerate(chunks):
            where = np.flatnonzero(which == i)
            parts.append((chunk, where, rows[where] - bounds[i], 0, len(chunk)))
    out = np.zeros(len(arr) if rows is None else len(rows), dtype=bool)
    for chunk, where, local, lo, hi in parts:
        validity, offsets_buf, data_buf = chunk.buffers()
        offsets = np.frombuffer(
            offsets_buf,
            dtype=width,
            count=len(chunk) + 1,
            offset=chunk.offset * np.dtype(width).itemsize,
        )
        data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else None
        start = offsets[lo:hi] if local is None else offsets.take(local)
        length = (offsets[lo + 1 : hi + 1] if local is None else offsets.take(local + 1)) - start
        hit = np.zeros(len(start), dtype=bool)
        for value in wanted:
            same = length == len(value)
            if len(value) and (data is None or len(data) == 0):
                same[:] = False  # every string is empty
            elif len(value) and local is None and same.all():
                # Every row of the block is as long as the value (fixed-width codes): their
                # bytes are one run, compared in place (a gather of 1M first bytes: ~1.4 ms).
                assert data is not None  # no data buffer: the branch above
                first = int(start[0])
                run = data[first : first + len(start) * len(value)].reshape(-1, len(value))
                same = run[:, 0] == value[0]
                for j in range(1, len(value)):
                    same &= run[:, j] == value[j]
            elif len(value):
                assert data is not None  # no data buffer: the first branch
                # clip: a row whose length differs may start at the end of the buffer.
                same &= data.take(start, mode="clip") == value[0]
                if len(value) > 1:
                    pos = np.flatnonzero(same)
                    at = start[pos]
                    for j in range(1, len(value)):
                        keep = data.take(at + j, mode="clip") == value[j]
                        pos, at = pos[keep], at[keep]
                    same[:] = False
                    same[pos] = True
            hit |= same
        if chunk.null_count:
            # Only the bytes of the validity bitmap that cover rows lo..hi of the chunk.
            first, end = chunk.offset + lo, chunk.offset + hi
            bits = np.frombuffer(validity, dtype=np.uint8)[first // 8 : (end + 7) // 8]
            valid = np.unpackbits(bits, bitorder="little")[first % 8 :].view(bool)
            hit &= valid[: hi - lo] if local is None else valid[local - lo]
        out[where] = hit
    return out


#: Rows per block when every row of a text column is compared (see _arrow_text_equal).
_TEXT_BLOCK = 1 << 16


def _excluded_at(ids: _Column, rows: np.ndarray, exclude: set[str] | frozenset[str]) -> np.ndarray:
    """Whether the ids at ``rows`` are in ``exclude``."""
    return _in_set(ids.at(rows), exclude)


def _in_set(values: Any, exclude: set[str] | frozenset[str]) -> np.ndarray:
    """Whether each of ``values`` (from ``_Column.at``) is in ``exclude``: a few thousand ids are
    looked up one by one in the set; Arrow's hash pays off only for many (it hashes the whole
    set first)."""
    if isinstance(values, np.ndarray):
        if len(values) >= _ARROW_LOOKUP_FROM:
            found: np.ndarray = pd.Series(values).isin(exclude).to_numpy()
            return found
        items = values.tolist()
    else:
        if len(values) >= _ARROW_LOOKUP_FROM:
            hit = pc.is_in(values, value_set=pa.array(list(exclude), type=values.type))
            return np.asarray(hit.fill_null(False), dtype=bool)
        items = values.to_pylist()
    return np.fromiter((v in exclude for v in items), dtype=bool, count=len(items))


class _Column:
    """A column read at a few rows at a time (ids, batch ids): Arrow text as small Arrow arrays
    (no Python strings made, no chunked column concatenated first), anything else as NumPy.
    Its Arrow view and chunk bounds are looked up once per selection, not once per read."""

    def __init__(self, values: pd.Series) -> None:
        self.values = values
        self.arrow: Any = None
        self.bounds: np.ndarray | None = None
        if _arrow_strings(values):
            self.arrow = pa.array(values)
            if isinstance(self.arrow, pa.ChunkedArray) and self.arrow.num_chunks > 1:
                self.bounds = np.cumsum([0, *(len(c) for c in self.arrow.chunks)])

    def at(self, rows: np.ndarray) -> Any:
        """The values at ``rows`` (Arrow or NumPy)."""
        if self.arrow is None:
            return self.values.iloc[rows].to_numpy()
        return _arrow_take(self.arrow, rows, self.bounds)

    def output(self, values: Any) -> Any:
        """Values from ``at`` as an output column with the column's dtype."""
        return values if isinstance(values, np.ndarray) else pd.array(values, self.values.dtype)

    def output_at(self, rows: np.ndarray) -> Any:
        """The values at ``rows`` as an output column."""
        return self.output(self.at(rows))


def _at(values: Any, positions: np.ndarray) -> Any:
    """``values[positions]`` for a NumPy or an Arrow array (from ``_Column.at``)."""
    return values[positions] if isinstance(values, np.ndarray) else values.take(positions)


def _concat(parts: list[Any]) -> Any:
    """One array of ``_Column.at`` arrays."""
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    return pa.concat_arrays(parts)


def _arrow_take(arr: Any, rows: np.ndarray, bounds: np.ndarray | None = None) -> Any:
    """``arr.take(rows)`` for an Arrow array or chunked array, chunk by chunk (``bounds``: the
    first row of each chunk and the length, when known already).

    Arrow's own take on a chunked array first concatenates the chunks, copying the whole
    column: ~5 ms for 1M ids (a Parquet read gives 8 chunks) to take a thousand of them.
    """
    if not isinstance(arr, pa.ChunkedArray):
        return arr.take(rows)
    if arr.num_chunks == 1:
        return arr.chunk(0).take(rows)
    if bounds is None:
        bounds = np.cumsum([0, *(len(c) for c in arr.chunks)])
    which = np.searchsorted(bounds, rows, side="right") - 1
    order = np.argsort(which, kind="stable")  # grouped by chunk, in the rows' order within
    grouped, chunk_of = rows[order], which[order]
    cuts = np.searchsorted(chunk_of, np.arange(arr.num_chunks + 1))
    pieces = [
        arr.chunk(i).take(grouped[lo:hi] - bounds[i])
        for i, (lo, hi) in enumerate(pairwise(cuts))
        if hi > lo
    ]
    taken = pa.concat_arrays(pieces) if pieces else arr.chunk(0).slice(0, 0)
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    return taken.take(back)  # the rows' own order again (a take of the small result)

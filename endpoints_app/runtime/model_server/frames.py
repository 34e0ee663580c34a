"""The model's input DataFrame built straight from its blocks, instead of by ``pd.DataFrame``.

For a one-row request to a six-column custom pyfunc, ``pd.DataFrame({name: column, ...})`` is
~300 µs of a ~1 ms request: pandas checks, infers and converts every column, groups the columns
by dtype and copies each group into one 2-D block.  For a signature of named scalar columns the
outcome is known at load: which columns share a block, in which order, with which dtype.  A
FrameBuilder works that plan out from the frame ``pd.DataFrame`` builds for sample rows, then
builds each request's frame from exactly those blocks (``pandas.api.internals
.create_dataframe_from_blocks``), ~3x faster.

The plan is checked at load, like compiled.self_check: for sample rows (one and several), the
built frame must equal ``pd.DataFrame``'s in values, dtypes, index, column index and block
layout (block kinds, column placements, dtypes, memory order).  When it does not, or the pandas
in use has no such function, ``FrameBuilder.for_columns`` answers None and callers keep
``pd.DataFrame``.  Only frames with the default RangeIndex are built here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

# pandas >= 3.0 (pandas-stubs does not know the module yet); without it pd.DataFrame builds
# every frame.
create_dataframe_from_blocks: Callable[..., pd.DataFrame] | None
try:
    create_dataframe_from_blocks = importlib.import_module("pandas.api.internals").create_dataframe_from_blocks
except (ImportError, AttributeError):  # pragma: no cover
    create_dataframe_from_blocks = None

# Sample values per column dtype (None: strings) for the load-time plan and check.
_SAMPLES: dict[str, list[Any]] = {
    "f": [0.5, -1.25, 3.0],
    "i": [1, -7, 42],
    "u": [1, 7, 42],
    "b": [True, False, True],
}
_STRING_SAMPLES = ["paris", "", "caf\u00e9"]


class FrameBuilder:
    """Build ``pd.DataFrame(dict(zip(names, columns)))`` from its blocks; see the module docstring.

    ``columns`` are one sequence per signature column, in signature order: Python values (or a
    1-D array) of the column's dtype for numeric columns, a list of str for string columns.
    """

    def __init__(
        self,
        names: list[str],
        plan: list[tuple[np.ndarray, np.dtype | None, Any]],
        create: Callable[..., pd.DataFrame],
    ) -> None:
        self._create = create
        self._columns = pd.Index(names)
        # Per block, in pandas' own order: column positions, numpy dtype (None: an extension
        # array) and, for an extension array, its pandas dtype.
        self._plan = plan

    @classmethod
    def for_columns(cls, names: list[str], dtypes: Sequence[np.dtype | None]) -> tuple[FrameBuilder | None, str]:
        """The builder for these signature columns, or None and why ``pd.DataFrame`` stays."""
        if create_dataframe_from_blocks is None:
            return None, "pandas has no create_dataframe_from_blocks"
        try:
            builder = cls(names, _plan(names, dtypes), create_dataframe_from_blocks)
            for rows in (1, 3):
                columns = _sample_columns(dtypes, rows)
                expected = pd.DataFrame(dict(zip(names, columns, strict=True)))
                _check_same(expected, builder.build(columns, rows))
        except Exception as exc:  # noqa: BLE001 - any failure means: keep pd.DataFrame
            return None, f"pd.DataFrame builds the tables ({type(exc).__name__}: {exc})"
        return builder, "tables built from their blocks"

    def build(self, columns: Sequence[Sequence[Any]], rows: int) -> pd.DataFrame:
        """The frame ``pd.DataFrame`` would build from these columns (``rows`` long), RangeIndex.

        Raises what numpy raises for a value its dtype cannot hold (OverflowError, ValueError,
        TypeError), as ``np.array(column, dtype=...)`` does.
        """
        blocks: list[tuple[Any, np.ndarray]] = []
        for positions, dtype, extension in self._plan:
            if dtype is None:
                values: Any = pd.array(list(columns[positions[0]]), dtype=extension)
            else:
                values = np.array([columns[position] for position in positions], dtype=dtype)
            blocks.append((values, positions))
        # A fresh column Index per frame: a model that renames it in place changes only its own.
        return self._create(blocks, index=pd.RangeIndex(rows), columns=self._columns.copy())


def _sample_columns(dtypes: Sequence[np.dtype | None], rows: int) -> list[Any]:
    columns: list[Any] = []
    for dtype in dtypes:
        pool = _STRING_SAMPLES if dtype is None else _SAMPLES[dtype.kind]
        columns.append(pool[:rows] if dtype is None else np.array(pool[:rows], dtype=dtype))
    return columns


def _plan(names: list[str], dtypes: Sequence[np.dtype | None]) -> list[tuple[np.ndarray, np.dtype | None, Any]]:
    """pandas' own block layout for a frame of these columns, read from one it builds."""
    reference = pd.DataFrame(dict(zip(names, _sample_columns(dtypes, 2), strict=True)))
    plan: list[tuple[np.ndarray, np.dtype | None, Any]] = []
    for block in reference._mgr.blocks:
        positions = np.asarray(block.mgr_locs.as_array, dtype=np.intp)
        if isinstance(block.values, np.ndarray):
            if any(dtypes[position] != block.values.dtype for position in positions):
                raise ValueError("a block's dtype is not its columns'")
            plan.append((positions, block.values.dtype, None))
        else:
            if len(positions) != 1 or dtypes[positions[0]] is not None:
                raise ValueError(f"an unexpected {type(block.values).__name__} block")
            plan.append((positions, None, block.values.dtype))
    return plan


def layout(frame: pd.DataFrame) -> list[tuple[str, list[int], str, str, str]]:
    """A frame's block layout: per block, its kind, column positions, dtype, array type, and
    its memory order (numpy) or pyarrow type and chunk count (pyarrow-backed strings)."""
    shapes: list[tuple[str, list[int], str, str, str]] = []
    for block in frame._mgr.blocks:
        values = block.values
        if isinstance(values, np.ndarray):
            storage = "C" if values.flags.c_contiguous else "F" if values.flags.f_contiguous else "strided"
        else:
            arrow = getattr(values, "_pa_array", None)
            storage = "" if arrow is None else f"{arrow.type} x{arrow.num_chunks}"
        shapes.append(
            (type(block).__name__, block.mgr_locs.as_array.tolist(), str(block.dtype), type(values).__name__, storage)
        )
    return shapes


def _check_same(expected: pd.DataFrame, built: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(built, expected, check_exact=True, check_index_type=True, check_column_type=True)
    if type(built.index) is not type(expected.index) or type(built) is not type(expected):
        raise AssertionError("a different index or frame type")
    if layout(built) != layout(expected):
        raise AssertionError(f"block layout {layout(built)} is not pandas' {layout(expected)}")
    if built.flags.allows_duplicate_labels != expected.flags.allows_duplicate_labels or built.attrs != expected.attrs:
        raise AssertionError("different frame flags")

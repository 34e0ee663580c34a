"""frames.FrameBuilder: the model's input DataFrame built from its blocks must be the one
``pd.DataFrame`` builds (values, dtypes, index, block layout), or not be used at all."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from endpoints_app.runtime.model_server import frames
from endpoints_app.runtime.model_server.frames import FrameBuilder, layout

F8, F4, I8, I4, B = (np.dtype(kind) for kind in ("float64", "float32", "int64", "int32", "bool"))
SIGNATURES: dict[str, tuple[list[str], list[np.dtype | None]]] = {
    "offer": (["plan", "age", "tenure", "spend", "calls", "discount"], [None, I8, I8, F8, I8, F8]),
    "numbers only": (["a", "b", "c", "d"], [F8, F8, F8, F8]),
    "one string": (["text"], [None]),
    "two strings": (["first", "n", "second"], [None, I4, None]),
    "narrow and bool": (["f", "i", "flag", "d"], [F4, I4, B, F8]),
}
VALUES: dict[str, list[Any]] = {
    "f": [0.0, 1.5, -2.25, 1e300, 40, 2**62, 2**70, float("nan"), float("inf")],
    "i": [0, 1, -7, 42, 2**30],
    "b": [True, False],
}
STRINGS = ["paris", "", "caf\u00e9", "\u4e2d\u6587", "in\x00side"]


def _columns(dtypes: list[np.dtype | None], rows: int, rng: np.random.Generator) -> list[Any]:
    columns: list[Any] = []
    for dtype in dtypes:
        pool: list[Any] = STRINGS if dtype is None else VALUES[dtype.kind]
        if dtype is not None and dtype.kind == "f" and dtype.itemsize == 4:
            pool = [0.5, -1.25, 3.4e38, 1e-45]
        columns.append(tuple(pool[int(rng.integers(len(pool)))] for _ in range(rows)))
    return columns


def _reference(names: list[str], dtypes: list[np.dtype | None], columns: list[Any]) -> pd.DataFrame:
    """How the readers built tables before frames.py: pd.DataFrame of converted columns."""
    converted = {
        name: list(values) if dtype is None else np.array(values, dtype=dtype)
        for name, values, dtype in zip(names, columns, dtypes, strict=True)
    }
    return pd.DataFrame(converted)


@pytest.mark.parametrize("signature", list(SIGNATURES))
def test_built_frames_are_pandas_own(signature: str) -> None:
    names, dtypes = SIGNATURES[signature]
    builder, note = FrameBuilder.for_columns(names, dtypes)
    assert builder is not None, note
    rng = np.random.default_rng(3)
    for rows in (1, 1, 2, 5, 40):
        columns = _columns(dtypes, rows, rng)
        expected = _reference(names, dtypes, columns)
        built = builder.build(columns, rows)
        pd.testing.assert_frame_equal(built, expected, check_exact=True, check_index_type=True, check_column_type=True)
        assert type(built.index) is pd.RangeIndex
        assert layout(built) == layout(expected)


def test_values_numpy_refuses_raise_as_numpy_does() -> None:
    builder, _ = FrameBuilder.for_columns(["n", "x"], [I8, F8])
    assert builder is not None
    with pytest.raises(OverflowError):
        builder.build([(2**64,), (1.0,)], 1)
    narrow, _ = FrameBuilder.for_columns(["n"], [I4])
    assert narrow is not None
    with pytest.raises(OverflowError):
        narrow.build([(2**31,)], 1)


def test_a_frame_the_model_changes_leaves_the_next_one_alone() -> None:
    builder, _ = FrameBuilder.for_columns(["a", "b"], [F8, None])
    assert builder is not None
    first = builder.build([(1.0,), ("x",)], 1)
    first.columns.name = "renamed"
    first.iloc[0, 0] = 9.0
    second = builder.build([(1.0,), ("x",)], 1)
    assert second.columns.name is None
    assert second.iloc[0, 0] == 1.0


def test_a_builder_whose_frames_differ_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """The load-time check: any difference from pd.DataFrame's frame keeps pd.DataFrame."""
    real = frames.create_dataframe_from_blocks

    def reversed_blocks(blocks: list[Any], index: pd.Index, columns: pd.Index) -> pd.DataFrame:
        return real(list(reversed(blocks)), index=index, columns=columns)

    monkeypatch.setattr(frames, "create_dataframe_from_blocks", reversed_blocks)
    builder, note = FrameBuilder.for_columns(["s", "a", "b"], [None, I8, F8])
    assert builder is None
    assert "pd.DataFrame builds the tables" in note
    monkeypatch.setattr(frames, "create_dataframe_from_blocks", None)
    assert FrameBuilder.for_columns(["a"], [F8])[0] is None

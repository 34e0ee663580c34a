"""Bulk writes for the pollers (issue 16 part 6): many rows in few statements, without a model
instance per row or a placeholder per value for the driver to parse.

On PostgreSQL inserts are a ``COPY ... FROM STDIN`` and updates and upserts read their rows from
one JSON parameter (``jsonb_array_elements``); elsewhere (SQLite) multi-row INSERTs and a VALUES list. Both run on the connection's
current transaction, so foreign keys are checked when it commits, as for ORM writes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from django.db import connection
from django.db.models import Field, ForeignObject
from django.db.models.expressions import RawSQL
from django.db.models.lookups import In


def _json(rows: Sequence[Sequence[Any]]) -> str:
    return json.dumps(rows, default=str, separators=(",", ":"))


def _json_rows(columns: Sequence[tuple[str, str]]) -> str:
    """PostgreSQL: a derived table ``v`` of the rows passed as one JSON array of arrays (one
    parameter: the driver quotes one string instead of a value at a time)."""
    selected = ", ".join(
        f"(r -> {i}) AS {name}" if sql_type == "jsonb" else f"(r ->> {i})::{sql_type} AS {name}"
        for i, (name, sql_type) in enumerate(columns)
    )
    return f"(SELECT {selected} FROM jsonb_array_elements(%s::jsonb) AS r) AS v"


def in_ids(field: str, ids: Iterable[Any], sql_type: str = "bigint") -> dict[str, Any]:
    """A filter keeping ``field`` among a batch's ids: on PostgreSQL ``field = ANY(ARRAY(...))``
    of one JSON parameter (no per-value preparation and quoting; the array is an index condition,
    where ``IN (SELECT ...)`` let the planner loop over the function for every row it scanned),
    elsewhere ``field__in`` the list."""
    values = list(ids)
    if connection.vendor != "postgresql":
        return {f"{field}__in": values}
    return {f"{field}__in_ids": _JsonIds(json.dumps(values), sql_type)}


class _JsonIds(RawSQL):
    """The ids of ``in_ids`` as one JSON parameter, a set of ``sql_type`` values."""

    def __init__(self, ids: str, sql_type: str) -> None:
        super().__init__(f"SELECT (jsonb_array_elements_text(%s::jsonb))::{sql_type}", [ids])


class _AnyOfJsonIn(In):
    """``field__in_ids``: ``field = ANY(ARRAY(SELECT ...))`` of a ``_JsonIds`` (the subquery runs
    once, as an InitPlan). A lookup of its own name: ``in`` and related fields' ``in`` are left as
    they are."""

    lookup_name = "in_ids"

    def as_sql(self, compiler: Any, connection: Any) -> Any:
        if isinstance(self.rhs, _JsonIds) and connection.vendor == "postgresql":
            lhs, lhs_params = self.process_lhs(compiler, connection)
            sql, params = self.rhs.as_sql(compiler, connection)
            return f"{lhs} = ANY(ARRAY({sql}))", (*lhs_params, *params)
        return super().as_sql(compiler, connection)


Field.register_lookup(_AnyOfJsonIn)
ForeignObject.register_lookup(_AnyOfJsonIn)  # foreign keys keep their own lookups (``in`` too)


def _adapt(value: Any) -> Any:
    if isinstance(value, datetime):
        return connection.ops.adapt_datetimefield_value(value)
    if isinstance(value, dict | list):  # a JSON column's value
        return json.dumps(value)
    return value


def _execute_values(
    cursor: Any,
    rows: Sequence[Sequence[Any]],
    width: int,
    statement: Callable[[str], str],
    params: Sequence[Any] = (),
) -> None:
    """SQLite: ``statement(values)`` over ``rows`` as multi-row ``VALUES`` lists, in parts that stay
    under SQLite's limit on parameters; ``params`` follow each part's values."""
    one = "(" + ", ".join(["%s"] * width) + ")"
    step = max(1, 30_000 // width)
    for i in range(0, len(rows), step):
        part = rows[i : i + step]
        cursor.execute(
            statement(", ".join([one] * len(part))),
            [*(_adapt(v) for row in part for v in row), *(_adapt(p) for p in params)],
        )


def insert_rows(table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Insert ``rows`` (values in ``columns``' order; JSON columns as JSON text) into ``table``."""
    if not rows:
        return
    quote = connection.ops.quote_name
    names = ", ".join(quote(c) for c in columns)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            with cursor.cursor.copy(f"COPY {quote(table)} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            return
        _execute_values(
            cursor, rows, len(columns), lambda values: f"INSERT INTO {quote(table)} ({names}) VALUES {values}"
        )


def update_rows(
    table: str,
    columns: Sequence[tuple[str, str]],
    rows: Sequence[Sequence[Any]],
    assignments: str,
    params: Sequence[Any] = (),
) -> None:
    """``UPDATE table SET <assignments> FROM v WHERE table.id = v.id`` where ``v`` holds ``rows``:
    ``columns`` names and PostgreSQL types its values (the first is ``id``). ``assignments`` may
    use ``v.<column>``, ``T.<column>`` for the row's current values and ``%s`` (``params``)."""
    if not rows:
        return
    quote = connection.ops.quote_name
    target = quote(table)
    sets = assignments.replace("T.", f"{target}.")
    names = ", ".join(name for name, _ in columns)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"UPDATE {target} SET {sets} FROM {_json_rows(columns)} WHERE {target}.id = v.id",
                [*params, _json(rows)],
            )
            return
        _execute_values(
            cursor,
            rows,
            len(columns),
            lambda values: (
                f"WITH v ({names}) AS (VALUES {values}) UPDATE {target} SET {sets} FROM v WHERE {target}.id = v.id"
            ),
            params,
        )


def upsert_rows(
    table: str,
    columns: Sequence[tuple[str, str]],
    rows: Sequence[Sequence[Any]],
    *,
    conflict: Sequence[str],
    update: Sequence[str],
) -> None:
    """Insert ``rows``, or update ``update`` columns of the row with the same ``conflict`` key
    (``INSERT ... ON CONFLICT DO UPDATE``); no ``update`` columns: keep that row as it is
    (``DO NOTHING``). ``columns``: names and PostgreSQL types (``jsonb`` values as JSON text)."""
    if not rows:
        return
    quote = connection.ops.quote_name
    names = ", ".join(quote(name) for name, _ in columns)
    action = (
        "DO UPDATE SET " + ", ".join(f"{quote(c)} = EXCLUDED.{quote(c)}" for c in update) if update else "DO NOTHING"
    )
    tail = f"ON CONFLICT ({', '.join(quote(c) for c in conflict)}) {action}"
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            selected = ", ".join(f"v.{name}" for name, _ in columns)
            cursor.execute(
                f"INSERT INTO {quote(table)} ({names}) SELECT {selected} FROM {_json_rows(columns)} {tail}",
                [_json(rows)],
            )
            return
        _execute_values(
            cursor, rows, len(columns), lambda values: f"INSERT INTO {quote(table)} ({names}) VALUES {values} {tail}"
        )

"""Bulk writes for the pollers (issue 16 part 6): many rows in few statements, without a model
instance per row or a placeholder per value for the driver to parse.

On PostgreSQL inserts are a ``COPY ... FROM STDIN`` and updates join ``unnest`` of one array per
column; elsewhere (SQLite) multi-row INSERTs and a VALUES list. Both run on the connection's
current transaction, so foreign keys are checked when it commits, as for ORM writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.db import connection


def _adapt(value: Any) -> Any:
    return connection.ops.adapt_datetimefield_value(value) if isinstance(value, datetime) else value


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
        one = "(" + ", ".join(["%s"] * len(columns)) + ")"
        step = max(1, 30_000 // len(columns))
        for i in range(0, len(rows), step):
            part = rows[i : i + step]
            cursor.execute(
                f"INSERT INTO {quote(table)} ({names}) VALUES {', '.join([one] * len(part))}",
                [_adapt(v) for row in part for v in row],
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
            arrays = ", ".join(f"%s::{sql_type}[]" for _, sql_type in columns)
            cursor.execute(
                f"UPDATE {target} SET {sets} FROM unnest({arrays}) AS v ({names}) WHERE {target}.id = v.id",
                [*params, *([row[i] for row in rows] for i in range(len(columns)))],
            )
            return
        one = "(" + ", ".join(["%s"] * len(columns)) + ")"
        step = max(1, 30_000 // len(columns))
        for i in range(0, len(rows), step):
            part = rows[i : i + step]
            cursor.execute(
                f"WITH v ({names}) AS (VALUES {', '.join([one] * len(part))}) "
                f"UPDATE {target} SET {sets} FROM v WHERE {target}.id = v.id",
                [*[_adapt(v) for row in part for v in row], *(_adapt(p) for p in params)],
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
    (``INSERT ... ON CONFLICT DO UPDATE``). ``columns``: names and PostgreSQL types (``jsonb``
    values as JSON text)."""
    if not rows:
        return
    quote = connection.ops.quote_name
    names = ", ".join(quote(name) for name, _ in columns)
    tail = f"ON CONFLICT ({', '.join(quote(c) for c in conflict)}) DO UPDATE SET " + ", ".join(
        f"{quote(c)} = EXCLUDED.{quote(c)}" for c in update
    )
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            arrays = ", ".join(f"%s::{'text' if t == 'jsonb' else t}[]" for _, t in columns)
            selected = ", ".join(f"c{i}::jsonb" if t == "jsonb" else f"c{i}" for i, (_, t) in enumerate(columns))
            aliases = ", ".join(f"c{i}" for i in range(len(columns)))
            cursor.execute(
                f"INSERT INTO {quote(table)} ({names}) SELECT {selected} FROM unnest({arrays}) AS v ({aliases}) {tail}",
                [[row[i] for row in rows] for i in range(len(columns))],
            )
            return
        one = "(" + ", ".join(["%s"] * len(columns)) + ")"
        step = max(1, 30_000 // len(columns))
        for i in range(0, len(rows), step):
            part = rows[i : i + step]
            cursor.execute(
                f"INSERT INTO {quote(table)} ({names}) VALUES {', '.join([one] * len(part))} {tail}",
                [_adapt(v) for row in part for v in row],
            )

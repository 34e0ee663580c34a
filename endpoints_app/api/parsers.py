"""JSON request parsing for the management API, bounded in cost and in shape.

A body is hostile input: Python's JSON decoder recurses once per ``[`` or ``{``, so 100 000
``[`` would end in a RecursionError (a 500), and a body merely 900 levels deep parses but makes
every recursive walk after it (validation, the audit snapshot, the renderer) fail the same way.
PostgreSQL refuses a NUL character in text, so a string holding one fails at the first query
that stores or filters on it. Both are refused here, once, with a 400 in the API's error shape,
before any view sees the body.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO, Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from endpoints_app.errors import InvalidParameterValue, ResourceDoesNotExist

# No management request nests deeper than about ten levels (a change request's body holds a
# config, its served entities, an external model's provider block and its auth block).
MAX_JSON_DEPTH = 32


def check_json_value(value: Any, *, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Refuse a parsed JSON value nested deeper than ``max_depth`` or holding a NUL character.

    The walk uses an explicit stack, so it cannot itself run out of recursion.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise InvalidParameterValue("the request body holds a NUL character (\\u0000), which no field accepts")
            continue
        if not isinstance(item, (dict, list)):
            continue
        if depth > max_depth:
            raise ParseError(f"JSON nested deeper than {max_depth} levels")
        if isinstance(item, dict):
            for key, child in item.items():
                stack.append((key, depth))
                stack.append((child, depth + 1))
        else:
            stack.extend((child, depth + 1) for child in item)


class BoundedJSONParser(JSONParser):
    """DRF's JSON parser (strict: no NaN or Infinity), refusing deep nesting and NUL characters."""

    def parse(
        self, stream: IO[Any], media_type: str | None = None, parser_context: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
        check_json_value(data)
        return data


class AnyContentTypeJSONParser(BoundedJSONParser):
    """JSON whatever the Content-Type says: `curl -d @file.json` sends form-urlencoded."""

    media_type = "*/*"


MAX_BIGINT = 2**63 - 1


def check_path_and_query(query: Any, path_params: dict[str, Any]) -> None:
    """Refuse path and query values no database can take: a NUL character (PostgreSQL cannot
    compare one), or a path id beyond a bigint (no row has it; SQLite would overflow looking)."""
    for name, value in path_params.items():
        if isinstance(value, str) and "\x00" in value:
            raise InvalidParameterValue(f"the path parameter '{name}' holds a NUL character")
        if isinstance(value, int) and not 0 <= value <= MAX_BIGINT:
            raise ResourceDoesNotExist(f"{name} {value} does not exist")
    for name, values in query.lists():
        if "\x00" in name or any("\x00" in v for v in values):
            # In the filter forms' own words (Django's ProhibitNullCharactersValidator), so the API and
            # the page that shows the same list give the same message.
            shown = name.replace("\x00", "\\x00")[:40]
            raise InvalidParameterValue(f"{shown}: Null characters are not allowed.")

"""JSON parsing for query bodies and answers, bounded in nesting.

Python's JSON decoder recurses once per ``[`` or ``{``: 100 000 of them end in a RecursionError
(a 500 from the gateway), and a body merely 900 levels deep parses but fails every recursive step
after it (``json.dumps`` for the guardrails, a provider's translation). ``loads`` refuses both
with a ValueError, which the gateway already answers as a 400 for malformed JSON.

The depth check costs nothing for most bodies (fewer brackets than the limit cannot nest past
it) and otherwise walks the containers only: each list's or object's element types are gathered
at C speed (``set(map(type, …))``) and only containers are visited, so a 16 MiB array of numbers
costs one pass, not one Python step per number.
"""

from __future__ import annotations

import json
from typing import Any

# No query needs more: chat messages with content parts sit at depth 4, and a tool's JSON schema
# rarely passes ten. MLflow's tensor inputs nest one level per dimension.
MAX_DEPTH = 64
_CONTAINERS = (dict, list)


class TooDeep(ValueError):
    """The JSON nests deeper than ``MAX_DEPTH``."""


def loads(body: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads``, raising ValueError (TooDeep) for nesting past ``max_depth`` too."""
    try:
        value = json.loads(body)
    except RecursionError:
        raise TooDeep(f"The JSON nests deeper than {max_depth} levels") from None
    raw = body if isinstance(body, bytes) else body.encode()
    if raw.count(b"[") + raw.count(b"{") > max_depth:
        check_depth(value, max_depth)
    return value


def check_depth(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """Raise TooDeep if ``value`` nests containers deeper than ``max_depth`` (an explicit stack:
    the walk cannot run out of recursion itself)."""
    level: list[Any] = [value] if isinstance(value, _CONTAINERS) else []
    depth = 0
    while level:
        depth += 1
        if depth > max_depth:
            raise TooDeep(f"The JSON nests deeper than {max_depth} levels")
        below: list[Any] = []
        for container in level:
            children = container.values() if isinstance(container, dict) else container
            if not {dict, list}.isdisjoint(set(map(type, children))):
                below.extend(child for child in children if isinstance(child, _CONTAINERS))
        level = below

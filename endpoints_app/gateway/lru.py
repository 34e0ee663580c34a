"""A dict with a size bound, for the gateway's per-process caches.

Every cache the gateway keys by something a caller sends (a token, an endpoint name in a path or a
``model`` field, a user and endpoint pair) must not grow with what callers send: a flood of unknown
names or made-up tokens would otherwise hold memory for as long as the process lives. Past
``maxsize`` the least recently used entry goes, so the names and tokens really in use stay cached
while a flood only churns the cold end. Expiry stays with the callers (each entry carries its own
deadline, as before); this class only bounds the count.

One event loop uses each cache, so no lock: ``OrderedDict``'s moves and pops are O(1).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A mapping of at most ``maxsize`` entries that drops the least recently used first."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self._data: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K, default: V | None = None) -> V | None:
        """The value (now the most recently used), or ``default``."""
        try:
            self._data.move_to_end(key)
        except KeyError:
            return default
        return self._data[key]

    def __setitem__(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def pop(self, key: K, default: V | None = None) -> V | None:
        return self._data.pop(key, default)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

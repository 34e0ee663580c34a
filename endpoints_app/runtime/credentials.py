"""Per-replica credentials: a model server answers only callers that hold its replica's secret.

The runtime agent generates one for each replica it starts, hands it to the model server in the
environment (or a warm standby's assignment), and records it on the Replica row; the gateway, the
agent's own health checks and the metrics poller send it as ``Authorization: Bearer <credential>``.
A model in one replica therefore cannot call another endpoint's replica past the gateway's
CAN_QUERY check, even where its sandbox would let it connect.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field


def new_credential() -> str:
    """32 random bytes, URL-safe (43 characters)."""
    return secrets.token_urlsafe(32)


def authorization(credential: str) -> str:
    """The Authorization header value that carries a replica credential."""
    return f"Bearer {credential}"


@dataclass(frozen=True)
class ReplicaTarget:
    """A ready replica as the gateway and pollers see it: its base URL and its credential.

    ``str()`` is the URL alone, so logs and error messages never show the credential.
    """

    url: str
    credential: str = field(repr=False)
    # The gateway keys its pools and in-flight counts by target several times per query: the
    # hash is computed once, not from both strings at each lookup.
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.url, self.credential)))

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        return self.url

    def headers(self) -> dict[str, str]:
        return {"Authorization": authorization(self.credential)}

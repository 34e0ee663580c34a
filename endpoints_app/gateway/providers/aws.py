"""The two pieces of AWS's wire protocol that Bedrock needs, written out (no boto3/botocore):
Signature Version 4 request signing, and the binary event stream that streamed answers come in.

SigV4 (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html):

1. the canonical request: method, URI path (each segment URI-encoded once more than on the wire,
   as every service but S3 wants), sorted query, the signed headers as ``name:value`` lines, their
   names, and the hex SHA-256 of the body;
2. the string to sign: ``AWS4-HMAC-SHA256``, the request time, the credential scope
   (``date/region/service/aws4_request``) and the hex SHA-256 of the canonical request;
3. the signing key: HMAC-SHA256 chained over date, region, service and ``aws4_request``, starting
   from ``"AWS4" + secret``; the signature is the hex HMAC of the string to sign with it;
4. the ``Authorization`` header names the access key id, the scope, the signed headers and the
   signature.

Event stream (``application/vnd.amazon.eventstream``): each message is a 12-byte prelude (total
length, headers length, CRC32 of those 8 bytes), the headers (name length, name, value type,
value), the payload and a CRC32 of all that came before.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import zlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
DEFAULT_PORTS = {"http": 80, "https": 443}


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    key = _hmac(f"AWS4{secret_key}".encode(), date)
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    return key


def host_of(url: str) -> str:
    """The ``Host`` header for ``url`` (the port only when it is not the scheme's default)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port and parts.port != DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


def canonical_request(method: str, url: str, headers: dict[str, str], signed: list[str], body: bytes) -> str:
    parts = urlsplit(url)
    path = quote(parts.path or "/", safe="/~")  # the path on the wire is encoded already: once more
    query = "&".join(
        sorted(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in parse_qsl(parts.query, True))
    )
    lines = "".join(f"{name}:{' '.join(headers[name].strip().split())}\n" for name in signed)
    return "\n".join([method, path, query, lines, ";".join(signed), hashlib.sha256(body).hexdigest()])


def sign(
    *,
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes,
    access_key_id: str,
    secret_access_key: str,
    region: str,
    service: str,
    now: datetime | None = None,
) -> dict[str, str]:
    """``headers`` (names lower-cased) plus ``host``, ``x-amz-date`` and ``authorization``; every
    header given is signed."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    amz_date = moment.strftime("%Y%m%dT%H%M%SZ")
    out = {name.lower(): value for name, value in headers.items()}
    out["host"] = host_of(url)
    out["x-amz-date"] = amz_date
    signed = sorted(out)
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    request_hash = hashlib.sha256(canonical_request(method, url, out, signed, body).encode()).hexdigest()
    string_to_sign = "\n".join([ALGORITHM, amz_date, scope, request_hash])
    key = signing_key(secret_access_key, amz_date[:8], region, service)
    signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    out["authorization"] = (
        f"{ALGORITHM} Credential={access_key_id}/{scope}, SignedHeaders={';'.join(signed)}, Signature={signature}"
    )
    return out


# --- the event stream ------------------------------------------------------------------------------


class EventStreamError(ValueError):
    """A message of the event stream is cut short or fails its checksum."""


# Header value types: their fixed sizes (None: a 2-byte length, then the bytes).
_FIXED_SIZES: dict[int, int | None] = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 6: None, 7: None, 8: 8, 9: 16}


def _headers(raw: bytes) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    at = 0
    while at < len(raw):
        size = raw[at]
        name = raw[at + 1 : at + 1 + size].decode()
        kind = raw[at + 1 + size]
        at += 2 + size
        if kind not in _FIXED_SIZES:
            raise EventStreamError(f"unknown header value type {kind}")
        length = _FIXED_SIZES[kind]
        if length is None:
            (length,) = struct.unpack(">H", raw[at : at + 2])
            at += 2
        value = raw[at : at + length]
        at += length
        headers[name] = value.decode() if kind == 7 else (kind == 0 if kind in (0, 1) else value)
    return headers


def decode_message(message: bytes) -> tuple[dict[str, Any], bytes]:
    """``(headers, payload)`` of one whole message."""
    total, headers_length, prelude_crc = struct.unpack(">III", message[:12])
    if total != len(message) or zlib.crc32(message[:8]) != prelude_crc:
        raise EventStreamError("bad prelude")
    (message_crc,) = struct.unpack(">I", message[-4:])
    if zlib.crc32(message[:-4]) != message_crc:
        raise EventStreamError("bad message checksum")
    headers = _headers(message[12 : 12 + headers_length])
    return headers, message[12 + headers_length : -4]


async def event_stream(chunks: AsyncIterator[bytes]) -> AsyncIterator[tuple[dict[str, Any], bytes]]:
    """The messages of an event stream, as its bytes arrive (in chunks of any size)."""
    buffer = bytearray()
    async for chunk in chunks:
        buffer += chunk
        while len(buffer) >= 12:
            (total,) = struct.unpack(">I", buffer[:4])
            if total < 16:
                raise EventStreamError("bad prelude")
            if len(buffer) < total:
                break
            message = bytes(buffer[:total])
            del buffer[:total]
            yield decode_message(message)
    if buffer:
        raise EventStreamError("the stream ended in the middle of a message")

"""AI-gateway guardrails: invalid keywords and PII, on the way in and on the way out.

``ai_gateway.guardrails.input`` checks what the caller sends (chat messages, completion prompts,
embedding inputs) before any provider sees it; ``…output`` checks what the model answers before
the caller sees it. Per direction:

- ``invalid_keywords``: a listed word or phrase (case-insensitive, whole words) blocks the request;
- ``pii.behavior``: ``BLOCK`` refuses text with personal data, ``MASK`` replaces each finding
  with its type in angle brackets (``<EMAIL_ADDRESS>``), ``NONE`` does nothing.

Detection is pattern based and runs in-process (nothing leaves the machine): e-mail addresses,
phone numbers, US social security numbers, payment card numbers (Luhn-checked, so order numbers
do not trip it), IPv4 addresses and IBANs. ``safety`` and ``valid_topics`` need a classifier
model, which Modelfleet does not ship: validation refuses them rather than pretend.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

PII_BEHAVIORS = ("NONE", "BLOCK", "MASK")


def _luhn(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _card(match: re.Match[str]) -> bool:
    digits = re.sub(r"\D", "", match.group(0))
    return 13 <= len(digits) <= 19 and _luhn(digits)


def _ipv4(match: re.Match[str]) -> bool:
    return all(int(part) <= 255 for part in match.group(0).split("."))


# (entity type, pattern, extra check). Order matters: cards before phone numbers, which would
# otherwise claim a card's digit groups.
PII_PATTERNS: list[tuple[str, re.Pattern[str], Callable[[re.Match[str]], bool] | None]] = [
    ("EMAIL_ADDRESS", re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b"), None),
    ("CREDIT_CARD", re.compile(r"\b(?:\d[ -]?){12,18}\d\b"), _card),
    ("US_SSN", re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b"), None),
    ("IBAN_CODE", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"), None),
    ("IP_ADDRESS", re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b"), _ipv4),
    (
        "PHONE_NUMBER",
        re.compile(
            r"(?<![\w+])(?<!\d[ .-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{3,4}\b(?![ .-]?\d)"
        ),
        None,
    ),
]


def find_pii(text: str) -> list[tuple[int, int, str]]:
    """(start, end, entity type) of each finding, non-overlapping, in order."""
    spans: list[tuple[int, int, str]] = []
    for entity, pattern, check in PII_PATTERNS:
        for match in pattern.finditer(text):
            if check is not None and not check(match):
                continue
            start, end = match.span()
            if any(start < e and s < end for s, e, _ in spans):
                continue
            spans.append((start, end, entity))
    return sorted(spans)


def mask_pii(text: str) -> str:
    out, last = [], 0
    for start, end, entity in find_pii(text):
        out.append(text[last:start])
        out.append(f"<{entity}>")
        last = end
    out.append(text[last:])
    return "".join(out)


@dataclass(frozen=True)
class Guardrail:
    """One direction's settings (``ai_gateway.guardrails.input`` or ``.output``)."""

    invalid_keywords: tuple[str, ...] = ()
    pii: str = "NONE"
    _keyword_pattern: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> Guardrail | None:
        if not config:
            return None
        keywords = tuple(k for k in config.get("invalid_keywords") or () if k.strip())
        pii = ((config.get("pii") or {}).get("behavior") or "NONE").upper()
        if not keywords and pii == "NONE":
            return None
        pattern = None
        if keywords:
            alternatives = "|".join(re.escape(k.strip()) for k in sorted(keywords, key=len, reverse=True))
            pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)
        return cls(invalid_keywords=keywords, pii=pii, _keyword_pattern=pattern)

    def check(self, text: str) -> tuple[str | None, str]:
        """(why it is blocked or None, the text to pass on — masked where the settings say so)."""
        if self._keyword_pattern is not None and (hit := self._keyword_pattern.search(text)):
            return f"it contains the blocked keyword '{hit.group(0)}'", text
        if self.pii == "BLOCK":
            found = sorted({entity for _, _, entity in find_pii(text)})
            if found:
                return f"it contains personal data ({', '.join(found)})", text
        elif self.pii == "MASK":
            return None, mask_pii(text)
        return None, text


class Blocked(Exception):
    """A guardrail refused the text; the message says which and why, never the text itself."""


def _texts(body: dict[str, Any]) -> Iterator[tuple[Callable[[str], None], str]]:
    """Every piece of caller-visible text in an OpenAI-shaped request or response body, each with
    a setter that replaces it in place."""

    def setter(container: Any, key: Any) -> Callable[[str], None]:
        def set_(value: str) -> None:
            container[key] = value

        return set_

    def walk_content(container: Any, key: Any) -> Iterator[tuple[Callable[[str], None], str]]:
        value = container[key]
        if isinstance(value, str):
            yield setter(container, key), value
        elif isinstance(value, list):  # content parts, or a list of prompts / inputs
            for index, part in enumerate(value):
                if isinstance(part, str):
                    yield setter(value, index), part
                elif isinstance(part, dict) and isinstance(part.get("text"), str):
                    yield setter(part, "text"), part["text"]

    for message in body.get("messages") or ():
        if isinstance(message, dict) and "content" in message:
            yield from walk_content(message, "content")
    for key in ("prompt", "input"):
        if key in body:
            yield from walk_content(body, key)
    for choice in body.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        for part in ("message", "delta"):
            if isinstance(choice.get(part), dict) and "content" in choice[part] and choice[part]["content"] is not None:
                yield from walk_content(choice[part], "content")
        if isinstance(choice.get("text"), str):
            yield setter(choice, "text"), choice["text"]


def apply(guardrail: Guardrail | None, body: dict[str, Any], *, direction: str) -> dict[str, Any]:
    """Check (and mask, in place) every text of ``body``; raise Blocked if any is refused."""
    if guardrail is None:
        return body
    for set_text, text in list(_texts(body)):
        reason, replacement = guardrail.check(text)
        if reason is not None:
            raise Blocked(f"The {direction} was blocked by the endpoint's guardrails: {reason}")
        if replacement != text:
            set_text(replacement)
    return body


def validate(config: Any, field_name: str = "ai_gateway.guardrails") -> dict[str, Any]:
    """The guardrails block as stored, or a ValueError naming the bad field."""
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ValueError(f"{field_name} must be an object")
    unknown = set(config) - {"input", "output"}
    if unknown:
        raise ValueError(f"{field_name} has unknown fields: {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {}
    for direction in ("input", "output"):
        params = config.get(direction)
        if params is None:
            continue
        where = f"{field_name}.{direction}"
        if not isinstance(params, dict):
            raise ValueError(f"{where} must be an object")
        unknown = set(params) - {"safety", "pii", "invalid_keywords", "valid_topics"}
        if unknown:
            raise ValueError(f"{where} has unknown fields: {', '.join(sorted(unknown))}")
        if params.get("safety"):
            raise ValueError(f"{where}.safety needs a safety classifier model, which Modelfleet does not ship")
        if params.get("valid_topics"):
            raise ValueError(f"{where}.valid_topics needs a topic classifier model, which Modelfleet does not ship")
        keywords = params.get("invalid_keywords") or []
        if not isinstance(keywords, list) or not all(isinstance(k, str) and k.strip() for k in keywords):
            raise ValueError(f"{where}.invalid_keywords must be a list of non-empty strings")
        pii = params.get("pii")
        behavior = "NONE"
        if pii is not None:
            if not isinstance(pii, dict) or str(pii.get("behavior", "NONE")).upper() not in PII_BEHAVIORS:
                raise ValueError(f"{where}.pii.behavior must be one of {', '.join(PII_BEHAVIORS)}")
            behavior = str(pii.get("behavior", "NONE")).upper()
        stored: dict[str, Any] = {}
        if keywords:
            stored["invalid_keywords"] = keywords
        if pii is not None:
            stored["pii"] = {"behavior": behavior}
        if params.get("safety") is False:
            stored["safety"] = False
        out[direction] = stored
    return out

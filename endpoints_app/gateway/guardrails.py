"""AI-gateway guardrails: invalid keywords and PII, on the way in and on the way out.

``ai_gateway.guardrails.input`` checks what the caller sends (chat messages, completion prompts,
embedding inputs) before any provider sees it; ``…output`` checks what the model answers before
the caller sees it. Per direction:

- ``invalid_keywords``: a listed word or phrase (case-insensitive, whole words) blocks the request;
- ``pii.behavior``: ``BLOCK`` refuses text with personal data, ``MASK`` replaces each finding
  with its type in angle brackets (``<EMAIL_ADDRESS>``), ``NONE`` does nothing.

Detection is pattern based and runs on this machine (nothing leaves it): e-mail addresses, phone
numbers, US social security numbers, payment card numbers (Luhn-checked, so order numbers do not
trip it), IPv4 addresses and IBANs. Every pattern runs in linear time over the whole text (no scan
cap that padding could slip personal data past), and a long text is checked in a worker process
(``apply_off_loop``) so the one event loop of the web process keeps serving meanwhile. ``safety``
and ``valid_topics`` need a classifier model, which Modelfleet does not ship: validation refuses
them rather than pretend.
"""

from __future__ import annotations

import asyncio
import heapq
import multiprocessing
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

PII_BEHAVIORS = ("NONE", "BLOCK", "MASK")
# Bounds on ``invalid_keywords``: the keyword trie (keyword_trie) is as deep as the longest keyword.
MAX_KEYWORDS = 1000
MAX_KEYWORD_LENGTH = 200


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


# Every pattern below costs linear time on any text (benchmarks/bench_hostile_input.py measures 1 MB
# of adversarial text per pattern). Python's ``re`` backtracks, so the rule is: where a match may
# start, the pattern's work is bounded by a constant (fixed-width pieces and bounded repetitions),
# or the scan is split so that no character is re-read from every start position. The one pattern
# that broke the rule, the e-mail address's unbounded local part (``a.a.a.…`` cost O(n²): each
# start re-read the run to its end looking for ``@``), is matched by ``_EmailPattern`` instead.

# An address whose local part starts a run of local-part characters: the look-behind lets a match
# start only where a run really starts, and the possessive ``*+`` never give characters back, so a
# run is read once however long it is; the leading ``.+-`` are skipped to the first word character,
# where the reference pattern's ``\b`` puts the start. The domain cannot contain an "@", so each is
# read from one "@" only: its labels are possessive too (a shorter label can never be followed by
# the "." that comes next), and only whole labels are given back to find the last one, linearly.
_EMAIL = re.compile(r"(?<![\w.+-])[.+-]*+(\w[\w.+-]*+)@[\w-]++(?:\.[\w-]++)*\.[A-Za-z]{2,}\b")
# The rare other start: right where the previous address ended, inside a run (``a@b.com.x@c.com``).
_LOCAL_TAIL = re.compile(r"[\w.+-]*+(?=@)")
_EMAIL_DOMAIN = re.compile(r"[\w-]++(?:\.[\w-]++)*\.[A-Za-z]{2,}\b")
_BOUNDARY = re.compile(r"\b")
# The pattern the e-mail finder reproduces, match for match (tests compare the two on ordinary text).
EMAIL_REGEX = r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b"


class _EmailPattern:
    """``re.compile(EMAIL_REGEX).finditer`` in linear time, as (start, end) spans.

    That regex starts at every position of a run like ``a.a.a.…`` and re-reads the run to its end
    looking for an "@": O(n²). Its match really starts at the first word boundary of the run that
    ends at an "@" (at or after where the previous match ended), and needs a domain after that
    "@"; a run whose domain does not match has no match from any start, so each run is tried once.
    """

    pattern = EMAIL_REGEX

    @staticmethod
    def finditer(text: str) -> Iterator[tuple[int, int]]:
        pos = 0
        while True:
            if 0 < pos < len(text) and text[pos] in ".+-" and (tail := _LOCAL_TAIL.match(text, pos)):
                boundary = _BOUNDARY.search(text, pos, tail.end())
                domain = _EMAIL_DOMAIN.match(text, tail.end() + 1)
                if boundary is not None and boundary.start() < tail.end() and domain is not None:
                    yield boundary.start(), domain.end()
                    pos = domain.end()
                    continue
            match = _EMAIL.search(text, pos)
            if match is None:
                return
            yield match.start(1), match.end()
            pos = match.end()


def _span(match: re.Match[str] | tuple[int, int]) -> tuple[int, int]:
    return match if isinstance(match, tuple) else match.span()


# (entity type, pattern, extra check). Order matters: cards before phone numbers, which would
# otherwise claim a card's digit groups. Each regex starts at a word boundary or behind look-behinds
# and repeats a bounded number of times, so a start costs at most a few dozen steps.
PII_PATTERNS: list[tuple[str, Any, Callable[[re.Match[str]], bool] | None]] = [
    ("EMAIL_ADDRESS", _EmailPattern(), None),
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
    """(start, end, entity type) of each finding, non-overlapping, in order.

    A finding that overlaps one of an earlier pattern is dropped. The overlap test walks the
    earlier findings with a cursor (both lists are in order), then the two sorted lists are merged:
    linear in the findings, where testing each against all would be quadratic in a text full of
    them (1 MB of ``1.1.1.1 `` holds 125,000 addresses).
    """
    spans: list[tuple[int, int, str]] = []
    for entity, pattern, check in PII_PATTERNS:
        found: list[tuple[int, int, str]] = []
        cursor = 0
        for match in pattern.finditer(text):
            if check is not None and not check(match):
                continue
            start, end = _span(match)
            while cursor < len(spans) and spans[cursor][1] <= start:
                cursor += 1  # earlier findings that end before this one starts cannot overlap it
            if cursor < len(spans) and spans[cursor][0] < end:
                continue
            found.append((start, end, entity))
        if found:
            spans = list(heapq.merge(spans, found))
    return spans


def mask_pii(text: str) -> str:
    out, last = [], 0
    for start, end, entity in find_pii(text):
        out.append(text[last:start])
        out.append(f"<{entity}>")
        last = end
    out.append(text[last:])
    return "".join(out)


def keyword_trie(keywords: list[str]) -> str:
    """One regex matching any of ``keywords`` (under IGNORECASE), longest first at each position.

    A plain alternation ``kw1|kw2|…`` tries every keyword at every position of the text: with a
    thousand keywords, 1 MB of text took five seconds. As a trie (``a(?:bc|d)``) a position tries
    only the branches whose next character matches, so the cost no longer grows with the list.
    Keys are lower-cased one character at a time (IGNORECASE matches a character and its lower
    case alike; a character whose lower case is longer stays as it is), so "Foo" and "foo" share a
    branch; each optional tail is greedy, so the longest keyword is tried first, as before.
    """
    trie: dict[str, dict] = {}
    for keyword in keywords:
        node = trie
        for char in keyword:
            lower = char.lower()
            node = node.setdefault(lower if len(lower) == 1 else char, {})
        node[""] = {}  # a keyword ends here

    def build(node: dict[str, dict]) -> str:
        branches = [re.escape(char) + build(child) for char, child in sorted(node.items()) if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body

    return f"(?:{build(trie)})"


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
            words = [k.strip() for k in keywords]
            if max(map(len, words)) <= MAX_KEYWORD_LENGTH:
                alternatives = keyword_trie(words)
            else:  # stored before the length limit: a trie this deep would nest past the regex parser's recursion
                alternatives = "(?:" + "|".join(re.escape(k) for k in sorted(words, key=len, reverse=True)) + ")"
            pattern = re.compile(rf"(?<!\w){alternatives}(?!\w)", re.IGNORECASE)
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
    _apply(guardrail, body, direction=direction)
    return body


def _apply(guardrail: Guardrail | None, body: dict[str, Any], *, direction: str) -> bool:
    """``apply``, saying whether any text was masked."""
    if guardrail is None:
        return False
    changed = False
    for set_text, text in list(_texts(body)):
        reason, replacement = guardrail.check(text)
        if reason is not None:
            raise Blocked(f"The {direction} was blocked by the endpoint's guardrails: {reason}")
        if replacement != text:
            set_text(replacement)
            changed = True
    return changed


def _apply_and_return(guardrail: Guardrail, body: dict[str, Any], direction: str) -> tuple[dict[str, Any], bool]:
    """``_apply`` in a worker process: the (masked) body travels back, since the worker's is a copy."""
    return body, _apply(guardrail, body, direction=direction)


# Texts at least this long are checked in a worker process. Linear patterns still cost about a
# millisecond per 10 KB per pattern, and ``re`` holds the GIL for the whole of one scan, so a thread
# would still stop the event loop for a scan's length; a process leaves it free. Shorter texts are
# checked in place: shipping them would cost more than checking them.
OFF_LOOP_CHARS = 64 * 1024
_pool: ProcessPoolExecutor | None = None


def _workers() -> ProcessPoolExecutor:
    """The guardrail workers, started on first use. Few (``GUARDRAIL_WORKERS``): what hostile input
    may spend is bounded by them, while queries queue (the gateway caps how many are in flight)."""
    global _pool
    if _pool is None:
        # spawn: a fork of a process that runs threads (the event loop's executors) may inherit held locks.
        _pool = ProcessPoolExecutor(
            max_workers=settings.GUARDRAIL_WORKERS, mp_context=multiprocessing.get_context("spawn")
        )
    return _pool


def shutdown_workers() -> None:
    """Stop the worker processes (the web process is shutting down)."""
    global _pool
    if _pool is not None:
        _pool.shutdown(wait=False, cancel_futures=True)
        _pool = None


def text_size(body: dict[str, Any]) -> int:
    """How many characters a guardrail would read in ``body``."""
    return sum(len(text) for _, text in _texts(body))


async def apply_off_loop(
    guardrail: Guardrail | None, body: dict[str, Any], *, direction: str
) -> tuple[dict[str, Any], bool]:
    """``apply`` without holding the event loop: (the checked, maybe masked body, whether it was
    masked). A long text is checked in a worker process, so the gateway, API and dashboard keep
    answering meanwhile; Blocked is raised here as in ``apply``."""
    if guardrail is None:
        return body, False
    if text_size(body) < OFF_LOOP_CHARS:
        return body, _apply(guardrail, body, direction=direction)
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(_workers(), _apply_and_return, guardrail, body, direction)
    except BrokenProcessPool:  # a worker died (killed for memory, say): start afresh next time
        shutdown_workers()
        return await loop.run_in_executor(_workers(), _apply_and_return, guardrail, body, direction)


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
        if len(keywords) > MAX_KEYWORDS or any(len(k.strip()) > MAX_KEYWORD_LENGTH for k in keywords):
            raise ValueError(
                f"{where}.invalid_keywords may hold at most {MAX_KEYWORDS} keywords of at most "
                f"{MAX_KEYWORD_LENGTH} characters each"
            )
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

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
cap that padding could slip personal data past), and so does keyword matching (an Aho–Corasick
automaton, ``KeywordMatcher``); a long text is checked in a worker process
(``apply_off_loop``) so the one event loop of the web process keeps serving meanwhile. ``safety``
and ``valid_topics`` need a classifier model, which Modelfleet does not ship: validation refuses
them rather than pretend.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import multiprocessing
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from re._casefix import _EXTRA_CASES  # re's own table of case equivalences beyond lower case
from typing import Any

import ahocorasick_rs
from django.conf import settings

PII_BEHAVIORS = ("NONE", "BLOCK", "MASK")
# Bounds on ``invalid_keywords``: the keyword automaton's size (KeywordMatcher) grows with both.
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


# Keyword matching. ``invalid_keywords`` means: the leftmost place in the text where a keyword matches
# case-insensitively (as ``re.IGNORECASE`` compares characters) with no word character (``\w``) right
# before it and none right after it; where several keywords match there, the longest. A backtracking
# regex (a trie of the keywords, as this was) re-reads up to a keyword's length from every start:
# with the 100 keywords "a-", "a-a-", … 1 MiB of "a-a-…" took 24 s. Here the text is read once by an
# Aho–Corasick automaton (ahocorasick-rs: Rust's aho-corasick, whose search is linear in the text
# whatever the keywords; pyahocorasick walks a chain of failure links at every character, 0.2 s/MiB
# on that text), in time linear in the text plus the keyword list:
#
# 1. Case: text and keywords are folded character by character (``_fold``), so that two characters
#    fold alike exactly when ``re.IGNORECASE`` matches them (tests check every code point against re).
# 2. Word boundaries: in the folded text every non-word character c is written as ``N c N``, and the
#    text is framed by marks (``_marked``; the mark is an upper-case letter, which folded text never
#    holds). A keyword k is searched for as ``N k N``, marked alike: it can begin only just after a
#    non-word character's closing mark (or the frame) and end only at the next one's opening mark (or
#    the frame), which is what ``(?<!\w)`` and ``(?!\w)`` ask. So the automaton reports only matches
#    the boundaries allow: there is no pile of refused matches to filter, which would again cost
#    O(text × keywords) on ``a-a-…``. Its "leftmost-longest" match is then exactly the regex's.
# 3. The text is read in chunks, 64 K characters first and then four times as many each time, which
#    overlap by the longest keyword: a keyword near the start costs little however long the text, and
#    a text full of keywords does not build a list of every one. Each chunk is searched as UTF-8 bytes
#    (``surrogatepass``: a JSON string may hold a lone surrogate).
_MARK = "N"
_NON_WORD = re.compile(r"(\W)")
_WORD = re.compile(r"\w")
# ``re.IGNORECASE`` compares simple lower cases and, beyond them, treats the groups of re's own table
# (``re._casefix``, generated from Unicode) as equal; each folds to its smallest member. U+0345
# (combining ypogegrammeni) stays itself: it is the one member of those groups that is not a word
# character, while "ι", which re equates with it, is; marked in the text but not in a keyword (or the
# reverse), the two could never meet, so it matches only itself here.
_FOLD_FIXES: tuple[tuple[str, str], ...] = tuple(
    (chr(variant), chr(min(group)))
    for group in {frozenset((char, *others)) - {0x345} for char, others in _EXTRA_CASES.items()}
    for variant in sorted(group)
    if variant != min(group)
)


def _fold(text: str) -> str:
    """``text`` with each character replaced by its representative under ``re.IGNORECASE``, length
    kept (offsets in it are offsets in ``text``). ``str.lower`` is re's simple lower case except for
    "İ" (whose full lower case is two characters; re lowers it to "i")."""
    if text.isascii():
        return text.lower()
    folded = text.replace("\u0130", "i").lower()
    if len(folded) != len(text):  # a character with a longer lower case than this Python knows of
        folded = "".join(low if len(low := char.lower()) == 1 else char for char in text)
    for variant, canonical in _FOLD_FIXES:
        if variant in folded:
            folded = folded.replace(variant, canonical)
    return folded


def _marked(folded: str, *, after_non_word: bool = True, final: bool = True) -> str:
    """``folded`` with each non-word character c as ``N c N`` (one split, one join, in C), framed by
    marks: before it if what precedes it is not a word character (or nothing), after it if nothing
    follows it. A chunk of a longer text is framed only where that is so."""
    body = _MARK.join(_NON_WORD.split(folded))
    return (_MARK if after_non_word else "") + body + (_MARK if final else "")


class KeywordMatcher:
    r"""Finds the first invalid keyword in a text, as ``(?<!\w)(?:kw1|kw2|…)(?!\w)`` under IGNORECASE
    with the longer keywords first would, in linear time (see above)."""

    FIRST_CHUNK = 64 * 1024  # characters of the text folded, marked and searched first

    def __init__(self, keywords: tuple[str, ...]) -> None:
        self.keywords = keywords
        self._longest = max(map(len, keywords))  # in characters, as in the text: folding keeps lengths
        patterns = list(dict.fromkeys(_marked(_fold(k)).encode("utf-8", "surrogatepass") for k in keywords))
        self._automaton = ahocorasick_rs.BytesAhoCorasick(patterns, matchkind=ahocorasick_rs.MatchKind.LeftmostLongest)

    def __reduce__(self) -> tuple[Callable[[tuple[str, ...]], KeywordMatcher], tuple[tuple[str, ...]]]:
        # To a worker process travel the keywords; it builds (and keeps) its own automaton.
        return keyword_matcher, (self.keywords,)

    def search(self, text: str) -> tuple[int, int] | None:
        """(start, end) in ``text`` of the first keyword found, or None."""
        begin, size = 0, self.FIRST_CHUNK
        while True:
            stop = min(len(text), begin + size)
            after_non_word = begin == 0 or _WORD.match(text, begin - 1) is None
            marked = _marked(_fold(text[begin:stop]), after_non_word=after_non_word, final=stop == len(text))
            data = marked.encode("utf-8", "surrogatepass")
            # Leftmost-longest: the first match is the one that starts first, the longest there. A
            # match in a chunk is one in the text (it is framed at the text's end only).
            found = self._automaton.find_matches_as_indexes(data)
            if found:
                _, start, end = found[0]
                if not marked.isascii():  # byte offsets to offsets in ``marked``
                    start = len(data[:start].decode("utf-8", "surrogatepass"))
                    end = len(data[:end].decode("utf-8", "surrogatepass"))
                # Offsets in ``marked`` less the marks before them are offsets in the chunk.
                start, end = begin + start - marked.count(_MARK, 0, start), begin + end - marked.count(_MARK, 0, end)
                # It is the text's first once any keyword starting there (or before) fits in the chunk.
                if start + self._longest <= stop or stop == len(text):
                    return start, end
            if stop == len(text):
                return None
            # A match that the chunk cut off starts within the longest keyword of its end.
            begin, size = max(begin, stop - self._longest), size * 4


@functools.lru_cache(maxsize=16)
def keyword_matcher(keywords: tuple[str, ...]) -> KeywordMatcher:
    """The matcher for ``keywords``, built once per process (a worker gets guardrails by pickle)."""
    return KeywordMatcher(keywords)


@dataclass(frozen=True)
class Guardrail:
    """One direction's settings (``ai_gateway.guardrails.input`` or ``.output``)."""

    invalid_keywords: tuple[str, ...] = ()
    pii: str = "NONE"
    _keywords: KeywordMatcher | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> Guardrail | None:
        if not config:
            return None
        keywords = tuple(k for k in config.get("invalid_keywords") or () if k.strip())
        pii = ((config.get("pii") or {}).get("behavior") or "NONE").upper()
        if not keywords and pii == "NONE":
            return None
        matcher = keyword_matcher(tuple(k.strip() for k in keywords)) if keywords else None
        return cls(invalid_keywords=keywords, pii=pii, _keywords=matcher)

    def check(self, text: str) -> tuple[str | None, str]:
        """(why it is blocked or None, the text to pass on — masked where the settings say so)."""
        if self._keywords is not None and (hit := self._keywords.search(text)):
            return f"it contains the blocked keyword '{text[hit[0] : hit[1]]}'", text
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

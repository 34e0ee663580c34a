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
cap that padding could slip personal data past), each only where its shape could occur, findings
handled in bulk (1 MB of hostile text well under 0.1 s, see "PII detection" below); so does keyword
matching (an Aho–Corasick automaton, ``KeywordMatcher``). A long text is checked in a worker process
(``apply_off_loop``) so the one event loop of the web process keeps serving meanwhile. ``safety``
and ``valid_topics`` need a classifier model, which Modelfleet does not ship: validation refuses
them rather than pretend.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from itertools import chain, repeat
from re._casefix import _EXTRA_CASES  # re's own table of case equivalences beyond lower case
from typing import Any

import ahocorasick_rs
import numpy as np
from django.conf import settings

PII_BEHAVIORS = ("NONE", "BLOCK", "MASK")
# Bounds on ``invalid_keywords``: the keyword automaton's size (KeywordMatcher) grows with both.
MAX_KEYWORDS = 1000
MAX_KEYWORD_LENGTH = 200


# PII detection. Six patterns, each as Python's ``re`` would find them one after another over the
# whole text (``finditer``), a finding dropped where it overlaps one of an earlier pattern (the order
# below: e-mail addresses, cards, SSNs, IBANs, IPv4 addresses, phone numbers; cards before phone
# numbers, which would otherwise claim a card's digit groups), a card kept only if its Luhn check
# passes (so order numbers do not trip it) and an address only if no part is over 255. That is the
# contract, match for match (tests compare with those patterns as first written, kept there).
#
# Each pattern costs linear time, but ``re`` pays 20-60 ns at every position where a match could start,
# and six full scans of a megabyte of hostile text (``1-1-1-…``, ``((((…``) took 0.1-0.4 s. So a
# pattern runs only where it could match, and findings are handled in bulk:
#
# 1. The text is read once into one byte per character (``_classes``): a digit, an ASCII letter,
#    another word character, the punctuation the patterns use, or anything else.
# 2. Each pattern needs, near every match, a fixed piece of that class string (its "seed": an SSN is
#    ``000-00-0000``, an IBAN starts ``AA00`` after a non-word character, …). Found with ``bytes``
#    searches (a fixed prefix lets ``re`` skip ahead in C), seeds mark 1 KiB chunks where a match may
#    start; a pattern without a seed anywhere costs a few searches of the class string.
# 3. Marked chunks are scanned with the pattern itself, written so that a match starts with a
#    character class (``re`` then skips other characters in C) and equivalent to the original
#    (tests compare them). Every pattern but the e-mail one is bounded: nothing it reads lies more
#    than ``REACH`` characters past where a match starts, and its look-behinds see the characters
#    before a scan's start, so a chunk is scanned as a part of the whole text. Where the chunk is
#    preceded by a character no match starts at nor looks through, a slice is ``split`` (matches
#    and their offsets as one list, no match object each); otherwise ``finditer`` reads in place.
# 4. Checks (Luhn, parts of an address) run on all candidates at once with numpy, and so do the
#    overlap rule and masking: a text full of findings (1 MB of ``1.1.1.1 ``: 131,072 addresses)
#    costs no Python-level step per finding.
#
# The e-mail pattern is unbounded (a local part and a domain can be as long as the text), see
# ``_scan_emails``.

_PUNCTUATION = " .-+@()"


def _ascii_class(char: str) -> str:
    if re.fullmatch(r"\d", char):
        return "0"
    if "A" <= char <= "Z":
        return "A"
    if "a" <= char <= "z":
        return "a"
    if re.fullmatch(r"\w", char):
        return "_"
    return char if char in _PUNCTUATION else "#"


# The class of a character: "0" a digit (``\d``: any script), "A" and "a" an ASCII letter, "_" any
# other word character (``\w``), itself for " .-+@()", "#" anything else.
_ASCII_CLASSES = "".join(_ascii_class(chr(code)) for code in range(128)).encode() + b"#" * 128
_ASCII_DIGITS = np.full(256, 255, np.uint8)  # a character's digit value, 255 if it is not a digit
_ASCII_DIGITS[ord("0") : ord("9") + 1] = np.arange(10)


@functools.cache
def _unicode_tables() -> tuple[np.ndarray, np.ndarray]:
    """(class, digit value) of every code point, as ``re`` and ``int`` see it: built the first time
    a process meets a text that is not ASCII (about 0.1 s), then one lookup per character."""
    everything = np.arange(0x110000, dtype=np.uint32).tobytes().decode("utf-32-le", "surrogatepass")
    classes = np.full(0x110000, ord("#"), np.uint8)
    values = np.full(0x110000, 255, np.uint8)
    for run in re.finditer(r"\w+", everything):
        classes[run.start() : run.end()] = ord("_")
    for run in re.finditer(r"\d+", everything):
        classes[run.start() : run.end()] = ord("0")
        values[run.start() : run.end()] = [int(char) for char in run.group()]
    classes[:128] = np.frombuffer(_ASCII_CLASSES[:128], np.uint8)
    return classes, values


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)


def _classes(text: str) -> bytes:
    """One class byte per character of ``text`` (see ``_ASCII_CLASSES``)."""
    if text.isascii():
        return text.encode("ascii").translate(_ASCII_CLASSES)
    return _unicode_tables()[0][_code_points(text)].tobytes()


def _digit_values(text: str) -> np.ndarray:
    """Each character's value as ``int`` reads a digit, 255 for a character that is not one."""
    if text.isascii():
        return _ASCII_DIGITS[np.frombuffer(text.encode("ascii"), np.uint8)]
    return _unicode_tables()[1][_code_points(text)]


def _view(**groups: str) -> bytes:
    """A translation table for the class string: each key stands for the classes in its value."""
    table = bytearray(range(256))
    for target, sources in groups.items():
        for source in sources:
            table[ord(source)] = ord(target)
    return bytes(table)


def _framed(classes: bytes, view: bytes) -> bytes:
    """``classes`` in ``view``, with the text's start and end as one "#" each: ``[i + 1]`` is
    character i, so a seed can say "after a non-word character or at the start"."""
    return (b"#" + classes + b"#").translate(view)


_DOUBLED = np.array([0, 2, 4, 6, 8, 1, 3, 5, 7, 9], np.int64)  # a Luhn digit doubled, digits summed


def _cards_valid(found: list[str]) -> np.ndarray:
    """The Luhn check of every candidate at once: its digits (separators skipped), every second one
    from the right doubled, sum to a multiple of 10; 13 to 19 digits."""
    values = _digit_values("".join(found))
    is_digit = values != 255
    digits = values[is_digit].astype(np.int64)
    bounds = np.concatenate(([0], np.cumsum(np.fromiter(map(len, found), np.int64, len(found)))))
    digit_bounds = bounds - np.concatenate(([0], np.cumsum(~is_digit)))[bounds]
    first, last = digit_bounds[:-1], digit_bounds[1:]
    odd = np.arange(len(digits)) % 2 == 1
    # Running sums with the digits at odd indexes doubled, and with those at even indexes doubled:
    # a card whose last digit has an even index doubles its digits at odd indexes, and the reverse.
    doubled_at_odd = np.concatenate(([0], np.cumsum(np.where(odd, _DOUBLED[digits], digits))))
    doubled_at_even = np.concatenate(([0], np.cumsum(np.where(odd, digits, _DOUBLED[digits]))))
    totals = np.where(
        (last - 1) % 2 == 0,
        doubled_at_odd[last] - doubled_at_odd[first],
        doubled_at_even[last] - doubled_at_even[first],
    )
    counts = last - first
    return (totals % 10 == 0) & (counts >= 13) & (counts <= 19)


def _ipv4s_valid(found: list[str]) -> np.ndarray:
    """No part over 255, for every candidate at once. A part over 255 has three digits (the pattern
    allows at most three), so only three digits in a row are read; candidates are joined with a
    newline so that no three span two of them."""
    valid = np.ones(len(found), bool)
    joined = "\n".join(found)
    if b"000" not in _classes(joined):
        return valid
    values = _digit_values(joined).astype(np.int64)
    three = (values[:-2] != 255) & (values[1:-1] != 255) & (values[2:] != 255)
    over = np.flatnonzero(three & (values[:-2] * 100 + values[1:-1] * 10 + values[2:] > 255))
    lengths = np.fromiter(map(len, found), np.int64, len(found))
    starts = np.cumsum(lengths + 1) - lengths - 1  # where each candidate starts in ``joined``
    valid[np.searchsorted(starts, over, side="right") - 1] = False
    return valid


@dataclass(frozen=True)
class PiiPattern:
    """A bounded PII pattern and what lets it run only where it could match (see above).

    ``regex`` is equivalent to ``original`` (same matches from every position), rewritten to start
    with a character class. A match starts in a chunk only if ``seed`` is found in the class string
    read through ``seed_view`` (or ``view``) within ``REACH`` after that start (or 2 before it) and,
    where ``starts`` are given, one of them is in the chunk in ``view`` (what must precede a match's
    first character). ``safe``: classes (in ``view``) of characters a match can neither start at nor
    look behind through, where a slice may begin.
    """

    entity: str
    original: str
    regex: re.Pattern[str]
    gate: Callable[[bytes], bool]  # a cheap test of the whole class string: could it match at all?
    view: bytes
    seed: re.Pattern[bytes]
    safe: bytes
    check: Callable[[list[str]], np.ndarray] | None = None
    seed_view: bytes | None = None
    starts: tuple[bytes, ...] = ()

    @functools.cached_property
    def splitter(self) -> re.Pattern[str]:
        return re.compile(f"({self.regex.pattern})")


BOUNDED_PATTERNS = (
    PiiPattern(
        "CREDIT_CARD",
        r"\b(?:\d[ -]?){12,18}\d\b",
        re.compile(r"\d(?<!\w\d)" + r"[ -]?\d" * 12 + r"(?:[ -]?\d){0,6}\b"),
        lambda classes: classes.count(b"0") >= 13,
        _view(s=" -", n=".+@()#", w="Aa_"),
        re.compile(b"0" * 13),  # 13 digits or separators in a row
        b"snw",
        _cards_valid,
        seed_view=_view(n=".+@()#Aa_", **{"0": " -"}),
        starts=(b"s0", b"n0"),  # a digit after a non-word character
    ),
    PiiPattern(
        "US_SSN",
        r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b",
        re.compile(r"\d(?<!\w\d)\d\d(?<!000)(?<!666)(?<!9\d\d)-(?!00)\d{2}-(?!0000)\d{4}\b"),
        lambda classes: b"0-00-0" in classes,
        _view(n="Aa_ .+@()#"),
        re.compile(rb"000-00-0000"),
        b"n-",
    ),
    PiiPattern(
        "IBAN_CODE",
        r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b",
        re.compile(r"[A-Z](?<!\w[A-Z])[A-Z]\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"),
        lambda classes: b"AA00" in classes,
        _view(n=" .-+@()#", w="a_"),
        re.compile(rb"nAA00"),
        b"nw0",
    ),
    PiiPattern(
        "IP_ADDRESS",
        r"\b(?:\d{1,3}\.){3}\d{1,3}\b",
        re.compile(r"\d(?<!\w\d)\d{0,2}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b"),
        lambda classes: b"0.0" in classes,
        _view(n="Aa_ -+@()#"),
        re.compile(rb"0\.0{1,3}\.0"),  # the second part, between dots
        b"n.",
        _ipv4s_valid,
    ),
    PiiPattern(
        "PHONE_NUMBER",
        r"(?<![\w+])(?<!\d[ .-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{3,4}\b(?![ .-]?\d)",
        re.compile(
            r"[+(\d](?<![\w+][+(\d])(?<!\d[ .-][+(\d])"
            r"(?:(?<=\+)\d{1,3}[ .-]?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])|(?<=\()\d{2,4}\)[ .-]?|(?<=\d)\d{1,3}[ .-])"
            r"\d{3,4}[ .-]\d{3,4}\b(?![ .-]?\d)"
        ),
        lambda classes: classes.count(b"0") >= 8,
        _view(s=" .-", p="+(", x="@)#", a="A_"),
        # The last two groups of digits, and after them what the look-ahead lets through.
        re.compile(rb"000s0000?(?:[xp]|s[xpsa])"),
        b"xa",
    ),
)
# How far past a match's start a bounded pattern reads (its longest match, 44 characters for an
# IBAN, and two characters of look-ahead), with room to spare; tests check it.
REACH = 64
CHUNK = 1024  # the text is marked for a pattern in chunks this long
_NONE = np.zeros(0, np.int64)


def _seeded_chunks(view: bytes, seed: re.Pattern[bytes], reach: int) -> list[int]:
    """The chunks where a match may start: within ``reach`` before a seed, or 2 after it (``view``
    is framed). After a seed the search goes on from the next chunk, so a text full of seeds costs
    one search per chunk."""
    chunks: list[int] = []
    pos = 0
    while (hit := seed.search(view, pos)) is not None:
        first, last = max(0, hit.start() - 1 - reach) // CHUNK, (hit.start() + 1) // CHUNK
        chunks.extend(range(max(first, chunks[-1] + 1 if chunks else 0), last + 1))
        pos = (last + 1) * CHUNK - 1
    return chunks


def _regions(chunks: list[int]) -> list[tuple[int, int]]:
    """Runs of consecutive chunks, as [start, end) in the text."""
    regions: list[tuple[int, int]] = []
    for chunk in chunks:
        if regions and regions[-1][1] == chunk * CHUNK:
            regions[-1] = (regions[-1][0], (chunk + 1) * CHUNK)
        else:
            regions.append((chunk * CHUNK, (chunk + 1) * CHUNK))
    return regions


def _scan_bounded(pattern: PiiPattern, text: str, classes: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of ``pattern.original``'s ``finditer`` matches that pass its check."""
    if not pattern.gate(classes):
        return _NONE, _NONE
    view = _framed(classes, pattern.view)
    seed_view = view if pattern.seed_view is None else _framed(classes, pattern.seed_view)
    chunks = _seeded_chunks(seed_view, pattern.seed, REACH)
    if pattern.starts:
        chunks = [
            chunk
            for chunk in chunks
            if any(view.find(start, chunk * CHUNK, (chunk + 1) * CHUNK + 2) >= 0 for start in pattern.starts)
        ]
    n = len(text)
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    found: list[str] = []
    floor = 0  # where the last match ended: no match straddles it
    for begin, end in _regions(chunks):
        # Matches start in [begin, end); what they read ends before ``stop``. Matches that start
        # later are read only to be dropped (the next region, if any, is at least a chunk away).
        stop = min(n, end + REACH)
        low = max(floor, begin - 256)
        cut = max(view.rfind(pattern.safe[i : i + 1], low, begin + 1) for i in range(len(pattern.safe))) - 1
        if cut >= floor or cut == -1:
            # text[cut] is safe (or cut is the text's start): the slice from there has the same
            # matches as the text, since none starts before ``begin`` (none was seeded there).
            cut = max(cut, 0)
            parts = pattern.splitter.split(text[cut:stop])
            offsets = np.cumsum(np.fromiter(map(len, parts), np.int64, len(parts))) + cut
            match_starts, match_ends, strings = offsets[0::2][:-1], offsets[1::2], parts[1::2]
        else:
            matches = list(pattern.regex.finditer(text, max(begin, floor), stop))
            spans = np.fromiter(chain.from_iterable(map(re.Match.span, matches)), np.int64, 2 * len(matches))
            match_starts, match_ends = spans[0::2], spans[1::2]
            strings = list(map(re.Match.group, matches))
        keep = int(np.searchsorted(match_starts, end))
        if keep:
            starts.append(match_starts[:keep])
            ends.append(match_ends[:keep])
            found += strings[:keep]
            floor = int(match_ends[keep - 1])
    if not starts:
        return _NONE, _NONE
    all_starts, all_ends = np.concatenate(starts), np.concatenate(ends)
    if pattern.check is not None:
        valid = pattern.check(found)
        all_starts, all_ends = all_starts[valid], all_ends[valid]
    return all_starts, all_ends


# E-mail addresses: ``\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b``. Backtracking, that regex
# started at every position of a run like ``a.a.a.…`` and re-read it to its end looking for "@":
# O(n²). Its match really starts at the first word boundary of the run of local-part characters
# that ends at an "@" (the run's start, past leading ".+-"), and needs a domain after the "@". The
# exception: right where a previous address ended inside a run (``a@b.com.x@c.com``), the next one
# starts at once (".x@c.com"). So ``_EMAIL_CHAINS`` matches, at a run's start only, an address and
# the addresses chained to it; each run is read once. The domain cannot hold an "@", so it is read
# from one "@" only: its labels are possessive (a shorter label can never be followed by the "."
# that comes next) and only whole labels are given back to find the last one. Chains of several
# addresses (rare) are split by ``_EMAIL_ONE``, which reads each of them from its start exactly as
# the chain did.
EMAIL_REGEX = r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b"
_DOMAIN = r"[\w-]++(?:\.[\w-]++)*\.[A-Za-z]{2,}\b"
_EMAIL_CHAINS = re.compile(rf"(?<![\w.+-])([.+-]*+)(\w[\w.+-]*+@{_DOMAIN}(?:[.+-][\w.+-]*+@{_DOMAIN})*)")
_EMAIL_ONE = re.compile(rf"(\w[\w.+-]*+@{_DOMAIN}|[.+-][\w.+-]*+@{_DOMAIN})")
# An address is made of [\w.+-@] only, and a character outside them and the word characters ("|" in
# this view) neither belongs to one nor changes what its neighbours match: the text is read in
# slices cut there. A slice is read only if it holds an "@" and a top-level domain's end (two ASCII
# letters, "L", then a non-word character).
_EMAIL_VIEW = _view(L="Aa", w="0_", **{"|": " ()#"})
_AT = re.compile(rb"@")
_TLD_ENDS = tuple(b"LL" + after for after in (b".", b"-", b"+", b"@", b"|"))


def _ends(parts: list[str], offset: int) -> np.ndarray:
    """Where each of ``parts`` (consecutive pieces of a text starting at ``offset``) ends."""
    return np.cumsum(np.fromiter(map(len, parts), np.int64, len(parts))) + offset


def _scan_emails(text: str, classes: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of ``EMAIL_REGEX``'s ``finditer`` matches, in linear time."""
    if b"@" not in classes:
        return _NONE, _NONE
    view = _framed(classes, _EMAIL_VIEW)  # the frame is "|"
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    done = 0  # text[done - 1] is a cut (or done is 0); the text before it is read
    for begin, end in _regions(_seeded_chunks(view, _AT, 0)):
        if end <= done:
            continue
        # Widen to cuts: view[first] is the one before the region (text[first - 1]), view[last + 1] after.
        first = view.rfind(b"|", done, max(begin, done) + 1)
        last = view.find(b"|", min(end, len(text)) + 1) - 1
        done = last + 1
        if not any(view.find(tld, first + 1, last + 2) >= 0 for tld in _TLD_ENDS):
            continue
        parts = _EMAIL_CHAINS.split(text[first:last])  # before, leading ".+-", chain, before, …
        if len(parts) == 1:
            continue
        offsets = _ends(parts, first)
        chains = parts[2::3]
        chain_starts, chain_ends = offsets[1::3], offsets[2::3]
        if "".join(chains).count("@") == len(chains):
            starts.append(chain_starts)
            ends.append(chain_ends)
            continue
        ats = np.fromiter(map(str.count, chains, repeat("@")), np.int64, len(chains))
        single = ats == 1
        starts.append(chain_starts[single])
        ends.append(chain_ends[single])
        several = np.flatnonzero(~single)
        long_chains = [chains[i] for i in several]
        # All the long chains at once, a newline between two (no address reads through it).
        pieces = _EMAIL_ONE.split("\n".join(long_chains))
        piece_ends = _ends(pieces, 0)
        found_starts, found_ends = piece_ends[0::2][:-1], piece_ends[1::2]
        lengths = np.fromiter(map(len, long_chains), np.int64, len(long_chains))
        joined_starts = np.cumsum(lengths + 1) - lengths - 1
        owner = np.searchsorted(joined_starts, found_starts, side="right") - 1
        shift = chain_starts[several][owner] - joined_starts[owner]
        starts.append(found_starts + shift)
        ends.append(found_ends + shift)
    if not starts:
        return _NONE, _NONE
    all_starts, all_ends = np.concatenate(starts), np.concatenate(ends)
    order = np.argsort(all_starts, kind="stable")
    return all_starts[order], all_ends[order]


# Entity types in the order their patterns claim text.
PII_ENTITIES = ("EMAIL_ADDRESS", *(pattern.entity for pattern in BOUNDED_PATTERNS))
PII_SCANS: tuple[Callable[[str, bytes], tuple[np.ndarray, np.ndarray]], ...] = (
    _scan_emails,
    *(functools.partial(_scan_bounded, pattern) for pattern in BOUNDED_PATTERNS),
)
_ENTITY_NAMES = np.array(PII_ENTITIES, dtype=object)
_ENTITY_LABELS = np.array([f"<{entity}>" for entity in PII_ENTITIES], dtype=object)


def _findings(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, ends, entity indexes) of the findings, in order. A finding is dropped where it
    overlaps one of an earlier pattern: the first earlier finding that ends after it starts must
    start at or after its end (both lists are in order and do not overlap themselves)."""
    classes = _classes(text)
    kept_starts, kept_ends, kept_kinds = _NONE, _NONE, _NONE
    for kind, scan in enumerate(PII_SCANS):
        starts, ends = scan(text, classes)
        if not len(starts):
            continue
        if len(kept_starts):
            after = np.searchsorted(kept_ends, starts, side="right")
            free = (after == len(kept_starts)) | (kept_starts[np.minimum(after, len(kept_starts) - 1)] >= ends)
            starts, ends = starts[free], ends[free]
        kept_starts = np.concatenate([kept_starts, starts])
        kept_ends = np.concatenate([kept_ends, ends])
        kept_kinds = np.concatenate([kept_kinds, np.full(len(starts), kind, np.int64)])
        order = np.argsort(kept_starts, kind="stable")
        kept_starts, kept_ends, kept_kinds = kept_starts[order], kept_ends[order], kept_kinds[order]
    return kept_starts, kept_ends, kept_kinds


def find_pii(text: str) -> list[tuple[int, int, str]]:
    """(start, end, entity type) of each finding, non-overlapping, in order."""
    starts, ends, kinds = _findings(text)
    return list(zip(starts.tolist(), ends.tolist(), _ENTITY_NAMES[kinds].tolist(), strict=True))


def mask_pii(text: str) -> str:
    """``text`` with each finding replaced by its type in angle brackets."""
    starts, ends, kinds = _findings(text)
    if not len(starts):
        return text
    cuts = [0, *chain.from_iterable(zip(starts.tolist(), ends.tolist(), strict=True)), len(text)]
    pieces: list[str] = [""] * (2 * len(starts) + 1)
    pieces[0::2] = map(text.__getitem__, map(slice, cuts[0::2], cuts[1::2]))
    pieces[1::2] = _ENTITY_LABELS[kinds].tolist()
    return "".join(pieces)


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

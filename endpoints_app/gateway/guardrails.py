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
cap that padding could slip personal data past), each only near text of its shape, findings handled
in bulk (see "PII detection" below); so does keyword matching (an Aho–Corasick automaton,
``KeywordMatcher``). A long text is checked in a worker process
(``apply_off_loop``) so the one event loop of the web process keeps serving meanwhile. ``safety``
and ``valid_topics`` need a classifier model, which Modelfleet does not ship: validation refuses
them rather than pretend.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import multiprocessing
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from itertools import chain
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
# pattern runs only near text that could hold a match, and findings are handled in bulk:
#
# 1. The text is read once into one byte per character (``_classes``): a digit, an ASCII letter,
#    another word character, the punctuation the patterns use, or anything else.
# 2. The e-mail, card, SSN and IPv4 patterns need no ``re`` at all: numpy finds their matches from
#    the class string, every candidate at once (``_scan_emails``, ``_scan_cards``, ``_scan_ssns``,
#    ``_scan_ipv4s``; why each is exact is said there, and tests compare them with the patterns).
# 3. Every match of the two others lies near a "seed" that whole-string operations on the class
#    string find (``bytes.split``, ``translate``, numpy): an IBAN starts ``AA00`` after a non-word
#    character, a phone number ends in two groups of digits. Seeds mark 128-character chunks where
#    a match may start (``_regions``); a pattern with no seed costs those few operations, and a
#    mixed text is read only where each pattern's shapes are. The regions are read with the
#    pattern itself, rewritten to start with a character class (``re`` then skips other characters
#    in C) and equivalent to the original (tests compare them). Both are bounded: nothing a match
#    reads lies more than ``REACH`` past its start, so a region is read as a slice of the text, from
#    a character no match starts at nor looks behind through; the slices, joined by NULs, are
#    ``split`` at once (matches and their offsets, no match object each). See ``_scan_bounded``.
# 4. Checks (Luhn, parts of an address) run on all candidates at once with numpy, and so do the
#    overlap rule and masking: a text full of findings (1 MB of ``1.1.1.1 ``: 131,072 addresses)
#    costs no Python-level step per finding.
#
# What is left is ``re`` reading phone and IBAN candidates (a megabyte dense with them costs about
# one pass of that pattern), numpy passes over the text and its candidates, and, for a text full of
# findings, the list of them (benchmarks/bench_hostile_input.py: tens of milliseconds per MB).

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


_DOUBLED = np.array([0, 2, 4, 6, 8, 1, 3, 5, 7, 9], np.uint8)  # a Luhn digit doubled, digits summed


@dataclass(frozen=True)
class PiiPattern:
    """A bounded PII pattern and what lets it run only where it could match (see above).

    ``regex`` is equivalent to ``original`` (same match from every position; tests compare them),
    rewritten to start with a character class. ``seeds(classes)`` lists positions such that every
    match starts within ``before`` characters before one or ``after`` after it. ``safe``: the
    classes of characters a match can neither start at nor look behind through, where a slice of
    the text may begin.
    """

    entity: str
    original: str
    regex: re.Pattern[str]
    gate: Callable[[bytes], bool]  # a cheap test of the whole class string: could it match at all?
    seeds: Callable[[bytes], np.ndarray]
    before: int
    after: int
    safe: str

    @functools.cached_property
    def splitter(self) -> re.Pattern[str]:
        return re.compile(f"({self.regex.pattern})")

    @functools.cached_property
    def safe_view(self) -> bytes:
        return _view(s=self.safe, **{".": "".join(sorted(set(_ASCII_CLASSES.decode()) - set(self.safe)))})


def _mask(classes: bytes, members: str) -> np.ndarray:
    """Where the class string holds one of ``members``, as booleans: a few comparisons of its bytes
    (numpy compares a megabyte in a few dozen microseconds), or one ``translate`` for many members."""
    if len(members) <= 4:
        codes = np.frombuffer(classes, np.uint8)
        found = codes == ord(members[0])
        for member in members[1:]:
            found |= codes == ord(member)
        return found
    table = bytearray(256)
    for member in members:
        table[ord(member)] = 1
    return np.frombuffer(classes.translate(bytes(table)), np.bool_)


def _occurrences(data: bytes, literal: bytes) -> np.ndarray:
    """Starts of the occurrences of ``literal`` in ``data`` that ``split`` finds (not those that
    overlap one it found), from one ``split``."""
    pieces = data.split(literal)
    lengths = np.fromiter(map(len, pieces[:-1]), np.int64, len(pieces) - 1) + len(literal)
    return np.cumsum(lengths) - len(literal)


def _hits(data: bytes, splitter: re.Pattern[bytes]) -> np.ndarray:
    """Starts of the matches of ``splitter`` (one group, the whole pattern) in ``data``."""
    parts = splitter.split(data)
    return np.cumsum(np.fromiter(map(len, parts), np.int64, len(parts)))[0::2][:-1]


_CARD_RUN = _view(n=".+@()#Aa_", **{"0": " -"})


_IBAN_START = _view(n=" .-+@()#", w="a_")
_PHONE_VIEW = _view(s=" .-", p="+(", x="@)#", a="A_")
# The last two groups of digits, and after them what the look-ahead lets through.
_PHONE_END = re.compile(rb"(000s0000?(?:[xp]|s[xpsa]))")

# Cards, SSNs (``_scan_cards``, ``_scan_ssns``) and IPv4 addresses (``_scan_ipv4s``) are read without ``re``.
BOUNDED_PATTERNS = (
    PiiPattern(
        "IBAN_CODE",
        r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b",
        re.compile(r"[A-Z](?<!\w[A-Z])[A-Z]\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"),
        lambda classes: b"AA00" in classes,
        # In the framed view the non-word character before the match is at the match's own index.
        lambda classes: _occurrences(_framed(classes, _IBAN_START), b"nAA00"),
        0,
        5,
        "0a_ .-+@()#",
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
        lambda classes: _hits(_framed(classes, _PHONE_VIEW), _PHONE_END),
        24,
        10,
        "Aa_@)#",
    ),
)
# How far past a match's start a bounded pattern reads (its longest match, 44 characters for an
# IBAN, and two characters of look-ahead), with room to spare; tests check it.
REACH = 64
# Match starts are marked in chunks this long. Longer than REACH, so that two regions (runs of
# marked chunks) lie more than REACH apart, and than any pattern's before + after, so that a seed
# marks two chunks at most.
CHUNK = 128
_NONE = np.zeros(0, np.int64)


def _regions(pattern: PiiPattern, classes: bytes) -> tuple[np.ndarray, np.ndarray]:
    """[begins, ends) of the runs of chunks where a match of ``pattern`` may start."""
    seeds = pattern.seeds(classes)
    if not len(seeds):
        return _NONE, _NONE
    marked = np.zeros(len(classes) // CHUNK + 2, np.int8)
    marked[np.maximum(seeds - pattern.before, 0) // CHUNK] = 1
    marked[(seeds + pattern.after) // CHUNK] = 1
    edges = np.flatnonzero(np.diff(marked, prepend=0, append=0))
    begins, ends = edges[0::2] * CHUNK, np.minimum(edges[1::2] * CHUNK, len(classes))
    inside = begins < len(classes)
    return begins[inside], ends[inside]


def _scan_bounded(pattern: PiiPattern, text: str, classes: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of ``pattern.original``'s ``finditer`` matches.

    Each region is read from a safe character at most 256 before it (no match starts between: none
    was seeded there; none straddles it: the previous region's matches end REACH after it at most):
    from there a slice has the same matches as the text. The slices, a NUL between two (which no
    pattern matches, and which ends a match as the text's end would), are split at once. A region
    with no safe character before it is read in place with ``finditer``, whose look-behinds see the
    text before it.
    """
    if not pattern.gate(classes):
        return _NONE, _NONE
    begins, ends = _regions(pattern, classes)
    if not len(begins):
        return _NONE, _NONE
    n = len(text)
    safe = classes.translate(pattern.safe_view)
    stops = np.minimum(ends + REACH, n)
    cuts = np.array(
        [
            safe.rfind(b"s", max(0, begin - 256, stop), begin + 1)
            for begin, stop in zip(begins.tolist(), [0, *stops[:-1].tolist()], strict=True)
        ],
        np.int64,
    )
    cuts[(cuts < 0) & (begins == 0)] = 0  # the text's start
    starts: list[np.ndarray] = []
    finishes: list[np.ndarray] = []
    for begin, end, stop in zip(
        begins[cuts < 0].tolist(), ends[cuts < 0].tolist(), stops[cuts < 0].tolist(), strict=True
    ):
        matches = [match for match in pattern.regex.finditer(text, begin, stop) if match.start() < end]
        spans = np.fromiter(chain.from_iterable(map(re.Match.span, matches)), np.int64, 2 * len(matches))
        starts.append(spans[0::2])
        finishes.append(spans[1::2])
    sliced = cuts >= 0
    if sliced.any():
        cuts, ends, stops = cuts[sliced], ends[sliced], stops[sliced]
        lengths = stops - cuts
        at = np.cumsum(lengths + 1) - lengths - 1  # where each slice starts in the joined text
        slices = map(text.__getitem__, map(slice, cuts.tolist(), stops.tolist()))
        parts = pattern.splitter.split("\0".join(slices))
        offsets = np.cumsum(np.fromiter(map(len, parts), np.int64, len(parts)))
        match_starts, match_ends = offsets[0::2][:-1], offsets[1::2]
        owner = np.searchsorted(at, match_starts, side="right") - 1
        shift = cuts[owner] - at[owner]
        keep = match_starts + shift < ends[owner]  # matches that start past the region are not its own
        starts.append((match_starts + shift)[keep])
        finishes.append((match_ends + shift)[keep])
    all_starts, all_ends = np.concatenate(starts), np.concatenate(finishes)
    order = np.argsort(all_starts, kind="stable")
    return all_starts[order], all_ends[order]


def _tokens(classes: bytes) -> tuple[np.ndarray, np.ndarray]:
    """[starts, ends) of the runs of word characters (``\\w+``)."""
    word = np.concatenate(([False], _mask(classes, "0Aa_"), [False]))
    edges = np.flatnonzero(word[1:] != word[:-1])
    return edges[0::2], edges[1::2]


def _scan_ipv4s(text: str, classes: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of ``\\b(?:\\d{1,3}\\.){3}\\d{1,3}\\b``'s ``finditer`` matches with no part over
    255, read from the runs of word characters ("tokens") instead of by ``re``.

    The pattern matches four whole tokens of one to three digits, one "." between each two (a part
    cannot end inside a token: "." or a word boundary must follow it). Such a match may start at any
    such token followed by three more; after a match the search goes on past its fourth token. In a
    dotted run of k such tokens the matches start at the first, fifth, ninth, … while four are left,
    and the next run starts past the last match's tokens: each run is read alone.
    """
    if b"0.0" not in classes:
        return _NONE, _NONE
    starts, ends = _tokens(classes)
    lengths = ends - starts
    # Tokens of one to three characters, each a digit.
    is_digit = _mask(classes, "0")
    last = len(classes) - 1
    short = (lengths <= 3) & is_digit[starts]
    short &= (lengths < 2) | is_digit[np.minimum(starts + 1, last)]
    short &= (lengths < 3) | is_digit[np.minimum(starts + 2, last)]
    codes = np.frombuffer(classes, np.uint8)
    dotted = (starts[1:] - ends[:-1] == 1) & (codes[ends[:-1]] == ord("."))  # token j, ".", token j + 1
    linked = short[:-1] & dotted & short[1:]
    found = np.flatnonzero(linked[:-2] & linked[1:-1] & linked[2:])  # tokens j … j + 3
    if not len(found):
        return _NONE, _NONE
    run_starts = np.concatenate(([True], np.diff(found) != 1))
    first = np.maximum.accumulate(np.where(run_starts, found, 0))
    found = found[(found - first) % 4 == 0]
    # A part over 255 has three digits.
    three = np.flatnonzero(lengths == 3)
    over = np.zeros(len(starts) + 1, np.uint8)
    if len(three):
        values = _digit_values(text).astype(np.int64)
        at = starts[three]
        over[three + 1] = values[at] * 100 + values[at + 1] * 10 + values[at + 2] > 255
    over = np.cumsum(over, dtype=np.int32)
    valid = over[found + 4] == over[found]
    return starts[found[valid]], ends[found[valid] + 3]


# E-mail addresses: ``\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b``. Backtracking, that regex
# started at every position of a run like ``a.a.a.…`` and re-read it to its end looking for "@":
# O(n²); read by ``re`` in any form, a megabyte of ``a@bc.de `` still cost 0.2 s. Here every "@"
# is read at once with numpy. Its address, if any:
#
# - ends after its domain's last top-level domain: the domain is [\w-] labels joined by single
#   dots from just past the "@" (which must start a label) to the first character that ends it
#   (not [\w.-], or a dot that no label follows); greedy, the pattern gives back whole labels to the
#   last ".xx" (two or more ASCII letters, then no word character) in it;
# - starts at the first word boundary from where ``finditer`` searches for it: past the previous
#   "@" (a local part holds none) and past the last character that is not [\w.+-] before it, and
#   past the previous address where that one found an address (``a@b.com.x@c.com``: ".x@c.com"
#   starts right where "a@b.com" ended, a word boundary). It must start before the "@".
#
# Whether the previous "@" found an address thus matters only where it did and its address ends
# too late for this one: there this "@" finds one exactly when the previous did not, elsewhere
# independently; each "@" knows which, and runs of those flips are resolved with running sums.
EMAIL_REGEX = r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b"
# ASCII letters, other word characters, the punctuation of an address, and anything else ("|").
_EMAIL_VIEW = _view(L="Aa", w="0_", **{"|": " ()#"})


def _scan_emails(text: str, classes: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of ``EMAIL_REGEX``'s ``finditer`` matches, in linear time (see above)."""
    if b"@" not in classes:
        return _NONE, _NONE
    # framed[i + 1] is text[i]; the frame is "|". Offsets below are in ``framed``.
    framed = _framed(classes, _EMAIL_VIEW)
    letter, dot = _mask(framed, "L"), _mask(framed, ".")
    # Top-level domains: a dot, then two or more ASCII letters and no word character right after.
    runs = np.flatnonzero(letter[1:] > letter[:-1]) + 1  # where runs of letters start (framed: all end)
    after_dot = dot[runs - 1]
    if not after_dot.any():
        return _NONE, _NONE
    run_ends = (np.flatnonzero(letter[:-1] > letter[1:]) + 1)[after_dot]
    runs = runs[after_dot]
    word = _mask(framed, "Lw")
    tld = (run_ends - runs >= 2) & ~word[run_ends]
    tld_dots, tld_ends = runs[tld] - 1, run_ends[tld]
    if not len(tld_dots):
        return _NONE, _NONE
    # The domain: labels of [\w-] joined by single dots, up to the first character that ends it.
    ats = np.flatnonzero(_mask(framed, "@"))
    ending = _mask(framed, "+@|").copy()
    ending[:-1] |= dot[:-1] & ~_mask(framed, "Lw-")[1:]
    endings = np.flatnonzero(ending)
    domain_ends = endings[np.searchsorted(endings, ats + 1)]
    # The last top-level domain before the domain's end, if it is after the "@" and a label.
    last = np.searchsorted(tld_dots, domain_ends) - 1
    ends = tld_ends[last]
    has_domain = (last >= 0) & (tld_dots[last] > ats) & ~dot[ats + 1]
    if not has_domain.any():
        return _NONE, _NONE
    # The local part starts at the first word boundary from where the search resumes, within the
    # "@"'s segment, and must hold a character: from just past the previous "@" if that found no
    # address, from the previous address's end if it did (a word boundary itself).
    boundaries = np.append(np.flatnonzero(word[1:] != word[:-1]) + 1, len(framed))
    cuts = np.flatnonzero(_mask(framed, "|"))
    segment_starts = cuts[np.searchsorted(cuts, ats) - 1] + 1
    previous_at = np.concatenate(([0], ats[:-1]))
    previous_end = np.concatenate(([0], ends[:-1]))
    if_missed = boundaries[np.searchsorted(boundaries, np.maximum(previous_at + 1, segment_starts))]
    if_found = boundaries[np.searchsorted(boundaries, np.maximum(previous_end, segment_starts))]
    found_if_missed = has_domain & (if_missed < ats)
    found_if_found = has_domain & (if_found < ats)
    # (Where the previous "@" has no domain it finds nothing.)
    found_if_found[0] = found_if_missed[0]
    found_if_found[1:] = np.where(has_domain[:-1], found_if_found[1:], found_if_missed[1:])
    # Whether an "@" finds an address given whether the previous one did: either the same either
    # way, or (a later start can only fail where an earlier one succeeds) only if it did not.
    fixed = found_if_missed == found_if_found
    last_fixed = np.maximum.accumulate(np.where(fixed, np.arange(len(ats)), 0))
    flips = np.cumsum((~fixed).view(np.uint8), dtype=np.int32)
    found = found_if_missed[last_fixed] ^ ((flips - flips[last_fixed]) % 2 == 1)
    previous_found = np.concatenate(([False], found[:-1]))
    starts = np.where(previous_found, if_found, if_missed)
    return starts[found] - 1, ends[found] - 1


# Cards and SSNs are read without ``re``: on a megabyte dense with digit groups (``4111 1111 …``,
# ``1-1-…``, ``123-45-6789 …``) ``re`` alone cost 50-170 ms, a Python object per match on top.
#
# ``\b(?:\d[ -]?){12,18}\d\b``: a separator is taken exactly where one follows a digit (else the next
# ``\d`` fails), so from a start the pattern reads along a "run" of digits, each two apart by nothing
# or by one " " or "-", and ends at the furthest digit among the 13th to 19th with a word boundary
# after it (greedy: 18 repetitions tried first). A start is a digit after a non-word character; a
# start with no such end fails, and ``finditer`` goes on at the next start. Numbering the text's
# digits, every start's end is found at once (``_card_ends``); then the matches ``finditer`` keeps
# are a chain: the first start with an end, then the first such start past that end, … (one step per
# match, each a list lookup).
# The class string in this view, framed by one "x" before and two after: digits, separators, other
# word characters, anything else.
_CARD_VIEW = _view(d="0", e="Aa_", s=" -", x=".+@()#")  # word characters sort before the others


def _card_ends(classes: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(where each digit is, and the first and last digit of each start's match: digit numbers, for
    the starts that have one)."""
    codes = np.frombuffer(b"x" + classes.translate(_CARD_VIEW) + b"xx", np.uint8)
    here, ahead, further = codes[1:-2], codes[2:-1], codes[3:]
    digit, separator = ord("d"), ord("s")
    is_digit = here == digit
    # Per character, bit 1: no word character before it; 2: none after it; 4: the next digit follows
    # at once or after one separator (the two are in one run).
    state = (codes[:-3] >= separator).view(np.uint8) | ((ahead >= separator).view(np.uint8) << 1)
    state |= ((ahead == digit) | ((ahead == separator) & (further == digit))).view(np.uint8) << 2
    where = np.flatnonzero(is_digit)
    state = state[where]
    # The last digit of each start's run: the first digit at or after it that is not linked on.
    is_end = (state & 4) == 0
    run_ends = np.flatnonzero(is_end)
    firsts = np.flatnonzero((state & 1) != 0)
    last = run_ends[np.cumsum(is_end.view(np.uint8), dtype=np.int32)[firsts] - is_end[firsts]]
    # The last digit with a boundary after it at or before the 19th from the start, or -1.
    has_boundary = (state & 2) != 0
    boundaries = np.concatenate(([-1], np.flatnonzero(has_boundary)))
    lasts = boundaries[np.cumsum(has_boundary.view(np.uint8), dtype=np.int32)[np.minimum(firsts + 18, last)]]
    found = lasts >= firsts + 12
    return where, firsts[found], lasts[found]


def _luhn_valid(values: np.ndarray, firsts: np.ndarray, lasts: np.ndarray) -> np.ndarray:
    """The Luhn check of the digits ``values[first : last + 1]`` of each candidate at once: every
    second one from the right doubled, they sum to a multiple of 10."""
    doubled = _DOUBLED[values]
    # Running sums with the digits at odd indexes doubled, and with those at even indexes doubled:
    # a card whose last digit has an even index doubles its digits at odd indexes, and the reverse.
    at_odd, at_even = values.astype(np.int32), doubled.astype(np.int32)
    at_odd[1::2], at_even[1::2] = doubled[1::2], values[1::2]
    doubled_at_odd = np.concatenate(([0], np.cumsum(at_odd, dtype=np.int32)))
    doubled_at_even = np.concatenate(([0], np.cumsum(at_even, dtype=np.int32)))
    stops = lasts + 1
    totals = np.where(
        lasts % 2 == 0,
        doubled_at_odd[stops] - doubled_at_odd[firsts],
        doubled_at_even[stops] - doubled_at_even[firsts],
    )
    return totals % 10 == 0


CARD_REGEX = r"\b(?:\d[ -]?){12,18}\d\b"


def _scan_cards(text: str, classes: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of ``CARD_REGEX``'s ``finditer`` matches that pass the Luhn check."""
    if b"0" * 13 not in classes.translate(_CARD_RUN):
        return _NONE, _NONE
    where, firsts, lasts = _card_ends(classes)
    if not len(firsts):
        return _NONE, _NONE
    # The first start past each match: how many starts lie at or before its last digit.
    starts_before = np.zeros(len(where) + 1, np.uint8)
    starts_before[firsts + 1] = 1
    following = memoryview(np.cumsum(starts_before, dtype=np.int32)[lasts + 1])
    chosen: list[int] = []
    at, count = 0, len(firsts)
    while at < count:
        chosen.append(at)
        at = following[at]
    kept = np.array(chosen, np.int64)
    firsts, lasts = firsts[kept], lasts[kept]
    if text.isascii():
        values = np.frombuffer(text.encode("ascii"), np.uint8)[where] - ord("0")
    else:
        values = _unicode_tables()[1][_code_points(text)[where]]
    valid = _luhn_valid(values, firsts, lasts)
    return where[firsts[valid]], where[lasts[valid]] + 1


# ``\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b``: eleven characters of a fixed shape,
# which cannot overlap itself (a "-" would have to fall on a digit), so its matches are all the
# places that shape and the word boundaries hold, less those the look-aheads refuse (ASCII "0", "6"
# and "9" only: the pattern spells them).
SSN_REGEX = r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b"
_SSN_SHAPE = b"000-00-0000"


def _scan_ssns(text: str, classes: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of ``SSN_REGEX``'s ``finditer`` matches."""
    if _SSN_SHAPE not in classes:
        return _NONE, _NONE
    # framed[i + 1] is text[i]; "n" stands for a non-word character other than "-", and the frame.
    framed = np.frombuffer(_framed(classes, _SSN_VIEW), np.uint8)
    digit, dash = framed == ord("0"), framed == ord("-")
    edge = dash | (framed == ord("n"))
    count = len(framed) - 12
    # A match at i: a non-word character before it, the shape, a non-word character after it.
    found = edge[:count].copy()
    for offset, char in enumerate(_SSN_SHAPE, 1):
        found &= (digit if char == ord("0") else dash)[offset : offset + count]
    found &= edge[12:]
    starts = np.flatnonzero(found)
    if not len(starts):
        return _NONE, _NONE
    chars = np.frombuffer(text.encode("ascii"), np.uint8) if text.isascii() else _code_points(text)
    zero, six = ord("0"), ord("6")
    first, second, third = chars[starts], chars[starts + 1], chars[starts + 2]
    refused = (first == ord("9")) | ((first == second) & (second == third) & ((first == zero) | (first == six)))
    refused |= (chars[starts + 4] == zero) & (chars[starts + 5] == zero)
    serial = [chars[starts + offset] == zero for offset in (7, 8, 9, 10)]
    refused |= serial[0] & serial[1] & serial[2] & serial[3]
    starts = starts[~refused]
    return starts, starts + 11


_SSN_VIEW = _view(n=" .+@()#", w="Aa_")


# Entity types in the order their patterns claim text.
_IBANS, _PHONES = (functools.partial(_scan_bounded, pattern) for pattern in BOUNDED_PATTERNS)
PII_ENTITIES = ("EMAIL_ADDRESS", "CREDIT_CARD", "US_SSN", "IBAN_CODE", "IP_ADDRESS", "PHONE_NUMBER")
PII_SCANS: tuple[Callable[[str, bytes], tuple[np.ndarray, np.ndarray]], ...] = (
    _scan_emails,
    _scan_cards,
    _scan_ssns,
    _IBANS,
    _scan_ipv4s,
    _PHONES,
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
                elif isinstance(part, dict) and "content" in part:  # a message among Responses API input items
                    yield from walk_content(part, "content")
                elif isinstance(part, dict) and isinstance(part.get("output"), str):  # a function call's output
                    yield setter(part, "output"), part["output"]

    for message in body.get("messages") or ():
        if isinstance(message, dict) and "content" in message:
            yield from walk_content(message, "content")
    for key in ("prompt", "input", "instructions"):
        if key in body:
            yield from walk_content(body, key)
    # Agents' answers: a ResponsesAgent's output items, a ChatAgent's stream chunk ({"delta":
    # message}), a Responses stream event (a text "delta", or the finished "item").
    output = body.get("output")
    for item in output if isinstance(output, list) else ():
        if isinstance(item, dict) and "content" in item:
            yield from walk_content(item, "content")
    delta = body.get("delta")
    if isinstance(delta, dict) and "content" in delta and delta["content"] is not None:
        yield from walk_content(delta, "content")
    elif isinstance(delta, str) and str(body.get("type", "")).endswith("text.delta"):
        yield setter(body, "delta"), delta
    item = body.get("item")
    if isinstance(item, dict) and "content" in item:
        yield from walk_content(item, "content")
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


# Texts at least this long are checked in a worker process. Hostile text still costs tens of
# milliseconds per 1 MB (see the PII notes above), and ``re`` and numpy hold the GIL for the whole
# of one step, so a thread would still stop the event loop that long; a process leaves it free. Shorter texts are checked in place: shipping them would cost more than
# checking them.
OFF_LOOP_CHARS = 64 * 1024
_pool: ProcessPoolExecutor | None = None


def _workers() -> ProcessPoolExecutor:
    """The guardrail workers, started on first use. Few (``GUARDRAIL_WORKERS``): what hostile input
    may spend is bounded by them, while queries queue (the gateway caps how many are in flight)."""
    global _pool
    if _pool is None:
        # spawn: a fork of a process that runs threads (the event loop's executors) may inherit held locks.
        _pool = ProcessPoolExecutor(
            max_workers=settings.GUARDRAIL_WORKERS,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=keep_freed_memory,
        )
    return _pool


# glibc's malloc settings (mallopt's parameter numbers), for ``keep_freed_memory``.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MiB = 1024 * 1024


def keep_freed_memory() -> None:
    """Let this process reuse the memory it frees instead of handing it back to the kernel.

    A check of 1 MB allocates dozens of temporary arrays of a megabyte or more. By default glibc
    maps each afresh and unmaps it when freed, so every page of every temporary is faulted in again:
    about half of the check's time (1 MB of mixed hostile text: 53 ms instead of 74). Allocations
    up to 32 MiB (glibc's largest setting) come from the heap, and up to 128 MiB of free heap is
    kept. The guardrail workers run this first; elsewhere (not glibc) it does nothing."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, 32 * _MiB)
    mallopt(_M_TRIM_THRESHOLD, 128 * _MiB)
    mallopt(_M_TOP_PAD, 16 * _MiB)


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

"""The PII detector as first written, kept to compare the fast one with: six regexes run one after
another over the whole text, checks on each match, a finding dropped where it overlaps an earlier
one. Quadratic in places (the e-mail regex on ``a.a.a.…``, the overlap test), so only for short texts.
"""

from __future__ import annotations

import re
from collections.abc import Callable


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


PATTERNS: list[tuple[str, re.Pattern[str], Callable[[re.Match[str]], bool] | None]] = [
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
    spans: list[tuple[int, int, str]] = []
    for entity, pattern, check in PATTERNS:
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


def page_faults_of_temporaries(rounds: int = 16, live: int = 6, size: int = 4 * 1024 * 1024) -> int:
    """Minor page faults this process takes over ``rounds`` of allocating and filling ``live`` arrays
    of ``size`` bytes, then freeing them all, as a check of a long text does with its temporaries
    (run in a guardrail worker by a test: where freed memory is reused, only the first round faults)."""
    import resource

    import numpy as np

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        arrays = [np.ones(size, np.uint8) for _ in range(live)]
        del arrays
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

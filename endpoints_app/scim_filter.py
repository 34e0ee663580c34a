"""SCIM filters (RFC 7644 §3.4.2.2) read into Django ``Q`` objects, for the attributes a resource allows.

Every filter is hostile until read, so the reader is bounded at each step:

1. At most ``MAX_FILTER_LENGTH`` characters, refused before anything else.
2. A hand-written tokenizer, one pass, no regular expression at all (nothing can backtrack);
   a string literal is found by scanning for its closing quote, then decoded by ``json.loads``.
3. A recursive-descent parser whose nesting (parentheses, ``not``) is at most ``MAX_DEPTH``, and
   at most ``MAX_COMPARISONS`` comparisons, so one request builds one modest WHERE clause.
4. Attributes are looked up in the resource's table of ``Attribute``; anything else (value paths
   like ``emails[type eq "work"]``, unknown names) is a 400 ``invalidFilter``, never a guess.

Attribute names are case-insensitive and may carry their schema URN
(``urn:ietf:params:scim:schemas:core:2.0:User:userName``), as the RFC allows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from django.db.models import Q

MAX_FILTER_LENGTH = 1000
MAX_DEPTH = 8
MAX_COMPARISONS = 20
STRING_OPERATORS = {"eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le"}
_LOOKUPS = {"co": "contains", "sw": "startswith", "ew": "endswith", "gt": "gt", "ge": "gte", "lt": "lt", "le": "lte"}


class InvalidFilter(ValueError):
    """A filter this server cannot read (SCIM's ``invalidFilter``)."""


@dataclass(frozen=True)
class Attribute:
    """How one filterable attribute maps to the database.

    ``kind``: ``"string"`` (compared case-insensitively unless ``case_exact``), ``"id"`` (a
    primary key written as a string of digits), or ``"boolean"``.
    """

    field: str
    kind: str = "string"
    case_exact: bool = False


@dataclass(frozen=True)
class _Token:
    kind: str  # "word", "string", "(", ")"
    text: str
    value: object = None


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char in " \t\r\n":
            i += 1
        elif char in "()":
            tokens.append(_Token(char, char))
            i += 1
        elif char == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            if j >= n:
                raise InvalidFilter("a string in the filter has no closing quote")
            try:
                value = json.loads(text[i : j + 1])
            except ValueError:
                raise InvalidFilter("a string in the filter is not a valid JSON string") from None
            tokens.append(_Token("string", text[i : j + 1], value))
            i = j + 1
        else:
            j = i
            while j < n and text[j] not in ' \t\r\n()"':
                j += 1
            word = text[i:j]
            if "[" in word or "]" in word:
                raise InvalidFilter("value-path filters ([...]) are not supported")
            tokens.append(_Token("word", word))
            i = j
    return tokens


class _Parser:
    def __init__(self, tokens: list[_Token], attributes: dict[str, Attribute], urns: tuple[str, ...]) -> None:
        self.tokens = tokens
        self.at = 0
        self.attributes = attributes
        self.urns = urns
        self.comparisons = 0

    def peek_word(self) -> str | None:
        if self.at < len(self.tokens) and self.tokens[self.at].kind == "word":
            return self.tokens[self.at].text.lower()
        return None

    def take(self, kind: str) -> _Token:
        if self.at >= len(self.tokens) or self.tokens[self.at].kind != kind:
            raise InvalidFilter(f"expected {'a value' if kind == 'string' else repr(kind)} in the filter")
        self.at += 1
        return self.tokens[self.at - 1]

    def parse(self) -> Q:
        q = self.or_expression(0)
        if self.at != len(self.tokens):
            raise InvalidFilter(f"unexpected {self.tokens[self.at].text!r} in the filter")
        return q

    def or_expression(self, depth: int) -> Q:
        q = self.and_expression(depth)
        while self.peek_word() == "or":
            self.at += 1
            q = q | self.and_expression(depth)
        return q

    def and_expression(self, depth: int) -> Q:
        q = self.unary(depth)
        while self.peek_word() == "and":
            self.at += 1
            q = q & self.unary(depth)
        return q

    def unary(self, depth: int) -> Q:
        if depth >= MAX_DEPTH:
            raise InvalidFilter(f"the filter nests deeper than {MAX_DEPTH} levels")
        if self.peek_word() == "not":
            self.at += 1
            self.take("(")
            q = self.or_expression(depth + 1)
            self.take(")")
            return ~q
        if self.at < len(self.tokens) and self.tokens[self.at].kind == "(":
            self.at += 1
            q = self.or_expression(depth + 1)
            self.take(")")
            return q
        return self.comparison()

    def attribute(self, name: str) -> Attribute:
        lowered = name.lower()
        for urn in self.urns:
            if lowered.startswith(urn.lower() + ":"):
                lowered = lowered[len(urn) + 1 :]
                break
        found = self.attributes.get(lowered)
        if found is None:
            raise InvalidFilter(f"cannot filter on {name[:100]!r}")
        return found

    def comparison(self) -> Q:
        self.comparisons += 1
        if self.comparisons > MAX_COMPARISONS:
            raise InvalidFilter(f"the filter has more than {MAX_COMPARISONS} comparisons")
        attribute = self.attribute(self.take("word").text)
        operator = self.peek_word()
        if operator is None:
            raise InvalidFilter("expected an operator (eq, ne, co, sw, ew, gt, ge, lt, le, pr) in the filter")
        self.at += 1
        if operator == "pr":
            return _present(attribute)
        if operator not in STRING_OPERATORS:
            raise InvalidFilter(f"unknown operator {operator[:20]!r} in the filter")
        if self.at < len(self.tokens) and self.tokens[self.at].kind == "string":
            value: object = self.take("string").value
        else:
            word = self.take("word").text.lower()
            literals: dict[str, object] = {"true": True, "false": False, "null": None}
            if word not in literals:
                raise InvalidFilter(f"expected a value after {operator!r} in the filter")
            value = literals[word]
        return _compare(attribute, operator, value)


def _present(attribute: Attribute) -> Q:
    if attribute.kind == "string":
        return Q(**{f"{attribute.field}__isnull": False}) & ~Q(**{attribute.field: ""})
    return Q(**{f"{attribute.field}__isnull": False})


def _compare(attribute: Attribute, operator: str, value: object) -> Q:
    if attribute.kind == "boolean":
        if operator not in ("eq", "ne") or not isinstance(value, bool):
            raise InvalidFilter("a boolean attribute is compared with eq or ne and true or false")
        q = Q(**{attribute.field: value})
    elif attribute.kind == "id":
        if operator not in ("eq", "ne") or not isinstance(value, str):
            raise InvalidFilter('an id is compared with eq or ne and a string ("123")')
        # An id that is not ours (not digits, or past a bigint) matches nothing rather than erring.
        valid = value.isascii() and value.isdigit() and len(value) <= 18
        q = Q(**{attribute.field: int(value)}) if valid else Q(**{f"{attribute.field}__in": []})
    else:
        if not isinstance(value, str):
            raise InvalidFilter("a string attribute is compared with a string value")
        if operator in ("eq", "ne"):
            lookup = "exact" if attribute.case_exact else "iexact"
        else:
            lookup = _LOOKUPS[operator]
            if not attribute.case_exact and operator in ("co", "sw", "ew"):
                lookup = "i" + lookup
        q = Q(**{f"{attribute.field}__{lookup}": value})
    return ~q if operator == "ne" else q


def parse_filter(text: str, attributes: dict[str, Attribute], urns: tuple[str, ...] = ()) -> Q:
    """The filter ``text`` as a ``Q`` over the resource's model; ``InvalidFilter`` if it cannot be read.

    ``attributes`` maps lower-case attribute names (``username``, ``emails.value``) to their
    columns; ``urns`` are the schema URNs a name may be prefixed with.
    """
    if len(text) > MAX_FILTER_LENGTH:
        raise InvalidFilter(f"the filter is longer than {MAX_FILTER_LENGTH} characters")
    tokens = _tokenize(text)
    if not tokens:
        raise InvalidFilter("the filter is empty")
    return _Parser(tokens, attributes, urns).parse()


def parse_value_filter(text: str) -> tuple[str, str]:
    """The filter inside a PATCH path's brackets (``members[value eq "123"]``): only
    ``value eq "…"`` or ``type eq "…"``, as identity providers send them."""
    if len(text) > MAX_FILTER_LENGTH:
        raise InvalidFilter(f"the filter is longer than {MAX_FILTER_LENGTH} characters")
    tokens = _tokenize(text)
    if (
        len(tokens) != 3
        or tokens[0].kind != "word"
        or tokens[0].text.lower() not in ("value", "type")
        or tokens[1].text.lower() != "eq"
        or tokens[2].kind != "string"
    ):
        raise InvalidFilter('only [value eq "…"] and [type eq "…"] are supported in a path')
    return tokens[0].text.lower(), str(tokens[2].value)

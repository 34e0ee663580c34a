"""The parts every filter set is built from: the ``FilterSet`` base (a Django form the page renders
and the API binds), the time range, and the fields a list's query string is made of.

Each field parses one query parameter strictly and cleans to what the query needs (an aware
datetime, an int, a bool, a decoded keyset position). A parameter left empty cleans to the field's
``default``, so ``?limit=`` and no ``limit`` read the same. Error messages are written for the page,
which shows each under its input; the API answers the first as ``"<parameter>: <message>"``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from django import forms
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.core.validators import ProhibitNullCharactersValidator
from django.utils import timezone

from endpoints_app.errors import DomainError, InvalidParameterValue

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DIGITS_RE = re.compile(r"[0-9]+")  # ASCII digits only: str.isdigit also takes "²", which int() refuses
# Longer than any token a list answers; a longer one is refused before it is decoded.
MAX_PAGE_TOKEN_CHARS = 200


def to_epoch_ms(moment: datetime) -> int:
    """Epoch milliseconds, exactly (integer arithmetic: no float rounding near the year 9999)."""
    return (moment - EPOCH) // timedelta(milliseconds=1)


def to_epoch_seconds(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(seconds=1)


def refuse_nul(value: Any) -> None:
    """PostgreSQL cannot compare a NUL: refused in the words of Django's own validator, which the
    API's query check (``api.parsers.check_path_and_query``) uses too."""
    if isinstance(value, str) and "\x00" in value:
        validator = ProhibitNullCharactersValidator()
        raise ValidationError(validator.message, code=validator.code)


class FilterSet(forms.Form):
    """A list's filters. The page binds ``request.GET`` and shows each error under its input (a
    parameter that does not parse is left out, ``value`` gives its default); the API calls
    ``raise_if_invalid``. ``prefix`` names the parameters ``<prefix>_<name>`` (a page showing
    several lists keeps each one's apart, e.g. the endpoint page's ``logs_kind``)."""

    def add_prefix(self, field_name: str) -> str:
        return f"{self.prefix}_{field_name}" if self.prefix else field_name

    def value(self, name: str) -> Any:
        """The parsed value of ``name``; its default when it was not given or did not parse."""
        cleaned = getattr(self, "cleaned_data", {})
        if name in cleaned:
            return cleaned[name]
        return getattr(self.fields[name], "default", None)

    def raise_if_invalid(self) -> None:
        """For the API: INVALID_PARAMETER_VALUE naming the first parameter that did not parse."""
        if self.is_valid():
            return
        name, errors = next(iter(self.errors.items()))
        message = " ".join(str(error) for error in errors)
        raise InvalidParameterValue(message if name == NON_FIELD_ERRORS else f"{self.add_prefix(name)}: {message}")


class TimestampField(forms.DateTimeField):
    """A moment in time, as epoch milliseconds (what the API answers and the CLI sends) or as a date
    and time (what the page's datetime-local input sends; naive values are in UTC, the server's zone)."""

    default_error_messages = {
        "invalid": "Enter epoch milliseconds or a date and time in UTC, such as 2025-01-31T09:30.",
    }
    input_formats = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"]

    def __init__(self, *, label: str, **kwargs: Any) -> None:
        kwargs.setdefault("widget", forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"))
        super().__init__(required=False, label=label, **kwargs)

    def to_python(self, value: Any) -> datetime | None:
        refuse_nul(value)
        if isinstance(value, str) and _DIGITS_RE.fullmatch(value.strip()):
            try:
                return EPOCH + timedelta(milliseconds=int(value.strip()))
            except (OverflowError, ValueError):  # past the year 9999, or too many digits for int()
                raise ValidationError(self.error_messages["invalid"], code="invalid") from None
        return super().to_python(value)


class TimeRangeFilterSet(FilterSet):
    """A list filtered to ``[start, end)``. Subclasses declare two ``TimestampField``s and name them
    in ``range_names`` (each API keeps the names it always had: since/until, start/end).

    ``default_span``: when set, a missing end is now and a missing start is ``default_span`` before
    the end (a chart's last hour). ``empty_range_allowed``: whether start == end is a (empty)
    range or a mistake. ``max_span`` bounds what one request may read. A range error is the
    start's, and names both ends.
    """

    range_names: ClassVar[tuple[str, str]] = ("since", "until")
    default_span: ClassVar[timedelta | None] = None
    max_span: ClassVar[timedelta | None] = None
    empty_range_allowed: ClassVar[bool] = True

    def __init__(self, *args: Any, now: datetime | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.now = now or timezone.now()

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        low, high = self.range_names
        if low in self.errors or high in self.errors:
            return data
        if self.default_span is not None:
            if data.get(high) is None:
                data[high] = self.now
            if data.get(low) is None:
                data[low] = data[high] - self.default_span
        start, end = data.get(low), data.get(high)
        if start is None or end is None:
            return data
        if self.empty_range_allowed and end < start:
            self.add_error(low, f"Must not be after {high}.")
        elif not self.empty_range_allowed and end <= start:
            self.add_error(low, f"Must be before {high}.")
        elif self.max_span is not None and end - start > self.max_span:
            self.add_error(low, f"The range to {high} may span at most {self.max_span.days} days.")
        return data

    def range(self) -> tuple[datetime | None, datetime | None]:
        low, high = self.range_names
        return self.value(low), self.value(high)


class LimitField(forms.IntegerField):
    """How many rows one page holds: a whole number from 1 to ``max_value`` (ASCII digits only)."""

    def __init__(self, *, default: int, max_value: int, label: str = "Rows per page", **kwargs: Any) -> None:
        self.default = default
        message = f"Enter a whole number from 1 to {max_value}."
        kwargs.setdefault("error_messages", {"invalid": message, "min_value": message, "max_value": message})
        super().__init__(required=False, min_value=1, max_value=max_value, label=label, **kwargs)

    def to_python(self, value: Any) -> int | None:
        refuse_nul(value)
        if value in self.empty_values:
            return self.default
        text = str(value).strip()
        if not _DIGITS_RE.fullmatch(text) or len(text) > 18:  # more digits than any bound: out of range
            raise ValidationError(self.error_messages["invalid"], code="invalid")
        return int(text)


class StrictBooleanField(forms.Field):
    """``true`` / ``false`` (or ``1`` / ``0``, any case). Anything else is an error, not False: a
    typo must not quietly turn an option off."""

    default_error_messages = {"invalid": "Enter true or false."}

    def __init__(self, *, default: bool, **kwargs: Any) -> None:
        self.default = default
        kwargs.setdefault("widget", forms.Select(choices=[("", "Default"), ("true", "Yes"), ("false", "No")]))
        super().__init__(required=False, **kwargs)

    def to_python(self, value: Any) -> bool:
        refuse_nul(value)
        if value in self.empty_values:
            return self.default
        text = str(value).strip().lower()
        if text in ("true", "1"):
            return True
        if text in ("false", "0"):
            return False
        raise ValidationError(self.error_messages["invalid"], code="invalid")


class ChoiceParamField(forms.ChoiceField):
    """One word of a fixed set. ``fold`` (e.g. ``str.upper``) makes it case-insensitive and
    ``aliases`` maps other spellings (``WARN`` → ``WARNING``); the page's select shows the folded
    value as chosen. Empty is ``default``."""

    def __init__(
        self,
        *,
        values: Sequence[str],
        default: str = "",
        labels: Mapping[str, str] | None = None,
        empty_label: str | None = None,
        fold: Callable[[str], str] | None = None,
        aliases: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        labels = labels or {}
        choices = [(v, labels.get(v, v)) for v in values]
        if empty_label is not None:
            choices.insert(0, ("", empty_label))
        message = f"Choose one of {', '.join(values)}."
        kwargs.setdefault("error_messages", {"invalid_choice": message})
        super().__init__(choices=choices, required=False, **kwargs)
        self.default = default
        self.fold = fold
        self.aliases = dict(aliases or {})

    def normalize(self, text: str) -> str:
        text = self.fold(text) if self.fold else text
        return self.aliases.get(text, text)

    def to_python(self, value: Any) -> str:
        refuse_nul(value)
        text = super().to_python(value)
        return self.normalize(text) if text else self.default

    def prepare_value(self, value: Any) -> Any:
        return self.normalize(value) if isinstance(value, str) and value else value


class PageTokenField(forms.CharField):
    """Where a keyset-paged list goes on: a ``next_page_token`` an earlier page answered. Cleans to
    the position it stands for, read by ``decode`` (the token's format is its list's); a token
    that does not decode is an error. A list whose tokens depend on another parameter (the log
    lines' order) decodes in its filter set's ``clean_page_token`` with ``decode_with``."""

    default_error_messages = {
        "invalid": "Not a token this API returned: pass the next_page_token of the previous page, "
        "with the same filters and order.",
    }

    def __init__(self, *, decode: Callable[[str], Any] | None = None, **kwargs: Any) -> None:
        self.decode = decode
        self.default = None
        super().__init__(required=False, max_length=MAX_PAGE_TOKEN_CHARS, widget=forms.HiddenInput, **kwargs)
        self.error_messages["max_length"] = self.error_messages["invalid"]

    def clean(self, value: Any) -> Any:
        token = super().clean(value)
        if not token:
            return None
        return self.decode_with(token, self.decode) if self.decode is not None else token

    @classmethod
    def decode_with(cls, token: str, decode: Callable[[str], Any]) -> Any:
        try:
            return decode(token)
        except (DomainError, ValueError, OverflowError):
            raise ValidationError(cls.default_error_messages["invalid"], code="invalid") from None


class RequiredParamField(forms.CharField):
    """A parameter a lookup cannot do without (a secret scope's name)."""

    default_error_messages = {"required": "This parameter is required."}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(required=True, strip=False, **kwargs)

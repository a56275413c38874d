"""English phrases that name a time in the past ("yesterday", "last weekend", "a couple of weeks ago", "on
Tuesday"), read as the span of time they name.

A question like "what did I get up to last weekend?" is answered by the memories learned in that span, so the
retrieval engine restricts its candidates to it, and ranks them by what the rest of the question says. The phrase
is returned with its span so that the rest of the question can be scored without it.

English only (the analyzer of another language finds no window): the grammar is small and general, not a list of
the phrases of one data set. Spans are computed in ``now``'s time zone (pass the user's local time when known)
and are half-open, ``[start, end)``. Weeks start on Monday. A phrase about the future ("next week") names no span.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

_DAY = dt.timedelta(days=1)
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
           "november", "december")  # fmt: skip
_NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
            "eight": 8, "nine": 9, "ten": 10, "couple": 2, "few": 3, "several": 4}  # fmt: skip
_UNIT_DAYS = {"day": 1, "week": 7, "fortnight": 14, "month": 30, "year": 365}

_COUNT = r"(?P<count>\d+|a|an|one|two|three|four|five|six|seven|eight|nine|ten|(?:a\s+)?couple(?:\s+of)?|(?:a\s+)?few|several)"
_WEEKDAY = "|".join(_WEEKDAYS)
_MONTH = "|".join(_MONTHS)
_UNIT = r"(?P<unit>day|week|fortnight|month|year)s?"
_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern))
    for name, pattern in (
        ("ago", rf"\b{_COUNT}\s+{_UNIT}\s+(?:ago|back)\b"),
        # A day of the month counts only with its year: "is my appointment on the 14th of May?" is about the
        # appointment's date, not about what was said that day.
        (
            "date",
            rf"\b(?P<day>\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?(?P<month>{_MONTH}),?\s+(?P<year>\d{{4}})\b"
            rf"|\b(?P<month2>{_MONTH})\s+(?P<day2>\d{{1,2}})(?:st|nd|rd|th)?,?\s+(?P<year2>\d{{4}})\b",
        ),
        ("month_of_year", rf"\b(?P<month>{_MONTH}),?\s+(?P<year>\d{{4}})\b"),
        ("year", r"\b(?:in|during|since)\s+(?P<year>(?:19|20)\d\d)\b"),
        ("past", rf"\b(?:in|over|during|for)?\s*the\s+(?:past|last)\s+(?:{_COUNT}\s+)?{_UNIT}\b"),
        ("day_before_yesterday", r"\bthe\s+day\s+before\s+yesterday\b"),
        ("yesterday", r"\byesterday\b|\blast\s+night\b"),
        ("today", r"\btoday\b|\btonight\b|\bthis\s+(?:morning|afternoon|evening)\b|\bearlier\s+on\b"),
        # A bare weekday is often about a schedule ("my swim on Thursday"): only a past one counts.
        (
            "weekday",
            rf"\b(?:last|this\s+past)\s+(?P<weekday>{_WEEKDAY})\b|\b(?P<gone>{_WEEKDAY})\s+just\s+gone\b"
            rf"|\b(?:did|was|were|had|said|told|went|happened)\b.*?\bon\s+(?P<on>{_WEEKDAY})\b",
        ),
        ("this_weekend", r"\bthis\s+(?:past\s+)?weekend\b"),
        ("last_weekend", r"\blast\s+weekend\b|\bat\s+the\s+weekend\b|\bover\s+the\s+weekend\b"),
        ("this_week", r"\b(?:earlier\s+)?this\s+week\b"),
        ("last_week", r"\blast\s+week\b"),
        ("this_month", r"\bthis\s+month\b"),
        ("last_month", r"\blast\s+month\b"),
        ("month", rf"\b(?:in|last|this\s+past|back\s+in|during)\s+(?P<month>{_MONTH})\b(?!,?\s+\d)"),
        ("this_year", r"\bthis\s+year\b"),
        ("last_year", r"\blast\s+year\b"),
    )
)


@dataclass(frozen=True, slots=True)
class TimeWindow:
    start: dt.datetime
    end: dt.datetime
    phrases: tuple[tuple[int, int], ...]  # where the time phrases are in the text, as character offsets

    def contains(self, moment: dt.datetime) -> bool:
        return self.start <= moment < self.end


def find_window(text: str, *, now: dt.datetime) -> TimeWindow | None:
    """The span the first past-time phrase in ``text`` names, or None. ``now`` must be timezone-aware."""
    lowered = text.lower()
    found: list[tuple[int, int, tuple[dt.datetime, dt.datetime]]] = []
    for name, pattern in _RULES:
        for match in pattern.finditer(lowered):
            start, end = match.span()
            if name == "weekday" and match["on"]:  # the phrase is "on <weekday>", not the verb before it
                start = lowered.rfind("on", 0, match.start("on"))
            if _about_the_future(lowered, start):
                continue
            span = _span(name, match, now)
            if span is not None:
                found.append((start, end, span))
    if not found:
        return None
    found.sort()
    start, end = found[0][2]
    return TimeWindow(start, end, tuple((a, b) for a, b, _ in found))


def without_phrases(text: str, window: TimeWindow) -> str:
    """The text with its time phrases blanked out: what the question is about."""
    chars = list(text)
    for start, end in window.phrases:
        chars[start:end] = " " * (end - start)
    return " ".join("".join(chars).split())


def _about_the_future(text: str, start: int) -> bool:
    return bool(re.search(r"\b(?:next|coming|upcoming|until|till)\s*$", text[:start]))


def _span(name: str, match: re.Match[str], now: dt.datetime) -> tuple[dt.datetime, dt.datetime] | None:
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    monday = midnight - now.weekday() * _DAY
    end_of_today = midnight + _DAY
    if name == "ago":
        days = _count(match["count"]) * _UNIT_DAYS[match["unit"]]
        centre = midnight - days * _DAY
        half = max(1.0, days / 4)  # "two weeks ago" is roughly 11 to 17 days back; "a day ago" is that day
        return centre - half * _DAY, min(centre + (half + 1) * _DAY, end_of_today)
    if name == "past":
        days = _count(match["count"]) * _UNIT_DAYS[match["unit"]] if match["count"] else _UNIT_DAYS[match["unit"]]
        return midnight - days * _DAY, end_of_today
    if name == "day_before_yesterday":
        return midnight - 2 * _DAY, midnight - _DAY
    if name == "yesterday":
        return midnight - _DAY, midnight
    if name == "today":
        return midnight, end_of_today
    if name == "weekday":
        weekday = match["weekday"] or match["gone"] or match["on"]
        back = (now.weekday() - _WEEKDAYS.index(weekday)) % 7
        day = midnight - back * _DAY
        return day, day + _DAY
    if name in ("this_weekend", "last_weekend"):
        if now.weekday() >= 5:  # on a Saturday or Sunday, "this weekend" is the one under way
            saturday = monday + 5 * _DAY if name == "this_weekend" else monday - 2 * _DAY
        elif name == "this_weekend" and now.weekday() >= 2:  # midweek, "this weekend" is the coming one
            return None
        else:
            saturday = monday - 2 * _DAY
        return saturday, min(saturday + 2 * _DAY, end_of_today)
    if name == "this_week":
        return monday, end_of_today
    if name == "last_week":
        return monday - 7 * _DAY, monday
    if name == "this_month":
        return midnight.replace(day=1), end_of_today
    if name == "last_month":
        first = midnight.replace(day=1)
        return (first - _DAY).replace(day=1), first
    if name == "month":
        month = _MONTHS.index(match["month"]) + 1
        return _month_span(now.year if month <= now.month else now.year - 1, month, midnight)
    if name == "date":
        month = _MONTHS.index(match["month"] or match["month2"]) + 1
        day = int(match["day"] or match["day2"])
        try:
            start = midnight.replace(year=int(match["year"] or match["year2"]), month=month, day=day)
        except ValueError:  # "31 February"
            return None
        return start, start + _DAY
    if name == "month_of_year":
        return _month_span(int(match["year"]), _MONTHS.index(match["month"]) + 1, midnight)
    if name == "year":
        start = midnight.replace(year=int(match["year"]), month=1, day=1)
        return start, start.replace(year=start.year + 1)
    if name == "this_year":
        return midnight.replace(month=1, day=1), end_of_today
    if name == "last_year":
        start = midnight.replace(year=now.year - 1, month=1, day=1)
        return start, start.replace(year=now.year)
    raise AssertionError(name)


def _month_span(year: int, month: int, midnight: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    start = midnight.replace(year=year, month=month, day=1)
    return start, start.replace(year=year + month // 12, month=month % 12 + 1)


def _count(text: str) -> int:
    if text.isdigit():
        return int(text)
    words = [w for w in text.split() if w != "of"]
    return _NUMBERS[words[-1]]

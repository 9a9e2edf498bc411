"""Running hours: the windows in which a `keep_warm` schedule keeps a backend warm.

A schedule is a list of windows, each `[days] HH:MM-HH:MM`, read in one IANA time zone:

- days: `Mon`…`Sun` (or the full names, any case), a range `Mon-Fri` (it may wrap: `Fri-Mon`),
  a list `Mon,Wed,Fri` of days and ranges, or `daily` / `*` / nothing for every day;
- times: `00:00` to `23:59`, and `24:00` as an end (midnight at the end of the day). An end
  at or before the start crosses midnight: `Fri 22:00-02:00` runs from Friday 22:00 to
  Saturday 02:00 (the days name the day a window opens).

The windows are wall-clock times in the zone and are turned into instants day by day, so a
DST change moves them with the clock: `08:00-18:00` is ten hours on most days, and nine or
eleven hours only if it spans the change itself. A time the clock skips (02:30 on the night it
jumps from 02:00 to 03:00) is taken as the moment of the jump; a time that happens twice (the
night it goes back) opens a window at its first occurrence and ends one at its second, so a
window is never shorter than written.

`Schedule.is_open` and `Schedule.next_change` are pure functions of an instant. A schedule's
`lead` opens every window that much early (a backend is started before its hours begin).
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["Schedule", "Window", "local_zone_name", "parse_window", "zone"]

DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_FULL_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_EVERY_DAY = ("", "daily", "*")
_RANGE = re.compile(r"^(?P<days>.*?)\s*(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})$")
_DAY = timedelta(days=1)
# Any schedule repeats weekly in local time: a run of open time longer than this (a week and
# a day, for DST) from an instant never closes.
_ALWAYS = timedelta(days=8)


@dataclass(frozen=True)
class Window:
    """One line of a schedule: on `days` (0 = Monday), from `start` to `end` minutes after
    local midnight; `end` ≤ `start` ends on the next day."""

    days: frozenset[int]
    start: int
    end: int

    def __str__(self) -> str:
        days = ",".join(DAY_NAMES[d] for d in sorted(self.days))
        return f"{days} {_hhmm(self.start)}-{_hhmm(self.end)}"


def parse_window(text: str) -> Window:
    """`"Mon-Fri 08:00-18:00"` → a `Window`. Raises `ValueError` saying what is wrong."""
    match = _RANGE.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a window: write '[days] HH:MM-HH:MM', e.g. "
                         "'Mon-Fri 08:00-18:00', 'Sat,Sun 10:00-12:00' or 'daily 22:00-02:00'")
    start = _minutes(match["start"], end=False)
    end = _minutes(match["end"], end=True)
    if start == end % (24 * 60) and end != 24 * 60:
        raise ValueError(f"{text!r}: a window from {match['start']} to {match['end']} is empty "
                         "(for a whole day write 00:00-24:00)")
    return Window(_days(match["days"]), start, end)


def _minutes(text: str, *, end: bool) -> int:
    hours, minutes = (int(part) for part in text.split(":"))
    if end and (hours, minutes) == (24, 0):
        return 24 * 60
    if hours > 23 or minutes > 59:
        allowed = "00:00 to 23:59, or 24:00 as an end" if end else "00:00 to 23:59"
        raise ValueError(f"{text} is not a time of day ({allowed})")
    return hours * 60 + minutes


def _days(text: str) -> frozenset[int]:
    text = text.strip()
    if text.lower() in _EVERY_DAY:
        return frozenset(range(7))
    days: set[int] = set()
    for item in text.split(","):
        first, dash, last = item.strip().partition("-")
        a = _day(first)
        b = _day(last) if dash else a
        days.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return frozenset(days)


def _day(text: str) -> int:
    name = text.strip().lower()
    for index, full in enumerate(_FULL_NAMES):
        if name in (full, full[:3]):
            return index
    close = difflib.get_close_matches(name.capitalize()[:3], DAY_NAMES, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close and name else ""
    raise ValueError(f"unknown day {text.strip()!r}{hint}: days are Mon, Tue, Wed, Thu, Fri, "
                     "Sat, Sun, a range such as Mon-Fri, a list such as Mon,Wed, or daily")


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name` (`Europe/Berlin`, `UTC`). Raises `ValueError`."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}: use an IANA name such as "
                         "Europe/Berlin, America/New_York or UTC") from None


def local_zone_name() -> str:
    """This machine's time zone by its IANA name: `TZ`, else what `/etc/localtime` links to,
    else `/etc/timezone`; `UTC` when none of them names a zone."""
    candidates = [os.environ.get("TZ", "").removeprefix(":")]
    try:
        target = str(Path("/etc/localtime").resolve())
        candidates.append(target.partition("zoneinfo/")[2])
    except OSError:
        pass
    try:
        candidates.append(Path("/etc/timezone").read_text().strip())
    except OSError:
        pass
    for name in candidates:
        if name:
            try:
                ZoneInfo(name)
                return name
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return "UTC"


@dataclass(frozen=True)
class Schedule:
    """Windows in a time zone; each opens `lead` seconds early."""

    windows: tuple[Window, ...]
    tz: ZoneInfo
    lead: float = 0.0

    @classmethod
    def parse(cls, lines: list[str], timezone: str, lead: float = 0.0) -> Schedule:
        """Raises `ValueError` for the first bad line or an unknown zone."""
        return cls(tuple(parse_window(line) for line in lines), zone(timezone), lead)

    def is_open(self, at: datetime) -> bool:
        """Whether the instant `at` (timezone-aware) is inside a window (or its lead)."""
        return any(start <= at < end for start, end in self._spans(at))

    def next_change(self, after: datetime) -> datetime | None:
        """The first instant after `after` at which `is_open` changes; None if it never does
        (the windows cover every hour of the week)."""
        for start, end in self._spans(after):
            if start <= after < end:
                return None if end - after > _ALWAYS else end
            if start > after:
                return start
        return None  # pragma: no cover: a week always holds a window's opening

    def at(self, timestamp: float) -> tuple[bool, float | None]:
        """`is_open` and `next_change` at a POSIX time, in POSIX times."""
        instant = datetime.fromtimestamp(timestamp, UTC)
        change = self.next_change(instant)
        return self.is_open(instant), None if change is None else change.timestamp()

    def _spans(self, around: datetime) -> list[tuple[datetime, datetime]]:
        """The open spans (UTC, merged, in order) of the local days around `around`: from
        two days (plus the lead) before it to nine days after it."""
        today = around.astimezone(self.tz).date()
        back = 2 + int(self.lead // 86400)
        spans: list[tuple[datetime, datetime]] = []
        for offset in range(-back, 10):
            day = today + timedelta(days=offset)
            for window in self.windows:
                if day.weekday() in window.days:
                    start, end = self._instants(day, window)
                    if start < end:
                        spans.append((start - timedelta(seconds=self.lead), end))
        spans.sort()
        merged: list[tuple[datetime, datetime]] = []
        for start, end in spans:
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        return merged

    def _instants(self, day: date, window: Window) -> tuple[datetime, datetime]:
        opens = datetime.combine(day, time()) + timedelta(minutes=window.start)
        end_day = day if window.end > window.start else day + _DAY
        closes = datetime.combine(end_day, time()) + timedelta(minutes=window.end)
        return _instant(opens, self.tz, first=True), _instant(closes, self.tz, first=False)


def _instant(local: datetime, tz: ZoneInfo, *, first: bool) -> datetime:
    """The UTC instant of the naive wall time `local` in `tz`: of its first or last occurrence
    when it happens twice; the moment the clock jumps when it never happens."""
    early = local.replace(tzinfo=tz, fold=0).astimezone(UTC)
    late = local.replace(tzinfo=tz, fold=1).astimezone(UTC)
    early, late = min(early, late), max(early, late)
    if _wall(early, tz) == local or _wall(late, tz) == local:
        return early if first else late
    # Skipped: between `early` and `late` the offset changes once; find that second.
    low, high = int(early.timestamp()), int(late.timestamp())
    before = early.astimezone(tz).utcoffset()
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, tz).utcoffset() == before:
            low = middle
        else:
            high = middle
    return datetime.fromtimestamp(high, UTC)


def _wall(instant: datetime, tz: ZoneInfo) -> datetime:
    return instant.astimezone(tz).replace(tzinfo=None)

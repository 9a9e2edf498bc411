"""`keep_warm` schedules as pure functions of an instant: parsing, windows, DST, lead."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from hestia.config import parse_config
from hestia.errors import ConfigError
from hestia.schedule import Schedule, local_zone_name, parse_window

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def local(tz: ZoneInfo, *fields: int, fold: int = 0) -> datetime:
    return datetime(*fields, tzinfo=tz, fold=fold)


def utc(*fields: int) -> datetime:
    return datetime(*fields, tzinfo=UTC)


def spans(schedule: Schedule, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """The open spans between `start` and `end`, walked with `next_change` only."""
    found: list[tuple[datetime, datetime]] = []
    at = start
    opened = at if schedule.is_open(at) else None
    while at < end:
        change = schedule.next_change(at)
        assert change is not None and change > at
        assert schedule.is_open(change) != schedule.is_open(change - timedelta(microseconds=1))
        if opened is None:
            opened = change
        else:
            found.append((opened, change))
            opened = None
        at = change
    return [(a.astimezone(UTC), b.astimezone(UTC)) for a, b in found if a < end]


# --- parsing ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "days", "start", "end"), [
    ("Mon-Fri 08:00-18:00", {0, 1, 2, 3, 4}, 480, 1080),
    ("Sat 10:00-12:00", {5}, 600, 720),
    ("Mon,Wed 9:30-10:00", {0, 2}, 570, 600),
    ("mon, wed-thu 00:00-24:00", {0, 2, 3}, 0, 1440),
    ("Fri-Mon 22:00-02:00", {4, 5, 6, 0}, 1320, 120),
    ("Sunday 07:00 - 08:00", {6}, 420, 480),
    ("daily 22:00-02:00", set(range(7)), 1320, 120),
    ("* 06:00-07:00", set(range(7)), 360, 420),
    ("12:00-13:00", set(range(7)), 720, 780),
])
def test_a_window_is_read_as_days_and_minutes(text, days, start, end):
    window = parse_window(text)
    assert (set(window.days), window.start, window.end) == (days, start, end)


@pytest.mark.parametrize(("text", "message"), [
    ("Mnday 08:00-10:00", "unknown day 'Mnday' (did you mean 'Mon'?)"),
    ("Mon-Fro 08:00-10:00", "unknown day 'Fro' (did you mean 'Fri'?)"),
    ("weekdays 08:00-10:00", "unknown day 'weekdays'"),
    ("Mon 8-18", "is not a window: write '[days] HH:MM-HH:MM'"),
    ("Mon 08:00", "is not a window"),
    ("Mon 24:00-02:00", "24:00 is not a time of day (00:00 to 23:59)"),
    ("Mon 08:00-25:00", "25:00 is not a time of day (00:00 to 23:59, or 24:00 as an end)"),
    ("Mon 08:60-09:00", "08:60 is not a time of day"),
    ("Mon 08:00-08:00", "a window from 08:00 to 08:00 is empty (for a whole day write "
                        "00:00-24:00)"),
    ("Mon 00:00-00:00", "is empty"),
])
def test_a_bad_window_says_what_is_wrong(text, message):
    with pytest.raises(ValueError) as caught:
        parse_window(text)
    assert message in str(caught.value)


def test_bad_schedules_are_config_errors_with_their_paths():
    service = {"upstream": "http://127.0.0.1:9", "launcher": {"process": {"command": ["x"]}},
               "keep_warm": {"schedule": ["Mon-Fri 08:00-18:00", "Sat 10:00-26:00", "later"],
                             "timezone": "Europe/Berln", "lead": "-5s", "shedule": []}}
    with pytest.raises(ConfigError) as caught:
        parse_config({"services": {"x": service}}, env={})
    paths = [path for path, _ in caught.value.errors]
    assert paths == ["services.x.keep_warm.schedule[1]", "services.x.keep_warm.schedule[2]",
                     "services.x.keep_warm.timezone", "services.x.keep_warm.lead",
                     "services.x.keep_warm.shedule"]
    messages = dict(caught.value.errors)
    assert "unknown time zone 'Europe/Berln'" in messages["services.x.keep_warm.timezone"]
    assert "did you mean 'schedule'?" in messages["services.x.keep_warm.shedule"]


def test_keep_warm_stays_a_plain_boolean_too():
    service = {"upstream": "http://127.0.0.1:9", "launcher": {"process": {"command": ["x"]}}}
    config = parse_config({"services": {"x": service}}, env={"X_KEEP_WARM": "true"})
    assert config.services["x"].keep_warm is True
    assert config.services["x"].always_warm
    assert config.services["x"].warm_schedule is None


def test_the_lead_defaults_to_the_readiness_timeout():
    service = {"upstream": "http://127.0.0.1:9", "launcher": {"process": {"command": ["x"]}},
               "readiness": {"timeout": "90s"},
               "keep_warm": {"schedule": ["Mon 08:00-09:00"], "timezone": "UTC"}}
    schedule = parse_config({"services": {"x": service}}, env={}).services["x"].warm_schedule
    assert schedule is not None and schedule.lead == 90.0


# --- windows in time -------------------------------------------------------------------------

WORK = Schedule.parse(["Mon-Fri 08:00-18:00", "Sat 10:00-12:00"], "Europe/Berlin")


@pytest.mark.parametrize(("at", "is_open", "change"), [
    # Monday 2026-11-30, CET (UTC+1)
    (local(BERLIN, 2026, 11, 30, 7, 59), False, local(BERLIN, 2026, 11, 30, 8, 0)),
    (local(BERLIN, 2026, 11, 30, 8, 0), True, local(BERLIN, 2026, 11, 30, 18, 0)),
    (local(BERLIN, 2026, 11, 30, 17, 59, 59), True, local(BERLIN, 2026, 11, 30, 18, 0)),
    (local(BERLIN, 2026, 11, 30, 18, 0), False, local(BERLIN, 2026, 12, 1, 8, 0)),
    # Friday evening: the next opening is Saturday's short window, then Monday.
    (local(BERLIN, 2026, 12, 4, 18, 0), False, local(BERLIN, 2026, 12, 5, 10, 0)),
    (local(BERLIN, 2026, 12, 5, 11, 0), True, local(BERLIN, 2026, 12, 5, 12, 0)),
    (local(BERLIN, 2026, 12, 5, 12, 0), False, local(BERLIN, 2026, 12, 7, 8, 0)),
    (local(BERLIN, 2026, 12, 6, 9, 0), False, local(BERLIN, 2026, 12, 7, 8, 0)),
])
def test_is_open_and_next_change_across_a_week(at, is_open, change):
    assert WORK.is_open(at) is is_open
    assert WORK.next_change(at) == change


def test_the_answer_does_not_depend_on_the_zone_the_instant_is_given_in():
    at = local(BERLIN, 2026, 11, 30, 8, 30)
    assert WORK.is_open(at.astimezone(UTC)) and WORK.is_open(at.astimezone(NEW_YORK))
    assert WORK.next_change(at.astimezone(NEW_YORK)) == local(BERLIN, 2026, 11, 30, 18, 0)


def test_a_window_crossing_midnight_belongs_to_the_day_it_opens():
    late = Schedule.parse(["Fri 22:00-02:00"], "UTC")
    assert late.is_open(utc(2026, 12, 4, 23, 0))       # Friday
    assert late.is_open(utc(2026, 12, 5, 1, 59))       # early Saturday
    assert not late.is_open(utc(2026, 12, 5, 2, 0))
    assert not late.is_open(utc(2026, 12, 4, 1, 0))    # early Friday: Thursday had none
    assert late.next_change(utc(2026, 12, 5, 1, 0)) == utc(2026, 12, 5, 2, 0)
    assert late.next_change(utc(2026, 12, 5, 2, 0)) == utc(2026, 12, 11, 22, 0)


def test_24_00_ends_at_midnight_and_adjacent_windows_merge():
    evening = Schedule.parse(["Mon 18:00-24:00", "Tue 00:00-06:00"], "UTC")
    assert spans(evening, utc(2026, 11, 30), utc(2026, 12, 2)) == [
        (utc(2026, 11, 30, 18), utc(2026, 12, 1, 6))]


def test_a_schedule_open_all_week_never_changes():
    always = Schedule.parse(["daily 00:00-24:00"], "Europe/Berlin")
    assert always.is_open(utc(2026, 3, 29, 1, 30))
    assert always.next_change(utc(2026, 3, 29, 1, 30)) is None
    also = Schedule.parse(["Mon-Thu 00:00-24:00", "Fri-Sun 00:00-24:00"], "UTC")
    assert also.next_change(utc(2026, 12, 1)) is None


def test_a_schedule_open_all_week_but_one_hour_changes_within_the_week():
    almost = Schedule.parse(["Mon 01:00-24:00", "Tue-Sun 00:00-24:00"], "UTC")
    assert almost.next_change(utc(2026, 12, 1, 12)) == utc(2026, 12, 7, 0, 0)
    assert almost.next_change(utc(2026, 12, 7, 0, 30)) == utc(2026, 12, 7, 1, 0)


def test_the_lead_opens_each_window_early():
    led = Schedule.parse(["Mon-Fri 08:00-18:00"], "Europe/Berlin", lead=300)
    assert not led.is_open(local(BERLIN, 2026, 11, 30, 7, 54, 59))
    assert led.is_open(local(BERLIN, 2026, 11, 30, 7, 55))
    assert led.next_change(local(BERLIN, 2026, 11, 30, 7, 0)) == \
        local(BERLIN, 2026, 11, 30, 7, 55)
    assert led.next_change(local(BERLIN, 2026, 11, 30, 7, 55)) == \
        local(BERLIN, 2026, 11, 30, 18, 0)


def test_a_lead_longer_than_the_gap_between_windows_keeps_them_joined():
    led = Schedule.parse(["daily 08:00-18:00"], "UTC", lead=15 * 3600)
    assert led.next_change(utc(2026, 12, 1, 12)) is None


# --- DST -------------------------------------------------------------------------------------

def test_working_hours_keep_their_wall_clock_times_across_the_spring_change():
    # Berlin: 2026-03-29 02:00 CET → 03:00 CEST. Friday before: UTC+1, Monday after: UTC+2.
    assert spans(WORK, utc(2026, 3, 27), utc(2026, 3, 31)) == [
        (utc(2026, 3, 27, 7), utc(2026, 3, 27, 17)),
        (utc(2026, 3, 28, 9), utc(2026, 3, 28, 11)),
        (utc(2026, 3, 30, 6), utc(2026, 3, 30, 16)),
    ]


def test_working_hours_keep_their_wall_clock_times_across_the_autumn_change():
    # Berlin: 2026-10-25 03:00 CEST → 02:00 CET.
    assert spans(WORK, utc(2026, 10, 23), utc(2026, 10, 27)) == [
        (utc(2026, 10, 23, 6), utc(2026, 10, 23, 16)),
        (utc(2026, 10, 24, 8), utc(2026, 10, 24, 10)),
        (utc(2026, 10, 26, 7), utc(2026, 10, 26, 17)),
    ]


def test_a_window_spanning_the_spring_change_is_an_hour_shorter():
    night = Schedule.parse(["Sat 22:00-06:00"], "Europe/Berlin")
    (start, end), = spans(night, utc(2026, 3, 28), utc(2026, 3, 30))
    assert (start, end) == (utc(2026, 3, 28, 21), utc(2026, 3, 29, 4))
    assert end - start == timedelta(hours=7)


def test_a_window_spanning_the_autumn_change_is_an_hour_longer():
    night = Schedule.parse(["Sat 22:00-06:00"], "Europe/Berlin")
    (start, end), = spans(night, utc(2026, 10, 24), utc(2026, 10, 26))
    assert (start, end) == (utc(2026, 10, 24, 20), utc(2026, 10, 25, 5))
    assert end - start == timedelta(hours=9)


def test_a_time_the_clock_skips_is_the_moment_of_the_jump():
    # 02:30 never happens in Berlin on 2026-03-29: the clock goes from 02:00 CET to 03:00
    # CEST at 01:00 UTC. The window runs from then to 03:30 CEST.
    skipped = Schedule.parse(["Sun 02:30-03:30"], "Europe/Berlin")
    assert spans(skipped, utc(2026, 3, 28), utc(2026, 3, 30)) == [
        (utc(2026, 3, 29, 1), utc(2026, 3, 29, 1, 30))]
    # Wholly inside the gap: nothing that day; the next Sunday as usual.
    gone = Schedule.parse(["Sun 02:10-02:50"], "Europe/Berlin")
    assert gone.next_change(utc(2026, 3, 28)) == utc(2026, 4, 5, 0, 10)


def test_a_time_that_happens_twice_opens_at_its_first_and_closes_at_its_second():
    # 2026-10-25 in Berlin: 02:00-03:00 happens in CEST (00:00-01:00 UTC) and again in CET
    # (01:00-02:00 UTC).
    twice = Schedule.parse(["Sun 02:15-02:45"], "Europe/Berlin")
    assert spans(twice, utc(2026, 10, 24), utc(2026, 10, 26)) == [
        (utc(2026, 10, 25, 0, 15), utc(2026, 10, 25, 1, 45))]
    assert twice.is_open(local(BERLIN, 2026, 10, 25, 2, 30, fold=0))
    assert twice.is_open(local(BERLIN, 2026, 10, 25, 2, 30, fold=1))


def test_new_york_changes_on_its_own_dates():
    # US: 2026-03-08 02:00 EST → 03:00 EDT. Berlin has not changed yet that week.
    nine_to_five = Schedule.parse(["Mon 09:00-17:00"], "America/New_York")
    assert nine_to_five.next_change(utc(2026, 3, 3)) == utc(2026, 3, 9, 13)  # EDT
    assert nine_to_five.next_change(utc(2026, 3, 1)) == utc(2026, 3, 2, 14)  # EST


def test_posix_times_in_and_out():
    monday_eight = local(BERLIN, 2026, 11, 30, 8).timestamp()
    assert WORK.at(monday_eight - 1) == (False, monday_eight)
    assert WORK.at(monday_eight) == (True, monday_eight + 10 * 3600)


def test_the_default_zone_is_the_one_tz_names(monkeypatch):
    monkeypatch.setenv("TZ", ":America/New_York")
    assert local_zone_name() == "America/New_York"
    service = {"upstream": "http://127.0.0.1:9", "launcher": {"process": {"command": ["x"]}},
               "keep_warm": {"schedule": ["Mon 08:00-09:00"]}}
    config = parse_config({"services": {"x": service}}, env={})
    assert config.services["x"].keep_warm.timezone == "America/New_York"

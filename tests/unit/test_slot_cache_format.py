"""The cached doctor-day's format in Redis: what one release writes, the next reads."""

import datetime as dt
import json

from app.scheduling.slots import CachedSlot, TypeFacts, _CachedDay, _decoder, _encoder

DAY = dt.date(2027, 1, 11)
SLOTS = [
    CachedSlot(1799650800, "2027-01-11T09:00:00+01:00", "2027-01-11T09:30:00+01:00", False),
    CachedSlot(1799652600, "2027-01-11T09:30:00+01:00", "2027-01-11T10:00:00+01:00", True),
]
FOLLOW_UP = TypeFacts(7, "Follow-up", 10, 0, 5, True, None, 14)


def test_a_day_reads_back_as_written():
    value = _CachedDay("Europe/Berlin", SLOTS, "3", "1", FOLLOW_UP)
    raw = _encoder.encode(value)
    assert json.loads(raw) == {
        "tz": "Europe/Berlin",
        "s": [list(s) for s in SLOTS],
        "v": "3",
        "tv": "1",
        "t": [7, "Follow-up", 10, 0, 5, True, None, 14],
    }
    assert _decoder.decode(raw) == value
    assert _decoder.decode(raw).t.visit == (10, 0, 5)


def test_a_day_written_by_the_json_module_still_reads():
    # The format before msgspec wrote it, and before versions and visit types were kept
    # with it (a rolling deploy finds such values in Redis): read as of version "".
    old = json.dumps({"tz": "Europe/Berlin", "s": [list(s) for s in SLOTS]})
    day = _decoder.decode(old)
    assert day.tz == "Europe/Berlin" and day.s == SLOTS and (day.v, day.tv, day.t) == ("", "", None)
    assert day.s[1].taken is True and day.s[0].start.hour == 9

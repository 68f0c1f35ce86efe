"""The cached doctor-day's format in Redis: what one release writes, the next reads."""

import datetime as dt
import json

from app.scheduling.slots import CachedSlot, DaySlots, _decode, _encode

DAY = dt.date(2027, 1, 11)
SLOTS = [
    CachedSlot(1799650800, "2027-01-11T09:00:00+01:00", "2027-01-11T09:30:00+01:00", False),
    CachedSlot(1799652600, "2027-01-11T09:30:00+01:00", "2027-01-11T10:00:00+01:00", True),
]


def test_a_day_reads_back_as_written():
    raw = _encode("Europe/Berlin", DaySlots(DAY, SLOTS))
    assert json.loads(raw) == {"tz": "Europe/Berlin", "s": [list(s) for s in SLOTS]}
    assert _decode(DAY, raw) == ("Europe/Berlin", DaySlots(DAY, SLOTS))


def test_a_day_written_by_the_json_module_still_reads():
    # The format before msgspec wrote it (a rolling deploy finds such values in Redis).
    old = json.dumps({"tz": "Europe/Berlin", "s": [list(s) for s in SLOTS]})
    tz, day = _decode(DAY, old)
    assert tz == "Europe/Berlin" and day.slots == SLOTS
    assert day.slots[1].taken is True and day.slots[0].start.hour == 9

"""Time zones by name, each held for the life of the process.

`ZoneInfo(key)` keeps only the last eight zones it made; one that nothing else holds is
dropped and read again from the time zone database on its next use. With more clinic zones
than that in turn (the year-scale data has ten), about one look-up in five read a file
(bench/README.md, cpu17g). Every zone named here is kept, so `ZoneInfo(key)` anywhere in
the process finds it too. Clinics' zones are few and never change.
"""

from __future__ import annotations

from functools import cache
from zoneinfo import ZoneInfo


@cache
def zone(key: str) -> ZoneInfo:
    """The time zone `key` (an IANA name); ZoneInfoNotFoundError as `ZoneInfo` for none."""
    return ZoneInfo(key)

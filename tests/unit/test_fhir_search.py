"""FHIR search parsing (app/fhir/search.py): pure, so every rule is checked here."""

import datetime as dt

import pytest

from app.fhir.search import (
    MAX_COUNT,
    BadSearch,
    date_comparisons,
    parse,
    reference_ids,
    service_type_ids,
    wants_strict,
    window,
)

UTC = dt.UTC


def test_prefer_strict_is_read_from_any_position_and_spacing():
    assert wants_strict("handling=strict")
    assert wants_strict("return=minimal, handling = strict")
    assert not wants_strict("handling=lenient")
    assert not wants_strict(None)


def test_unknown_parameters_are_ignored_unless_strict():
    search = parse("Practitioner", [("colour", "blue"), ("name", "anna")], strict=False)
    assert search.ignored == ("colour",) and search.used == [("name", "anna")]
    with pytest.raises(BadSearch, match="colour"):
        parse("Practitioner", [("colour", "blue")], strict=True)
    with pytest.raises(BadSearch, match="modifier"):
        parse("Practitioner", [("name:exact", "anna")], strict=False)


def test_count_is_capped_and_offset_bounded():
    assert parse("Slot", [("_count", "100000")], strict=True).count == MAX_COUNT
    with pytest.raises(BadSearch):
        parse("Slot", [("_offset", "10001")], strict=True)
    with pytest.raises(BadSearch):
        parse("Slot", [("_count", "ten")], strict=True)


def test_commas_are_alternatives_and_repeats_narrow():
    search = parse(
        "Appointment", [("status", "booked,cancelled"), ("date", "ge2026-01-01")], strict=True
    )
    assert search.any_of("status") == ["booked", "cancelled"]
    twice = parse("Appointment", [("status", "booked"), ("status", "cancelled")], strict=True)
    with pytest.raises(BadSearch, match="once"):
        twice.any_of("status")


def test_a_day_is_the_clinics_local_day_across_daylight_saving():
    comparisons = date_comparisons([["2026-03-29"]], "start")  # Berlin springs forward
    lo, hi = window(comparisons, "Europe/Berlin")
    assert lo == dt.datetime(2026, 3, 28, 23, tzinfo=UTC)
    assert hi == dt.datetime(2026, 3, 29, 22, tzinfo=UTC)  # 23 hours
    lo, hi = window(
        date_comparisons([["ge2026-12-01"], ["lt2026-12-08"]], "start"), "America/New_York"
    )
    assert (lo, hi) == (
        dt.datetime(2026, 12, 1, 5, tzinfo=UTC),
        dt.datetime(2026, 12, 8, 5, tzinfo=UTC),
    )


def test_instants_keep_their_offset_and_strictness():
    ((op, moment),) = date_comparisons([["gt2026-12-01T09:00:00+01:00"]], "start")
    assert op == ">" and moment == dt.datetime(2026, 12, 1, 8, tzinfo=UTC)
    lo, _ = window([(op, moment)], "UTC")
    assert lo == moment + dt.timedelta(microseconds=1)
    for bad in ("2026-12-01T09:00", "ne2026-12-01", "ge2026-13-01", "yesterday", "ge3000-01-01"):
        with pytest.raises(BadSearch):
            date_comparisons([[bad]], "start")


def test_references_by_type_bare_or_absolute():
    refs = reference_ids(
        ["Practitioner/5", "https://x.example/fhir/R4/Location/7", "Practitioner/abc"],
        "actor",
        ["Practitioner", "Location"],
    )
    assert refs == {"Practitioner": [5], "Location": [7]}
    assert reference_ids(["12"], "schedule", ["Schedule"]) == {"Schedule": [12]}
    with pytest.raises(BadSearch, match="write the type"):
        reference_ids(["12"], "actor", ["Practitioner", "Location"])
    with pytest.raises(BadSearch, match="not Patient"):
        reference_ids(["Patient/1"], "schedule", ["Schedule"])
    assert reference_ids(None, "schedule", ["Schedule"]) is None


def test_service_types_as_reference_bare_id_or_token():
    values = [
        "HealthcareService/4",
        "5",
        "urn:medbook:fhir:healthcare-service|6",
        "|7",
        "https://x.example/fhir/R4/HealthcareService/8",
    ]
    assert service_type_ids(values) == [4, 5, 6, 7, 8]
    assert service_type_ids(None) is None
    with pytest.raises(BadSearch, match="the system is"):
        service_type_ids(["http://snomed.info/sct|123"])
    with pytest.raises(BadSearch, match="not Location"):
        service_type_ids(["Location/1"])
    # A parsed search names it as the Slot's and $find's own parameter.
    search = parse("Slot", [("service-type", "HealthcareService/4")], strict=True)
    assert search.any_of("service-type") == ["HealthcareService/4"]

"""services.platform.rpc.timestamp / set_timestamp give what Timestamp.FromDatetime gives, for every
kind of datetime: the arithmetic fast path for aware values, FromDatetime for the rest."""

from __future__ import annotations

import datetime as dt
import random
from zoneinfo import ZoneInfo

import pytest
from emma.market.v1 import market_pb2
from google.protobuf import timestamp_pb2

from services.platform.rpc import set_timestamp, timestamp, timestamp_or_none


def _reference(value: dt.datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


class _NoOffset(dt.tzinfo):
    """A tzinfo whose utcoffset is None: Python counts such a datetime as naive."""

    def utcoffset(self, _value: dt.datetime | None) -> None:
        return None

    def dst(self, _value: dt.datetime | None) -> None:
        return None

    def tzname(self, _value: dt.datetime | None) -> str:
        return "none"


ZONES: list[dt.tzinfo | None] = [
    dt.UTC,
    ZoneInfo("Europe/Madrid"),
    ZoneInfo("America/St_Johns"),
    dt.timezone(dt.timedelta(hours=-5, minutes=-30)),
    dt.timezone(dt.timedelta(hours=14)),
    _NoOffset(),
    None,
]


def test_same_as_from_datetime_across_the_range_and_zones() -> None:
    rng = random.Random(20261207)
    lowest, highest = -62_135_596_800 + 2 * 86_400, 253_402_300_799 - 2 * 86_400
    naive_epoch = dt.datetime(1970, 1, 1)
    checked = 0
    for _ in range(20_000):
        seconds = rng.choice([rng.randint(lowest, highest), rng.randint(-86_400, 86_400), rng.randint(0, 2**31)])
        value = naive_epoch + dt.timedelta(seconds=seconds, microseconds=rng.randint(0, 999_999))
        value = value.replace(tzinfo=rng.choice(ZONES), fold=rng.randint(0, 1))
        expected = _reference(value)
        assert timestamp(value) == expected, value
        field = market_pb2.TimeInterval()
        set_timestamp(field.start_time, value)
        assert field.start_time == expected and field.HasField("start_time"), value
        checked += 1
    assert checked == 20_000


@pytest.mark.parametrize(
    "value",
    [
        dt.datetime(1970, 1, 1, tzinfo=dt.UTC),  # all zero: the field is still set
        dt.datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=dt.UTC),
        dt.datetime(1, 1, 1, tzinfo=dt.UTC),
        dt.datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=dt.UTC),
        dt.datetime(2026, 3, 29, 1, 59, 59, tzinfo=ZoneInfo("Europe/Berlin")),
        dt.datetime(2026, 10, 25, 2, 30, fold=1, tzinfo=ZoneInfo("Europe/Berlin")),
    ],
)
def test_edges_of_the_range_and_of_daylight_saving(value: dt.datetime) -> None:
    assert timestamp(value) == _reference(value)
    holder = market_pb2.TimeInterval()
    set_timestamp(holder.end_time, value)
    assert holder.HasField("end_time") and holder.end_time == _reference(value)


@pytest.mark.parametrize(
    "value",
    [
        # 0001-01-01 00:00 at UTC+14 is before 0001-01-01 UTC, and the other end likewise: no Timestamp
        # holds them, and FromDatetime refuses them (OverflowError from its UTC time tuple).
        dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=14))),
        dt.datetime(9999, 12, 31, 23, tzinfo=dt.timezone(dt.timedelta(hours=-14))),
    ],
)
def test_outside_the_timestamp_range_is_refused_as_from_datetime_refuses_it(value: dt.datetime) -> None:
    with pytest.raises(OverflowError) as reference:
        _reference(value)
    with pytest.raises(OverflowError) as ours:
        timestamp(value)
    assert str(ours.value) == str(reference.value)


def test_none_stays_unset() -> None:
    assert timestamp_or_none(None) is None
    value = dt.datetime(2026, 12, 7, 3, 30, 15, 250_000, tzinfo=dt.UTC)
    out = timestamp_or_none(value)
    assert out is not None and (out.seconds, out.nanos) == (1_796_614_215, 250_000_000)

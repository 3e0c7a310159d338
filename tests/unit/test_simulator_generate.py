"""The generator without a database: determinism, text building, calendar, shapes."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid

import numpy as np
import pyarrow as pa
import pytest

from simulator import behaviour, cdnow, generate, load, web
from simulator import strings as s

END = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def digest(spec: generate.Spec) -> dict[str, str]:
    """md5 of every table's COPY payload, per table (parts concatenated)."""
    hashes: dict[str, hashlib._Hash] = {}
    for table in generate.tables(spec):
        h = hashes.setdefault(table.name, hashlib.md5())
        for chunk in table.copy_chunks():
            h.update(bytes(chunk))
    return {name: h.hexdigest() for name, h in hashes.items()}


def test_same_seed_same_bytes_different_seed_different_bytes():
    a = digest(generate.Spec(customers=300, days=60, seed=7, end=END))
    b = digest(generate.Spec(customers=300, days=60, seed=7, end=END))
    c = digest(generate.Spec(customers=300, days=60, seed=8, end=END))
    assert a == b
    assert set(a) == {
        "shop.products",
        "shop.customers",
        "shop.orders",
        "shop.order_items",
        "shop.carts",
        "shop.cart_items",
        "esp.email_events",
        "web.events",
        "simulator.customer_truth",
    }
    assert all(a[name] != c[name] for name in a)


def test_default_end_is_utc_midnight_today():
    end = generate.Spec().end
    now = dt.datetime.now(dt.UTC)
    assert end.tzinfo is not None and (end.hour, end.minute, end.second, end.microsecond) == (0, 0, 0, 0)
    assert dt.timedelta(0) <= now - end < dt.timedelta(days=1)


def test_products_scale_with_customers_within_bounds():
    assert generate.Spec(customers=300).products == 506
    assert generate.Spec(customers=20_000).products == 900
    assert generate.Spec(customers=100_000).products == 2000


def test_web_parts_cover_every_customer_once():
    people = _people(60_001)
    cal = behaviour.calendar(END, 30)
    parts = web.parts(people, cal)
    assert parts[0].start == 0 and parts[-1].stop == 60_001
    assert all(a.stop == b.start for a, b in zip(parts, parts[1:], strict=False))


def _people(n: int):
    from simulator import customers

    return customers.build(np.random.default_rng(0), n, behaviour.calendar(END, 30))


def test_black_friday_and_sales():
    assert behaviour.black_friday(2024) == dt.date(2024, 11, 29)
    assert behaviour.black_friday(2025) == dt.date(2025, 11, 28)
    assert behaviour.sale_on(dt.date(2024, 11, 29)).code == "BLACKFRIDAY25"
    assert behaviour.sale_on(dt.date(2024, 12, 2)).code == "CYBER20"
    assert behaviour.sale_on(dt.date(2024, 10, 2)) is None


def test_calendar_has_weekly_and_yearly_seasonality():
    cal = behaviour.calendar(END, 365)
    assert cal.ordinary.mean() == pytest.approx(1.0)
    dates = [cal.start.date() + dt.timedelta(days=i) for i in range(cal.days)]
    november = np.array([d.month == 11 for d in dates])
    june = np.array([d.month == 6 for d in dates])
    assert cal.ordinary[november].mean() > 1.3 * cal.ordinary[june].mean()
    bf = dates.index(behaviour.black_friday(2024))
    assert cal.ordinary[bf] > 2 * cal.ordinary[bf - 7]
    assert cal.sale_hungry[bf] > cal.ordinary[bf]  # bargain hunters react more to sales


def test_sample_times_stay_in_bounds():
    cal = behaviour.calendar(END, 90)
    rng = np.random.default_rng(1)
    lo = np.full(10_000, cal.start_epoch + 86400 * 10)
    hi = lo + 86400 * 3
    t = behaviour.sample_times(rng, cal.ordinary, cal, lo, hi, rng.integers(-8, 10, 10_000))
    assert (t >= lo).all() and (t < hi).all()


def test_hex_and_uuids():
    assert [bytes(r).decode() for r in s.hex_digits(np.array([0, 255, 0xABCDEF], dtype=np.uint64), 6)] == [
        "000000",
        "0000ff",
        "abcdef",
    ]
    anonymous = s.uuids(np.random.default_rng(0), 1000).to_pylist()
    assert all(str(uuid.UUID(i)) == i and uuid.UUID(i).version == 4 for i in anonymous)


def test_ordered_uuids_are_unique_and_increase_across_ranges():
    rng = np.random.default_rng(0)
    ids = s.ordered_uuids(rng, 200_000).to_pylist() + s.ordered_uuids(rng, 1000, first=200_000).to_pylist()
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(str(uuid.UUID(i)) == i and uuid.UUID(i).variant == uuid.RFC_4122 for i in ids[:1000])
    with pytest.raises(ValueError):
        s.ordered_uuids(rng, 10, first=s.ORDERED_ROWS_MAX)


def test_mix52_is_a_bijection_on_a_range():
    x = s.mix52(np.arange(1 << 18, dtype=np.uint64), salt=99)
    assert len(np.unique(x)) == 1 << 18


def test_money_is_exact():
    assert s.money(np.array([0, 5, 99, 100, 123456, -250])).to_pylist() == [
        "0.00",
        "0.05",
        "0.99",
        "1.00",
        "1234.56",
        "-2.50",
    ]


def test_text_copy_payload_escapes_nulls_and_ends_lines():
    table = load.Table("t", {"a": pa.array(["x", None]), "b": np.array([0, 1500], dtype="datetime64[ms]")})
    payload = b"".join(bytes(c) for c in table.copy_chunks())
    assert payload == b"x\t1970-01-01 00:00:00.000\n\\N\t1970-01-01 00:00:01.500\n"


def test_binary_copy_payload_layout():
    table = load.Table(
        "t",
        {
            "a": pa.array(["hi", None]),
            "j": pa.array(["{}", "[1]"]),
            "t": np.array([0, 1], dtype="datetime64[s]"),
        },
        binary=True,
        jsonb=frozenset({"j"}),
    )
    payload = b"".join(bytes(c) for c in table.copy_chunks())
    assert payload.startswith(load.BINARY_HEADER) and payload.endswith(load.BINARY_TRAILER)
    body = payload[len(load.BINARY_HEADER) : -2]
    micros = lambda sec: (sec * 1_000_000 - load.PG_EPOCH_MICROS).to_bytes(8, "big", signed=True)  # noqa: E731
    row1 = b"\x00\x03" + b"\x00\x00\x00\x02hi" + b"\x00\x00\x00\x03\x01{}" + b"\x00\x00\x00\x08" + micros(0)
    row2 = b"\x00\x03" + b"\xff\xff\xff\xff" + b"\x00\x00\x00\x04\x01[1]" + b"\x00\x00\x00\x08" + micros(1)
    assert body == row1 + row2


def test_cdnow_files_parse_as_documented():
    customer, date, cds, cents = cdnow.read(sample=True)
    assert len(customer) == 6919 and len(np.unique(customer)) == 2357
    customer, date, cds, cents = cdnow.read(sample=False)
    assert len(customer) == 69_659 and len(np.unique(customer)) == 23_570
    assert date.min() == np.datetime64("1997-01-01") and date.max() <= np.datetime64("1998-06-30")
    assert (cds > 0).all() and (cents >= 0).all()

"""The generated fast checks agree with the plain converters, cell for cell.

``compile_fast_check`` must never accept what a converter refuses nor store a
value differently; whatever it does not handle goes to the converters. These
tests throw ordinary and hostile values at both and compare.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.import_columns import SCHEMAS, RowError, RowPlan, compile_fast_check
from engine.import_rows import BatchValidator, ValidatedBatch, receive_batches, serve_batches

MERCHANT_ROW = {
    "external_id": "m0000042",
    "email": " Owner42@Toko42.ID ",
    "name": "Pemilik 42",
    "store_name": "Toko 42",
    "store_url": "",
    "plan": "pro",
    "category": "fashion",
    "city": "Jakarta",
    "locale": "id",
    "timezone": "Asia/Makassar",
    "status": "",
    "created_at": "2025-03-04T10:00:00+07:00",
    "last_login_at": "2026-11-01T08:00:00.250Z",
    "attributes": '{"tier": "gold", "products": 7}',
}


def slow(plan: RowPlan, row, sqlite: bool):
    """What the plain converters make of ``row``: stored values, or the RowError text."""
    try:
        return plan.stored(plan.validate(row), sqlite)
    except RowError as exc:
        return f"rejected: {exc}"


def fast(check, row):
    try:
        return check(row)
    except Exception:
        return None  # not handled: the converters decide


def agree(kind: str, columns: tuple[str, ...], row, sqlite: bool) -> None:
    plan = RowPlan.build(SCHEMAS[kind], columns)
    got = fast(compile_fast_check(plan, sqlite), row)
    want = slow(plan, row, sqlite)
    if got is not None:
        assert got == want, (row, got, want)


@pytest.mark.parametrize("sqlite", [True, False])
def test_an_ordinary_csv_row_takes_the_fast_path_and_matches(sqlite):
    columns = tuple(MERCHANT_ROW)
    row = list(MERCHANT_ROW.values())
    plan = RowPlan.build(SCHEMAS["merchants"], columns)
    stored = compile_fast_check(plan, sqlite)(row)  # no fallback for the common case
    assert stored == slow(plan, row, sqlite)
    values = dict(zip(columns, stored, strict=True))
    assert values["email"] == "owner42@toko42.id"
    assert values["store_url"] is None and values["status"] is None
    if sqlite:
        assert values["created_at"] == "2025-03-04 03:00:00.000000"
        assert values["last_login_at"] == "2026-11-01 08:00:00.250000"
        assert values["attributes"] == MERCHANT_ROW["attributes"]
    else:
        assert values["created_at"] == datetime(2025, 3, 4, 3, 0)
        assert values["attributes"] == {"tier": "gold", "products": 7}


def _datetimes():
    zones = st.one_of(
        st.none(),
        st.just(UTC),
        st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m))),
    )
    return st.builds(
        lambda d, tz, sep, spec: d.replace(tzinfo=tz).isoformat(sep, spec),
        st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
        zones,
        st.sampled_from("T "),
        st.sampled_from(["auto", "seconds", "milliseconds", "minutes"]),
    )


ANY_CELL = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", " ", "id", "en", "fr", "Asia/Jakarta", "asia/jakarta", "UTC", "paid"]),
    _datetimes(),
    _datetimes().map(lambda s: f" {s} "),
    _datetimes().map(lambda s: s.replace("+00:00", "Z")),
    st.sampled_from(["2025-02-30", "2025-01-01T24:00:00", "2025-13-01", "20250101", "2025-W01"]),
    st.from_regex(r"[ A-Za-z0-9._%+-]{0,70}@[A-Za-z0-9.-]{0,12}\.[A-Za-z]{0,3} ?", fullmatch=True),
    st.sampled_from(['{"a": 1}', "[]", "{}", "null", '"{}"', "{bad", " {} ", '{"a": NaN}']),
    st.integers(-5, 10**16).map(str),
    st.sampled_from(["1.5", "1e3", " 12 ", "-0", "x" * 101, "y" * 501]),
)
JSON_CELL = st.one_of(
    ANY_CELL,
    st.none(),
    st.integers(-5, 10**16),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _good(column: str):
    """Values a real file holds for ``column``, so that one odd cell decides the outcome."""
    if column == "email":
        return st.from_regex(
            r"[a-zA-Z0-9._+-]{1,20}@[a-z0-9]{1,10}\.(id|com|co\.id)", fullmatch=True
        )
    if column == "locale":
        return st.sampled_from(["id", "en", ""])
    if column == "timezone":
        return st.sampled_from(["Asia/Jakarta", "Asia/Makassar", "Asia/Jayapura", "UTC", ""])
    if column in ("created_at", "last_login_at", "placed_at", "occurred_at"):
        return _datetimes()
    if column == "attributes":
        return st.dictionaries(st.text(max_size=4), st.integers() | st.text(max_size=4)).map(
            json.dumps
        )
    if column == "amount":
        return st.integers(0, 10**15).map(str)
    if column == "status":
        return st.sampled_from(["paid", "cancelled", "refunded", "active"])
    return st.text(min_size=1, max_size=20).filter(str.strip)


def _rows(data, odd_cells):
    kind = data.draw(st.sampled_from(sorted(SCHEMAS)))
    columns = tuple(data.draw(st.permutations(SCHEMAS[kind].names)))
    row = [data.draw(_good(c), label=c) for c in columns]
    odd = data.draw(st.integers(-1, len(columns) - 1), label="odd column")
    if odd >= 0:
        row[odd] = data.draw(odd_cells, label=f"odd {columns[odd]}")
    return kind, columns, row


@settings(max_examples=250, deadline=None)
@given(data=st.data(), sqlite=st.booleans())
def test_csv_rows_agree_with_the_converters(data, sqlite):
    agree(*_rows(data, ANY_CELL), sqlite)


@settings(max_examples=250, deadline=None)
@given(data=st.data(), sqlite=st.booleans())
def test_json_lines_values_agree_with_the_converters(data, sqlite):
    agree(*_rows(data, JSON_CELL), sqlite)


@pytest.mark.parametrize(
    "cell, column",
    [
        ("2025-03-04T10:00:00.000001-09:30", "created_at"),
        ("2025-03-04 10:00", "created_at"),
        ("2025-03-04", "last_login_at"),
        ("0001-01-01T00:00:00+00:00", "created_at"),
        ("0001-01-01T00:00:00+01:00", "created_at"),
        ("9999-12-31T23:59:59-01:00", "last_login_at"),
        ("1900-01-01T00:00:00+07:00", "created_at"),
        ("2200-12-31T23:59:59.999999", "created_at"),
        ("2201-01-01", "created_at"),
        ('{"a": "\\u0000"}', "attributes"),
        ('{"a": "\\ud800"}', "attributes"),
        ('{"a": "\\ud83d\\ude00"}', "attributes"),
        ('{"a": Infinity}', "attributes"),
        ('{"a": ' + "[" * 63 + "]" * 63 + "}", "attributes"),
        ('{"a": ' + "[" * 64 + "]" * 64 + "}", "attributes"),
        ('{"a": ' + "1" * 5000 + "}", "attributes"),
        (" Budi@Example.ID", "email"),
        ("a" * 65 + "@example.id", "email"),
        ("budi@example", "email"),
        ('{"a": [1, 2]}', "attributes"),
        ("[1]", "attributes"),
        ("x" * 101, "external_id"),
        ("fr", "locale"),
        ("Mars/Olympus", "timezone"),
        ("", "timezone"),
    ],
)
@pytest.mark.parametrize("sqlite", [True, False])
def test_edge_cells_agree(cell, column, sqlite):
    columns = tuple(dict.fromkeys(("external_id", "email", column)))  # each column once
    row = {"external_id": "m1", "email": "a@b.id", column: cell}
    agree("merchants", columns, [row[c] for c in columns], sqlite)


def test_a_validator_falls_back_and_names_the_column():
    validator = BatchValidator("orders", sqlite=True)
    columns = ("merchant_external_id", "order_ref", "amount", "status", "placed_at")
    batch = ValidatedBatch(
        [
            (2, columns, ["m1", "INV-1", "1000", "paid", "2026-11-01T09:30:00+07:00"]),
            (3, columns, ["m1", "INV-2", "1.5", "paid", "2026-11-01"]),
            (4, columns, ["m1", "INV-3", "7", "lost", "2026-11-01"]),
        ],
        [],
        3,
        0,
        validated=False,
    )
    done = validator.validate(batch)
    assert done.rows == [(2, columns, ("m1", "INV-1", 1000, "paid", "2026-11-01 02:30:00.000000"))]
    assert [line for line, _ in done.rejected] == [3, 4]
    assert done.rejected[0][1].startswith("amount: ")
    assert done.rejected[1][1].startswith("status: ")


@pytest.mark.parametrize("sqlite", [True, False])
def test_batches_cross_the_pipe_unchanged(tmp_path, sqlite):
    path = tmp_path / "m.csv"
    lines = ["external_id,email,created_at,attributes"]
    lines += [
        f'm{i},m{i}@toko.id,2026-01-0{1 + i % 9}T10:00:00Z,"{{""n"": {i}}}"' for i in range(7)
    ]
    lines.append("m99,broken,2026-01-01,")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    pipe = io.BytesIO()
    serve_batches(path, "merchants", 3, sqlite, (1, 2), pipe)
    pipe.seek(0)
    received = list(receive_batches(pipe, sqlite))
    validator = BatchValidator("merchants", sqlite)
    rows = [row for batch in received for row in validator.validate(batch).rows]
    assert [validated for validated in (b.validated for b in received)] == [True, False, True]
    assert len(rows) == 7 and rows[0][2][0] == "m0"
    assert json.loads(rows[6][2][3] if sqlite else json.dumps(rows[6][2][3])) == {"n": 6}
    assert sum(b.read for b in received) == 8


def test_a_refused_file_crosses_the_pipe_as_one_sentence(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("external_id,colour\n", encoding="utf-8")
    pipe = io.BytesIO()
    serve_batches(path, "merchants", 3, True, (1, 2), pipe)
    pipe.seek(0)
    assert list(receive_batches(pipe, True)) == [
        f"{path}:1: unknown column 'colour' for merchants (valid columns: "
        + ", ".join(SCHEMAS["merchants"].names)
        + ")"
    ]

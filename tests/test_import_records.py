"""``import_records`` (rows in memory, the events API) on both backends.

The same checks as ``campaign import`` (a JSON Lines file of the same rows is
accepted and rejected row for row alike), merchants before orders, one
transaction, upserts, and hostile values that are rejected rows, never errors.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import DataImportError
from engine.import_records import import_records
from engine.importer import import_file
from engine.models import activities, merchants, orders

NOW = datetime(2026, 12, 1, 9, 0)


def rows(engine, table):
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(table).order_by(table.c.id))]


def body():
    return {
        "orders": [
            {
                "merchant_external_id": "r1",
                "order_ref": "A-1",
                "amount": 150000,
                "status": "paid",
                "placed_at": "2026-11-30T10:00:00+07:00",
            },
            {"merchant_external_id": "r1", "order_ref": "A-2", "amount": -1, "status": "paid"},
            {
                "merchant_external_id": "nobody",
                "order_ref": "A-3",
                "amount": 1,
                "status": "paid",
                "placed_at": "2026-11-30",
            },
        ],
        "merchants": [
            {"external_id": "r1", "email": "R1@Example.ID", "attributes": {"tier": "gold"}},
            {"external_id": "r2", "email": "not-an-email"},
            "not an object",
            {"external_id": "r3", "email": "r3@example.id", "created_at": "2025-01-02T03:04:05Z"},
        ],
        "activities": [
            {"merchant_external_id": "r3", "kind": "login", "occurred_at": "2026-11-30T08:00Z"},
        ],
    }


def test_merchants_first_then_orders_each_bad_row_with_its_index(engine):
    report = import_records(engine, body(), now=NOW)
    result = report.as_dict()
    assert result["merchants"]["accepted"] == 2
    assert [r["index"] for r in result["merchants"]["rejected"]] == [1, 2]
    assert "not a valid email" in result["merchants"]["rejected"][0]["reason"]
    assert "JSON object" in result["merchants"]["rejected"][1]["reason"]
    # The order of r1 names a merchant created by this very call.
    assert result["orders"]["accepted"] == 1
    reasons = {r["index"]: r["reason"] for r in result["orders"]["rejected"]}
    assert set(reasons) == {1, 2}
    assert "missing required column 'placed_at'" in reasons[1]
    assert reasons[2] == "unknown merchant 'nobody'"
    assert result["activities"] == {"accepted": 1, "rejected": [], "warnings": []}
    assert report.accepted == 4 and report.rejected_count == 4 and not report.all_rejected

    stored = {m["external_id"]: m for m in rows(engine, merchants)}
    assert set(stored) == {"r1", "r3"}
    assert stored["r1"]["email"] == "r1@example.id"
    assert stored["r1"]["attributes"] == {"tier": "gold"}
    assert stored["r1"]["created_at"] == NOW  # created now, by the caller's clock
    assert stored["r3"]["created_at"] == datetime(2025, 1, 2, 3, 4, 5)
    assert [(o["order_ref"], o["placed_at"]) for o in rows(engine, orders)] == [
        ("A-1", datetime(2026, 11, 30, 3, 0))
    ]
    assert len(rows(engine, activities)) == 1


def test_a_retry_of_the_same_body_changes_nothing(engine):
    first = import_records(engine, body(), now=NOW)
    before = [rows(engine, t) for t in (merchants, orders, activities)]
    again = import_records(engine, body(), now=NOW + timedelta(hours=1))
    assert again.as_dict() == first.as_dict()
    assert [rows(engine, t) for t in (merchants, orders, activities)] == before


def test_an_update_keeps_what_the_row_does_not_give(engine):
    import_records(engine, body(), now=NOW)
    later = NOW + timedelta(days=3)
    report = import_records(
        engine, {"merchants": [{"external_id": "r1", "email": "new@example.id"}]}, now=later
    )
    assert report.kinds["merchants"].accepted == 1
    r1 = rows(engine, merchants)[0]
    assert r1["email"] == "new@example.id"
    assert r1["created_at"] == NOW and r1["attributes"] == {"tier": "gold"}


def test_a_key_given_twice_is_counted_once_and_the_later_row_wins(engine):
    report = import_records(
        engine,
        {
            "merchants": [
                {"external_id": "d1", "email": "first@example.id", "city": "Medan"},
                {"external_id": "d2", "email": "d2@example.id"},
                {"external_id": "d1", "email": "second@example.id"},
            ],
            "orders": [
                {
                    "merchant_external_id": "d1",
                    "order_ref": "X",
                    "amount": 1,
                    "status": "paid",
                    "placed_at": "2026-11-01",
                },
                {
                    "merchant_external_id": "d1",
                    "order_ref": "X",
                    "amount": 2,
                    "status": "refunded",
                    "placed_at": "2026-11-01",
                },
            ],
        },
        now=NOW,
    )
    merchants_result, orders_result = report.kinds["merchants"], report.kinds["orders"]
    assert merchants_result.accepted == 2 and orders_result.accepted == 1
    assert [(w.index, w.reason) for w in merchants_result.warnings] == [
        (2, "external_id 'd1' is also on row 0: counted once, this later row wins")
    ]
    assert [w.index for w in orders_result.warnings] == [1]
    assert "order 'X' of merchant 'd1' is also on row 0" in orders_result.warnings[0].reason
    d1 = rows(engine, merchants)[0]
    assert d1["email"] == "second@example.id" and d1["city"] == "Medan"
    assert [(o["amount"], o["status"]) for o in rows(engine, orders)] == [(2, "refunded")]


def _fail_on_order_ref(engine, ref: str) -> None:
    """A real trigger that makes the database refuse one order: a failure mid-write."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse BEFORE INSERT ON orders "
                f"WHEN NEW.order_ref = '{ref}' BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        else:
            conn.exec_driver_sql(
                "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN "
                f"IF NEW.order_ref = '{ref}' THEN RAISE EXCEPTION 'refused'; END IF; "
                "RETURN NEW; END $$ LANGUAGE plpgsql"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION refuse()"
            )


def test_nothing_is_half_written_when_the_database_fails(engine):
    _fail_on_order_ref(engine, "A-1")
    with pytest.raises(sa.exc.DatabaseError, match="refused"):
        import_records(engine, body(), now=NOW)
    assert [rows(engine, t) for t in (merchants, orders, activities)] == [[], [], []]


@pytest.mark.parametrize(
    "records, message",
    [
        ([], "expected an object with the lists merchants, orders, activities, got list"),
        ({"merchant": []}, "unknown key 'merchant'"),
        ({"orders": {"order_ref": "x"}}, "orders must be a list of objects"),
    ],
)
def test_a_body_of_the_wrong_shape_is_one_error_and_writes_nothing(engine, records, message):
    with pytest.raises(DataImportError, match=message):
        import_records(
            engine,
            {"merchants": body()["merchants"], **records} if isinstance(records, dict) else records,
            now=NOW,
        )
    assert rows(engine, merchants) == []


def test_values_that_would_fail_later_are_rejected_rows(engine):
    merchant_rows = [
        {"external_id": "h0", "email": "h0@example.id", "created_at": "9999-12-31"},
        {"external_id": "h1", "email": "h1@example.id", "last_login_at": "0001-01-01T00:00+01:00"},
        {"external_id": "h2", "email": "h2@example.id", "name": "nul\x00byte"},
        {"external_id": "h3", "email": "h3@example.id", "name": "half \ud800 pair"},
        {"external_id": "h4", "email": "h4@example.id", "attributes": {"x": float("nan")}},
        {"external_id": "h5", "email": "h5@example.id", "attributes": {"x": ["\x00"]}},
        {"external_id": "h6", "email": "h6@example.id", "name": 10**5000},
        {"external_id": "h7", "email": "h7@example.id", "attributes": '{"n": 1' + "0" * 5000 + "}"},
        {"external_id": "h8", "email": "h8@example.id", "attributes": {"x": datetime(2026, 1, 1)}},
        {"external_id": "h9", "email": "h9@example.id", "name": True},
        {"external_id": "ok", "email": "ok@example.id", "created_at": "1900-01-01T00:00:00"},
    ]
    for depth in (64, 5000):  # as deep as is stored; deeper than any recursion would go
        attributes = inner = {}
        for _ in range(depth - 1):
            inner["a"] = {}
            inner = inner["a"]
        merchant_rows.append(
            {"external_id": f"deep{depth}", "email": "d@example.id", "attributes": attributes}
        )
    order_rows = [
        {
            "merchant_external_id": "ok",
            "order_ref": "o1",
            "amount": 10**30,
            "status": "paid",
            "placed_at": "2026-01-01",
        },
        {
            "merchant_external_id": "ok",
            "order_ref": "o2",
            "amount": "9" * 5000,
            "status": "paid",
            "placed_at": "2026-01-01",
        },
        {
            "merchant_external_id": "ok",
            "order_ref": "o3",
            "amount": float("inf"),
            "status": "paid",
            "placed_at": "2026-01-01",
        },
        {
            "merchant_external_id": "ok",
            "order_ref": "o4",
            "amount": 5,
            "status": ["paid"],
            "placed_at": "2201-01-01",
        },
    ]
    report = import_records(engine, {"merchants": merchant_rows, "orders": order_rows}, now=NOW)
    rejected = {r.index: r.reason for r in report.kinds["merchants"].rejected}
    assert sorted(rejected) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12]
    assert "outside the years 1900-2200" in rejected[0] and "outside" in rejected[1]
    assert "NUL" in rejected[2] and "surrogate" in rejected[3]
    assert "NaN" in rejected[4] or "nan" in rejected[4]
    assert "NUL" in rejected[5] and "longer than" in rejected[6]
    assert "not valid JSON" in rejected[7] and "datetime is not a JSON value" in rejected[8]
    assert "expected text, got bool" in rejected[9]
    assert "nested deeper than 64 levels" in rejected[12]
    assert report.kinds["merchants"].accepted == 2  # ok, and the object 64 levels deep
    assert len(report.kinds["orders"].rejected) == 4 and report.kinds["orders"].accepted == 0
    assert all(len(r.reason) < 300 for r in report.kinds["orders"].rejected)


# --- hostile values: never an exception; the same verdict as a JSON Lines file ----

HOSTILE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**18, max_value=10**40),
    st.floats(),
    st.text(max_size=20),
    st.text(alphabet=st.characters(codec=None, categories=["Cs", "Cc"]), max_size=5),
    st.sampled_from(
        [
            "2026-11-30T10:00:00+07:00",
            "9999-12-31",
            "0001-01-01T00:00:00+05:00",
            "1899-12-31T23:59:59",
            "2200-12-31T23:59:59-12:00",
            "2025-02-30",
            "a@b.id",
            "id",
            "Asia/Jakarta",
            "paid",
            '{"a": 1}',
            '{"a": NaN}',
            '{"a": "\\u0000"}',
            "1e3",
        ]
    ),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers() | st.floats() | st.text(max_size=3)),
)
COLUMNS = {
    "merchants": [
        "email",
        "name",
        "store_url",
        "locale",
        "timezone",
        "status",
        "created_at",
        "last_login_at",
        "attributes",
        "colour",
    ],
    "orders": ["order_ref", "amount", "status", "placed_at"],
}


@st.composite
def hostile_rows(draw, kind):
    out = []
    for index in range(draw(st.integers(1, 6))):
        row = (
            {"external_id": f"h{index}"}
            if kind == "merchants"
            else {
                "merchant_external_id": "base",
                "order_ref": f"o{index}",
                "amount": 1,
                "status": "paid",
                "placed_at": "2026-11-01",
            }
        )
        if kind == "merchants":
            row["email"] = f"h{index}@example.id"
        for column in draw(st.lists(st.sampled_from(COLUMNS[kind]), max_size=3, unique=True)):
            row[column] = draw(HOSTILE)
        if draw(st.booleans()) and draw(st.booleans()):
            row = draw(HOSTILE)  # not even an object
        out.append(row)
    return out


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(kind=st.sampled_from(["merchants", "orders"]), data=st.data())
def test_hostile_values_are_rejected_rows_with_the_verdict_of_a_file(engine, tmp_path, kind, data):
    import_records(
        engine, {"merchants": [{"external_id": "base", "email": "b@example.id"}]}, now=NOW
    )
    given_rows = data.draw(hostile_rows(kind))
    report = import_records(engine, {kind: given_rows}, now=NOW)
    result = report.kinds[kind]
    rejected = [r.index for r in result.rejected]
    assert len(set(rejected)) == len(rejected)
    assert result.accepted + len(rejected) == len(given_rows)
    assert all(len(r.reason) < 400 for r in result.rejected)

    # The same rows as a JSON Lines file (as the events API's client would send
    # them: JSON text), imported as a file: the same rows rejected.
    try:
        lines = [json.dumps(row) for row in given_rows]
    except (TypeError, ValueError):
        return
    path = tmp_path / f"{kind}.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    file_report = import_file(engine, kind, path)
    assert sorted(r.line - 1 for r in file_report.rejected) == rejected
    assert file_report.imported == result.accepted

    stored = {m["external_id"] for m in rows(engine, merchants)}
    accepted = [r for i, r in enumerate(given_rows) if i not in set(rejected)]
    if kind == "merchants":
        assert {r["external_id"] for r in accepted} <= stored


def test_an_aware_now_is_taken_as_utc(engine):
    wib = timezone(timedelta(hours=7))
    import_records(
        engine,
        {"merchants": [{"external_id": "z", "email": "z@example.id"}]},
        now=datetime(2026, 12, 1, 16, 0, tzinfo=wib),
    )
    assert rows(engine, merchants)[0]["created_at"] == datetime(2026, 12, 1, 9, 0)
    assert datetime(2026, 12, 1, 9, 0, tzinfo=UTC).replace(tzinfo=None) == NOW


def test_a_call_of_only_bad_rows_is_all_rejected_and_writes_nothing(engine):
    report = import_records(
        engine,
        {"merchants": [{"external_id": "x"}], "orders": [{"order_ref": "y"}], "activities": []},
        now=NOW,
    )
    assert report.all_rejected and report.accepted == 0 and report.rejected_count == 2
    assert report.as_dict()["activities"] == {"accepted": 0, "rejected": [], "warnings": []}
    assert rows(engine, merchants) == [] and rows(engine, orders) == []
    assert not import_records(engine, {}, now=NOW).all_rejected  # nothing given, nothing refused

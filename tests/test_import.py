"""``campaign import`` on both backends: validation, upserts, line numbers, no half rows."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from engine.cli import cli
from engine.errors import DataImportError
from engine.importer import import_file
from engine.models import activities, merchants, orders

MERCHANTS_CSV = """external_id,email,name,store_name,plan,city,locale,timezone,created_at,attributes
m1,Budi@Example.ID,Budi Santoso,Toko Budi,basic,Jakarta,id,Asia/Jakarta,2025-01-05T10:00:00+07:00,"{""tier"": ""gold""}"
m2,siti@example.id,Siti,Batik Siti,pro,Denpasar,en,Asia/Makassar,2025-02-01,
m3,not-an-email,Bad,Bad Store,basic,Jakarta,id,Asia/Jakarta,2025-01-01,
m4,ok4@example.id,Tz,Tz Store,basic,Jakarta,id,Asia/Bandung,2025-01-01,
m5,ok5@example.id,Loc,Loc Store,basic,Jakarta,fr,Asia/Jakarta,2025-01-01,
m6,ok6@example.id,Date,Date Store,basic,Jakarta,id,Asia/Jakarta,yesterday,
m7,ok7@example.id,Json,Json Store,basic,Jakarta,id,Asia/Jakarta,2025-01-01,"{""tier"": "
m8,,Empty,Empty Store,basic,Jakarta,id,Asia/Jakarta,2025-01-01,
"""

ORDERS_CSV = """merchant_external_id,order_ref,amount,status,placed_at
m1,INV-1,150000,paid,2026-11-01T09:30:00+07:00
m1,INV-2,-5,paid,2026-11-02T09:30:00Z
m1,INV-3,1500.5,paid,2026-11-02T09:30:00Z
m2,INV-1,99000,refunded,2026-11-03T00:00:00
nobody,INV-9,1000,paid,2026-11-03T00:00:00
m2,INV-4,1000,lost,2026-11-03T00:00:00
m2,INV-5,1000,paid,32/13/2026
"""


def rows(engine, table):
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(table).order_by(table.c.id))]


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_merchants_csv_rejects_each_bad_row_with_its_line(engine, tmp_path):
    path = write(tmp_path, "merchants.csv", MERCHANTS_CSV)
    report = import_file(engine, "merchants", path)
    assert report.read == 8
    assert report.imported == 2
    reasons = {r.line: r.reason for r in report.rejected}
    assert set(reasons) == {4, 5, 6, 7, 8, 9}
    assert "not a valid email" in reasons[4]
    assert "Asia/Bandung" in reasons[5] and "time zone" in reasons[5]
    assert "locale 'fr'" in reasons[6]
    assert "yesterday" in reasons[7] and "ISO 8601" in reasons[7]
    assert "attributes is not valid JSON" in reasons[8]
    assert "email" in reasons[9] and "empty" in reasons[9]
    stored = rows(engine, merchants)
    assert [m["external_id"] for m in stored] == ["m1", "m2"]
    budi = stored[0]
    assert budi["email"] == "budi@example.id"  # lower-cased
    assert budi["created_at"] == datetime(2025, 1, 5, 3, 0)  # +07:00 → UTC
    assert budi["attributes"] == {"tier": "gold"}
    assert stored[1]["attributes"] == {}
    assert stored[1]["locale"] == "en" and stored[1]["timezone"] == "Asia/Makassar"


def test_reimport_is_a_no_op(engine, tmp_path):
    m = write(tmp_path, "merchants.csv", MERCHANTS_CSV)
    o = write(tmp_path, "orders.csv", ORDERS_CSV)
    import_file(engine, "merchants", m)
    import_file(engine, "orders", o)
    before = (rows(engine, merchants), rows(engine, orders))
    import_file(engine, "merchants", m)
    import_file(engine, "orders", o)
    assert (rows(engine, merchants), rows(engine, orders)) == before


def test_orders_validation_and_unknown_merchant(engine, tmp_path):
    import_file(engine, "merchants", write(tmp_path, "merchants.csv", MERCHANTS_CSV))
    report = import_file(engine, "orders", write(tmp_path, "orders.csv", ORDERS_CSV))
    reasons = {r.line: r.reason for r in report.rejected}
    assert set(reasons) == {3, 4, 6, 7, 8}
    assert "negative" in reasons[3]
    assert "whole number" in reasons[4]
    assert "unknown merchant 'nobody'" in reasons[6]
    assert "'lost' is not one of" in reasons[7]
    assert "ISO 8601" in reasons[8]
    stored = rows(engine, orders)
    assert [(o["order_ref"], o["amount"], o["status"]) for o in stored] == [
        ("INV-1", 150000, "paid"),
        ("INV-1", 99000, "refunded"),
    ]
    assert stored[0]["placed_at"] == datetime(2026, 11, 1, 2, 30)


def test_order_upsert_updates_status(engine, tmp_path):
    import_file(engine, "merchants", write(tmp_path, "merchants.csv", MERCHANTS_CSV))
    import_file(engine, "orders", write(tmp_path, "a.csv", ORDERS_CSV))
    update = "merchant_external_id,order_ref,amount,status,placed_at\nm1,INV-1,150000,refunded,2026-11-01T02:30:00Z\n"
    report = import_file(engine, "orders", write(tmp_path, "b.csv", update))
    assert report.ok and report.imported == 1
    assert [o["status"] for o in rows(engine, orders)] == ["refunded", "refunded"]
    assert len(rows(engine, orders)) == 2


def test_jsonl_rows_missing_required_columns_and_bad_json(engine, tmp_path):
    lines = [
        {"external_id": "j1", "email": "j1@example.id", "attributes": {"tier": "silver", "n": 3}},
        {"external_id": "j2"},
        "{broken",
        {"external_id": "j3", "email": "j3@example.id", "colour": "red"},
        [1, 2],
        {"external_id": "j4", "email": "j4@example.id", "attributes": "[1]"},
    ]
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    report = import_file(engine, "merchants", write(tmp_path, "m.jsonl", text + "\n\n"))
    reasons = {r.line: r.reason for r in report.rejected}
    assert set(reasons) == {2, 3, 4, 5, 6}
    assert "missing required column 'email'" in reasons[2]
    assert "not valid JSON" in reasons[3]
    assert "unknown column 'colour'" in reasons[4]
    assert "JSON object" in reasons[5]
    assert "must be a JSON object" in reasons[6]
    assert rows(engine, merchants)[0]["attributes"] == {"tier": "silver", "n": 3}


def test_partial_columns_update_only_what_the_file_has(engine, tmp_path):
    import_file(engine, "merchants", write(tmp_path, "m.csv", MERCHANTS_CSV))
    report = import_file(
        engine, "merchants", write(tmp_path, "e.csv", "external_id,email\nm1,new@example.id\n")
    )
    assert report.ok
    budi = rows(engine, merchants)[0]
    assert budi["email"] == "new@example.id"
    assert budi["plan"] == "basic" and budi["attributes"] == {"tier": "gold"}


def test_activities_reimport_is_a_no_op(engine, tmp_path):
    import_file(engine, "merchants", write(tmp_path, "m.csv", MERCHANTS_CSV))
    text = "merchant_external_id,kind,occurred_at\nm1,login,2026-11-20T08:00:00+07:00\nm2,product_added,2026-11-21\nm9,login,2026-11-21\n"
    path = write(tmp_path, "a.csv", text)
    first = import_file(engine, "activities", path)
    assert [r.line for r in first.rejected] == [4]
    import_file(engine, "activities", path)
    assert len(rows(engine, activities)) == 2


def test_bad_header_is_a_file_error(engine, tmp_path):
    with pytest.raises(DataImportError, match=r"m\.csv:1: unknown column 'colour'"):
        import_file(engine, "merchants", write(tmp_path, "m.csv", "external_id,email,colour\n"))
    with pytest.raises(DataImportError, match="missing required column 'email'"):
        import_file(engine, "merchants", write(tmp_path, "n.csv", "external_id,name\nx,y\n"))
    with pytest.raises(DataImportError, match="no such file"):
        import_file(engine, "merchants", tmp_path / "missing.csv")
    with pytest.raises(DataImportError, match="unknown file type"):
        import_file(engine, "merchants", write(tmp_path, "m.xlsx", ""))


def test_batches_do_not_change_the_result(engine, tmp_path):
    body = "".join(f"b{i},b{i}@example.id\n" if i % 7 else f"b{i},broken\n" for i in range(1, 101))
    report = import_file(
        engine, "merchants", write(tmp_path, "m.csv", "external_id,email\n" + body), batch_size=9
    )
    assert report.imported == 86 and report.rejected_count == 14
    assert [r.line for r in report.rejected][:3] == [8, 15, 22]
    assert len(rows(engine, merchants)) == 86


def test_cli_import_exit_codes_and_messages(project, tmp_path):
    runner = CliRunner()
    env = {"CAMPAIGN_DATABASE_URL": project.settings.database_url}
    good = write(tmp_path, "good.csv", "external_id,email\ng1,g1@example.id\n")
    result = runner.invoke(
        cli, ["import", "merchants", str(good), "--project", str(project.root)], env=env
    )
    assert result.exit_code == 0, result.output
    assert "imported 1" in result.output
    bad = write(tmp_path, "bad.csv", "external_id,email\ng2,nope\n")
    result = runner.invoke(
        cli, ["import", "merchants", str(bad), "--project", str(project.root)], env=env
    )
    assert result.exit_code == 1
    assert f"{bad}:2: email:" in result.stderr
    header = write(tmp_path, "header.csv", "external_id,mail\n")
    result = runner.invoke(
        cli, ["import", "merchants", str(header), "--project", str(project.root)], env=env
    )
    assert result.exit_code == 1
    assert "unknown column 'mail'" in result.stderr
    assert "Traceback" not in result.output + result.stderr


@pytest.mark.parametrize(
    "value",
    [datetime(2026, 11, 30, 5, 6, 7), datetime(2026, 1, 2, 3, 4, 5, 600), datetime(1, 1, 1)],
)
def test_fast_sqlite_datetime_matches_sqlalchemy(value):
    from sqlalchemy.dialects import sqlite

    from engine.import_columns import sqlite_datetime

    dialect = sqlite.dialect()
    reference = sa.DateTime().dialect_impl(dialect).bind_processor(dialect)
    assert sqlite_datetime(value) == reference(value)


def test_blank_cells_keep_stored_defaults_and_jsonl_rows_may_differ(engine, tmp_path):
    import_file(engine, "merchants", write(tmp_path, "m.csv", MERCHANTS_CSV))
    text = "external_id,email,locale,attributes,plan\nm2,siti@example.id,,,\n"
    assert import_file(engine, "merchants", write(tmp_path, "blank.csv", text)).ok
    siti = rows(engine, merchants)[1]
    assert siti["locale"] == "en"  # blank: kept
    assert siti["attributes"] == {}  # blank: kept
    assert siti["plan"] is None  # an ordinary column: blank means empty
    lines = [
        {"external_id": "m1", "email": "budi@example.id", "city": "Bandung"},
        {"external_id": "n9", "email": "n9@example.id"},
        {"email": "n10@example.id", "external_id": "n10", "locale": "en"},
    ]
    path = write(tmp_path, "mixed.jsonl", "\n".join(json.dumps(x) for x in lines))
    assert import_file(engine, "merchants", path).imported == 3
    stored = {m["external_id"]: m for m in rows(engine, merchants)}
    assert stored["m1"]["city"] == "Bandung" and stored["m1"]["plan"] == "basic"
    assert stored["n9"]["locale"] == "id" and stored["n9"]["attributes"] == {}
    assert stored["n10"]["locale"] == "en" and stored["n10"]["timezone"] == "Asia/Jakarta"


def test_parallel_validation_gives_exactly_the_same_result(db_url, tmp_path):
    """The second-process path stores the same rows and reports the same rejections."""
    from engine.db import make_engine, upgrade_schema

    orders_text = ORDERS_CSV + "".join(
        f"m{1 + i % 2},P-{i},{1000 + i},paid,2026-11-{1 + i % 28:02d}T10:00:00+07:00\n"
        for i in range(50)
    )
    activity_lines = [
        {"merchant_external_id": "m1", "kind": "login", "occurred_at": f"2026-11-{d:02d}T08:00:00Z"}
        for d in range(1, 20)
    ] + [{"merchant_external_id": "zz", "kind": "login", "occurred_at": "2026-11-01"}]
    files = {
        "merchants": write(tmp_path, "m.csv", MERCHANTS_CSV),
        "orders": write(tmp_path, "o.csv", orders_text),
        "activities": write(
            tmp_path, "a.jsonl", "\n".join(json.dumps(x) for x in activity_lines) + "\n"
        ),
    }
    results = []
    for parallel in (False, True):
        sqlite_file = f"sqlite:///{tmp_path / f'p{parallel}.db'}"
        url = sqlite_file if db_url.startswith("sqlite") else db_url
        engine = make_engine(url)
        upgrade_schema(engine)
        with engine.begin() as conn:
            for table in (activities, orders, merchants):
                conn.execute(table.delete())
        reports = [
            import_file(engine, kind, path, batch_size=7, parallel=parallel)
            for kind, path in files.items()
        ]
        stored = [
            [
                {k: v for k, v in r.items() if k not in ("id", "merchant_id")}
                for r in rows(engine, t)
            ]
            for t in (merchants, orders, activities)
        ]
        results.append(([(r.imported, r.rejected) for r in reports], stored))
        engine.dispose()
    assert results[0] == results[1]
    assert results[0][0][2][0] == 19 and results[0][0][2][1][0].line == 20


def test_parallel_validation_reports_a_bad_header_as_one_sentence(engine, tmp_path):
    with pytest.raises(DataImportError, match=r"m\.csv:1: unknown column 'colour'"):
        import_file(
            engine, "merchants", write(tmp_path, "m.csv", "external_id,colour\n"), parallel=True
        )


def test_a_second_process_that_dies_is_an_error_not_a_short_import(tmp_path):
    """A crash of ours in the reading process must not pass for the end of the file."""
    from engine.importer import _second_process_batches

    path = write(tmp_path, "m.csv", MERCHANTS_CSV)
    with pytest.raises(RuntimeError, match="ended without a word"):
        list(_second_process_batches(path, "no-such-kind", 5, sqlite=True))

"""``campaign import`` on both backends: validation, upserts, line numbers, no half rows."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


# --- undecodable bytes, NUL, BOM: a bad row, never a whole-file error after commits --


def _merchant_lines(count: int, bad: dict[int, bytes] | None = None) -> bytes:
    """``count`` merchant rows (row i on line i + 2); ``bad`` puts raw bytes in row i's name."""
    out = [b"external_id,email,name\n"]
    for i in range(count):
        name = (bad or {}).get(i, f"Pemilik {i}".encode())
        out.append(b"u%d,u%d@example.id,%s\n" % (i, i, name))
    return b"".join(out)


@pytest.mark.parametrize("parallel", [False, True])
def test_an_undecodable_byte_deep_in_a_file_is_one_bad_row(engine, tmp_path, parallel):
    path = tmp_path / "m.csv"
    path.write_bytes(_merchant_lines(2000, {1900: b"Caf\xe9 Budi", 5: b"ok \xc3\xa9"}))
    report = import_file(engine, "merchants", path, batch_size=100, parallel=parallel)
    assert [(r.line, r.reason) for r in report.rejected] == [
        (1902, "name: not UTF-8 text (the byte 0xe9 cannot be decoded)")
    ]
    assert report.read == 2000 and report.imported == 1999
    stored = {m["external_id"]: m["name"] for m in rows(engine, merchants)}
    assert len(stored) == 1999 and "u1900" not in stored
    assert stored["u5"] == "ok é" and stored["u1999"] == "Pemilik 1999"


def test_text_across_read_chunks_is_decoded_whole(engine, tmp_path):
    """Multi-byte characters cut by the boundaries of reads (8 KiB, 1 MiB) are not bad bytes."""
    name = "Toko Ébène ☕ 🙂".encode()
    path = tmp_path / "m.csv"
    path.write_bytes(_merchant_lines(40_000, {i: name + b"%d" % (i % 7) for i in range(40_000)}))
    assert path.stat().st_size > 1024 * 1024
    report = import_file(engine, "merchants", path, parallel=False)
    assert report.ok and report.imported == 40_000


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_a_nul_byte_is_a_bad_row_on_both_databases(engine, tmp_path, suffix):
    path = tmp_path / f"m.{suffix}"
    if suffix == "csv":
        path.write_bytes(_merchant_lines(5, {3: b"nul\x00here"}))
    else:
        lines = [
            json.dumps({"external_id": f"u{i}", "email": f"u{i}@example.id", "name": f"n{i}"})
            for i in range(4)
        ]
        lines[1] = lines[1].replace('"n1"', '"n\\u0000"')
        lines[2] = lines[2].replace('"n2"', '"n2\x00"')
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = import_file(engine, "merchants", path)
    if suffix == "csv":
        assert [(r.line, r.reason) for r in report.rejected] == [
            (5, "name: contains a NUL character")
        ]
    else:
        assert [r.line for r in report.rejected] == [2, 3]
        assert "NUL" in report.rejected[0].reason
    assert report.imported == len(rows(engine, merchants)) == (4 if suffix == "csv" else 2)


def test_jsonl_with_a_bom_and_bad_bytes_reads_like_csv(engine, tmp_path):
    lines = [
        json.dumps({"external_id": f"j{i}", "email": f"j{i}@example.id"}).encode() for i in range(3)
    ]
    lines[2] = lines[2].replace(b'"j2@', b'"j2\xff@')
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n")
    report = import_file(engine, "merchants", path)
    assert [(r.line, r.reason) for r in report.rejected] == [
        (3, "not UTF-8 text (the byte 0xff cannot be decoded)")
    ]
    assert [m["external_id"] for m in rows(engine, merchants)] == ["j0", "j1"]
    csv_path = tmp_path / "m.csv"
    csv_path.write_bytes(b"\xef\xbb\xbfexternal_id,email\nc1,c1@example.id\n")
    assert import_file(engine, "merchants", csv_path).imported == 1


def test_a_bad_byte_in_the_header_is_refused_before_anything_is_written(engine, tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(b"external_id,em\xe9il\nx1,x1@example.id\n")
    with pytest.raises(DataImportError, match=r"m\.csv:1: the CSV header is not UTF-8 text"):
        import_file(engine, "merchants", path)
    assert rows(engine, merchants) == []


# --- data that would fail later ---------------------------------------------------


def test_timestamps_outside_1900_to_2200_are_rejected_with_their_line(engine, tmp_path):
    text = (
        "external_id,email,created_at,last_login_at\n"
        "t1,t1@example.id,9999-12-31,\n"
        "t2,t2@example.id,0001-01-01T00:00:00+07:00,\n"
        "t3,t3@example.id,1900-01-01T00:00:00+07:00,2200-12-31T23:59:59\n"
        "t4,t4@example.id,2025-01-01,1899-12-31T23:59:59Z\n"
    )
    report = import_file(engine, "merchants", write(tmp_path, "m.csv", text))
    reasons = {r.line: r.reason for r in report.rejected}
    assert set(reasons) == {2, 3, 5}
    assert reasons[2] == (
        "created_at: '9999-12-31' is outside the years 1900-2200 (a placeholder date?)"
    )
    assert reasons[5].startswith("last_login_at: '1899-12-31T23:59:59Z' is outside")
    t3 = rows(engine, merchants)[0]
    assert t3["created_at"] == datetime(1899, 12, 31, 17, 0)  # as written, 1900 (UTC+7)
    assert t3["last_login_at"] == datetime(2200, 12, 31, 23, 59, 59)


@pytest.mark.parametrize("parallel", [False, True])
def test_a_merchant_given_twice_in_a_file_is_counted_once_with_a_warning(
    engine, tmp_path, parallel
):
    text = (
        "external_id,email,city\n"
        "d1,first@example.id,Medan\n"
        "d2,d2@example.id,Bogor\n"
        "d3,d3@example.id,Solo\n"
        "d1,second@example.id,Jakarta\n"
        "d1,third@example.id,\n"
    )
    path = write(tmp_path, "m.csv", text)
    report = import_file(engine, "merchants", path, batch_size=2, parallel=parallel)
    assert (report.read, report.imported, report.rejected_count) == (5, 3, 0)
    assert report.ok and report.warning_count == 2
    assert [(w.line, w.reason) for w in report.warnings] == [
        (5, "external_id 'd1' is also on line 2: counted once, this later line wins"),
        (6, "external_id 'd1' is also on line 2: counted once, this later line wins"),
    ]
    d1 = rows(engine, merchants)[0]
    assert d1["email"] == "third@example.id" and d1["city"] is None  # the last line wins


def test_an_order_given_twice_in_a_file_is_counted_once_with_a_warning(engine, tmp_path):
    import_file(engine, "merchants", write(tmp_path, "m.csv", MERCHANTS_CSV))
    text = (
        "merchant_external_id,order_ref,amount,status,placed_at\n"
        "m1,INV-1,1000,paid,2026-11-01\n"
        "m2,INV-1,2000,paid,2026-11-01\n"
        "m1,INV-1,1000,refunded,2026-11-01\n"
    )
    report = import_file(engine, "orders", write(tmp_path, "o.csv", text))
    assert report.imported == 2 and report.warning_count == 1
    assert report.warnings[0].line == 4
    assert report.warnings[0].reason.startswith("order 'INV-1' of merchant 'm1' is also on line 2")
    assert [o["status"] for o in rows(engine, orders)] == ["refunded", "paid"]
    again = import_file(engine, "orders", write(tmp_path, "o.csv", text))
    assert again.imported == 2  # a second import of the file: each key counted once again


def test_cli_prints_repeats_as_warnings_and_exits_0(project, tmp_path):
    env = {"CAMPAIGN_DATABASE_URL": project.settings.database_url}
    path = write(tmp_path, "m.csv", "external_id,email\nw1,a@example.id\nw1,b@example.id\n")
    result = CliRunner().invoke(
        cli, ["import", "merchants", str(path), "--project", str(project.root)], env=env
    )
    assert result.exit_code == 0, result.output
    assert "read 2 rows, imported 1, rejected 0, 1 repeated." in result.stdout
    assert f"{path}:3: warning: external_id 'w1' is also on line 2" in result.stderr


# --- the parallelism decision lives in the engine ---------------------------------


def test_import_file_decides_on_a_second_process_by_size_and_cores(tmp_path):
    import os

    from engine.importer import PARALLEL_FROM_BYTES, parallel_pays

    small, large = tmp_path / "small.csv", tmp_path / "large.csv"
    small.write_text("external_id,email\n", encoding="utf-8")
    with large.open("wb") as handle:  # sparse: the size is what counts
        handle.truncate(PARALLEL_FROM_BYTES)
    assert parallel_pays(small) is False
    assert parallel_pays(large) is ((os.cpu_count() or 1) > 1)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    names=st.lists(
        st.binary(max_size=8).map(
            lambda b: (
                b.replace(b",", b"").replace(b"\n", b"").replace(b"\r", b"").replace(b'"', b"")
            )
        ),
        min_size=1,
        max_size=30,
    ),
    parallel=st.booleans(),
)
def test_any_bytes_in_a_cell_reject_exactly_their_row(engine, tmp_path, names, parallel):
    """Random bytes in the name column: a row is rejected iff its bytes are not storable text."""
    with engine.begin() as conn:
        conn.execute(merchants.delete())
    path = tmp_path / "m.csv"
    path.write_bytes(_merchant_lines(len(names), dict(enumerate(names))))

    def bad(name: bytes) -> bool:
        try:
            return "\x00" in name.decode("utf-8")
        except UnicodeDecodeError:
            return True

    report = import_file(engine, "merchants", path, batch_size=4, parallel=parallel)
    expected = [i + 2 for i, name in enumerate(names) if bad(name)]
    assert [r.line for r in report.rejected] == expected[:20]
    assert report.read == len(names) and report.imported == len(names) - len(expected)
    stored = {m["external_id"]: m["name"] for m in rows(engine, merchants)}
    for i, name in enumerate(names):
        if not bad(name):
            assert stored[f"u{i}"] == (name.decode().strip() or None)

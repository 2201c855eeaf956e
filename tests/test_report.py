"""Report figures against hand-computed truth, on both databases.

The outbox rows and orders are written directly: the report reads what the
send pipeline and the drip engine record (``sent`` rows with ``sent_at``,
``holdout`` rows whose ``created_at`` is when the step would have gone).
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta

import pytest
from click.testing import CliRunner
from conftest import write_files
from statsmodels.stats.proportion import confint_proportions_2indep

from engine.cli import cli
from engine.models import merchants, messages, orders, suppressions
from engine.reports import COLUMNS, campaign_report
from engine.reports.interval import lift_interval
from engine.reports.outcomes import NO_HOLDOUT, SMALL_SAMPLE

T0 = datetime(2026, 11, 2, 9, 0, 0)
DAY = timedelta(days=1)
WEEK = timedelta(days=7)
FILES = {
    "segments/everyone.yaml": "description: every merchant\nrules:\n  field: status\n  eq: active\n",
    "campaigns/winback.yaml": (
        "kind: drip\ntopic: retention\nsegment: everyone\n"
        'from: "Tokoku <halo@tokoku.id>"\nholdout: 10%\nsteps:\n'
        "  - template: t/a\n    delay: 0d\n  - template: t/a\n    delay: 3d\n"
        "  - template: t/a\n    delay: 5d\n"
    ),
    "campaigns/promo.yaml": (
        "kind: broadcast\ntopic: promo\nsegment: everyone\n"
        'from: "Tokoku <news@tokoku.id>"\ntemplate: t/a\n'
    ),
    "templates/t/a.html": '---\nsubject: "Halo"\n---\n<p>Halo</p>\n',
}


class Data:
    """Writes merchants, orders, outbox rows and suppressions with few statements."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.merchants: list[dict] = []
        self.orders: list[dict] = []
        self.messages: list[dict] = []
        self.suppressions: list[dict] = []

    def merchant(self, mid: int) -> int:
        self.merchants.append(
            {"id": mid, "external_id": f"m{mid}", "email": f"m{mid}@toko.id", "attributes": {}}
        )
        return mid

    def order(self, mid: int, at: datetime, amount: int, status: str = "paid") -> None:
        ref = f"o{len(self.orders)}"
        self.orders.append(
            {
                "merchant_id": mid,
                "order_ref": ref,
                "amount": amount,
                "status": status,
                "placed_at": at,
            }
        )

    def message(
        self,
        campaign: str,
        mid: int,
        at: datetime,
        state: str = "sent",
        *,
        step: int | None = None,
        run: str | None = None,
        topic: str = "retention",
        error: str | None = None,
    ) -> None:
        where = f"s{step}" if step is not None else f"r{run}"
        self.messages.append(
            {
                "key": f"{campaign}:{where}:{mid}",
                "campaign": campaign,
                "step": step,
                "run": run,
                "topic": topic,
                "merchant_id": mid,
                "email": f"m{mid}@toko.id",
                "sender": "halo@tokoku.id",
                "state": state,
                "created_at": at,
                "updated_at": at,
                "sent_at": at if state == "sent" else None,
                "last_error": error,
            }
        )

    def unsubscribe(self, mid: int, topic: str, at: datetime, reason: str = "unsubscribe") -> None:
        self.suppressions.append(
            {"email": f"m{mid}@toko.id", "topic": topic, "reason": reason, "created_at": at}
        )

    def write(self) -> None:
        with self.engine.begin() as conn:
            for table, rows in (
                (merchants, self.merchants),
                (orders, self.orders),
                (messages, self.messages),
                (suppressions, self.suppressions),
            ):
                if rows:
                    conn.execute(table.insert(), rows)


def by_key(rows: list[dict]) -> dict[tuple, dict]:
    return {(r["campaign"], r["run"], r["step"]): r for r in rows}


@pytest.fixture
def shop(project, project_dir):
    write_files(project_dir, FILES)
    return project


def hand_made(engine) -> Data:
    d = Data(engine)
    for mid in range(1, 11):
        d.merchant(mid)
    # winback step 1, sent at T0 to merchants 1..6
    for mid in range(1, 6):
        d.message("winback", mid, T0, step=1)
    fraction = T0 + timedelta(microseconds=500_000)
    d.message("winback", 6, fraction, step=1)
    d.order(1, T0 + DAY, 100)  # two paid orders in the window: one conversion, revenue 150
    d.order(1, T0 + 2 * DAY, 50)
    d.order(2, T0 - DAY, 999)  # before the send
    d.order(3, T0 + WEEK + timedelta(seconds=1), 999)  # just after the window
    d.order(4, T0 + DAY, 999, "cancelled")
    d.order(4, T0 + 2 * DAY, 999, "refunded")
    d.order(5, T0, 999)  # at the moment of the send: (t, t + w] leaves it out
    d.order(5, T0 + WEEK, 70)  # exactly at the end: in
    d.order(6, fraction + WEEK + timedelta(microseconds=1), 999)  # one microsecond late
    d.order(6, T0 + WEEK, 999)  # before ITS end (T0 + 0.5 s + 7d): in
    # holdout of step 1: merchant 7 converts, 8 does not
    d.message("winback", 7, T0, "holdout", step=1)
    d.message("winback", 8, T0, "holdout", step=1)
    d.order(7, T0 + 3 * DAY, 40)
    # a failed message is not "written to": its merchant's order is no conversion
    d.message("winback", 9, T0, "failed", step=1, error="550 5.1.1 no such user")
    d.order(9, T0 + DAY, 999)
    # step 2 to merchant 1 three days later: its orders came before, no conversion
    d.message("winback", 1, T0 + 3 * DAY, step=2)
    # merchant 1 in a second campaign, a broadcast: the same order converts it there too
    d.message("promo", 1, T0 + DAY - timedelta(hours=1), run="manual", topic="promo")
    d.message("promo", 10, T0 + DAY, "queued", run="manual", topic="promo")
    # unsubscribes: 2 for this topic in the window (counted), 3 another topic, 4 all topics
    # but too late, 5 for all topics in the window (counted), 6 a hard bounce (not counted)
    d.unsubscribe(2, "retention", T0 + DAY)
    d.unsubscribe(3, "promo", T0 + DAY)
    d.unsubscribe(4, "*", T0 + 10 * DAY)
    d.unsubscribe(5, "*", T0 + 2 * DAY)
    d.unsubscribe(6, "*", T0 + DAY, reason="hard_bounce")
    d.write()
    return d


def test_report_figures_match_hand_computed_truth(shop):
    hand_made(shop.engine)
    rows = campaign_report(shop)
    assert [tuple(r) for r in rows] == [COLUMNS] * len(rows)
    got = by_key(rows)
    assert list(got) == [
        ("promo", "manual", None),
        ("winback", None, 1),
        ("winback", None, 2),
        ("winback", None, 3),  # never reached: a row of zeros from the campaign file
    ]
    one = got[("winback", None, 1)]
    assert (one["sent"], one["failed"], one["holdout"]) == (6, 1, 2)
    assert (one["conversions"], one["holdout_conversions"]) == (3, 1)  # merchants 1, 5, 6; 7
    assert one["revenue"] == 150 + 70 + 999
    assert one["unsubscribes"] == 2
    assert one["conversion_rate"] == pytest.approx(3 / 6)
    assert one["holdout_conversion_rate"] == pytest.approx(1 / 2)
    assert one["lift"] == pytest.approx(3 / 6 - 1 / 2)
    low, high = confint_proportions_2indep(3, 6, 1, 2, compare="diff", method="newcomb")
    assert (one["lift_ci_low"], one["lift_ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert one["note"] == SMALL_SAMPLE

    two = got[("winback", None, 2)]
    assert (two["sent"], two["conversions"], two["revenue"], two["holdout"]) == (1, 0, 0, 0)
    assert two["lift"] is None and two["lift_ci_low"] is None and two["note"] == NO_HOLDOUT

    three = got[("winback", None, 3)]
    assert all(three[c] == 0 for c in ("sent", "queued", "conversions", "clicks", "exited"))
    assert three["conversion_rate"] is None and three["lift"] is None

    promo = got[("promo", "manual", None)]
    assert (promo["sent"], promo["queued"], promo["conversions"], promo["revenue"]) == (
        1,
        1,
        1,
        150,
    )
    assert promo["unsubscribes"] == 0  # merchant 3's promo unsubscribe: not written to by promo
    assert promo["lift"] is None


def test_since_until_and_run_filter_by_send_time(shop):
    d = hand_made(shop.engine)
    d.messages, d.merchants, d.orders, d.suppressions = [], [], [], []
    d.message("promo", 2, T0 + 20 * DAY, run="december", topic="promo")
    d.order(2, T0 + 21 * DAY, 30)
    d.write()
    got = by_key(campaign_report(shop, "promo"))
    assert [k[1] for k in got] == ["manual", "december"]  # runs in the order they started
    assert (
        got[("promo", "december", None)]["conversions"],
        got[("promo", "december", None)]["revenue"],
    ) == (1, 30)

    (row,) = campaign_report(shop, "promo", run="december")
    assert row["run"] == "december" and row["sent"] == 1

    later = by_key(campaign_report(shop, since=T0 + 2 * DAY))
    assert later[("winback", None, 2)]["sent"] == 1
    assert later[("winback", None, 1)]["sent"] == 0  # sent before --since: counted nowhere
    assert later[("promo", "december", None)]["sent"] == 1
    earlier = by_key(campaign_report(shop, until=T0 + DAY))
    assert earlier[("winback", None, 1)]["sent"] == 6
    assert earlier[("winback", None, 1)]["holdout"] == 2
    assert earlier[("winback", None, 2)]["sent"] == 0
    assert earlier[("promo", "manual", None)]["sent"] == 1  # sent at T0 + 23 h


def reference(d: Data, window: timedelta) -> dict[tuple, tuple[int, int, int, int]]:
    """The definition in plain Python: (sent, conversions, revenue, holdout conversions) per row."""
    paid: dict[int, list[tuple[datetime, int]]] = {}
    for o in d.orders:
        if o["status"] == "paid":
            paid.setdefault(o["merchant_id"], []).append((o["placed_at"], o["amount"]))
    out: dict[tuple, list[int]] = {}
    for m in d.messages:
        key = (m["campaign"], m["run"], m["step"])
        row = out.setdefault(key, [0, 0, 0, 0, 0])
        if m["state"] not in ("sent", "holdout"):
            continue
        t = m["sent_at"] or m["created_at"]
        inside = [a for at, a in paid.get(m["merchant_id"], []) if t < at <= t + window]
        if m["state"] == "sent":
            row[0] += 1
            row[1] += bool(inside)
            row[2] += sum(inside)
        else:
            row[3] += 1
            row[4] += bool(inside)
    return {k: tuple(v) for k, v in out.items()}


def test_report_agrees_with_the_definition_on_random_data(shop):
    rng = random.Random(20261202)
    d = Data(shop.engine)
    for mid in range(1, 401):
        d.merchant(mid)
        for _ in range(rng.randint(0, 4)):
            at = T0 + timedelta(seconds=rng.randint(-5 * 86400, 25 * 86400))
            status = rng.choice(["paid", "paid", "paid", "cancelled", "refunded"])
            d.order(mid, at, rng.randint(1, 500_000), status)
        for step, offset in ((1, 0), (2, 3)):
            if rng.random() < 0.8 or step == 1:
                state = "holdout" if rng.random() < 0.2 else rng.choice(["sent"] * 8 + ["failed"])
                at = T0 + offset * DAY + timedelta(seconds=rng.randint(0, 86400))
                d.message("winback", mid, at, state, step=step)
    d.write()
    truth = reference(d, WEEK)
    got = by_key(campaign_report(shop, "winback"))
    for key, (sent, conv, revenue, holdout, hconv) in truth.items():
        row = got[key]
        assert (row["sent"], row["conversions"], row["revenue"]) == (sent, conv, revenue)
        assert (row["holdout"], row["holdout_conversions"]) == (holdout, hconv)
        assert holdout >= 30 and row["note"] is None
        low, high = confint_proportions_2indep(
            conv, sent, hconv, holdout, compare="diff", method="newcomb"
        )
        assert row["lift_ci_low"] == pytest.approx(low) and row["lift_ci_high"] == pytest.approx(
            high
        )
        assert row["lift_ci_low"] <= row["lift"] <= row["lift_ci_high"]


def test_attribution_window_setting_changes_the_window(shop, project_dir, project_env):
    from engine.project import open_project

    hand_made(shop.engine)
    write_files(project_dir, {"campaign.toml": '[reports]\nattribution_window = "1d"\n'})
    project = open_project(project_dir, env=project_env)
    try:
        one = by_key(campaign_report(project, "winback"))[("winback", None, 1)]
    finally:
        project.close()
    assert (one["conversions"], one["revenue"]) == (1, 100)  # only merchant 1's first order


def test_lift_interval_is_statsmodels_newcombe():
    for counts in ((12, 100, 8, 100), (0, 50, 0, 40), (30, 30, 0, 31), (5, 1000, 40, 100)):
        lift = lift_interval(*counts)
        low, high = confint_proportions_2indep(*counts, compare="diff", method="newcomb")
        assert (lift.low, lift.high) == (pytest.approx(low), pytest.approx(high))
        assert lift.lift == pytest.approx(counts[0] / counts[1] - counts[2] / counts[3])
    assert lift_interval(3, 10, 1, 29).small_sample and not lift_interval(3, 10, 1, 30).small_sample
    assert lift_interval(3, 10, 0, 0) is None and lift_interval(0, 0, 3, 10) is None


def test_cli_json_and_csv_forms(shop, project_dir, project_env):
    hand_made(shop.engine)
    base = ["--project", str(project_dir)]
    runner = CliRunner()
    result = runner.invoke(cli, ["report", "--format", "json", *base], env=project_env)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert all(tuple(r) == COLUMNS for r in rows)
    one = by_key(rows)[("winback", None, 1)]
    assert one["conversions"] == 3 and 0 <= one["conversion_rate"] <= 1

    result = runner.invoke(cli, ["report", "winback", "--format", "csv", *base], env=project_env)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == ",".join(COLUMNS)
    assert len(lines) == 4  # header and steps 1 to 3
    step1 = dict(zip(COLUMNS, lines[1].split(",", len(COLUMNS) - 1), strict=True))
    assert (step1["step"], step1["run"], step1["sent"], step1["conversions"]) == ("1", "", "6", "3")

    result = runner.invoke(cli, ["report", "winback", *base], env=project_env)
    assert result.exit_code == 0, result.output
    assert "winback" in result.stdout and "too small a sample" in result.stdout


def test_a_campaign_that_sent_nothing_reports_zeros(shop, project_dir, project_env):
    base = ["--project", str(project_dir)]
    runner = CliRunner()
    result = runner.invoke(cli, ["report", "promo", "--format", "json", *base], env=project_env)
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert (row["campaign"], row["run"], row["step"], row["sent"], row["lift"]) == (
        "promo",
        "manual",
        None,
        0,
        None,
    )
    result = runner.invoke(cli, ["report", "winback", "--format", "json", *base], env=project_env)
    assert [r["step"] for r in json.loads(result.stdout)] == [1, 2, 3]

    result = runner.invoke(cli, ["report", "winbak", *base], env=project_env)
    assert result.exit_code == 1
    assert "no campaign named 'winbak'" in result.stderr and "Traceback" not in result.output
    result = runner.invoke(cli, ["report", "--since", "soon", *base], env=project_env)
    assert result.exit_code == 1 and "--since 'soon' is not an ISO 8601 time" in result.stderr


def test_a_deleted_campaign_file_still_reports_its_history(shop, project_dir):
    hand_made(shop.engine)
    (project_dir / "campaigns" / "promo.yaml").unlink()
    (row,) = campaign_report(shop, "promo")
    assert row["sent"] == 1 and row["conversions"] == 1


def test_a_broken_campaign_file_does_not_hide_the_history(shop, project_dir):
    hand_made(shop.engine)
    (project_dir / "campaigns" / "winback.yaml").write_text("kind: [\n", encoding="utf-8")
    rows = campaign_report(shop)
    assert [r["step"] for r in rows if r["campaign"] == "winback"] == [1, 2]


def test_a_bad_attribution_window_names_file_line_and_key(tmp_path):
    from engine.config import load_settings
    from engine.errors import SettingsError

    write_files(tmp_path, {"campaign.toml": '[project]\n\n[reports]\nattribution_window = "0d"\n'})
    with pytest.raises(SettingsError) as caught:
        load_settings(tmp_path, env={})
    assert str(caught.value).startswith(
        f"{tmp_path / 'campaign.toml'}:4: reports.attribution_window: "
    )
    write_files(tmp_path, {"campaign.toml": '[reports]\nattribution_window = "36h"\n'})
    assert load_settings(tmp_path, env={}).reports.attribution_window == timedelta(hours=36)

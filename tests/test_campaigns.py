"""Campaign files: every mistake named by file and line, holdout hashing, send windows."""

from __future__ import annotations

import shutil
from datetime import datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import REPO, write_files
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.campaigns import (
    Campaign,
    SendWindow,
    check_cron,
    in_holdout,
    load_campaign,
    load_campaigns,
)
from engine.config import load_settings
from engine.errors import CampaignError, CampaignFileError, ProblemList
from engine.segments import SegmentRef, load_segments

SENDER = 'from: "User Success <success@example.id>"\n'


@pytest.fixture
def proj(project_dir: Path) -> Path:
    """A project with the example segments and two small templates."""
    shutil.copytree(REPO / "segments", project_dir / "segments")
    write_files(
        project_dir,
        {
            "templates/onboarding/welcome.id.html": "---\nsubject: Hi\n---\n<p>Hi</p>\n",
            "templates/onboarding/welcome.en.html": "---\nsubject: Hi\n---\n<p>Hi</p>\n",
            "templates/promo/sale.html": "---\nsubject: Sale\n---\n<p>Sale</p>\n",
            "templates/partials/button.html": "<a>x</a>\n",
        },
    )
    return project_dir


def load(project: Path) -> dict[str, Campaign]:
    settings = load_settings(project, env={})
    return load_campaigns(settings, load_segments(settings.segments_dir))


def problems_of(project: Path) -> list[CampaignFileError]:
    with pytest.raises(ProblemList) as caught:
        load(project)
    assert all(isinstance(p, CampaignFileError) for p in caught.value.problems)
    return caught.value.problems


BROADCAST = (
    "kind: broadcast\ntopic: promo\nsegment: high-potential\n" + SENDER + "template: promo/sale\n"
)
DRIP = (
    "kind: drip\ntopic: onboarding\nsegment: new-not-selling\n" + SENDER + "steps:\n"
    "  - template: onboarding/welcome\n"
)

# (file text, expected line, words the message must contain)
MISTAKES = {
    "unknown-key": (BROADCAST + "hold_out: 10%\n", 6, ["unknown key 'hold_out'", "holdout"]),
    "unknown-topic": (
        BROADCAST.replace("topic: promo", "topic: promos"),
        2,
        ["unknown topic 'promos'", "promo"],
    ),
    "unknown-kind": (
        BROADCAST.replace("kind: broadcast", "kind: blast"),
        1,
        ["kind must be one of"],
    ),
    "unknown-segment": (
        BROADCAST.replace("segment: high-potential", "segment: dormant-seller"),
        3,
        ["unknown segment 'dormant-seller'", "dormant-sellers"],
    ),
    "segment-wrong-type": (
        BROADCAST.replace("segment: high-potential", "segment: [a, b]"),
        3,
        ["segment name"],
    ),
    "missing-template-file": (
        BROADCAST.replace("promo/sale", "promo/sail"),
        5,
        ["template 'promo/sail' not found"],
    ),
    "template-with-extension": (
        BROADCAST.replace("promo/sale", "promo/sale.html"),
        5,
        ["without locale or extension"],
    ),
    "template-is-a-partial": (
        BROADCAST.replace("promo/sale", "partials/button"),
        5,
        ["shared piece"],
    ),
    "broadcast-without-template": (
        BROADCAST.replace("template: promo/sale\n", ""),
        1,
        ["needs 'template'"],
    ),
    "broadcast-with-steps": (
        BROADCAST + "steps:\n  - template: promo/sale\n",
        6,
        ["'steps' is for drip campaigns"],
    ),
    "drip-without-steps": (DRIP.split("steps:")[0], 1, ["a drip needs 'steps'"]),
    "drip-empty-steps": (DRIP.split("steps:")[0] + "steps: []\n", 5, ["at least one step"]),
    "drip-with-schedule": (DRIP + 'schedule: "0 9 * * mon"\n', 7, ["'schedule' is for broadcast"]),
    "drip-with-timezone": (DRIP + "timezone: Asia/Jakarta\n", 7, ["own time zone"]),
    "step-unknown-key": (DRIP + "    wait: 2d\n", 7, ["unknown key 'wait' in step 1"]),
    "step-missing-template": (DRIP + "  - delay: 2d\n", 7, ["step 2 needs a template"]),
    "step-missing-delay": (
        DRIP + "  - template: onboarding/welcome\n",
        7,
        ["step 2 needs a delay"],
    ),
    "step-bad-delay": (
        DRIP + "  - template: onboarding/welcome\n    delay: 2 days\n",
        8,
        ["not a duration"],
    ),
    "step-unknown-template": (
        DRIP + "  - template: onboarding/bye\n    delay: 2d\n",
        7,
        ["'onboarding/bye' not found"],
    ),
    "step-not-a-mapping": (DRIP + "  - onboarding/welcome\n", 7, ["step 2 must be a mapping"]),
    "step-bad-when": (
        DRIP
        + "  - template: onboarding/welcome\n    delay: 2d\n    when: {metric: ordres, window: 10d, eq: 0}\n",
        9,
        ["ordres"],
    ),
    "exit-unknown-segment": (DRIP + "exit:\n  segment: active-seller\n", 8, ["active-seller"]),
    "exit-on-broadcast": (
        BROADCAST + "exit:\n  segment: active-sellers\n",
        6,
        ["'exit' is for drip"],
    ),
    "bad-from": (
        BROADCAST.replace(SENDER, 'from: "User Success <success@example>"\n'),
        4,
        ["not a valid email"],
    ),
    "from-two-addresses": (
        BROADCAST.replace(SENDER, 'from: "a@example.id, b@example.id"\n'),
        4,
        ["not one address"],
    ),
    "from-trailing-junk": (
        BROADCAST.replace(SENDER, 'from: "Us <a@example.id> junk"\n'),
        4,
        ["not one address"],
    ),
    "from-line-break": (
        BROADCAST.replace(SENDER, 'from: "Us <a@example.id>\\r\\nBcc: x@evil.id"\n'),
        4,
        ["line breaks"],
    ),
    "from-encoded-word": (
        BROADCAST.replace(SENDER, 'from: "=?utf-8?q?Us?= <a@example.id>"\n'),
        4,
        ["encoded word"],
    ),
    "missing-from": (BROADCAST.replace(SENDER, ""), 1, ["missing required key 'from'"]),
    "bad-reply-to": (BROADCAST + "reply_to: not an address\n", 6, ["reply_to"]),
    "holdout-out-of-range": (BROADCAST + "holdout: 60%\n", 6, ["between 0% and 50%"]),
    "holdout-wrong-type": (BROADCAST + "holdout: ten\n", 6, ["percentage such as 10%"]),
    "holdout-bare-number": (BROADCAST + "holdout: 10\n", 6, ["percentage such as 10%"]),
    "window-bad-day": (
        BROADCAST + "send_window: {days: [mon, funday], hours: '09:00-17:00'}\n",
        6,
        ["unknown day 'funday'"],
    ),
    "window-bad-hours": (
        BROADCAST + "send_window:\n  days: [mon]\n  hours: 9-17\n",
        8,
        ['hours must look like "09:00-17:00"'],
    ),
    "window-backwards": (
        BROADCAST + "send_window: {hours: '17:00-09:00'}\n",
        6,
        ["start before they end"],
    ),
    "window-unknown-key": (
        BROADCAST + "send_window:\n  day: [mon]\n",
        7,
        ["unknown key 'day' in send_window"],
    ),
    "window-wrong-type": (
        BROADCAST + "send_window: weekdays\n",
        6,
        ["send_window must be a mapping"],
    ),
    "schedule-bad-cron": (BROADCAST + 'schedule: "0 25 * * mon"\n', 6, ["schedule '0 25 * * mon'"]),
    "schedule-four-fields": (BROADCAST + 'schedule: "0 9 * *"\n', 6, ["5 fields"]),
    "schedule-numeric-weekday": (BROADCAST + 'schedule: "0 9 * * 1"\n', 6, ["names (mon"]),
    "schedule-never-fires": (BROADCAST + 'schedule: "0 9 31 2 *"\n', 6, ["never fires"]),
    "bad-timezone": (BROADCAST + "timezone: Asia/Bandung\n", 6, ["not an IANA time zone"]),
    "bad-reenter-after": (DRIP + "reenter_after: soon\n", 7, ["not a duration"]),
    "reenter-after-a-date": (
        DRIP + "reenter_after: 2026-12-01\n",
        7,
        ["reenter_after: 2026-12-01 is not a duration"],
    ),
    "impossible-date": (DRIP + "reenter_after: 2026-13-01\n", 7, ["not a valid timestamp"]),
    "not-a-mapping": ("- kind: drip\n", 1, ["must be a mapping"]),
    "yaml-syntax": (BROADCAST + "holdout: [10%\n", 7, ["not valid YAML"]),
}


@pytest.mark.parametrize("case", sorted(MISTAKES))
def test_each_mistake_names_file_and_line(proj, case):
    text, line, words = MISTAKES[case]
    write_files(proj, {f"campaigns/{case}.yaml": text})
    problems = problems_of(proj)
    found = [p for p in problems if p.line == line and all(w in p.detail for w in words)]
    assert found, f"expected line {line} with {words}, got: {[str(p) for p in problems]}"
    assert found[0].path == proj / "campaigns" / f"{case}.yaml"
    assert str(found[0]).startswith(f"{found[0].path}:{line}: ")


def test_all_files_and_all_mistakes_reported_together(proj):
    write_files(
        proj,
        {
            "campaigns/good.yaml": BROADCAST,
            "campaigns/one.yaml": BROADCAST.replace("topic: promo", "topic: nope")
            + "holdout: 90%\n",
            "campaigns/two.yaml": DRIP
            + "  - template: onboarding/welcome\n    delay: 2 days\n    colour: red\n",
        },
    )
    problems = problems_of(proj)
    where = sorted((p.path.name, p.line) for p in problems)
    assert where == [("one.yaml", 2), ("one.yaml", 6), ("two.yaml", 8), ("two.yaml", 9)]


def test_example_campaigns_all_load(example_dir):
    campaigns = load(example_dir)
    assert len(campaigns) >= 6
    kinds = {(c.kind, c.topic) for c in campaigns.values()}
    for topic in ("onboarding", "promo", "partnership"):
        assert ("broadcast", topic) in kinds
    # Issue 10's examples: onboarding, win-back and revenue-drop drips; 12.12 is scheduled.
    assert {("drip", "onboarding"), ("drip", "retention")} <= kinds
    assert campaigns["retention-revenue-drop"].kind == "drip"
    assert campaigns["promo-harbolnas-1212"].schedule is not None
    welcome = campaigns["onboarding-welcome"]
    assert [s.template for s in welcome.steps] == [
        "onboarding/welcome",
        "onboarding/setup-payments",
        "onboarding/first-products",
        "onboarding/first-promotion",
    ]
    assert [s.delay.days for s in welcome.steps] == [0, 2, 3, 5]
    assert welcome.steps[3].when is not None
    winback = campaigns["winback-dormant"]
    assert winback.exit == SegmentRef(line=winback.exit.line, name="active-sellers")
    assert winback.holdout == pytest.approx(0.1)
    assert winback.template_for(2) == "retention/voucher"
    promo = campaigns["promo-harbolnas-1212"]
    assert promo.schedule and promo.timezone == "Asia/Jakarta"
    assert promo.template_for(None) == "promo/harbolnas-1212"
    for campaign in campaigns.values():
        assert campaign.sender_address.endswith("@tokoku.id")


def test_valid_values_read_back(proj):
    write_files(
        proj,
        {
            "campaigns/full.yaml": (
                "kind: drip\ntopic: retention\nsegment: dormant-sellers\n"
                'from: "\\"Tim, Sukses\\" <Success@Example.id>"\n'
                "reply_to: balas@example.id\n"
                "exit: {segment: active-sellers}\n"
                "steps:\n"
                "  - template: onboarding/welcome\n"
                "  - template: promo/sale\n    delay: 36h\n"
                "    when: {metric: orders, window: 10d, eq: 0}\n"
                "send_window: {days: [Monday, fri], hours: '08:30-17:15'}\n"
                "holdout: 2.5%\n"
                "reenter_after: 12w\n"
            ),
            "campaigns/sched.yaml": BROADCAST
            + 'schedule: "*/30 9-17 * * mon-fri"\ntimezone: Asia/Makassar\n',
        },
    )
    campaigns = load(proj)
    full = campaigns["full"]
    assert full.kind == "drip" and full.topic == "retention" and full.segment == "dormant-sellers"
    assert full.sender_name == "Tim, Sukses" and full.sender_address == "success@example.id"
    assert full.reply_to == "balas@example.id"
    assert [s.number for s in full.steps] == [1, 2]
    assert full.steps[0].delay == timedelta(0) and full.steps[1].delay == timedelta(hours=36)
    assert full.send_window == SendWindow(frozenset({0, 4}), time(8, 30), time(17, 15))
    assert full.holdout == pytest.approx(0.025)
    assert full.reenter_after == timedelta(weeks=12)
    assert full.timezone == "Asia/Jakarta"  # the project's default
    sched = campaigns["sched"]
    assert sched.schedule == "*/30 9-17 * * mon-fri" and sched.timezone == "Asia/Makassar"
    assert sched.holdout == 0.0 and sched.send_window is None


def test_load_one_campaign_by_name(proj):
    write_files(proj, {"campaigns/sale.yaml": BROADCAST, "campaigns/broken.yaml": "kind: drip\n"})
    settings = load_settings(proj, env={})
    segments = load_segments(settings.segments_dir)
    assert load_campaign(settings, "sale", segments).template == "promo/sale"
    with pytest.raises(ProblemList) as caught:
        load_campaign(settings, "sael", segments)
    assert "no campaign named 'sael'" in str(caught.value) and "'sale'" in str(caught.value)
    with pytest.raises(ProblemList):
        load_campaign(settings, "broken", segments)


def test_template_for_steps(proj):
    write_files(
        proj,
        {
            "campaigns/d.yaml": DRIP + "  - template: promo/sale\n    delay: 1d\n",
            "campaigns/b.yaml": BROADCAST,
        },
    )
    campaigns = load(proj)
    drip, broadcast = campaigns["d"], campaigns["b"]
    assert drip.template_for(None) == "onboarding/welcome"
    assert drip.template_for(2) == "promo/sale"
    with pytest.raises(CampaignError, match="no step 3"):
        drip.template_for(3)
    assert broadcast.template_for(1) == "promo/sale"
    with pytest.raises(CampaignError, match="broadcast"):
        broadcast.template_for(2)


def test_no_campaigns_folder_means_no_campaigns(project_dir):
    assert load(project_dir) == {}


# --- holdout ------------------------------------------------------------------


def test_holdout_is_stable_and_pinned():
    # Pinned: the same merchants must be held out on every machine and every release.
    held = [m for m in range(1, 201) if in_holdout("winback-dormant", m, 0.1)]
    assert held == [m for m in range(1, 201) if in_holdout("winback-dormant", m, 0.1)]
    assert held == PINNED_WINBACK_HOLDOUT


PINNED_WINBACK_HOLDOUT = [20, 27, 30, 35, 42, 56, 66, 83, 86, 97, 109, 115, 123]
PINNED_WINBACK_HOLDOUT += [125, 128, 132, 137, 149, 150, 154, 157, 160, 180, 181, 187, 195]


def test_holdout_proportion_and_independence():
    ids = range(1, 20_001)
    held_a = {m for m in ids if in_holdout("promo-harbolnas-1212", m, 0.1)}
    held_b = {m for m in ids if in_holdout("winback-dormant", m, 0.1)}
    assert 0.093 < len(held_a) / 20_000 < 0.107
    assert 0.093 < len(held_b) / 20_000 < 0.107
    # Different campaigns hold out different merchants (about 1% overlap, not 10%).
    assert len(held_a & held_b) < 20_000 * 0.02
    # A bigger holdout contains the smaller one, so raising it never releases anyone.
    held_20 = {m for m in ids if in_holdout("promo-harbolnas-1212", m, 0.2)}
    assert held_a <= held_20 and 0.19 < len(held_20) / 20_000 < 0.21


def test_no_holdout_holds_nobody():
    assert not any(in_holdout("x", m, 0.0) for m in range(1000))


# --- send windows and cron ------------------------------------------------------

WEEKDAYS_9_TO_5 = SendWindow(frozenset(range(5)), time(9), time(17))


def test_next_opening_in_the_merchants_zone():
    # Friday 2026-12-04 10:30 UTC is 17:30 in Jakarta (closed) and 19:30 in Jayapura.
    at = datetime(2026, 12, 4, 10, 30)
    assert WEEKDAYS_9_TO_5.next_opening(at, "Asia/Jakarta") == datetime(
        2026, 12, 7, 2, 0
    )  # Mon 09:00 WIB
    assert WEEKDAYS_9_TO_5.next_opening(at, "Asia/Jayapura") == datetime(
        2026, 12, 7, 0, 0
    )  # Mon 09:00 WIT
    # Friday 06:00 UTC is 13:00 WIB: open now.
    assert WEEKDAYS_9_TO_5.next_opening(datetime(2026, 12, 4, 6), "Asia/Jakarta") == datetime(
        2026, 12, 4, 6
    )
    # Tuesday 00:00 UTC is 07:00 WIB: opens at 09:00 WIB the same day.
    assert WEEKDAYS_9_TO_5.next_opening(datetime(2026, 12, 1), "Asia/Jakarta") == datetime(
        2026, 12, 1, 2
    )


@settings(max_examples=80, deadline=None)
@given(
    at=st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1)),
    days=st.frozensets(st.integers(0, 6), min_size=1),
    start=st.integers(0, 22),
    length=st.integers(1, 8),
    zone=st.sampled_from(
        ["Asia/Jakarta", "Asia/Makassar", "Asia/Jayapura", "Europe/Berlin", "America/New_York"]
    ),
)
def test_next_opening_is_the_first_open_moment(at, days, start, length, zone):
    window = SendWindow(
        days, time(start), time(min(start + length, 23), 59 if start + length > 23 else 0)
    )
    opening = window.next_opening(at, zone)
    assert at <= opening <= at + timedelta(days=8)
    assert window.is_open(_local(opening, zone))
    # Every moment between `at` and the opening (sampled every 7 minutes) is closed.
    probe = at
    while probe < opening:
        assert not window.is_open(_local(probe, zone))
        probe += timedelta(minutes=7)


def _local(utc: datetime, zone: str) -> datetime:
    return utc.replace(tzinfo=ZoneInfo("UTC")).astimezone(ZoneInfo(zone)).replace(tzinfo=None)


@pytest.mark.parametrize(
    "expr", ["0 9 * * mon", "*/15 9-17 * * mon-fri", "0 10 12 12 *", "30 8 1 * *"]
)
def test_valid_cron(expr):
    check_cron(expr, "Asia/Jakarta")


@pytest.mark.parametrize(
    ("expr", "words"),
    [
        ("0 9 * * 1", "names"),
        ("61 9 * * *", "59"),
        ("0 9 * *", "5 fields"),
        ("0 9 30 2 *", "never fires"),
    ],
)
def test_invalid_cron(expr, words):
    with pytest.raises(ValueError, match=words):
        check_cron(expr, "Asia/Jakarta")


# --- the example templates the campaigns name ------------------------------------

MERCHANT = {
    "id": 42,
    "external_id": "demo-000042",
    "email": "budi@example.id",
    "name": "Budi Santoso",
    "store_name": "Toko Batik Budi",
    "store_url": "https://tokobatikbudi42.tokoku.id",
    "plan": "basic",
    "category": "fashion",
    "city": "Yogyakarta",
    "locale": "id",
    "timezone": "Asia/Jakarta",
    "status": "active",
    "created_at": datetime(2026, 1, 5),
    "last_login_at": None,
    "attributes": {"products": 3},
}
STATS = {
    "drop": dict(
        revenue_30d=4_200_000,
        revenue_prev_30d=7_000_000,
        revenue_change_30d=-0.4,
        orders_30d=21,
        orders_prev_30d=35,
        last_order_at=datetime(2026, 11, 20, 3),
    ),
    "stopped": dict(
        revenue_30d=0,
        revenue_prev_30d=2_500_000,
        revenue_change_30d=-1.0,
        orders_30d=0,
        orders_prev_30d=9,
        last_order_at=datetime(2026, 10, 2),
    ),
    "nothing": dict(
        revenue_30d=0,
        revenue_prev_30d=0,
        revenue_change_30d=None,
        orders_30d=0,
        orders_prev_30d=0,
        last_order_at=None,
    ),
}
AWKWARD = {
    "complete": MERCHANT,
    "no-contact-name": {**MERCHANT, "name": None, "attributes": {}},
    "nothing-optional": {
        **MERCHANT,
        "name": None,
        "store_name": None,
        "store_url": None,
        "city": None,
        "attributes": {},
    },
    "html-in-name": {**MERCHANT, "store_name": "Rendang & Co <b>", "attributes": {"products": 0}},
}


@pytest.mark.parametrize("locale", ["id", "en"])
def test_example_templates_render_for_awkward_merchants(example_dir, locale):
    """Every template a campaign names renders, in both locales, whatever is missing."""
    from engine.templates import TemplateSet

    settings = load_settings(example_dir, env={})
    campaigns = load(example_dir)
    templates = TemplateSet(settings.templates_dir, "id")
    names = {
        c.template_for(n) for c in campaigns.values() for n in range(1, max(len(c.steps), 1) + 1)
    }
    assert len(names) == 9
    for name in sorted(names):
        template = templates.get(name, locale)
        assert template.locale == locale  # every example has both variants
        for merchant in AWKWARD.values():
            for stats in STATS.values():
                context = {
                    "merchant": {**merchant, "locale": locale},
                    "stats": stats,
                    "campaign": {"name": "test", "topic": name.split("/")[0]},
                    "step": 1,
                    "unsubscribe_url": "https://crm.example.id/u/TOKEN",
                    "now": datetime(2026, 11, 30, 5),
                    "locale": locale,
                }
                rendered = template.render(context)
                for part in (rendered.subject, rendered.html, rendered.text):
                    assert "None" not in part and "Undefined" not in part
                assert "https://crm.example.id/u/TOKEN" in rendered.html
                assert "https://crm.example.id/u/TOKEN" in rendered.text
                assert "Jl. Jenderal Sudirman" in rendered.text
                assert "Rendang & Co <b>" not in rendered.html  # escaped in HTML


def test_revenue_drop_shows_the_merchants_own_numbers(example_dir):
    from engine.templates import TemplateSet

    templates = TemplateSet(load_settings(example_dir, env={}).templates_dir, "id")
    context = {
        "merchant": MERCHANT,
        "stats": STATS["drop"],
        "campaign": {"name": "retention-revenue-drop", "topic": "retention"},
        "step": 1,
        "unsubscribe_url": "https://crm.example.id/u/TOKEN",
        "now": datetime(2026, 11, 30, 5),
        "locale": "id",
    }
    rendered = templates.get("retention/revenue-drop", "id").render(context)
    assert rendered.subject == "Omzet Toko Batik Budi turun 40%: 3 langkah untuk minggu ini"
    for part in (rendered.html, rendered.text):
        assert "Rp4.200.000" in part and "Rp7.000.000" in part and "-40%" in part
        assert "20 November 2026" in part
    english = templates.get("retention/revenue-drop", "en").render({**context, "locale": "en"})
    assert english.subject == "Revenue at Toko Batik Budi fell 40%: 3 steps for this week"
    assert "November 20, 2026" in english.text and "Rp4.200.000" in english.text


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(h1=st.integers(0, 30), m1=st.integers(0, 70), h2=st.integers(0, 30), m2=st.integers(0, 70))
def test_window_hours_load_only_when_valid_and_in_order(proj, h1, m1, h2, m2):
    hours = f"{h1:02d}:{m1:02d}-{h2:02d}:{m2:02d}"
    write_files(proj, {"campaigns/c.yaml": BROADCAST + f'send_window: {{hours: "{hours}"}}\n'})
    valid = h1 < 24 and h2 < 24 and m1 < 60 and m2 < 60 and (h1, m1) < (h2, m2)
    if valid:
        window = load(proj)["c"].send_window
        assert (window.start, window.end) == (time(h1, m1), time(h2, m2))
    else:
        problems = problems_of(proj)
        assert [(p.path.name, p.line) for p in problems] == [("c.yaml", 6)]
        assert "hours" in str(problems[0])

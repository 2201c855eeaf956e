"""The HTML report: one self-contained file, in Bahasa Indonesia or English.

No scripts, no fonts, no images to fetch: the styles are inline and the charts
inline SVG, so the file opens offline and prints as it shows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta
from html import escape
from typing import Any

from sqlalchemy.engine import Connection

import engine.reports.charts as charts
import engine.reports.queries as queries
from engine.config import Settings
from engine.formatting import number, rupiah
from engine.reports.interval import MIN_HOLDOUT
from engine.reports.outcomes import Outcomes, rows_by_campaign
from engine.reports.queries import Filter

TOP = 5  # failure and bounce reasons shown per campaign

TEXT: dict[str, dict[str, str]] = {
    "en": {
        "title": "Campaign report",
        "window": "Conversion: a merchant's first paid order within {window} after the email (the control group: after the moment it would have gone).",
        "period": "Messages sent {since} to {until}.",
        "from": "from",
        "to": "to",
        "start": "the first",
        "end": "now",
        "days": "{n} days",
        "day": "1 day",
        "hours": "{n} hours",
        "step": "step {n}",
        "run": "run {name}",
        "queued": "queued",
        "sent": "sent",
        "clicked": "clicked",
        "converted": "converted",
        "funnel": "Funnel per step",
        "lift": "Conversion against the control group (lift, 95% interval)",
        "lift_axis": "lift in percentage points",
        "versus": "({rate} vs {holdout_rate})",
        "daily": "Sent and conversions per day (UTC)",
        "failures": "Top failure reasons",
        "bounces": "Top bounce and refusal replies",
        "none": "None.",
        "verdict": "{name}: {rate} of merchants written to sold again within {window}, against {holdout_rate} of the control group: {lift} points (95% CI {low} to {high})",
        "small": "; the control group has only {n} merchants (under {min}): too few to conclude",
        "no_holdout": "{name}: {rate} of merchants written to sold again within {window}; there is no control group, so no lift can be measured",
        "nothing": "{name}: nothing sent yet",
        "col_what": "step / run",
        "col_sent": "sent",
        "col_holdout": "control group",
        "col_conv": "converted",
        "col_rate": "rate",
        "col_hrate": "control rate",
        "col_lift": "lift (points)",
        "col_ci": "95% interval",
        "col_revenue": "revenue in window",
        "col_unsub": "unsubscribed",
        "col_failed": "failed",
        "col_reason": "reason",
        "col_count": "messages",
        "col_status": "status",
        "col_reply": "reply (example)",
        "col_attempts": "attempts",
        "empty": "No campaign has sent anything in this period.",
    },
    "id": {
        "title": "Laporan kampanye",
        "window": "Konversi: pesanan lunas pertama merchant dalam {window} setelah email (grup kontrol: setelah saat email itu seharusnya terkirim).",
        "period": "Pesan terkirim {since} sampai {until}.",
        "from": "dari",
        "to": "sampai",
        "start": "awal",
        "end": "sekarang",
        "days": "{n} hari",
        "day": "1 hari",
        "hours": "{n} jam",
        "step": "langkah {n}",
        "run": "putaran {name}",
        "queued": "antre",
        "sent": "terkirim",
        "clicked": "diklik",
        "converted": "konversi",
        "funnel": "Corong per langkah",
        "lift": "Konversi dibanding grup kontrol (lift, interval 95%)",
        "lift_axis": "lift dalam poin persentase",
        "versus": "({rate} vs {holdout_rate})",
        "daily": "Terkirim dan konversi per hari (UTC)",
        "failures": "Alasan gagal terbanyak",
        "bounces": "Balasan bounce dan penolakan terbanyak",
        "none": "Tidak ada.",
        "verdict": "{name}: {rate} merchant yang dikirimi email kembali berjualan dalam {window}, dibanding {holdout_rate} di grup kontrol: {lift} poin (IK 95% {low} s.d. {high})",
        "small": "; grup kontrol hanya {n} merchant (kurang dari {min}): terlalu sedikit untuk menyimpulkan",
        "no_holdout": "{name}: {rate} merchant yang dikirimi email kembali berjualan dalam {window}; tidak ada grup kontrol, jadi lift tidak dapat diukur",
        "nothing": "{name}: belum ada yang terkirim",
        "col_what": "langkah / putaran",
        "col_sent": "terkirim",
        "col_holdout": "grup kontrol",
        "col_conv": "konversi",
        "col_rate": "tingkat",
        "col_hrate": "tingkat kontrol",
        "col_lift": "lift (poin)",
        "col_ci": "interval 95%",
        "col_revenue": "pendapatan dalam jendela",
        "col_unsub": "berhenti langganan",
        "col_failed": "gagal",
        "col_reason": "alasan",
        "col_count": "pesan",
        "col_status": "status",
        "col_reply": "balasan (contoh)",
        "col_attempts": "percobaan",
        "empty": "Belum ada kampanye yang mengirim apa pun pada periode ini.",
    },
}

CSS = """
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  color: #1f2933; margin: 0 auto; max-width: 1100px; padding: 24px 32px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 0 0 8px; border-bottom: 2px solid #3e7cb1; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 18px 0 6px; color: #3e4c59; }
p.meta { color: #52606d; margin: 2px 0; font-size: 13px; }
section.campaign { margin: 28px 0 36px; break-inside: avoid-page; }
ul.verdicts { padding-left: 18px; margin: 6px 0 12px; }
ul.verdicts li { margin: 3px 0; }
ul.verdicts li.win { color: #1d6f42; }
table { border-collapse: collapse; width: 100%; font-size: 13px; margin: 6px 0; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #e4e7eb; vertical-align: top; }
th { background: #f5f7fa; font-weight: 600; }
td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
figure { margin: 10px 0; break-inside: avoid; }
figcaption { font-weight: 600; font-size: 14px; color: #3e4c59; margin-bottom: 2px; }
svg.chart { width: 100%; height: auto; display: block; }
.two { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 24px; }
.two > * { min-width: 0; }
@media (max-width: 800px) { .two { grid-template-columns: 1fr; } }
@media print { body { max-width: none; padding: 0; font-size: 11pt; }
  section.campaign { break-before: page; } section.campaign:first-of-type { break-before: auto; } }
"""


def _decimal(value: float, locale: str, digits: int = 1, sign: bool = False) -> str:
    text = f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"
    return text.replace(".", ",") if locale == "id" else text


def _percent(value: float | None, locale: str) -> str:
    return "–" if value is None else _decimal(value * 100, locale) + "%"


def _points(value: float | None, locale: str) -> str:
    return "–" if value is None else _decimal(value * 100, locale, sign=True)


def _window_words(window: timedelta, t: Mapping[str, str]) -> str:
    seconds = int(window.total_seconds())
    if seconds % 86400 == 0:
        days = seconds // 86400
        return t["day"] if days == 1 else t["days"].format(n=days)
    return t["hours"].format(n=_decimal(seconds / 3600, "en", 0 if seconds % 3600 == 0 else 1))


def _label(row: Mapping[str, Any], t: Mapping[str, str]) -> str:
    if row["step"] is not None:
        return t["step"].format(n=row["step"])
    return t["run"].format(name=row["run"])


def verdict(row: Mapping[str, Any], window: str, locale: str, t: Mapping[str, str]) -> str:
    """The one-line verdict in words for a report row."""
    name = f"{row['campaign']} ({_label(row, t)})"
    if not row["sent"]:
        return t["nothing"].format(name=name)
    rate = _percent(row["conversion_rate"], locale)
    if row["lift"] is None:
        return t["no_holdout"].format(name=name, rate=rate, window=window)
    text = t["verdict"].format(
        name=name,
        rate=rate,
        window=window,
        holdout_rate=_percent(row["holdout_conversion_rate"], locale),
        lift=_points(row["lift"], locale),
        low=_points(row["lift_ci_low"], locale),
        high=_points(row["lift_ci_high"], locale),
    )
    if row["holdout"] < MIN_HOLDOUT:
        text += t["small"].format(n=row["holdout"], min=MIN_HOLDOUT)
    return text


def _table(headers: Iterable[str], rows: Iterable[Iterable[tuple[str, bool]]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td{' class=n' if n else ''}>{escape(v)}</td>" for v, n in r) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _summary(rows: list[dict[str, Any]], locale: str, t: Mapping[str, str]) -> str:
    headers = [t[c] for c in ("col_what", "col_sent", "col_failed", "col_holdout", "col_conv")]
    headers += [
        t[c] for c in ("col_rate", "col_hrate", "col_lift", "col_ci", "col_revenue", "col_unsub")
    ]
    lines = []
    for r in rows:
        ci = (
            "–"
            if r["lift"] is None
            else f"{_points(r['lift_ci_low'], locale)} … {_points(r['lift_ci_high'], locale)}"
        )
        lines.append(
            [
                (_label(r, t), False),
                (number(r["sent"], locale), True),
                (number(r["failed"], locale), True),
                (number(r["holdout"], locale), True),
                (number(r["conversions"], locale), True),
                (_percent(r["conversion_rate"], locale), True),
                (_percent(r["holdout_conversion_rate"], locale), True),
                (_points(r["lift"], locale), True),
                (ci, True),
                (rupiah(r["revenue"], locale), True),
                (number(r["unsubscribes"], locale), True),
            ]
        )
    return _table(headers, lines)


def _figure(caption: str, svg: str) -> str:
    return f"<figure><figcaption>{escape(caption)}</figcaption>{svg}</figure>"


def _campaign_section(
    name: str,
    rows: list[dict[str, Any]],
    extras: Mapping[str, Any],
    window: str,
    locale: str,
    t: Mapping[str, str],
) -> str:
    names = {k: t[k] for k in ("queued", "sent", "clicked", "converted")}
    parts = [f"<section class=campaign><h2>{escape(name)}</h2><ul class=verdicts>"]
    for row in rows:
        win = row["lift_ci_low"] is not None and row["lift_ci_low"] > 0
        parts.append(
            f"<li{' class=win' if win else ''}>{escape(verdict(row, window, locale, t))}</li>"
        )
    parts.append("</ul>")
    parts.append(_summary(rows, locale, t))
    stages = [
        charts.FunnelStage(
            _label(r, t),
            {
                # Everything written to the outbox for the step, whatever became of it.
                "queued": sum(
                    r[s] for s in ("queued", "sent", "deferred", "failed", "suppressed", "unknown")
                ),
                "sent": r["sent"],
                "clicked": r["clicks"],
                "converted": r["conversions"],
            },
        )
        for r in rows
    ]
    parts.append("<div class=two>")
    parts.append(_figure(t["funnel"], charts.funnel(stages, names, lambda n: number(n, locale))))
    points = [
        charts.LiftPoint(
            _label(r, t),
            r["lift"] * 100,
            r["lift_ci_low"] * 100,
            r["lift_ci_high"] * 100,
            t["versus"].format(
                rate=_percent(r["conversion_rate"], locale),
                holdout_rate=_percent(r["holdout_conversion_rate"], locale),
            ),
        )
        for r in rows
        if r["lift"] is not None
    ]
    if points:
        parts.append(_figure(t["lift"], charts.lift_chart(points, t["lift_axis"])))
    parts.append("</div>")
    sent, converted = (
        extras["sent_per_day"].get(name, {}),
        extras["converted_per_day"].get(name, {}),
    )
    days = sorted(set(sent) | set(converted))
    if days:
        parts.append(
            _figure(
                t["daily"],
                charts.per_day(
                    days, [sent.get(d, 0) for d in days], [converted.get(d, 0) for d in days], names
                ),
            )
        )
    failures = sorted(extras["failures"].get(name, []), key=lambda f: -f[2])[:TOP]
    bounces = sorted(extras["bounces"].get(name, []), key=lambda b: -b[2])[:TOP]
    parts.append("<div class=two><div>")
    parts.append(f"<h3>{escape(t['failures'])}</h3>")
    parts.append(
        _table(
            [t["col_reason"], t["col_status"], t["col_count"]],
            [[(e, False), (s, False), (number(n, locale), True)] for s, e, n in failures],
        )
        if failures
        else f"<p>{escape(t['none'])}</p>"
    )
    parts.append(f"</div><div><h3>{escape(t['bounces'])}</h3>")
    parts.append(
        _table(
            [t["col_status"], t["col_reply"], t["col_attempts"]],
            [
                [(c, False), (reply[:160], False), (number(n, locale), True)]
                for c, reply, n in bounces
            ],
        )
        if bounces
        else f"<p>{escape(t['none'])}</p>"
    )
    parts.append("</div></div></section>")
    return "".join(parts)


def _extras(conn: Connection, flt: Filter, outcomes: Outcomes) -> dict[str, Any]:
    """Per-day series and reasons, grouped by campaign (three aggregate queries)."""
    out: dict[str, Any] = {
        "sent_per_day": {},
        "converted_per_day": outcomes.converted_per_day,
        "failures": {},
        "bounces": {},
    }
    for campaign, day, count in queries.sent_per_day(conn, flt):
        out["sent_per_day"].setdefault(campaign, {})[day] = count
    for campaign, state, error, count in queries.failure_reasons(conn, flt):
        out["failures"].setdefault(campaign, []).append((state, error, count))
    for campaign, code, reply, count in queries.bounce_reasons(conn, flt):
        out["bounces"].setdefault(campaign, []).append((code, reply, count))
    return out


def render_page(
    conn: Connection, settings: Settings, flt: Filter, outcomes: Outcomes, locale: str
) -> str:
    """The whole report page as HTML text."""
    t = TEXT.get(locale, TEXT["en"])
    words = _window_words(settings.reports.attribution_window, t)
    extras = _extras(conn, flt, outcomes)
    rows = outcomes.rows
    since = flt.since.isoformat(sep=" ") if flt.since else t["start"]
    until = flt.until.isoformat(sep=" ") if flt.until else t["end"]
    head = (
        f'<!doctype html><html lang="{escape(locale)}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(t['title'])}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{escape(t['title'])}</h1>"
        f"<p class=meta>{escape(t['window'].format(window=words))}</p>"
    )
    if flt.since or flt.until:
        head += f"<p class=meta>{escape(t['period'].format(since=since, until=until))}</p>"
    body = [head, "</header>"]
    grouped = rows_by_campaign(rows)
    if not grouped:
        body.append(f"<p>{escape(t['empty'])}</p>")
    for name, campaign_rows in grouped.items():
        body.append(_campaign_section(name, campaign_rows, extras, words, locale, t))
    body.append("</body></html>\n")
    return "".join(body)

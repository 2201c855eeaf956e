"""``campaign demo``: realistic, deterministic demo data for an Indonesian webstore platform.

The same seed and the same day give the same merchants, orders and activities.
Histories are laid out relative to ``now`` so that the example segments ("revenue
dropped", "dormant", "new, not yet selling") find the merchants they describe.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from engine.errors import DatabaseError
from engine.models import activities, merchants, metadata, orders

DEMO_PREFIX = "demo-"

FIRST_NAMES = (
    "Budi Siti Agus Dewi Rina Andi Putri Wahyu Sri Rudi Ayu Dian Eko Fitri Hendra Indah "
    "Joko Kartika Lestari Made Nyoman Ketut Wayan Nur Rizky Sari Teguh Yuni Bayu Citra "
    "Dimas Fajar Gita Hadi Intan Mega Nanda Oki Permata Ratna Surya Tri Umar Vina Yoga "
    "Zainal Arif Bambang Cahya Desi Erlangga Farah Gilang Hana Irfan Januar Komang"
).split()
LAST_NAMES = (
    "Santoso Wijaya Saputra Pratama Hidayat Kurniawan Setiawan Nugroho Lestari Siregar "
    "Nasution Harahap Simanjuntak Sihombing Tanjung Lubis Wibowo Susanto Halim Gunawan "
    "Purnomo Rahman Hakim Syahputra Suryadi Utomo Wirawan Mahendra Putra Anggraini "
    "Sitompul Pangaribuan Manurung Tambunan Hutapea Rumbewas Wenda Latuconsina Pattimura"
).split()
STORE_PATTERNS = (
    "Toko {w}",
    "{w} Store",
    "Warung {w}",
    "{w} Collection",
    "Rumah {w}",
    "{w} Official",
    "Galeri {w}",
    "{w} Mart",
    "Kedai {w}",
    "{w} Shop",
)
STORE_WORDS = {
    "fashion": "Batik Kebaya Hijab Sarung Kaos Denim Tenun Songket Sepatu Tas".split(),
    "food": "Kopi Sambal Keripik Rendang Kue Madu Teh Rempah Bakpia Dodol".split(),
    "electronics": "Gadget Ponsel Elektronik Aksesoris Kabel Audio Kamera Komputer".split(),
    "beauty": "Cantik Skincare Herbal Aroma Wangi Jamu Kosmetik Salon".split(),
    "home": "Dapur Perabot Rumah Anyaman Keramik Lampu Tanaman Kasur".split(),
    "crafts": "Kerajinan Ukir Rotan Perak Wayang Gerabah Lukis Manik".split(),
    "sports": "Sepeda Badminton Futsal Outdoor Gunung Renang Yoga Lari".split(),
    "kids": "Mainan Bayi Anak Ceria Pintar Boneka Edukasi Balita".split(),
}
CATEGORY_WEIGHTS = {
    "fashion": 24,
    "food": 22,
    "electronics": 12,
    "beauty": 14,
    "home": 10,
    "crafts": 8,
    "sports": 5,
    "kids": 5,
}
# Typical order value per category, in Rupiah (median of a log-normal).
CATEGORY_ORDER_VALUE = {
    "fashion": 185_000,
    "food": 75_000,
    "electronics": 420_000,
    "beauty": 120_000,
    "home": 210_000,
    "crafts": 260_000,
    "sports": 330_000,
    "kids": 140_000,
}
CITIES = (
    # (city, IANA zone, weight): WIB, WITA and WIT
    ("Jakarta", "Asia/Jakarta", 22),
    ("Bandung", "Asia/Jakarta", 10),
    ("Surabaya", "Asia/Jakarta", 10),
    ("Medan", "Asia/Jakarta", 7),
    ("Semarang", "Asia/Jakarta", 5),
    ("Yogyakarta", "Asia/Jakarta", 6),
    ("Palembang", "Asia/Jakarta", 3),
    ("Malang", "Asia/Jakarta", 4),
    ("Pontianak", "Asia/Pontianak", 2),
    ("Denpasar", "Asia/Makassar", 7),
    ("Makassar", "Asia/Makassar", 5),
    ("Balikpapan", "Asia/Makassar", 3),
    ("Mataram", "Asia/Makassar", 2),
    ("Manado", "Asia/Makassar", 2),
    ("Jayapura", "Asia/Jayapura", 2),
    ("Ambon", "Asia/Jayapura", 1),
    ("Sorong", "Asia/Jayapura", 1),
)
PLANS = {"free": 30, "basic": 40, "pro": 25, "business": 5}
EMAIL_DOMAINS = ("gmail.com", "yahoo.co.id", "outlook.co.id", "gmail.com", "gmail.com")
# Shapes of merchant history that User Success cares about, with their share.
SHAPES = {
    "steady": 28,
    "growing": 12,
    "declining": 15,
    "dormant": 15,
    "new": 8,
    "never_sold": 20,
    "test": 2,
}


@dataclass
class DemoMerchant:
    row: dict[str, Any]
    shape: str


@dataclass
class DemoSummary:
    merchants: int = 0
    orders: int = 0
    activities: int = 0
    shapes: dict[str, int] = field(default_factory=dict)
    sections: list[tuple[str, tuple[str, ...], list[tuple[Any, ...]]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seed: int = 1212

    def data_rows(self) -> list[tuple[str, int]]:
        shapes = ", ".join(f"{k} {v}" for k, v in sorted(self.shapes.items()))
        return [
            (f"merchants ({shapes})", self.merchants),
            ("orders (12 months)", self.orders),
            ("activities", self.activities),
        ]


def _weighted(rng: random.Random, weights: dict[str, int]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", text.lower())


def generate_merchants(count: int, *, now: datetime, seed: int = 1212) -> Iterator[DemoMerchant]:
    """Demo merchants with their history shape; deterministic for (count, seed, now)."""
    rng = random.Random(seed)
    city_weights = [c[2] for c in CITIES]
    for number in range(1, count + 1):
        shape = _weighted(rng, SHAPES)
        category = _weighted(rng, CATEGORY_WEIGHTS)
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        word = rng.choice(STORE_WORDS[category])
        store = rng.choice(STORE_PATTERNS).format(
            w=f"{word} {first}" if rng.random() < 0.4 else word
        )
        city, zone, _ = rng.choices(CITIES, weights=city_weights)[0]
        slug = _slug(store)
        if shape == "test":
            email = f"qa+{number}@tokoku-internal.id"
        elif rng.random() < 0.45:
            email = f"{_slug(first)}.{_slug(last)}{number}@{rng.choice(EMAIL_DOMAINS)}"
        else:
            email = f"halo+{number}@{slug}.id"
        if shape == "new":
            created = now - timedelta(days=rng.uniform(1, 28))
        elif shape in ("dormant", "declining", "steady"):
            created = now - timedelta(days=rng.uniform(200, 730))
        else:
            created = now - timedelta(days=rng.uniform(60, 730))
        attributes: dict[str, Any] = {
            "tier": rng.choices(["bronze", "silver", "gold"], weights=[6, 3, 1])[0],
            "payment_setup": shape not in ("new", "never_sold") or rng.random() < 0.3,
            "products": 0 if shape == "new" and rng.random() < 0.6 else rng.randint(1, 400),
            "referral": rng.choice(["organic", "ads", "partner", "event", "organic"]),
        }
        if shape == "test":
            attributes["test_account"] = True
        if rng.random() < 0.12:
            attributes["partner_programme"] = "interested"
        yield DemoMerchant(
            {
                "id": number,
                "external_id": f"{DEMO_PREFIX}{number:06d}",
                "email": email,
                "name": f"{first} {last}",
                "store_name": store,
                "store_url": f"https://{slug}{number}.tokoku.id",
                "plan": "free" if shape == "test" else _weighted(rng, PLANS),
                "category": category,
                "city": city,
                "locale": "en" if rng.random() < 0.15 else "id",
                "timezone": zone,
                "status": "active" if rng.random() < 0.96 else "paused",
                "created_at": created.replace(microsecond=0),
                "last_login_at": None,
                "attributes": attributes,
            },
            shape,
        )


def _monthly_rate(shape: str, months_ago: int, base: float, turn: int, factor: float) -> float:
    """Expected orders in the month ``months_ago`` months back (0 = the last 30 days).

    ``turn`` is the month where a declining or dormant store changed; ``factor``
    how much a declining store keeps from one month to the next.
    """
    if shape == "steady":
        return base
    if shape == "growing":
        return base * (0.35 + 0.65 * (11 - months_ago) / 11) * 1.4
    if shape == "declining":
        # Healthy a while ago, then down month on month: the last month is well under half.
        return base if months_ago >= turn else base * factor ** (turn - months_ago)
    if shape == "dormant":
        return base if months_ago >= turn else 0.0
    if shape == "test":
        return 0.4
    return 0.0


def generate_history(
    merchant: DemoMerchant, *, seed: int, now: datetime
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], datetime | None]:
    """(orders, activities, last_login_at) for one merchant, deterministic per merchant and seed."""
    row, shape = merchant.row, merchant.shape
    rng = random.Random(f"{seed}:{row['id']}")
    created: datetime = row["created_at"]
    base = rng.uniform(3, 32)
    turn = rng.choice((1, 2, 2, 3, 4)) if shape == "dormant" else rng.choice((3, 4, 5))
    factor = rng.uniform(0.45, 0.75)
    typical = CATEGORY_ORDER_VALUE[row["category"]]
    found: list[dict[str, Any]] = []
    for months_ago in range(12):
        end = now - timedelta(days=30 * months_ago)
        start = end - timedelta(days=30)
        if end <= created:
            break
        start = max(start, created)
        expected = (
            _monthly_rate(shape, months_ago, base, turn, factor)
            * (end - start)
            / timedelta(days=30)
        )
        count = max(0, round(rng.gauss(expected, math.sqrt(expected)))) if expected > 0 else 0
        for _ in range(count):
            placed = start + (end - start) * rng.random()
            amount = int(round(rng.lognormvariate(math.log(typical), 0.6), -3)) or 1000
            status = rng.choices(["paid", "cancelled", "refunded"], weights=[88, 8, 4])[0]
            found.append(
                {"placed_at": placed.replace(microsecond=0), "amount": amount, "status": status}
            )
    found.sort(key=lambda o: o["placed_at"])
    order_rows = [
        {"merchant_id": row["id"], "order_ref": f"INV/{row['id']:06d}/{i:05d}", **o}
        for i, o in enumerate(found, start=1)
    ]

    # Logins: frequent for sellers, stopping for dormant ones, sparse or none otherwise.
    last_seen = {
        "steady": 2,
        "growing": 1,
        "declining": 10,
        "dormant": rng.uniform(20, 120),
        "new": rng.uniform(0, 6),
        "never_sold": rng.uniform(20, 400),
        "test": 3,
    }[shape]
    login_every = {
        "steady": 3,
        "growing": 2,
        "declining": 9,
        "dormant": 6,
        "new": 2,
        "never_sold": 30,
        "test": 7,
    }[shape]
    events: list[dict[str, Any]] = []
    never_logged_in = shape in ("never_sold", "new") and rng.random() < 0.35
    last_login = None
    if not never_logged_in:
        moment = now - timedelta(days=last_seen)
        while moment > created and moment > now - timedelta(days=365):
            events.append({"kind": "login", "occurred_at": moment.replace(microsecond=0)})
            last_login = last_login or moment.replace(microsecond=0)
            moment -= timedelta(days=rng.expovariate(1 / login_every) + 0.05)
        for _ in range(min(row["attributes"]["products"], 6)):
            when = created + (now - created) * rng.random() ** 2
            events.append({"kind": "product_added", "occurred_at": when.replace(microsecond=0)})
        if found and rng.random() < 0.4:
            when = found[len(found) // 2]["placed_at"] - timedelta(days=rng.uniform(1, 10))
            events.append({"kind": "promo_created", "occurred_at": when.replace(microsecond=0)})
    seen = set()
    activity_rows = []
    for event in events:
        key = (event["kind"], event["occurred_at"])
        if key not in seen and event["occurred_at"] >= created:
            seen.add(key)
            activity_rows.append({"merchant_id": row["id"], **event})
    return order_rows, activity_rows, last_login


def _reset(engine: Engine) -> None:
    with engine.begin() as conn:
        foreign = conn.execute(
            sa.select(sa.func.count())
            .select_from(merchants)
            .where(sa.not_(merchants.c.external_id.startswith(DEMO_PREFIX, autoescape=True)))
        ).scalar_one()
        if foreign:
            raise DatabaseError(
                f"the database already holds {foreign} merchants that are not demo data; "
                "run `campaign demo` in an empty project folder (or point CAMPAIGN_DATABASE_URL elsewhere)"
            )
        for table in reversed(metadata.sorted_tables):
            # The suppression list is kept: it is keyed by address, may hold real people
            # (a complaint, a hard bounce) and nothing in it belongs to the demo data.
            if table.name != "suppressions":
                conn.execute(table.delete())


def load_demo(
    engine: Engine, *, now: datetime, merchants_count: int = 1000, seed: int = 1212
) -> DemoSummary:
    """Replace the demo data in ``engine`` (refusing if real merchants are present)."""
    _reset(engine)
    summary = DemoSummary(seed=seed)
    batch_m: list[dict[str, Any]] = []
    batch_o: list[dict[str, Any]] = []
    batch_a: list[dict[str, Any]] = []

    def flush(conn) -> None:
        if batch_m:
            conn.execute(merchants.insert(), batch_m)
        if batch_o:
            conn.execute(orders.insert(), batch_o)
        if batch_a:
            conn.execute(activities.insert(), batch_a)
        batch_m.clear()
        batch_o.clear()
        batch_a.clear()

    with engine.begin() as conn:
        for merchant in generate_merchants(merchants_count, seed=seed, now=now):
            order_rows, activity_rows, last_login = generate_history(merchant, seed=seed, now=now)
            merchant.row["last_login_at"] = last_login
            batch_m.append(merchant.row)
            batch_o.extend(order_rows)
            batch_a.extend(activity_rows)
            summary.merchants += 1
            summary.orders += len(order_rows)
            summary.activities += len(activity_rows)
            summary.shapes[merchant.shape] = summary.shapes.get(merchant.shape, 0) + 1
            if len(batch_o) > 20_000 or len(batch_m) >= 2000:
                flush(conn)
        flush(conn)
        if engine.dialect.name == "postgresql":
            # Explicit ids were inserted: move the sequences past them.
            for table in (merchants, orders, activities):
                conn.execute(
                    sa.text(
                        f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                        f"COALESCE((SELECT MAX(id) FROM {table.name}), 0) + 1, false)"
                    )
                )
    return summary


def run_demo(project, *, now: datetime, merchants: int = 1000, seed: int = 1212) -> DemoSummary:
    """Create the schema, load the demo data, then show what each example would do."""
    engine = project.database()
    summary = load_demo(engine, merchants_count=merchants, seed=seed, now=now)
    _show_examples(project, summary, now)
    return summary


def _show_examples(project, summary: DemoSummary, now: datetime) -> None:
    """Count every segment and dry-run every example campaign (changing nothing)."""
    settings = project.settings
    if not settings.segments_dir.is_dir():
        summary.notes.append(
            f"No segments/ folder in {settings.project_dir}: nothing more to show."
        )
        return
    # The past first (two campaigns ten days back and the orders after them), so that the
    # counts and dry runs below are of the data as it now stands.
    _show_outcomes(project, summary, now)
    from engine.segments import count_segment, load_segments

    segments = load_segments(settings.segments_dir)
    rows = [
        (name, segments[name].description, count_segment(project.engine, segments, name, now=now))
        for name in sorted(segments)
    ]
    summary.sections.append(("Segments", ("segment", "description", "merchants"), rows))
    if not settings.campaigns_dir.is_dir():
        return
    from engine.campaigns import load_campaigns
    from engine.sending import dry_run_campaign

    campaigns = load_campaigns(settings, segments)
    rows = []
    samples = []
    for name in sorted(campaigns):
        report = dry_run_campaign(project, name, now=now)
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(report.skipped.items()) if v) or "-"
        what = "step 1" if campaigns[name].kind == "drip" else "broadcast"
        rows.append(
            (name, what, campaigns[name].segment, report.audience, report.would_send, skipped)
        )
        samples.extend((name, m["email"], m["subject"]) for m in report.messages[:2])
    summary.sections.append(
        (
            "Dry run of every campaign (nothing sent, nothing written)",
            ("campaign", "sends", "segment", "audience", "would send", "skipped"),
            rows,
        )
    )
    summary.sections.append(("A few of the messages", ("campaign", "to", "subject"), samples))
    if "onboarding-welcome" in campaigns:
        _simulate_onboarding(project, summary, now)
    summary.notes.append(
        "Next: `campaign render CAMPAIGN --merchant ID --out out/` to see one message, "
        "`campaign send CAMPAIGN --dry-run --out out/` for all of them as .eml files."
    )


SIMULATED_DAYS = 14


def _simulate_onboarding(project, summary, now) -> None:
    """The onboarding drip's forecast: messages per step and day, on a copy of the database."""
    from engine.drips.simulate import simulate

    result = simulate(project, "onboarding-welcome", days=SIMULATED_DAYS, now=now)
    per_day: dict[tuple[str, int], int] = {}
    for planned in result.planned:
        key = (planned.at.date().isoformat(), planned.step)
        per_day[key] = per_day.get(key, 0) + 1
    summary.sections.append(
        (
            f"Simulation of onboarding-welcome over {SIMULATED_DAYS} days (nothing written)",
            ("day (UTC)", "step", "messages"),
            [(day, step, n) for (day, step), n in sorted(per_day.items())],
        )
    )


def _show_outcomes(project, summary: DemoSummary, now: datetime) -> None:
    """Two campaigns sent (to no server) ten days back, the orders after, and the report."""
    from engine.demo_outcomes import simulate_outcomes

    outcomes = simulate_outcomes(project, now=now, seed=summary.seed)
    if outcomes is None:
        return
    summary.sections.append(
        (
            f"Simulated sends on {outcomes.sent_at:%Y-%m-%d %H:%M} UTC (no mail left this machine)",
            ("campaign", "sent"),
            sorted(outcomes.sent.items()),
        )
    )
    summary.notes.append(
        f"{outcomes.orders} first orders followed them; the outcome report (lift against the "
        f"holdout) is in {outcomes.report}: open it in a browser, or `campaign report`."
    )

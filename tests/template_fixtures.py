"""Small template projects shared by the template and message tests."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from conftest import write_files

LAYOUT = """<!DOCTYPE html>
<html lang="{{ locale }}">
<head><meta charset="utf-8"><title>{{ subject }}</title>
<style>
body { margin: 0; font-family: Arial, sans-serif; }
p { color: #333333; margin: 0 0 12px 0; }
.btn { background-color: #f97316; color: #ffffff; padding: 10px 20px; }
.hidden { display: none; }
td.cell { padding: 4px 8px; }
@media only screen and (max-width: 600px) { .wrap { width: 100% !important; } }
</style></head>
<body>
<div class="hidden">{{ preheader }}</div>
<table class="wrap" width="600"><tr><td class="cell">
{% block content %}{% endblock %}
</td></tr>
<tr><td class="cell"><p><a href="{{ unsubscribe_url }}">{% block unsub %}Berhenti berlangganan{% endblock %}</a></p></td></tr>
</table>
</body>
</html>
"""

BUTTON = """<a class="btn" href="{{ button_url }}">{{ button_label }}</a>"""

HELLO_ID = """---
subject: "Halo {{ merchant.store_name }}"
preheader: "Omzet {{ stats.revenue_30d | rupiah }}"
---
{% extends "layouts/base.html" %}
{% block content %}
<p>Halo {{ merchant.name }},</p>
<p>Omzet {{ stats.revenue_30d | rupiah }} ({{ stats.revenue_change_30d | percent if stats.revenue_change_30d is not none else "baru" }}) per {{ now | date }}.</p>
{% with button_url = merchant.store_url ~ "/admin?a=1&b=" ~ merchant.id, button_label = "Buka toko" %}{% include "partials/button.html" %}{% endwith %}
{% endblock %}
"""

HELLO_EN = """---
subject: "Hello {{ merchant.store_name }}"
---
{% extends "layouts/base.html" %}
{% block content %}
<p>Hello {{ merchant.name }},</p>
<p>Revenue {{ stats.revenue_30d | rupiah }} ({{ stats.orders_30d | number }} orders) as of {{ now | date }}.</p>
{% endblock %}
{% block unsub %}Unsubscribe{% endblock %}
"""

LOOPS = """---
subject: "Daftar {{ merchant.store_name }}"
---
{% extends "layouts/base.html" %}
{% block content %}
<table class="list">
{% for item in merchant.attributes.top_products | default([]) %}
<tr {% if loop.first %}bgcolor="#eeeeee"{% endif %}><td class="cell">{{ loop.index }}</td><td class="cell {{ 'odd' if loop.index is odd else 'even' }}">{{ item }}</td></tr>
{% else %}
<tr><td class="cell">Belum ada produk.</td></tr>
{% endfor %}
</table>
{% if stats.revenue_change_30d is not none and stats.revenue_change_30d < 0 %}
<p style="font-weight: bold">Turun {{ stats.revenue_change_30d | percent }}</p>
{% endif %}
<p>{{ super() if false else "" }}Kontak: <a href="mailto:bantuan@example.id">bantuan@example.id</a></p>
{% endblock %}
"""

FILES = {
    "templates/layouts/base.html": LAYOUT,
    "templates/partials/button.html": BUTTON,
    "templates/hello.id.html": HELLO_ID,
    "templates/hello.en.html": HELLO_EN,
    "templates/only-plain.html": '---\nsubject: "Plain {{ locale }}"\n---\n<p>Plain {{ now | date }}</p>\n',
    "templates/lists/loops.id.html": LOOPS,
    "templates/handwritten.id.html": '---\nsubject: "Hand"\n---\n<p>HTML & <b>{{ merchant.name }}</b></p>\n',
    "templates/handwritten.id.txt": "Text for {{ merchant.name }} & co: {{ unsubscribe_url }}\n",
}


def make_templates(root: Path, extra: dict[str, str] | None = None) -> Path:
    write_files(root, {**FILES, **(extra or {})})
    return root / "templates"


def merchant(**overrides: Any) -> dict[str, Any]:
    row = {
        "id": 42, "external_id": "m-42", "email": "budi@contoh.id", "name": "Budi Santoso",
        "store_name": "Kopi Budi", "store_url": "https://kopibudi.tokoku.id", "plan": "pro",
        "category": "food", "city": "Makassar", "locale": "id", "timezone": "Asia/Makassar",
        "status": "active", "created_at": datetime(2025, 1, 1), "last_login_at": None,
        "attributes": {"tier": "gold"},
    }  # fmt: skip
    row.update(overrides)
    return row


def stats(**overrides: Any) -> dict[str, Any]:
    row = {
        "revenue_30d": 1_500_000, "revenue_prev_30d": 2_500_000, "revenue_change_30d": -0.4,
        "orders_30d": 1234, "orders_prev_30d": 20, "last_order_at": datetime(2026, 11, 20, 5),
    }  # fmt: skip
    row.update(overrides)
    return row


NOW = datetime(2026, 12, 5, 2, 0)


def context(**overrides: Any) -> dict[str, Any]:
    ctx = {
        "merchant": merchant(),
        "stats": stats(),
        "campaign": {"name": "winback", "topic": "retention"},
        "step": 1,
        "unsubscribe_url": "https://crm.example.id/u/42.retention.1.sig",
        "now": NOW,
    }
    ctx.update(overrides)
    return ctx

"""CSS inlined once per template gives the same document as inlining every rendered message.

Checked for every example template of the repository (whatever exists) and for
fixtures with loops, conditions inside attributes, partials and super-less
blocks, with merchant data full of characters that need escaping.
"""

from __future__ import annotations

import lxml.html
import pytest
from conftest import REPO
from template_fixtures import context, make_templates, merchant, stats

from engine.templates import TemplateSet, inline_css

FIXTURE_NAMES = ["hello", "lists/loops", "only-plain", "handwritten"]


def _normalized(html: str) -> list[tuple]:
    """The document as (tag, attributes, text, tail) with insignificant whitespace and entity spelling gone."""
    root = lxml.html.document_fromstring(html)
    out = []
    for element in root.iter():
        if not isinstance(element.tag, str):
            continue  # comments
        attributes = []
        for key, value in sorted(element.attrib.items()):
            if key == "style":
                value = ";".join(
                    sorted(p.strip().replace(" ", "") for p in value.split(";") if p.strip())
                )
            attributes.append((key, value))
        text = " ".join((element.text or "").split())
        tail = " ".join((element.tail or "").split())
        if element.tag == "style":
            text = " ".join(text.split())
        out.append((element.tag, tuple(attributes), text, tail))
    return out


def _contexts():
    tricky = merchant(
        name="Siti \"Ibu\" O'Neil & <Anak>", store_name="Toko <Serba> & Ada 'Murah'",
        store_url="https://toko.example.id/?a=1&b=2", locale="en",
        attributes={"top_products": ["Kopi & Teh", "<script>x</script>", "Ñame ü"], "tier": "gold"},
    )  # fmt: skip
    return [
        context(),
        context(
            merchant=tricky,
            stats=stats(revenue_change_30d=None, last_order_at=None, revenue_prev_30d=0),
        ),
        context(merchant=merchant(locale="en"), stats=stats(revenue_change_30d=0.25)),
    ]


def _assert_equivalent(templates: TemplateSet, name: str, locale: str) -> int:
    prepared = templates.get(name, locale)
    checked = 0
    for ctx in _contexts():
        ctx = {**ctx, "locale": prepared.locale or locale}
        once = prepared.render(ctx)
        full = {**ctx, "subject": once.subject, "preheader": once.preheader or ""}
        per_message = inline_css(prepared.original.render(full))
        assert _normalized(once.html) == _normalized(per_message), f"{prepared.path} differs"
        checked += 1
    return checked


@pytest.mark.parametrize("name", FIXTURE_NAMES)
@pytest.mark.parametrize("locale", ["id", "en"])
def test_fixture_templates_inline_once_equals_inline_each(tmp_path, name, locale):
    templates = TemplateSet(make_templates(tmp_path), "id")
    assert _assert_equivalent(templates, name, locale) == 3


def _example_variants() -> list[tuple[str, str]]:
    templates = TemplateSet(REPO / "templates", "id")
    return [(name, locale or "id") for name, locale in templates.variants()]


@pytest.mark.parametrize(
    ("name", "locale"),
    _example_variants()
    or [pytest.param("-", "-", marks=pytest.mark.skip("no example templates yet"))],
)
def test_every_example_template_inline_once_equals_inline_each(name, locale):
    templates = TemplateSet(REPO / "templates", "id")
    assert _assert_equivalent(templates, name, locale) == 3


def test_inlining_happens_once_per_template(tmp_path, monkeypatch):
    import engine.templates.template_set as module

    calls: list[int] = []
    real = module.inline_css
    monkeypatch.setattr(module, "inline_css", lambda html: calls.append(1) or real(html))
    templates = TemplateSet(make_templates(tmp_path), "id")
    for _ in range(25):
        templates.get("hello", "id").render(context())
    assert len(calls) == 1


def test_premailer_would_mangle_raw_jinja_but_we_protect_it(tmp_path):
    # What the issue measured: premailer URL-encodes {{ }} inside href. Ours keeps it intact.
    raw = inline_css('<html><body><a href="https://x.id/{{ merchant.id }}">x</a></body></html>')
    assert "{{ merchant.id }}" not in raw
    templates = TemplateSet(make_templates(tmp_path), "id")
    source = templates.get("hello", "id").inlined_source
    assert 'href="{{ button_url }}"' in source and "{{ merchant.name }}" in source

"""Template loading: front matter, locales, layouts and partials, escaping, text part, errors."""

from __future__ import annotations

import pytest
from template_fixtures import context, make_templates, merchant, stats

from engine.errors import TemplateError
from engine.templates import TemplateSet, html_to_text


@pytest.fixture
def templates(tmp_path) -> TemplateSet:
    return TemplateSet(make_templates(tmp_path), "id")


def test_names_leave_out_layouts_and_partials(templates):
    assert templates.names() == ["handwritten", "hello", "lists/loops", "only-plain"]


def test_locale_variant_is_chosen_by_the_merchants_locale(templates):
    assert templates.get("hello", "id").path.name == "hello.id.html"
    assert templates.get("hello", "en").path.name == "hello.en.html"
    assert templates.get("hello", "en").locale == "en"


def test_missing_locale_falls_back_to_the_default_locale(templates):
    chosen = templates.get("lists/loops", "en")
    assert chosen.path.name == "loops.id.html" and chosen.locale == "id"


def test_fallback_to_a_template_without_locale(templates):
    chosen = templates.get("only-plain", "en")
    assert chosen.path.name == "only-plain.html" and chosen.locale is None
    # The context's locale is the merchant's, so the filters still speak it.
    assert chosen.render(context(locale="en")).subject == "Plain en"


def test_default_locale_of_the_project_is_used(tmp_path):
    templates = TemplateSet(make_templates(tmp_path), "en")
    assert templates.get("hello", "fr").path.name == "hello.en.html"


def test_unknown_template_names_what_was_looked_for(templates):
    with pytest.raises(
        TemplateError, match=r"no template 'nope' \(looked for nope.id.html, nope.html"
    ):
        templates.get("nope", "id")
    with pytest.raises(TemplateError, match="not a template name"):
        templates.get("../secret", "id")


def test_render_with_layout_partial_and_filters(templates):
    result = templates.get("hello", "id").render(context())
    assert result.subject == "Halo Kopi Budi"
    assert result.preheader == "Omzet Rp1.500.000"
    assert "Omzet Rp1.500.000 (-40%) per 5 Desember 2026." in result.html
    assert 'href="https://kopibudi.tokoku.id/admin?a=1&amp;b=42"' in result.html
    assert "Berhenti berlangganan" in result.html
    # The CSS went inline, the media query stayed in a <style>.
    assert 'class="btn"' in result.html and "background-color:#f97316" in result.html
    assert "@media" in result.html and "margin: 0 0 12px 0; }" not in result.html
    assert result.html.startswith("<!DOCTYPE html>")


def test_english_variant_and_number_filter(templates):
    ctx = context(merchant=merchant(locale="en"))
    result = templates.get("hello", "en").render(ctx)
    assert result.subject == "Hello Kopi Budi"
    assert "Revenue Rp1.500.000 (1,234 orders) as of December 5, 2026." in result.html
    assert "Unsubscribe" in result.html and "Berhenti" not in result.html


def test_autoescape_in_html_but_not_in_subject_or_text(templates):
    evil = merchant(name="<script>alert(1)</script> & Co", store_name="Kopi <b>Budi</b> & 'Teh'")
    result = templates.get("hello", "id").render(context(merchant=evil))
    assert result.subject == "Halo Kopi <b>Budi</b> & 'Teh'"
    assert "<script>" not in result.html and "&lt;script&gt;" in result.html
    assert "Halo <script>alert(1)</script> & Co," in result.text
    hand = templates.get("handwritten", "id").render(context(merchant=evil))
    assert hand.text.startswith("Text for <script>alert(1)</script> & Co & co:")


def test_text_part_is_generated_with_links_as_text_and_url(templates):
    result = templates.get("hello", "id").render(context())
    text = result.text
    assert "Halo Budi Santoso," in text
    assert "Buka toko (https://kopibudi.tokoku.id/admin?a=1&b=42)" in text
    assert "Berhenti berlangganan (https://crm.example.id/u/42.retention.1.sig)" in text
    # Hidden preheader, <head> and <style> stay out of the text.
    assert "Omzet Rp1.500.000\n" not in text.split("Halo")[0]
    assert "font-family" not in text and "<" not in text
    assert "\n\n\n" not in text


def test_generated_text_keeps_loops_and_conditions(templates):
    ctx = context(merchant=merchant(attributes={"top_products": ["Kopi Toraja", "Kopi Gayo"]}))
    result = templates.get("lists/loops", "id").render(ctx)
    assert "1 Kopi Toraja\n2 Kopi Gayo" in result.text
    assert "Turun -40%" in result.text
    assert "Kontak: bantuan@example.id" in result.text
    empty = templates.get("lists/loops", "id").render(context(stats=stats(revenue_change_30d=None)))
    assert "Belum ada produk." in empty.text and "Turun" not in empty.text


def test_handwritten_text_part_is_used_when_present(templates):
    result = templates.get("handwritten", "id").render(context())
    assert (
        result.text == "Text for Budi Santoso & co: https://crm.example.id/u/42.retention.1.sig\n"
    )


def test_html_to_text_basics():
    text = html_to_text(
        "<p>Hi&nbsp;<b>there</b></p><ul><li>one</li><li>two</li></ul><ol><li>first</li><li>second</li></ol>"
        '<p><a href="https://x.id/a">Go</a> <a href="https://x.id/b">https://x.id/b</a>'
        '<img src="x.png" alt="Logo"></p><div style="display: none">secret</div>'
    )
    assert "Hi\xa0there" in text and "- one\n- two" in text and "1. first\n2. second" in text
    assert "Go (https://x.id/a)" in text and "https://x.id/b (" not in text
    assert "Logo" in text and "secret" not in text


# --- mistakes are named by file and line ----------------------------------------------


def _project(tmp_path, files):
    return TemplateSet(make_templates(tmp_path, files), "id")


def test_undefined_variable_names_file_and_line(tmp_path):
    templates = _project(
        tmp_path,
        {
            "templates/oops.id.html": '---\nsubject: "x"\n---\n{% extends "layouts/base.html" %}\n'
            "{% block content %}\n<p>ok</p>\n<p>{{ merchant.nickname }}</p>\n{% endblock %}\n"
        },
    )
    with pytest.raises(TemplateError) as info:
        templates.get("oops", "id").render(context())
    assert info.value.path.name == "oops.id.html" and info.value.line == 7
    assert "nickname" in str(info.value) and "oops.id.html:7" in str(info.value)


def test_undefined_variable_in_a_partial_names_the_partial(tmp_path):
    templates = _project(
        tmp_path,
        {
            "templates/partials/broken.html": "<p>\n{{ missing_thing }}</p>",
            "templates/usespartial.id.html": '---\nsubject: "x"\n---\n{% extends "layouts/base.html" %}\n'
            '{% block content %}{% include "partials/broken.html" %}{% endblock %}\n',
        },
    )
    with pytest.raises(TemplateError) as info:
        templates.get("usespartial", "id").render(context())
    assert info.value.path.name == "broken.html" and info.value.line == 2
    assert "missing_thing" in str(info.value)


def test_undefined_in_subject_names_the_front_matter_line(tmp_path):
    templates = _project(
        tmp_path,
        {
            "templates/subj.id.html": '---\n# comment\nsubject: "Hi {{ merchant.nick }}"\n---\n<p>x</p>\n'
        },
    )
    with pytest.raises(TemplateError) as info:
        templates.get("subj", "id").render(context())
    assert (
        info.value.line == 3 and "in the subject" in str(info.value) and "nick" in str(info.value)
    )


def test_default_works_for_missing_values(tmp_path):
    templates = _project(
        tmp_path,
        {
            "templates/dflt.id.html": '---\nsubject: "Hi {{ merchant.attributes.nick | default(merchant.name) }}"\n---\n'
            "<p>{{ merchant.attributes.coupon | default('HEMAT10') }}</p>\n"
        },
    )
    result = templates.get("dflt", "id").render(context())
    assert result.subject == "Hi Budi Santoso" and "HEMAT10" in result.html


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("<p>no front matter</p>\n", 1, "must start with a front matter"),
        ('---\nsubject: "x"\n<p>never closed</p>\n', 1, "not closed"),
        ('---\npreheader: "p"\n---\n<p>x</p>\n', 1, "no `subject`"),
        ('---\nsubject: "x"\nsubjet: "y"\n---\n<p>x</p>\n', 3, "unknown front matter key 'subjet'"),
        ("---\nsubject: 12\n---\n<p>x</p>\n", 2, "`subject` must be a non-empty text"),
        ('---\nsubject: "x\n---\n<p>x</p>\n', None, "not valid YAML"),
        ('---\nsubject: "Hi {{ merchant.name "\n---\n<p>x</p>\n', 2, "template syntax"),
        ('---\nsubject: "x"\n---\n<p>\n{{ x + }}\n</p>\n', 5, "template syntax"),
        (
            '---\nsubject: "x"\n---\n{% extends "layouts/nope.html" %}\n',
            4,
            "extends 'layouts/nope.html': there is no .*layouts/nope.html",
        ),
        (
            '---\nsubject: "x"\n---\n<p>a</p>\n{% include "partials/nope.html" %}\n',
            5,
            "include 'partials/nope.html': there is no .*partials/nope.html",
        ),
        ('---\nsubject: "x"\n---\n{% include partial_name %}\n', 4, "quoted template name"),
    ],
)
def test_template_mistakes_name_file_and_line(tmp_path, text, line, message):
    templates = _project(tmp_path, {"templates/bad.id.html": text})
    with pytest.raises(TemplateError, match=message) as info:
        templates.get("bad", "id")
    assert info.value.path.name == "bad.id.html"
    if line is not None:
        assert info.value.line == line


def test_syntax_error_in_layout_names_the_layout(tmp_path):
    templates = _project(
        tmp_path, {"templates/layouts/base.html": "<html>\n<body>\n{% block content %}\n</body>"}
    )
    with pytest.raises(TemplateError) as info:
        templates.get("hello", "id")
    assert info.value.path.name == "base.html" and "template syntax" in str(info.value)


def test_prepared_templates_are_cached(templates):
    assert templates.get("hello", "id") is templates.get("hello", "id")


def test_jinja_inside_style_is_refused_clearly(tmp_path):
    templates = _project(
        tmp_path,
        {
            "templates/styled.id.html": '---\nsubject: "x"\n---\n<html><head><style>{% if c %}p { color: red; }{% endif %}</style></head>'
            "<body><p>x</p></body></html>\n"
        },
    )
    with pytest.raises(TemplateError, match="cannot stand where the CSS inliner removes it"):
        templates.get("styled", "id")


def test_numbered_lists_with_a_loop_become_bullets_in_the_text(tmp_path):
    body = (
        "<ol>{% for p in ['a', 'b', 'c'] %}<li>{{ p }}</li>{% endfor %}</ol>\n"
        "<ol><li>one</li><li>two</li></ol>\n"
    )
    templates = _project(tmp_path, {"templates/ol.id.html": f'---\nsubject: "x"\n---\n{body}'})
    text = templates.get("ol", "id").render(context()).text
    assert "- a\n- b\n- c" in text and "1. one\n2. two" in text


def test_a_misspelt_field_suggests_the_right_one_even_through_a_filter(tmp_path):
    templates = _project(
        tmp_path,
        {
            "templates/typo.id.html": '---\nsubject: "x"\n---\n'
            "<p>{{ merchant.store_nme }}</p>\n<p>{{ stats.orders_30 | number }}</p>\n"
        },
    )
    with pytest.raises(TemplateError) as info:
        templates.get("typo", "id").render(context())
    assert info.value.line == 4
    assert "no field 'store_nme'" in str(info.value) and "did you mean store_name" in str(
        info.value
    )
    fixed = {
        "templates/typo2.id.html": '---\nsubject: "x"\n---\n<p>{{ stats.orders_30 | number }}</p>\n'
    }
    with pytest.raises(TemplateError) as info:
        _project(tmp_path / "b", fixed).get("typo2", "id").render(context())
    assert info.value.line == 4 and "did you mean orders_30d" in str(info.value)

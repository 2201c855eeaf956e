"""The sandbox: no Python internals, no mutation, no huge values, a cap on output."""

from __future__ import annotations

import time

import pytest
from template_fixtures import context, make_templates

from engine.errors import TemplateError
from engine.templates import TemplateSet

ESCAPES = [
    "{{ merchant.__class__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ merchant.get.__globals__ }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ self.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ merchant | attr('__class__') }}",
    "{{ (merchant | attr('__class__')).__base__ }}",
    "{{ '{0.__class__}'.format(merchant) }}",
    "{{ '{x.__class__.__init__.__globals__}'.format_map({'x': merchant}) }}",
    "{{ 'a' * 1000000000 }}",
    "{{ 'a' * 10**9 }}",
    "{{ [1] * 10**9 }}",
    "{{ 10**10**10 }}",
    "{{ 2 ** 100000 }}",
    "{{ 99999999999999999999999999999999999999 * 99999999999999999999999999999999999999999 * 10**40 }}",
    "{{ '%0999999999d' % 1 }}",
    "{{ '%*d' % (999999999, 1) }}",
    "{{ '{:>999999999}'.format(1) }}",
    "{{ 'x' | center(999999999) }}",
    "{{ 'x'.ljust(999999999) }}",
    "{{ 'x'.zfill(999999999) }}",
    "{{ ('x' * 1000).replace('x', 'y' * 1000) }}",
    "{{ ('x' * 1000) | replace('x', 'y' * 1000) }}",
    "{{ '%0999999999d' | format(1) }}",
    "{{ 'x' | indent(999999999, true) }}",
    "{{ merchant.attributes.update({'tier': 'hacked'}) }}",
    "{{ merchant.attributes.clear() }}",
    "{{ stats.pop('revenue_30d') }}",
    "{% set ns = namespace(s='x' * 1000) %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
    "{{ lipsum(1000000) }}",
    "{{ range(10**9) | list }}",
]


@pytest.fixture
def project(tmp_path):
    return tmp_path


@pytest.mark.parametrize("expression", ESCAPES)
def test_escape_attempts_are_refused_with_a_clear_error(project, expression):
    templates = TemplateSet(
        make_templates(
            project,
            {"templates/evil.id.html": f'---\nsubject: "x"\n---\n<p>\n{expression}\n</p>\n'},
        ),
        "id",
    )
    ctx = context()
    started = time.perf_counter()
    with pytest.raises(TemplateError) as info:
        templates.get("evil", "id").render(ctx)
    assert time.perf_counter() - started < 5  # refused before doing the huge work
    error = info.value
    assert error.path.name == "evil.id.html" and error.line == 5, str(error)
    assert any(
        word in str(error) for word in ("not allowed", "unsafe", "undefined", "immutable", "range")
    ), str(error)
    # Nothing was mutated.
    assert ctx["merchant"]["attributes"] == {"tier": "gold"} and "revenue_30d" in ctx["stats"]


@pytest.mark.parametrize("expression", ESCAPES[:10])
def test_escape_attempts_in_the_subject_are_refused_too(project, expression):
    subject = expression.replace('"', "'")
    templates = TemplateSet(
        make_templates(
            project, {"templates/evil.id.html": f'---\nsubject: "{subject}"\n---\n<p>x</p>\n'}
        ),
        "id",
    )
    with pytest.raises(TemplateError, match="in the subject") as info:
        templates.get("evil", "id").render(context())
    assert info.value.line == 2


def test_ordinary_arithmetic_and_strings_still_work(project):
    body = (
        "<p>{{ 3 * 4 }} {{ 2 ** 10 }} {{ 'ab' * 3 }} {{ '%05.1f' % 3.14159 }} {{ '{:>6}'.format('x') }}"
        " {{ 'x' | center(7) }}| {{ (stats.revenue_30d * 2) | rupiah }} {{ 10 % 3 }} {{ 'a' + 'b' }}</p>\n"
    )
    templates = TemplateSet(
        make_templates(project, {"templates/math.id.html": f'---\nsubject: "x"\n---\n{body}'}), "id"
    )
    html = templates.get("math", "id").render(context()).html
    assert "12 1024 ababab 003.1      x    x   | Rp3.000.000 1 ab" in html


def test_output_is_capped(project):
    body = "{% for i in range(100000) %}{{ 'x' * 50000 }}{% endfor %}\n"
    templates = TemplateSet(
        make_templates(project, {"templates/big.id.html": f'---\nsubject: "x"\n---\n{body}'}), "id"
    )
    with pytest.raises(TemplateError, match="output is longer than"):
        templates.get("big", "id").render(context())


def test_nested_loops_that_print_nothing_cannot_spin(project):
    body = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}\n"
    templates = TemplateSet(
        make_templates(project, {"templates/spin.id.html": f'---\nsubject: "x"\n---\n{body}'}), "id"
    )
    started = time.monotonic()
    with pytest.raises(
        TemplateError, match=r"spin\.id\.html:\d+: .*range\(\) would produce more than"
    ):
        templates.get("spin", "id").render(context())
    assert time.monotonic() - started < 5
    # An ordinary loop keeps working, and the budget is per message, not per process.
    small = "{% for i in range(3) %}{{ i }}{% endfor %}\n"
    templates = TemplateSet(
        make_templates(project, {"templates/ok.id.html": f'---\nsubject: "x"\n---\n{small}'}), "id"
    )
    for _ in range(3):
        assert "012" in templates.get("ok", "id").render(context()).html

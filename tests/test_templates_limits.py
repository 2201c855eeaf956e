"""The sandbox bounds the work of one message: a step budget, sizes checked before they are
built, a wall-clock limit; each failure names the file and line and ends quickly."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import REPO, write_files
from hypothesis import given, settings
from hypothesis import strategies as st
from template_fixtures import context, make_templates

from engine.errors import TemplateError
from engine.models import merchants
from engine.templates import Limits, TemplateSet
from engine.templates.limits import text_size


def _render(project: Path, body: str, **kwargs):
    """Render ``templates/bomb.id.html`` with ``body`` from line 5 on (after the front matter and <p>)."""
    templates = TemplateSet(
        make_templates(
            project, {"templates/bomb.id.html": f'---\nsubject: "x"\n---\n<p>\n{body}\n</p>\n'}
        ),
        "id",
        **kwargs,
    )
    prepared = templates.get("bomb", "id")  # prepared outside what is measured
    return prepared.render(context())


def _refused(project: Path, body: str, *, within: float = 5.0, **kwargs) -> TemplateError:
    started = time.monotonic()
    with pytest.raises(TemplateError) as info:
        _render(project, body, **kwargs)
    assert time.monotonic() - started < within, "refused, but only after doing the work"
    assert info.value.path.name == "bomb.id.html", str(info.value)
    return info.value


LOOPS = {
    "nested loops over long strings": (
        "{% set s = 'x' * 50000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}"
    ),
    "nested loops over long lists": (
        "{% set l = [1] * 50000 %}{% for a in l %}{% for b in l %}{% endfor %}{% endfor %}"
    ),
    "loops over split text": (
        "{% set w = ('a ' * 40000).split() %}{% for a in w %}{% for b in w %}{% endfor %}{% endfor %}"
    ),
    "a recursive loop": (
        "{% for c in 'abcdefghij' recursive %}"
        "{% if loop.depth < 9 %}{{ loop('abcdefghij') }}{% endif %}{% endfor %}"
    ),
    "a macro that calls itself twice": (
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}"
    ),
}


@pytest.mark.parametrize("body", LOOPS.values(), ids=LOOPS.keys())
def test_all_loops_and_calls_of_a_message_share_one_budget(tmp_path, body):
    # The clock set far away, so that a loaded machine cannot make this the time limit's test.
    error = _refused(tmp_path, body, within=30, limits=Limits(seconds=120))
    assert error.line == 5 and "loop iterations and calls in one message" in str(error), str(error)


def test_the_budget_is_for_the_whole_message_and_ordinary_loops_fit(tmp_path):
    # 3 x 30,000 iterations in the HTML, as many again in the text part: over 100,000.
    loop = "{% for c in 'x' * 30000 %}{% endfor %}"
    error = _refused(tmp_path / "a", f"{loop}{loop}\n{loop}", within=30, limits=Limits(seconds=120))
    assert "loop iterations and calls" in str(error)
    # 1,000 rows, each with a few calls, in both parts: far below the budget, every time.
    ok = "{% for i in range(1000) %}{{ ('row %d' % i).upper() }}{% endfor %}"
    templates = TemplateSet(
        make_templates(tmp_path / "b", {"templates/ok.id.html": f'---\nsubject: "x"\n---\n{ok}\n'}),
        "id",
    )
    for _ in range(3):
        assert "ROW 999" in templates.get("ok", "id").render(context()).text


S = "{% set s = 'x' * 100000 %}"
STRING_BOMBS = {
    "join with a huge separator": "{{ range(1000) | join('x' * 100000) }}",
    "join of long items": "{{ (['x' * 100000] * 1000) | join }}",
    "str.join": "{{ ('x' * 100000).join(['a'] * 1000) }}",
    "format filter": "{% set a = ['x' * 100000] * 1000 %}{{ ('%s' * 1000) | format(*a) }}",
    "% with a mapping": "{{ ('%(a)s' * 1000) % {'a': 'x' * 100000} }}",
    "str.format": "{{ ('{0}' * 1000).format('x' * 100000) }}",
    "~": S + "{{ " + " ~ ".join(["s"] * 500) + " }}",
    "+ on strings": S + "{{ s + s }}",
    "+ on lists": "{{ ([1] * 100000) + ([2] * 100000) }}",
    "* on strings": "{{ 'x' * 1000000 }}",
    "* on lists": "{{ [0] * 1000000 }}",
    "indent": "{{ ('\\n' * 99999) | indent('x' * 100, true, true) }}",
    "wordwrap": "{{ ('x ' * 50000) | wordwrap(1, wrapstring='y' * 1000) }}",
    "urlize": "{{ ('a.co ' * 2000) | urlize(target='x' * 50000) }}",
    "center": "{{ 'x' | center(10000000) }}",
    "replace": "{{ ('x' * 10000) | replace('x', 'y' * 10000) }}",
    "translate": "{{ ('x' * 10000).translate({120: 'y' * 10000}) }}",
    "a nested list printed": (
        "{% set a = ['x' * 100] * 100 %}{% set b = [a] * 100 %}{% set c = [b] * 100 %}{{ c }}"
    ),
    "a nested list as text": (
        "{% set a = ['x' * 100] * 100 %}{% set b = [a] * 100 %}{% set c = [b] * 100 %}{{ c | string }}"
    ),
    "a nested list in a namespace printed": (
        "{% set a = ['x' * 100] * 100 %}{% set b = [a] * 100 %}{% set ns = namespace(c=[b] * 100) %}"
        "{{ ns }}"
    ),
    "a dict view of a nested list printed": (
        "{% set a = ['x' * 100] * 100 %}{% set b = [a] * 100 %}{{ {'c': [b] * 100}.items() }}"
    ),
    "truncate's end": "{{ 'abc' | truncate(1, end=('y' * 100000) ~ 'y') }}",
}


@pytest.mark.parametrize("body", STRING_BOMBS.values(), ids=STRING_BOMBS.keys())
def test_string_bombs_are_refused_before_they_allocate(tmp_path, body):
    tracemalloc.start()
    try:
        error = _refused(tmp_path, body)
        _size, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.line == 5, str(error)
    assert "not allowed in a template" in str(error), str(error)
    # MAX_STRING characters are 100 KB to 400 KB; the bombs would build 10 MB to 100 MB.
    assert peak < 5_000_000, f"{peak:,} bytes allocated before the refusal"


def test_ordinary_string_work_is_untouched(tmp_path):
    body = (
        "{{ ['a', 'b', 'c'] | join(', ') }}|{{ 'x' ~ 1 ~ none }}|{{ '%s-%05.1f' % ('a', 2.5) }}|"
        "{{ '{0}:{1:>4}'.format('k', 7) }}|{{ 'hello world' | wordwrap(5) | replace('\\n', '/') }}|"
        "{{ 'x' | indent(2, true) }}|{{ 'long text' | truncate(7, end='..', leeway=0) }}|"
        "{{ [1, [2, 3]] }}|{% set t = 'a <b>' %}{{ t ~ ('<i>' | safe) }}|{{ [[1], [2]] | sum(start=[]) }}|"
        "{{ '-'.join(['a', 'b'] | map('upper')) }}"
    )
    html = _render(tmp_path, body).html
    assert (
        "a, b, c|x1None|a-002.5|k:   7|hello/world|  x|long..|[1, [2, 3]]|a &lt;b&gt;<i>|[1, 2]|A-B"
        in html
    ), html


WORK = "{% set s = 'x ' * 50000 %}{% for i in range(90000) %}{{ s | wordcount }}{% endfor %}"


def test_a_message_that_takes_too_long_is_stopped_at_the_wall_clock_limit(tmp_path):
    """Within every budget (90,000 iterations, short output), but each one costly."""
    error = _refused(tmp_path, WORK, within=10)
    assert "took longer than 2 s" in str(error) and error.line == 5, str(error)


def test_the_wall_clock_limit_can_be_set_per_template_set(tmp_path):
    started = time.monotonic()
    error = _refused(tmp_path, WORK, limits=Limits(seconds=0.2))
    assert time.monotonic() - started < 2
    assert "took longer than 0.2 s" in str(error) and error.line == 5, str(error)


BOMB_TEMPLATE = """---
subject: "Halo {{ merchant.store_name }}"
---
<p>Halo</p>
{% set s = 'x' * 50000 %}
{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}
"""


def test_render_command_of_a_bomb_ends_quickly_with_one_sentence(project_dir, project, db_url):
    write_files(
        project_dir,
        {
            "segments/everyone.yaml": "rules:\n  field: status\n  eq: active\n",
            "campaigns/bomb.yaml": (
                "kind: broadcast\ntopic: promo\nsegment: everyone\n"
                'from: "Tokoku <halo@tokoku.id>"\ntemplate: bomb\n'
            ),
            "templates/bomb.id.html": BOMB_TEMPLATE,
        },
    )
    with project.engine.begin() as conn:
        conn.execute(
            sa.insert(merchants),
            [
                {
                    "external_id": "m-1",
                    "email": "toko1@contoh.id",
                    "name": "Budi",
                    "store_name": "Toko 1",
                    "store_url": "https://toko1.tokoku.id",
                    "plan": "basic",
                    "category": "food",
                    "city": "Jakarta",
                    "locale": "id",
                    "timezone": "Asia/Jakarta",
                    "status": "active",
                    "attributes": {},
                }
            ],
        )
    env = {**os.environ, "CAMPAIGN_DATABASE_URL": db_url, "CAMPAIGN_SECRET_KEY": "k" * 32}
    command = [str(Path(sys.executable).parent / "campaign"), "render", "bomb", "--merchant", "1"]
    started = time.monotonic()
    done = subprocess.run(
        [*command, "--project", str(project_dir)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 1, output
    assert elapsed < 20, f"render took {elapsed:.1f} s"
    assert "Traceback" not in output and len(output.splitlines()) == 1, output
    # The step budget (or, on a very loaded machine, the time limit) stops it at line 6.
    stopped = "loop iterations and calls" in output or "took longer than" in output
    assert "bomb.id.html:6" in output and stopped, output


PLAIN = st.text(st.characters(min_codepoint=32, max_codepoint=126, blacklist_characters="'\"\\"))
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | PLAIN,
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.tuples(inner, inner)
        | st.dictionaries(PLAIN | st.integers(), inner, max_size=4)
        | st.frozensets(st.integers() | PLAIN, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(VALUES)
def test_text_size_bounds_the_text_of_any_value_from_above(value):
    # Strings inside containers print with escapes (up to 4 characters for one).
    assert len(str(value)) <= 4 * text_size(value, cap=10**9) + 4


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(PLAIN | st.integers(), max_size=5), max_size=5))
def test_text_size_is_exact_enough_for_plain_values(value):
    assert len(str(value)) <= text_size(value, cap=10**9)


def test_text_size_measures_shared_items_without_expanding_them():
    level = ["x" * 100] * 100
    for _ in range(30):  # 100**30 strings if printed
        level = [level] * 100
    started = time.monotonic()
    assert text_size(level) > 100_000
    assert time.monotonic() - started < 1

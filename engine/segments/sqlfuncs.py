"""Small SQL expressions that differ between SQLite and PostgreSQL.

Each is an SQLAlchemy element compiled per dialect. The attribute key is always a
bound parameter (and already restricted to ``[A-Za-z0-9_]+`` by the validator).

JSON values are read *typed*: ``json_text`` is the value only when it is a JSON
string, ``json_number`` only when it is a number, ``json_bool`` 1/0 only when it
is a boolean; anything else is NULL. That is what makes ``eq: 5`` and ``eq: "5"``
mean the same thing on both backends.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ClauseElement, Executable
from sqlalchemy.sql.functions import FunctionElement


class _JsonOf(FunctionElement):
    """Base: (json column, key)."""

    inherit_cache = True


class json_raw(_JsonOf):
    """The value as SQL (NULL when missing or JSON null); only used for IS NULL."""

    type = sa.String()
    inherit_cache = True


class json_text(_JsonOf):
    type = sa.String()
    inherit_cache = True


class json_number(_JsonOf):
    type = sa.Float()
    inherit_cache = True


class json_bool(_JsonOf):
    type = sa.Integer()
    inherit_cache = True


class text_contains(FunctionElement):
    """Case-sensitive substring test (LIKE is case-insensitive on SQLite)."""

    type = sa.Boolean()
    inherit_cache = True


def _args(element, compiler, **kw) -> tuple[str, str]:
    column, key = element.clauses.clauses
    return compiler.process(column, **kw), compiler.process(key, **kw)


def _sqlite_path(key: str) -> str:
    return f"""'$."' || {key} || '"'"""


def _twice(element, compiler, **kw) -> tuple[str, str, str, str]:
    """Column and key rendered twice: each placeholder needs its own positional value."""
    first = _args(element, compiler, **kw)
    second = _args(element, compiler, **kw)
    return (*first, *second)


@compiles(json_raw, "sqlite")
def _raw_sqlite(element, compiler, **kw):
    column, key = _args(element, compiler, **kw)
    return f"json_extract({column}, {_sqlite_path(key)})"


@compiles(json_raw, "postgresql")
def _raw_pg(element, compiler, **kw):
    column, key = _args(element, compiler, **kw)
    return f"({column} ->> {key})"


@compiles(json_text, "sqlite")
def _text_sqlite(element, compiler, **kw):
    column, key, column2, key2 = _twice(element, compiler, **kw)
    return (
        f"(CASE WHEN json_type({column}, {_sqlite_path(key)}) = 'text' "
        f"THEN json_extract({column2}, {_sqlite_path(key2)}) END)"
    )


@compiles(json_text, "postgresql")
def _text_pg(element, compiler, **kw):
    column, key, column2, key2 = _twice(element, compiler, **kw)
    return f"(CASE WHEN jsonb_typeof({column} -> {key}) = 'string' THEN {column2} ->> {key2} END)"


@compiles(json_number, "sqlite")
def _number_sqlite(element, compiler, **kw):
    column, key, column2, key2 = _twice(element, compiler, **kw)
    return (
        f"(CASE WHEN json_type({column}, {_sqlite_path(key)}) IN ('integer', 'real') "
        f"THEN json_extract({column2}, {_sqlite_path(key2)}) END)"
    )


@compiles(json_number, "postgresql")
def _number_pg(element, compiler, **kw):
    column, key, column2, key2 = _twice(element, compiler, **kw)
    return (
        f"(CASE WHEN jsonb_typeof({column} -> {key}) = 'number' "
        f"THEN CAST({column2} ->> {key2} AS NUMERIC) END)"
    )


@compiles(json_bool, "sqlite")
def _bool_sqlite(element, compiler, **kw):
    column, key = _args(element, compiler, **kw)
    return f"(CASE json_type({column}, {_sqlite_path(key)}) WHEN 'true' THEN 1 WHEN 'false' THEN 0 END)"


@compiles(json_bool, "postgresql")
def _bool_pg(element, compiler, **kw):
    column, key, column2, key2 = _twice(element, compiler, **kw)
    return (
        f"(CASE WHEN jsonb_typeof({column} -> {key}) = 'boolean' "
        f"THEN CASE WHEN {column2} ->> {key2} = 'true' THEN 1 ELSE 0 END END)"
    )


@compiles(text_contains, "sqlite")
def _contains_sqlite(element, compiler, **kw):
    haystack, needle = _args(element, compiler, **kw)
    return f"(instr({haystack}, {needle}) > 0)"


@compiles(text_contains, "postgresql")
def _contains_pg(element, compiler, **kw):
    haystack, needle = _args(element, compiler, **kw)
    return f"(strpos({haystack}, {needle}) > 0)"


class by_dialect(FunctionElement):
    """One condition written twice, (SQLite form, PostgreSQL form); each backend renders its own."""

    type = sa.Boolean()
    inherit_cache = True


@compiles(by_dialect, "sqlite")
def _by_dialect_sqlite(element, compiler, **kw):
    return f"({compiler.process(element.clauses.clauses[0], **kw)})"


@compiles(by_dialect, "postgresql")
def _by_dialect_pg(element, compiler, **kw):
    return f"({compiler.process(element.clauses.clauses[1], **kw)})"


@compiles(json_raw)
@compiles(json_text)
@compiles(json_number)
@compiles(json_bool)
@compiles(text_contains)
@compiles(by_dialect)
def _unsupported(element, compiler, **kw):
    raise sa.exc.CompileError(
        f"segments support SQLite and PostgreSQL, not {compiler.dialect.name}"
    )


class Explain(Executable, ClauseElement):
    """``EXPLAIN`` of a statement, with its parameters bound the normal way."""

    inherit_cache = False

    def __init__(self, statement: sa.Select) -> None:
        self.statement = statement


@compiles(Explain, "sqlite")
def _explain_sqlite(element, compiler, **kw):
    return "EXPLAIN QUERY PLAN " + compiler.process(element.statement, **kw)


@compiles(Explain, "postgresql")
def _explain_pg(element, compiler, **kw):
    return "EXPLAIN " + compiler.process(element.statement, **kw)

"""Printing results: rich tables for people, JSON and CSV for scripts."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

PIPED_WIDTH = 1000  # columns for a table written to a pipe or a file


def _default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=2, default=_default))


def _csv_cell(value: Any) -> Any:
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, datetime | date):
        return value.isoformat()  # the same text as the JSON form (and as `import` reads)
    return value


def print_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    writer = csv.DictWriter(sys.stdout, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_cell(v) for k, v in row.items()})


def print_table(
    rows: Iterable[Sequence[Any]], columns: Sequence[str], title: str | None = None
) -> None:
    # A title wider than the columns would wrap over two lines: widen the table instead.
    table = Table(title=title, show_lines=False, min_width=len(title) + 4 if title else None)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    # On a terminal rich fits the table to the window. Piped, it would squeeze it into 80
    # columns and cut names short ("promo…"): give it room, so that every cell is whole.
    Console(width=None if sys.stdout.isatty() else PIPED_WIDTH).print(table)


def echo_err(message: str) -> None:
    click.echo(message, err=True)


@contextmanager
def progress_bar(description: str, total: int | None, enabled: bool):
    """A rich progress bar on a terminal; a no-op callable when piped."""
    if not enabled:
        yield lambda done, total=None: None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=total)

        def update(done: int, new_total: int | None = None) -> None:
            progress.update(task, completed=done, total=new_total or total)

        yield update

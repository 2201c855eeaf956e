"""The ``campaign`` command line: a thin click shell over the ``engine`` library."""

# Each module registers its commands on ``cli``.
from engine.cli import data, delivery, drips, messages, reports, segments, serve  # noqa: F401
from engine.cli.main import cli, main

__all__ = ["cli", "main"]

"""The ``campaign`` command line: a thin click shell over the ``engine`` library."""

from engine.cli.main import cli, main

# Each module registers its commands on ``cli``.
from engine.cli import data, delivery, messages, segments  # noqa: E402, F401, I001

__all__ = ["cli", "main"]

"""Commands for segments (registered on the `campaign` group)."""

from engine.cli.main import cli  # noqa: F401

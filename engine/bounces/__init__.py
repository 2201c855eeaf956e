"""Returned mail: ``parse`` reads one mail, ``mailboxes`` reads mbox and Maildir,
``store`` matches and records; VERP return paths are ``engine.return_path``."""

from engine.bounces.store import BounceReport, import_bounces
from engine.return_path import envelope_sender  # re-exported: the VERP side of bounces

__all__ = ["BounceReport", "envelope_sender", "import_bounces"]

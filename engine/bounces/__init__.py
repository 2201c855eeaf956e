"""Returned mail: ``parse`` reads one mail, ``mailboxes`` reads mbox and Maildir,
``store`` matches and records, ``verp`` makes and reads VERP return paths."""

from engine.bounces.store import BounceReport, import_bounces
from engine.bounces.verp import envelope_sender

__all__ = ["BounceReport", "envelope_sender", "import_bounces"]

"""Importing a slow library in the background while the database answers the report's queries.

statsmodels (with scipy) and matplotlib each take seconds to import on a small
machine; the report's SQL takes seconds too, and SQLite and psycopg release the
interpreter lock while they work, so the two overlap instead of adding up.
"""

from __future__ import annotations

import importlib
import threading


def start_import(module: str) -> threading.Thread:
    """Begin importing ``module`` in a thread; a later ``import`` waits for it to finish."""
    # Not a daemon: the interpreter must never exit half-way through an import.
    thread = threading.Thread(
        target=importlib.import_module, args=(module,), name=f"import {module}"
    )
    thread.start()
    return thread

"""The drip engine: enrolment and timed steps in the database, one tick at a time.

``tick`` (``campaign drip run``, ``campaign worker``), ``simulate`` (the same tick
on a copy, with a clock that advances) and ``explain`` (one merchant's journey).
"""

from engine.drips.tick import TickReport, tick

__all__ = ["TickReport", "tick"]

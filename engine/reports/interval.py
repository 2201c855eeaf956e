"""Lift and its 95% interval: the Newcombe hybrid score interval, from statsmodels.

statsmodels (with scipy beneath it) takes seconds to import on a small machine,
so it is imported only when a report has a holdout to compare with.
"""

from __future__ import annotations

from dataclasses import dataclass

STATSMODELS = "statsmodels.stats.proportion"
MIN_HOLDOUT = 30  # below this many holdout merchants the interval is too wide to conclude
LEVEL = 0.95


@dataclass(frozen=True)
class Lift:
    """Conversion rate minus holdout conversion rate, with the interval around it."""

    lift: float
    low: float
    high: float
    small_sample: bool


def rate(count: int, total: int) -> float | None:
    """A ratio 0–1; None when there is nothing to divide by."""
    return count / total if total else None


def lift_interval(
    conversions: int, sent: int, holdout_conversions: int, holdout: int
) -> Lift | None:
    """The lift with its Newcombe interval; None without both a treated and a holdout group."""
    if sent <= 0 or holdout <= 0:
        return None
    from statsmodels.stats.proportion import confint_proportions_2indep  # = STATSMODELS

    low, high = confint_proportions_2indep(
        conversions,
        sent,
        holdout_conversions,
        holdout,
        compare="diff",
        method="newcomb",
        alpha=1 - LEVEL,
    )
    return Lift(
        lift=conversions / sent - holdout_conversions / holdout,
        low=float(low),
        high=float(high),
        small_sample=holdout < MIN_HOLDOUT,
    )

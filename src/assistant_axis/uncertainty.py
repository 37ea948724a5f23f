"""Bootstrap confidence intervals: the one routine behind every interval the pipeline reports.

Why: a harm rate of 0.71 against 0.79 on 24 jailbreaks, or a drift of -3 in one conversation, says
nothing until the reader sees how much it would move on other items. Every compared number gets a
percentile bootstrap interval from :func:`bootstrap`, so they are all made the same way:

* items (jailbreaks, MC questions, responses, conversations) are resampled with replacement,
  ``n_boot`` times; arrays passed together are resampled with the *same* indices, which makes a
  comparison of two conditions on the same items a paired bootstrap;
* the draw is fixed: ``rng = numpy.random.default_rng(seed)``, then
  ``rng.integers(0, n, size=(n_boot, n))``, so an interval can be recomputed exactly;
* the interval is the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles (numpy's
  default linear method) of the resampled statistic, ignoring resamples where it is undefined (NaN);
* with fewer than two items there is no interval (NaN bounds): one conversation cannot show its
  own noise.

A difference "beyond noise" is one whose interval excludes zero (:meth:`Interval.excludes`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A statistic on the full sample with its bootstrap interval (NaN bounds: no interval)."""

    estimate: float
    low: float
    high: float

    def excludes(self, value: float = 0.0) -> bool:
        """True when the interval exists and ``value`` lies outside it (a difference beyond noise)."""
        return bool(np.isfinite(self.low) and np.isfinite(self.high) and not self.low <= value <= self.high)

    def as_dict(self, prefix: str) -> dict[str, float]:
        """``{prefix: estimate, prefix_lo: low, prefix_hi: high}`` for a table row."""
        return {prefix: self.estimate, f"{prefix}_lo": self.low, f"{prefix}_hi": self.high}


def resample_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """The ``(n_boot, n)`` item indices every bootstrap here draws (see the module docstring)."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap(
    arrays: Sequence[np.ndarray], statistic: Callable[..., float], n_boot: int, confidence: float, seed: int
) -> Interval:
    """``statistic(*arrays)`` and its percentile interval over ``n_boot`` paired resamples of the items.

    ``arrays`` share their first dimension (the items); ``statistic`` takes them in the same order
    and returns a float (NaN when undefined for a resample).
    """
    arrays = [np.asarray(a) for a in arrays]
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"bootstrap: arrays of different lengths {[len(a) for a in arrays]}; they must hold the same items")
    if not 0 < confidence < 1:
        raise ValueError(f"bootstrap: confidence {confidence} must be between 0 and 1 (config key 'uncertainty.confidence')")
    estimate = float(statistic(*arrays)) if n else float("nan")
    if n < 2 or n_boot < 1:
        return Interval(estimate, float("nan"), float("nan"))
    idx = resample_indices(n, n_boot, seed)
    values = np.array([statistic(*(a[row] for a in arrays)) for row in idx], dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return Interval(estimate, float("nan"), float("nan"))
    low, high = np.quantile(values, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Interval(estimate, float(low), float(high))


def nanmean(values: np.ndarray) -> float:
    """Mean of the finite values; NaN when there are none (a statistic for items that may be missing)."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else float("nan")

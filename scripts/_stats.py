"""What the benchmark scripts share: the spread they report beside every median and ratio."""

from __future__ import annotations

import statistics


def spread(values: list[float]) -> tuple[float, float]:
    """10th and 90th percentile (the extremes for fewer than three values)."""
    if len(values) < 3:
        return min(values), max(values)
    deciles = statistics.quantiles(values, n=10, method="inclusive")
    return deciles[0], deciles[-1]

"""Series of measurements: the closed-loop search for peak throughput, and the open-loop
sweep of arrival rates (fractions of that peak) for where p99 latency crosses the target.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

from .measure import P99_TARGET_MS, Measurement, Plan

MeasureFn = Callable[[Plan], Awaitable[Measurement]]

#: Concurrency steps of the peak search (sagas in flight).
CONCURRENCY_STEPS = (1, 8, 32, 128, 512, 2048)
#: A step must add this much throughput over the best so far, or the search stops.
GROWTH = 1.10
#: Arrival rates of the open-loop sweep, as fractions of the closed-loop peak.
FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 1.0)


def kept_up(m: Measurement) -> bool:
    """The system finished what arrived: nothing left unfinished, completions kept pace."""
    return m.censored == 0 and m.sagas_per_s >= 0.9 * m.arrival_per_s


async def closed_series(
    plan: Plan, measure: MeasureFn, steps: Sequence[int] = CONCURRENCY_STEPS
) -> dict[str, Any]:
    """Step the concurrency up until throughput stops growing; the peak is the best point."""
    points: list[Measurement] = []
    best: Measurement | None = None
    for concurrency in steps:
        m = await measure(replace(plan, mode="closed", concurrency=concurrency))
        points.append(m)
        if best is not None and m.sagas_per_s < best.sagas_per_s * GROWTH:
            if m.sagas_per_s > best.sagas_per_s:
                best = m
            break
        best = m
    assert best is not None
    return {"points": [p.to_json() for p in points], "peak": best.to_json()}


def crossing(points: Sequence[dict[str, Any]], target_ms: float = P99_TARGET_MS) -> dict[str, Any]:
    """Where p99 first exceeds `target_ms` as the rate grows (linear between two points).

    {"rate": r, "fraction_of_peak": f} when it crosses between two measured rates;
    {"below": lowest rate} when even the lowest rate is over; {"above": highest} when
    none is.
    """
    ordered = sorted(points, key=lambda p: p["plan"]["rate"])
    for i, p in enumerate(ordered):
        if p["latency_ms"]["p99"] <= target_ms:
            continue
        if i == 0:
            return {
                "rate": None,
                "below": p["plan"]["rate"],
                "p99_ms_there": p["latency_ms"]["p99"],
            }
        lo = ordered[i - 1]
        r0, r1 = lo["plan"]["rate"], p["plan"]["rate"]
        y0, y1 = lo["latency_ms"]["p99"], p["latency_ms"]["p99"]
        rate = r0 + (target_ms - y0) * (r1 - r0) / (y1 - y0) if y1 != y0 else r0
        f0, f1 = lo["fraction_of_peak"], p["fraction_of_peak"]
        return {
            "rate": round(rate, 1),
            "fraction_of_peak": round(f0 + (rate - r0) * (f1 - f0) / (r1 - r0), 3),
        }
    return {"rate": None, "above": ordered[-1]["plan"]["rate"] if ordered else None}


async def open_series(
    plan: Plan, peak: float, measure: MeasureFn, fractions: Sequence[float] = FRACTIONS
) -> dict[str, Any]:
    """Open-loop points at fractions of `peak` sagas/s, upwards, until the system falls
    behind (beyond that, latency only measures how long the run lasted)."""
    points: list[dict[str, Any]] = []
    for fraction in sorted(fractions):
        rate = round(peak * fraction, 1)
        m = await measure(replace(plan, mode="open", rate=max(rate, 0.1)))
        points.append({**m.to_json(), "fraction_of_peak": fraction})
        if not kept_up(m):
            break
    at_70 = [p for p in points if abs(p["fraction_of_peak"] - 0.7) < 1e-9]
    return {
        "peak_sagas_per_s": peak,
        "target_p99_ms": P99_TARGET_MS,
        "points": points,
        "p99_crossing": crossing(points),
        "p99_at_70pct_of_peak_ms": at_70[0]["latency_ms"]["p99"] if at_70 else None,
    }

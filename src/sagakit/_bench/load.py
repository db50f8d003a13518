"""Load drivers: a closed loop (a fixed number of sagas in flight) and an open loop (a fixed
arrival rate, whatever the system's state), each with a warm-up, a measured window and a
drain. They see sagas end only through the orders database, as any client would.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from .baseline import ProgressFn
from .rig import Rig

#: How often the drivers look at the orders database (and, open loop, place a batch).
TICK_S = 0.002
#: The longest warm-up, whatever else it waits for.
MAX_WARMUP_S = 60.0


@dataclass
class Window:
    """What happened in the measured window: wall-clock bounds (ms, the clock of the orders
    database's timestamps), orders placed, and every component's CPU seconds at both ends."""

    start_ms: float = 0.0
    end_ms: float = 0.0
    placed: int = 0
    placed_total: int = 0
    cpu_start: dict[str, float] = field(default_factory=dict)
    cpu_end: dict[str, float] = field(default_factory=dict)
    drain_end_ms: float = 0.0
    left_pending: int = 0

    @property
    def seconds(self) -> float:
        return (self.end_ms - self.start_ms) / 1000

    def cpu_used(self) -> dict[str, float]:
        return {
            name: self.cpu_end[name] - self.cpu_start[name]
            for name in self.cpu_end
            if name in self.cpu_start
        }


async def _drive(
    rig: Rig,
    due: Callable[[float, int], int],
    *,
    warmed_up: Callable[[int], bool] = lambda _placed: True,
    warmup_s: float,
    duration_s: float,
    drain_s: float,
    label: str,
    progress: ProgressFn | None,
) -> Window:
    """Place `due(elapsed_s, placed)` orders every tick; measure `duration_s` from the end
    of the warm-up: `warmup_s` seconds and `warmed_up(placed)`, or MAX_WARMUP_S at most."""
    window = Window()
    started = time.monotonic()
    in_window = False
    last_report = 0.0
    window_starts = float("inf")
    while True:
        elapsed = time.monotonic() - started
        if (
            not in_window
            and elapsed >= warmup_s
            and (elapsed >= MAX_WARMUP_S or warmed_up(window.placed_total))
        ):
            window.cpu_start = rig.cpu()
            window.start_ms = time.time() * 1000
            window.placed = 0
            window_starts = elapsed
            in_window = True
        if elapsed >= window_starts + duration_s:
            window.cpu_end = rig.cpu()
            window.end_ms = time.time() * 1000
            break
        count = due(elapsed, window.placed_total)
        if count > 0:
            await rig.place(count)
            window.placed_total += count
            window.placed += count
        if progress and elapsed - last_report > 0.1:
            last_report = elapsed
            if in_window:
                progress(f"{label}: measuring", elapsed - window_starts, duration_s)
            else:
                progress(f"{label}: warm-up", min(elapsed, warmup_s), warmup_s or 1)
        await anyio.sleep(TICK_S)
    if progress:
        progress(f"{label}: draining", 0, 1)
    with anyio.move_on_after(drain_s):
        # other processes end the orders: polling their database is the only way to know
        while rig.pending():  # noqa: ASYNC110
            await anyio.sleep(0.02)
    window.drain_end_ms = time.time() * 1000
    window.left_pending = rig.pending()
    return window


async def closed_loop(
    rig: Rig,
    concurrency: int,
    *,
    warmup_s: float,
    duration_s: float,
    drain_s: float = 30.0,
    progress: ProgressFn | None = None,
) -> Window:
    """Keep `concurrency` sagas in flight: a new order as soon as one ends.

    The warm-up lasts until as many sagas as are in flight have ended (one turnover, so
    the window starts in the steady state however long a saga takes), `warmup_s` at least.
    """
    return await _drive(
        rig,
        lambda _elapsed, _placed: concurrency - rig.pending(),
        warmed_up=lambda placed: placed - rig.pending() >= concurrency,
        warmup_s=warmup_s,
        duration_s=duration_s,
        drain_s=drain_s,
        label=f"closed, {concurrency} in flight",
        progress=progress,
    )


async def open_loop(
    rig: Rig,
    rate: float,
    *,
    warmup_s: float,
    duration_s: float,
    drain_s: float = 30.0,
    progress: ProgressFn | None = None,
) -> Window:
    """Place orders at `rate` per second (batched per tick), however many are in flight."""
    return await _drive(
        rig,
        lambda elapsed, placed: int(rate * elapsed) - placed,
        warmup_s=warmup_s,
        duration_s=duration_s,
        drain_s=drain_s,
        label=f"open, {rate:.0f}/s",
        progress=progress,
    )

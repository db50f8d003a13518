"""Test-only fault injection: kill or stall this process at a named point.

    SAGAKIT_CRASH_AT=orchestrator.before-send      SIGKILL at the first pass
    SAGAKIT_CRASH_AT=orchestrator.before-send@3    SIGKILL at the third pass
    SAGAKIT_STALL_AT=orchestrator.before-append@2  SIGSTOP (a zombie in the making)

Points: orchestrator.before-append (decided, nothing journaled), orchestrator.before-send
(journaled, commands not sent), orchestrator.before-commit (sent, offsets not
committed), orchestrator.snapshot-before-journal / -before-index / -after-index (a
snapshot not written, written but not listed in the checkpoints topic, listed),
participant.before-reply (business effect committed, reply not sent),
projector.before-write (a batch of the journal fetched, nothing of it in the read model),
projector.after-write (written to the read model, its offsets not committed to the group).
Unset, each check is one dict lookup.
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "orchestrator.before-append",
    "orchestrator.before-send",
    "orchestrator.before-commit",
    "orchestrator.snapshot-before-journal",
    "orchestrator.snapshot-before-index",
    "orchestrator.snapshot-after-index",
    "participant.before-reply",
    "projector.before-write",
    "projector.after-write",
)


def _parse(var: str) -> tuple[str, int] | None:
    spec = os.environ.get(var, "").strip()
    if not spec:
        return None
    name, _, nth = spec.partition("@")
    if name not in POINTS:
        raise ValueError(f"{var}={spec!r}: unknown point {name!r}; known: {', '.join(POINTS)}")
    return name, int(nth or 1)


_ACTIONS = {
    spec[0]: (spec[1], sig)
    for spec, sig in (
        (_parse("SAGAKIT_CRASH_AT"), signal.SIGKILL),
        (_parse("SAGAKIT_STALL_AT"), signal.SIGSTOP),
    )
    if spec is not None
}
_hits: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Kill or stop this process here if the environment asks for it."""
    action = _ACTIONS.get(name)
    if action is None:
        return
    nth, sig = action
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == nth:
        os.kill(os.getpid(), sig)

"""`sagakit describe`: a saga definition drawn as a Mermaid flowchart, or as text.

The diagram reads top to bottom: the steps in order (solid arrows), each business
failure or give-up leading into the compensation (thick arrows), the compensation
walking back through the completed steps (dashed arrows labelled with the command that
undoes each one), and the pivot drawn as a hexagon. Retry and timeout policies are
written on the steps. One statement per line, so the output diffs well.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from ._definition import RetryPolicy, Saga, _ResolvedStep

START, COMPLETED, COMPENSATED, PARKED = "start", "completed", "compensated", "parked"


def _node_id(step: _ResolvedStep[Any]) -> str:
    return f"s{step.index}"


def _text(value: str) -> str:
    """Text safe inside a quoted Mermaid label."""
    return value.replace('"', "#quot;")


def _seconds(value: float) -> str:
    return f"{value:g} s"


def _attempts(n: int) -> str:
    return f"{n} attempt" if n == 1 else f"{n} attempts"


def _retry(policy: RetryPolicy, retried_on: list[str]) -> str:
    """One line: attempts, per-attempt timeout, back-off, and replies meaning "again"."""
    parts = []
    if policy.max_attempts > 1:
        backoff = _seconds(policy.initial_backoff_s)
        if policy.max_backoff_s > policy.initial_backoff_s and policy.multiplier > 1:
            backoff += f" x{policy.multiplier:g} up to {_seconds(policy.max_backoff_s)}"
        if policy.jitter:
            backoff += f" ±{policy.jitter:.0%}"
        parts.append(f"{_attempts(policy.max_attempts)}, back-off {backoff}")
    else:
        parts.append(_attempts(1))
    if policy.timeout_s is not None:
        parts.append(f"timeout {_seconds(policy.timeout_s)} each")
    else:
        parts.append("no timeout")
    if retried_on:
        parts.append("again on " + ", ".join(retried_on))
    return "retry: " + ", ".join(parts)


def _names(replies: frozenset[type[Any]] | list[type[Any]]) -> list[str]:
    return sorted(r.__name__ for r in replies)


def _gives_up(step: _ResolvedStep[Any]) -> str | None:
    """Why the step's retries can run out (None: they cannot, it waits for ever)."""
    policy = step.step.retry
    if step.action is None or not (policy.timeout_s is not None or step.retryable):
        return None
    return f"gave up after {_attempts(policy.max_attempts)}"


def _label(saga: Saga[Any], step: _ResolvedStep[Any]) -> str:
    lines = [step.name]
    if step.action is None:
        lines.append("no command: done before the saga starts")
    else:
        lines.append(f"sends {step.action.command.message_type} to {step.action.topic}")
        lines.append("ok: " + ", ".join(_names(list(step.success))))
        if step.failures:
            lines.append("fails: " + ", ".join(_names(step.failures)))
        lines.append(_retry(step.step.retry, _names(step.retryable)))
    if step.compensation is not None:
        policy = step.step.compensation_retry
        if policy.timeout_s is None:
            how = f"{_attempts(policy.max_attempts)}, no timeout: waits for its reply for ever"
        else:
            how = (
                f"{_attempts(policy.max_attempts)}, timeout {_seconds(policy.timeout_s)} "
                "each, then parked"
            )
        lines.append(f"undo: {step.compensation.command.message_type} ({how})")
    if saga.pivot_index is not None and step.index == saga.pivot_index:
        lines.append("PIVOT: point of no return")
        lines.append("later steps are retried forward, never compensated")
    elif saga.after_pivot(step):
        lines.append("after the pivot: retried forward, never compensated")
    return "<br/>".join(_text(line) for line in lines)


def mermaid(saga: Saga[Any]) -> str:
    """The saga as a Mermaid ``flowchart``: steps, failures, compensations, the pivot."""
    steps = saga.resolved()
    pivot = saga.pivot_index
    title = f"saga {saga.name} v{saga.version}"
    if saga.deadline_s is not None:
        title += (
            f"<br/>deadline {_seconds(saga.deadline_s)}: past it, compensate "
            "(a step without compensation in flight finishes first)"
        )
    out = [
        "flowchart TD",
        f'    {START}(["{_text(title)}"])',
    ]
    for step in steps:
        text = _label(saga, step)
        shape = f'{{{{"{text}"}}}}' if step.index == pivot else f'["{text}"]'
        out.append(f"    {_node_id(step)}{shape}")
    out.append(f'    {COMPLETED}(["COMPLETED"])')
    ends = len(out)  # COMPENSATED and PARKED go here if an arrow leads to them

    out.append("    %% forward")
    chain = [START, *(_node_id(s) for s in steps), COMPLETED]
    out.extend(f"    {a} --> {b}" for a, b in pairwise(chain))

    out.append("    %% failures start the compensation")

    def undo_from(index: int) -> str:
        """Where compensation starts when everything before `index` is done."""
        done = [s for s in steps[:index] if s.compensation is not None]
        return _node_id(done[-1]) if done else COMPENSATED

    for step in steps:
        why = [*_names(step.failures)]
        gives_up = _gives_up(step)
        if saga.after_pivot(step):
            if gives_up is not None:
                out.append(f'    {_node_id(step)} ==>|"{_text(gives_up)}"| {PARKED}')
            continue
        if gives_up is not None and step.compensation is not None:
            # a timed-out attempt may have taken effect: then this step is undone too
            label = f"{gives_up}: undone too"
            out.append(f'    {_node_id(step)} ==>|"{_text(label)}"| {_node_id(step)}')
        elif gives_up is not None and step.step.retry.timeout_s is not None:
            # it may have taken effect and cannot be undone: a person decides
            label = f"{gives_up}, in doubt after a timeout"
            out.append(f'    {_node_id(step)} ==>|"{_text(label)}"| {PARKED}')
            if step.retryable:
                why.append(f"{gives_up} on {', '.join(_names(step.retryable))} only")
        elif gives_up is not None:
            why.append(gives_up)
        if why:
            out.append(
                f'    {_node_id(step)} ==>|"{_text(" or ".join(why))}"| {undo_from(step.index)}'
            )

    out.append("    %% compensation walks back, each step undone by its command")
    for step in steps:
        if step.compensation is not None:
            command = step.compensation.command.message_type
            out.append(f'    {_node_id(step)} -.->|"{_text(command)}"| {undo_from(step.index)}')

    bad = [end for end in (COMPENSATED, PARKED) if any(line.endswith(f"| {end}") for line in out)]
    labels = {
        COMPENSATED: "COMPENSATED: every completed step undone",
        PARKED: "FAILED_NEEDS_ATTENTION: an undo, a step after the pivot or a step "
        "that cannot be undone gave up",
    }
    out[ends:ends] = [f'    {end}(["{labels[end]}"])' for end in bad]
    out.append("    classDef pivot fill:#fde68a,stroke:#b45309,stroke-width:3px")
    out.append("    classDef terminal fill:#e5e7eb,stroke:#374151")
    out.append("    classDef bad fill:#fee2e2,stroke:#b91c1c")
    if pivot is not None:
        out.append(f"    class {_node_id(steps[pivot])} pivot")
    out.append(f"    class {START},{COMPLETED} terminal")
    if bad:
        out.append(f"    class {','.join(bad)} bad")
    return "\n".join(out)


def text(saga: Saga[Any]) -> str:
    """The saga as indented plain text, one step per paragraph."""
    out = [f"saga {saga.name} v{saga.version} ({len(saga.steps)} steps)"]
    if saga.deadline_s is not None:
        out.append(f"  deadline {_seconds(saga.deadline_s)} before the pivot")
    for step in saga.resolved():
        out.append(f"  {step.index + 1}. " + _label(saga, step).replace("<br/>", "\n     "))
    return "\n".join(out).replace("#quot;", '"')


def render(saga: Saga[Any], *, as_mermaid: bool) -> str:
    return mermaid(saga) if as_mermaid else text(saga)

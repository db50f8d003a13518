"""`sagakit describe`: a saga definition drawn as a Mermaid flowchart, or as text.

The diagram reads top to bottom: the steps in order (solid arrows), each business
failure or give-up leading into the compensation (thick arrows), the compensation
walking back through the completed steps (dashed arrows labelled with the command that
undoes each one), and the pivot drawn as a hexagon. Retry and timeout policies are
written on the steps. One statement per line, so the output diffs well.
"""

from __future__ import annotations

import re
from typing import Any

from ._definition import (
    RetryPolicy,
    Saga,
    _Choice,
    _Each,
    _Leaf,
    _Par,
    _ResolvedStep,
    _Seq,
    _Wait,
)

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
    if step.child is not None:
        lines.append(f"starts saga {step.child.name} v{step.child.version}, waits for its end")
        lines.append("ok: it COMPLETED; fails: it COMPENSATED or was RESOLVED")
        lines.append("undo: asks it to compensate its own steps")
        return "<br/>".join(_text(line) for line in lines)
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
    if step.step.pivot:
        lines.append("PIVOT: point of no return")
        lines.append("later steps are retried forward, never compensated")
    elif saga.after_pivot(step):
        lines.append("after the pivot: retried forward, never compensated")
    return "<br/>".join(_text(line) for line in lines)


def mermaid(saga: Saga[Any]) -> str:
    """The saga as a Mermaid ``flowchart``: steps, failures, compensations, the pivot."""
    steps = saga.resolved()
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
        shape = f'{{{{"{text}"}}}}' if step.step.pivot else f'["{text}"]'
        out.append(f"    {_node_id(step)}{shape}")
    out.append(f'    {COMPLETED}(["COMPLETED"])')
    ends = len(out)  # COMPENSATED and PARKED go here if an arrow leads to them

    out.append("    %% forward")
    shapes: list[str] = []
    edges: list[str] = []
    exits = _draw(saga.tree, [START], shapes, edges, None)
    edges.extend(f"    {a} --> {COMPLETED}" for a in exits)
    out[ends:ends] = shapes
    ends += len(shapes)
    out.extend(edges)

    out.append("    %% failures start the compensation")

    before, back = _undo_order(saga.tree, COMPENSATED)

    def undo_from(index: int) -> str:
        """Where compensation goes on from step `index`: the step undone before it in its
        own branch, or (first in a branch) the group's steps before the group."""
        return before[steps[index].name]

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

    for wait in saga.waits():
        why = [k.__name__ for k in wait.failures]
        if wait.timeout_s is not None and wait.on_timeout is None:
            why.append(f"nothing within {_seconds(wait.timeout_s)}")
        if why:
            target = before[wait.name]
            out.append(
                f'    {_group_id("wait", wait.name)} ==>|"{_text(" or ".join(why))}"| {target}'
            )

    out.append("    %% compensation walks back, each step undone by its command")
    for step in steps:
        if step.compensation is not None:
            command = step.compensation.command.message_type
            out.append(f'    {_node_id(step)} -.->|"{_text(command)}"| {undo_from(step.index)}')
    out.extend(f"    {a} -.-> {b}" for a, b in back)

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
    for step in steps:
        if step.step.pivot:
            out.append(f"    class {_node_id(step)} pivot")
    out.append(f"    class {START},{COMPLETED} terminal")
    if bad:
        out.append(f"    class {','.join(bad)} bad")
    return "\n".join(out)


def _draw(
    seq: _Seq, sources: list[str], shapes: list[str], edges: list[str], label: str | None
) -> list[str]:
    """The forward arrows of a sequence entered from `sources` (the first ones labelled);
    the nodes the next one is entered from. Groups get a fork and a join, a Switch a
    decision and a merge, a wait its own node."""

    def link(froms: list[str], to: str, text: str | None) -> None:
        arrow = f'-->|"{_text(text)}"|' if text else "-->"
        edges.extend(f"    {a} {arrow} {to}" for a in froms)

    for node in seq.nodes:
        if isinstance(node, _Leaf):
            link(sources, _node_id(node.step), label)
            sources = [_node_id(node.step)]
        elif isinstance(node, _Par):
            fork, join = _group_id("fork", node.name), _group_id("join", node.name)
            shapes.append(f'    {fork}[["{_text(node.name)}: branches in parallel"]]')
            shapes.append(f'    {join}[["{_text(node.name)}: every branch done"]]')
            link(sources, fork, label)
            for branch in node.branches:
                link(_draw(branch, [fork], shapes, edges, None), join, None)
            sources = [join]
        elif isinstance(node, _Choice):
            decision, merge = _group_id("switch", node.name), _group_id("merge", node.name)
            shapes.append(f'    {decision}{{"{_text(node.name)}: which case?"}}')
            shapes.append(f'    {merge}(("end {_text(node.name)}"))')
            link(sources, decision, label)
            cases = [*node.cases.items(), *([("other", node.default)] if node.default else [])]
            for key, case in cases:
                if case.nodes:
                    link(_draw(case, [decision], shapes, edges, key), merge, None)
                else:
                    link([decision], merge, key)
            sources = [merge]
        elif isinstance(node, _Each):
            fork, join = _group_id("each", node.name), _group_id("all", node.name)
            what = f"{node.name}: for each item, up to {node.max_parallel} at once"
            shapes.append(f'    {fork}[["{_text(what)}"]]')
            shapes.append(f'    {join}[["{_text(node.name)}: every item done"]]')
            link(sources, fork, label)
            link([fork], _node_id(node.step), None)
            link([_node_id(node.step)], join, None)
            sources = [join]
        else:
            wait = _group_id("wait", node.name)
            kinds = " or ".join(k.__name__ for k in node.events)
            limit = "" if node.timeout_s is None else f", up to {_seconds(node.timeout_s)}"
            shapes.append(f'    {wait}>"{_text(node.name)}: wait for {_text(kinds)}{limit}"]')
            link(sources, wait, label)
            sources = [wait]
            if node.on_timeout is not None:
                sources = [wait, *_draw(node.on_timeout, [wait], shapes, edges, "timeout")]
        label = None
    return sources


def _group_id(kind: str, name: str) -> str:
    return f"{kind}_" + re.sub(r"[^A-Za-z0-9]", "_", name)


def _undo_order(tree: _Seq, start: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """For each step, where undoing goes after it (the compensable step before it in its
    branch, else what comes before its group); and the arrows from a group's join (or a
    Switch's merge) back into the last compensable step of each branch."""
    before: dict[str, str] = {}
    back: list[tuple[str, str]] = []

    def walk(seq: _Seq, prev: str) -> str:
        for node in seq.nodes:
            if isinstance(node, _Leaf):
                before[node.step.name] = prev
                if node.step.compensation is not None:
                    prev = _node_id(node.step)
            elif isinstance(node, (_Par, _Choice)):
                kind = "join" if isinstance(node, _Par) else "merge"
                branches = (
                    node.branches
                    if isinstance(node, _Par)
                    else (*node.cases.values(), *([node.default] if node.default else []))
                )
                ends = [walk(b, prev) for b in branches]
                group = _group_id(kind, node.name)
                if any(end != prev for end in ends):
                    back.extend((group, end) for end in dict.fromkeys(ends))
                    prev = group
            elif isinstance(node, _Each):
                before[node.step.name] = prev
                if node.step.compensation is not None:
                    prev = _node_id(node.step)
            elif isinstance(node, _Wait):
                before[node.name] = prev
                if node.on_timeout is not None:
                    prev = walk(node.on_timeout, prev)
        return prev

    walk(tree, start)
    return before, back


def _outline(saga: Saga[Any], seq: _Seq, depth: int, out: list[str]) -> None:
    pad = "  " * depth
    for node in seq.nodes:
        if isinstance(node, _Leaf):
            step = node.step
            out.append(
                f"{pad}{step.index + 1}. " + _label(saga, step).replace("<br/>", "\n" + pad + "   ")
            )
        elif isinstance(node, _Par):
            out.append(f"{pad}{node.name}: these branches at the same time, all must end")
            for i, branch in enumerate(node.branches, 1):
                out.append(f"{pad}  branch {i}:")
                _outline(saga, branch, depth + 2, out)
        elif isinstance(node, _Choice):
            out.append(f"{pad}{node.name}: one case, chosen from the state (journaled)")
            for key, case in node.cases.items():
                out.append(f"{pad}  case {key!r}:" + ("" if case.nodes else " nothing"))
                _outline(saga, case, depth + 2, out)
            if node.default is not None:
                out.append(f"{pad}  any other:" + ("" if node.default.nodes else " nothing"))
                _outline(saga, node.default, depth + 2, out)
        elif isinstance(node, _Each):
            out.append(
                f"{pad}{node.name}: for each item of a list in the state, "
                f"up to {node.max_parallel} at once:"
            )
            step = node.step
            out.append(
                f"{pad}  {step.index + 1}. "
                + _label(saga, step).replace("<br/>", "\n" + pad + "     ")
            )
        else:
            kinds = " or ".join(k.message_type for k in node.events)
            fails = " or ".join(k.message_type for k in node.failures)
            line = f"{pad}{node.name}: wait for {kinds} (sagakit sagas signal)"
            if fails:
                line += f"; {fails} compensates"
            out.append(line)
            if node.timeout_s is not None:
                then = "compensate" if node.on_timeout is None else "instead:"
                out.append(f"{pad}  none within {_seconds(node.timeout_s)}: {then}")
                if node.on_timeout is not None:
                    _outline(saga, node.on_timeout, depth + 2, out)


def text(saga: Saga[Any]) -> str:
    """The saga as indented plain text, one step per paragraph."""
    out = [f"saga {saga.name} v{saga.version} ({len(saga.resolved())} steps)"]
    if saga.deadline_s is not None:
        out.append(f"  deadline {_seconds(saga.deadline_s)} before the pivot")
    _outline(saga, saga.tree, 1, out)
    return "\n".join(out).replace("#quot;", '"')


def render(saga: Saga[Any], *, as_mermaid: bool) -> str:
    return mermaid(saga) if as_mermaid else text(saga)


def mermaid_at(saga: Saga[Any], t: Any) -> str:
    """`mermaid(saga)` with where one saga is (`t`: its last transition, or its instance)
    highlighted: steps done in green, undone in orange, in flight (or waiting to retry,
    or a wait it is at) in blue with a thick border, and the end it reached."""
    by_name = {step.name: _node_id(step) for step in saga.resolved()}

    def ids(names: Any) -> list[str]:
        found = []
        for name in names:
            node = by_name.get(str(name).partition("#")[0])  # a ForEach item: its step
            if node is not None and node not in found:
                found.append(node)
        return found

    done = ids(n for n in t.completed if n not in t.compensated)
    undone = ids(t.compensated)
    now = ids([p.step for p in t.in_flight] + [w.step for w in t.waiting])
    now += [_group_id("wait", name) for name, _due in t.waits]
    end = {
        "COMPLETED": COMPLETED,
        "COMPENSATED": COMPENSATED,
        "FAILED_NEEDS_ATTENTION": PARKED,
        "RESOLVED": None,
    }.get(t.status.value)
    out = [
        mermaid(saga),
        "    classDef done fill:#bbf7d0,stroke:#15803d",
        "    classDef undone fill:#fed7aa,stroke:#c2410c",
        "    classDef now fill:#bfdbfe,stroke:#1d4ed8,stroke-width:4px",
    ]
    for cls, nodes in (("done", done), ("undone", undone), ("now", now)):
        if nodes:
            out.append(f"    class {','.join(nodes)} {cls}")
    if end is not None and (end == COMPLETED or f"| {end}" in out[0]):
        out.append(f"    class {end} now")
    return "\n".join(out)

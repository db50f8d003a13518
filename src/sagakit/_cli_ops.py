"""`sagakit sagas ...` and `sagakit dlq ...`: look into and act on a running system."""

from __future__ import annotations

import datetime
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import anyio
import typer
from rich.console import Console
from rich.table import Table

from ._client import SagaClient
from ._dlq import DeadLetter
from ._errors import SagaError, TransportError
from ._evaluator import SagaInstance, SagaStatus, Transition
from ._inspect import (
    dlq_name,
    event_history,
    find_saga,
    header,
    journal_topics,
    read_journal,
    read_topic,
    replay_dead_letters,
    saga_type_of,
)
from .transport._base import Record
from .transport.kafka import KafkaSettings, KafkaTransport

out = Console()
err = Console(stderr=True)
T = TypeVar("T")

Bootstrap = Annotated[
    str,
    typer.Option(
        envvar="SAGAKIT_BOOTSTRAP", help="Kafka bootstrap servers (or set SAGAKIT_BOOTSTRAP)."
    ),
]
Namespace = Annotated[str, typer.Option(help="Topic prefix the system runs under.")]

sagas_app = typer.Typer(help="List, inspect, resume and resolve sagas of a running system.")
dlq_app = typer.Typer(help="Inspect and replay dead letters.")


def run_with(bootstrap: str, action: Callable[[KafkaTransport], Awaitable[T]]) -> T:
    async def main() -> T:
        async with KafkaTransport(KafkaSettings(bootstrap, client_id="sagakit-cli")) as t:
            return await action(t)

    try:
        return anyio.run(main)
    except SagaError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def _when(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000).isoformat(sep=" ", timespec="milliseconds")


@sagas_app.command("list")
def sagas_list(
    bootstrap: Bootstrap,
    state: Annotated[
        SagaStatus | None, typer.Option("--state", help="Only sagas in this state.")
    ] = None,
    saga_type: Annotated[str | None, typer.Option(help="Only sagas of this type.")] = None,
    namespace: Namespace = "",
    limit: Annotated[int, typer.Option(help="Show at most this many rows.")] = 200,
) -> None:
    """Every saga found in the journals, with its state (read-only)."""

    async def action(transport: KafkaTransport) -> list[SagaInstance]:
        rows: list[SagaInstance] = []
        for topic, partitions in sorted((await journal_topics(transport, namespace)).items()):
            if saga_type is not None and saga_type_of(topic, namespace) != saga_type:
                continue
            view = await read_journal(transport, topic, partitions)
            rows.extend(view.instances.values())
            if view.foreign:
                err.print(
                    f"warning: {topic} holds {view.foreign} record(s) that are not journal "
                    "entries of an orchestrator; they were skipped (only orchestrators may "
                    "write to journal topics: restrict it with ACLs)"
                )
        return rows

    instances = run_with(bootstrap, action)
    if state is not None:
        instances = [i for i in instances if i.status is state]
    instances.sort(key=lambda i: i.updated_ms, reverse=True)
    table = Table(title=f"{len(instances)} saga(s)")
    for col in ("saga id", "type", "state", "at step", "failure", "updated"):
        table.add_column(col)
    for i in instances[:limit]:
        at = i.pending.step if i.pending else (i.next.step if i.next else "")
        table.add_row(
            i.saga_id, i.saga_type, i.status.value, at, i.failure or "", _when(i.updated_ms)
        )
    out.print(table)


def _print_history(saga_type: str, history: list[Transition]) -> None:
    last = history[-1]
    out.print(f"[bold]{last.saga_id}[/bold] ({saga_type} v{last.version}): {last.status.value}")
    if last.failure:
        out.print(f"failure: {last.failure}")
    table = Table()
    for col in ("#", "time", "event", "step", "state", "caused by", "sent"):
        table.add_column(col)
    for t in history:
        sent = f"{t.pending.command.message_type} ({t.pending.message_id})" if t.pending else ""
        if t.next is not None and t.next.due_ms is not None:
            sent = f"retry {t.next.step} attempt {t.next.attempt} at {_when(t.next.due_ms)}"
        event = t.event + (f" — {t.note}" if t.note else "")
        table.add_row(
            str(t.seq), _when(t.at_ms), event, t.step or "", t.status.value, t.cause_type, sent
        )
    out.print(table)


@sagas_app.command("show")
def sagas_show(
    saga_id: str,
    bootstrap: Bootstrap,
    saga_type: Annotated[str | None, typer.Option(help="Saga type, to search one journal.")] = None,
    namespace: Namespace = "",
) -> None:
    """The timeline of one saga: from its journal (orchestration), or rebuilt from the
    domain events that carry its id (choreography)."""

    async def action(transport: KafkaTransport) -> tuple[str, list[Transition]] | list[Record]:
        try:
            return await find_saga(transport, saga_id, namespace, saga_type)
        except TransportError:
            events = await event_history(transport, saga_id, namespace)
            if not events:
                raise
            return events

    found = run_with(bootstrap, action)
    if isinstance(found, tuple):
        _print_history(*found)
    else:
        _print_events(saga_id, found)


def _print_events(saga_id: str, events: list[Record]) -> None:
    correlation = {header(r, "correlation-id") for r in events}
    out.print(
        f"[bold]{saga_id}[/bold] (choreography): {len(events)} event(s), "
        f"correlation {', '.join(sorted(c or '?' for c in correlation))}"
    )
    table = Table()
    for col in ("time", "by", "event", "message id", "caused by"):
        table.add_column(col)
    for r in events:
        table.add_row(
            _when(r.timestamp_ms),
            r.topic.rsplit(".", 2)[-2],
            (header(r, "message-type") or "").rsplit(".", 1)[-1],
            header(r, "message-id") or "",
            header(r, "causation-id") or "",
        )
    out.print(table)


def _operator(
    saga_id: str,
    bootstrap: str,
    namespace: str,
    saga_type: str | None,
    wait_s: float,
    send: Callable[[SagaClient, str], Awaitable[None]],
    event: str,
) -> None:
    async def action(transport: KafkaTransport) -> tuple[str, list[Transition]]:
        found_type, history = await find_saga(transport, saga_id, namespace, saga_type)
        status = history[-1].status
        if status is not SagaStatus.FAILED_NEEDS_ATTENTION:
            raise SagaError(
                f"saga {saga_id} is {status.value}; only FAILED_NEEDS_ATTENTION sagas "
                "can be resumed or resolved"
            )
        seen = history[-1].seq
        await send(SagaClient(transport, namespace=namespace), found_type)
        with anyio.move_on_after(wait_s):
            while not any(t.event == event for t in history if t.seq > seen):
                await anyio.sleep(0.2)
                _, history = await find_saga(transport, saga_id, namespace, found_type)
        return found_type, [t for t in history if t.seq > seen]

    found_type, recorded = run_with(bootstrap, action)
    if not any(t.event == event for t in recorded):
        err.print(f"request sent; the orchestrator has not recorded it within {wait_s}s")
        raise typer.Exit(1)
    _print_history(found_type, recorded)


@sagas_app.command("resume")
def sagas_resume(
    saga_id: str,
    bootstrap: Bootstrap,
    note: Annotated[str, typer.Option(help="Why, for the journal.")] = "",
    saga_type: Annotated[str | None, typer.Option(help="Saga type, to search one journal.")] = None,
    namespace: Namespace = "",
    wait: Annotated[float, typer.Option(help="Seconds to wait for the orchestrator.")] = 15.0,
) -> None:
    """Retry a FAILED_NEEDS_ATTENTION saga from where it stopped (recorded in the journal)."""
    _operator(
        saga_id,
        bootstrap,
        namespace,
        saga_type,
        wait,
        lambda client, kind: client.resume(kind, saga_id, note),
        "resumed",
    )


@sagas_app.command("resolve")
def sagas_resolve(
    saga_id: str,
    bootstrap: Bootstrap,
    note: Annotated[str, typer.Option(help="What was fixed by hand, for the journal.")],
    saga_type: Annotated[str | None, typer.Option(help="Saga type, to search one journal.")] = None,
    namespace: Namespace = "",
    wait: Annotated[float, typer.Option(help="Seconds to wait for the orchestrator.")] = 15.0,
) -> None:
    """Mark a FAILED_NEEDS_ATTENTION saga fixed by hand; it ends as RESOLVED."""
    _operator(
        saga_id,
        bootstrap,
        namespace,
        saga_type,
        wait,
        lambda client, kind: client.resolve(kind, saga_id, note),
        "resolved",
    )


@dlq_app.command("list")
def dlq_list(
    topic: Annotated[str, typer.Argument(help="A topic (its .dlq is read) or a .dlq topic.")],
    bootstrap: Bootstrap,
) -> None:
    """The dead letters of a topic, with the reason each could not be processed."""
    name = dlq_name(topic)
    records = run_with(bootstrap, lambda t: read_topic(t, name))
    table = Table(title=f"{name}: {len(records)} dead letter(s)")
    for col in ("offset", "message id", "type", "error", "reason", "from"):
        table.add_column(col)
    for r in records:
        letter = DeadLetter.of(r)
        origin = f"{letter.original_topic}[{letter.original_partition}]@{letter.original_offset}"
        if letter.truncated:
            origin += f" (truncated: {', '.join(letter.truncated)})"
        table.add_row(
            str(r.offset),
            letter.message_id,
            letter.message_type,
            letter.error_type,
            letter.error_message,
            origin,
        )
    out.print(table)


@dlq_app.command("replay")
def dlq_replay(
    topic: Annotated[str, typer.Argument(help="A topic (its .dlq is read) or a .dlq topic.")],
    bootstrap: Bootstrap,
    message_id: Annotated[
        list[str] | None, typer.Option("--id", help="Replay only this message id (repeatable).")
    ] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="Replay every dead letter.")] = False,
    namespace: Namespace = "",
) -> None:
    """Produce dead letters again to their original topic (after fixing the cause)."""
    if not message_id and not replay_all:
        err.print("say which: --id MESSAGE_ID (repeatable) or --all")
        raise typer.Exit(2)
    outcome = run_with(
        bootstrap,
        lambda t: replay_dead_letters(
            t, topic, None if replay_all else message_id, namespace=namespace
        ),
    )
    for _, why in outcome.refused:
        err.print(f"not replayed: {why}")
    out.print(f"replayed {len(outcome.replayed)} record(s) from {dlq_name(topic)}")
    found = {letter.message_id for letter in outcome.replayed}
    if outcome.refused or (message_id and not replay_all and not set(message_id) <= found):
        raise typer.Exit(1)

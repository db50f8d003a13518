"""`sagakit sagas ...` and `sagakit dlq ...`: look into and act on a running system."""

from __future__ import annotations

import datetime
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import anyio
import orjson
import typer
from pydantic import ValidationError

from .._app import App
from .._client import SagaClient
from .._dlq import DeadLetter
from .._errors import SagaError, TransportError
from .._evaluator import EndedSaga, SagaInstance, SagaStatus, Transition, replay
from .._inspect import (
    AS_OF_SNAPSHOT,
    consumed_topics,
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
from .._messages import CancelSaga, Message, ResolveSaga, ResumeSaga, registered
from .._operations import refusal
from .._readmodel import SagaRow, iso, row_json, where
from .._readstore import READ_MODEL_ENV, SagaQuery, open_read_model
from ..transport._base import Record
from ..transport.kafka import KafkaTransport
from ._common import (
    AppDir,
    AppSpec,
    Bootstrap,
    JsonOpt,
    Namespace,
    err,
    fail,
    maybe_app,
    namespace_of,
    out,
    print_json,
    print_table,
    run_store,
    run_with,
)

sagas_app = typer.Typer(
    help="List, inspect, resume, resolve, signal and cancel sagas of a running system."
)
dlq_app = typer.Typer(help="Inspect and replay dead letters.")

SagaType = Annotated[str | None, typer.Option(help="Saga type, to search one journal.")]


def _when(ms: int | float | None) -> str:
    if ms is None:
        return ""
    return datetime.datetime.fromtimestamp(ms / 1000).isoformat(sep=" ", timespec="milliseconds")


def _saga_types(app: App | None, saga_type: str | None) -> set[str] | None:
    if saga_type is not None:
        return {saga_type}
    return {s.name for s in app.sagas} if app is not None else None


def instance_json(i: SagaInstance) -> dict[str, Any]:
    return {
        "saga_id": i.saga_id,
        "saga_type": i.saga_type,
        "version": i.version,
        "status": i.status.value,
        "step": where(i) or None,
        "failure": i.failure,
        "started": iso(i.started_ms),
        "updated": iso(i.updated_ms),
        "seq": i.seq,
    }


def ended_json(e: EndedSaga, saga_type: str) -> dict[str, Any]:
    """A saga whose records are gone: what the latest snapshot keeps of it."""
    return {
        "saga_id": e.saga_id,
        "saga_type": saga_type,
        "version": e.version,
        "status": e.status.value,
        "step": None,
        "failure": None,
        "started": None,
        "updated": iso(e.ended_ms),
        "seq": None,
    }


ReadModel = Annotated[
    str | None,
    typer.Option(
        envvar=READ_MODEL_ENV,
        help="Read the console's read model (sqlite:///PATH or postgresql://...) instead "
        "of the journals: fast, and it keeps sagas the journal's retention deleted.",
    ),
]
OptBootstrap = Annotated[
    str | None,
    typer.Option(
        envvar="SAGAKIT_BOOTSTRAP", help="Kafka bootstrap servers (or set SAGAKIT_BOOTSTRAP)."
    ),
]


def _read_model_rows(read_model: str, query: SagaQuery) -> tuple[list[SagaRow], int]:
    async def main() -> tuple[list[SagaRow], int]:
        store = open_read_model(read_model)
        try:
            return await store.sagas(query)
        finally:
            await store.close()

    return run_store(main)


def _fields(items: list[str] | None) -> tuple[tuple[str, str], ...]:
    found = []
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{item!r}: expected NAME=VALUE", param_hint="--field")
        found.append((name, value))
    return tuple(found)


def _ms(value: datetime.datetime | None) -> int | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    return round(value.timestamp() * 1000)


@sagas_app.command("list")
def sagas_list(
    bootstrap: OptBootstrap = None,
    app_spec: AppSpec = None,
    state: Annotated[
        SagaStatus | None, typer.Option("--state", help="Only sagas in this state.")
    ] = None,
    saga_type: Annotated[str | None, typer.Option(help="Only sagas of this type.")] = None,
    version: Annotated[int | None, typer.Option(help="Only sagas of this version.")] = None,
    id_prefix: Annotated[
        str | None, typer.Option(help="Only saga ids starting with this (read model).")
    ] = None,
    field: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=VALUE: only sagas whose state field (one the definition declares "
            "searchable) has this value (read model; repeatable)."
        ),
    ] = None,
    started_from: Annotated[
        datetime.datetime | None,
        typer.Option(help="Only sagas started at or after this time, UTC (read model)."),
    ] = None,
    started_before: Annotated[
        datetime.datetime | None,
        typer.Option(help="Only sagas started before this time, UTC (read model)."),
    ] = None,
    read_model: ReadModel = None,
    namespace: Namespace = None,
    limit: Annotated[int, typer.Option(help="Show at most this many (0: all).")] = 200,
    json_output: JsonOpt = False,
    app_dir: AppDir = None,
) -> None:
    """Every saga found in the journals (or the read model), with its state, newest first."""
    app = maybe_app(app_spec, app_dir)
    ns = namespace_of(app, namespace)
    types = _saga_types(app, saga_type)
    if read_model:
        query = SagaQuery(
            saga_type=saga_type,
            version=version,
            status=state,
            started_from_ms=_ms(started_from),
            started_before_ms=_ms(started_before),
            id_prefix=id_prefix,
            fields=_fields(field),
            limit=limit or 1_000_000_000,
        )
        rows, total = _read_model_rows(read_model, query)
        rows = [r for r in rows if types is None or r.saga_type in types]
        _print_sagas([(row_json(r), r.updated_ms) for r in rows], total, json_output)
        return
    if id_prefix or field or started_from or started_before:
        raise fail("--id-prefix, --field, --started-from and --started-before need --read-model")
    if bootstrap is None:
        raise fail("say where to read: --bootstrap HOST:PORT (the journals) or --read-model URL")

    async def action(transport: KafkaTransport) -> list[tuple[dict[str, Any], int]]:
        rows: list[tuple[dict[str, Any], int]] = []  # (row, updated ms)
        for topic, partitions in sorted((await journal_topics(transport, ns)).items()):
            found_type = saga_type_of(topic, ns)
            if types is not None and found_type not in types:
                continue
            view = await read_journal(transport, topic, partitions)
            rows.extend((instance_json(i), i.updated_ms) for i in view.instances.values())
            rows.extend((ended_json(e, found_type), e.ended_ms) for e in view.ended.values())
            if view.trimmed:
                err.print(
                    f"note: {len(view.trimmed)} partition(s) of {topic} no longer hold their "
                    "oldest records (the journal's retention deleted them); sagas that "
                    "ended before are listed as the latest snapshot keeps them, or not at "
                    "all once it has forgotten them"
                )
            if view.foreign:
                err.print(
                    f"warning: {topic} holds {view.foreign} record(s) that are not journal "
                    "entries of an orchestrator; they were skipped (only orchestrators may "
                    "write to journal topics: restrict it with ACLs)"
                )
        return rows

    found = run_with(bootstrap, action)
    if state is not None:
        found = [r for r in found if r[0]["status"] == state.value]
    if version is not None:
        found = [r for r in found if r[0]["version"] == version]
    found.sort(key=lambda r: r[1], reverse=True)
    _print_sagas(found[:limit] if limit else found, len(found), json_output)


def _print_sagas(shown: list[tuple[dict[str, Any], int]], total: int, json_output: bool) -> None:
    if json_output:
        print_json([row for row, _ in shown])
        return
    print_table(
        ["saga id", "type", "version", "state", "at step", "failure", "updated"],
        [
            [
                row["saga_id"],
                row["saga_type"],
                str(row["version"]),
                row["status"],
                row["step"] or "",
                row["failure"] or "",
                _when(updated),
            ]
            for row, updated in shown
        ],
        title=f"{total} saga(s)" + (f", {len(shown)} shown" if len(shown) < total else ""),
    )


def _from_read_model(
    read_model: str, saga_id: str, saga_type: str | None
) -> tuple[str, list[Transition]] | None:
    async def main() -> tuple[str, list[Transition]] | None:
        store = open_read_model(read_model)
        try:
            rows = await store.find(saga_id, saga_type)
            if not rows:
                return None
            timeline = await store.timeline(rows[0])
            return rows[0].saga_type, [t.transition() for t in timeline]
        finally:
            await store.close()

    return run_store(main)


def _new(t: Transition, before: Transition | None) -> list[Any]:
    """The commands transition `t` sent (in flight now, not before it)."""
    old = {p.message_id for p in before.in_flight} if before is not None else set()
    return [p for p in t.in_flight if p.message_id not in old]


def _sent(t: Transition, before: Transition | None = None) -> str:
    """What `t` sent, or scheduled, or waits for."""
    parts = [f"{p.command_type} ({p.message_id})" for p in _new(t, before)]
    old_waiting = {w.ref for w in before.waiting} if before is not None else set()
    parts += [
        f"retry {w.step} attempt {w.attempt} at {_when(w.due_ms)}"
        for w in t.waiting
        if w.due_ms is not None and w.ref not in old_waiting
    ]
    old_waits = dict(before.waits) if before is not None else {}
    parts += [f"waits for a signal: {name}" for name, _due in t.waits if name not in old_waits]
    return "; ".join(parts)


def transition_json(t: Transition) -> dict[str, Any]:
    return {
        "seq": t.seq,
        "at": iso(t.at_ms),
        "event": t.event,
        "step": t.step,
        "status": t.status.value,
        "caused_by": t.cause_type,
        "cause": t.cause,
        "sent": None
        if t.pending is None
        else {"type": t.pending.command_type, "message_id": t.pending.message_id},
        "in_flight": [
            {"type": p.command_type, "message_id": p.message_id, "step": p.step}
            for p in t.in_flight
        ],
        "waits": [name for name, _due in t.waits],
        "failure": t.failure,
        "note": t.note,
        "by": t.actor,
    }


def _print_history(
    saga_type: str, history: list[Transition], json_output: bool, whole: bool = False
) -> None:
    """A saga's timeline (`whole`: all of it, as `sagas show` reads it, which says if the
    journal's retention deleted its beginning)."""
    last = history[-1]
    first = history[0]
    complete = first.seq == 1
    if whole and not complete:
        note = (
            first.note
            if first.event == AS_OF_SNAPSHOT
            else f"the records before #{first.seq} were deleted by the journal's retention"
        )
        err.print(f"note: {note}")
    if json_output:
        print_json(
            {
                "saga_id": last.saga_id,
                "saga_type": saga_type,
                "version": last.version,
                "status": last.status.value,
                "failure": last.failure,
                # False: the journal's retention deleted the timeline's beginning
                **({"history_complete": complete} if whole else {}),
                "timeline": [transition_json(t) for t in history],
            }
        )
        return
    out.print(f"[bold]{last.saga_id}[/bold] ({saga_type} v{last.version}): {last.status.value}")
    if last.failure:
        out.print(f"failure: {last.failure}")
    print_table(
        ["#", "time", "event", "step", "state", "caused by", "sent"],
        [
            [
                str(t.seq),
                _when(t.at_ms),
                t.event
                + (f" by {t.actor}" if t.actor else "")
                + (f" — {t.note}" if t.note else ""),
                t.step or "",
                t.status.value,
                t.cause_type,
                _sent(t, before),
            ]
            for t, before in zip(history, [None, *history[:-1]], strict=True)
        ],
    )


@sagas_app.command("show")
def sagas_show(
    saga_id: str,
    bootstrap: OptBootstrap = None,
    app_spec: AppSpec = None,
    saga_type: SagaType = None,
    read_model: ReadModel = None,
    namespace: Namespace = None,
    json_output: JsonOpt = False,
    app_dir: AppDir = None,
) -> None:
    """The timeline of one saga: from its journal (orchestration) or the read model, or
    rebuilt from the domain events that carry its id (choreography)."""
    app = maybe_app(app_spec, app_dir)
    ns = namespace_of(app, namespace)
    if read_model:
        found_in_model = _from_read_model(read_model, saga_id, saga_type)
        if found_in_model is not None:
            _print_history(*found_in_model, json_output, whole=True)
            return
        if bootstrap is None:
            raise fail(f"no saga {saga_id!r} in the read model {read_model}")
    if bootstrap is None:
        raise fail("say where to read: --bootstrap HOST:PORT (the journals) or --read-model URL")

    async def action(transport: KafkaTransport) -> tuple[str, list[Transition]] | list[Record]:
        try:
            return await _find(transport, saga_id, ns, app, saga_type)
        except TransportError:
            events = await event_history(transport, saga_id, ns)
            if not events:
                raise
            return events

    found = run_with(bootstrap, action)
    if isinstance(found, tuple):
        _print_history(*found, json_output, whole=True)
    else:
        _print_events(saga_id, found, json_output)


async def _find(
    transport: KafkaTransport, saga_id: str, ns: str, app: App | None, saga_type: str | None
) -> tuple[str, list[Transition]]:
    types = _saga_types(app, saga_type)
    if types is None or len(types) != 1:
        found_type, history = await find_saga(transport, saga_id, ns, None)
        if types is not None and found_type not in types:
            raise TransportError(f"no saga {saga_id!r} in the journals of {', '.join(types)}")
        return found_type, history
    return await find_saga(transport, saga_id, ns, next(iter(types)))


def _print_events(saga_id: str, events: list[Record], json_output: bool) -> None:
    rows: list[dict[str, str]] = [
        {
            "at": iso(r.timestamp_ms) or "",
            "by": r.topic.rsplit(".", 2)[-2],
            "event": header(r, "message-type") or "",
            "message_id": header(r, "message-id") or "",
            "caused_by": header(r, "causation-id") or "",
        }
        for r in events
    ]
    if json_output:
        print_json({"saga_id": saga_id, "style": "choreography", "events": rows})
        return
    correlation = {header(r, "correlation-id") for r in events}
    out.print(
        f"[bold]{saga_id}[/bold] (choreography): {len(events)} event(s), "
        f"correlation {', '.join(sorted(c or '?' for c in correlation))}"
    )
    print_table(
        ["time", "by", "event", "message id", "caused by"],
        [
            [
                _when(r.timestamp_ms),
                row["by"],
                row["event"].rsplit(".", 1)[-1],
                row["message_id"],
                row["caused_by"],
            ]
            for r, row in zip(events, rows, strict=True)
        ],
    )


def _operator(
    saga_id: str,
    bootstrap: str,
    app: App | None,
    namespace: str,
    saga_type: str | None,
    wait_s: float,
    send: Callable[[SagaClient, str], Awaitable[None]],
    events: tuple[str, ...],
    json_output: bool,
    check: Callable[[list[Transition]], str | None],
) -> None:
    """Send a person's request for one saga, after `check` (its history: None if the
    request may go, else why not); print what the orchestrator recorded for it."""

    async def action(transport: KafkaTransport) -> tuple[str, list[Transition]]:
        found_type, history = await _find(transport, saga_id, namespace, app, saga_type)
        refused = check(history)
        if refused is not None:
            raise SagaError(refused)
        seen = history[-1].seq
        await send(SagaClient(transport, namespace=namespace), found_type)
        with anyio.move_on_after(wait_s):
            while not any(t.event in events for t in history if t.seq > seen):
                await anyio.sleep(0.2)
                _, history = await find_saga(transport, saga_id, namespace, found_type)
        return found_type, [t for t in history if t.seq > seen]

    found_type, recorded = run_with(bootstrap, action)
    if not any(t.event in events for t in recorded):
        err.print(f"request sent; the orchestrator has not recorded it within {wait_s}s")
        raise typer.Exit(1)
    _print_history(found_type, recorded, json_output)


Note = Annotated[str, typer.Option(help="Why, for the journal.")]
Wait = Annotated[float, typer.Option(help="Seconds to wait for the orchestrator.")]
Actor = Annotated[
    str | None,
    typer.Option(
        "--as",
        envvar="SAGAKIT_OPERATOR",
        help="Who is asking, recorded in the saga's journal (default: user@host).",
    ),
]


def _actor(given: str | None) -> str:
    """Who runs an operator command: `--as` (or SAGAKIT_OPERATOR), else user@host."""
    if given:
        return given
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@sagas_app.command("resume")
def sagas_resume(
    saga_id: str,
    bootstrap: Bootstrap,
    app_spec: AppSpec = None,
    note: Note = "",
    actor: Actor = None,
    saga_type: SagaType = None,
    namespace: Namespace = None,
    wait: Wait = 15.0,
    json_output: JsonOpt = False,
    app_dir: AppDir = None,
) -> None:
    """Retry a FAILED_NEEDS_ATTENTION saga from where it stopped (recorded in the journal)."""
    app = maybe_app(app_spec, app_dir)
    who = _actor(actor)
    _operator(
        saga_id,
        bootstrap,
        app,
        namespace_of(app, namespace),
        saga_type,
        wait,
        lambda client, kind: client.resume(kind, saga_id, note, actor=who),
        ("resumed",),
        json_output,
        _refusal(app, ResumeSaga(), saga_id),
    )


@sagas_app.command("resolve")
def sagas_resolve(
    saga_id: str,
    bootstrap: Bootstrap,
    note: Annotated[str, typer.Option(help="What was fixed by hand, for the journal.")],
    app_spec: AppSpec = None,
    actor: Actor = None,
    saga_type: SagaType = None,
    namespace: Namespace = None,
    wait: Wait = 15.0,
    json_output: JsonOpt = False,
    app_dir: AppDir = None,
) -> None:
    """Mark a FAILED_NEEDS_ATTENTION saga fixed by hand; it ends as RESOLVED."""
    app = maybe_app(app_spec, app_dir)
    who = _actor(actor)
    _operator(
        saga_id,
        bootstrap,
        app,
        namespace_of(app, namespace),
        saga_type,
        wait,
        lambda client, kind: client.resolve(kind, saga_id, note, actor=who),
        ("resolved",),
        json_output,
        _refusal(app, ResolveSaga(note=note), saga_id),
    )


def _definition(app: App | None, saga_type: str, version: int) -> Any:
    """The version of `saga_type` a saga runs on, if the app has it (else None)."""
    if app is None or saga_type not in {s.name for s in app.sagas}:
        return None
    return next((v for v in app.versions(saga_type) if v.version == version), None)


def _refusal(app: App | None, request: Message, saga_id: str) -> Any:
    """A check that asks the saga's own definition (when the app is given) whether it
    would take `request`, so a refusal is said here instead of in a dead letter."""

    def check(history: list[Transition]) -> str | None:
        last = history[-1]
        definition = _definition(app, last.saga_type, last.version)
        return refusal(definition, replay(history)[saga_id], request)

    return check


@sagas_app.command("signal")
def sagas_signal(
    saga_id: str,
    message_type: Annotated[
        str, typer.Argument(metavar="TYPE", help="The signal's message type, e.g. hr.Approved.")
    ],
    bootstrap: Bootstrap,
    app_spec: AppSpec = None,
    data: Annotated[str, typer.Option(help="The signal's fields as a JSON object.")] = "{}",
    note: Note = "",
    actor: Actor = None,
    saga_type: SagaType = None,
    namespace: Namespace = None,
    wait: Wait = 15.0,
    json_output: JsonOpt = False,
    app_dir: AppDir = None,
) -> None:
    """Send a saga the message one of its waits (WaitFor) is waiting for: a person's
    approval, say. Kept by the saga if it has not reached that wait yet."""
    app = maybe_app(app_spec, app_dir)
    who = _actor(actor)
    model = registered(message_type)
    if model is None:
        raise typer.BadParameter(
            f"no message type {message_type!r} is known"
            + ("" if app is not None else ": pass --app MODULE:ATTR of the app that defines it"),
            param_hint="TYPE",
        )
    try:
        fields = orjson.loads(data)
        message = model.model_validate(fields)
    except (orjson.JSONDecodeError, ValidationError) as exc:
        raise typer.BadParameter(f"not a {message_type}: {exc}", param_hint="--data") from None
    _operator(
        saga_id,
        bootstrap,
        app,
        namespace_of(app, namespace),
        saga_type,
        wait,
        lambda client, kind: client.signal(kind, saga_id, message, actor=who, note=note),
        ("signalled", "signal-kept"),
        json_output,
        _refusal(app, message, saga_id),
    )


@sagas_app.command("cancel")
def sagas_cancel(
    saga_id: str,
    bootstrap: Bootstrap,
    reason: Annotated[str, typer.Option(help="Why, for the journal and the saga's failure.")],
    app_spec: AppSpec = None,
    actor: Actor = None,
    saga_type: SagaType = None,
    namespace: Namespace = None,
    wait: Wait = 15.0,
    json_output: JsonOpt = False,
    app_dir: AppDir = None,
) -> None:
    """Stop a running saga: before its pivot it compensates and ends COMPENSATED with the
    reason; after the pivot it is refused (with --app the refusal is said here)."""
    app = maybe_app(app_spec, app_dir)
    who = _actor(actor)
    _operator(
        saga_id,
        bootstrap,
        app,
        namespace_of(app, namespace),
        saga_type,
        wait,
        lambda client, kind: client.cancel(kind, saga_id, reason, actor=who),
        ("cancelled",),
        json_output,
        _refusal(app, CancelSaga(reason=reason), saga_id),
    )


def letter_json(letter: DeadLetter) -> dict[str, Any]:
    return {
        "offset": letter.record.offset,
        "message_id": letter.message_id,
        "message_type": letter.message_type,
        "error_type": letter.error_type,
        "error_message": letter.error_message,
        "original_topic": letter.original_topic,
        "original_partition": letter.original_partition,
        "original_offset": letter.original_offset,
        "failed_consumer": letter.consumer,
        "truncated": list(letter.truncated),
    }


@dlq_app.command("list")
def dlq_list(
    topic: Annotated[str, typer.Argument(help="A topic (its .dlq is read) or a .dlq topic.")],
    bootstrap: Bootstrap,
    json_output: JsonOpt = False,
) -> None:
    """The dead letters of a topic, with the reason each could not be processed."""
    name = dlq_name(topic)
    letters = [DeadLetter.of(r) for r in run_with(bootstrap, lambda t: read_topic(t, name))]
    if json_output:
        print_json([letter_json(d) for d in letters])
        return
    rows = []
    for d in letters:
        origin = f"{d.original_topic}[{d.original_partition}]@{d.original_offset}"
        if d.truncated:
            origin += f" (truncated: {', '.join(d.truncated)})"
        rows.append(
            [
                str(d.record.offset),
                d.message_id,
                d.message_type,
                d.error_type,
                d.error_message,
                origin,
            ]
        )
    print_table(
        ["offset", "message id", "type", "error", "reason", "from"],
        rows,
        title=f"{name}: {len(letters)} dead letter(s)",
    )


@dlq_app.command("replay")
def dlq_replay(
    topic: Annotated[str, typer.Argument(help="A topic (its .dlq is read) or a .dlq topic.")],
    bootstrap: Bootstrap,
    message_id: Annotated[
        list[str] | None, typer.Option("--id", help="Replay only this message id (repeatable).")
    ] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="Replay every dead letter.")] = False,
    app_spec: AppSpec = None,
    namespace: Namespace = None,
    json_output: JsonOpt = False,
    app_dir: AppDir = None,
) -> None:
    """Produce dead letters again to the topic they came from (after fixing the cause).

    Only to an inbox, commands or events topic (with --app: one the app consumes), and
    never a dead letter that was truncated; each refusal is printed with its reason.
    """
    if not message_id and not replay_all:
        err.print("say which: --id MESSAGE_ID (repeatable) or --all")
        raise typer.Exit(2)
    app = maybe_app(app_spec, app_dir)
    ns = namespace_of(app, namespace)

    async def action(transport: KafkaTransport) -> Any:
        allowed = (
            app.consumed_topics(ns)
            if app is not None
            else consumed_topics(await transport.existing_topics(), ns)
        )
        return await replay_dead_letters(
            transport, topic, None if replay_all else message_id, allowed=allowed
        )

    outcome = run_with(bootstrap, action)
    found = {letter.message_id for letter in outcome.replayed}
    if json_output:
        print_json(
            {
                "replayed": [letter_json(d) for d in outcome.replayed],
                "refused": [{**letter_json(d), "why": why} for d, why in outcome.refused],
            }
        )
    else:
        for _, why in outcome.refused:
            err.print(f"not replayed: {why}")
        out.print(f"replayed {len(outcome.replayed)} record(s) from {dlq_name(topic)}")
    if outcome.refused or (message_id and not replay_all and not set(message_id) <= found):
        raise typer.Exit(1)

"""A service handles records of different sagas at once and the records of one saga in
order, exactly once; it commits an offset only when everything before it is answered."""

from __future__ import annotations

import threading
from collections import defaultdict

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sagakit import (
    Command,
    DefinitionError,
    Envelope,
    HandlerContext,
    MemoryStore,
    MemoryTransport,
    OutgoingRecord,
    Reply,
    Service,
    SqliteStore,
    TopicPartition,
)
from sagakit._codec import encode_record

pytestmark = pytest.mark.anyio

INBOX = "conc.inbox"


class Work(Command, type="conc.Work"):
    n: int
    pause: int = 0  # checkpoints the handler yields at


class Worked(Reply, type="conc.Worked"):
    n: int


def command(saga_id: str, n: int, pause: int = 0) -> OutgoingRecord:
    env = Envelope(
        message_id=f"{saga_id}:{n}",
        message_type=Work.message_type,
        saga_id=saga_id,
        correlation_id=saga_id,
        causation_id=saga_id,
        saga_type="conc",
        reply_to=INBOX,
    )
    return encode_record("conc.commands", env, Work(n=n, pause=pause))


async def serve(service: Service[None], transport: MemoryTransport, records, replies: int):  # type: ignore[no-untyped-def]
    await transport.ensure_topics({INBOX: 1})
    async with anyio.create_task_group() as tg:
        await tg.start(service.run, transport)
        await transport.send(records)
        await transport.broker.wait_until(
            lambda: len(transport.broker.records(INBOX)) >= replies, timeout=10
        )
        tg.cancel_scope.cancel()


async def test_handlers_of_different_sagas_wait_on_io_at_the_same_time() -> None:
    # Four handlers each wait until all four are waiting: handled one at a time, the first
    # would wait for ever (the test fails after 5 s).
    service: Service[None] = Service("conc", MemoryStore(), partitions=2)
    waiting = 0
    all_in = anyio.Event()

    @service.handles(Work)
    async def work(cmd: Work, ctx: HandlerContext[None]) -> Worked:
        nonlocal waiting
        waiting += 1
        if waiting == 4:
            all_in.set()
        await all_in.wait()
        return Worked(n=cmd.n)

    transport = MemoryTransport()
    with anyio.fail_after(5):
        await serve(service, transport, [command(f"s{i}", 1) for i in range(4)], 4)
    assert waiting == 4  # all four were waiting at once
    answered = {dict(r.headers)["saga-id"] for r in transport.broker.records(INBOX)}
    assert answered == {b"s0", b"s1", b"s2", b"s3"}  # and every saga got its reply


async def test_a_synchronous_handler_runs_in_a_thread_and_does_not_stop_the_loop() -> None:
    # The blocking handler is let go only by an async handler of another saga, which can
    # run only if the blocked one is not on the event loop.
    service: Service[None] = Service("conc", MemoryStore(), partitions=2)
    release = threading.Event()
    ran_in: dict[int, str] = {}

    class Release(Command, type="conc.Release"):
        pass

    @service.handles(Work)
    def blocking(cmd: Work, ctx: HandlerContext[None]) -> Worked:
        ran_in[cmd.n] = threading.current_thread().name
        assert release.wait(5), "the event loop was blocked"
        return Worked(n=cmd.n)

    @service.handles(Release)
    async def let_go(cmd: Release, ctx: HandlerContext[None]) -> Worked:
        release.set()
        return Worked(n=0)

    env = Envelope(
        message_id="s2:release",
        message_type=Release.message_type,
        saga_id="s2",
        correlation_id="s2",
        causation_id="s2",
        saga_type="conc",
        reply_to=INBOX,
    )
    with anyio.fail_after(8):
        await serve(
            service,
            MemoryTransport(),
            [command("s1", 1), encode_record("conc.commands", env, Release())],
            2,
        )
    assert ran_in[1] != threading.main_thread().name


async def test_no_offset_is_committed_past_a_record_still_being_handled() -> None:
    # One partition: s1's first record blocks; s2's later records finish. The committed
    # offset must stay at s1's record, so a crash now would re-read it (and only what
    # follows, answered from the store if already handled).
    service: Service[None] = Service("conc", MemoryStore(), partitions=1)
    gate = anyio.Event()

    @service.handles(Work)
    async def work(cmd: Work, ctx: HandlerContext[None]) -> Worked:
        if ctx.saga_id == "s1":
            await gate.wait()
        return Worked(n=cmd.n)

    transport = MemoryTransport()
    broker = transport.broker
    group = "conc.service"
    tp = TopicPartition("conc.commands", 0)
    await transport.ensure_topics({INBOX: 1})
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(service.run, transport)
            await transport.send([command("s1", 1), command("s2", 1), command("s2", 2)])
            await broker.wait_until(lambda: len(broker.records(INBOX)) == 2)
            for _ in range(20):  # several poll rounds, each may commit
                await anyio.sleep(service.poll_timeout_s / 4)
            assert (broker.committed(group, tp) or 0) == 0
            gate.set()
            await broker.wait_until(lambda: broker.committed(group, tp) == 3)
            tg.cancel_scope.cancel()


async def test_the_bound_holds_handlers_back() -> None:
    service: Service[None] = Service("conc", MemoryStore(), partitions=4, concurrency=3)
    running = peak = 0

    @service.handles(Work)
    async def work(cmd: Work, ctx: HandlerContext[None]) -> Worked:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
        running -= 1
        return Worked(n=cmd.n)

    with anyio.fail_after(5):
        await serve(service, MemoryTransport(), [command(f"s{i}", 1) for i in range(20)], 20)
    assert peak == 3


sagas = st.dictionaries(
    st.sampled_from([f"s{i}" for i in range(6)]),
    st.lists(st.integers(0, 6), min_size=1, max_size=6),  # per record: checkpoints to yield
    min_size=1,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(sagas=sagas, interleave=st.randoms(use_true_random=False), sqlite=st.booleans())
def test_each_sagas_records_are_handled_in_order_and_exactly_once(
    sagas, interleave, sqlite
) -> None:  # type: ignore[no-untyped-def]
    """For any interleaving of several sagas' records, and any handler timing, each saga's
    records are handled in offset order and each once (duplicates sent too)."""
    records = [(saga, n, pause) for saga, pauses in sagas.items() for n, pause in enumerate(pauses)]
    # an interleaving that keeps each saga's own order
    order: list[tuple[str, int, int]] = []
    queues = {saga: [r for r in records if r[0] == saga] for saga in sagas}
    while any(queues.values()):
        saga = interleave.choice([s for s, q in queues.items() if q])
        order.append(queues[saga].pop(0))
    duplicates = [order[i] for i in range(0, len(order), 3)]  # redelivered later, same ids
    handled: dict[str, list[int]] = defaultdict(list)

    async def main() -> None:
        store = SqliteStore() if sqlite else MemoryStore()
        service: Service[None] = Service("conc", store, partitions=2, concurrency=4)  # type: ignore[arg-type]

        @service.handles(Work)
        async def work(cmd: Work, ctx: HandlerContext[None]) -> Worked:
            handled[ctx.saga_id].append(cmd.n)
            for _ in range(cmd.pause):
                await anyio.lowlevel.checkpoint()
            return Worked(n=cmd.n)

        sent = [command(s, n, p) for s, n, p in order + duplicates]
        with anyio.fail_after(10):
            await serve(service, MemoryTransport(), sent, len(sent))

    anyio.run(main)
    assert dict(handled) == {saga: list(range(len(pauses))) for saga, pauses in sagas.items()}


async def test_inline_sync_handlers_run_on_the_loop_and_a_wrong_setting_is_refused() -> None:
    service: Service[None] = Service("conc", MemoryStore(), sync_handlers="inline")
    threads: list[str] = []

    @service.handles(Work)
    def work(cmd: Work, ctx: HandlerContext[None]) -> Worked:
        threads.append(threading.current_thread().name)
        return Worked(n=cmd.n)

    with anyio.fail_after(5):
        await serve(service, MemoryTransport(), [command("s1", 1)], 1)
    assert threads == [threading.main_thread().name]
    with pytest.raises(DefinitionError, match="sync_handlers is 'thread' or 'inline'"):
        Service("conc", MemoryStore(), sync_handlers="threads")  # type: ignore[arg-type]

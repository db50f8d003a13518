"""`sagakit bench-growth`: what history costs. One system runs waves of sagas on one
broker; at each level of history (sagas run so far) the orchestrator is restarted and its
restore time, its memory, what it holds and the saga throughput are measured, next to what
the broker itself does at that size (raw aiokafka on fresh topics; a raw fetch of the last
record of the app's deepest partition against the same fetch on a fresh topic, which is
how the embedded broker's cost grows with a partition's length; and a raw read of the
whole journal: what a restore without snapshots would have to read).

Every figure is compared with the zero-history level of the same run.
"""

from __future__ import annotations

import signal
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from .._app import App
from .._errors import SagaError
from .._flows import app_of, percentiles
from ..transport.kafka import KafkaSettings, KafkaTransport
from .baseline import ProgressFn, consumer_for, measure_baseline, producer_for
from .load import closed_loop
from .measure import Plan, Target, broker_for, git_revision
from .rig import KafkaRig, RigSetup, kafka_rig

#: Targets of the bounded-cost work, against the zero-history level of the same run.
RESTORE_RATIO_MAX = 1.3
RSS_GROWTH_MAX_MB = 50.0
THROUGHPUT_RATIO_MIN = 0.9


class GrowthStalled(SagaError):
    """The sagas of a wave stopped ending: the system (or the broker) is stuck."""


@dataclass(frozen=True, slots=True)
class GrowthPlan:
    """What `sagakit bench-growth` was asked for."""

    history: tuple[int, ...] = (0, 20_000, 100_000)
    concurrency: int = 64
    fill_concurrency: int = 256
    duration_s: float = 10.0
    warmup_s: float = 2.0
    restarts: int = 3
    dedupe_window_s: float = 30.0
    snapshot_every: int | None = None
    snapshot_interval_s: float | None = None
    partitions: int = 8
    bootstrap: str | None = None
    baseline_messages: int = 20_000
    baseline_round_trips: int = 200
    #: a wave gives up when no saga ended for this long
    stall_s: float = 120.0

    def component_env(self) -> dict[str, str]:
        env = {"SAGAKIT_DEDUPE_WINDOW_S": repr(self.dedupe_window_s)}
        if self.snapshot_every is not None:
            env["SAGAKIT_SNAPSHOT_EVERY"] = str(self.snapshot_every)
        if self.snapshot_interval_s is not None:
            env["SAGAKIT_SNAPSHOT_INTERVAL_S"] = repr(self.snapshot_interval_s)
        return env


def rss_mb(pid: int | None) -> float | None:
    """Resident memory of a process (MB), from /proc."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def scrape(port: int) -> dict[str, float]:
    """The sagakit_* samples of a component's /metrics, summed over their labels
    (``name{kind="instances"}`` kept apart for sagas held)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("sagakit_"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name, _, labels = name_labels.partition("{")
        if name == "sagakit_sagas_held":
            name += ".instances" if 'kind="instances"' in labels else ".ended"
        values[name] = values.get(name, 0.0) + float(value)
    return values


async def fill(
    rig: KafkaRig, total: int, concurrency: int, stall_s: float, progress: ProgressFn | None
) -> float:
    """Start sagas (`concurrency` in flight) until `total` have been started in the run, and
    wait until all have ended; the wave's sagas per second."""
    started = time.monotonic()
    first = len(rig.ended)
    last_end, last_count = time.monotonic(), len(rig.ended)
    while len(rig.placed) < total or rig.pending():
        room = min(concurrency - rig.pending(), total - len(rig.placed))
        if room > 0:
            await rig.place(room)
        if len(rig.ended) != last_count:
            last_end, last_count = time.monotonic(), len(rig.ended)
        elif time.monotonic() - last_end > stall_s:
            raise GrowthStalled(
                f"no saga ended for {stall_s:.0f}s with {rig.pending()} in flight after "
                f"{len(rig.ended)} of {total}; the orchestrator's and services' logs say why"
            )
        if progress:
            progress(f"history: {len(rig.ended):,} of {total:,} sagas", len(rig.ended), total)
        await anyio.sleep(0.01)
    seconds = time.monotonic() - started
    return round((len(rig.ended) - first) / seconds, 1) if seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Depths:
    """Records in each of the app's topics (summed over partitions), and its deepest
    partition with the number of records in it."""

    by_topic: dict[str, int]
    deepest: TopicPartition | None
    deepest_records: int


async def partition_depths(settings: KafkaSettings, topics: dict[str, int]) -> Depths:
    """How many records the app's topics hold, from the fetch high-watermarks."""
    consumer = consumer_for(settings)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t, n in topics.items() for p in range(n)]
        marks = await high_watermarks(consumer, tps)
        depths = dict.fromkeys(topics, 0)
        for tp, mark in marks.items():
            depths[tp.topic] += mark
        deepest = max(marks, key=lambda tp: marks[tp], default=None)
        return Depths(depths, deepest, marks[deepest] if deepest is not None else 0)
    finally:
        with anyio.CancelScope(shield=True):
            await consumer.stop()


async def high_watermarks(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition]
) -> dict[TopicPartition, int]:
    """The high-watermark of each partition as a fetch reports it (the embedded broker's
    ListOffsets is wrong after batched produce requests): one fetch from each end."""
    consumer.assign(tps)
    ends = await consumer.end_offsets(tps)
    for tp in tps:
        consumer.seek(tp, max(0, ends[tp] - 1))
    marks: dict[TopicPartition, int] = {}
    with anyio.fail_after(60):
        while len(marks) < len(tps):
            await consumer.getmany(timeout_ms=200, max_records=1)
            for tp in tps:
                hw = consumer.highwater(tp)
                if hw is not None:
                    marks[tp] = hw
            if len(marks) < len(tps):
                # an empty partition answers no fetch with data; its end is its start
                for tp in tps:
                    if tp not in marks and ends[tp] == 0:
                        marks[tp] = 0
    return marks


async def read_whole(settings: KafkaSettings, topic: str, partitions: int) -> dict[str, float]:
    """Read every record of `topic` from its start, raw: what a full replay reads."""
    consumer = consumer_for(settings)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        marks = await high_watermarks(consumer, tps)
        await consumer.seek_to_beginning(*tps)
        records, started = 0, time.perf_counter()
        with anyio.fail_after(600):
            while True:
                positions = {tp: await consumer.position(tp) for tp in tps}
                if all(positions[tp] >= marks[tp] for tp in tps):
                    break
                batches = await consumer.getmany(timeout_ms=200, max_records=10_000)
                records += sum(len(msgs) for msgs in batches.values())
        seconds = time.perf_counter() - started
        return {"records": records, "seconds": round(seconds, 3)}
    finally:
        with anyio.CancelScope(shield=True):
            await consumer.stop()


async def tail_fetch_ms(
    settings: KafkaSettings, tp: TopicPartition, end: int, count: int
) -> dict[str, float]:
    """Fetch the last record of `tp` (offset `end` - 1) `count` times, each in a request of
    its own: what answering a fetch with data costs the broker on a partition that long.
    (The embedded broker's cost grows with the partition's record batches, so every fetch
    the live system makes on its deep partitions pays it.)"""
    consumer = consumer_for(settings)
    await consumer.start()
    try:
        consumer.assign([tp])
        samples = []
        for _ in range(count):
            consumer.seek(tp, end - 1)
            started = time.perf_counter()
            with anyio.fail_after(60):
                while not await consumer.getmany(tp, timeout_ms=100, max_records=1):
                    pass
            samples.append((time.perf_counter() - started) * 1000)
        return percentiles(samples)
    finally:
        with anyio.CancelScope(shield=True):
            await consumer.stop()


async def fresh_partition(settings: KafkaSettings) -> TopicPartition:
    """A new one-partition topic holding one record."""
    tp = TopicPartition(f"bench-fresh-{uuid.uuid4().hex[:8]}", 0)
    async with KafkaTransport(settings) as transport:
        await transport.ensure_topics({tp.topic: 1})
    producer = producer_for(settings)
    await producer.start()
    try:
        await producer.send_and_wait(tp.topic, b"{}", partition=0)
    finally:
        with anyio.CancelScope(shield=True):
            await producer.stop()
    return tp


async def broker_at_depth(
    settings: KafkaSettings, depths: Depths, count: int
) -> dict[str, dict[str, float] | str | int]:
    """The fetch of a partition's last record on a fresh topic and on the app's deepest
    partition (on a fresh topic again while the app's topics are still empty)."""
    fresh = await tail_fetch_ms(settings, await fresh_partition(settings), 1, count)
    tp, records = depths.deepest, depths.deepest_records
    grown = (
        fresh if tp is None or records == 0 else await tail_fetch_ms(settings, tp, records, count)
    )
    return {
        "fresh_tail_fetch_ms": fresh,
        "grown_tail_fetch_ms": grown,
        "grown_partition": "" if tp is None else f"{tp.topic}[{tp.partition}]",
        "grown_depth": records,
    }


def cpu_ms_per_saga(
    used: dict[str, float], orchestrator: str, sagas: int
) -> dict[str, float | None]:
    """CPU milliseconds per saga ended in the window: the orchestrator's, the services'
    (together), the broker's and the load driver's."""
    services = [s for n, s in used.items() if n not in (orchestrator, "broker", "driver")]
    parts = {
        "orchestrator": used.get(orchestrator),
        "services": sum(services) if services else None,
        "broker": used.get("broker"),
        "driver": used.get("driver"),
    }
    return {
        k: None if v is None or not sagas else round(v * 1000 / sagas, 2) for k, v in parts.items()
    }


async def restart_orchestrator(
    rig: KafkaRig, name: str, env: dict[str, str]
) -> tuple[float, float]:
    """Stop the orchestrator (SIGTERM: it hands its partitions over with a snapshot) and
    start a new process: (seconds from the old one's exit to the new one's READY, seconds
    the old one took to stop)."""
    processes = rig.processes
    stopping = time.monotonic()
    processes.signal(name, signal.SIGTERM)
    await processes.wait_exit(name, timeout=120)
    stopped = time.monotonic()
    await processes.start(name, env=env, wait_ready=600)
    return time.monotonic() - stopped, stopped - stopping


async def measure_level(
    rig: KafkaRig,
    settings: KafkaSettings,
    app: App,
    namespace: str,
    plan: GrowthPlan,
    env: dict[str, str],
    level: int,
    progress: ProgressFn | None,
) -> dict[str, Any]:
    def say(what: str, done: float = 0, total: float = 1) -> None:
        if progress:
            progress(f"{level:,} sagas of history: {what}", done, total)

    name = rig.processes.orchestrators[0]
    fill_rate = None
    if level > len(rig.placed):
        fill_rate = await fill(rig, level, plan.fill_concurrency, plan.stall_s, progress)
    # nothing in flight, and the ended sagas past the dedupe window: what is left in memory
    # is what the live sagas (none) and the framework cost
    say("waiting out the dedupe window")
    await anyio.sleep(plan.dedupe_window_s + 1 if level else 0)
    rss_before = rss_mb(rig.processes.members[name].pid)

    placed = len(rig.placed)
    say("broker figures")
    topics = app.topics(namespace)
    depths = await partition_depths(settings, topics)
    journal = namespace + app.sagas[0].journal_topic
    full_read = await read_whole(settings, journal, plan.partitions)
    fresh = await measure_baseline(
        settings,
        partitions=plan.partitions,
        messages=plan.baseline_messages,
        round_trip_count=plan.baseline_round_trips,
    )
    at_depth = await broker_at_depth(settings, depths, plan.baseline_round_trips)

    restores, stops = [], []
    for i in range(plan.restarts):
        say(f"restart {i + 1} of {plan.restarts}", i, plan.restarts)
        restore_s, stop_s = await restart_orchestrator(rig, name, env)
        restores.append(round(restore_s, 3))
        stops.append(round(stop_s, 3))
    pid = rig.processes.members[name].pid
    rss_after = rss_mb(pid)
    metrics = await anyio.to_thread.run_sync(scrape, rig.processes.http_ports[name])

    window = await closed_loop(
        rig,
        plan.concurrency,
        warmup_s=plan.warmup_s,
        duration_s=plan.duration_s,
        progress=lambda what, done, total: say(what, done, total),
    )
    completed = sum(
        1 for _, e in rig.rows() if e is not None and window.start_ms <= e < window.end_ms
    )
    cpu = cpu_ms_per_saga(window.cpu_used(), name, completed)
    return {
        "history_sagas": level,
        # every saga placed before this level's restarts, measurement windows included
        "placed_sagas": placed,
        "history_records": depths.by_topic,
        "fill_sagas_per_s": fill_rate,
        "restore_s": min(restores),
        "restore_s_all": restores,
        "stop_s_all": stops,
        "rss_mb_before_restart": rss_before,
        "rss_mb_after_restore": rss_after,
        "held_instances": metrics.get("sagakit_sagas_held.instances"),
        "held_ended": metrics.get("sagakit_sagas_held.ended"),
        "restore_records_read": metrics.get("sagakit_partition_restore_records_total"),
        "partition_restore_s_sum": round(
            metrics.get("sagakit_partition_restore_seconds_sum", 0.0), 3
        ),
        "sagas_per_s": round(completed / window.seconds, 1) if window.seconds > 0 else 0.0,
        "unfinished": window.left_pending,
        "cpu_ms_per_saga": cpu,
        "broker": {
            "fresh_round_trip_ms": fresh.round_trip_ms,
            "fresh_produce_msgs_per_s": fresh.produce_msgs_per_s,
            "fresh_consume_msgs_per_s": fresh.consume_msgs_per_s,
            **at_depth,
            "journal_full_read": full_read,
        },
    }


def compare(levels: list[dict[str, Any]]) -> None:
    """Each level's figures over the zero-history level's, and the targets met."""
    base = levels[0]
    for level in levels:
        ratios: dict[str, float | None] = {}

        def ratio(a: float | None, b: float | None) -> float | None:
            return round(a / b, 3) if a is not None and b else None

        ratios["restore"] = ratio(level["restore_s"], base["restore_s"])
        ratios["throughput"] = ratio(level["sagas_per_s"], base["sagas_per_s"])
        broker, base_broker = level["broker"], base["broker"]
        ratios["broker_fresh_round_trip_p50"] = ratio(
            broker["fresh_round_trip_ms"]["p50"], base_broker["fresh_round_trip_ms"]["p50"]
        )
        ratios["broker_grown_tail_fetch_p50"] = ratio(
            broker["grown_tail_fetch_ms"]["p50"], base_broker["grown_tail_fetch_ms"]["p50"]
        )
        before, after = base["rss_mb_after_restore"], level["rss_mb_after_restore"]
        growth = None if before is None or after is None else round(after - before, 1)
        level["rss_growth_mb"] = growth
        level["ratios"] = ratios
        level["targets"] = {
            "restore": ratios["restore"] is not None and ratios["restore"] <= RESTORE_RATIO_MAX,
            "rss": growth is not None and growth <= RSS_GROWTH_MAX_MB,
            "throughput": ratios["throughput"] is not None
            and ratios["throughput"] >= THROUGHPUT_RATIO_MIN,
        }


async def run_growth(
    plan: GrowthPlan, target: Target, progress: ProgressFn | None = None
) -> dict[str, Any]:
    """Measure every level of `plan.history` (ascending; 0 first, added if missing)."""
    levels_wanted = sorted({0, *plan.history})
    scenario = target.scenario
    app = app_of(scenario, "orchestration")
    if not app.sagas:
        raise SagaError(f"{type(scenario).__name__}'s app has no saga: nothing to restore")
    namespace = f"growth-{uuid.uuid4().hex[:8]}."
    env = plan.component_env()
    setup = RigSetup(
        partitions=plan.partitions,
        namespace=namespace,
        profile="embedded" if plan.bootstrap is None else "kafka",
        env=env,
    )
    started = time.time()
    async with (
        broker_for(Plan(bootstrap=plan.bootstrap)) as (settings, broker_pid),
        kafka_rig(
            scenario,
            target.app_specs["orchestration"],
            setup,
            settings,
            app_dir=target.app_dir,
            broker_pid=broker_pid,
            progress=progress,
        ) as rig,
    ):
        levels = []
        for level in levels_wanted:
            levels.append(
                await measure_level(rig, settings, app, namespace, plan, env, level, progress)
            )
            levels[-1]["broker"]["rss_mb"] = rss_mb(broker_pid)
    compare(levels)
    return {
        "config": {
            "scenario": type(scenario).__name__,
            "app": target.app_specs["orchestration"],
            **asdict(plan),
            "history": levels_wanted,
        },
        "environment": {"revision": git_revision(), "started_at": started},
        "targets": {
            "restore_ratio_max": RESTORE_RATIO_MAX,
            "rss_growth_max_mb": RSS_GROWTH_MAX_MB,
            "throughput_ratio_min": THROUGHPUT_RATIO_MIN,
        },
        "levels": levels,
    }

"""SIGKILL a participant on PostgreSQL between committing its effects and sending their
replies, then restart it: every saga ends, and each effect was applied exactly once."""

from __future__ import annotations

import signal
from pathlib import Path

import anyio
import asyncpg
import pytest

from sagakit import KafkaTransport, SagaClient, SagaStatus
from sagakit._chaos import dead_letters, journal_instances
from sagakit._processes import ProcessSystem
from sagakit.broker import EmbeddedBroker
from tests.apps.pg_app import TopUp, app, topup

pytestmark = [pytest.mark.anyio, pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SAGAS = 30


async def statuses(transport: KafkaTransport, namespace: str) -> dict[str, SagaStatus]:
    instances, anomalies = await journal_instances(transport, app, namespace)
    assert anomalies == []
    return {saga_id: instance.status for saga_id, instance in instances.items()}


async def test_a_participant_killed_after_its_postgres_commit_applies_each_effect_once(
    kafka_broker: EmbeddedBroker,
    kafka_transport: KafkaTransport,
    unique: str,
    tmp_path: Path,
    postgres_dsn: str,
) -> None:
    ns = f"{unique}."
    await app.runner(kafka_transport, namespace=ns).ensure_topics()
    top_ups = {
        f"topup-{i}": TopUp(account=f"account-{i}", amount=100 + i, bonus=7) for i in range(SAGAS)
    }
    async with ProcessSystem(
        app,
        "tests.apps.pg_app:app",
        kafka_broker.bootstrap_servers,
        tmp_path,
        app_dir=ROOT,
        namespace=ns,
        orchestrators=1,
        env={"SAGAKIT_POSTGRES_DSN": postgres_dsn},
    ) as processes:
        await processes.start("orchestrator-1")
        await processes.start("wallet", env={"SAGAKIT_CRASH_AT": "participant.before-reply@2"})
        await SagaClient(kafka_transport, namespace=ns).start_many(topup, top_ups.items())

        assert await processes.wait_exit("wallet", timeout=30) == -signal.SIGKILL
        ended = await statuses(kafka_transport, ns)
        assert len(ended) == SAGAS
        assert any(s is not SagaStatus.COMPLETED for s in ended.values()), (
            "every saga ended before the crash; the test proves nothing"
        )
        db = await asyncpg.connect(postgres_dsn)
        try:
            # the second batch committed its effects, and its replies were never sent
            assert await db.fetchval("SELECT count(*) FROM effects") > sum(
                2 if s is SagaStatus.COMPLETED else 0 for s in ended.values()
            )

            await processes.start("wallet")
            with anyio.fail_after(30):
                done = {SagaStatus.COMPLETED}
                while set((await statuses(kafka_transport, ns)).values()) != done:  # noqa: ASYNC110 - another process's journal
                    await anyio.sleep(0.5)

            runs = await db.fetch(
                "SELECT saga_id, step, count(*) AS n FROM effects GROUP BY saga_id, step"
            )
            assert {(r["saga_id"], r["step"]): r["n"] for r in runs} == {
                (saga_id, step): 1 for saga_id in top_ups for step in ("credit", "bonus")
            }
            rows = await db.fetch("SELECT account, cents FROM balances")
            balances = {r["account"]: r["cents"] for r in rows}
            assert balances == {t.account: t.amount + t.bonus for t in top_ups.values()}
            assert await db.fetchval("SELECT count(*) FROM sagakit_replies") == 2 * SAGAS
        finally:
            await db.close()
    assert await dead_letters(kafka_transport, ns) == ({}, [])
    assert [(c.name, c.returncode) for c in processes.crashes] == [("wallet", -signal.SIGKILL)]

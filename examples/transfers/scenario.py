"""What `sagakit demo|chaos|bench transfers.scenario:scenario` drives: seeded transfers
between a few accounts, some too large for the source's balance or for fraud screening;
afterwards no money may have appeared or vanished."""

from __future__ import annotations

import random
from collections.abc import Sequence

from sagakit import SagaStatus, Scenario, Start, World

from .app import app
from .saga import Transfer

ACCOUNTS = [f"acct-{i}" for i in range(10)]
OPENING_BALANCE = 5_000


class Transfers(Scenario):
    app = app

    def starts(self, count: int, *, seed: int, run: str, first: int = 0) -> list[Start]:
        rng = random.Random(seed + first)
        starts = []
        for i in range(first, first + count):
            source, target = rng.sample(ACCOUNTS, 2)
            # mostly small; some over the fraud limit, some larger than any balance
            amount = rng.choice([rng.randint(1, 300)] * 8 + [950, 20_000])
            transfer_id = f"{run}-t{i:06d}"
            starts.append(
                Start(
                    transfer_id,
                    Transfer(
                        transfer_id=transfer_id,
                        source=f"{run}-{source}",
                        target=f"{run}-{target}",
                        amount=amount,
                    ),
                )
            )
        return starts

    def prepare(self, world: World, starts: Sequence[Start]) -> None:
        db = world.app.service("ledger").store.connection  # type: ignore[attr-defined]
        for account in ACCOUNTS:
            db.execute(
                "INSERT OR IGNORE INTO accounts (id, balance) VALUES (?, ?)",
                (f"{world.run}-{account}", OPENING_BALANCE),
            )

    def check(self, world: World, starts: Sequence[Start]) -> list[str]:
        ledger = world.app.service("ledger").store.connection  # type: ignore[attr-defined]
        notices = world.app.service("notifier").store.connection  # type: ignore[attr-defined]
        violations = []
        accounts = dict(
            ledger.execute("SELECT id, balance FROM accounts WHERE id LIKE ?", (f"{world.run}-%",))
        )
        total = sum(accounts.values())
        if total != OPENING_BALANCE * len(ACCOUNTS):
            violations.append(f"money appeared or vanished: {total} in all")
        violations.extend(f"account {a} is overdrawn: {b}" for a, b in accounts.items() if b < 0)
        moved: dict[str, dict[str, int]] = {}
        for transfer_id, kind, amount in ledger.execute(
            "SELECT transfer_id, kind, amount FROM movements WHERE transfer_id LIKE ?",
            (f"{world.run}-%",),
        ):
            moved.setdefault(transfer_id, {})[kind] = amount
        notified = {t for (t,) in notices.execute("SELECT transfer_id FROM notices")}
        for s in starts:
            instance = world.instances.get(s.saga_id)
            m = moved.get(s.saga_id, {})
            if instance is None:
                violations.append(f"transfer {s.saga_id}: no journal record")
            elif instance.status is SagaStatus.COMPLETED:
                if set(m) != {"debit", "deposit"} or s.saga_id not in notified:
                    violations.append(f"transfer {s.saga_id} completed with {m}")
            elif instance.status is SagaStatus.COMPENSATED and (
                "deposit" in m or sum(m.values()) != 0
            ):
                violations.append(f"transfer {s.saga_id} compensated with {m}")
        return violations


scenario = Transfers()

"""PostgresStore without a server: what it says when it cannot work, and the check that
its handlers are coroutines. (Its contract runs in tests/contract/test_stores.py.)"""

from __future__ import annotations

import subprocess
import sys

import pytest

from sagakit import DefinitionError, PostgresStore, SagaError, SqliteStore
from sagakit._idempotency import check_handler
from sagakit.broker import free_port

pytestmark = pytest.mark.anyio


def test_sagakit_imports_without_the_driver_and_the_store_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['asyncpg'] = None\n"
        "import sagakit\n"
        "try:\n"
        "    sagakit.PostgresStore('postgresql://db/x')\n"
        "except sagakit.DefinitionError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'sagakit[postgres]'" in out.stdout


def test_the_dsn_comes_from_the_environment_when_not_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SAGAKIT_POSTGRES_DSN", "postgresql://app:s3cret@db:5432/wallet")
    store = PostgresStore()
    assert store.dsn == "postgresql://app:s3cret@db:5432/wallet"
    assert "s3cret" not in repr(store)
    assert PostgresStore("postgresql://other/x").dsn == "postgresql://other/x"


async def test_without_a_dsn_the_first_transaction_says_how_to_give_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SAGAKIT_POSTGRES_DSN", raising=False)
    with pytest.raises(SagaError, match="SAGAKIT_POSTGRES_DSN"):
        async with PostgresStore().transaction():
            pass


async def test_a_server_that_cannot_be_reached_is_a_saga_error_without_the_password() -> None:
    dsn = f"postgresql://app:s3cret@127.0.0.1:{free_port()}/wallet"
    with pytest.raises(SagaError, match="cannot connect") as caught:
        async with PostgresStore(dsn).transaction():
            pass
    assert "s3cret" not in str(caught.value)
    assert "app:***@127.0.0.1" in str(caught.value)


@pytest.mark.parametrize("table", ["replies; DROP TABLE x", "1replies", "a.b.c", ""])
def test_the_table_must_be_a_plain_name(table: str) -> None:
    with pytest.raises(DefinitionError, match="plain SQL name"):
        PostgresStore("postgresql://db/x", table=table)


def test_pool_sizes_are_checked() -> None:
    with pytest.raises(DefinitionError, match="min_size"):
        PostgresStore("postgresql://db/x", min_size=5, max_size=2)


def test_handlers_of_a_postgres_service_must_be_coroutines() -> None:
    def plain(cmd: object, ctx: object) -> None: ...

    async def coroutine(cmd: object, ctx: object) -> None: ...

    store = PostgresStore("postgresql://db/x")
    with pytest.raises(DefinitionError, match=r"plain function.*async def"):
        check_handler(store, plain, "handler of wallet.Credit in service 'wallet'")
    check_handler(store, coroutine, "handler of wallet.Credit in service 'wallet'")
    check_handler(SqliteStore(), plain, "handler of wallet.Credit in service 'wallet'")

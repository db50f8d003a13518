"""Who may do what in the console: every action (resume, resolve, signal, cancel, DLQ
replay) by every role, over HTTP. An action without the role, without a sign-in or
without the form's CSRF token is refused and writes nothing; an allowed one sends one
request to the saga's inbox that names who asked and why."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from sagakit import App, MemoryBroker, MemoryTransport, SagaStatus, Transition
from sagakit._console import Auth, Console, ConsoleSettings, Role
from sagakit._console._auth import Token
from sagakit._dlq import dead_letter
from sagakit._http import HttpEndpoints
from sagakit._journal import claim_entry, transition_entry
from sagakit._readstore import SqliteReadStore
from sagakit.transport._base import OutgoingRecord, Record

from .test_parallel_and_switch import DONE, Run
from .test_read_model import record
from .test_waits_and_cancel import approval

pytestmark = pytest.mark.anyio

SAGA = approval()
INBOX = SAGA.inbox_topic
TRACEPARENT = f"00-{'ab' * 16}-{'cd' * 8}-01"
TOKENS = {role: f"{role.name}-token-0123456789" for role in Role}


def renamed(records: list[Transition], saga_id: str, **last: object) -> list[Transition]:
    out = [dataclasses.replace(t, saga_id=saga_id) for t in records]
    if last:
        out.append(dataclasses.replace(out[-1], seq=out[-1].seq + 1, **last))  # type: ignore[arg-type]
    return out


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[tuple[str, MemoryBroker]]:
    run = Run(SAGA)
    run.start()
    started = list(run.records)
    run.answer("a", DONE["a"]())
    waiting = list(run.records)
    traced = [dataclasses.replace(t, trace=TRACEPARENT) for t in started]
    journal = [
        *renamed(traced, "running"),
        *renamed(waiting, "waiting"),
        *renamed(waiting, "parked", status=SagaStatus.FAILED_NEEDS_ATTENTION, failure="stuck"),
    ]
    entries = [claim_entry(1), *(transition_entry(t, 1) for t in journal)]
    store = SqliteReadStore(tmp_path / "rm.db")
    records = [
        dataclasses.replace(record(i, e), topic=SAGA.journal_topic) for i, e in enumerate(entries)
    ]
    broker = MemoryBroker()
    transport = MemoryTransport(broker)
    await transport.ensure_topics({INBOX: 1, f"{INBOX}.dlq": 1, SAGA.journal_topic: 1})
    original = Record(INBOX, 0, 5, b"waiting", b"{}", (("message-id", b"m-1"),), 1)
    letter: OutgoingRecord = dead_letter(original, "DecodeError", "bad", consumer="orchestrator")
    await transport.send([letter])
    await store.project([*records, *broker.records(f"{INBOX}.dlq")])
    auth = Auth(tokens=[Token(r.name, r, TOKENS[r]) for r in Role])
    app = App("console-auth", sagas=[SAGA])
    c = Console(
        app,
        transport,
        store,
        ConsoleSettings(auth=auth, jaeger_url="http://jaeger.example:16686/"),
        namespace="",
    )
    http = HttpEndpoints(port=0, host="127.0.0.1", ready=lambda: True, routes=c.routes())
    import anyio

    async with anyio.create_task_group() as tg:
        await tg.start(http.run)
        yield f"http://127.0.0.1:{http.bound_port}", broker
        tg.cancel_scope.cancel()
    await store.close()


async def csrf_of(http: aiohttp.ClientSession, base: str, token: str, path: str) -> str:
    async with http.get(base + path, headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 200
        found = re.search(r'name="csrf-token" content="([0-9a-f]+)"', await r.text())
    return found.group(1) if found else ""


ACTIONS = {
    "resume": ("/sagas/wtest-approval/parked/resume", {"note": "fixed the stock"}),
    "resolve": ("/sagas/wtest-approval/parked/resolve", {"note": "refunded by hand"}),
    "signal": (
        "/sagas/wtest-approval/waiting/signal",
        {"type": "wtest.Approved", "data": '{"manager": "m"}', "note": "budget ok"},
    ),
    "cancel": ("/sagas/wtest-approval/running/cancel", {"note": "customer called"}),
    "dlq-replay": ("/dlq/replay", {"topic": f"{INBOX}.dlq", "message_id": "m-1", "note": "ok"}),
}
ALLOWED = {
    Role.viewer: set(),
    Role.operator: {"resume", "resolve", "signal", "cancel"},
    Role.admin: set(ACTIONS),
}


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.name)
@pytest.mark.parametrize("action", list(ACTIONS))
async def test_each_action_needs_its_role_and_writes_nothing_without_it(
    console: tuple[str, MemoryBroker], role: Role, action: str
) -> None:
    base, broker = console
    path, form = ACTIONS[action]
    async with aiohttp.ClientSession() as http:
        page = "/dlq" if action == "dlq-replay" else path.rsplit("/", 1)[0]
        csrf = await csrf_of(http, base, TOKENS[Role.admin], page)
        # the CSRF token is bound to the person: each gets theirs from a page they can see
        mine = await csrf_of(http, base, TOKENS[role], "/audit")
        assert (mine and mine != csrf) or role is Role.admin
        async with http.post(
            base + path,
            data={**form, "csrf": mine},
            headers={"Authorization": f"Bearer {TOKENS[role]}"},
            allow_redirects=False,
        ) as r:
            status, body = r.status, await r.text()
    sent = broker.records(INBOX)
    if action in ALLOWED[role]:
        assert status == 303, body
        (request,) = sent
        headers = dict(request.headers)
        if action != "dlq-replay":
            assert headers["operator"] == role.name.encode()
            assert headers["saga-id"] == path.split("/")[3].encode()
        else:  # the letter is marked, and the page says by whom
            async with (
                aiohttp.ClientSession() as http,
                http.get(base + "/dlq", headers={"Authorization": f"Bearer {TOKENS[role]}"}) as r,
            ):
                assert "replayed by admin" in await r.text()
    else:
        assert status == 403, body
        assert f"{role.name}" in body and "role" in body
        assert sent == []


@pytest.mark.parametrize("action", list(ACTIONS))
async def test_without_a_sign_in_or_the_forms_csrf_token_nothing_is_written(
    console: tuple[str, MemoryBroker], action: str
) -> None:
    base, broker = console
    path, form = ACTIONS[action]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.post(base + path, data=form, allow_redirects=False) as r:
            assert r.status == 401
        # signed in by the cookie (a browser would send it with a forged form too)
        async with http.post(
            base + "/login", data={"token": TOKENS[Role.admin]}, allow_redirects=False
        ) as r:
            assert r.status == 303
        async with http.post(
            base + path, data={**form, "csrf": "0" * 64}, allow_redirects=False
        ) as r:
            assert r.status == 403 and "CSRF" in await r.text()
        async with http.post(base + path, data=form, allow_redirects=False) as r:
            assert r.status == 403
    assert broker.records(INBOX) == []


async def test_a_script_with_a_bearer_token_needs_no_csrf_token(
    console: tuple[str, MemoryBroker],
) -> None:
    base, broker = console
    path, form = ACTIONS["resume"]
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            base + path,
            data=form,
            headers={"Authorization": f"Bearer {TOKENS[Role.operator]}"},
            allow_redirects=False,
        ) as r,
    ):
        assert r.status == 303
    (request,) = broker.records(INBOX)
    assert dict(request.headers)["operator"] == b"operator"


async def test_pages_send_a_stranger_to_sign_in_and_a_token_signs_in(
    console: tuple[str, MemoryBroker],
) -> None:
    base, _ = console
    # a cookie jar that keeps cookies of an IP address, as browsers do
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(base + "/?status=RUNNING", allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"].startswith("/login?next=")
        async with http.post(
            base + "/login", data={"token": "wrong-token-000000", "next": "/"}
        ) as r:
            assert r.status == 401
        async with http.post(
            base + "/login",
            data={"token": TOKENS[Role.viewer], "next": "//evil.example/"},
            allow_redirects=False,
        ) as r:
            assert r.status == 303 and r.headers["Location"] == "/"
            cookie = r.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        async with http.get(base + "/?status=FAILED_NEEDS_ATTENTION") as r:
            text = await r.text()
        assert r.status == 200 and "viewer (viewer)" in text
        assert re.findall(r'href="/sagas/wtest-approval/([^"]+)"', text) == ["parked"]
        assert "Content-Security-Policy" in r.headers


async def test_a_trusted_proxys_user_header_counts_only_from_the_proxy(tmp_path: Path) -> None:
    from aiohttp.test_utils import make_mocked_request

    auth = Auth(
        proxy_user_header="X-Forwarded-User",
        proxy_groups_header="X-Forwarded-Groups",
        proxy_roles={"sre": Role.admin},
        trusted_proxies=["10.0.0.0/8"],
    )

    def who(peer: str, **headers: str) -> object:
        request = make_mocked_request("GET", "/", headers=headers)
        request._transport_peername = (peer, 1234)  # type: ignore[attr-defined]
        return auth.identify(request.clone(remote=peer))

    found = who("10.1.2.3", **{"X-Forwarded-User": "ada", "X-Forwarded-Groups": "dev, sre"})
    assert found is not None and (found.name, found.role) == ("ada", Role.admin)  # type: ignore[attr-defined]
    assert (
        who("10.1.2.3", **{"X-Forwarded-User": "bob", "X-Forwarded-Groups": "operator"}).role
        is Role.operator
    )  # type: ignore[attr-defined]
    assert who("10.1.2.3", **{"X-Forwarded-User": "eve", "X-Forwarded-Groups": "dev"}) is None
    assert who("192.168.1.9", **{"X-Forwarded-User": "ada", "X-Forwarded-Groups": "sre"}) is None


async def test_a_saga_page_links_its_trace_in_jaeger(console: tuple[str, MemoryBroker]) -> None:
    base, _ = console
    headers = {"Authorization": f"Bearer {TOKENS[Role.viewer]}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/sagas/wtest-approval/running", headers=headers) as r:
            page = await r.text()
        async with http.get(base + "/api/sagas/wtest-approval/running", headers=headers) as r:
            saga = await r.json()
        async with http.get(base + "/api/counts", headers=headers) as r:
            counts = await r.json()
    assert f'href="http://jaeger.example:16686/trace/{"ab" * 16}"' in page
    assert saga["trace_id"] == "ab" * 16 and [t["seq"] for t in saga["timeline"]] == [1]
    # what the alert rules watch, from the read model
    assert counts["by_type"] == {"wtest-approval": {"RUNNING": 2, "FAILED_NEEDS_ATTENTION": 1}}
    assert counts["alerts"]["parked"] == 1 and counts["alerts"]["dead_letters"] == 1

"""The console in a real browser (the system's headless Chromium, driven by Playwright),
on a running sample system: an operator declines an order while inventory is down, so its
undo gives up and it is parked; a viewer filters to the parked sagas, opens one, and is
refused an approval; the operator approves the saga waiting for a manager with a note and
sees it complete, with who approved it in its timeline, then resumes the parked one once
inventory is back. Screenshots of the list and of the saga page are kept in
test-artifacts/ (the README shows them)."""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict
from pathlib import Path

import aiohttp
import anyio
import pytest

from sagakit import KafkaTransport
from sagakit.broker import EmbeddedBroker
from services.app import app
from services.orders.api import ORDERS_PATH
from services.system import DEMO_RUN, make_orders

from ._processes import ROOT, sample_processes

pytestmark = [pytest.mark.anyio, pytest.mark.kafka, pytest.mark.slow]

CHROMIUM = os.environ.get("SAGAKIT_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("SAGAKIT_TEST_ARTIFACTS", ROOT / "test-artifacts"))
VIEWER = "viewer-token-for-the-browser-test"
OPERATOR = "operator-token-for-the-browser-test"
# Chromium as root in a closed network: no sandbox, no background connections
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def chromium() -> str:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"no Chromium at {CHROMIUM}: `make test` installs Debian's chromium")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return CHROMIUM


async def test_operators_approve_a_waiting_saga_in_the_console_and_viewers_cannot(
    kafka_broker: EmbeddedBroker,
    kafka_transport: KafkaTransport,
    unique: str,
    tmp_path: Path,
    chromium: str,
) -> None:
    from playwright.async_api import async_playwright, expect

    ns = f"{unique}."
    await app.runner(kafka_transport, namespace=ns).ensure_topics()
    env = {
        "PLACE_ORDER_DEMO_DATA": "1",
        "PLACE_ORDER_AUTO_APPROVE": "0",  # a person approves large orders
        "PLACE_ORDER_UNDO_TIMEOUT_S": "0.5",  # an undo nobody answers parks in seconds
        "SAGAKIT_CONSOLE_TOKENS": f"vera:viewer:{VIEWER};otto:operator:{OPERATOR}",
        "SAGAKIT_READ_MODEL": f"sqlite:///{tmp_path / 'console.db'}",
    }
    orders = make_orders(6, seed=5, run=DEMO_RUN)
    big = asdict(orders[-1]) | {"order_id": "demo-big-order", "amount": 90_000}
    stuck = asdict(orders[-1]) | {"order_id": "demo-stuck-order", "amount": 80_000}
    async with (
        sample_processes(
            kafka_broker.bootstrap_servers,
            tmp_path,
            namespace=ns,
            orchestrators=1,
            env=env,
            console=True,
        ) as processes,
        aiohttp.ClientSession() as http,
        async_playwright() as pw,
    ):
        async with anyio.create_task_group() as tg:  # the console starts beside the others
            tg.start_soon(processes.start, "console")
            await processes.start_all()
        orders_url = f"http://127.0.0.1:{processes.http_ports['orders']}{ORDERS_PATH}"
        body = {"orders": [*(asdict(o) for o in orders), big, stuck]}
        async with http.post(orders_url, json=body) as r:
            assert r.status == 202
        console = f"http://127.0.0.1:{processes.http_ports['console']}"
        auth = {"Authorization": f"Bearer {VIEWER}"}
        with anyio.fail_after(60):  # every order has reached its end or the approval
            while True:
                async with http.get(f"{console}/api/sagas?id=demo-", headers=auth) as r:
                    sagas = (await r.json())["sagas"]
                waits = [s for s in sagas if s["waits"]]
                if len(sagas) == 8 and all(s["ended"] or s["waits"] for s in sagas) and waits:
                    break
                await anyio.sleep(0.3)
        assert sorted(s["saga_id"] for s in waits) == ["demo-big-order", "demo-stuck-order"]
        compensated = sorted(s["saga_id"] for s in sagas if s["status"] == "COMPENSATED")
        assert len(compensated) == 3  # the credit, stock and shipping failures

        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        viewport = {"width": 1400, "height": 900}

        # inventory goes down; an operator declines an order: its stock is never released
        await processes.kill("inventory")
        operator = await browser.new_page(viewport=viewport)
        await operator.goto(f"{console}/login?token={OPERATOR}")
        await operator.goto(f"{console}/sagas/place-order/demo-stuck-order")
        decline = operator.locator("form.decline")
        await decline.locator("input[name=data]").fill('{"reason": "over budget"}')
        await decline.locator("input[name=note]").fill("the customer asked")
        await decline.locator("button").click()
        await expect(operator.get_by_test_id("saga-status")).to_have_text(
            "FAILED_NEEDS_ATTENTION", timeout=30_000
        )

        # a viewer: filters, sees, and may not approve
        viewer = await browser.new_page(viewport=viewport)
        await viewer.goto(f"{console}/")
        await viewer.fill("input[name=token]", VIEWER)
        await viewer.click("button[type=submit]")
        await expect(viewer.get_by_test_id("who")).to_have_text("vera (viewer)")
        await viewer.select_option("[data-testid=status-filter]", "FAILED_NEEDS_ATTENTION")
        await viewer.click("form.filters button[type=submit]")
        await expect(viewer.get_by_test_id("total")).to_have_text("1 saga(s)")
        await viewer.click("text=demo-stuck-order")
        await expect(viewer.locator(".facts")).to_contain_text(
            "compensation of reserve-stock (inventory.ReleaseStock) attempt 3 got no reply"
        )
        assert await viewer.locator("form.action").count() == 0  # no buttons for a viewer
        await viewer.go_back()
        await viewer.select_option("[data-testid=status-filter]", "COMPENSATED")
        await viewer.click("form.filters button[type=submit]")
        await expect(viewer.get_by_test_id("total")).to_have_text("3 saga(s)")
        listed = await viewer.locator("table.sagas tbody td:first-child a").all_inner_texts()
        assert sorted(listed) == compensated
        await viewer.goto(f"{console}/sagas/place-order/demo-big-order")
        assert await viewer.locator("form.action").count() == 0  # no buttons for a viewer
        csrf = await viewer.locator("meta[name=csrf-token]").get_attribute("content")
        refused = await viewer.request.post(
            f"{console}/sagas/place-order/demo-big-order/signal",
            form={
                "csrf": csrf or "",
                "type": "orders.ManagerApproved",
                "data": '{"approver": "vera"}',
                "note": "looks fine",
            },
        )
        assert refused.status == 403 and "takes the operator role" in await refused.text()

        # the operator approves the big order, and watches it complete
        await operator.goto(f"{console}/?type=place-order")
        await expect(operator.get_by_test_id("total")).to_have_text("8 saga(s)")
        await operator.screenshot(path=str(ARTIFACTS / "console-list.png"), full_page=True)
        await operator.click("text=demo-big-order")
        await expect(operator.get_by_test_id("saga-status")).to_have_text("RUNNING")
        await expect(operator.locator("pre.mermaid svg")).to_be_visible(timeout=20_000)
        await operator.screenshot(path=str(ARTIFACTS / "console-saga.png"), full_page=True)
        approve = operator.locator("form.approve")
        await approve.locator("input[name=data]").fill('{"approver": "otto"}')
        await approve.locator("input[name=note]").fill("within budget")
        await approve.locator("button").click()
        await expect(operator.get_by_test_id("sent")).to_be_visible()
        await expect(operator.get_by_test_id("saga-status")).to_have_text(
            "COMPLETED", timeout=30_000
        )
        signalled = operator.locator("tr.event-signalled")
        await expect(signalled).to_contain_text("otto")
        await expect(signalled).to_contain_text("within budget")
        await operator.screenshot(
            path=str(ARTIFACTS / "console-saga-completed.png"), full_page=True
        )

        # inventory is back: the operator resumes the parked saga, which finishes its undo
        await processes.start("inventory")
        await operator.goto(f"{console}/sagas/place-order/demo-stuck-order")
        resume = operator.locator("form.action", has=operator.get_by_test_id("resume"))
        await resume.locator("input[name=note]").fill("inventory is back")
        await operator.get_by_test_id("resume").click()
        await expect(operator.get_by_test_id("saga-status")).to_have_text(
            "COMPENSATED", timeout=30_000
        )
        await expect(operator.locator("tr.event-resumed")).to_contain_text("otto")
        await browser.close()

    # the viewer's refused approval wrote nothing: one signal, the operator's
    from sagakit._inspect import find_saga

    _, timeline = await find_saga(kafka_transport, "demo-big-order", ns, "place-order")
    assert [(t.event, t.actor) for t in timeline if t.actor] == [("signalled", "otto")]
    _, timeline = await find_saga(kafka_transport, "demo-stuck-order", ns, "place-order")
    acted = [(t.event, t.actor, t.note) for t in timeline if t.actor]
    assert acted == [
        ("signalled", "otto", "the customer asked"),
        ("resumed", "otto", "inventory is back"),
    ]

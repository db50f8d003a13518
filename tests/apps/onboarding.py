"""Onboarding an employee: a saga with a parallel group and a wait for a manager, and the
one service that does the work (in memory), for the integration tests of those nodes.

    create-account
    equipment: order-laptop  |  create-mailbox -> add-to-lists
    manager-approval (Approved goes on, Declined compensates; 60 s)
    welcome (the pivot)

``laptop="none"`` in the state makes order-laptop fail (no laptop in stock) while the
mailbox is still being created (it takes `MAILBOX_S`), so the failure meets a command in
flight. Every effect and undo is counted in `LEDGER`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import anyio
from pydantic import BaseModel

from sagakit import (
    App,
    BusinessFailure,
    Command,
    Event,
    HandlerContext,
    MemoryStore,
    Parallel,
    Reply,
    Saga,
    Service,
    Step,
    SubSaga,
    WaitFor,
)

MAILBOX_S = 0.5
LEDGER: Counter[str] = Counter()


class Hire(BaseModel):
    person: str
    laptop: str = "standard"
    approved_by: str = ""


class Done(Reply, type="it.Done"):
    what: str


class NoLaptop(Reply, type="it.NoLaptop"):
    pass


class CreateAccount(Command, type="it.CreateAccount", replies=(Done,)):
    person: str


class DisableAccount(Command, type="it.DisableAccount", replies=(Done,)):
    person: str


class OrderLaptop(Command, type="it.OrderLaptop", replies=(Done, NoLaptop)):
    person: str
    laptop: str


class ReturnLaptop(Command, type="it.ReturnLaptop", replies=(Done,)):
    person: str
    laptop: str


class CreateMailbox(Command, type="it.CreateMailbox", replies=(Done,)):
    person: str


class DeleteMailbox(Command, type="it.DeleteMailbox", replies=(Done,)):
    person: str


class AddToLists(Command, type="it.AddToLists", replies=(Done,)):
    person: str


class RemoveFromLists(Command, type="it.RemoveFromLists", replies=(Done,)):
    person: str


class SendWelcome(Command, type="it.SendWelcome", replies=(Done,)):
    person: str


class PrintBadge(Command, type="it.PrintBadge", replies=(Done,)):
    person: str


class ShredBadge(Command, type="it.ShredBadge", replies=(Done,)):
    person: str


class Approved(Event, type="hr.Approved"):
    manager: str


class Declined(Event, type="hr.Declined"):
    why: str = ""


def _approve(state: Hire, e: Approved) -> Hire:
    return state.model_copy(update={"approved_by": e.manager})


def _step(name: str, do: type[Command], undo: type[Command] | None, **more: object) -> Step[Hire]:
    return Step(name, invoke=do, on_reply={Done: None}, compensate=undo, **more)  # type: ignore[arg-type]


onboard = Saga(
    "onboard",
    state=Hire,
    steps=[
        _step("create-account", CreateAccount, DisableAccount),
        Parallel(
            "equipment",
            _step("order-laptop", OrderLaptop, ReturnLaptop, failures=[NoLaptop]),
            [
                _step("create-mailbox", CreateMailbox, DeleteMailbox),
                _step("add-to-lists", AddToLists, RemoveFromLists),
            ],
        ),
        WaitFor(
            "manager-approval",
            event=Approved,
            failures=[Declined],
            timeout_s=60,
            on_event=_approve,
        ),
        Step("welcome", invoke=SendWelcome, on_reply={Done: None}, pivot=True),
    ],
)

#: a child saga: the badge, printed (and shredded if its parent is undone)
issue_badge = Saga("badge", state=Hire, steps=[_step("print-badge", PrintBadge, ShredBadge)])

#: a parent: an account, the badge saga, then a laptop (``laptop="none"`` fails it, after
#: the badge saga completed: the child is asked to compensate)
hire_with_badge = Saga(
    "hire-with-badge",
    state=Hire,
    steps=[
        _step("account", CreateAccount, DisableAccount),
        SubSaga("badge", saga=issue_badge, input=lambda s: s),
        _step("laptop", OrderLaptop, ReturnLaptop, failures=[NoLaptop]),
    ],
)

it = Service("it", MemoryStore())


#: what each command does (undoing is "<what>-undone"), counted in LEDGER per person
EFFECTS: dict[type[Command], str] = {
    CreateAccount: "account",
    DisableAccount: "account-undone",
    OrderLaptop: "laptop",
    ReturnLaptop: "laptop-undone",
    CreateMailbox: "mailbox",
    DeleteMailbox: "mailbox-undone",
    AddToLists: "lists",
    RemoveFromLists: "lists-undone",
    PrintBadge: "badge",
    ShredBadge: "badge-undone",
    SendWelcome: "welcome",
}


async def _handle(cmd: Any, ctx: HandlerContext[None]) -> Done:
    if isinstance(cmd, OrderLaptop) and cmd.laptop == "none":
        raise BusinessFailure(NoLaptop())
    if isinstance(cmd, CreateMailbox):
        await anyio.sleep(MAILBOX_S)  # slow: a failure elsewhere meets it in flight
    what = EFFECTS[type(cmd)]
    LEDGER[f"{what}:{cmd.person}"] += 1
    return Done(what=what)


for _command in EFFECTS:
    it.handles(_command)(_handle)


app = App("onboarding", sagas=[onboard, issue_badge, hire_with_badge], services=[it])

"""Who asked, in the journal: an operator request's `operator` (and `operator-note`) header
becomes the actor (and note) of the transition it causes, kept through the journal; the
header is input from outside, so only operator requests are attributed and an oversized
one is refused."""

from __future__ import annotations

import pytest

from sagakit import DecodeError, Envelope, Incoming, Message
from sagakit._messages import CancelSaga, Header

from .test_parallel_and_switch import DONE, SAGA_ID, Run
from .test_waits_and_cancel import Approved, approval


def operator_request(run: Run, message: Message, who: str, note: str | None = None) -> Incoming:
    run.clock += 10
    envelope = Envelope(
        message_id=f"op-{run.clock}",
        message_type=message.message_type,
        saga_id=SAGA_ID,
        correlation_id=SAGA_ID,
        causation_id=f"op-{run.clock}",
        operator=who,
        operator_note=note,
    )
    return Incoming(Envelope.from_headers(envelope.to_headers()), message, run.clock)


def test_a_signal_records_who_approved_and_why() -> None:
    run = Run(approval())
    run.start()
    run.answer("a", DONE["a"]())
    d = run.feed(operator_request(run, Approved(manager="m"), "alice@ops", "budget ok"))
    (t,) = d.records
    assert (t.event, t.actor, t.note) == ("signalled", "alice@ops", "budget ok")
    assert run.records[-1].actor == "alice@ops"  # survived encode and decode


def test_a_cancel_records_who_cancelled() -> None:
    run = Run(approval())
    run.start()
    d = run.feed(operator_request(run, CancelSaga(reason="customer called"), "bob"))
    assert [(t.event, t.actor, t.note) for t in d.records] == [
        ("cancelled", "bob", "cancelled: customer called")
    ]


def test_a_reply_carrying_an_operator_header_is_not_attributed() -> None:
    run = Run(approval())
    run.start()
    run.clock += 10
    cid = run.out("a").message_id
    envelope = Envelope(
        message_id=f"{cid}:reply",
        message_type=DONE["a"].message_type,
        saga_id=SAGA_ID,
        correlation_id=SAGA_ID,
        causation_id=cid,
        operator="mallory",
    )
    d = run.feed(Incoming(envelope, DONE["a"](), run.clock))
    assert d.records and all(t.actor is None for t in d.records)


@pytest.mark.parametrize(("name", "size"), [(Header.OPERATOR, 201), (Header.OPERATOR_NOTE, 2001)])
def test_an_oversized_operator_header_is_refused(name: str, size: int) -> None:
    headers = [
        (Header.MESSAGE_ID, b"m"),
        (Header.MESSAGE_TYPE, b"t"),
        (Header.SAGA_ID, b"s"),
        (name, b"x" * size),
    ]
    with pytest.raises(DecodeError, match=name):
        Envelope.from_headers(headers)
    ok = [*headers[:3], (name, b"x" * (size - 1))]
    assert Envelope.from_headers(ok)

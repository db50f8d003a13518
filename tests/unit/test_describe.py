"""`sagakit describe --mermaid`: the diagram says what the definition says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sagakit import RetryPolicy, Saga, Step
from sagakit._describe import COMPENSATED, PARKED, mermaid, text
from services.inventory.messages import OutOfStock, ReleaseStock, ReserveStock, StockReserved
from services.orders.saga import OrderState, place_order
from services.payments.messages import (
    CreditLimitExceeded,
    CreditReserved,
    ReleaseCredit,
    ReserveCredit,
)

ROOT = Path(__file__).resolve().parents[2]

NODE = re.compile(
    r"^    (?P<id>\w+)(?P<open>\[\"|\(\[\"|\{\{\")(?P<label>.*)(?P<close>\"\]|\"\]\)|\"\}\})$"
)
EDGE = re.compile(
    r"^    (?P<a>\w+) (?P<arrow>-->|==>|-\.->)(?:\|\"(?P<label>[^\"]*)\"\|)? (?P<b>\w+)$"
)
SHAPES = {'["': '"]', '(["': '"])', '{{"': '"}}'}


@dataclass(frozen=True)
class Edge:
    a: str
    arrow: str
    label: str
    b: str


@dataclass(frozen=True)
class Diagram:
    header: str
    nodes: dict[str, tuple[str, str]]  # id -> (shape opener, label)
    edges: list[Edge]
    classes: dict[str, set[str]]  # class name -> node ids

    def out(self, node: str, arrow: str) -> list[Edge]:
        return [e for e in self.edges if e.a == node and e.arrow == arrow]


def parse(source: str) -> Diagram:
    """A strict reader of the subset `mermaid()` writes: every line must be understood."""
    lines = source.splitlines()
    nodes: dict[str, tuple[str, str]] = {}
    edges: list[Edge] = []
    classes: dict[str, set[str]] = {}
    for line in lines[1:]:
        if line.startswith("    %%") or line.startswith("    classDef "):
            continue
        if m := re.match(r"^    class (?P<ids>[\w,]+) (?P<cls>\w+)$", line):
            classes.setdefault(m["cls"], set()).update(m["ids"].split(","))
        elif m := NODE.match(line):
            assert SHAPES[m["open"]] == m["close"], line
            assert m["id"] not in nodes, f"node {m['id']} defined twice"
            nodes[m["id"]] = (m["open"], m["label"])
        elif m := EDGE.match(line):
            edges.append(Edge(m["a"], m["arrow"], m["label"] or "", m["b"]))
        else:
            raise AssertionError(f"not a flowchart statement: {line!r}")
    return Diagram(lines[0], nodes, edges, classes)


@pytest.fixture(scope="module")
def diagram() -> Diagram:
    return parse(mermaid(place_order))


def node_of(d: Diagram, step: str) -> str:
    found = [i for i, (_, label) in d.nodes.items() if label.split("<br/>")[0] == step]
    assert len(found) == 1, f"step {step!r} is drawn {len(found)} times"
    return found[0]


def assert_balanced(diagram: Diagram) -> None:
    referenced = {e.a for e in diagram.edges} | {e.b for e in diagram.edges}
    assert referenced == set(diagram.nodes), "every edge end is a node, every node is linked"
    assert set().union(*diagram.classes.values()) <= set(diagram.nodes)


def test_is_a_flowchart_whose_node_ids_are_balanced(diagram: Diagram) -> None:
    source = mermaid(place_order)
    assert diagram.header == "flowchart TD"
    assert_balanced(diagram)
    for opener, closer in ("[]", "()", "{}"):
        assert source.count(opener) == source.count(closer), opener + closer
    assert source.count('"') % 2 == 0


def test_every_step_in_order_with_forward_arrows(diagram: Diagram) -> None:
    ids = [node_of(diagram, s.name) for s in place_order.steps]
    forward = {e.a: e.b for e in diagram.edges if e.arrow == "-->"}
    walk = ["start"]
    while walk[-1] in forward:
        walk.append(forward[walk[-1]])
    assert walk == ["start", *ids, "completed"]


def test_every_step_notes_its_command_and_retry_policy(diagram: Diagram) -> None:
    for step in place_order.resolved():
        _, label = diagram.nodes[node_of(diagram, step.name)]
        if step.action is None:
            assert "no command" in label
            continue
        policy = step.step.retry
        assert step.action.command.message_type in label
        assert step.action.topic in label
        assert f"{policy.max_attempts} attempts" in label
        assert f"timeout {policy.timeout_s:g} s" in label
        for reply in step.success:
            assert reply.__name__ in label


def test_each_compensation_is_a_dashed_arrow_back_labelled_with_its_command(
    diagram: Diagram,
) -> None:
    compensable = [s for s in place_order.resolved() if s.compensation is not None]
    assert [s.name for s in compensable] == ["create-order", "reserve-credit", "reserve-stock"]
    for step in compensable:
        assert step.compensation is not None
        dashed = diagram.out(node_of(diagram, step.name), "-.->")
        assert [e.label for e in dashed] == [step.compensation.command.message_type]
        assert step.compensation.command.__name__ in mermaid(place_order)
    # undoing walks back through the compensable steps, last first, to COMPENSATED
    here, visited = node_of(diagram, compensable[-1].name), []
    while here != COMPENSATED:
        visited.append(here)
        (edge,) = diagram.out(here, "-.->")
        here = edge.b
    assert visited == [node_of(diagram, s.name) for s in reversed(compensable)]
    assert len([e for e in diagram.edges if e.arrow == "-.->"]) == len(compensable)


def test_failures_lead_to_the_compensation_of_what_was_done(diagram: Diagram) -> None:
    expected = {
        "reserve-credit": ("CreditLimitExceeded", "create-order"),
        "reserve-stock": ("OutOfStock", "reserve-credit"),
        "schedule-shipment": ("ShipmentFailed", "reserve-stock"),
    }
    for step, (failure, undo_from) in expected.items():
        thick = diagram.out(node_of(diagram, step), "==>")
        targets = {e.b for e in thick if failure in e.label}
        assert targets == {node_of(diagram, undo_from)}, step
    # a step whose attempts time out may have taken effect: it is undone itself too
    (loop,) = [
        e for e in diagram.out(node_of(diagram, "reserve-credit"), "==>") if "undone" in e.label
    ]
    assert loop.b == loop.a and "3 attempts" in loop.label


def test_the_pivot_is_marked_and_later_steps_only_go_forward(diagram: Diagram) -> None:
    assert place_order.pivot_index is not None
    pivot = place_order.steps[place_order.pivot_index].name
    pivot_id = node_of(diagram, pivot)
    shape, label = diagram.nodes[pivot_id]
    assert shape == '{{"' and "PIVOT" in label and "retried forward" in label
    assert diagram.classes["pivot"] == {pivot_id}
    steps = {i: shape for i, (shape, _) in diagram.nodes.items() if re.fullmatch(r"s\d+", i)}
    assert len(steps) == len(place_order.steps)
    assert {i for i, shape in steps.items() if shape != '["'} == {pivot_id}
    for step in place_order.steps[place_order.pivot_index + 1 :]:
        node = node_of(diagram, step.name)
        assert diagram.out(node, "-.->") == []
        assert {e.b for e in diagram.out(node, "==>")} == {PARKED}
        assert "retried forward" in diagram.nodes[node][1]


def test_a_saga_without_pivot_with_a_deadline_and_quiet_steps() -> None:
    def stock(state: Any) -> ReserveStock:
        return ReserveStock(order_id=state.order_id, product_id="p", quantity=1)

    saga: Saga[OrderState] = Saga(
        "two-steps",
        state=OrderState,
        deadline_s=30,
        steps=[
            Step(
                "credit",
                invoke=ReserveCredit,
                on_reply={CreditReserved: None},
                failures=[CreditLimitExceeded],
                compensate=ReleaseCredit,
            ),
            Step(
                "stock",
                invoke=stock,
                on_reply={StockReserved: None},
                failures=[OutOfStock],
                retry=RetryPolicy(max_attempts=2, initial_backoff_s=1),
                compensate=ReleaseStock,
            ),
        ],
    )
    d = parse(mermaid(saga))
    assert_balanced(d)
    assert PARKED not in d.nodes, "nothing after a pivot can give up"
    assert "deadline 30 s" in d.nodes["start"][1]
    assert "pivot" not in d.classes and "PIVOT" not in mermaid(saga)
    credit, stock_id = node_of(d, "credit"), node_of(d, "stock")
    assert "1 attempt," in d.nodes[credit][1] and "no timeout" in d.nodes[credit][1]
    assert "2 attempts, back-off 1 s" in d.nodes[stock_id][1]
    # no timeout: nothing to give up on, so the only failure edges are business failures
    assert [(e.label, e.b) for e in d.out(credit, "==>")] == [("CreditLimitExceeded", COMPENSATED)]
    assert [(e.label, e.b) for e in d.out(stock_id, "==>")] == [("OutOfStock", credit)]
    assert "2. stock" in text(saga)


def test_labels_cannot_break_out_of_their_quotes() -> None:
    assert '"' not in mermaid(place_order).replace('"', "").replace("#quot;", "")
    d = parse(mermaid(place_order))
    assert all('"' not in label for _, label in d.nodes.values())


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sagakit", *args],
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "250", "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_cli_prints_the_diagram() -> None:
    done = run_cli("describe", "services.orders.saga:place_order", "--mermaid")
    assert done.returncode == 0, done.stderr
    assert done.stdout == mermaid(place_order) + "\n"


def test_the_cli_prints_text_and_rejects_what_is_not_a_saga() -> None:
    done = run_cli("describe", "services.orders.saga:place_order", "--text")
    assert done.returncode == 0, done.stderr
    assert done.stdout == text(place_order) + "\n"
    assert all(f". {s.name}\n" in done.stdout for s in place_order.steps)
    bad = run_cli("describe", "services.orders.saga:OrderState")
    assert bad.returncode == 2
    assert "'services.orders.saga:OrderState' is a ModelMetaclass, not a Saga or an App" in (
        bad.stderr
    )
    missing = run_cli("describe", "nosuchmodule:saga")
    assert missing.returncode == 2
    assert "no module 'nosuchmodule'" in missing.stderr and "--app-dir" in missing.stderr


def test_describe_finds_a_users_module_in_the_current_directory(tmp_path: Path) -> None:
    # `sagakit describe myapp:checkout` works from the directory that holds myapp.py,
    # with no PYTHONPATH, as uvicorn and faststream run do; an app means all its sagas
    (tmp_path / "myshop.py").write_text(
        "from pydantic import BaseModel\n"
        "from sagakit import App, Command, Reply, Saga, Step\n"
        "class Pay(Command, type='shoppay.Pay'):\n    order: str\n"
        "class Paid(Reply, type='shoppay.Paid'):\n    pass\n"
        "class Order(BaseModel):\n    order: str\n"
        "pay = Step('pay', invoke=Pay, on_reply={Paid: None})\n"
        "checkout = Saga('checkout', state=Order, steps=[pay])\n"
        "app = App('shop', sagas=[checkout])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for target in ("myshop:checkout", "myshop:app", "myshop"):
        done = subprocess.run(
            [sys.executable, "-m", "sagakit", "describe", target, "--text"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("saga checkout v1 (1 steps)")

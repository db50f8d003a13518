"""The saga DSL: a saga is a named, versioned recipe of steps over a typed state.

    place_order = Saga(
        "place-order",
        version=1,
        state=OrderState,
        steps=[
            Step("create-order", compensate=reject_order),
            Step(
                "reserve-credit",
                invoke=ReserveCredit,                 # built from the state's fields
                on_reply={CreditReserved: None},      # success replies (and how they update state)
                failures=(CreditLimitExceeded,),      # business failures: compensate
                compensate=ReleaseCredit,
            ),
            ...
        ],
    )

Everything is checked when the `Saga` is built; mistakes raise DefinitionError
naming the saga and the step. A command that declares its replies (``replies=`` on
the `Command`) holds its steps to them: they list only those, and each of them.
"""

from __future__ import annotations

import inspect
import math
import re
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from ._errors import DefinitionError
from ._messages import Command, Message, Reply, declares, describe_replies, is_registered

S = TypeVar("S", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class SagaInfo:
    """What a command builder may take besides the state: which saga, step and attempt
    the command is for, and why the saga is compensating (None while it is not).

        def reject_order(state: OrderState, saga: SagaInfo) -> RejectOrder:
            return RejectOrder(order_id=state.order_id, reason=saga.failure or "rejected")
    """

    saga_id: str
    saga_type: str
    version: int
    step: str
    attempt: int
    failure: str | None = None
    #: for the step of a `ForEach`: which item (its index in the list) and the item
    index: int | None = None
    item: Any = None


#: Builds a command from the saga state: a Command class (fields copied from the
#: state by name) or a function with an annotated return type, taking the state, or the
#: state and a `SagaInfo`.
CommandBuilder = type[Command] | Callable[[S], Command] | Callable[[S, SagaInfo], Command]
#: Updates the state from a reply; None means the reply leaves the state as it is.
StateUpdate = Callable[[S, Any], S] | None

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a step's command is retried before the step counts as failed.

    max_attempts      -- sends in all, the first included (1 = no retry)
    initial_backoff_s -- wait before the second attempt; then times `multiplier` per
                         attempt, capped at `max_backoff_s`, each wait scaled by a
                         factor drawn from [1 - jitter, 1 + jitter] (deterministic per
                         saga, step and attempt, so replays agree)
    timeout_s         -- how long one attempt may go unanswered (None: wait for ever);
                         a timeout counts as a retryable failure
    """

    max_attempts: int = 1
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        numbers = (self.initial_backoff_s, self.max_backoff_s, self.multiplier, self.jitter)
        if not all(math.isfinite(n) for n in numbers) or (
            self.timeout_s is not None and not math.isfinite(self.timeout_s)
        ):
            raise DefinitionError(f"RetryPolicy needs finite numbers, got {self}")
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise DefinitionError(f"RetryPolicy.max_attempts must be >= 1, got {self.max_attempts}")
        if self.initial_backoff_s < 0 or self.max_backoff_s < 0 or self.multiplier < 1:
            raise DefinitionError(
                "RetryPolicy needs initial_backoff_s >= 0, max_backoff_s >= 0 and multiplier >= 1"
            )
        if not 0 <= self.jitter < 1:
            raise DefinitionError(f"RetryPolicy.jitter must be in [0, 1), got {self.jitter}")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise DefinitionError(f"RetryPolicy.timeout_s must be > 0, got {self.timeout_s}")

    def backoff_ms(self, attempts_made: int, seed: str) -> int:
        """The wait before the next attempt, after `attempts_made` attempts."""
        import random

        try:
            base = self.initial_backoff_s * self.multiplier ** (attempts_made - 1)
        except OverflowError:
            base = self.max_backoff_s
        wait = min(base, self.max_backoff_s)
        if self.jitter:
            wait *= random.Random(seed).uniform(1 - self.jitter, 1 + self.jitter)
        return round(wait * 1000)


#: Compensations are retried by default, each attempt given 30 s: undoing must not give
#: up at the first error, and an undo nobody answers must end in a parked saga, not wait
#: for ever.
DEFAULT_COMPENSATION_RETRY = RetryPolicy(max_attempts=3, initial_backoff_s=0.5, timeout_s=30.0)


_NO_INFO = SagaInfo(saga_id="", saga_type="", version=0, step="", attempt=0)


@dataclass(frozen=True, slots=True)
class Action(Generic[S]):
    """A resolved command builder: the command type, its topic and how to build it
    (``build(state)``, or ``build(state, info)`` to give the builder a `SagaInfo`)."""

    command: type[Command]
    topic: str
    build: Callable[..., Command]


@dataclass(frozen=True)
class Step(Generic[S]):
    """One step of a saga.

    name        -- unique within the saga, used in command ids and journal records
    invoke      -- the command sent to the participant (omit for a step whose forward
                   action happened before the saga started, e.g. creating the order)
    on_reply    -- success reply types, each with an optional state update
    failures    -- reply types that are business failures: the saga compensates
    on_failure  -- optional state update applied with a failure reply
    retry       -- retry policy of `invoke` (attempts, back-off, per-attempt timeout)
    retry_on    -- reply types meaning "not now, try again" (retried per `retry`)
    compensate  -- the command that undoes this step (optional)
    compensation_retry    -- retry policy of `compensate`
    compensation_failures -- reply types meaning the compensation did not work: it is
                   retried, and when retries run out the saga is parked as
                   FAILED_NEEDS_ATTENTION for a person
    to          -- participant name; default: the command type's prefix
                   (``payments.ReserveCredit`` goes to ``payments.commands``)
    pivot       -- point of no return: later steps are retried forward, never compensated
    """

    name: str
    invoke: CommandBuilder[S] | None = None
    on_reply: Mapping[type[Reply], StateUpdate[S]] = field(default_factory=dict)
    failures: Sequence[type[Reply]] = ()
    on_failure: StateUpdate[S] = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    retry_on: Sequence[type[Reply]] = ()
    compensate: CommandBuilder[S] | None = None
    compensation_retry: RetryPolicy = DEFAULT_COMPENSATION_RETRY
    compensation_failures: Sequence[type[Reply]] = ()
    to: str | None = None
    pivot: bool = False

    @property
    def can_fail(self) -> bool:
        """Whether the step can end in failure (and so make earlier steps compensate)."""
        return self.invoke is not None and bool(
            self.failures or self.retry_on or self.retry.timeout_s is not None
        )


@dataclass(frozen=True, init=False)
class Parallel(Generic[S]):
    """Branches that run at the same time; the group is done when every branch is.

        Parallel("equipment",
            Step("order-laptop", ...),
            [Step("create-mailbox", ...), Step("add-to-lists", ...)],  # a sequence
        )

    When a step of one branch fails, no new step of any branch starts; the commands in
    flight are waited for (or time out); then every completed step of every branch is
    compensated (the branches at the same time, each in reverse order), then the steps
    before the group.
    """

    name: str
    branches: tuple[Any, ...]

    def __init__(self, name: str, *branches: Any) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "branches", tuple(branches))


@dataclass(frozen=True)
class Switch(Generic[S]):
    """One of several branches, chosen by `on(state)` when the saga reaches it.

        Switch("contract", on=lambda s: s.contract, cases={
            "employee": [Step("enrol-payroll", ...)],
            "contractor": Step("register-vendor", ...),
        }, default=[])

    The chosen case is journaled when it is taken: a restart, and compensation, follow
    it even if the state or the function would choose otherwise later. A key with no case
    and no `default` fails the saga (it compensates) with the key in the reason.
    """

    name: str
    on: Callable[[Any], Any]
    cases: Mapping[Any, Any]
    default: Any = None


@dataclass(frozen=True)
class WaitFor(Generic[S]):
    """Wait for a message from outside: a person's approval, a webhook, another system.

        WaitFor("manager-approval", event=Approved, failures=[Declined], timeout_s=86400,
                on_event=lambda s, e: s.model_copy(update={"approved_by": e.manager}))

    `SagaClient.signal` (or ``sagakit sagas signal``) sends it to the saga. A signal that
    arrives before the saga reaches the wait is kept and taken when it gets there. `event`
    types go on (`on_event` folds one into the state); `failures` make the saga compensate.
    `timeout_s` (None: wait for ever): with no signal by then, ``on_timeout="fail"``
    compensates, or a list of steps runs instead and the saga goes on after the wait.
    """

    name: str
    event: type[Message] | Sequence[type[Message]]
    failures: Sequence[type[Message]] = ()
    timeout_s: float | None = None
    on_event: Callable[[Any, Any], Any] | None = None
    on_timeout: Any = "fail"


@dataclass(frozen=True)
class ForEach(Generic[S]):
    """The same step for every item of a list in the state, up to `max_parallel` at once.

        def book(state: Hire, saga: SagaInfo) -> BookTraining:
            return BookTraining(person=state.person, course=saga.item)

        ForEach("trainings", items=lambda s: s.trainings,
                step=Step("book-training", invoke=book, on_reply={Booked: note_booking},
                          compensate=cancel_booking),
                max_parallel=5)

    The list is read when the saga reaches the ForEach, and its length journaled; each
    item's command is built with ``saga.item`` (and ``saga.index``) from the list as the
    state holds it then, so fold results into other fields rather than reorder it. Each
    item is its own step instance (``book-training#0``, ...: command ids per item and
    attempt). If one fails, the others in flight are waited for and every completed item
    is undone.
    """

    name: str
    items: Callable[[Any], Sequence[Any]]
    step: Step[S]
    max_parallel: int = 10


@dataclass(frozen=True)
class SubSaga(Generic[S]):
    """Start another saga (the child, possibly run by another app) and wait for its end.

        SubSaga("badge", saga=issue_badge, input=lambda s: BadgeState(person=s.person),
                on_done=lambda s, badge: s.model_copy(update={"badge": badge.number}))

    The child's id is ``<parent id>/<name>``; its trace is part of the parent's. When it
    ends COMPLETED the parent goes on (`on_done` folds the child's final state into the
    parent's); COMPENSATED or RESOLVED counts as a failure of this step (the parent
    compensates). If the parent compensates after the child completed, the child is asked
    to compensate its own steps, in reverse; a child past its pivot cannot, and the
    parent is parked for a person.
    """

    name: str
    saga: Any
    input: Callable[[Any], BaseModel]
    on_done: Callable[[Any, Any], Any] | None = None


#: A node of a saga's steps.
Node = Step[S] | Parallel[S] | Switch[S] | WaitFor[S] | ForEach[S] | SubSaga[S]


@dataclass(frozen=True)
class _ResolvedStep(Generic[S]):
    step: Step[S]
    #: position among all the saga's steps, nested ones included (depth first)
    index: int
    action: Action[S] | None
    compensation: Action[S] | None
    success: Mapping[type[Reply], StateUpdate[S]]
    failures: frozenset[type[Reply]]
    retryable: frozenset[type[Reply]]
    compensation_failures: frozenset[type[Reply]]
    #: position of the top-level node holding it (what the pivot is compared with)
    top: int = 0
    #: the child saga, for the step of a `SubSaga`
    child: Any = None

    @property
    def name(self) -> str:
        return self.step.name


@dataclass(frozen=True)
class _Seq:
    """Nodes run one after another (the saga's steps, a branch, a case)."""

    nodes: tuple[_Leaf | _Par | _Choice | _Wait | _Each, ...]


@dataclass(frozen=True)
class _Leaf:
    step: _ResolvedStep[Any]


@dataclass(frozen=True)
class _Par:
    name: str
    branches: tuple[_Seq, ...]


@dataclass(frozen=True)
class _Choice:
    name: str
    on: Callable[[Any], Any]
    cases: Mapping[str, _Seq]
    default: _Seq | None


@dataclass(frozen=True)
class _Wait:
    name: str
    events: tuple[type[Message], ...]
    failures: tuple[type[Message], ...]
    timeout_s: float | None
    on_event: Callable[[Any, Any], Any] | None
    #: None: a timeout fails the saga; else the steps to run instead
    on_timeout: _Seq | None
    #: position of the top-level node holding it
    top: int = 0

    def accepts(self, kind: type[Message]) -> bool:
        return kind in self.events or kind in self.failures


@dataclass(frozen=True)
class _Each:
    name: str
    items: Callable[[Any], Sequence[Any]]
    step: _ResolvedStep[Any]
    max_parallel: int


#: What the case of a wait that timed out is called (in `choices`).
TIMED_OUT = "timed-out"


def case_key(value: Any) -> str:
    """How a `Switch` case is named in the journal (and matched): its key as a string."""
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if hasattr(value, "value") and isinstance(getattr(value, "value", None), (str, int)):
        return str(value.value)  # an Enum
    return str(value)


def _members(seq: _Seq) -> list[_ResolvedStep[Any] | _Wait]:
    """The steps and waits of `seq`, nested ones included, in order."""
    found: list[_ResolvedStep[Any] | _Wait] = []
    for node in seq.nodes:
        if isinstance(node, (_Leaf, _Each)):
            found.append(node.step)
        elif isinstance(node, _Par):
            for branch in node.branches:
                found += _members(branch)
        elif isinstance(node, _Wait):
            found.append(node)
            if node.on_timeout is not None:
                found += _members(node.on_timeout)
        else:
            for case in (*node.cases.values(), *([node.default] if node.default else [])):
                found += _members(case)
    return found


def _leaves(seq: _Seq) -> list[_ResolvedStep[Any]]:
    """The steps of `seq`, nested ones included, in order."""
    return [m for m in _members(seq) if isinstance(m, _ResolvedStep)]


class Saga(Generic[S]):
    """A validated saga definition (immutable once built)."""

    def __init__(
        self,
        name: str,
        *,
        version: int = 1,
        state: type[S],
        steps: Sequence[Node[S]],
        deadline_s: float | None = None,
        searchable: Sequence[str] = (),
    ):
        self.name = name
        self.version = version
        self.state = state
        self.deadline_s = deadline_s
        #: state fields the read model indexes (`sagakit sagas list --field NAME=VALUE`,
        #: the console's search): top-level field names of `state`
        self.searchable = tuple(searchable)
        self.pivot_index: int | None = None
        self.steps: tuple[Node[S], ...] = tuple(steps)
        self.tree = _Seq(())
        self._shape: str | None = None
        self._resolved: tuple[_ResolvedStep[S], ...] = ()
        self._by_name: dict[str, _ResolvedStep[S]] = {}
        self._validate()

    def __repr__(self) -> str:
        return f"Saga({self.name!r}, version={self.version}, steps={[s.name for s in self.steps]})"

    @property
    def shape(self) -> str:
        """A digest of the saga's shape: its nodes and steps in order, with their kinds,
        names, command and reply types, retry policies and pivot. Recorded in the journal
        when a saga starts: the same version number with another shape is an error (give a
        changed definition a new version; running sagas keep theirs)."""
        if self._shape is None:
            import hashlib

            self._shape = hashlib.sha256(repr(_describe_shape(self.tree)).encode()).hexdigest()[:16]
        return self._shape

    # topics --------------------------------------------------------------
    @property
    def inbox_topic(self) -> str:
        return f"{self.name}.inbox"

    @property
    def journal_topic(self) -> str:
        return f"{self.name}.journal"

    @property
    def checkpoints_topic(self) -> str:
        """Where the journal's snapshots are (see `History`)."""
        return f"{self.name}.checkpoints"

    def command_topics(self) -> frozenset[str]:
        topics = set()
        for r in self._resolved:
            for action in (r.action, r.compensation):
                if action is not None:
                    topics.add(action.topic)
        return frozenset(topics)

    # lookup ----------------------------------------------------------------
    def resolved(self) -> tuple[_ResolvedStep[S], ...]:
        return self._resolved

    def after_pivot(self, step: _ResolvedStep[S]) -> bool:
        """True for steps after the pivot: retried forward, never compensated."""
        return self.pivot_index is not None and step.top > self.pivot_index

    def step(self, name: str) -> _ResolvedStep[S]:
        """A step by name (``name#index``: the step of a ForEach, for that item)."""
        try:
            return self._by_name[name.partition("#")[0]]
        except KeyError:
            raise DefinitionError(f"saga {self.name!r} has no step {name!r}") from None

    # validation ------------------------------------------------------------
    def _fail(self, step: str | None, problem: str) -> DefinitionError:
        where = (
            f"step {step!r} of saga {self.name!r}" if step is not None else f"saga {self.name!r}"
        )
        return DefinitionError(f"{where}: {problem}")

    def _validate(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise DefinitionError(
                f"saga name {self.name!r} must be lower-case letters, digits, '.', '_' or '-' "
                "(it names the saga's topics)"
            )
        if not isinstance(self.version, int) or self.version < 1:
            raise self._fail(None, f"version must be a positive integer, got {self.version!r}")
        if not (isinstance(self.state, type) and issubclass(self.state, BaseModel)):
            raise self._fail(None, f"state must be a pydantic model class, got {self.state!r}")
        if not self.steps:
            raise self._fail(None, "has no steps")
        unknown = [f for f in self.searchable if f not in self.state.model_fields]
        if unknown:
            raise self._fail(
                None,
                f"searchable names {', '.join(map(repr, unknown))}, not a field of "
                f"{self.state.__qualname__} (fields: {', '.join(self.state.model_fields)})",
            )
        if self.deadline_s is not None and not (
            math.isfinite(self.deadline_s) and self.deadline_s > 0
        ):
            raise self._fail(None, f"deadline_s must be > 0, got {self.deadline_s!r}")
        self._seen: set[str] = set()
        self._waits: list[_Wait] = []
        self._each: dict[str, _Each] = {}
        self._count = 0
        self.tree = self._sequence(self.steps, "steps", top=None)
        resolved = _leaves(self.tree)
        self._check_pivot_and_compensation(resolved)
        self._resolved = tuple(resolved)
        self._by_name = {r.name: r for r in resolved}

    def _named(self, name: object, where: str, what: str) -> str:
        if not isinstance(name, str):
            raise self._fail(None, f"{where} has name {name!r}, not a string")
        if not _NAME.match(name):
            raise self._fail(name, "name must be lower-case letters, digits, '.', '_' or '-'")
        if name in self._seen:
            raise self._fail(name, "duplicate name (every step and group of a saga has its own)")
        self._seen.add(name)
        return name

    def _sequence(self, nodes: Any, where: str, top: int | None, *, empty: bool = False) -> _Seq:
        """A branch: one node, or a list of them (the saga's steps when `top` is None);
        `empty`: it may be an empty list (a Switch case that does nothing)."""
        if isinstance(nodes, (Step, Parallel, Switch, WaitFor, ForEach, SubSaga)):
            nodes = [nodes]
        if not isinstance(nodes, (list, tuple)):
            raise self._fail(None, f"{where} is {nodes!r}, not a step, group or list of them")
        if top is not None and not nodes and not empty:
            raise self._fail(None, f"{where} is empty")
        out: list[_Leaf | _Par | _Choice | _Wait | _Each] = []
        for i, node in enumerate(nodes):
            at = f"{where}[{i}]"
            position = i if top is None else top
            if isinstance(node, Step):
                self._named(node.name, at, "step")
                out.append(_Leaf(self._resolve(position, node)))
            elif isinstance(node, Parallel):
                name = self._named(node.name, at, "group")
                if len(node.branches) < 2:
                    raise self._fail(name, "a Parallel group needs at least two branches")
                branches = tuple(
                    self._sequence(b, f"{name}.branches[{j}]", position)
                    for j, b in enumerate(node.branches)
                )
                out.append(_Par(name, branches))
            elif isinstance(node, Switch):
                out.append(self._switch(node, at, position))
            elif isinstance(node, WaitFor):
                out.append(self._wait(node, at, position))
            elif isinstance(node, SubSaga):
                self._named(node.name, at, "subsaga")
                out.append(_Leaf(self._child(node, position)))
            elif isinstance(node, ForEach):
                name = self._named(node.name, at, "foreach")
                if not callable(node.items):
                    raise self._fail(name, "items must be a function of the state")
                if not isinstance(node.step, Step):
                    raise self._fail(name, f"step is {node.step!r}, not a Step")
                if not isinstance(node.max_parallel, int) or node.max_parallel < 1:
                    raise self._fail(name, "max_parallel must be a positive integer")
                self._named(node.step.name, f"{name}.step", "step")
                each = _Each(
                    name, node.items, self._resolve(position, node.step), node.max_parallel
                )
                self._each[node.step.name] = each
                out.append(each)
            else:
                raise self._fail(None, f"{at} is {node!r}, not a Step, Parallel, Switch or WaitFor")
        return _Seq(tuple(out))

    def _child(self, node: SubSaga[S], position: int) -> _ResolvedStep[S]:
        """The step that starts child saga `node.saga` and waits for its `SagaEnded`."""
        from ._messages import CompensateChild, SagaEnded, StartChild

        child = node.saga
        if not isinstance(child, Saga):
            raise self._fail(node.name, f"saga is {child!r}, not a Saga")
        if child.name == self.name:
            raise self._fail(node.name, "a saga cannot be its own child")
        if not callable(node.input):
            raise self._fail(node.name, "input must be a function of the state")
        name, parent = node.name, self.name

        def start(state: S, info: SagaInfo | None = None) -> Command:
            given = node.input(state)
            if not isinstance(given, child.state):
                raise TypeError(
                    f"input of SubSaga {name!r} built {type(given).__name__}, not "
                    f"{child.state.__name__} (the state of saga {child.name!r})"
                )
            parent_id = info.saga_id if info is not None else ""
            return StartChild(
                child_type=child.name,
                child_id=f"{parent_id}/{name}",
                parent_type=parent,
                parent_id=parent_id,
                state=given.model_dump(mode="json"),
            )

        def undo(state: S, info: SagaInfo | None = None) -> Command:
            parent_id = info.saga_id if info is not None else ""
            return CompensateChild(
                child_type=child.name, child_id=f"{parent_id}/{name}", parent_id=parent_id
            )

        def done(state: S, ended: SagaEnded) -> S:
            if node.on_done is None:
                return state
            return node.on_done(state, child.state.model_validate(ended.state))  # type: ignore[no-any-return]

        index = self._count
        self._count += 1
        # the child answers when it ends, however long that takes: no timeout, one start
        step: Step[S] = Step(
            name,
            compensation_retry=RetryPolicy(max_attempts=1),
        )
        return _ResolvedStep(
            step,
            index,
            Action(StartChild, child.inbox_topic, start),
            Action(CompensateChild, child.inbox_topic, undo),
            {SagaEnded: done},
            frozenset(),
            frozenset(),
            frozenset(),
            top=position,
            child=child,
        )

    def _wait(self, node: WaitFor[S], at: str, position: int) -> _Wait:
        name = self._named(node.name, at, "wait")
        events = tuple(node.event) if isinstance(node.event, (list, tuple)) else (node.event,)
        failures = tuple(node.failures)
        for kind in (*events, *failures):
            if not (isinstance(kind, type) and issubclass(kind, Message)) or not is_registered(
                kind
            ):
                raise self._fail(
                    name,
                    f"{kind!r} is not a registered message type: declare it as "
                    f'class {getattr(kind, "__name__", "Approved")}(Event, type="<system>.<Name>")',
                )
            if issubclass(kind, (Command, Reply)):
                raise self._fail(
                    name,
                    f"{kind.message_type} is a {kind.__mro__[1].__name__}; a wait takes "
                    "Event types (what a person or another system says happened)",
                )
        if not events:
            raise self._fail(name, "event names no message type to wait for")
        if set(events) & set(failures):
            raise self._fail(name, "a message type is listed both as event and as failure")
        for other in self._waits:
            shared = {k.message_type for k in (*events, *failures) if other.accepts(k)}
            if shared:
                raise self._fail(
                    name,
                    f"waits for {', '.join(sorted(shared))} like {other.name!r}: a signal must "
                    "name one wait (use another message type)",
                )
        if node.timeout_s is not None and not (
            math.isfinite(node.timeout_s) and node.timeout_s > 0
        ):
            raise self._fail(name, f"timeout_s must be > 0, got {node.timeout_s!r}")
        if node.on_event is not None and not callable(node.on_event):
            raise self._fail(name, "on_event must be a function (state, event) -> state")
        if node.on_timeout == "fail":
            on_timeout = None
        else:
            if node.timeout_s is None:
                raise self._fail(name, "on_timeout steps need a timeout_s")
            on_timeout = self._sequence(node.on_timeout, f"{name}.on_timeout", position)
        wait = _Wait(name, events, failures, node.timeout_s, node.on_event, on_timeout, position)
        self._waits.append(wait)
        return wait

    def foreach_of(self, step: str) -> _Each:
        """The ForEach whose step is named `step`."""
        return self._each[step]

    def waits(self) -> tuple[_Wait, ...]:
        """Every `WaitFor` of the saga, in order."""
        return tuple(self._waits)

    def signal_wait(self, kind: type[Message]) -> _Wait | None:
        """The wait a signal of type `kind` is for (None: no wait takes it)."""
        return next((w for w in self._waits if w.accepts(kind)), None)

    def _switch(self, node: Switch[S], at: str, position: int) -> _Choice:
        name = self._named(node.name, at, "switch")
        if not callable(node.on):
            raise self._fail(name, "on must be a function of the state")
        if not isinstance(node.cases, Mapping) or not node.cases:
            raise self._fail(name, "cases must be a non-empty dict of key -> steps")
        cases: dict[str, _Seq] = {}
        for key, branch in node.cases.items():
            k = case_key(key)
            if k in cases:
                raise self._fail(name, f"two cases are both named {k!r}")
            cases[k] = self._sequence(branch, f"{name}.cases[{k!r}]", position, empty=True)
        default = (
            None
            if node.default is None
            else self._sequence(node.default, f"{name}.default", position, empty=True)
        )
        return _Choice(name, node.on, cases, default)

    def _resolve(self, top: int, step: Step[S]) -> _ResolvedStep[S]:
        index = self._count
        self._count += 1
        if step.invoke is None and step.compensate is None:
            raise self._fail(step.name, "has neither invoke nor compensate; it does nothing")
        action = self._action(step, step.invoke, "invoke") if step.invoke is not None else None
        compensation = (
            self._action(step, step.compensate, "compensate")
            if step.compensate is not None
            else None
        )
        if action is None and (step.on_reply or step.failures or step.on_failure):
            raise self._fail(step.name, "declares replies but sends no command (no invoke)")
        if action is not None and not step.on_reply:
            raise self._fail(
                step.name,
                f"sends {action.command.message_type} but lists no success reply in on_reply",
            )
        if action is None and (step.retry_on or step.retry != RetryPolicy()):
            raise self._fail(step.name, "has a retry policy but sends no command (no invoke)")
        if compensation is None and step.compensation_failures:
            raise self._fail(step.name, "lists compensation_failures but has no compensate")
        for reply in [
            *step.on_reply,
            *step.failures,
            *step.retry_on,
            *step.compensation_failures,
        ]:
            if not (isinstance(reply, type) and issubclass(reply, Reply)):
                raise self._fail(step.name, f"{reply!r} is not a Reply model")
            if not is_registered(reply):
                raise self._fail(
                    step.name,
                    f"reply {reply.__qualname__} is not registered: declare it as "
                    f'class {reply.__name__}(Reply, type="<service>.{reply.__name__}")',
                )
        for reply, update in step.on_reply.items():
            if update is not None and not callable(update):
                raise self._fail(step.name, f"on_reply[{reply.__name__}] is not callable")
        if step.on_failure is not None and not callable(step.on_failure):
            raise self._fail(step.name, "on_failure is not callable")
        kinds = {"success": set(step.on_reply), "failure": set(step.failures)}
        kinds["retry_on"] = set(step.retry_on)
        for a, b in (("success", "failure"), ("success", "retry_on"), ("failure", "retry_on")):
            both = kinds[a] & kinds[b]
            if both:
                names = ", ".join(sorted(r.message_type for r in both))
                raise self._fail(step.name, f"{names} listed both as {a} and as {b}")
        if step.on_failure is not None and not step.failures:
            raise self._fail(step.name, "has on_failure but lists no failures")
        self._check_contract(step, action, compensation)
        return _ResolvedStep(
            step,
            index,
            action,
            compensation,
            dict(step.on_reply),
            frozenset(step.failures),
            frozenset(step.retry_on),
            frozenset(step.compensation_failures),
            top=top,
        )

    def _check_contract(
        self, step: Step[S], action: Action[S] | None, compensation: Action[S] | None
    ) -> None:
        """Hold the step to the replies its commands declare (`Command` ``replies=``).

        Every reply the step lists must be declared, and every declared reply must be
        listed as success, failure or retry_on: a reply the step does not expect is
        dead-lettered at run time and the saga waits on. A compensation's replies that
        are not `compensation_failures` count as done, so only what it lists is checked.
        """
        declared = action.command.declared_replies if action is not None else None
        if action is not None and declared is not None:
            command = action.command
            lists = {"on_reply": step.on_reply, "failures": step.failures}
            lists["retry_on"] = step.retry_on
            self._only_declared(step, command, lists)
            handled = {r.message_type for replies in lists.values() for r in replies}
            unhandled = [r for r in declared if r.message_type not in handled]
            if unhandled:
                raise self._fail(
                    step.name,
                    f"{command.message_type} declares {describe_replies(unhandled)}, which the "
                    "step does not handle: list it in on_reply (success), failures (compensate) "
                    "or retry_on (ask again); a reply no list names is dead-lettered and the "
                    "saga waits for another",
                )
        if compensation is not None and compensation.command.declared_replies is not None:
            lists = {"compensation_failures": step.compensation_failures}
            self._only_declared(step, compensation.command, lists)

    def _only_declared(
        self, step: Step[S], command: type[Command], lists: Mapping[str, Iterable[type[Reply]]]
    ) -> None:
        foreign = [
            f"{reply.message_type} (in {name})"
            for name, replies in lists.items()
            for reply in replies
            if not declares(command, reply)
        ]
        if foreign:
            declared = describe_replies(command.declared_replies or ())
            raise self._fail(
                step.name,
                f"lists {', '.join(foreign)}, which {command.message_type} does not declare "
                f"(it declares {declared}); fix the step, or add the reply to replies= of "
                f"{command.__qualname__}",
            )

    def _action(self, step: Step[S], builder: CommandBuilder[S], what: str) -> Action[S]:
        build: Callable[..., Command]
        if isinstance(builder, type):
            command = builder
            build = self._from_state(command)
        elif callable(builder):
            command = self._return_type(step, builder, what)
            build = self._with_info(step, builder, what)
        else:
            raise self._fail(step.name, f"{what} must be a Command class or a function")
        if not issubclass(command, Command):
            raise self._fail(
                step.name, f"{what} builds {command.__qualname__}, which is not a Command"
            )
        if not is_registered(command):
            raise self._fail(
                step.name,
                f"command {command.__qualname__} is not registered: declare it as "
                f'class {command.__name__}(Command, type="<service>.{command.__name__}")',
            )
        participant = step.to or command.message_type.rpartition(".")[0]
        if not participant or not _NAME.match(participant):
            raise self._fail(
                step.name,
                f"cannot tell which participant handles {command.message_type}: name it "
                "'<service>.<Command>' or pass to='<service>'",
            )
        if isinstance(builder, type):
            self._check_fields(step, command)
        return Action(command, f"{participant}.commands", build)

    def _from_state(self, command: type[Command]) -> Callable[..., Command]:
        def build(state: S, info: SagaInfo | None = None) -> Command:
            return command.model_validate(state, from_attributes=True)

        return build

    def _with_info(
        self, step: Step[S], fn: Callable[..., Command], what: str
    ) -> Callable[..., Command]:
        """`fn` as ``build(state, info=None)``, whether it takes the `SagaInfo` or not."""
        try:
            params = [
                p
                for p in inspect.signature(fn).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            ]
        except (TypeError, ValueError):
            params = []
        if len(params) not in (1, 2):
            raise self._fail(
                step.name,
                f"{what} function {getattr(fn, '__qualname__', fn)!r} must take the state, "
                "or the state and a SagaInfo",
            )
        if len(params) == 1:

            def state_only(state: S, info: SagaInfo | None = None) -> Command:
                return fn(state)

            return state_only

        def with_info(state: S, info: SagaInfo | None = None) -> Command:
            return fn(state, info if info is not None else _NO_INFO)

        return with_info

    def _check_fields(self, step: Step[S], command: type[Command]) -> None:
        missing = [
            name
            for name, info in command.model_fields.items()
            if info.is_required() and name not in self.state.model_fields
        ]
        if missing:
            raise self._fail(
                step.name,
                f"{command.__qualname__} is built from the state, but state "
                f"{self.state.__qualname__} has no field {', '.join(missing)}; "
                "pass a function instead",
            )

    def _return_type(self, step: Step[S], fn: Callable[..., Any], what: str) -> type[Command]:
        try:
            hints = typing.get_type_hints(fn)
        except Exception as exc:
            raise self._fail(step.name, f"cannot read the annotations of {what} ({exc})") from exc
        ret = hints.get("return")
        if not isinstance(ret, type):
            raise self._fail(
                step.name,
                f"{what} function {getattr(fn, '__qualname__', fn)!r} needs a return annotation "
                "naming its Command class (lambdas cannot say it; use a def or the class itself)",
            )
        return ret

    def _check_pivot_and_compensation(self, resolved: list[_ResolvedStep[S]]) -> None:
        pivots = [r for r in resolved if r.step.pivot]
        if len(pivots) > 1:
            raise self._fail(pivots[1].name, f"second pivot; {pivots[0].name!r} already is one")
        if pivots and self.steps[pivots[0].top] is not pivots[0].step:
            raise self._fail(
                pivots[0].name,
                "a pivot must be a step of the saga itself, not inside a Parallel or Switch: "
                "the point of no return is one moment of the whole saga (make the group's "
                "steps compensable and put the pivot after it)",
            )
        pivot = pivots[0].index if pivots else len(resolved)
        self.pivot_index = pivots[0].top if pivots else None
        if pivots and pivots[0].action is None:
            raise self._fail(pivots[0].name, "a pivot must send a command (invoke)")

        def may_fail(r: _ResolvedStep[S]) -> bool:
            # a saga deadline can abort any step before the pivot
            if r.child is not None:  # a child saga may end compensated
                return True
            return r.step.can_fail or (r.action is not None and self.deadline_s is not None)

        for r in resolved[pivot + 1 :]:
            if r.step.failures:
                raise self._fail(
                    r.name,
                    f"comes after the pivot {resolved[pivot].name!r}, so it is retried forward "
                    "and must not list business failures",
                )
            if r.compensation is not None:
                raise self._fail(
                    r.name,
                    f"comes after the pivot {resolved[pivot].name!r} and is never compensated; "
                    "remove its compensate",
                )
        pivot_top = self.pivot_index if self.pivot_index is not None else len(self.steps)
        for w in self._waits:
            if w.top > pivot_top and (w.failures or (w.timeout_s and w.on_timeout is None)):
                raise self._fail(
                    w.name,
                    "comes after the pivot, where nothing is undone: it must not list "
                    "failures, and a timeout needs on_timeout steps to go on with",
                )
        for r in resolved[:pivot]:
            if r.compensation is not None or r.action is None:
                continue
            followers = _followers(self.tree, r.name)
            waits = [
                w
                for w, _group in followers
                if isinstance(w, _Wait)
                and w.top < pivot_top
                and (w.failures or (w.timeout_s and w.on_timeout is None))
            ]
            if waits:
                raise self._fail(
                    r.name,
                    f"has no compensation but is followed by wait {waits[0].name!r}, which "
                    "may fail (a failure signal or its timeout compensates)",
                )
            later = [
                (x, group)
                for x, group in followers
                if isinstance(x, _ResolvedStep) and x.index <= pivot and may_fail(x)
            ]
            if later:
                x, group = later[0]
                how = (
                    f"runs beside step {x.name!r} (group {group!r})"
                    if group
                    else f"is followed by step {x.name!r}"
                )
                raise self._fail(r.name, f"has no compensation but {how}, which may fail")


Follower = tuple[_ResolvedStep[Any] | _Wait, str | None]


def _followers(tree: _Seq, name: str) -> list[Follower]:
    """The steps and waits that may run after step `name` or while it runs: later in its
    sequences, and in the other branches of the groups around it (with the group's name).
    Other cases of a Switch never run with it."""

    def after(seq: _Seq) -> list[Follower] | None:
        for i, node in enumerate(seq.nodes):
            found = inside(node)
            if found is not None:
                rest: list[Follower] = [(m, None) for m in _members(_Seq(seq.nodes[i + 1 :]))]
                return found + rest
        return None

    def inside(node: _Leaf | _Par | _Choice | _Wait | _Each) -> list[Follower] | None:
        if isinstance(node, _Wait):
            return None if node.on_timeout is None else after(node.on_timeout)
        if isinstance(node, _Each):  # its items run beside each other
            return [(node.step, node.name)] if node.step.name == name else None
        if isinstance(node, _Leaf):
            return [] if node.step.name == name else None
        if isinstance(node, _Par):
            for branch in node.branches:
                found = after(branch)
                if found is not None:
                    others: list[Follower] = [
                        (m, node.name)
                        for b in node.branches
                        if b is not branch
                        for m in _members(b)
                    ]
                    return found + others
            return None
        for case in (*node.cases.values(), *([node.default] if node.default else [])):
            found = after(case)
            if found is not None:
                return found
        return None

    return after(tree) or []


def _types(replies: Iterable[type[Any]]) -> list[str]:
    return sorted(getattr(r, "message_type", r.__qualname__) for r in replies)


def _describe_shape(seq: _Seq) -> list[Any]:
    """What `Saga.shape` digests: structure and types, not the functions' code."""
    out: list[Any] = []
    for node in seq.nodes:
        if isinstance(node, (_Leaf, _Each)):
            r = node.step
            step = r.step
            out.append(
                (
                    "each" if isinstance(node, _Each) else "step",
                    r.name,
                    node.name if isinstance(node, _Each) else None,
                    node.max_parallel if isinstance(node, _Each) else None,
                    r.action.command.message_type if r.action else None,
                    r.compensation.command.message_type if r.compensation else None,
                    _types(r.success),
                    _types(r.failures),
                    _types(r.retryable),
                    _types(r.compensation_failures),
                    repr(step.retry),
                    repr(step.compensation_retry),
                    step.pivot,
                )
            )
        elif isinstance(node, _Par):
            out.append(("parallel", node.name, [_describe_shape(b) for b in node.branches]))
        elif isinstance(node, _Choice):
            cases = [(k, _describe_shape(c)) for k, c in node.cases.items()]
            default = None if node.default is None else _describe_shape(node.default)
            out.append(("switch", node.name, cases, default))
        else:
            timeout = None if node.on_timeout is None else _describe_shape(node.on_timeout)
            out.append(
                (
                    "wait",
                    node.name,
                    _types(node.events),
                    _types(node.failures),
                    node.timeout_s,
                    timeout,
                )
            )
    return out

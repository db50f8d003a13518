"""An `App`: the sagas and services a team deploys together, and what runs them.

    app = App("shop", sagas=[checkout], services=[carts, payments, mailer])

    sagakit run shop:app --embedded                       # everything, one process
    sagakit run shop:app --component service:mailer ...   # one component per process

Every tool (`sagakit sagas`, `dlq`, `chaos`, `demo`, `compare`, `bench`) works on an
app by the same ``MODULE:ATTR``. An app's components are ``orchestrator:<saga>`` (one
orchestrator per saga type; start several processes of one to share its partitions)
and ``service:<name>``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskStatus

from ._definition import Saga
from ._dlq import DLQ_CONFIGS, DLQ_SUFFIX, dlq_topic
from ._errors import DefinitionError, SagaError
from ._evaluator import SagaInstance, Transition
from ._interceptors import Interceptor
from ._metrics import Metrics
from ._orchestrator import Orchestrator
from ._participant import Service
from ._snapshots import History
from .tracing import Tracing
from .transport._base import Transport

log = logging.getLogger("sagakit.app")

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")

ORCHESTRATOR = "orchestrator"
SERVICE = "service"


class App:
    """The sagas (each run by its orchestrator) and the services of one deployable app.

    `namespace` prefixes every topic and consumer group (several apps, or several runs,
    can share a cluster); `partitions` is the count of the topics the app creates.
    """

    def __init__(
        self,
        name: str,
        *,
        sagas: Sequence[Saga[Any]] = (),
        services: Sequence[Service[Any]] = (),
        namespace: str = "",
        partitions: int = 8,
        interceptors: Sequence[Interceptor] = (),
    ) -> None:
        """`interceptors` are called by every component (after tracing, logs and
        metrics): an audit log of every transition, say. `sagas` may hold several versions
        of one saga (same name, different `version`): one orchestrator runs them all, new
        sagas start on the newest, running ones keep theirs."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise DefinitionError(
                f"app name {name!r} must be lower-case letters, digits, '.', '_' or '-'"
            )
        self.name = name
        for saga in sagas:
            if not isinstance(saga, Saga):
                raise DefinitionError(f"app {name!r}: {saga!r} in sagas is not a Saga")
        self._versions: dict[str, dict[int, Saga[Any]]] = {}
        for saga in sagas:
            by_number = self._versions.setdefault(saga.name, {})
            if saga.version in by_number:
                raise DefinitionError(
                    f"app {name!r} has two sagas named {saga.name!r} of version {saga.version}"
                )
            by_number[saga.version] = saga
        #: the newest version of each saga type (what starts new sagas)
        self.sagas: tuple[Saga[Any], ...] = tuple(v[max(v)] for v in self._versions.values())
        self.services: tuple[Service[Any], ...] = tuple(services)
        self.namespace = namespace
        self.partitions = partitions
        self.interceptors: tuple[Interceptor, ...] = tuple(interceptors)
        for service in self.services:
            if not isinstance(service, Service):
                raise DefinitionError(f"app {name!r}: {service!r} in services is not a Service")
        _unique(name, "service", [s.name for s in self.services])
        if not self.sagas and not self.services:
            raise DefinitionError(f"app {name!r} has neither sagas nor services")

    def __repr__(self) -> str:
        return f"App({self.name!r}, components={list(self.components)})"

    @property
    def components(self) -> tuple[str, ...]:
        """``orchestrator:<saga>`` for every saga, ``service:<name>`` for every service."""
        return (
            *(f"{ORCHESTRATOR}:{s.name}" for s in self.sagas),
            *(f"{SERVICE}:{s.name}" for s in self.services),
        )

    def saga(self, name: str) -> Saga[Any]:
        for saga in self.sagas:
            if saga.name == name:
                return saga
        raise SagaError(
            f"app {self.name!r} has no saga {name!r}; its sagas: "
            f"{', '.join(s.name for s in self.sagas) or 'none'}"
        )

    def versions(self, name: str) -> tuple[Saga[Any], ...]:
        """Every version of saga `name` the app runs, oldest first."""
        self.saga(name)  # the error naming the app's sagas
        return tuple(v for _, v in sorted(self._versions[name].items()))

    def service(self, name: str) -> Service[Any]:
        for service in self.services:
            if service.name == name:
                return service
        raise SagaError(
            f"app {self.name!r} has no service {name!r}; its services: "
            f"{', '.join(s.name for s in self.services) or 'none'}"
        )

    def select(self, components: Iterable[str] | None) -> tuple[str, ...]:
        """The components named (``KIND:NAME``, ``KIND:*`` or ``KIND``), checked; all if None."""
        if components is None:
            return self.components
        chosen: list[str] = []
        for spec in components:
            kind, _, name = spec.partition(":")
            if kind not in (ORCHESTRATOR, SERVICE):
                raise SagaError(
                    f"component {spec!r}: the kind is 'orchestrator' or 'service' "
                    f"(e.g. {self.components[0] if self.components else 'service:NAME'})"
                )
            matches = [
                c
                for c in self.components
                if c.startswith(f"{kind}:") and name in ("", "*", c.partition(":")[2])
            ]
            if not matches:
                raise SagaError(
                    f"app {self.name!r} has no component {spec!r}; it has "
                    f"{', '.join(self.components)}"
                )
            chosen.extend(c for c in matches if c not in chosen)
        return tuple(chosen)

    # -- topics -----------------------------------------------------------------------------
    def topics(self, namespace: str | None = None) -> dict[str, int]:
        """Every topic the app creates (under `namespace`), with its partition count."""
        ns = self.namespace if namespace is None else namespace
        topics: dict[str, int] = {}
        for saga in self.sagas:
            inbox = ns + saga.inbox_topic
            topics[inbox] = self.partitions
            topics[ns + saga.journal_topic] = self.partitions
            topics[ns + saga.checkpoints_topic] = self.partitions
            topics[dlq_topic(inbox)] = 1
            for topic in saga.command_topics():
                topics.setdefault(ns + topic, self.partitions)
        for service in self.services:
            service.namespace, saved = ns, service.namespace
            try:
                for topic in (service.commands_topic, service.events_topic):
                    topics.setdefault(topic, self.partitions)
                    topics[dlq_topic(topic)] = 1
                for topic in service.subscribed_topics():
                    topics.setdefault(topic, self.partitions)
                    topics[dlq_topic(topic)] = 1
            finally:
                service.namespace = saved
        return topics

    def topic_configs(
        self, namespace: str | None = None, history: History | None = None
    ) -> dict[str, dict[str, str]]:
        """The Kafka settings the app creates its topics with, for each topic that has any:
        the journal and its checkpoints keep `history`'s retention (`History()`'s defaults
        unless given), dead letters never expire. Topics left out take the broker's
        defaults. What a `KafkaTopic` or a topic-creating script must set to agree."""
        ns = self.namespace if namespace is None else namespace
        kept = (history or History()).topic_configs()
        configs = {t: dict(DLQ_CONFIGS) for t in self.topics(ns) if t.endswith(DLQ_SUFFIX)}
        for saga in self.sagas:
            configs[ns + saga.journal_topic] = dict(kept)
            configs[ns + saga.checkpoints_topic] = dict(kept)
        return configs

    def consumed_topics(self, namespace: str | None = None) -> frozenset[str]:
        """The topics the app's components read (what `dlq replay` may produce to)."""
        ns = self.namespace if namespace is None else namespace
        topics = {ns + saga.inbox_topic for saga in self.sagas}
        for service in self.services:
            service.namespace, saved = ns, service.namespace
            try:
                topics.update(service.subscribed_topics() or [service.commands_topic])
            finally:
                service.namespace = saved
        return frozenset(topics)

    def check(self, sagas: Iterable[str] | None = None) -> tuple[str, ...]:
        """What looks wrong without being an error: a step whose command goes to a service
        the app lacks (``payment.ReserveCredit`` when the service is ``payments``), or to
        one of its services that has no handler for it. Of every saga, or of `sagas`.

        Such a service may run in another app, so this is not checked when the app is
        built; assert ``app.check() == ()`` in a test, and `AppRunner.run` logs each as a
        warning. An app without services sends everything elsewhere: nothing to check.
        """
        if not self.services:
            return ()
        services = {s.name: s for s in self.services}
        names = ", ".join(services)
        found: list[str] = []
        for saga in self.sagas:
            if sagas is not None and saga.name not in sagas:
                continue
            for step in saga.resolved():
                if step.child is not None:
                    if step.child.name not in {s.name for s in self.sagas}:
                        found.append(
                            f"step {step.name!r} of saga {saga.name!r} starts saga "
                            f"{step.child.name!r}, which this app does not run (fine if "
                            "another app does)"
                        )
                    continue
                for action in (step.action, step.compensation):
                    if action is None:
                        continue
                    kind = action.command.message_type
                    where = f"step {step.name!r} of saga {saga.name!r}"
                    participant = action.topic.removesuffix(".commands")
                    service = services.get(participant)
                    if service is None:
                        found.append(
                            f"{where} sends {kind} to {action.topic}, but app {self.name!r} has "
                            f"no service {participant!r} (its services: {names}); fine if it "
                            "runs in another app, else a typo in the command type or to="
                        )
                    elif kind not in service.command_types():
                        found.append(
                            f"{where} sends {kind} to service {participant!r}, which has no "
                            "handler for it"
                        )
        return tuple(dict.fromkeys(found))

    def runner(self, transport: Transport, **options: Any) -> AppRunner:
        """What runs (some of) this app's components on `transport`; see `AppRunner`."""
        return AppRunner(self, transport, **options)

    async def run(
        self,
        transport: Transport,
        *,
        components: Iterable[str] | None = None,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
        **options: Any,
    ) -> None:
        """Run the app's components (all, or those named) until cancelled."""
        await self.runner(transport, components=components, **options).run(task_status=task_status)


def _unique(app: str, what: str, names: list[str]) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise DefinitionError(f"app {app!r} has two {what}s named {n!r}")
        seen.add(n)


@dataclass(frozen=True, slots=True)
class Component:
    """One running component: its name (``orchestrator:checkout``) and what runs it."""

    name: str
    role: Orchestrator | Service[Any]

    @property
    def ready(self) -> bool:
        return self.role.ready


class AppRunner:
    """Runs the chosen components of an app in this process, on one transport.

    `tracing` makes each component's `Tracing` (by its OpenTelemetry service name: the
    service's name, or ``saga-orchestrator``); all components share `metrics`.
    """

    def __init__(
        self,
        app: App,
        transport: Transport,
        *,
        components: Iterable[str] | None = None,
        namespace: str | None = None,
        partitions: int | None = None,
        tracing: Callable[[str], Tracing] | None = None,
        metrics: Metrics | None = None,
        on_transition: Callable[[Transition], None] | None = None,
        shutdown_grace_s: float = 30.0,
        service_concurrency: int | None = None,
        simulated_io_s: float = 0.0,
        history: History | None = None,
    ) -> None:
        """`service_concurrency` overrides every service's `concurrency` (1: one record at a
        time); `simulated_io_s` makes each service record wait that long first, as if its
        handler called another system (what `sagakit bench --participant-latency-ms` sets)."""
        self.app = app
        self.transport = transport
        self.namespace = app.namespace if namespace is None else namespace
        self.partitions = app.partitions if partitions is None else partitions
        self.metrics = metrics if metrics is not None else Metrics(app.name)
        traced = tracing or (lambda _component: Tracing.disabled())
        #: from SAGAKIT_SNAPSHOT_EVERY, SAGAKIT_DEDUPE_WINDOW_S, ... unless given
        self.history = history if history is not None else History.from_env()
        self.selected = app.select(components)
        self.orchestrators: dict[str, Orchestrator] = {}
        self.services: dict[str, Service[Any]] = {}
        for name in self.selected:
            kind, _, which = name.partition(":")
            if kind == ORCHESTRATOR:
                self.orchestrators[which] = Orchestrator(
                    app.saga(which),
                    transport,
                    versions=app.versions(which),
                    partitions=self.partitions,
                    namespace=self.namespace,
                    on_transition=on_transition,
                    shutdown_grace_s=shutdown_grace_s,
                    tracing=traced("saga-orchestrator"),
                    metrics=self.metrics,
                    interceptors=app.interceptors,
                    history=self.history,
                )
            else:
                service = app.service(which)
                service.configure(
                    namespace=self.namespace,
                    partitions=self.partitions,
                    tracing=traced(service.name),
                    metrics=self.metrics,
                    shutdown_grace_s=shutdown_grace_s,
                    interceptors=(*service.interceptors_given, *app.interceptors),
                    concurrency=service_concurrency,
                    simulated_io_s=simulated_io_s,
                )
                self.services[which] = service

    @property
    def components(self) -> list[Component]:
        return [
            *(Component(f"{ORCHESTRATOR}:{n}", o) for n, o in self.orchestrators.items()),
            *(Component(f"{SERVICE}:{n}", s) for n, s in self.services.items()),
        ]

    @property
    def ready(self) -> bool:
        """Every component ready: orchestrators restored, services assigned partitions."""
        return all(c.ready for c in self.components)

    async def wait_ready(self) -> None:
        for component in self.components:
            await component.role.wait_ready()

    def instance(self, saga_id: str) -> SagaInstance | None:
        """A saga's instance, if one of this process's orchestrators holds it."""
        for orchestrator in self.orchestrators.values():
            found = orchestrator.instance(saga_id)
            if found is not None:
                return found
        return None

    async def ensure_topics(self) -> None:
        for orchestrator in self.orchestrators.values():
            await orchestrator.ensure_topics()
        for service in self.services.values():
            await service.ensure_topics(self.transport)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run every chosen component until cancelled; started once all have joined.

        What `App.check` finds about the sagas run here is logged as warnings first."""
        if self.orchestrators:
            for problem in self.app.check(self.orchestrators):
                log.warning("%s", problem)
        await self.ensure_topics()
        async with anyio.create_task_group() as tg:
            for orchestrator in self.orchestrators.values():
                await tg.start(orchestrator.run)
            for service in self.services.values():
                await tg.start(service.run, self.transport)
            task_status.started()

"""sagakit: sagas over Kafka for asyncio, orchestrated or choreographed."""

from ._app import App, AppRunner
from ._client import SagaClient
from ._clock import Clock, SystemClock
from ._codec import Codec, Incoming, JsonCodec
from ._definition import (
    ForEach,
    Parallel,
    RetryPolicy,
    Saga,
    SagaInfo,
    Step,
    SubSaga,
    Switch,
    WaitFor,
)
from ._errors import (
    BrokerError,
    BusinessFailure,
    DecodeError,
    DefinitionError,
    PartitionsLost,
    SagaError,
    TopicMismatch,
    TransportError,
)
from ._evaluator import (
    Decision,
    PendingCommand,
    Phase,
    SagaInstance,
    SagaStatus,
    Transition,
    decide,
    evolve,
    replay,
)
from ._failure_reply import HandlerFailed
from ._idempotency import IdempotencyStore, MemoryStore, SqliteStore, StoredReply
from ._interceptors import Interceptor, Scope
from ._messages import Command, Envelope, Event, Header, Message, Reply, StartSaga
from ._orchestrator import Orchestrator
from ._participant import HandlerContext, Service
from ._postgres import PostgresStore
from ._projector import Projector
from ._readmodel import SagaRow, TimelineRow
from ._readstore import PostgresReadStore, ReadStore, SagaQuery, SqliteReadStore, open_read_model
from ._snapshots import History
from .eventlog import EventLog, KafkaEventLog, MemoryEventLog
from .scenario import Ended, Scenario, Start, World
from .transport import (
    KafkaSettings,
    KafkaTransport,
    MemoryBroker,
    MemoryTransport,
    OutgoingRecord,
    Record,
    TopicPartition,
    Transport,
)

__version__ = "0.1.0"

__all__ = (
    "App",
    "AppRunner",
    "BrokerError",
    "BusinessFailure",
    "Clock",
    "Codec",
    "Command",
    "Decision",
    "DecodeError",
    "DefinitionError",
    "Ended",
    "Envelope",
    "Event",
    "EventLog",
    "ForEach",
    "HandlerContext",
    "HandlerFailed",
    "Header",
    "History",
    "IdempotencyStore",
    "Incoming",
    "Interceptor",
    "JsonCodec",
    "KafkaEventLog",
    "KafkaSettings",
    "KafkaTransport",
    "MemoryBroker",
    "MemoryEventLog",
    "MemoryStore",
    "MemoryTransport",
    "Message",
    "Orchestrator",
    "OutgoingRecord",
    "Parallel",
    "PartitionsLost",
    "PendingCommand",
    "Phase",
    "PostgresReadStore",
    "PostgresStore",
    "Projector",
    "ReadStore",
    "Record",
    "Reply",
    "RetryPolicy",
    "Saga",
    "SagaClient",
    "SagaError",
    "SagaInfo",
    "SagaInstance",
    "SagaQuery",
    "SagaRow",
    "SagaStatus",
    "Scenario",
    "Scope",
    "Service",
    "SqliteReadStore",
    "SqliteStore",
    "Start",
    "StartSaga",
    "Step",
    "StoredReply",
    "SubSaga",
    "Switch",
    "SystemClock",
    "TimelineRow",
    "TopicMismatch",
    "TopicPartition",
    "Transition",
    "Transport",
    "TransportError",
    "WaitFor",
    "World",
    "decide",
    "evolve",
    "open_read_model",
    "replay",
)

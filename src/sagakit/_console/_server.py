"""The console's pages and actions, served by the process's HTTP server (`_http`).

Pages read the read model only; actions send a person's request to the saga's inbox
(with who and why, journaled as the transition's actor and note) or replay dead letters,
after checking the role, the CSRF token and what the saga's definition would say.
"""

from __future__ import annotations

import datetime
import logging
import math
import secrets
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import jinja2
import orjson
from aiohttp import web
from anyio.abc import TaskStatus
from pydantic import ValidationError

from .._app import App
from .._client import SagaClient
from .._describe import mermaid_at
from .._errors import SagaError
from .._evaluator import SagaStatus, evolve
from .._inspect import replay_dead_letters
from .._messages import CancelSaga, Message, ResolveSaga, ResumeSaga, registered
from .._metrics import Metrics
from .._operations import refusal
from .._projector import Projector
from .._readmodel import SagaRow, row_json
from .._readstore import AuditEntry, ReadStore, SagaQuery, now_ms
from ..transport._base import Transport
from ._auth import COOKIE, Auth, Identity, Role

log = logging.getLogger("sagakit.console")

HERE = Path(__file__).parent
STATIC = HERE / "static"
PAGE_SIZE = 50
#: a running saga older than this many times its type's p99 counts as running too long
TOO_LONG_FACTOR = 3.0
#: how often a type's p99 duration is read again from the read model
P99_EVERY_MS = 30_000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class ConsoleSettings:
    """How the console runs (each from the environment in `sagakit run`)."""

    read_model: str = "sqlite:///sagakit-console.db"
    jaeger_url: str | None = None
    #: finished sagas older than this are forgotten by the read model (0: never)
    retention_days: float = 30.0
    auth: Auth = field(default_factory=Auth)


def _when(ms: int | None) -> str:
    if ms is None:
        return ""
    stamp = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return stamp.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _clock(ms: int) -> str:
    """The time of day (UTC) to the millisecond: a timeline's column."""
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%H:%M:%S.%f")[:-3]


def _ago(ms: int | None) -> str:
    if ms is None:
        return ""
    s = max(0, (now_ms() - ms) / 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s / size:.0f} {unit} ago"
    return f"{s:.0f} s ago"


def _ms_of(value: str) -> int | None:
    """A date or date-time from a form (UTC), as ms; None if empty or not one."""
    if not value:
        return None
    try:
        stamp = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.UTC)
    return round(stamp.timestamp() * 1000)


class Console:
    """The web console of one app: its projector and its pages."""

    def __init__(
        self,
        app: App,
        transport: Transport,
        store: ReadStore,
        settings: ConsoleSettings,
        *,
        namespace: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.app = app
        self.transport = transport
        self.store = store
        self.settings = settings
        self.auth = settings.auth
        self.namespace = app.namespace if namespace is None else namespace
        self.metrics = metrics if metrics is not None else Metrics("console")
        self.projector = Projector(
            transport,
            store,
            namespace=self.namespace,
            sagas=[v for s in app.sagas for v in app.versions(s.name)],
            metrics=self.metrics,
        )
        self.client = SagaClient(transport, namespace=self.namespace)
        self._p99: dict[str, tuple[int, int | None]] = {}
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.env.filters["when"] = _when
        self.env.filters["ago"] = _ago
        self.env.filters["clock"] = _clock
        self.env.globals["Role"] = Role

    @property
    def ready(self) -> bool:
        return self.projector.ready

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Follow the journals into the read model (and prune it) until cancelled."""
        async with anyio.create_task_group() as tg:
            await tg.start(self.projector.run)
            if self.settings.retention_days > 0:
                tg.start_soon(self._prune)
            task_status.started()

    async def _prune(self) -> None:
        while True:
            cutoff = now_ms() - round(self.settings.retention_days * 86_400_000)
            forgotten = await self.store.prune(cutoff)
            if forgotten:
                log.info("read model: forgot %d saga(s) that ended before retention", forgotten)
            await anyio.sleep(3600)

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("GET", "/", self._page(Role.viewer, self.list_page)),
            ("GET", "/fragments/counts", self._page(Role.viewer, self.counts_fragment)),
            ("GET", "/sagas/{saga_type}/{saga_id}", self._page(Role.viewer, self.saga_page)),
            (
                "GET",
                "/fragments/sagas/{saga_type}/{saga_id}",
                self._page(Role.viewer, self.saga_fragment),
            ),
            (
                "POST",
                "/sagas/{saga_type}/{saga_id}/{action}",
                self._action(Role.operator, self.saga_action),
            ),
            ("GET", "/dlq", self._page(Role.viewer, self.dlq_page)),
            ("POST", "/dlq/replay", self._action(Role.admin, self.dlq_replay)),
            ("GET", "/audit", self._page(Role.viewer, self.audit_page)),
            ("GET", "/api/sagas", self._page(Role.viewer, self.api_sagas)),
            ("GET", "/api/sagas/{saga_type}/{saga_id}", self._page(Role.viewer, self.api_saga)),
            ("GET", "/api/counts", self._page(Role.viewer, self.api_counts)),
            ("GET", "/login", self.login_page),
            ("POST", "/login", self.login),
            ("POST", "/logout", self.logout),
            ("GET", "/static/{name}", self.static),
        ]

    # -- plumbing -------------------------------------------------------------------------
    def _render(
        self, name: str, request: web.Request, who: Identity | None, status: int = 200, **kw: Any
    ) -> web.Response:
        body = self.env.get_template(name).render(
            who=who,
            csrf=self.auth.csrf(who) if who is not None else "",
            app_name=self.app.name,
            path=request.path,
            **kw,
        )
        return web.Response(
            text=body, status=status, content_type="text/html", headers=_SECURITY_HEADERS
        )

    def _page(self, role: Role, handler: Callable[..., Awaitable[web.StreamResponse]]) -> Handler:
        async def serve(request: web.Request) -> web.StreamResponse:
            who = self.auth.identify(request)
            if who is None:
                if request.path.startswith(("/api/", "/fragments/")):
                    return web.json_response({"error": "not signed in"}, status=401)
                target = urllib.parse.quote(request.path_qs)
                raise web.HTTPSeeOther(f"/login?next={target}")
            if who.role < role:
                return self._forbidden(request, who, role, "see this page")
            return await handler(request, who)

        return serve

    def _forbidden(
        self, request: web.Request, who: Identity, role: Role, what: str
    ) -> web.Response:
        why = f"{who.name} is a {who.role.name}; to {what} takes the {role.name} role"
        log.warning("console: refused %s %s: %s", request.method, request.path, why)
        if request.path.startswith("/api/"):
            return web.json_response({"error": why}, status=403)
        return self._render("error.html", request, who, status=403, title="Not allowed", why=why)

    def _action(self, role: Role, handler: Callable[..., Awaitable[web.StreamResponse]]) -> Handler:
        async def serve(request: web.Request) -> web.StreamResponse:
            who = self.auth.identify(request)
            if who is None:
                return web.json_response({"error": "not signed in"}, status=401)
            form = await request.post()
            presented = str(form.get("csrf", "")) or request.headers.get("X-CSRF-Token", "")
            if not self.auth.csrf_ok(who, presented):
                return self._render(
                    "error.html",
                    request,
                    who,
                    status=403,
                    title="Form expired",
                    why="the form's CSRF token does not match: reload the page and try again",
                )
            if who.role < role:
                return self._forbidden(request, who, role, "do this")
            return await handler(request, who, form)

        return serve

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = STATIC / name
        if "/" in name or name.startswith(".") or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Cache-Control": "public, max-age=86400"})

    # -- signing in -----------------------------------------------------------------------
    async def login_page(self, request: web.Request) -> web.StreamResponse:
        token = request.query.get("token")
        if token:  # a link printed at start-up
            return self._signed_in(request, token, request.query.get("next", "/"))
        return self._render("login.html", request, None, next=request.query.get("next", "/"))

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        return self._signed_in(request, str(form.get("token", "")), str(form.get("next", "/")))

    def _signed_in(self, request: web.Request, token: str, target: str) -> web.StreamResponse:
        found = self.auth.login(token)
        if found is None:
            return self._render(
                "login.html", request, None, status=401, next=target, error="unknown token"
            )
        if not target.startswith("/") or target.startswith("//"):
            target = "/"  # never away from the console
        response = web.HTTPSeeOther(target)
        secure = request.secure or request.headers.get("X-Forwarded-Proto") == "https"
        response.set_cookie(
            COOKIE, token.strip(), httponly=True, samesite="Strict", secure=secure, path="/"
        )
        raise response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        response = web.HTTPSeeOther("/login")
        response.del_cookie(COOKIE, path="/")
        raise response

    # -- the list ---------------------------------------------------------------------------
    def _query(self, request: web.Request) -> SagaQuery:
        q = request.query
        status = q.get("status") or None
        fields: list[tuple[str, str]] = []
        for item in q.getall("field", []):
            name, sep, value = item.partition("=")
            if sep and name:
                fields.append((name.strip(), value.strip()))
        try:
            page = max(1, int(q.get("page", "1")))
            version = int(q["version"]) if q.get("version") else None
            parsed = SagaStatus(status) if status else None
        except ValueError as exc:
            raise web.HTTPBadRequest(text=f"bad filter: {exc}") from None
        return SagaQuery(
            saga_type=q.get("type") or None,
            version=version,
            status=parsed,
            started_from_ms=_ms_of(q.get("from", "")),
            started_before_ms=_ms_of(q.get("to", "")),
            id_prefix=q.get("id") or None,
            fields=tuple(fields),
            limit=PAGE_SIZE,
            offset=(page - 1) * PAGE_SIZE,
        )

    async def _p99_ms(self, saga_type: str) -> int | None:
        """The p99 duration of a type's latest ended sagas (None: too few to say), read at
        most every P99_EVERY_MS: the live counts ask for it every few seconds."""
        at, p99 = self._p99.get(saga_type, (0, None))
        if now_ms() - at >= P99_EVERY_MS:
            durations = await self.store.durations(saga_type)
            p99 = None
            if len(durations) >= 20:
                p99 = durations[min(len(durations) - 1, math.ceil(0.99 * len(durations)) - 1)]
            self._p99[saga_type] = (now_ms(), p99)
        return p99

    async def _alerts(self, counts: dict[str, dict[SagaStatus, int]]) -> dict[str, Any]:
        """The counts the alert rules (deploy/prometheus-rules.yaml) watch, from here."""
        parked = sum(c.get(SagaStatus.FAILED_NEEDS_ATTENTION, 0) for c in counts.values())
        too_long = 0
        for saga_type in counts:
            p99 = await self._p99_ms(saga_type)
            if p99 is None:
                continue
            too_long += await self.store.running_since(
                saga_type, now_ms() - round(TOO_LONG_FACTOR * max(p99, 1000))
            )
        letters = await self.store.letter_counts()
        recent = await self.store.letters_since(now_ms() - 3_600_000)
        return {
            "parked": parked,
            "too_long": too_long,
            "too_long_factor": TOO_LONG_FACTOR,
            "dead_letters": sum(letters.values()),
            "dead_letters_hour": recent,
            "lag": await self.projector.lag(),
        }

    async def _counts(self) -> dict[str, Any]:
        by_type = await self.store.counts()
        totals = dict.fromkeys(SagaStatus, 0)
        for counts in by_type.values():
            for status, n in counts.items():
                totals[status] += n
        return {"by_type": by_type, "totals": totals, "alerts": await self._alerts(by_type)}

    async def list_page(self, request: web.Request, who: Identity) -> web.StreamResponse:
        query = self._query(request)
        rows, total = await self.store.sagas(query)
        page = query.offset // PAGE_SIZE + 1
        pages = max(1, math.ceil(total / PAGE_SIZE))
        params = [(k, v) for k, v in request.query.items() if k != "page"]
        return self._render(
            "list.html",
            request,
            who,
            rows=rows,
            total=total,
            page=page,
            pages=pages,
            q=request.query,
            fields="\n".join(request.query.getall("field", [])),
            statuses=list(SagaStatus),
            types=sorted(s.name for s in self.app.sagas),
            page_link=lambda n: "/?" + urllib.parse.urlencode([*params, ("page", str(n))]),
            **await self._counts(),
        )

    async def counts_fragment(self, request: web.Request, who: Identity) -> web.StreamResponse:
        return self._render("counts.html", request, who, **await self._counts())

    # -- one saga ---------------------------------------------------------------------------
    async def _saga(self, request: web.Request) -> SagaRow:
        found = await self.store.find(
            request.match_info["saga_id"], request.match_info["saga_type"]
        )
        if not found:
            raise web.HTTPNotFound(text="no such saga in the read model")
        return found[0]

    def _definition(self, row: SagaRow) -> Any:
        if row.saga_type not in {s.name for s in self.app.sagas}:
            return None
        return next((v for v in self.app.versions(row.saga_type) if v.version == row.version), None)

    def _signals(self, row: SagaRow, definition: Any) -> list[dict[str, Any]]:
        """The signals the waits the saga is at take, each with a form skeleton."""
        if definition is None:
            return []
        found = []
        for wait in definition.waits():
            if wait.name not in row.waits:
                continue
            for kind, outcome in [(k, "approve") for k in wait.events] + [
                (k, "decline") for k in wait.failures
            ]:
                required = {n: "" for n, f in kind.model_fields.items() if f.is_required()}
                found.append(
                    {
                        "wait": wait.name,
                        "type": kind.message_type,
                        "label": kind.__name__,
                        "outcome": outcome,
                        "data": orjson.dumps(required).decode(),
                    }
                )
        return found

    async def _saga_context(self, request: web.Request, row: SagaRow) -> dict[str, Any]:
        timeline = await self.store.timeline(row)
        entries = []
        before = None
        for t in timeline:
            tr = t.transition()
            old = {p.message_id for p in before.in_flight} if before is not None else set()
            sent = [
                f"{p.command_type} → {p.topic}" for p in tr.in_flight if p.message_id not in old
            ]
            entries.append({"row": t, "sent": sent, "failure": tr.failure})
            before = tr
        jaeger = self.settings.jaeger_url
        return {
            "saga": row,
            "timeline": entries,
            "trace_url": f"{jaeger.rstrip('/')}/trace/{row.trace_id}"
            if jaeger and row.trace_id
            else None,
            "terminal": row.status.terminal,
            "parked": row.status is SagaStatus.FAILED_NEEDS_ATTENTION,
        }

    async def saga_page(self, request: web.Request, who: Identity) -> web.StreamResponse:
        row = await self._saga(request)
        return await self._saga_response(request, who, row)

    async def _saga_response(
        self, request: web.Request, who: Identity, row: SagaRow, status: int = 200, **kw: Any
    ) -> web.Response:
        definition = self._definition(row)
        diagram = mermaid_at(definition, row.transition()) if definition is not None else None
        return self._render(
            "saga.html",
            request,
            who,
            status=status,
            diagram=diagram,
            signals=self._signals(row, definition),
            sent=request.query.get("sent"),
            **kw,
            **await self._saga_context(request, row),
        )

    async def saga_fragment(self, request: web.Request, who: Identity) -> web.StreamResponse:
        """Nothing (204) while the saga is as the page shows it (`seq`); once it has
        changed, the whole page again (its actions and its diagram change too)."""
        row = await self._saga(request)
        if request.query.get("seq") == str(row.seq):
            return web.Response(status=204)
        return web.Response(status=200, headers={"HX-Refresh": "true"})

    async def saga_action(
        self, request: web.Request, who: Identity, form: Any
    ) -> web.StreamResponse:
        row = await self._saga(request)
        action = request.match_info["action"]
        note = str(form.get("note", "")).strip()
        if not note:
            return await self._saga_response(
                request, who, row, status=400, error=f"{action}: say why in the note"
            )
        request_message: Message
        if action == "resume":
            request_message = ResumeSaga(note=note)
        elif action == "resolve":
            request_message = ResolveSaga(note=note)
        elif action == "cancel":
            request_message = CancelSaga(reason=note)
        elif action == "signal":
            model = registered(str(form.get("type", "")))
            if model is None:
                return await self._saga_response(
                    request, who, row, status=400, error="signal: unknown message type"
                )
            try:
                request_message = model.model_validate(orjson.loads(str(form.get("data") or "{}")))
            except (orjson.JSONDecodeError, ValidationError) as exc:
                return await self._saga_response(
                    request, who, row, status=400, error=f"signal: not a {model.__name__}: {exc}"
                )
        else:
            raise web.HTTPNotFound(text=f"no action {action!r}")
        instance = evolve(None, row.transition())
        refused = refusal(self._definition(row), instance, request_message)
        if refused is not None:
            await self._audit(who, action, row, note, f"refused: {refused}")
            return await self._saga_response(request, who, row, status=409, error=refused)
        try:
            await self.client.transport.send(
                [
                    self.client.operator_record(
                        row.saga_type,
                        row.saga_id,
                        request_message,
                        actor=who.name,
                        note=note if action == "signal" else None,
                    )
                ]
            )
        except SagaError as exc:
            return await self._saga_response(
                request, who, row, status=503, error=f"{action}: not sent: {exc}"
            )
        await self._audit(who, action, row, note, "sent")
        target = f"/sagas/{urllib.parse.quote(row.saga_type)}/{urllib.parse.quote(row.saga_id)}"
        raise web.HTTPSeeOther(f"{target}?sent={urllib.parse.quote(action)}")

    async def _audit(
        self, who: Identity, action: str, row: SagaRow, note: str, outcome: str
    ) -> None:
        await self.store.audit(
            AuditEntry(
                at_ms=now_ms(),
                actor=who.name,
                role=who.role.name,
                action=action,
                target=f"{row.saga_type}/{row.saga_id}",
                note=note,
                outcome=outcome,
            )
        )

    # -- dead letters -----------------------------------------------------------------------
    async def dlq_page(self, request: web.Request, who: Identity) -> web.StreamResponse:
        topic = request.query.get("topic") or None
        try:
            page = max(1, int(request.query.get("page", "1")))
        except ValueError:
            page = 1
        letters, total = await self.store.letters(
            topic, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE
        )
        return self._render(
            "dlq.html",
            request,
            who,
            letters=letters,
            total=total,
            topic=topic,
            topics=await self.store.letter_counts(),
            page=page,
            pages=max(1, math.ceil(total / PAGE_SIZE)),
            message=request.query.get("replayed"),
        )

    async def dlq_replay(
        self, request: web.Request, who: Identity, form: Any
    ) -> web.StreamResponse:
        topic = str(form.get("topic", ""))
        message_id = str(form.get("message_id", ""))
        note = str(form.get("note", "")).strip()
        if not topic or not message_id or not note:
            raise web.HTTPBadRequest(text="replay: give the topic, the message id and a note")
        letters, _ = await self.store.letters(topic, limit=10_000)
        chosen = [d for d in letters if d.message_id == message_id]
        outcome = await replay_dead_letters(
            self.transport,
            topic,
            [message_id],
            allowed=self.app.consumed_topics(self.namespace),
        )
        if outcome.replayed:
            await self.store.mark_replayed(chosen, who.name, now_ms())
        result = (
            f"replayed {len(outcome.replayed)}"
            if not outcome.refused
            else "refused: " + "; ".join(why for _, why in outcome.refused)
        )
        await self.store.audit(
            AuditEntry(
                now_ms(),
                who.name,
                who.role.name,
                "dlq-replay",
                f"{topic}/{message_id}",
                note,
                result,
            )
        )
        query = urllib.parse.urlencode({"topic": topic, "replayed": result})
        raise web.HTTPSeeOther(f"/dlq?{query}")

    async def audit_page(self, request: web.Request, who: Identity) -> web.StreamResponse:
        return self._render("audit.html", request, who, entries=await self.store.audit_log(200))

    # -- JSON, for scripts ----------------------------------------------------------------
    async def api_sagas(self, request: web.Request, who: Identity) -> web.StreamResponse:
        rows, total = await self.store.sagas(self._query(request))
        return web.json_response({"total": total, "sagas": [row_json(r) for r in rows]})

    async def api_saga(self, request: web.Request, who: Identity) -> web.StreamResponse:
        row = await self._saga(request)
        timeline = [orjson.loads(t.data) for t in await self.store.timeline(row)]
        return web.json_response({**row_json(row), "timeline": timeline})

    async def api_counts(self, request: web.Request, who: Identity) -> web.StreamResponse:
        counts = await self._counts()
        return web.json_response(
            {
                "by_type": {
                    t: {s.value: n for s, n in c.items()} for t, c in counts["by_type"].items()
                },
                "alerts": counts["alerts"],
            }
        )


_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; "
    "form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def new_admin_token() -> str:
    return secrets.token_urlsafe(24)

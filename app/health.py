"""``GET /healthz``: whether this app process (one replica) can take traffic, for a load balancer.

Why a route of our own beside Gradio's: a balancer needs a cheap, unauthenticated probe whose status code
says "send users here" (200) or "take me out of rotation" (503). Gradio's pages need a login when
``ECHO_AUTH`` is set and say nothing about the database.

What it checks, and what makes it 503:

* the database answers a ``SELECT 1`` (``database unreachable`` otherwise);
* the schema revision the database carries is the one this release expects (``schema mismatch``
  otherwise), where the store reports revisions.

What it reports but does not fail on: whether a model is loaded (models load on the first draft, so a
freshly started replica is ready before its first draft), and the admission counts. Admission is counted
**per replica**: each process has its own :class:`~app.admission.GenerationGate` for its own device, so
``drafting`` and ``waiting`` are this process's, not the cluster's.

No patient data, user name, database URL or host of the database is in the answer: only states, counts,
revisions and the replica id (``ECHO_REPLICA_ID``, default ``<host name>:<process id>``).
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import inspect, text

if TYPE_CHECKING:
    from fastapi.routing import APIRoute

    from .service import Services
    from .store import Store

__all__ = ["HEALTH_PATH", "Health", "check_health", "health_routes", "replica_id", "schema_revisions"]

HEALTH_PATH = "/healthz"
#: Table in which Alembic records the revision a database is at.
_REVISION_TABLE = "alembic_version"


def replica_id() -> str:
    """This process's name in the health answer and the logs: ``ECHO_REPLICA_ID`` or ``<host>:<pid>``."""
    return os.environ.get("ECHO_REPLICA_ID", "").strip() or f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Admission:
    """This replica's drafting admission (:class:`~app.admission.GenerationGate`), counted per replica."""

    counts: str
    drafting: int
    waiting: int
    capacity: int
    max_waiting: int


@dataclass(frozen=True)
class Health:
    """The answer of ``GET /healthz`` (HTTP 200 when ``ready``, 503 with ``reasons`` otherwise)."""

    ready: bool
    reasons: list[str]
    replica: str
    database: str  # "reachable" / "unreachable"
    database_kind: str  # the SQLAlchemy dialect: "sqlite", "postgresql"
    schema_expected: str | None
    schema_found: str | None
    models_loaded: list[str]
    models_configured: list[str]
    admission: Admission
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def status_code(self) -> int:
        return 200 if self.ready else 503

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _store_lock(store: Store) -> contextlib.AbstractContextManager[Any]:
    # A store on one shared SQLite connection serialises every use of it with its lock; returning a pooled
    # connection rolls it back, so the probe must not run inside another request's transaction.
    return getattr(store, "_lock", None) or contextlib.nullcontext()


def schema_revisions(store: Store) -> tuple[str | None, str | None]:
    """(expected, found) schema revisions; ``None`` where the store or database does not record one.

    ``expected``: what this release's migrations lead to (``Store.expected_revision()`` where the store
    has migrations); ``found``: the revision recorded in the database's ``alembic_version`` table.
    """
    expected_of = getattr(store, "expected_revision", None)
    expected = expected_of() if callable(expected_of) else None
    with _store_lock(store), store.engine.connect() as conn:
        if not inspect(conn).has_table(_REVISION_TABLE):
            return expected, None
        found = conn.execute(text(f"SELECT version_num FROM {_REVISION_TABLE}")).scalars().all()
    return expected, ",".join(sorted(found)) or None


def _ping(store: Store) -> None:
    with _store_lock(store), store.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def check_health(services: Services) -> Health:
    """Probe the database and read this replica's state; never raises for a database that is down."""
    store = services.store
    reasons: list[str] = []
    expected = found = None
    try:
        _ping(store)
        database = "reachable"
    except Exception as err:  # noqa: BLE001  (any driver error means "not reachable"; its text may hold the URL)
        database = "unreachable"
        reasons.append(f"database unreachable ({type(err).__name__})")
    if database == "reachable":
        try:
            expected, found = schema_revisions(store)
        except Exception as err:  # noqa: BLE001
            reasons.append(f"schema revision unreadable ({type(err).__name__})")
        if expected is not None and found != expected:
            reasons.append(f"schema mismatch: database at {found or 'no revision'}, this release expects "
                           f"{expected}; run `echo-app db upgrade`")
    gate = services.gate
    return Health(
        ready=not reasons, reasons=reasons, replica=replica_id(), database=database,
        database_kind=store.engine.dialect.name, schema_expected=expected, schema_found=found,
        models_loaded=services.drafting.loaded_models(), models_configured=list(services.settings.models),
        admission=Admission(counts="per replica", drafting=gate.running_rows, waiting=gate.waiting,
                            capacity=gate.capacity, max_waiting=gate.max_waiting),
    )


def health_routes(services: Services) -> list[APIRoute]:
    """The ``/healthz`` route, for ``demo.launch(app_kwargs={"routes": ...})`` (no login: it shows no PHI)."""
    from fastapi.responses import JSONResponse
    from fastapi.routing import APIRoute
    from starlette.concurrency import run_in_threadpool

    async def healthz() -> JSONResponse:
        health = await run_in_threadpool(check_health, services)  # the database probe blocks
        return JSONResponse(health.as_json(), status_code=health.status_code,
                            headers={"Cache-Control": "no-store"})

    return [APIRoute(HEALTH_PATH, healthz, methods=["GET", "HEAD"], include_in_schema=False)]

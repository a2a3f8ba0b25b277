"""``GET /healthz``: whether this app process (one replica) can take traffic, for a load balancer.

Why a route of our own beside Gradio's: a balancer needs a cheap, unauthenticated probe whose status code
says "send users here" (200) or "take me out of rotation" (503). Gradio's pages need a login when
``ECHO_AUTH`` is set and say nothing about the database.

What it checks, and what makes it 503:

* the database answers (``database unreachable`` otherwise): the probe reads its schema revision;
* that revision is the one this release expects (``schema mismatch`` otherwise, e.g. a database upgraded
  for a newer release while this replica still runs the old one).

What it reports but does not fail on: whether a model is loaded (models load on the first draft, so a
freshly started replica is ready before its first draft), and the admission counts. Admission is counted
**per replica**: each process has its own :class:`~app.admission.GenerationGate` for its own device, so
``drafting`` and ``waiting`` are this process's, not the cluster's.

No patient data, user name, database URL or host of the database is in the answer: only states, counts,
revisions and the replica id (``ECHO_REPLICA_ID``, default ``<host name>:<process id>``).
"""

from __future__ import annotations

import os
import socket
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi.routing import APIRoute

    from .service import Services
    from .store import Store

__all__ = ["HEALTH_PATH", "Health", "check_health", "health_routes", "replica_id", "schema_revisions"]

HEALTH_PATH = "/healthz"


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


def schema_revisions(store: Store) -> tuple[str, str | None]:
    """(expected, found): the revision this release's migrations lead to, and the one the database records
    (``None``: none recorded). Reaches the database, so it raises when the database cannot be reached."""
    return store.expected_revision, store.schema_revision()


def check_health(services: Services) -> Health:
    """Probe the database and read this replica's state; never raises for a database that is down."""
    store = services.store
    reasons: list[str] = []
    expected: str | None = None
    found: str | None = None
    try:
        expected, found = schema_revisions(store)
        database = "reachable"
    except Exception as err:  # noqa: BLE001  (any driver error means "not reachable"; its text may hold the URL)
        database = "unreachable"
        reasons.append(f"database unreachable ({type(err).__name__})")
    if database == "reachable" and found != expected:
        reasons.append(f"schema mismatch: database at {found or 'no revision'}, this release expects {expected}; "
                       "run `echo-app db upgrade` with this release, or run the release the database is at")
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

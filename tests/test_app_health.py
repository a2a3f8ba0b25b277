"""``GET /healthz``: a load balancer's probe, served without login, 200 when ready and 503 with the reason."""

from __future__ import annotations

import contextlib
import sqlite3
import sys
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine

from app.health import HEALTH_PATH, health_routes
from app.main import build_demo, launch_options
from app.service import Services
from app.settings import AppSettings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from app_process import free_port
from crash_test import seed_drafts

pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")
PHI_TEXT = "DOE^JOHN 1961-04-02"


def serve(settings: AppSettings) -> tuple[str, Services, object]:
    """The app as ``echo-app`` serves it: the demo and its health route on one server."""
    services = Services.create(settings)
    demo = build_demo(settings, services=services)
    options = {**launch_options(settings), "app_kwargs": {"routes": health_routes(services)}}
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **options)
    return url.rstrip("/"), services, demo


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("health")
    settings = AppSettings(data_dir=root / "data", auth="alice:pw-a", queue_size=3, max_batch=2,
                           server_name="127.0.0.1", server_port=free_port(), upload_cache_dir=root / "cache")
    url, services, demo = serve(settings)
    ((_, draft_id),) = seed_drafts(settings.data_dir, ["alice"])
    services.store.save_edit(draft_id, "alice", findings=f"Patient {PHI_TEXT}: lungs clear.", impression="Normal.")
    try:
        yield url, services
    finally:
        demo.close()  # type: ignore[attr-defined]


def test_ready_replica_answers_200_without_login_and_shows_no_patient_data(served) -> None:
    url, services = served
    assert httpx.get(f"{url}/config").status_code == 401  # the app itself needs a login
    response = httpx.get(f"{url}{HEALTH_PATH}")
    assert response.status_code == 200
    body = response.json()
    assert body["ready"] is True and body["reasons"] == []
    assert (body["database"], body["database_kind"]) == ("reachable", "sqlite")
    assert body["schema_found"] == body["schema_expected"] == services.store.expected_revision
    assert body["models_loaded"] == [] and body["models_configured"] == ["embedded"]  # loads on the first draft
    assert body["admission"] == {"counts": "per replica", "drafting": 0, "waiting": 0, "capacity": 2,
                                 "max_waiting": 3}
    assert body["replica"]
    for secret in (PHI_TEXT, "alice", "pw-a", str(services.settings.data_dir)):
        assert secret not in response.text
    assert response.headers["cache-control"] == "no-store"
    assert httpx.head(f"{url}{HEALTH_PATH}").status_code == 200


def test_admission_counts_are_this_replicas_gate(served) -> None:
    url, services = served
    with services.gate.admitted(shared=True):
        body = httpx.get(f"{url}{HEALTH_PATH}").json()
    assert body["admission"]["drafting"] == 1
    assert httpx.get(f"{url}{HEALTH_PATH}").json()["admission"]["drafting"] == 0


def test_unreachable_database_answers_503_with_the_reason(served, tmp_path: Path) -> None:
    url, services = served
    dead = create_engine(f"sqlite:///{tmp_path / 'no-such-folder' / 'echo.sqlite'}")  # cannot be opened
    patch = pytest.MonkeyPatch()
    patch.setattr(services.store, "engine", dead)
    try:
        response = httpx.get(f"{url}{HEALTH_PATH}")
    finally:
        patch.undo()
        dead.dispose()
    assert response.status_code == 503
    body = response.json()
    assert body["ready"] is False and body["database"] == "unreachable"
    assert body["reasons"] == ["database unreachable (OperationalError)"]
    assert str(tmp_path) not in response.text
    assert httpx.get(f"{url}{HEALTH_PATH}").status_code == 200  # back once the database is


def test_schema_other_than_the_release_expects_answers_503(served) -> None:
    url, services = served
    db = services.settings.data_dir / "echo.sqlite"
    expected = services.store.expected_revision
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:  # as if an older release's store were opened
        conn.execute("UPDATE alembic_version SET version_num = '0001'")
    try:
        response = httpx.get(f"{url}{HEALTH_PATH}")
    finally:
        with contextlib.closing(sqlite3.connect(db)) as conn, conn:
            conn.execute("UPDATE alembic_version SET version_num = ?", (expected,))
    assert response.status_code == 503
    body = response.json()
    assert (body["schema_expected"], body["schema_found"]) == (expected, "0001")
    (reason,) = body["reasons"]
    assert reason.startswith(f"schema mismatch: database at 0001, this release expects {expected}")
    assert "echo-app db upgrade" in reason
    assert httpx.get(f"{url}{HEALTH_PATH}").status_code == 200


def test_postgresql_replica_answers_503_once_the_database_stops(tmp_path: Path) -> None:
    from conftest import pg_unavailable
    from pg_cluster import ClusterUnavailable, start_cluster

    from app.schema import upgrade

    try:
        cluster = start_cluster()  # its own cluster: this test stops it
    except ClusterUnavailable as err:
        pg_unavailable(str(err))
    demo = None
    try:
        upgrade(cluster.url)  # `echo-app db upgrade`, before any replica starts
        settings = AppSettings(data_dir=tmp_path / "data", database_url=cluster.url, server_name="127.0.0.1",
                               server_port=free_port(), upload_cache_dir=tmp_path / "cache")
        url, services, demo = serve(settings)
        body = httpx.get(f"{url}{HEALTH_PATH}").json()
        assert body["ready"] is True and body["database_kind"] == "postgresql"
        assert body["schema_found"] == body["schema_expected"] == services.store.expected_revision
        cluster.stop()
        response = httpx.get(f"{url}{HEALTH_PATH}", timeout=30)
        assert response.status_code == 503
        assert response.json()["database"] == "unreachable"
        (reason,) = response.json()["reasons"]
        assert reason.startswith("database unreachable")
        assert cluster.password not in response.text and f"127.0.0.1:{cluster.port}" not in response.text
    finally:
        if demo is not None:
            demo.close()  # type: ignore[attr-defined]
        cluster.stop()


@pytest.mark.slow  # a child-process server: about 10-20 s on 2 CPUs
def test_echo_app_serves_healthz_beside_the_app(tmp_path: Path) -> None:
    from app_process import start_app

    with start_app(tmp_path / "server", auth="alice:pw-a", replica_id="draft-1") as app:
        response = httpx.get(f"{app.url}{HEALTH_PATH}", timeout=30)
        assert httpx.get(f"{app.url}/config", timeout=30).status_code == 401
    assert response.status_code == 200
    assert response.json()["replica"] == "draft-1" and response.json()["ready"] is True

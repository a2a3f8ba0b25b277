"""Two app servers (replicas) on one database: a request that reaches the wrong one gets words, not a crash.

Gradio keeps uploads and session state in the process that received them, so a load balancer must keep a
browser on one replica (sticky sessions, docs/deploy.md). These tests show what happens when it does not:
an event naming an upload that went to the other replica is refused with a message that says so and what
to do; an event of a session this replica never saw works from the database, which both share.

Here both replicas run in this test process on one SQLite folder (a stand-in for the shared database); the
upload "from the other machine" is the path its upload cache gives, which does not exist on this one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from gradio_client import Client

from app.main import build_demo, launch_options
from app.service import Services
from app.settings import AppSettings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from app_process import free_port
from crash_test import seed_drafts

pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")
OTHER_SERVER = "not on this app server"


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    root = tmp_path_factory.mktemp("replicas")
    demos, urls = [], []
    for name in ("a", "b"):
        settings = AppSettings(data_dir=root / "data", server_name="127.0.0.1", server_port=free_port(),
                               upload_cache_dir=root / f"cache-{name}")
        demo = build_demo(settings, services=Services.create(settings))
        _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **launch_options(settings))
        demos.append(demo)
        urls.append(url.rstrip("/"))
    ((_, draft_id),) = seed_drafts(root / "data", ["local"])
    try:
        yield urls, draft_id, root
    finally:
        for demo in demos:
            demo.close()


def _call(url: str, api_name: str, data: list[Any]) -> tuple[str, Any]:
    """POST one event the way any HTTP client does; ("complete", outputs) or ("error", message)."""
    event = httpx.post(f"{url}/gradio_api/call/{api_name}", json={"data": data}, timeout=30).json()["event_id"]
    kind, payload = "", None
    with httpx.stream("GET", f"{url}/gradio_api/call/{api_name}/{event}", timeout=60) as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: ") and kind in ("complete", "error"):
                payload = json.loads(line.removeprefix("data: "))
    return kind, payload


def _foreign_upload(root: Path) -> dict[str, Any]:
    """What the browser sends after uploading to another machine: a path of that machine's upload cache."""
    path = root / "gradio-cache" / ("9" * 64) / "frontal.png"
    return {"path": str(path), "orig_name": "frontal.png", "meta": {"_type": "gradio.FileData"}}


@pytest.mark.parametrize(("api_name", "extra"), [("upload_views", [""]),
                                                  ("generate", ["", "en", "embedded", "echo", 16, 0, 0.85, 0, ""])])
def test_upload_received_by_the_other_replica_is_refused_in_words(replicas, monkeypatch, api_name, extra) -> None:
    (_, url_b), _, root = replicas
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(root / "gradio-cache"))  # the same cache folder on every machine
    kind, payload = _call(url_b, api_name, [[_foreign_upload(root)], *extra])
    assert kind == "error"
    message = payload["error"]
    assert OTHER_SERVER in message and "'frontal.png'" in message
    assert "Reload the page" in message and "sticky sessions" in message
    assert str(root) not in message  # the file's name, not where the server keeps it


def test_session_the_replica_never_saw_works_from_the_shared_database(replicas) -> None:
    (url_a, url_b), draft_id, _ = replicas
    saved = Client(url_a, verbose=False).predict(draft_id, "Saved on A.", "Normal.", [], "", api_name="/save_edit")
    assert saved[0].startswith("Saved version 1")
    # A new client is a session replica B has never seen: its save, based on A's version, goes through.
    client_b = Client(url_b, verbose=False)
    kind, payload = _call(url_b, "save_edit", [draft_id, "Saved on B.", "Normal.", [], "", 1, None])
    assert kind == "complete" and payload[0].startswith("Saved version 2")
    # A save based on the version A saw (1) is now stale on either replica, refused in words.
    kind, payload = _call(url_a, "save_edit", [draft_id, "Stale.", "Normal.", [], "", 1, None])
    assert kind == "error" and "version" in payload["error"]
    signed = client_b.predict(draft_id, "Signed on B.", "Normal.", [], "", api_name="/sign")[0]
    assert "Signed" in signed
    history_a = Client(url_a, verbose=False).predict(api_name="/history")
    assert any(draft_id in json.dumps(row) for row in history_a["data"])

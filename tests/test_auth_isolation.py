"""Auth: with ECHO_AUTH set nobody unauthenticated gets in, each user sees, changes and
exports only their own work, edits carry the user, and nothing user-controlled steers an export's file name.

The app is served in-process on loopback with three users and drafts seeded through the store, so no model
is loaded: every refusal below happens before a model would be needed.
"""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import free_port
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from app.export import parse_day
from app.main import build_demo, launch_options
from app.service import Services
from app.settings import AppSettings
from app.store import NewDraft, NewImage
from echo_model.imaging import load_image, to_deidentified_png
from echo_model.imaging.synthetic import phantom_cxr
from echo_model.data import load_dataset

pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")
USERS = {"alice": "pw-alice", "bob": "pw-bob", "../../mallory": "pw-mallory"}  # a path-like login name
F_DRAFT_ID, F_FINDINGS = 9, 1  # positions in the draft outputs (app.handlers.DRAFT_FIELDS)


def _seed(services: Services, owner: str, seed: int) -> tuple[str, str]:
    """A study with one view and one draft owned by ``owner``: (study id, draft id)."""
    import io

    buffer = io.BytesIO()
    phantom_cxr((96, 96), seed=seed).save(buffer, format="PNG")
    loaded = load_image(buffer.getvalue(), name="view 1")
    view = NewImage(content_hash=loaded.content_hash, png=to_deidentified_png(loaded), width=96, height=96)
    study = services.store.create_study(owner, [view])
    draft = services.store.add_draft(NewDraft(
        study_id=study.id, author=owner, model="seeded", model_revision="none", sampler="echo", language="en",
        report=f"Findings: drafted for {owner}. Impression: none.", findings=f"drafted for {owner}.",
        impression="none."))
    return study.id, draft.id


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> Any:
    root = tmp_path_factory.mktemp("auth")
    patch = pytest.MonkeyPatch()
    patch.setattr(tempfile, "tempdir", str(root / "tmp"))  # the export root lives under the server's temp dir
    (root / "tmp").mkdir()
    patch.setenv("GRADIO_TEMP_DIR", str(root / "gradio-cache"))
    settings = AppSettings(data_dir=root / "data", auth=",".join(f"{u}:{p}" for u, p in USERS.items()),
                           server_name="127.0.0.1", server_port=free_port(), upload_cache_dir=root / "gradio-cache")
    services = Services.create(settings)
    seeded = {user: _seed(services, user, seed) for seed, user in enumerate(USERS)}
    demo = build_demo(settings, services=services)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **launch_options(settings))
    try:
        yield {"url": url.rstrip("/"), "services": services, "seeded": seeded, "root": root}
    finally:
        demo.close()
        patch.undo()


@pytest.fixture(scope="module")
def clients(app, tmp_path_factory) -> dict[str, Client]:
    downloads = tmp_path_factory.mktemp("downloads")
    return {user: Client(app["url"], auth=(user, pw), verbose=False, download_files=str(downloads / str(i)))
            for i, (user, pw) in enumerate(USERS.items())}


# ---------------------------------------------------------------------------------------- nobody else gets in
@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/config", None),
    ("GET", "/gradio_api/info", None),
    ("GET", "/gradio_api/openapi.json", None),
    ("POST", "/gradio_api/queue/join", {"data": [], "fn_index": 0, "session_hash": "x"}),
    ("GET", "/gradio_api/queue/data?session_hash=x", None),
    ("POST", "/gradio_api/run/save_edit", {"data": ["d", "a", "b", [], ""]}),
    ("POST", "/gradio_api/call/save_edit", {"data": ["d", "a", "b", [], ""]}),
    ("POST", "/gradio_api/call/history", {"data": []}),
    ("GET", "/gradio_api/call/history/some-event", None),
    ("POST", "/gradio_api/call/export_corrections", {"data": [None, None]}),
    ("POST", "/gradio_api/call/generate", {"data": [None]}),
    ("POST", "/gradio_api/upload", None),
    ("GET", "/gradio_api/file=/etc/hostname", None),
    ("GET", "/monitoring", None),
])
def test_unauthenticated_api_calls_are_refused(app, method: str, path: str, body: Any) -> None:
    response = httpx.request(method, app["url"] + path, json=body, timeout=30)
    assert response.status_code == 401, (path, response.status_code, response.text[:200])
    assert "Not authenticated" in response.text


def test_unauthenticated_page_is_the_login_form_without_any_stored_data(app) -> None:
    page = httpx.get(app["url"] + "/", timeout=30).text
    assert '"auth_required":true' in page and '"components":[]' in page
    for study_id, draft_id in app["seeded"].values():
        assert study_id not in page and draft_id not in page
    assert "drafted for" not in page


def test_forged_session_cookie_is_refused(app) -> None:
    cookies = {"access-token": "forged", "access-token-unsecure": "forged"}
    response = httpx.get(app["url"] + "/config", cookies=cookies, timeout=30)
    assert response.status_code == 401


@pytest.mark.parametrize("auth", [None, ("alice", "pw-bob"), ("alice", ""), ("eve", "pw-alice"),
                                  ("ALICE", "pw-alice")])
def test_gradio_client_without_valid_credentials_is_refused(app, auth: tuple[str, str] | None) -> None:
    with pytest.raises(Exception, match="(?i)login|auth|401|credentials"):
        Client(app["url"], auth=auth, verbose=False)


# ---------------------------------------------------------------------------------------- own work only
def test_history_lists_only_the_users_own_drafts(app, clients: dict[str, Client]) -> None:
    for user, client in clients.items():
        rows = client.predict(api_name="/history")["data"]
        assert {row[-1] for row in rows} == {app["seeded"][user][1]}, user


@pytest.mark.parametrize(("endpoint", "args"), [
    ("/open_draft", lambda s, d: (d,)),
    ("/save_edit", lambda s, d: (d, "bob was here", "x", [], "")),
    ("/sign", lambda s, d: (d, "bob signs", "x", [], "")),
    ("/add_addendum", lambda s, d: (d, "bob adds")),
    ("/redraft_from_edit", lambda s, d: (d, "bob rewrites", "x")),
    ("/delete_study", lambda s, d: (s, True)),
    ("/audit", lambda s, d: (s,)),
    ("/generate", lambda s, d: ([],)),
])
def test_another_users_draft_is_refused_with_a_clear_error(app, clients: dict[str, Client], endpoint, args) -> None:
    study_id, draft_id = app["seeded"]["alice"]
    kwargs = {"study_id": study_id} if endpoint == "/generate" else {}
    with pytest.raises(AppError, match=r"(study|draft) '[0-9a-f]{32}' belongs to another user"):
        clients["bob"].predict(*args(study_id, draft_id), api_name=endpoint, **kwargs)
    draft = app["services"].store.get_draft(draft_id, "alice")
    assert draft.versions == () and draft.signed_at is None and draft.addenda == ()
    assert not [e for e in app["services"].store.audit_trail(study_id=study_id) if e.actor == "bob"]


def test_uploading_views_into_another_users_study_is_refused(app, clients: dict[str, Client], tmp_path: Path) -> None:
    study_id, _ = app["seeded"]["alice"]
    view = tmp_path / "view.png"
    phantom_cxr((96, 96), seed=9).save(view)
    with pytest.raises(AppError, match="belongs to another user"):
        clients["bob"].predict([handle_file(str(view))], study_id, api_name="/upload_views")
    assert len(app["services"].store.get_study(study_id, "alice").images) == 1


def test_edits_and_signatures_carry_the_user(app, clients: dict[str, Client]) -> None:
    _, draft_id = app["seeded"]["bob"]
    clients["bob"].predict(draft_id, "Bob's findings.", "Bob's impression.", ["style"], "", api_name="/save_edit")
    clients["bob"].predict(draft_id, "Bob's findings.", "Signed by bob.", [], "", api_name="/sign")
    draft = app["services"].store.get_draft(draft_id, "bob")
    assert [(v.kind, v.author) for v in draft.versions] == [("edit", "bob"), ("sign", "bob")]
    assert draft.signed_by == "bob"
    actions = {(e.action, e.actor) for e in app["services"].store.audit_trail(draft_id=draft_id)}
    assert {("edit.save", "bob"), ("report.sign", "bob")} <= actions


def _export(client: Client, tmp_path: Path) -> list[Any]:
    zip_path, status = client.predict(None, None, api_name="/export_corrections")
    assert "Exported" in status
    with zipfile.ZipFile(zip_path) as zf:
        for name in zf.namelist():
            assert not name.startswith("/") and ".." not in Path(name).parts, name
        zf.extractall(tmp_path)
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    return load_dataset(folder / "records.jsonl")


def test_each_user_exports_only_their_own_signed_reports(app, clients: dict[str, Client], tmp_path: Path) -> None:
    for user in ("alice", "bob"):
        _, draft_id = app["seeded"][user]
        if app["services"].store.get_draft(draft_id, user).signed_at is None:  # not yet signed by another test
            clients[user].predict(draft_id, f"{user}'s findings.", "Signed.", [], "", api_name="/sign")
    alice_draft, bob_draft = app["seeded"]["alice"][1], app["seeded"]["bob"][1]
    (alice_record,) = _export(clients["alice"], tmp_path / "alice")
    (bob_record,) = _export(clients["bob"], tmp_path / "bob")
    assert (alice_record.id, alice_record.correction.editor) == (alice_draft, "alice")
    assert (bob_record.id, bob_record.correction.editor) == (bob_draft, "bob")


def test_a_path_like_user_name_never_reaches_a_file_name(app, clients: dict[str, Client], tmp_path: Path) -> None:
    mallory = "../../mallory"
    with pytest.raises(AppError, match=r"no signed report of user '\.\./\.\./mallory'"):
        clients[mallory].predict(None, None, api_name="/export_corrections")
    _, draft_id = app["seeded"][mallory]
    clients[mallory].predict(draft_id, "Findings.", "Impression.", [], "", api_name="/sign")
    (record,) = _export(clients[mallory], tmp_path)
    assert record.correction.editor == mallory
    root: Path = app["root"]
    export_root = (root / "tmp" / "echo-exports").resolve()
    zips = [p.resolve() for p in root.rglob("echo-corrections-*.zip")]
    assert zips and all(export_root in p.parents or (root / "gradio-cache").resolve() in p.parents for p in zips)
    assert not list(root.rglob("*mallory*"))


@pytest.mark.parametrize("day", ["../../etc/passwd", "2024-01-01/../../x", "2024-01-01\x00.zip", "99999-01-01",
                                 "2024-13-01", "2024-01-01T00:00:00/../../evil"])
def test_crafted_export_days_are_refused_with_the_value_named(clients: dict[str, Client], day: str) -> None:
    with pytest.raises(AppError, match=r"from: .* is not a date; use YYYY-MM-DD"):
        clients["alice"].predict(day, None, api_name="/export_corrections")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 1e20, -1e20, True])
def test_parse_day_refuses_timestamps_that_are_not_days(value: float) -> None:
    with pytest.raises(ValueError, match="to: .* is not a date"):
        parse_day(value, name="to")


def test_parse_day_reads_days_datetimes_and_timestamps_in_utc() -> None:
    assert str(parse_day("2024-03-05", name="from")) == "2024-03-05"
    assert str(parse_day("2024-03-05 23:59:59", name="from")) == "2024-03-05"
    assert str(parse_day("2024-03-05T01:00:00+02:00", name="from")) == "2024-03-04"
    assert str(parse_day(0, name="from")) == "1970-01-01"
    assert parse_day("  ", name="from") is None and parse_day(None, name="from") is None

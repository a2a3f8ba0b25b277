"""Load: drafts are bounded with a quick "busy" of ours; saves are never refused or lost.

The admission gate is tested directly; the app is then served with the gate held full (no model needed)
to show the refusal and that saves, signatures and exports still go through; finally the load script
runs a small burst of real clients against a child-process server and audits the database.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from app.admission import DraftingBusyError, GenerationGate
from app.main import build_demo, launch_options
from app.service import Services
from app.settings import AppSettings
from app.store import Store
from echo_model.imaging.synthetic import phantom_cxr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import crash_test
import load_test  # noqa: E402
from app_process import free_port  # noqa: E402
from crash_test import seed_drafts  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")


def _wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


@contextlib.contextmanager
def _full_gate(gate: GenerationGate) -> Iterator[None]:
    """Take every slot and every place in line until the block ends."""
    with contextlib.ExitStack() as slots:
        for _ in range(gate.slots):
            slots.enter_context(gate.admitted())
        release = threading.Event()

        def wait_in_line() -> None:
            with gate.admitted():
                release.wait(30)

        waiters = [threading.Thread(target=wait_in_line, daemon=True) for _ in range(gate.max_waiting)]
        for thread in waiters:
            thread.start()
        _wait_until(lambda: gate.waiting == gate.max_waiting)
        try:
            yield
        finally:
            release.set()
            slots.close()
            for thread in waiters:
                thread.join(10)


# ---------------------------------------------------------------------------------------- the gate
def test_gate_refuses_at_once_when_every_slot_and_place_is_taken() -> None:
    gate = GenerationGate(slots=1, max_waiting=2)
    with _full_gate(gate):
        t0 = time.perf_counter()
        busy = r"queue is full: 1 report\(s\) being drafted and 2 waiting"
        with pytest.raises(DraftingBusyError, match=busy) as err, gate.admitted():
            pass
        assert time.perf_counter() - t0 < 0.1
        assert "saving, signing and exporting still work" in str(err.value)
    assert (gate.running, gate.waiting) == (0, 0)
    with gate.admitted():  # free again
        assert gate.running == 1


def test_gate_serves_in_arrival_order_and_reports_the_place_in_line() -> None:
    gate = GenerationGate(slots=1, max_waiting=3, poll_s=0.01)
    order: list[int] = []
    places: dict[int, list[int]] = {i: [] for i in range(3)}

    def draft(i: int) -> None:
        with gate.admitted(on_wait=places[i].append):
            order.append(i)
            time.sleep(0.05)  # long enough for the others to see the line move

    threads = []
    with gate.admitted():
        for i in range(3):
            threads.append(threading.Thread(target=draft, args=(i,)))
            threads[-1].start()
            _wait_until(lambda n=i: gate.waiting == n + 1)
        _wait_until(lambda: all(places[i] for i in range(3)))
    for thread in threads:
        thread.join(10)
    assert order == [0, 1, 2]
    assert [places[i][0] for i in range(3)] == [1, 2, 3]  # drafts ahead: the running one plus those in line
    assert places[2][-1] < places[2][0]  # the place improves while the line moves


def test_gate_is_released_when_a_draft_fails_or_is_abandoned() -> None:
    gate = GenerationGate(slots=1, max_waiting=0)

    def stream() -> Iterator[int]:
        with gate.admitted():
            yield 1
            yield 2

    steps = stream()
    next(steps)
    assert gate.running == 1
    steps.close()  # Gradio closes the generator of a cancelled or disconnected request
    assert gate.running == 0
    with pytest.raises(RuntimeError, match="model failed"), gate.admitted():
        raise RuntimeError("model failed")
    assert gate.running == 0


def test_gate_withdraws_a_waiter_that_is_interrupted() -> None:
    gate = GenerationGate(slots=1, max_waiting=1, poll_s=0.01)

    def interrupted(_ahead: int) -> None:
        raise KeyboardInterrupt

    with gate.admitted():
        with pytest.raises(KeyboardInterrupt), gate.admitted(on_wait=interrupted):
            pass
        assert gate.waiting == 0


@pytest.mark.parametrize(("slots", "waiting", "pattern"), [(0, 1, "slots"), (1, -1, "max_waiting")])
def test_gate_refuses_impossible_sizes(slots: int, waiting: int, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        GenerationGate(slots=slots, max_waiting=waiting)


# ---------------------------------------------------------------------------------------- the served app
@pytest.fixture(scope="module")
def served_full(tmp_path_factory):
    """The app with auth, a seeded draft, and a gate of 1 slot + 1 place; no model is ever loaded."""
    root = tmp_path_factory.mktemp("load")
    patch = pytest.MonkeyPatch()
    patch.setattr(tempfile, "tempdir", str(root))  # exports are staged under the server's temporary folder
    settings = AppSettings(data_dir=root / "data", auth="alice:pw-a", queue_size=1, server_name="127.0.0.1",
                           server_port=free_port(), upload_cache_dir=root / "cache")
    services = Services.create(settings)
    ((_, draft_id),) = seed_drafts(settings.data_dir, ["alice"])
    demo = build_demo(settings, services=services)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **launch_options(settings))
    image = root / "view.png"
    phantom_cxr((128, 128)).save(image)
    try:
        yield url, services, draft_id, image, demo
    finally:
        demo.close()
        patch.undo()


def test_gradio_queue_is_unbounded_and_drafts_are_left_to_the_gate(served_full) -> None:
    _, services, _, _, demo = served_full
    assert demo._queue.max_size is None  # a bounded Gradio queue refuses API saves once drafts fill it
    generate = next(fn for fn in demo.fns.values() if fn.api_name == "generate")
    assert generate.concurrency_limit is None  # handed to the gate at once, where the line is known
    settings = services.settings
    assert (services.gate.slots, services.gate.max_waiting) == (settings.generation_concurrency, settings.queue_size)
    assert launch_options(settings)["max_threads"] > settings.generation_concurrency + settings.queue_size


def test_full_line_gives_our_busy_message_quickly_and_saves_still_go_through(served_full) -> None:
    url, services, draft_id, image, _ = served_full
    client = Client(url, auth=("alice", "pw-a"), verbose=False)
    with _full_gate(services.gate):
        t0 = time.perf_counter()
        with pytest.raises(AppError, match="The drafting queue is full: 1 report.s. being drafted and 1 waiting"):
            client.predict([handle_file(str(image))], max_new_tokens=8, api_name="/generate")
        refused_in = time.perf_counter() - t0
        statuses = []
        savers = [Client(url, auth=("alice", "pw-a"), verbose=False) for _ in range(4)]

        def save(c: Client, k: int) -> None:
            statuses.append(c.predict(draft_id, f"busy save {k}", "ok", [], "", api_name="/save_edit")[0])

        threads = [threading.Thread(target=save, args=(c, k)) for k, c in enumerate(savers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        signed = client.predict(draft_id, "Signed while busy.", "Normal.", [], "", api_name="/sign")[0]
        _, exported = client.predict(None, None, api_name="/export_corrections")
    assert refused_in < 5.0, f"a busy refusal took {refused_in:.1f} s"
    assert len(statuses) == 4 and all(s.startswith("Saved version") for s in statuses)
    assert "Signed" in signed and "Exported 1" in exported
    texts = [v.findings for v in services.store.get_draft(draft_id, "alice").versions]
    assert sorted(texts[:4]) == [f"busy save {k}" for k in range(4)] and texts[-1] == "Signed while busy."
    assert (services.gate.running, services.gate.waiting) == (0, 0)
    # The refused draft's upload was stored de-identified first, not left lying in Gradio's cache.
    assert not [p for p in services.settings.upload_cache_dir.rglob("*.png") if p.name == "view.png"]


# ---------------------------------------------------------------------------------------- the load script
@pytest.mark.slow  # a child-process server: about 20-40 s on 2 CPUs
def test_load_script_bounded_run_loses_and_mixes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    status = load_test.main(["--clients", "5", "--users", "2", "--iterations", "2", "--saves", "2",
                             "--queue-size", "1", "--max-new-tokens", "16", "--max-batch", "2", "--out", str(out)])
    report = json.loads((out / "load.json").read_text())
    assert status == 0
    assert report["saves_acknowledged"] == 5 * 2 * 2 and report["drafts"] == 5 * 2
    assert (report["lost"], report["mixed"], report["saves_refused"], report["drafts_of_wrong_owner"]) == (0, 0, 0, 0)
    assert report["audit_mismatches"] == 0
    assert report["busy_refusals"] > 0, "5 clients released together on 2 rows and a line of 1 must meet a busy refusal"
    assert report["breakdown_p50_s"]["forwards"] > 0 and 1 <= report["breakdown_p50_s"]["batch rows"] <= 2
    assert all(load_test.BUSY_TEXT in m for m in report["busy_messages"])
    assert report["busy_max_s"] < 10.0
    assert report["generate_p50_s"] <= report["generate_p95_s"] and report["save_p50_s"] <= report["save_p95_s"]
    assert (out / "load.png").read_bytes().startswith(b"\x89PNG")


def test_audit_counts_lost_mixed_and_foreign_drafts(tmp_path: Path) -> None:
    (alice, draft_a), (bob, draft_b) = seed_drafts(tmp_path, ["alice", "bob"])
    store = Store(tmp_path, single_connection=False)
    store.save_edit(draft_a, alice, findings="Load test client 0 [x]", impression="i")
    store.save_edit(draft_b, bob, findings="Load test client 1 [y]", impression="i")
    for _ in range(2):  # one acknowledged save stored twice
        store.save_edit(draft_a, alice, findings="Load test client 2 [z]", impression="i")
    store.close()
    saves = [
        load_test.Save(alice, draft_a, "Load test client 0 [x]", "i"),  # stored as acknowledged
        load_test.Save(alice, draft_a, "Load test client 9 [never stored]", "i"),  # lost
        load_test.Save(alice, draft_b, "Load test client 1 [y]", "i"),  # stored on another draft, by bob: mixed
        load_test.Save(alice, draft_a, "Load test client 2 [z]", "i"),  # duplicated
    ]
    counts = load_test.audit_saves(tmp_path / "echo.sqlite", saves, [(alice, draft_a), (alice, draft_b)])
    assert counts == {"lost": 1, "mixed": 1, "duplicated": 1, "stored_unacknowledged": 0, "drafts_of_wrong_owner": 1}


@pytest.mark.parametrize("script", [load_test, crash_test])
def test_several_replicas_need_a_server_database(script, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        script.main(["--replicas", "2"])
    assert stop.value.code == 2
    assert "--replicas 2 needs --database-url" in capsys.readouterr().err


@pytest.fixture
def pg_database(request, monkeypatch) -> str:
    """``pg_url``, with the cluster (if this is the first to need it) under the system's temporary folder: the
    served app above points ``tempfile`` at a folder of its own for the whole module, which the unprivileged
    server account cannot enter."""
    monkeypatch.setattr(tempfile, "tempdir", None)
    return request.getfixturevalue("pg_url")


@pytest.mark.slow  # two child-process servers on a PostgreSQL cluster: about 40-80 s on 2 CPUs
def test_two_replicas_on_postgresql_lose_mix_and_duplicate_nothing(tmp_path: Path, pg_database: str) -> None:
    pg_url = pg_database
    out = tmp_path / "out"
    status = load_test.main(["--replicas", "2", "--database-url", pg_url, "--clients", "4", "--users", "2",
                             "--iterations", "1", "--saves", "2", "--max-new-tokens", "16", "--out", str(out)])
    report = json.loads((out / "load.json").read_text())
    assert status == 0
    assert (report["replicas"], report["database"]) == (2, "postgresql")
    assert report["saves_acknowledged"] == 4 * 2 and report["drafts"] == 4
    assert (report["lost"], report["mixed"], report["duplicated"], report["saves_refused"]) == (0, 0, 0, 0)
    assert report["audit_mismatches"] == 0  # every save and signature has exactly one audit row
    assert report["signed"] == 4  # every client signed its draft, through its own replica
    assert (report["signed_missing"], report["exports_differing"]) == (0, 0)

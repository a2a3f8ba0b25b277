"""Errors in words, for every event listener of the app.

Every listener of the Blocks (walked from ``demo.fns``) must have a registered failure case below: inputs that
make it fail and the words the user must see. The test triggers each and checks the ``gr.Error`` message
(a listener without a case fails the suite, so a new listener cannot slip in unchecked); every listener is
queued, which is what brings the message to the browser (an unqueued one shows a bare "Error": see
``app.main.queue_every_event`` and ``test_app_reading_room.test_2``). Named endpoints are also called through
``gradio_client``, which must receive the same text.

A few listeners cannot fail by construction (constant outputs, or a lock that treats a missing draft as
unlocked); they are registered as such with the reason, and are checked to run without error.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from conftest import free_port
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from app.current import Current
from app.main import build_demo, launch_options
from app.settings import AppSettings
from app.worklist import WorklistView

pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")


@dataclass(frozen=True)
class Case:
    """Inputs (one per input component, States included) that make a listener fail, and the words shown."""

    args: tuple[Any, ...]
    message: str
    setup: Callable[[Any], None] | None = None  # patches the services (listeners without inputs)


@dataclass(frozen=True)
class CannotFail:
    reason: str


DECODING = ("embedded", "echo", 16, 0.0, 0.85, 0)
EXPLAIN = ("attention", None, "inferno", 0.45, "blur", 32)
RACE = ("", "", "en", "embedded", False, "sequential", False, 16, 0.0, 0, "natural")
NO_DRAFT = "no draft on"
MISSING = "does not exist"


def _failing_history(services: Any) -> None:
    def boom(*_: Any, **__: Any) -> Any:
        raise ValueError("the history cannot be read right now (test)")

    services.store.history = boom


def _failing_worklist(services: Any) -> None:
    def boom(*_: Any, **__: Any) -> Any:
        raise ValueError("the worklist cannot be read right now (test)")

    services.store.worklist = boom


def cases(bogus: str) -> dict[str, Case | CannotFail]:
    """Failure cases by the listener function's qualified name."""
    return {
        "Handlers.upload": Case(([bogus], ""), "not a PNG, JPEG or DICOM"),
        "Handlers.study_opened": Case(("no-such-study",), MISSING),
        "Handlers.new_study": CannotFail("no input: clears the viewer"),
        "Handlers.editor_lock": CannotFail("a missing draft means an unlocked editor, by design"),
        "Handlers.render_view": Case(("no-such-study", 0, 128, 256, "default", False), MISSING),
        "Handlers.select_view": Case(("no-such-study", 0, "lung", False), MISSING),
        "Handlers.set_view_label": Case(("no-such-study", 0, "pa", "default", False), MISSING),
        "Handlers.findings_list": CannotFail("labels any text; text with no observation gives an empty list"),
        "Handlers.languages": Case(("not-a-model",), "is not offered by this app"),
        "Handlers.model_notice": Case(("not-a-model",), "is not offered by this app"),
        "Handlers.begin_draft": CannotFail("clears the draft view; reads nothing"),
        "Handlers.draft_stopped": CannotFail("resets the session state after Stop; reads nothing"),
        "Handlers.generate": Case((None, "", "en", *DECODING, ""), "no image"),
        "Handlers.redraft": Case(("", "f", "i", *DECODING, Current()), NO_DRAFT),
        "Handlers.save_edit": Case(("", "f", "i", [], "", None, Current()), NO_DRAFT),
        "Handlers.refresh_current": Case((Current(study_id="s", draft_id="no-such-draft"),), MISSING),
        "Handlers.confirm_sign": Case(("", "f", "i", None, Current()), NO_DRAFT),
        "Handlers.sign": Case(("", "f", "i", [], "", None, False, Current()), NO_DRAFT),
        "Handlers.add_addendum": Case(("", "text", Current()), NO_DRAFT),
        "Handlers.history": Case((), "the history cannot be read", setup=_failing_history),
        "Handlers.pick_history_row": CannotFail("fills two boxes from a clicked row; ignores a short row"),
        "Handlers.open_draft": Case(("no-such-draft", ""), MISSING),
        "Handlers.worklist": Case(("",), "the worklist cannot be read", setup=_failing_worklist),
        "Handlers.pick_worklist_row": CannotFail("fills two boxes from a clicked row; ignores an unknown row"),
        "Handlers.next_unsigned": Case((Current(), WorklistView(query="no such text")), "matches no study"),
        "Handlers.previous_study": Case((Current(), WorklistView(query="no such text")), "matches no study"),
        "Handlers.show_study": Case(("no-such-study",), MISSING),
        "Handlers.export_corrections": Case(("2030-01-02", "2030-01-01"), "is after the end day"),
        "Handlers.delete_study": Case(("", False), "choose a study to delete"),
        "Handlers.audit": Case(("no-such-study",), MISSING),
        "ExplainHandlers.targets": Case(("no-such-draft",), MISSING),
        "ExplainHandlers.explain": Case(("", None, *EXPLAIN), "no draft to explain"),
        "ExplainHandlers.redraw": Case(("no-such-draft", "block:0", *EXPLAIN), MISSING),
        "RaceHandlers.upload": Case(([bogus],), "not a PNG, JPEG or DICOM"),
        "RaceHandlers.race_stream": Case((None, *RACE), "no image"),
        "RaceHandlers.race": Case((None, *RACE), "no image"),
        "RaceHandlers.languages": Case(("not-a-model",), "is not offered by this app"),
        "build_draft_tab.<locals>.<lambda>": CannotFail("constant outputs (reset window, clear boxes, hide panel)"),
        "build_race_tab.<locals>.<lambda>": CannotFail("copies a value or toggles a column"),
        "build_history_tab.<locals>.<lambda>": CannotFail("switches to the Draft tab"),
    }


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> Iterator[tuple[gr.Blocks, Any, str, Path]]:
    root = tmp_path_factory.mktemp("errors")
    settings = AppSettings(data_dir=root / "data", max_new_tokens=16, server_name="127.0.0.1",
                           server_port=free_port(), upload_cache_dir=root / "cache")
    demo = build_demo(settings)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **launch_options(settings))
    try:
        yield demo, settings, url, root
    finally:
        demo.close()


def _bogus(root: Path) -> str:
    path = root / "chest.png"
    path.write_text("<html>not an image</html>", encoding="utf-8")
    return str(path)


def _run(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    out = fn(*args)
    return list(out) if inspect.isgenerator(out) else out


def _listeners(demo: gr.Blocks) -> list[Any]:
    return [f for f in demo.fns.values() if f.fn is not None]


def test_every_listener_has_a_failure_case_and_shows_its_words(app) -> None:
    demo, _, _, root = app
    registry = cases(_bogus(root))
    missing = sorted({f.fn.__qualname__ for f in _listeners(demo)} - set(registry))
    assert not missing, f"listeners without a registered failure case: {missing}"
    checked = 0
    for f in _listeners(demo):
        assert f.queue, f"{f.name}: unqueued events show a bare 'Error' in the browser"
        case = registry[f.fn.__qualname__]
        if isinstance(case, CannotFail):
            continue
        assert len(case.args) == len(f.inputs), (f.fn.__qualname__, len(f.inputs))
        if case.setup is not None:
            services = f.fn.__self__.services
            saved = dict(vars(services.store))
            case.setup(services)
        else:
            saved = None
        try:
            if f.fn.__qualname__.endswith(".upload"):  # each upload deletes its file: a fresh one per call
                case = Case(tuple([_bogus(root)] if a and isinstance(a, list) else a for a in case.args),
                            case.message)
            with pytest.raises(gr.Error) as err:
                _run(f.fn, case.args)
        finally:
            if saved is not None:
                vars(f.fn.__self__.services.store).clear()
                vars(f.fn.__self__.services.store).update(saved)
        assert case.message in err.value.message, (f.fn.__qualname__, err.value.message)
        assert "internal error" not in err.value.message
        checked += 1
    assert checked >= 20


def test_every_named_endpoint_gives_the_client_the_same_words(app) -> None:
    demo, _, url, root = app
    client = Client(url, verbose=False)
    registry = cases(_bogus(root))
    named = [f for f in _listeners(demo) if f.api_visibility == "public"]
    assert {f.api_name for f in named} >= {"upload_views", "generate", "save_edit", "sign", "add_addendum",
                                           "open_draft", "export_corrections", "delete_study", "audit"}
    for f in named:
        case = registry[f.fn.__qualname__]
        if isinstance(case, CannotFail) or case.setup is not None:
            continue
        args = [handle_file(_bogus(root)) if isinstance(a, list) and a else a
                for a, block in zip(case.args, f.inputs) if not isinstance(block, gr.State)]
        args = [[a] if isinstance(a, dict) else a for a in args]  # file lists
        with pytest.raises(AppError) as err:
            client.predict(*args, api_name=f"/{f.api_name}")
        assert case.message in str(err.value), (f.api_name, str(err.value))

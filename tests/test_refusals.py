"""Refused and warned inputs end to end: the loader, the app's handlers, and a served app driven by gradio_client.

The cases are ``scripts/input_table.py``'s (the table in ``docs/reliability.md``). For each one the message a
user sees, in the UI (``gr.Error`` from the handlers) and through the API (``AppError`` in gradio_client), must be
the loader's own message, word for word, not Gradio's generic error; and after each refusal the app must serve a
valid upload normally.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import gradio as gr
import pytest
from conftest import free_port
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from app.handlers import DRAFT_FIELDS, VIEWER_FIELDS, Handlers
from app.main import build_demo, launch_options
from app.service import Services
from app.settings import AppSettings

ROOT = Path(__file__).resolve().parents[1]
USER, PASSWORD = "robin", "refusals are fine"
# gr.Warning outside a running server falls back to warnings.warn; pydicom comments on the hostile files.
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")]


def _load_table() -> ModuleType:
    spec = importlib.util.spec_from_file_location("input_table", ROOT / "scripts" / "input_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["input_table"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


TABLE = _load_table()
CASES = {case.key: case for case in TABLE.CASES}
CONTROL = "chest_png"


@pytest.fixture(scope="module")
def case_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cases")
    return {key: TABLE.write_case(case, folder) for key, case in CASES.items()}


@pytest.fixture(scope="module")
def expected(case_files: dict[str, Path]) -> dict[str, Any]:
    """What the loader alone says about each file: the reference for the app's messages."""
    return {key: TABLE.run_case(CASES[key], path) for key, path in case_files.items()}


# --- the loader -------------------------------------------------------------------------------


def test_every_issue_case_is_in_the_table() -> None:
    refused = {k for k, c in CASES.items() if c.expect == TABLE.REFUSED}
    warned = {k for k, c in CASES.items() if c.expect == TABLE.WARNED}
    assert {"empty", "truncated_png", "truncated_jpeg", "text_as_png", "html", "bomb", "huge", "dicom_no_pixels",
            "dicom_over_limit", "dicom_absurd_geometry", "dicom_mpeg2"} <= refused
    assert {"dicom_ct", "dicom_mr", "photo", "dicom_multiframe", "dicom_burned_in"} <= warned
    assert len({c.file_name for c in CASES.values()}) == len(CASES)


@pytest.mark.parametrize("key", sorted(CASES))
def test_loader_gives_the_expected_outcome(key: str, expected: dict[str, Any]) -> None:
    result = expected[key]
    assert result.as_expected, (result.outcome, result.error, result.messages)
    if result.outcome == TABLE.REFUSED:
        assert result.messages[0].startswith(f"{CASES[key].file_name}: ")


def test_huge_png_is_a_complete_valid_image() -> None:
    """The 20000 x 20000 case is refused for its size, not because it is broken: its zlib stream checks out."""
    import zlib

    data = TABLE.blank_png(300, 200)
    stream = data[8 + 25 + 8 : -12 - 4]  # between IDAT's type and CRC
    assert zlib.decompress(stream) == bytes(301 * 200)
    assert len(TABLE.blank_png(20000, 20000)) < 1_000_000


def test_table_prints_one_row_per_case(capsys: pytest.CaptureFixture[str]) -> None:
    assert TABLE.main([]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "`" in line]
    assert len(rows) == len(CASES)
    assert any("refused (`EmptyFileError`)" in row and "empty.png: the file is empty" in row for row in rows)


# --- the handlers (what the UI shows) -----------------------------------------------------------


@pytest.fixture(scope="module")
def handlers(tmp_path_factory, checkpoint) -> Handlers:
    root = tmp_path_factory.mktemp("handlers")
    checkpoint.save_pretrained(root / "model")
    settings = AppSettings(models=(str(root / "model"),), data_dir=root / "data", upload_cache_dir=root / "cache",
                           max_new_tokens=8)
    return Handlers(Services.create(settings))


def _as_upload(h: Handlers, source: Path, tag: str) -> str:
    """A copy of ``source`` inside the upload cache, under its own name, as Gradio would hand it over."""
    folder = h.settings.upload_cache_dir / tag
    folder.mkdir(parents=True, exist_ok=True)
    return str(shutil.copy(source, folder / source.name))


@pytest.mark.parametrize("key", sorted(CASES))
def test_handlers_show_our_message_and_serve_the_next_upload(key: str, handlers: Handlers,
                                                             case_files: dict[str, Path], expected) -> None:
    result = expected[key]
    upload = _as_upload(handlers, case_files[key], f"{key}-upload")
    if result.outcome == TABLE.REFUSED:
        with pytest.raises(gr.Error) as info:
            handlers.upload([upload], "")
        assert info.value.message == result.messages[0]
        assert not Path(upload).exists(), "a refused upload must not stay in the cache"
        with pytest.raises(gr.Error) as info:
            list(handlers.generate([_as_upload(handlers, case_files[key], f"{key}-generate")], max_new_tokens=8))
        assert info.value.message == result.messages[0]
    else:
        viewer = dict(zip(VIEWER_FIELDS, handlers.upload([upload], "")))
        assert viewer["study_id"] and "<img" in viewer["viewer"]
        assert viewer["warnings"].splitlines() == [f"view 1: {m}" for m in result.messages]
    control = dict(zip(VIEWER_FIELDS, handlers.upload([_as_upload(handlers, case_files[CONTROL], f"{key}-next")], "")))
    assert control["study_id"] and control["warnings"] == ""


# --- a served app through gradio_client (what API clients get) ------------------------------------



@pytest.fixture(scope="module")
def client(tmp_path_factory, checkpoint):
    root = tmp_path_factory.mktemp("served")
    checkpoint.save_pretrained(root / "model")
    cache = root / "gradio-cache"
    saved_env = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(cache)
    settings = AppSettings(models=(str(root / "model"),), data_dir=root / "data", auth=f"{USER}:{PASSWORD}",
                           max_new_tokens=8, server_name="127.0.0.1", server_port=free_port(),
                           upload_cache_dir=cache)
    demo = build_demo(settings)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **launch_options(settings))
    try:
        yield Client(url, auth=(USER, PASSWORD), verbose=False)
    finally:
        demo.close()
        if saved_env is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = saved_env


@pytest.mark.parametrize("key", sorted(CASES))
def test_client_gets_our_message_and_the_app_serves_the_next_request(key: str, client: Client,
                                                                      case_files: dict[str, Path], expected) -> None:
    result = expected[key]
    upload = handle_file(str(case_files[key]))
    if result.outcome == TABLE.REFUSED:
        with pytest.raises(AppError) as info:
            client.predict([upload], "", api_name="/upload_views")
        assert str(info.value) == result.messages[0]
        with pytest.raises(AppError) as info:
            client.predict([upload], api_name="/generate")
        assert str(info.value) == result.messages[0]
    else:
        viewer = dict(zip(VIEWER_FIELDS, client.predict([upload], "", api_name="/upload_views")))
        assert viewer["study_id"] and viewer["warnings"].splitlines() == [f"view 1: {m}" for m in result.messages]
    control = dict(zip(VIEWER_FIELDS, client.predict([handle_file(str(case_files[CONTROL]))], "",
                                                     api_name="/upload_views")))
    assert control["study_id"] and control["warnings"] == ""


def test_client_drafts_a_report_after_all_the_refusals(client: Client, case_files: dict[str, Path]) -> None:
    outputs = client.predict([handle_file(str(case_files[CONTROL]))], api_name="/generate")
    draft = dict(zip(DRAFT_FIELDS, outputs))
    assert draft["draft_id"] and draft["timing"]["done"] and draft["timing"]["blocks"] >= 1

"""The app served on loopback and driven by ``gradio_client``, as other programs use it."""

from __future__ import annotations

import os
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, synthetic_cxr
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL.PngImagePlugin import PngInfo

from app.handlers import DRAFT_FIELDS
from app.main import build_demo, launch_options
from app.settings import AppSettings
from echo_model.imaging import png_chunk_types
from echo_model.data import load_dataset

F = {name: i for i, name in enumerate(DRAFT_FIELDS)}
pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")  # pandas deprecations inside gradio
USER, PASSWORD = "alice", "correct horse"
AWKWARD_FINDINGS = "  Heart size normal.\n\tNo effusion — “quoted”, 所见 \u00a0 "
AWKWARD_IMPRESSION = "No acute disease.\n\n"



@pytest.fixture(scope="module")
def served(tmp_path_factory, checkpoint):
    root = tmp_path_factory.mktemp("served")
    checkpoint.save_pretrained(root / "model")
    cache = root / "gradio-cache"
    saved_env = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(cache)  # a private upload cache, to check that uploads are deleted
    settings = AppSettings(models=(str(root / "model"),), data_dir=root / "data", auth=f"{USER}:{PASSWORD}",
                           max_new_tokens=16, server_name="127.0.0.1", server_port=free_port(),
                           upload_cache_dir=cache)
    demo = build_demo(settings)
    # A tiny model decodes a whole report in milliseconds, faster than a client polls; pace each forward so
    # the test can see the stream arrive block by block whatever the machine's speed.
    from echo_model.modeling import EchoModel

    real_forward = EchoModel.forward

    def paced_forward(self, *args, **kwargs):
        time.sleep(0.05)
        return real_forward(self, *args, **kwargs)

    patch = pytest.MonkeyPatch()
    patch.setattr(EchoModel, "forward", paced_forward)
    patch.setattr(EchoModel, "__call__", paced_forward)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **launch_options(settings))
    try:
        yield url, demo, settings
    finally:
        patch.undo()
        demo.close()
        if saved_env is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = saved_env


@pytest.fixture(scope="module")
def client(served) -> Client:
    return Client(served[0], auth=(USER, PASSWORD), verbose=False)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("img") / "frontal.png"
    info = PngInfo()
    info.add_text("PatientName", "DOE^JOHN")  # metadata that must not survive de-identification
    synthetic_cxr(7, (256, 240)).save(path, pnginfo=info)
    return str(path)


@pytest.fixture(scope="module")
def streamed(client: Client, image: str) -> dict[str, Any]:
    """One /generate call, with the time each update arrived and whether the job had finished by then."""
    job = client.submit([handle_file(image)], api_name="/generate")
    arrivals: list[tuple[int, bool]] = []
    seen = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done = job.done()
        count = len(job.outputs())
        if count > seen:
            arrivals.append((count, done))
            seen = count
        if done:
            break
        time.sleep(0.01)
    return {"outputs": job.outputs(), "arrivals": arrivals, "result": job.result()}


def test_public_endpoints_and_generate_signature(client: Client) -> None:
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for name in ("/generate", "/save_edit", "/sign", "/export_corrections", "/open_draft", "/redraft_from_edit"):
        assert name in api, name
    params = api["/generate"]["parameters"]
    assert params[0]["parameter_name"] == "files"
    assert all(p["parameter_has_default"] for p in params[1:])
    assert not any("window" in n or "pick" in n for n in api)  # UI-only events stay private


def test_generate_streams_one_update_per_block_first_before_the_end(streamed: dict[str, Any]) -> None:
    outputs = streamed["outputs"]
    timing = outputs[-1][F["timing"]]
    assert timing["done"] and len(outputs) == timing["blocks"] >= 2
    _, finished_then = streamed["arrivals"][0]
    assert not finished_then, "the first block must arrive while the job is still running"
    assert [len(o[F["blocks"]]["data"]) for o in outputs] == list(range(1, len(outputs) + 1))
    assert outputs[0][F["draft_id"]] == "" and outputs[-1][F["draft_id"]]
    tokens = outputs[0][F["report_view"]]
    assert tokens[-1]["class_or_confidence"] == "masked" and "\u2592" in tokens[-1]["token"]


def test_uploaded_original_is_gone_from_the_server_cache(streamed: dict[str, Any], served, image: str) -> None:
    original = Path(image).read_bytes()
    cache: Path = served[2].upload_cache_dir
    assert not [p for p in cache.rglob("*") if p.is_file() and p.read_bytes() == original]
    (stored,) = (served[2].data_dir / "images").glob("*.png")
    assert png_chunk_types(stored.read_bytes()) == [b"IHDR", b"IDAT", b"IEND"] and b"DOE^JOHN" not in stored.read_bytes()


def test_saving_does_not_wait_behind_a_running_generation(client: Client, streamed, image: str) -> None:
    draft_id = streamed["outputs"][-1][F["draft_id"]]
    job = client.submit([handle_file(image)], sampler="teacher", max_new_tokens=48, api_name="/generate")
    deadline = time.monotonic() + 60
    while not job.outputs() and time.monotonic() < deadline:
        time.sleep(0.01)
    status, _ = client.predict(draft_id, "x", "y", [], "", api_name="/save_edit")
    finished_before_save_returned = job.done()
    job.result()
    assert "Saved" in status and not finished_before_save_returned


def test_save_persists_exactly_what_was_sent(client: Client, streamed: dict[str, Any], served) -> None:
    draft_id = streamed["outputs"][-1][F["draft_id"]]
    status, _ = client.predict(draft_id, AWKWARD_FINDINGS, AWKWARD_IMPRESSION, ["style", "other"], "a comment",
                               api_name="/save_edit")
    assert "Saved version" in status
    reopened = client.predict(draft_id, api_name="/open_draft")
    assert (reopened[F["findings"]], reopened[F["impression"]]) == (AWKWARD_FINDINGS, AWKWARD_IMPRESSION)
    history = client.predict(api_name="/history")
    assert any(row[-1] == draft_id and row[1] == "edited" for row in history["data"])


def test_version_is_optional_and_checked_when_given(client: Client, streamed: dict[str, Any]) -> None:
    """Calls without a version keep working (however many); one based on an older version is refused."""
    draft_id = streamed["outputs"][-1][F["draft_id"]]
    for k in range(2):
        status, _ = client.predict(draft_id, f"no version {k}", "x", [], "", api_name="/save_edit")
        assert "Saved version" in status
    stored = int(client.predict(draft_id, api_name="/open_draft")[F["version"]])
    status, _ = client.predict(draft_id, "based on the stored version", "x", [], "", stored, api_name="/save_edit")
    assert f"Saved version {stored + 1}" in status
    with pytest.raises(AppError, match=f"is at version {stored + 1}, but this editor holds version {stored}"):
        client.predict(draft_id, "stale", "x", [], "", stored, api_name="/save_edit")


def test_sign_then_export_round_trips_through_load_dataset(client: Client, streamed, tmp_path: Path) -> None:
    draft_id = streamed["outputs"][-1][F["draft_id"]]
    with pytest.raises(AppError, match="Sign anyway"):  # the tiny model's draft fails the report check
        client.predict(draft_id, "Lungs clear.", "Normal.", ["style"], "", api_name="/sign")
    client.predict(draft_id, "Lungs clear.", "Normal.", ["style"], "", None, True, api_name="/sign")
    with pytest.raises(AppError, match="addendum"):
        client.predict(draft_id, "changed", "changed", [], "", api_name="/save_edit")
    zip_path, status = client.predict(None, None, api_name="/export_corrections")
    assert "Exported 1" in status
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(tmp_path)
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    (record,) = load_dataset(folder / "records.jsonl")
    assert (record.id, record.findings, record.impression) == (draft_id, "Lungs clear.", "Normal.")
    assert record.correction.editor == USER and Path(record.images[0].path).is_file()


def test_errors_reach_the_client_with_the_problem_named(client: Client, tmp_path: Path) -> None:
    fake = tmp_path / "chest.png"
    fake.write_text("<!DOCTYPE html><html>session expired</html>")
    with pytest.raises(AppError, match=r"chest\.png: the content is an HTML page"):
        client.predict([handle_file(str(fake))], api_name="/generate")
    with pytest.raises(AppError, match="does not exist"):
        client.predict("no-such-draft", "a", "b", [], "", api_name="/sign")


def test_login_is_required(served) -> None:
    with pytest.raises(Exception, match="(?i)login|auth|401|credentials"):
        Client(served[0], auth=(USER, "wrong"), verbose=False)

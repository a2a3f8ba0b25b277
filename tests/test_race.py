"""The AR vs ECHO race: figures are the samplers' own, texts are echo-report's, one update per block, the API."""

from __future__ import annotations

import functools
import json
import shutil
import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from conftest import free_port, synthetic_cxr
from gradio_client import Client, handle_file
from PIL import Image

from app.race import RaceService, how_it_ran, result_figures
from app.race_ui import FIGURE_HEADERS, RACE_FIELDS, RaceHandlers, build_race_tab
from app.service import Services
from app.settings import AppSettings
from echo_model import cli
from echo_model.drafting import Draft, Drafter
from echo_model.imaging import load_study
from echo_model.loading import CheckpointError
from echo_model.sampling import SamplerConfig

F = {name: i for i, name in enumerate(RACE_FIELDS)}
TOKENS = 16  # no <eos> from the tiny models within this budget, so every arm writes exactly 16 tokens
# gr.Warning outside a running server falls back to warnings.warn; the app's input warnings are expected here.
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning:gradio.helpers"),
              pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")]


@pytest.fixture(scope="module")
def folders(tmp_path_factory, checkpoint, checkpoint_b8) -> dict[str, Path]:
    """The app's model (b = 4, runs ECHO and the teacher) and a different AR model (b = 8)."""
    root = tmp_path_factory.mktemp("race-models")
    checkpoint.save_pretrained(root / "echo")
    checkpoint_b8.save_pretrained(root / "ar")
    return {"echo": root / "echo", "teacher": root / "echo", "ar": root / "ar"}


@pytest.fixture(scope="module")
def services(tmp_path_factory, folders: dict[str, Path]) -> Services:
    root = tmp_path_factory.mktemp("race-app")
    settings = AppSettings(models=(str(folders["echo"]),), race_ar_model=str(folders["ar"]), data_dir=root / "data",
                           upload_cache_dir=root / "cache", max_new_tokens=TOKENS)
    return Services.create(settings)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("race-img") / "frontal.png"
    synthetic_cxr(3, (160, 144)).save(path)
    return path


@pytest.fixture
def recorded(monkeypatch) -> list[Draft]:
    """Every Draft that Drafter.stream returns during the test (warm-ups included), in order; each Draft's
    ``settings["thread"]`` is the thread that ran it."""
    drafts: list[Draft] = []
    real = Drafter.stream

    @functools.wraps(real)
    def stream(self: Drafter, images: Any, **kwargs: Any) -> Generator[Any, None, Draft]:
        draft = yield from real(self, images, **kwargs)
        draft.settings["thread"] = threading.get_ident()
        drafts.append(draft)
        return draft

    monkeypatch.setattr(Drafter, "stream", stream)
    return drafts


def _timed(drafts: list[Draft]) -> dict[str, Draft]:
    """The timed run of each arm: its last draft (a warm-up comes before it)."""
    return {d.sampler: d for d in drafts}


def _race_args(**overrides: Any) -> dict[str, Any]:
    args = {"indication": "", "language": "en", "model": "", "include_teacher": False, "mode": "sequential",
            "warmup": True, "max_new_tokens": TOKENS, "temperature": 0.0, "seed": 0}
    return {**args, **overrides}


def _cli_json(capsys, image: Path, model: Path, sampler: str) -> dict[str, Any]:
    capsys.readouterr()
    assert cli.main([str(image), "--model", str(model), "--sampler", sampler, "--max-new-tokens", str(TOKENS),
                     "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_sequential_race_reports_the_samplers_figures_one_update_per_block(services, image_file, recorded) -> None:
    race = RaceService(services.drafting)
    images = [view.image for view in load_study([str(image_file)])]
    updates = list(race.run(images, model=None, config=SamplerConfig(max_new_tokens=TOKENS), include_teacher=True))
    # Warm-up: each arm drafts the same report once, before any timed run, in the thread that then runs the arm's
    # timed draft (on CUDA first-call costs are per thread and per tensor shape).
    warmups, timed_runs = recorded[:3], recorded[3:]
    assert [d.sampler for d in warmups] == [d.sampler for d in timed_runs] == ["ar", "echo", "teacher"]
    timed = _timed(recorded)
    for warm in warmups:
        assert warm.settings["thread"] == timed[warm.sampler].settings["thread"] != threading.get_ident()
        assert warm.report == timed[warm.sampler].report and warm.result is not timed[warm.sampler].result
    blocks = {arm: len(timed[arm].result.blocks) for arm in ("ar", "echo", "teacher")}
    assert min(blocks.values()) >= 2 and blocks["ar"] < blocks["echo"]  # b = 8 vs b = 4 on the same block grid
    # Sequential: every AR block, then every ECHO block, then the teacher's; one update per committed block.
    assert [(u.arm, u.block) for u in updates] == [(arm, k) for arm in ("ar", "echo", "teacher")
                                                  for k in range(blocks[arm])]
    assert all(u.summary is None for u in updates[:-1])
    ar_midway = updates[0].arms["ar"]
    assert ar_midway.blocks == 1 and not ar_midway.done and ar_midway.text and not updates[0].arms["echo"].started
    summary = updates[-1].summary
    assert summary is not None
    for arm, draft in timed.items():
        reported = summary["arms"][arm]
        assert {k: reported[k] for k in result_figures(draft.result)} == result_figures(draft.result)
        assert reported["report"] == draft.report and reported["blocks"] == blocks[arm]
        assert reported["model_revision"] == draft.model_revision and reported["device"] == "cpu"
        assert reported["report_check"] == draft.check_warnings  # the report check travels with each arm's report
    ar, echo, teacher = (timed[a].result for a in ("ar", "echo", "teacher"))
    assert summary["speedup"] == ar.seconds / echo.seconds
    assert summary["tokens_per_second_ratio"] == echo.tokens_per_second / ar.tokens_per_second
    assert summary["speedup_over_teacher"] == teacher.seconds / echo.seconds
    assert (summary["mode"], summary["warmup"], summary["same_device"], summary["live"]) == ("sequential", True, True,
                                                                                           True)
    assert "Sequential" in summary["how"] and "Warm-up done" in summary["how"] and summary["device"] in summary["how"]


def test_texts_equal_echo_report_and_are_deterministic(services, image_file, folders, tmp_path, capsys) -> None:
    h = RaceHandlers(services)
    upload = tmp_path / "upload.png"  # outside Gradio's cache, so the handler leaves it in place
    shutil.copy(image_file, upload)
    record = h.race([str(upload)], **_race_args(include_teacher=True))
    again = h.race(None, record["study_id"], **_race_args(include_teacher=True, mode="concurrent", warmup=False))
    assert again["mode"] == "concurrent" and "Concurrent" in again["how"] and "No warm-up" in again["how"]
    for arm in ("ar", "echo", "teacher"):
        expected = _cli_json(capsys, image_file, folders[arm], arm)
        got = record["arms"][arm]
        assert got["tokens"] == TOKENS and got["report"].strip()
        assert got["report"] == expected["report"] == again["arms"][arm]["report"], arm
        # the same report check as echo-report --json, whose "warnings" list the input warnings first
        assert expected["warnings"][len(expected["warnings"]) - len(got["report_check"]):] == got["report_check"], arm
        # The counts are deterministic too (only the clock differs between runs).
        for key in ("tokens", "forward_passes", "model_calls", "block_tokens"):
            assert got[key] == expected[key] == again["arms"][arm][key], (arm, key)
    assert record["arms"]["ar"]["report"] != record["arms"]["echo"]["report"]
    assert any(record["arms"][arm]["report_check"] for arm in ("ar", "echo", "teacher"))  # the tiny models' drafts


def test_stream_handler_yields_one_update_per_block_and_the_figures_last(services, image_file, recorded) -> None:
    h = RaceHandlers(services)
    study_id = h.race([str(image_file)], **_race_args(warmup=False))["study_id"]
    recorded.clear()
    outputs = list(h.race_stream(None, study_id, **_race_args()))
    timed = _timed(recorded)
    assert len(outputs) == len(timed["ar"].result.blocks) + len(timed["echo"].result.blocks) >= 4
    ar_blocks = len(timed["ar"].result.blocks)
    for n, out in enumerate(outputs[:-1], start=1):
        assert out[F["plot"]] is None and out[F["record"]] is None
        assert out[F["how"]].startswith("Racing (sequential)")
        # Sequential: the AR row appears once AR has finished, before ECHO's last block.
        assert [row[0] for row in out[F["figures"]]] == (["AR"] if n >= ar_blocks else [])
    assert "Waiting" in outputs[0][F["echo_status"]] and "Decoding: block 1" in outputs[0][F["ar_status"]]
    last = outputs[-1]
    assert all("Not in this race" in out[F["teacher_status"]] and out[F["teacher_text"]] == "" for out in outputs)
    record = last[F["record"]]
    assert record["study_id"] == study_id == last[F["study_id"]]
    for arm in ("ar", "echo"):
        assert last[F[f"{arm}_text"]] == timed[arm].report
        assert {k: record["arms"][arm][k] for k in result_figures(timed[arm].result)} == result_figures(
            timed[arm].result)
        status = last[F[f"{arm}_status"]]
        assert "**Done**" in status
        # The panel says what the report check found, as the Draft tab does: every warning, or that it passed.
        warnings = timed[arm].check_warnings
        assert record["arms"][arm]["report_check"] == warnings
        if warnings:
            assert f"{len(warnings)} warning" in status and all(w in status for w in warnings)
        else:
            assert "The report check passed." in status
    rows = {row[0]: dict(zip(FIGURE_HEADERS, row)) for row in last[F["figures"]]}
    assert rows["ECHO"]["seconds"] == round(timed["echo"].result.seconds, 4)
    assert rows["AR"]["tokens / s"] == round(timed["ar"].result.tokens_per_second, 2)
    assert isinstance(last[F["plot"]], Image.Image) and last[F["plot"]].size[0] > 300
    assert last[F["how"]] == record["how"]


def test_a_race_holds_every_drafting_slot_while_it_runs(tmp_path, folders, image_file) -> None:
    settings = AppSettings(models=(str(folders["echo"]),), race_ar_model=str(folders["ar"]), data_dir=tmp_path / "d",
                           upload_cache_dir=tmp_path / "c", generation_concurrency=2)
    services = Services.create(settings)
    h = RaceHandlers(services)
    held = [services.gate.running for _ in h.race_stream([str(image_file)], **_race_args(warmup=False))]
    assert held and set(held) == {2} and services.gate.running == 0


def test_each_upload_is_a_new_study_and_leaves_the_upload_cache(services) -> None:
    h = RaceHandlers(services)
    ids = []
    for seed in (4, 5):
        folder = services.settings.upload_cache_dir / f"race-{seed}"
        folder.mkdir(parents=True)
        synthetic_cxr(seed, (128, 128)).save(folder / "frontal.png")
        study_id, files, _ = h.upload([str(folder / "frontal.png")])
        assert files is None and not (folder / "frontal.png").exists()
        ids.append(study_id)
    assert ids[0] != ids[1] and all(len(services.store.get_study(i, "local").images) == 1 for i in ids)


def test_errors_name_the_problem(services, folders, tmp_path) -> None:
    h = RaceHandlers(services)
    with pytest.raises(gr.Error, match="no image"):
        h.race(None, "", **_race_args())
    study_id = h.race([str(_save(tmp_path))], **_race_args(warmup=False, max_new_tokens=8))["study_id"]
    with pytest.raises(gr.Error, match="race mode must be one of .* got 'fast'"):
        h.race(None, study_id, **_race_args(mode="fast"))
    with pytest.raises(gr.Error, match="language 'zh' is not supported by the AR arm's model"):
        h.race(None, study_id, **_race_args(language="zh"))
    with pytest.raises(gr.Error, match="not offered"):
        h.race(None, study_id, **_race_args(model="some/other-model"))
    missing = RaceService(services.drafting, ar_model=str(tmp_path / "no-such-model"))
    with pytest.raises(CheckpointError, match="AR arm .*no-such-model"):
        next(missing.run([synthetic_cxr(0)], model=None, config=SamplerConfig(max_new_tokens=8)))


def _save(folder: Path) -> Path:
    path = folder / "view.png"
    synthetic_cxr(1, (128, 128)).save(path)
    return path


def test_ar_model_shares_the_app_cache_when_it_is_a_menu_model(services, folders) -> None:
    shared = RaceService(services.drafting, ar_model=str(folders["echo"]))
    assert shared.ar_drafter() is services.drafting.drafter(str(folders["echo"]))
    own = RaceService(services.drafting)
    assert own.ar_model == str(folders["ar"]) and own.ar_drafter() is not services.drafting.drafter()


def test_how_it_ran_flags_unequal_models_and_lengths() -> None:
    arm = {"tokens": 40, "parameters": 4_700_000}
    summary = {"arms": {"ar": arm, "echo": {"tokens": 56, "parameters": 8_300_000_000}}, "order": ["ar", "echo"],
               "torch_threads": None, "same_device": True, "device": "NVIDIA H100", "mode": "sequential",
               "warmup": True, "speedup": 3.0, "tokens_per_second_ratio": 4.2, "length": "natural",
               "settings": {"max_new_tokens": 256}}
    text = how_it_ran(summary)
    assert "AR 4.7M, ECHO 8.3B parameters" in text and "ECHO_RACE_AR_MODEL" in text
    assert "AR 40, ECHO 56" in text and "**3.00×**" in text and "**4.20×**" in text and "NVIDIA H100" in text
    assert "**Natural length**" in text and "faster per report" in text and "Fixed" not in text
    fixed = how_it_ran({**summary, "length": "fixed"})
    assert "**Fixed length** (256 tokens, throughput)" in fixed and "faster for 256 tokens" in fixed
    assert "per report (AR" not in fixed


def test_natural_length_is_the_default_and_fixed_length_the_second_mode(services, image_file, monkeypatch) -> None:
    """The race passes the chosen length to every arm's sampler and names it in the record and its headline."""
    lengths: list[bool] = []
    real = Drafter.stream

    def stream(self: Drafter, images: Any, **kwargs: Any) -> Generator[Any, None, Draft]:
        lengths.append(kwargs["config"].fixed_length)
        return (yield from real(self, images, **kwargs))

    monkeypatch.setattr(Drafter, "stream", stream)
    h = RaceHandlers(services)
    natural = h.race([str(image_file)], **_race_args(warmup=False))
    assert lengths == [False, False] and natural["length"] == "natural"
    assert natural["settings"]["fixed_length"] is False and "**Natural length**" in natural["how"]
    lengths.clear()
    fixed = h.race(None, natural["study_id"], **_race_args(warmup=False), length="fixed")
    assert lengths == [True, True] and fixed["length"] == "fixed" and fixed["settings"]["fixed_length"] is True
    assert all(arm["tokens"] == TOKENS for arm in fixed["arms"].values())  # exactly max_new_tokens each
    assert f"**Fixed length** ({TOKENS} tokens, throughput)" in fixed["how"]
    with pytest.raises(gr.Error, match="'short'"):
        h.race(None, natural["study_id"], **_race_args(warmup=False), length="short")



def test_race_api_through_gradio_client_returns_the_samplers_figures(services, image_file, recorded) -> None:
    settings = services.settings
    with gr.Blocks(analytics_enabled=False) as demo, gr.Tabs():
        build_race_tab(services)
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=settings.generation_concurrency)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, server_name="127.0.0.1", server_port=free_port())
    try:
        client = Client(url, verbose=False)
        api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
        assert {"/race", "/race_stream"} <= set(api)
        assert all("race" not in name for name in api if name not in ("/race", "/race_stream"))
        record = client.predict([handle_file(str(image_file))], max_new_tokens=TOKENS, include_teacher=True,
                                api_name="/race")
    finally:
        demo.close()
    timed = _timed(recorded)
    assert set(record["arms"]) == set(timed) == {"ar", "echo", "teacher"}
    for arm, draft in timed.items():
        assert {k: record["arms"][arm][k] for k in result_figures(draft.result)} == result_figures(draft.result)
        assert record["arms"][arm]["report"] == draft.report
    assert record["speedup"] == timed["ar"].result.seconds / timed["echo"].result.seconds
    assert record["study_id"] and record["warmup"] is True and record["mode"] == "sequential"
    assert record["length"] == "natural"  # the API's default

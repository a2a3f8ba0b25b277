"""The Explain tab: targets from a stored draft, explanations computed once and stored, overlays, errors."""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np
import pytest
from conftest import make_checkpoint, synthetic_cxr
from PIL import Image

from app.explain import Target, explain_targets, render_overlay, select_tokens
from app.explain_ui import ExplainHandlers, method_choices
from app.handlers import DRAFT_FIELDS, Handlers
from app.main import build_demo
from app.service import Services
from app.settings import AppSettings
from echo_model.explain import DEFAULT_METHOD, METHODS, reliability

F = {name: i for i, name in enumerate(DRAFT_FIELDS)}
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:gradio.helpers")


class _User:
    def __init__(self, name: str):
        self.username = name


@pytest.fixture(scope="module")
def app(tmp_path_factory, tokenizer) -> tuple[Handlers, ExplainHandlers]:
    root = tmp_path_factory.mktemp("explain")
    make_checkpoint(tokenizer, block_length=4, seed=2).save_pretrained(root / "model")
    settings = AppSettings(models=(str(root / "model"),), data_dir=root / "data", upload_cache_dir=root / "cache",
                           max_new_tokens=16)
    services = Services.create(settings)
    return Handlers(services), ExplainHandlers(services)


def _draft(h: Handlers, sampler: str, *, user: str = "local") -> str:
    folder = h.settings.upload_cache_dir / f"{sampler}-{user}"
    folder.mkdir(parents=True, exist_ok=True)
    synthetic_cxr(7, (140, 112)).save(folder / "view.png")
    updates = list(h.generate([str(folder / "view.png")], "cough", "en", "", sampler, 16, 0.0, 0.5, 0, "",
                              _User(user) if user != "local" else None))
    return updates[-1][F["draft_id"]]


@pytest.mark.parametrize("sampler", ["echo", "teacher", "ar"])
def test_explain_a_block_and_a_sentence_stores_once_and_redraws(app, sampler):
    h, ex = app
    draft_id = _draft(h, sampler)
    draft = h.store.get_draft(draft_id, "local")
    if sampler == "teacher":
        assert all(len(b["steps"]) == len(b["token_ids"]) for b in draft.trace)  # commit steps are recorded
    targets, views = ex.targets(draft_id)
    values = [v for _, v in targets["choices"]]
    assert "block:0" in values and views["choices"] == [("view 1 (unknown)", 0)]
    before = h.store.count("explanation")
    for target in [values[0], next((v for v in values if v.startswith("sentence")), values[-1])]:
        (base, overlay), label, colour_bar = ex.explain(draft_id, target, "attention", 0, "inferno", 0.5)
        assert base.size == overlay.size == (112, 140) and overlay.mode == "RGB"
        assert "attention" in label.lower() and "not a localisation of disease" in label
        assert "not reliable for this model" in label  # the library's verdict from the quadrant sweep
        _, label_again, _ = ex.explain(draft_id, target, "attention", 0, "inferno", 0.5)
        assert label_again == label  # answered from the store: same label, same stored time
        redrawn, _, redrawn_bar = ex.redraw(draft_id, target, "attention", 0, "viridis", 0.9)
        assert np.asarray(redrawn[1]).tolist() != np.asarray(overlay).tolist()  # new colours, nothing recomputed
        assert "echo-colorbar" in colour_bar and redrawn_bar != colour_bar  # the bar follows the colour map
    assert h.store.count("explanation") == before + 2


def test_integrated_gradients_through_the_handler_and_deletion_cascades(app):
    h, ex = app
    draft_id = _draft(h, "echo")
    _, label, _ = ex.explain(draft_id, "block:1", "integrated_gradients", 0, "magma", 0.45)
    assert "Integrated" in label and "blurred" in label
    study_id = h.store.get_draft(draft_id, "local").study_id
    n = h.store.count("explanation")
    h.delete_study(study_id, True)
    assert h.store.count("explanation") < n  # stored with the draft, deleted with the study


def test_errors_name_the_problem_and_other_users_are_refused(app):
    h, ex = app
    draft_id = _draft(h, "echo", user="alice")
    with pytest.raises(gr.Error, match="belongs to another user"):
        ex.explain(draft_id, "block:0", "attention", 0, "inferno", 0.5, request=_User("bob"))
    with pytest.raises(gr.Error, match="'block:N' or 'sentence:N'"):
        ex.explain(draft_id, "paragraph:1", "attention", 0, "inferno", 0.5, request=_User("alice"))
    with pytest.raises(gr.Error, match="block 99 does not exist"):
        ex.explain(draft_id, "block:99", "attention", 0, "inferno", 0.5, request=_User("alice"))
    with pytest.raises(gr.Error, match="unknown explanation method 'occlusion'"):
        ex.explain(draft_id, "block:0", "occlusion", 0, "inferno", 0.5, request=_User("alice"))
    with pytest.raises(gr.Error, match="no draft to explain"):
        ex.explain("", "block:0", "attention", 0, "inferno", 0.5)
    with pytest.raises(gr.Error, match="unknown colour map 'rainbow'"):
        ex.explain(draft_id, "block:0", "attention", 0, "rainbow", 0.5, request=_User("alice"))


def test_sentence_targets_cover_exactly_the_sentence_tokens(tokenizer):
    text = "Heart size is normal. No effusion."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]

    class Draft:
        trace = [{"token_ids": ids[i:i + 4], "text": tokenizer.decode(ids[i:i + 4])} for i in range(0, len(ids), 4)]
        settings: dict[str, Any] = {}

    def decode(t):
        return tokenizer.decode(t, skip_special_tokens=True)

    eos = 10_000
    labels = [label for label, _ in explain_targets(Draft, decode, eos)]  # type: ignore[arg-type]
    assert labels[-2:] == ["sentence 0: Heart size is normal.", "sentence 1: No effusion."]
    second = select_tokens(Draft, Target.parse("sentence:1"), decode, eos)  # type: ignore[arg-type]
    assert decode([ids[j] for j in second]).strip() == "No effusion."


def test_overlay_hides_low_values_and_checks_its_settings():
    grey = Image.new("L", (56, 56), 100)
    heat = np.zeros((4, 4))
    heat[0, 0] = 1.0
    out = np.asarray(render_overlay(grey, heat, colormap="inferno", opacity=1.0))
    assert (out[-5:, -5:] == 100).all()  # far from the hot patch: untinted grey
    assert not (out[:5, :5] == 100).all()
    with pytest.raises(ValueError, match="opacity"):
        render_overlay(grey, heat, opacity=1.5)


def test_build_demo_has_explain_and_race_endpoints(app):
    h, _ = app
    demo = build_demo(h.settings, services=h.services)
    fns = {d.api_name: d for d in demo.fns.values() if d.api_name}
    assert {"explain", "race", "race_stream"} <= set(fns)
    assert fns["explain"].concurrency_id == "gpu" and fns["explain"].api_visibility != "private"



def test_attention_is_labelled_not_reliable_and_integrated_gradients_is_the_default(app):
    """The quadrant sweep (docs/explain.md) found attention rollout off the quadrant on converged toys: the tab
    says so next to the method and in every attention label, and offers integrated gradients first."""
    assert not reliability("attention").reliable and "not reliable for this model" in reliability("attention").note
    assert reliability("integrated_gradients").reliable and DEFAULT_METHOD == "integrated_gradients"
    with pytest.raises(ValueError, match="unknown explanation method"):
        reliability("occlusion")
    choices = {value: label for label, value in method_choices()}
    assert list(choices) == [DEFAULT_METHOD, *(m for m in METHODS if m != DEFAULT_METHOD)]
    assert "not reliable for this model" in choices["attention"]
    assert "not reliable" not in choices["integrated_gradients"]
    h, ex = app
    demo = build_demo(h.settings, services=h.services)
    radio = next(c for c in demo.blocks.values() if getattr(c, "elem_id", None) == "explain-method")
    assert radio.value == "integrated_gradients"
    draft_id = _draft(h, "echo")
    _, label, _ = ex.explain(draft_id, "block:0", "integrated_gradients", 0, "inferno", 0.5, "blur", 8)
    assert "not reliable" not in label

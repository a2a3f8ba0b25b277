"""The "Explain" tab: pick a block or sentence of a draft and see where the model looked, over the image.

Callbacks follow :mod:`app.handlers`: values in, values out, work in :class:`~app.explain.ExplainService`.
Computing uses the model, so it waits in the drafting gate like a draft; redrawing (colour map, opacity,
view) reads the stored explanation and never recomputes.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
from PIL import Image

from echo_model.explain import DEFAULT_METHOD, reliability

from .explain import COLORMAPS, ExplainService, colour_bar_html, draw_overlay, explanation_key
from .handlers import user_errors, waiting_progress
from .service import Services

__all__ = ["ExplainHandlers", "build_explain_tab", "method_choices"]

_METHOD_NAMES: dict[str, str] = {
    "attention": "Attention (gradient-weighted rollout; fast)",
    "integrated_gradients": "Integrated gradients (Captum, blurred-image baseline; slower)",
}


def method_choices() -> list[tuple[str, str]]:
    """Radio choices, the default method first; a method the library marks unreliable says so in its label."""
    order = [DEFAULT_METHOD, *(m for m in _METHOD_NAMES if m != DEFAULT_METHOD)]
    return [(_METHOD_NAMES[m] + ("" if reliability(m).reliable else " — not reliable for this model"), m)
            for m in order]


def method_warning(method: str) -> str:
    """The library's reliability note of ``method`` as a sentence for the label ("" when reliable)."""
    note = reliability(method).note
    return f" **Caution — {note}.**" if note else ""


METHOD_CHOICES: list[tuple[str, str]] = method_choices()
_INTRO = """Pick a block or a sentence of the current draft and a method; the map shows which image patches the
model's choice of those words depended on, in the decode state the words were committed in. **This is model
attention/attribution, not a localisation of disease.** Colour map, opacity and view only redraw."""


class ExplainHandlers:
    """Callbacks of the Explain tab, bound to one :class:`Services`."""

    def __init__(self, services: Services):
        self.services = services
        self.service = ExplainService(services.drafting, services.store)

    def _user(self, request: gr.Request | None) -> str:
        name = getattr(request, "username", None) if request is not None else None
        return str(name) if name else self.services.settings.local_user

    def targets(self, draft_id: str, request: gr.Request | None = None) -> tuple[Any, Any]:
        """Fill the target and view menus from a draft. Outputs: target dropdown, view dropdown."""
        with user_errors():
            draft_id = (draft_id or "").strip()
            if not draft_id:
                return gr.update(choices=[], value=None), gr.update(choices=[], value=None)
            user = self._user(request)
            choices = self.service.choices(draft_id, user)
            study = self.services.store.get_study(self.services.store.get_draft(draft_id, user).study_id, user)
            views = [(f"{img.label} ({img.view})", i) for i, img in enumerate(study.images)]
            return (gr.update(choices=choices, value=choices[0][1] if choices else None),
                    gr.update(choices=views, value=0))

    def explain(
        self,
        draft_id: str,
        target: str,
        method: str = DEFAULT_METHOD,
        view: int | None = 0,
        colormap: str = "inferno",
        opacity: float = 0.45,
        baseline: str = "blur",
        n_steps: int = 32,
        request: gr.Request | None = None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008  (Gradio injects progress through this default)
    ) -> tuple[tuple[Image.Image, Image.Image], str, str]:
        """Explain ``target`` ("block:N" / "sentence:N") of a draft; computed once, then read from the store.

        Outputs: (view, view with the map) for the before/after slider, a label naming the method, what was
        scored and how long it took, and the colour bar (HTML) with the map's scale.
        """
        with user_errors():
            user = self._user(request)
            draft_id = (draft_id or "").strip()
            if not draft_id:
                raise ValueError("no draft to explain: generate or open a draft first")
            if not target:
                raise ValueError("choose a block or sentence to explain")
            progress(0.0, desc="Explaining (computed once per draft, then stored)")
            with self.services.gate.admitted(on_wait=waiting_progress(progress)):
                stored = self.service.explain(draft_id, user, target=target, method=method, n_steps=int(n_steps),
                                              baseline=baseline)
            return self._draw(draft_id, user, stored, view=view, colormap=colormap, opacity=opacity)

    def redraw(self, draft_id: str, target: str, method: str = DEFAULT_METHOD, view: int | None = 0,
               colormap: str = "inferno", opacity: float = 0.45, baseline: str = "blur", n_steps: int = 32,
               request: gr.Request | None = None) -> tuple[Any, Any, Any]:
        """Redraw a stored explanation with other display settings (nothing is computed)."""
        with user_errors():
            user = self._user(request)
            if not (draft_id or "").strip() or not target:
                return gr.skip(), gr.skip(), gr.skip()
            key = explanation_key(target, method, n_steps=int(n_steps), baseline=baseline)
            stored = self.services.store.get_explanation(draft_id.strip(), user, key)
            if stored is None:
                return gr.skip(), gr.skip(), gr.skip()
            return self._draw(draft_id.strip(), user, stored, view=view, colormap=colormap, opacity=opacity)

    def _draw(self, draft_id: str, user: str, stored: Any, *, view: int | None, colormap: str,
              opacity: float) -> tuple[tuple[Image.Image, Image.Image], str, str]:
        store = self.services.store
        study = store.get_study(store.get_draft(draft_id, user).study_id, user)
        index = int(view or 0)
        if not 0 <= index < len(study.images):
            raise ValueError(f"view {index} does not exist: the study has {len(study.images)} views")
        with Image.open(study.images[index].path) as img:
            base = img.convert("RGB")
        overlay, scale = draw_overlay(base, stored.maps[index], colormap=colormap, opacity=float(opacity))
        share = sum(sum(row) for row in stored.maps[index])
        label = (f"**{stored.label}** · this view holds {share:.0%} of the map · {stored.detail}. "
                 f"Model attention/attribution — not a localisation of disease.{method_warning(stored.method)}")
        return (base, overlay), label, colour_bar_html(scale)


def build_explain_tab(services: Services, *, draft_id: gr.Textbox) -> ExplainHandlers:
    """Create the "Explain" tab inside the caller's ``gr.Tabs`` and wire it to the Draft tab's draft id."""
    h = ExplainHandlers(services)
    direct: dict[str, Any] = {"queue": False}
    private: dict[str, Any] = {"api_visibility": "private"}
    with gr.Tab("Explain", id="explain") as tab:
        gr.Markdown(_INTRO, elem_id="explain-intro")
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                load = gr.Button("Use the Draft tab's draft", size="sm", elem_id="explain-load")
                target = gr.Dropdown(label="Block or sentence", choices=[], elem_id="explain-target")
                method = gr.Radio(METHOD_CHOICES, value=DEFAULT_METHOD, label="Method", elem_id="explain-method")
                view = gr.Dropdown(label="View", choices=[], value=None, elem_id="explain-view")
                colormap = gr.Dropdown(list(COLORMAPS), value=COLORMAPS[0], label="Colour map")
                opacity = gr.Slider(0.0, 1.0, value=0.45, step=0.05, label="Opacity (where the map is strongest)",
                                    elem_id="explain-opacity")
                with gr.Accordion("Integrated gradients settings", open=False):
                    baseline = gr.Radio([("Blurred image", "blur"), ("Black image", "black")], value="blur",
                                        label="Baseline (the 'no finding' reference)")
                    n_steps = gr.Slider(8, 256, value=32, step=8, label="Integration steps")
                run = gr.Button("Explain", variant="primary", elem_id="explain-btn")
            with gr.Column(scale=2):
                slider = gr.ImageSlider(label="Before / after (drag)", type="pil", elem_id="explain-slider",
                                        max_height=560)
                colour_bar = gr.HTML("", elem_id="explain-colorbar")
                label = gr.Markdown(elem_id="explain-label")
    load.click(h.targets, [draft_id], [target, view], **direct, **private)
    tab.select(h.targets, [draft_id], [target, view], **direct, **private)
    inputs = [draft_id, target, method, view, colormap, opacity, baseline, n_steps]
    run.click(h.explain, inputs, [slider, label, colour_bar], api_name="explain", show_progress="full",
              concurrency_id="gpu", concurrency_limit=None)
    for control in (colormap, view):
        control.change(h.redraw, inputs, [slider, label, colour_bar], **direct, **private)
    opacity.release(h.redraw, inputs, [slider, label, colour_bar], **direct, **private)
    return h

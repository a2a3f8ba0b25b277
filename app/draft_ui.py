"""The Draft tab: upload and viewer, drafting, the study banner, the editor, warnings, sign (with confirmation).

Every action carries the session's :class:`~app.current.Current` (a ``gr.State``): what the editor is bound
to. Upload, *New study* and opening a draft replace it (``Handlers.study_opened`` / ``open_draft``), which
clears the editor, the draft view, the summary and the ids, so nothing of the previous study can be saved,
signed or explained while another is shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from echo_model.data.records import EDIT_REASONS
from echo_model.sampling import SAMPLERS, sampler_spec

from .current import Current, banner_markdown
from .handlers import (
    BLOCK_HEADERS,
    CURRENT_FIELDS,
    DEFAULT_WINDOW,
    DRAFT_FIELDS,
    REPORT_COLOURS,
    VIEWER_FIELDS,
    WINDOW_FIELDS,
    Handlers,
)
from .service import FALLBACK_SAMPLER
from .settings import AppSettings
from .viewer import PRESETS, VIEW_LABELS, VIEWER_JS_PATH, viewer_html

__all__ = ["SAMPLER_CHOICES", "DraftTab", "build_draft_tab"]

#: The registry's short labels, so the chosen one fits its box (the samplers are explained in docs/app.md).
SAMPLER_CHOICES: list[tuple[str, str]] = [(sampler_spec(name).label, name) for name in SAMPLERS]
# Client-side only: the copy box follows the editor without a server round trip per keystroke.
_COPY_JS = """(f, i, lang) => lang === 'zh' ? `所见：${f.trim()} 结论：${i.trim()}`
                                            : `Findings: ${f.trim()} Impression: ${i.trim()}`"""
PRIVATE: dict[str, Any] = {"api_visibility": "private"}


@dataclass
class DraftTab:
    """The Draft tab's components that other tabs and the wiring use."""

    comps: dict[str, Any]
    current: gr.State

    def __getitem__(self, name: str) -> Any:
        return self.comps[name]

    @property
    def draft_outputs(self) -> list[Any]:
        return [self.comps[name] for name in DRAFT_FIELDS]

    @property
    def viewer_outputs(self) -> list[Any]:
        return [self.comps[name] for name in VIEWER_FIELDS]

    @property
    def lock(self) -> dict[str, Any]:
        """``.then(**tab.lock)``: Findings and Impression read-only when the shown draft is signed; the teacher
        re-draft offered under a warned one-step draft."""
        return {"fn": self.comps["handlers"].editor_lock, "inputs": [self.comps["draft_id"]],
                "outputs": [self.comps["findings"], self.comps["impression"], self.comps["teacher_redraft"]],
                **PRIVATE}


def build_draft_tab(h: Handlers, settings: AppSettings, *, languages: list[str]) -> DraftTab:
    """Create the "Draft" tab inside the caller's ``gr.Tabs`` and wire its events."""
    with gr.Tab("Draft", id="draft"), gr.Row():
        # Inside the tab: a State among the Tabs' children would shift the tab labels.
        current = gr.State(Current())
        with gr.Column(scale=2):
            # No file_types filter: DICOM files often have no extension, and the loader reads the format from
            # the content (anything else is refused with a message naming the file).
            files = gr.File(label="Views of one study (PNG, JPEG or DICOM)", file_count="multiple",
                            type="filepath", elem_id="upload")
            view_select = gr.Dropdown(label="View (the sliders adjust it)", choices=[], interactive=True,
                                      elem_id="view-select")
            # Views side by side; zoom and pan run in the browser (app/static/viewer.js), no server round trip.
            viewer = gr.HTML(viewer_html([]), elem_id="viewer", js_on_load=VIEWER_JS_PATH.read_text("utf-8"),
                             min_height=200)
            view_info = gr.Markdown(label="View details", elem_id="view-info")
            with gr.Row():
                preset = gr.Radio([(label, name) for name, label in PRESETS.items()], value="default",
                                  label="Window preset (keys 0-3)", elem_id="window-preset", scale=3)
                invert = gr.Checkbox(False, label="Invert (i)", elem_id="invert", scale=1, min_width=90)
            with gr.Row():
                center = gr.Slider(0, 255, value=DEFAULT_WINDOW[0], step=1, label="Level (centre)",
                                   elem_id="window-center")
                width = gr.Slider(1, 512, value=DEFAULT_WINDOW[1], step=1, label="Window (width)",
                                  elem_id="window-width")
            with gr.Row():
                view_label = gr.Dropdown([(label, name) for name, label in VIEW_LABELS.items()], value="unknown",
                                         label="View position", interactive=False, elem_id="view-label",
                                         scale=2, min_width=190)
                reset_window = gr.Button("Reset window", size="sm", elem_id="reset-window-btn")
                new_study = gr.Button("New study", size="sm", elem_id="new-study-btn")
        with gr.Column(scale=3):
            indication = gr.Textbox("", label="Indication (optional)", lines=1,
                                    placeholder="e.g. cough and fever", elem_id="indication")
            with gr.Row():
                language = gr.Dropdown(label="Language", choices=languages, value=languages[0],
                                       allow_custom_value=True, elem_id="language", scale=1, min_width=100)
                model = gr.Dropdown(label="Model", choices=list(settings.models), value=settings.default_model,
                                    elem_id="model", scale=2, min_width=160)
                sampler = gr.Dropdown(label="Sampler", choices=SAMPLER_CHOICES, value="echo", elem_id="sampler",
                                      scale=2, min_width=240)
            with gr.Accordion("Decoding settings", open=False):
                max_new_tokens = gr.Slider(8, 1024, value=settings.max_new_tokens, step=8, label="Max new tokens")
                temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="Temperature (0 = greedy)")
                threshold = gr.Slider(0.0, 1.0, value=0.85, step=0.01, label="Commit threshold τ (teacher sampler)")
                seed = gr.Number(value=0, precision=0, label="Seed (used when temperature > 0)")
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id="generate-btn")
                stop = gr.Button("Stop", variant="stop", elem_id="stop-btn")
            banner = gr.Markdown(banner_markdown(None), elem_id="study-banner")
            # The draft sentence by sentence (lowest token probability, uncertain words underlined) and the
            # findings the editor's text asserts, which follow every edit.
            with gr.Row(equal_height=False):
                evidence = gr.HTML("", label="Draft by sentence", elem_id="sentence-view", scale=3,
                                   padding=False)
                findings_list = gr.HTML(h.findings_list("", ""), label="Findings list", elem_id="findings-list",
                                        scale=2, min_width=220, padding=False)
            report_view = gr.HighlightedText(
                label="Draft as written, block by block (colour = model confidence: high ≥ 0.9, medium ≥ 0.6, "
                      "low; grey ▒ = positions not yet written)",
                color_map=REPORT_COLOURS, show_legend=True, show_inline_category=False, combine_adjacent=False,
                elem_id="report-view")
            # The embedded family's limitation, wherever it drafts (follows the Model menu).
            limitation = gr.HTML(h.model_notice(settings.default_model), elem_id="model-limitation")
            draft_warnings = gr.HTML("", elem_id="draft-warnings")
            # Shown under a warned one-step draft (tab.lock decides): the same study drafted again by the teacher.
            teacher_redraft = gr.Button("Re-draft with the teacher (several steps per block, slower)",
                                        visible=False, size="sm", elem_id="teacher-redraft-btn")
            summary = gr.Markdown(label="Summary", elem_id="summary")
            warnings = gr.Textbox(label="Input warnings", lines=2, interactive=False, elem_id="warnings")
            # A finished draft's findings one line per region ("Hila: ..."); what is saved or signed is this text.
            findings = gr.Textbox("", label="Findings (one line per region)", lines=9, max_lines=24, interactive=True,
                                  elem_id="findings")
            impression = gr.Textbox("", label="Impression", lines=3, interactive=True, elem_id="impression")
            reasons = gr.CheckboxGroup(list(EDIT_REASONS), value=[], label="Edit reasons", elem_id="reasons")
            comment = gr.Textbox("", label="Comment", lines=1, elem_id="comment")
            with gr.Row():
                save = gr.Button("Save edit", elem_id="save-btn")
                sign = gr.Button("Sign…", variant="primary", elem_id="sign-btn")
                redraft = gr.Button("Re-draft after my edit", elem_id="redraft-btn")
            with gr.Group(visible=False, elem_id="sign-confirm") as confirm_panel:
                confirm_text = gr.Markdown(elem_id="sign-confirm-text")
                sign_anyway = gr.Checkbox(False, label="Sign anyway: I checked the warnings against the images",
                                          visible=False, elem_id="sign-anyway")
                with gr.Row():
                    confirm = gr.Button("Sign this text", variant="primary", elem_id="sign-confirm-btn")
                    cancel = gr.Button("Cancel", elem_id="sign-cancel-btn")
            status = gr.Markdown(label="Report status", elem_id="status")
            copy_text = gr.Textbox(label="Report text (copy)", lines=3, interactive=False, buttons=["copy"],
                                   elem_id="copy-text")
            with gr.Accordion("Addendum (signed reports only)", open=False):
                addendum = gr.Textbox("", label="Addendum", lines=2, elem_id="addendum")
                add_addendum = gr.Button("Add addendum", elem_id="addendum-btn")
            with gr.Accordion("Record: ids, version, timings and per-block trace", open=False):
                with gr.Row():
                    study_id = gr.Textbox("", label="Study id", interactive=False, elem_id="study-id")
                    draft_id = gr.Textbox("", label="Draft id", interactive=False, elem_id="draft-id")
                    version = gr.Number(None, precision=0, label="Draft version (saved versions)",
                                        interactive=False, elem_id="draft-version")
                timing = gr.JSON(label="Timings and settings", elem_id="timing")
                blocks = gr.Dataframe(headers=BLOCK_HEADERS, label="Blocks", interactive=False, elem_id="blocks")

    comps: dict[str, Any] = {
        "handlers": h, "files": files, "report_view": report_view, "findings": findings, "impression": impression,
        "copy_text": copy_text, "summary": summary, "timing": timing, "blocks": blocks, "warnings": warnings,
        "study_id": study_id, "draft_id": draft_id, "status": status, "view_select": view_select, "viewer": viewer,
        "view_info": view_info, "center": center, "width": width, "version": version, "preset": preset,
        "invert": invert, "view_label": view_label,
        "draft_warnings": draft_warnings, "banner": banner, "current": current, "comment": comment,
        "reasons": reasons, "language": language, "limitation": limitation,
        "evidence": evidence, "findings_list": findings_list, "teacher_redraft": teacher_redraft,
    }
    tab = DraftTab(comps=comps, current=current)
    draft_outputs, viewer_outputs = tab.draft_outputs, tab.viewer_outputs
    decoding = [model, sampler, max_new_tokens, temperature, threshold, seed]
    # Drafts wait for the device in Services.gate (ours, bounded); Gradio hands them over at once.
    gpu: dict[str, Any] = {"concurrency_id": "gpu", "concurrency_limit": None}
    opened = {"fn": h.study_opened, "inputs": [study_id], "outputs": draft_outputs, **PRIVATE}
    # Edit reasons, comment and the sign confirmation belong to the draft that was on screen: cleared with it.
    clear_edit = {"fn": lambda: ([], "", gr.Group(visible=False)), "inputs": None,
                  "outputs": [reasons, comment, confirm_panel], **PRIVATE}

    # Upload and viewer. A refused upload leaves the file list (its reason is the error message).
    uploading = files.upload(h.upload, [files, study_id], [*viewer_outputs, files], api_name="upload_views")
    uploading.success(**opened).then(**tab.lock).then(**clear_edit)
    uploading.failure(lambda: None, None, [files], **PRIVATE)
    new_study.click(h.new_study, None, viewer_outputs, **PRIVATE).then(**opened).then(**tab.lock).then(**clear_edit)
    # Window/level: a view or a preset sets the sliders (ranges follow the view's values); the sliders and
    # invert re-window; keys 0-3 and i click the preset and invert controls (app/static/viewer.js).
    window_inputs = [study_id, view_select, center, width, preset, invert]
    select_inputs = [study_id, view_select, preset, invert]
    window_outputs = [comps[name] for name in WINDOW_FIELDS]
    view_select.input(h.select_view, select_inputs, window_outputs, **PRIVATE)
    preset.input(h.select_view, select_inputs, window_outputs, **PRIVATE)
    for control in (center, width):
        control.release(h.render_view, window_inputs, [viewer, view_info], **PRIVATE)
    invert.input(h.render_view, window_inputs, [viewer, view_info], **PRIVATE)
    reset_window.click(lambda: "default", None, [preset], **PRIVATE).then(
        h.select_view, select_inputs, window_outputs, **PRIVATE)
    view_label.input(h.set_view_label, [study_id, view_select, view_label, preset, invert],
                     [view_select, viewer, view_info], **PRIVATE)
    model.change(h.languages, [model], [language], **PRIVATE)
    model.change(h.model_notice, [model], [limitation], **PRIVATE)

    # Drafting (one slot on the device).
    generating = generate.click(h.begin_draft, [study_id, current], draft_outputs, trigger_mode="once",
                                **PRIVATE).then(
        h.generate, [files, indication, language, *decoding, study_id], draft_outputs, api_name="generate",
        show_progress="minimal", **gpu)
    # The warned draft's study drafted again by the teacher: the Sampler menu shows what drafts it, then the
    # same steps as Generate (a new draft of the study on screen; the warned one stays in History).
    teacher_drafting = teacher_redraft.click(lambda: FALLBACK_SAMPLER, None, [sampler], trigger_mode="once",
                                             **PRIVATE).then(
        h.begin_draft, [study_id, current], draft_outputs, **PRIVATE).then(
        h.generate, [files, indication, language, *decoding, study_id], draft_outputs, show_progress="minimal",
        **PRIVATE, **gpu)
    redrafting = redraft.click(
        h.redraft, [draft_id, findings, impression, *decoding, current], draft_outputs,
        api_name="redraft_from_edit", show_progress="minimal", trigger_mode="once", **gpu)
    stop.click(None, None, None, cancels=[generating, redrafting, teacher_drafting], **PRIVATE).then(
        h.draft_stopped, [current], [banner, current, status], **PRIVATE)
    generating.then(**tab.lock)
    redrafting.then(**tab.lock)
    teacher_drafting.then(**tab.lock)

    # Correct and sign: each names the draft and version it acts on; the session state refuses another.
    edit_inputs = [draft_id, findings, impression, reasons, comment]
    # The session state follows the store after each write (version, state); a saved comment is cleared, so it
    # is stored once, with the version it was written for.
    refresh = {"fn": h.refresh_current, "inputs": [current], "outputs": [comps[n] for n in CURRENT_FIELDS],
               **PRIVATE}
    save.click(h.save_edit, [*edit_inputs, version, current], [status, copy_text], api_name="save_edit").success(
        **refresh).then(lambda: "", None, [comment], **PRIVATE)
    sign.click(h.confirm_sign, [draft_id, findings, impression, version, current],
               [confirm_panel, confirm_text, sign_anyway], **PRIVATE)
    signing = confirm.click(h.sign, [*edit_inputs, version, sign_anyway, current],
                            [status, findings, impression, copy_text], api_name="sign")
    signing.success(**tab.lock).then(**refresh).then(**clear_edit)
    cancel.click(lambda: gr.Group(visible=False), None, [confirm_panel], **PRIVATE)
    add_addendum.click(h.add_addendum, [draft_id, addendum, current], [status, addendum],
                       api_name="add_addendum").success(**refresh)
    for box in (findings, impression):
        box.input(None, [findings, impression, language], [copy_text], js=_COPY_JS, **PRIVATE)
        # .change: typed edits and every text a draft, an opened draft or signing puts in the box; only the
        # last of a burst of keystrokes is labelled.
        box.change(h.findings_list, [findings, impression], [findings_list], trigger_mode="always_last",
                   show_progress="hidden", **PRIVATE)
    comps["confirm_panel"], comps["clear_edit"] = confirm_panel, clear_edit
    return tab
